"""Shared test fixtures. Real sample data and reference vectors live in ../shared beside the
project (never copied into it); tests that need them skip, saying why, where it is absent."""
import faulthandler
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("JSPADE_DEVICE", "cpu")  # tests are sized for CPU

import jspade.runtime  # noqa: E402,F401  (sets Jittor up before any test imports it)

# A native crash prints every thread's Python stack and ends the process with its real signal
# (Jittor's own SIGSEGV handler exits with status 1, which would hide it among ordinary failures).
for _sig in (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE):
    signal.signal(_sig, signal.SIG_DFL)
faulthandler.enable(file=sys.__stderr__, all_threads=True)  # re-armed: importing Jittor replaced it

SHARED = Path(os.environ.get("JSPADE_SHARED", ROOT.parent / "shared"))


def _shared(*parts):
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: the shared sample data/fixtures are only on project machines")
    return path


@pytest.fixture
def shared_dir():
    return _shared()


@pytest.fixture
def landscape_sample():
    return _shared("data", "landscape_sample")


@pytest.fixture
def coco_sample():
    return _shared("data", "coco_stuff_sample")


@pytest.fixture
def reference_fixture():
    return _shared("fixtures", "spade_reference", "spade_landscape_vae.npz")


@pytest.fixture
def nvlabs_checkpoint_dir():
    return _shared("fixtures", "spade_reference", "nvlabs_checkpoint")


def run_script(name, *args, timeout=600):
    """Run scripts/<name>.py with `args` as a user does, in its own process (tests import the library,
    never a script); returns the CompletedProcess with text stdout/stderr."""
    command = [sys.executable, str(ROOT / "scripts" / f"{name}.py"), *map(str, args)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
