"""scripts/gpu_check.sh: the CPU rehearsal of the GPU check runs every step and writes its summary, and the
pieces that only run on the GPU machine (Jittor's CUDA 13 patch, the CUDA home built from PyTorch's
nvidia/* libraries, a step that fails or hangs) behave as the device run relies on."""
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


gc = _module()


def test_cpu_rehearsal_runs_every_step(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(SCRIPT), "--cpu", str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    steps = summary["steps"]
    assert summary["mode"] == "cpu"
    expected = {"import", "b_kernels", "a_parity_spade", "a_parity_tsit", "c_train", "d_infer", "d_mpi_2proc"}
    assert expected <= set(steps), set(steps)
    for name, rec in steps.items():
        assert rec["status"] in ("passed", "skipped"), (name, rec)
        assert rec["status"] == "passed" or rec.get("reason"), (name, rec)
    for name in ("import", "b_kernels", "c_train", "d_infer"):
        assert steps[name]["status"] == "passed" and steps[name]["seconds"] > 0, (name, steps[name])
    if shutil.which("mpirun"):
        assert steps["d_mpi_2proc"]["status"] == "passed"
    kernels = steps["b_kernels"]["result"]
    assert kernels["ok"] and kernels["label_conv_fwd_rel"] < 1e-5 and kernels["conv3x3_dw_rel"] < 1e-4
    train = steps["c_train"]["result"]
    assert train["batch_size"] >= 1 and train["train_iter_s"] > 0 and train["losses_finite"]
    assert steps["d_infer"]["result"]["img_per_s"] > 0
    log = (out / "gpu_check.log").read_text()
    assert "----- output of c_train -----" in log and "gpu_check summary" in proc.stdout


@pytest.fixture
def default_sigchld():
    """The hanging step's child dies from a signal; Jittor, loaded in this test process (not in the check's
    own parent), would end the whole process from its SIGCHLD handler."""
    previous = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGCHLD, previous)


def test_a_failing_or_hanging_step_is_recorded_and_the_next_runs(tmp_path, default_sigchld):
    log = gc.Log(tmp_path / "log")
    results = {}
    deadline = gc.time.time() + 60
    gc.run_step("fails", [sys.executable, "-c", "print('{\"x\": 1}'); raise SystemExit(3)"], dict(os.environ), 30,
                log, results, deadline, parse_json=True)
    gc.run_step("hangs", [sys.executable, "-c", "import time; time.sleep(30)"], dict(os.environ), 1, log, results,
                deadline)
    gc.run_step("late", [sys.executable, "-c", "pass"], dict(os.environ), 30, log, results, gc.time.time() + 5)
    assert results["fails"]["status"] == "failed" and results["fails"]["returncode"] == 3
    assert results["fails"]["result"] == {"x": 1}
    assert results["hangs"]["status"] == "timeout" and results["hangs"]["seconds"] < 10
    assert results["late"]["status"] == "skipped"


def test_jittor_patch_for_cuda13(tmp_path):
    """The patch removes every read of the cudaDeviceProp fields CUDA 13 dropped, and is idempotent."""
    import jittor  # a dependency: the patch is checked against the header of the Jittor that is installed
    src = Path(jittor.__file__).parent / "extern" / "cuda" / "inc" / "helper_cuda.h"
    (tmp_path / "extern" / "cuda" / "inc").mkdir(parents=True)
    shutil.copy(src, tmp_path / "extern" / "cuda" / "inc" / "helper_cuda.h")
    log = gc.Log(tmp_path / "log")
    first = gc.patch_jittor(tmp_path, log)
    text = (tmp_path / "extern" / "cuda" / "inc" / "helper_cuda.h").read_text()
    assert first["extern/cuda/inc/helper_cuda.h"] == 4
    assert "computeMode" not in text.replace("cudaComputeMode", "") and ".clockRate" not in text
    assert gc.patch_jittor(tmp_path, log)["extern/cuda/inc/helper_cuda.h"] == 0


def test_cuda_home_from_pytorch_nvidia_packages(tmp_path, monkeypatch):
    """Jittor looks for libX.so beside nvcc and for cuDNN 8's library names: the CUDA home provides
    them from versioned wheel libraries (cuDNN 9 under the cuDNN 8 names)."""
    toolkit = tmp_path / "cuda-13.0"
    (toolkit / "bin").mkdir(parents=True)
    (toolkit / "include").mkdir()
    (toolkit / "lib64").mkdir()
    (toolkit / "bin" / "nvcc").write_text("#!/bin/sh\necho nvcc\n")
    (toolkit / "bin" / "nvcc").chmod(0o755)
    (toolkit / "include" / "cuda_runtime.h").write_text("")
    (toolkit / "lib64" / "libcudart.so").write_text("")
    nvidia = tmp_path / "site" / "nvidia"
    for pkg, libs, headers in (("cudnn", ["libcudnn.so.9", "libcudnn_ops.so.9", "libcudnn_cnn.so.9"], ["cudnn.h"]),
                               ("cublas", ["libcublas.so.13", "libcublasLt.so.13"], ["cublas_v2.h"])):
        (nvidia / pkg / "lib").mkdir(parents=True)
        (nvidia / pkg / "include").mkdir()
        for name in libs:
            (nvidia / pkg / "lib" / name).write_text(name)
        for name in headers:
            (nvidia / pkg / "include" / name).write_text("")
    monkeypatch.setattr(gc, "nvidia_package_dirs", lambda python: [nvidia])
    home = tmp_path / "home"
    found = gc.build_cuda_home(str(toolkit / "bin" / "nvcc"), sys.executable, home, gc.Log(tmp_path / "log"))
    lib = home / "lib64"
    assert (lib / "libcudnn.so").read_text() == "libcudnn.so.9"
    assert (lib / "libcublasLt.so").read_text() == "libcublasLt.so.13"
    assert (lib / "libcudnn_cnn_train.so").read_text() == "libcudnn_cnn.so.9"
    assert (lib / "libcudnn_ops_infer.so").read_text() == "libcudnn_ops.so.9"
    assert (lib / "libcudart.so").exists() and (home / "include" / "cudnn.h").exists()
    assert (home / "include" / "cuda_runtime.h").exists()
    out = subprocess.run([str(home / "bin" / "nvcc")], capture_output=True, text=True).stdout
    assert out.strip() == "nvcc" and found["libraries"]["libcudnn.so"].endswith("libcudnn.so.9")
