#!/usr/bin/env bash
# jspade entry point.
#   bash run.sh train [train.py flags]   set up, then train (no flags: the CPU demo on synthetic data)
#   bash run.sh test  [pytest args]      set up, then run the test suite (with args: pytest on them)
#   bash run.sh paint [--checkpoint RUN_OR_FILE] [--port P]   the interactive painter (a local web page)
#   bash run.sh setup                    only create/update the virtual environment
# Under mpirun every rank runs this script: set up once beforehand (`bash run.sh setup`).
set -euo pipefail
cd "$(dirname "$0")"
VENV=${JSPADE_VENV:-.venv}
PY="$VENV/bin/python"

setup() {
  if [ -n "${OMPI_COMM_WORLD_SIZE:-}${PMI_SIZE:-}" ]; then
    [ -x "$PY" ] || { echo "run 'bash run.sh setup' once before mpirun" >&2; exit 1; }
    return
  fi
  [ -x "$PY" ] || python3 -m venv "$VENV"
  # The package is installed editable (`import jspade` from anywhere; edits take effect at once);
  # `bash run.sh test` adds the optional `test` extra (pytest, Playwright).
  local extra=${1:-} stamp="$VENV/.requirements.sha1" base have
  base=$(cat requirements.txt pyproject.toml scripts/setup_extras.sh | sha1sum | cut -d' ' -f1)
  have=$(cat "$stamp" 2>/dev/null || true)
  # up to date: same files, and the test extra already there when asked for
  if [ "$have" != "$base$extra" ] && { [ -n "$extra" ] || [ "$have" != "${base}test" ]; }; then
    "$PY" -m pip install -q --upgrade pip
    if [ -n "$extra" ]; then
      "$PY" -m pip install -q -e ".[$extra]" || {
        echo "warning: the test extra did not install in full; trying pytest alone (browser test will skip)" >&2
        "$PY" -m pip install -q -e . pytest; }
    else
      "$PY" -m pip install -q -e .
    fi
    VENV="$VENV" bash scripts/setup_extras.sh
    echo "$base$extra" >"$stamp"
  fi
  # The first import compiles Jittor's core (~2.5 min, cached in ~/.cache/jittor).
  "$PY" -c "import jspade.runtime" >/dev/null
}

cmd=${1:-help}
[ $# -gt 0 ] && shift
case "$cmd" in
  setup) setup ;;
  train) setup; exec "$PY" scripts/train.py "$@" ;;
  test)  setup test; VENV="$VENV" bash scripts/setup_extras.sh --test-tools
         # each test file in its own process (see tests/run_isolated.py); with arguments, plain pytest
         if [ $# -gt 0 ]; then exec "$PY" -m pytest -q "$@"; fi
         exec "$PY" tests/run_isolated.py ;;
  paint) setup; exec "$PY" scripts/paint.py "$@" ;;
  *) sed -n '2,7p' "$0"; [ "$cmd" = help ] || exit 2 ;;
esac
