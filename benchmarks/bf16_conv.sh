#!/usr/bin/env bash
# Builds benchmarks/bf16_conv.cpp against a current oneDNN from the PyPI wheels (onednn,
# onednn-devel) and runs it: f32 direct vs f32 Winograd vs bf16 convolutions per SPADE layer.
# Not a test and not part of the suite; see docs/bf16.md (issue 24).
#
#   python3 -m venv /work/onednn_venv && /work/onednn_venv/bin/pip install onednn onednn-devel
#   benchmarks/bf16_conv.sh [--reps R] [--warmup W] [N,Cin,Cout,H,W[,name] ...]
#
# ONEDNN_PREFIX names the venv (or any prefix with include/oneapi/dnnl/dnnl.hpp and
# lib/libdnnl.so); default /work/onednn_venv. A separate program because Jittor's own
# oneDNN 2.2 and a current oneDNN clash by symbol in one process.
set -euo pipefail

prefix="${ONEDNN_PREFIX:-/work/onednn_venv}"
if [[ ! -f "$prefix/include/oneapi/dnnl/dnnl.hpp" || ! -e "$prefix/lib/libdnnl.so" ]]; then
    echo "bf16_conv.sh: no oneDNN wheel found under $prefix (want include/oneapi/dnnl/dnnl.hpp and lib/libdnnl.so);"
    echo "  install it with: python3 -m venv $prefix && $prefix/bin/pip install onednn onednn-devel"
    echo "  or set ONEDNN_PREFIX. Nothing measured."
    exit 0
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
build="${TMPDIR:-/tmp}/jspade_bf16_conv"
mkdir -p "$build"
# --disable-new-dtags: an RPATH (not RUNPATH) also serves libdnnl's own dependencies
# (libtbb, libsycl, ... in the same lib folder).
g++ -O2 -std=c++17 -I"$prefix/include" "$here/bf16_conv.cpp" -o "$build/bf16_conv" \
    -L"$prefix/lib" -ldnnl -Wl,--disable-new-dtags,-rpath,"$prefix/lib"

# The wheels build oneDNN with the SYCL CPU runtime: its CPU engine needs the OpenCL CPU device
# from intel-opencl-rt, whose .icd file in the wheel names an unpatched build path.
if [[ -z "${OCL_ICD_FILENAMES:-}" && -e "$prefix/lib/libintelocl.so" ]]; then
    export OCL_ICD_FILENAMES="$prefix/lib/libintelocl.so"
fi

echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores; flags present:" \
     "$(grep -m1 -o -w -E 'avx512f|avx512_bf16|amx_bf16|amx_tile' /proc/cpuinfo | sort -u | tr '\n' ' ')"
exec "$build/bf16_conv" "$@"
