#!/usr/bin/env bash
# The prepared GPU check (docs/gpu.md).
#   scripts/gpu_check.sh --prepare WHEEL_DIR [--original SPADE_CHECKOUT_OR_GIT_DIR] [--fixtures spade,tsit]
#       here, with network: the wheels the GPU machine lacks (Python 3.12, manylinux x86-64), Jittor's
#       extern archives, the original SPADE's Python files and the parity fixtures, into WHEEL_DIR
#       (an ignored folder, carried to the machine); prints its size.
#   scripts/gpu_check.sh [--wheels WHEEL_DIR] [--steps LIST] OUT_DIR
#       on the GPU machine, offline, < 8 minutes: install, point Jittor at CUDA, run every step,
#       write OUT_DIR/summary.json and OUT_DIR/gpu_check.log, print a table.
#   scripts/gpu_check.sh --cpu OUT_DIR
#       the same steps at tiny sizes on this machine's CPU (tests/test_gpu_check.py).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE_PY=3.12           # python3 on the lent machines (device README, KINDS.md)
JITTOR=jittor==1.3.11
NUMPY=numpy==1.26.4      # Jittor 1.3.11 needs numpy<2; the machine has numpy 2.x

prepare() {
  local dir=$1 original=${2:-} fixtures=${3:-spade}
  mkdir -p "$dir/jittor_extern" "$dir/fixtures"
  local py=${PYTHON:-python3}
  [ -x .venv/bin/python ] && py=.venv/bin/python
  # Jittor ships as an sdist; its wheel is pure Python (py3-none-any), built here once.
  "$py" -m pip wheel -q --no-deps -w "$dir" "$JITTOR"
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$DEVICE_PY" --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$dir" "$NUMPY" astunparse==1.6.3
  # The archives Jittor would download at first use, from jittor-offline (its MNIST and oneDNN are left out).
  local off
  off=$("$py" -c "import importlib.util as u; s=u.find_spec('jittor_offline'); print(s.submodule_search_locations[0] if s else '')")
  if [ -z "$off" ]; then
    "$py" -m pip download -q --no-deps -d "$dir/.jo" jittor-offline
    (cd "$dir/.jo" && for f in *; do case $f in *.whl) unzip -q -o "$f";; *.tar.gz) tar xzf "$f";; esac; done)
    off=$(dirname "$(find "$dir/.jo" -name cutt-1.2.zip | head -1)")
  fi
  for f in cutt-1.2.zip nccl.tgz cub-1.11.0.tgz; do cp "$off/$f" "$dir/jittor_extern/"; done
  rm -rf "$dir/.jo"
  # The original SPADE's Python files, for the PyTorch side of the training comparison.
  if [ -n "$original" ]; then
    rm -rf "$dir/original_spade" && mkdir -p "$dir/original_spade"
    if [ -d "$original/.git" ] || [ ! -d "$original/models" ]; then
      local gd=$original; [ -d "$original/.git" ] && gd=$original/.git
      git --git-dir "$gd" archive HEAD -- '*.py' | tar -x -C "$dir/original_spade"
    else
      (cd "$original" && find . -name '*.py' -not -path './datasets/*' | tar -cf - -T -) | tar -x -C "$dir/original_spade"
    fi
  fi
  # Parity fixtures (../shared does not travel to the machine); the folder stays untracked.
  local shared=../shared/fixtures
  for f in ${fixtures//,/ }; do
    case $f in
      spade) cp -f "$shared/spade_reference/spade_landscape_vae.npz" "$dir/fixtures/" ;;
      tsit) cp -f "$shared/tsit_reference/tsit_landscape_vae.npz" "$dir/fixtures/" ;;
      none) ;;
      *) echo "gpu_check.sh: --fixtures: unknown fixture '$f' (spade, tsit, none)" >&2; exit 2 ;;
    esac
  done
  echo "prepared $dir:"
  (cd "$dir" && du -sb -- * jittor_extern/* fixtures/* 2>/dev/null | awk '{printf "  %8.2f MiB  %s\n", $1/1048576, $2}')
  local total tree
  total=$(du -sb "$dir" | cut -f1)
  tree=$(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1)
  echo "total $(awk -v b="$total" 'BEGIN{printf "%.1f MiB", b/1048576}') (plus the working tree: $(awk -v b="$tree" 'BEGIN{printf "%.1f MiB", b/1048576}'))"
  # The device run carries the working tree and this folder together, 64 MiB at most (device README).
  if [ $((total + tree)) -gt $((62 * 1048576)) ]; then
    echo "gpu_check.sh: warning: over the 64 MiB the device run carries; leave out a fixture (--fixtures spade: 24 MiB, tsit: 38 MiB)" >&2
  fi
}

case "${1:-}" in
  --prepare)
    shift; [ $# -ge 1 ] || { echo "gpu_check.sh: --prepare needs WHEEL_DIR" >&2; exit 2; }
    dir=$1; shift; original=""; fixtures=spade
    while [ $# -gt 0 ]; do
      case $1 in
        --original) original=$2; shift 2 ;;
        --fixtures) fixtures=$2; shift 2 ;;
        *) echo "gpu_check.sh: unknown option $1" >&2; exit 2 ;;
      esac
    done
    prepare "$dir" "$original" "$fixtures" ;;
  --cpu)
    shift; [ $# -eq 1 ] || { echo "gpu_check.sh: --cpu needs OUT_DIR" >&2; exit 2; }
    py=${PYTHON:-python3}; [ -x .venv/bin/python ] && py=.venv/bin/python
    exec "$py" scripts/gpu_check.py run --cpu "$1" ;;
  ""|-h|--help) sed -n '2,12p' "$0"; [ -n "${1:-}" ] || exit 2 ;;
  *)
    # On the GPU machine: the system python3 (it has PyTorch); Jittor goes into a venv over it.
    exec python3 scripts/gpu_check.py run "$@" ;;
esac
