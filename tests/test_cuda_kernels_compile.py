"""The sources of jspade's `jt.code` kernels compile with nvcc for sm_80 and sm_90 (no GPU needed).

What Jittor compiles for a `jt.code` op: its header and its entry point (with `@alias(name, inK)` lines
turned into `name_p` pointers and `name_shapeK` sizes) in one translation unit; on a CUDA build every op
source goes through nvcc. As of 2026-12-06 no kernel has a CUDA body (`cuda_src`): on the GPU,
label_conv and winograd call Jittor's own convolution (cuDNN) instead. So this compiles each kernel's
source as nvcc sees it (`-x cu`, host code through cudafe++ and the host compiler, a device pass for
the architecture), with its templates instantiated, and it fails if a module gains a `cuda_src` or
`cuda_header` that is not listed in KERNELS below (then add its CUDA source here).
"""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found (CUDA compiler absent on this machine)")
ARCHS = ("sm_80", "sm_90")
JSPADE = Path(__file__).resolve().parent.parent / "jspade"

# Entry-point variables per kernel: alias -> C type of its pointer (Jittor gives name_p, name_shapeK).
LABEL_CONV_ALIASES = {"labels": "const int", "weight": "const float", "bias": "const float", "result": "float",
                      "dy": "const float", "dw": "float"}


def _entry(src, aliases, kh, kw, cb):
    """An entry point's body as a function Jittor's code op would make of it."""
    body = src.replace("{kh}", str(kh)).replace("{kw}", str(kw)).replace("{cb}", str(cb))
    names = re.findall(r"@alias\((\w+),\s*\w+\)", body)
    body = re.sub(r"@alias\(\w+,\s*\w+\)\n?", "", body)
    decls = "".join(f"    {aliases[n]}* {n}_p = nullptr; int {n}_shape0 = 1, {n}_shape1 = 1, {n}_shape2 = 1, "
                    f"{n}_shape3 = 1;\n" for n in names)
    return decls + body


def label_conv_source():
    from jspade.models import label_conv as lc
    funcs = []
    for i, (kh, kw) in enumerate([(1, 1), (3, 3), (5, 5)]):
        for j, src in enumerate((lc._FORWARD_SRC, lc._WEIGHT_GRAD_SRC)):
            funcs.append(f"void jspade_entry_{i}_{j}(std::map<std::string, double>& data) {{\n"
                         + _entry(src, LABEL_CONV_ALIASES, kh, kw, lc._CB) + "\n}\n")
    return "#include <map>\n#include <string>\n" + lc._HEADER + "\n".join(funcs), []


def winograd_source():
    from jspade.models import winograd as wg
    inc = wg._dnnl_include()
    if inc is None:
        pytest.skip("Jittor's oneDNN headers are not in its cache (winograd.py needs them)")
    entries = []
    for i, (src, out_type) in enumerate(((wg._SRC, "float"), (wg._PREPARE_SRC, "float"), (wg._KEPT_SIZE_SRC, "long long"))):
        body = re.sub(r"\bdata\[\"(\w+)\"\]", r"data_\1", src)
        params = "".join(f", double data_{name}" for name in sorted(set(re.findall(r"\bdata_(\w+)", body))))
        entries.append(f"void jspade_entry_{i}(const float* in0_p, const float* in1_p, {out_type}* out0_p{params}) {{\n"
                       f"    {body}\n}}\n")
    entry = "".join(entries)
    return wg._HEADER + entry, [f"-I{inc}"]


KERNELS = {"label_conv": label_conv_source, "winograd": winograd_source}


def _compile(source, flags, arch, tmp_path):
    cu = tmp_path / f"kernel_{arch}.cu"
    cu.write_text(source)
    cmd = [NVCC, "-x", "cu", "-std=c++17", f"-arch={arch}", "-c", str(cu), "-o", str(tmp_path / f"k_{arch}.o"),
           "-Xcompiler", "-fopenmp,-march=x86-64-v3"] + flags
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_kernel_source_compiles(kernel, arch, tmp_path):
    source, flags = KERNELS[kernel]()
    proc = _compile(source, flags, arch, tmp_path)
    assert proc.returncode == 0, f"nvcc -arch={arch} failed on {kernel}'s source:\n{proc.stderr[-3000:]}"


def test_a_broken_source_fails(tmp_path):
    """The check itself: a type error in a kernel source is an nvcc failure, not a pass."""
    source, flags = label_conv_source()
    broken = source.replace("const int n = r / HO, yo = r % HO;", "const int n = r / HO, yo = r % HO; int* bad = 1.5f;", 1)
    assert broken != source
    proc = _compile(broken, flags, "sm_90", tmp_path)
    assert proc.returncode != 0 and "error" in proc.stderr


def test_every_cuda_source_is_listed():
    """A module that passes CUDA code to jt.code must have its source compiled above."""
    with_cuda = sorted(p.stem for p in JSPADE.rglob("*.py")
                       if re.search(r"\bcuda_(src|header)\s*=", p.read_text(encoding="utf-8")))
    assert set(with_cuda) <= set(KERNELS), f"add these modules' CUDA sources to KERNELS: {set(with_cuda) - set(KERNELS)}"
