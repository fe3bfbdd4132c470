"""One prepared check of jspade on a machine with an NVIDIA GPU, offline, in under 8 minutes.

Run through scripts/gpu_check.sh (see docs/gpu.md):

  scripts/gpu_check.sh --prepare gpu_wheels   # here: wheels, Jittor's extern archives, the original SPADE, fixtures
  scripts/gpu_check.sh OUT_DIR                # there: install from gpu_wheels, point Jittor at CUDA, run the steps
  scripts/gpu_check.sh --cpu OUT_DIR          # here: the same steps at tiny sizes on the CPU (a test)

Each step runs in its own process with its own timeout (bounded by what is left of the total budget);
a failure is recorded and the next step runs. OUT_DIR gets summary.json and gpu_check.log; the summary
table is printed last. Only the standard library is used until Jittor is installed.
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORK = Path(os.environ.get("GPU_CHECK_WORK", "/tmp/jspade_gpu"))

# Jittor 1.3.11 against CUDA 13 (what the lent machines have): cudaDeviceProp lost computeMode and
# clockRate, which Jittor's helper_cuda.h reads in its device-choosing helpers; its core then does not
# compile (seen here with nvcc 13.0, 2026-12-06). Only those helpers read them: assume "not prohibited"
# and a constant clock (one GPU, nothing to choose between).
JITTOR_PATCHES = {
    "extern/cuda/inc/helper_cuda.h": [("deviceProp.computeMode", "cudaComputeModeDefault"),
                                      ("deviceProp.clockRate", "1")],
}

# Jittor's archives (jittor-offline carries them; Jittor copies one from there or downloads it at first
# use): name -> (cache sub-folder of ~/.cache/jittor, md5 Jittor checks). cutlass is not in
# jittor-offline: it is switched off (use_cutlass=0), as is oneDNN for the CPU (use_mkl=0, 11 MB).
EXTERN_ARCHIVES = {
    "cutt-1.2.zip": ("cutt", "14d0fd1132c8cd657dc3cf29ce4db931"),
    "nccl.tgz": ("nccl", "900666558c5bc43e0a5e84045b88a06f"),
    "cub-1.11.0.tgz": ("cub", "97196a885598e40592100e1caaf3d5ea"),
}

# cuDNN 8 library names Jittor dlopens for CUDA >= 11; cuDNN 9 (PyTorch's nvidia-cudnn-cu13) merged them.
CUDNN8_ALIASES = {"libcudnn_ops_infer.so": "libcudnn_ops.so", "libcudnn_ops_train.so": "libcudnn_ops.so",
                  "libcudnn_cnn_infer.so": "libcudnn_cnn.so", "libcudnn_cnn_train.so": "libcudnn_cnn.so"}

GPU_BUDGET_S = 470  # all steps together, under the 8 minutes asked for
CPU_BUDGET_S = 420


# ----------------------------------------------------------------------------------------------- log
class Log:
    def __init__(self, path):
        self.f = open(path, "a", encoding="utf-8")

    def __call__(self, *parts):
        line = " ".join(str(p) for p in parts)
        print(line, flush=True)
        self.f.write(line + "\n")
        self.f.flush()

    def raw(self, text):
        self.f.write(text if text.endswith("\n") else text + "\n")
        self.f.flush()


# -------------------------------------------------------------------------------------- environment
def md5(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def patch_jittor(jittor_dir, log):
    """Apply JITTOR_PATCHES to an installed Jittor (idempotent); returns what changed."""
    done = {}
    for rel, subs in JITTOR_PATCHES.items():
        path = Path(jittor_dir) / rel
        text = path.read_text()
        n = sum(text.count(a) for a, _ in subs)
        for a, b in subs:
            text = text.replace(a, b)
        if n:
            path.write_text(text)
        done[rel] = n
        log(f"patched {rel}: {n} replacement(s)")
    return done


def find_nvcc():
    cands = [os.environ.get("nvcc_path") or "", shutil.which("nvcc") or "", "/usr/local/cuda/bin/nvcc"]
    cands += sorted(str(p) for p in Path("/usr/local").glob("cuda-*/bin/nvcc"))
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return os.path.realpath(c) if not _is_wrapper(c) else c
    return None


def _is_wrapper(path):
    try:
        return open(path, "rb").read(2) == b"#!"
    except OSError:
        return False


def nvidia_package_dirs(python):
    """Folders of the nvidia/* wheels (cuDNN, cuBLAS, ...) that `python` (PyTorch's) has installed."""
    code = ("import importlib.util as u, os; s = u.find_spec('nvidia'); "
            "print('\\n'.join(s.submodule_search_locations) if s else '')")
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60).stdout
    except Exception:
        return []
    return [Path(p) for p in out.split() if p.strip()]


def build_cuda_home(nvcc, python, home, log):
    """A CUDA home Jittor can use: bin/nvcc (a wrapper calling the machine's), include/ and lib64/ holding
    the toolkit's files plus the headers and libraries of the nvidia/* wheels, each library also under its
    unversioned name (Jittor looks for libX.so) and cuDNN 9 under the cuDNN 8 names Jittor loads."""
    real_home = Path(nvcc).resolve().parent.parent
    if home.exists():
        shutil.rmtree(home)
    for d in ("bin", "include", "lib64"):
        (home / d).mkdir(parents=True)
    (home / "bin" / "nvcc").write_text(f'#!/bin/sh\nexec "{nvcc}" "$@"\n')
    (home / "bin" / "nvcc").chmod(0o755)
    found = {"toolkit": str(real_home), "libraries": {}}

    def link_all(src_dir, dst_dir):
        if not src_dir.is_dir():
            return
        for p in src_dir.iterdir():
            dst = dst_dir / p.name
            if not dst.exists():
                dst.symlink_to(p)

    link_all(real_home / "include", home / "include")
    for lib in ("lib64", "lib", "targets/x86_64-linux/lib"):
        link_all(real_home / lib, home / "lib64")
    roots = nvidia_package_dirs(python)
    pkgs = [d for root in roots for d in sorted(root.iterdir()) if d.is_dir()]
    pkgs += [d for root in roots for cu in sorted(root.glob("cu1*")) for d in [cu]]  # nvidia/cu13/{include,lib}
    for pkg in pkgs:
        link_all(pkg / "include", home / "include")
        for libdir in (pkg / "lib", pkg / "lib64"):
            if not libdir.is_dir():
                continue
            for so in sorted(libdir.glob("lib*.so*")):
                base = re.sub(r"\.so(\.\d+)*$", ".so", so.name)
                for name in (so.name, base):
                    dst = home / "lib64" / name
                    if not dst.exists():
                        dst.symlink_to(so)
                found["libraries"].setdefault(base, str(so))
    for old, new in CUDNN8_ALIASES.items():
        dst, src = home / "lib64" / old, home / "lib64" / new
        if src.exists() and not dst.exists():
            dst.symlink_to(os.path.realpath(src))
    for name in ("libcudart.so", "libcudnn.so", "libcublas.so", "libcublasLt.so", "libcurand.so", "libcufft.so",
                 "libcusparse.so", "cudnn.h", "cublas_v2.h"):
        where = home / ("include" if name.endswith(".h") else "lib64") / name
        log(f"  {name:16} {'-> ' + os.path.realpath(where) if where.exists() else 'MISSING'}")
    return found


def gpu_info():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
        return out or None
    except Exception:
        return None


class GpuMemoryPoller:
    """Peak memory.used of GPU 0 (nvidia-smi, every 0.25 s) while a step runs, minus its value before."""

    def __init__(self):
        self.peak = self.base = None
        self._stop = threading.Event()

    def _read(self):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                                 capture_output=True, text=True, timeout=5).stdout
            return float(out.split()[0])
        except Exception:
            return None

    def __enter__(self):
        self.base = self._read()
        if self.base is not None:
            self.peak = self.base
            self._t = threading.Thread(target=self._loop, daemon=True)
            self._t.start()
        return self

    def _loop(self):
        while not self._stop.wait(0.25):
            v = self._read()
            if v is not None:
                self.peak = max(self.peak, v)

    def __exit__(self, *exc):
        self._stop.set()

    def peak_mib(self):
        return None if self.base is None else self.peak - self.base


# ---------------------------------------------------------------------------------------------- steps
def run_step(name, cmd, env, timeout, log, results, deadline, cwd=REPO, parse_json=False):
    """Run one step in its own process; record status, seconds, GPU peak and its last JSON line."""
    left = deadline - time.time()
    if left < 10:
        results[name] = {"status": "skipped", "reason": "total time budget spent"}
        log(f"[{name}] skipped: budget spent")
        return results[name]
    timeout = min(timeout, left)
    log(f"[{name}] start (timeout {timeout:.0f} s): {' '.join(map(str, cmd))}")
    t0 = time.time()
    rec = {"command": " ".join(map(str, cmd)), "timeout_s": round(timeout)}
    with GpuMemoryPoller() as mem:
        try:
            proc = subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, capture_output=True, text=True,
                                  timeout=timeout)
            out, rc = proc.stdout + proc.stderr, proc.returncode
            rec["status"] = "passed" if rc == 0 else "failed"
            rec["returncode"] = rc
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            out += (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
            rec["status"] = "timeout"
    rec["seconds"] = round(time.time() - t0, 1)
    if mem.peak_mib() is not None:
        rec["gpu_peak_mib_polled"] = mem.peak_mib()
    log.raw(f"----- output of {name} -----\n{out}\n----- end of {name} -----")
    if parse_json:
        for line in reversed(out.strip().splitlines()):
            if line.startswith("{"):
                try:
                    rec["result"] = json.loads(line)
                    break
                except ValueError:
                    pass
    if rec["status"] != "passed":
        tail = [ln for ln in out.strip().splitlines() if ln.strip()][-3:]
        rec["error_tail"] = tail
    results[name] = rec
    log(f"[{name}] {rec['status']} in {rec['seconds']} s" + (f": {rec.get('error_tail')}" if rec["status"] != "passed" else ""))
    return rec


def setup_device(wheels, log, summary):
    """Install Jittor into a venv over the machine's python3 (its numpy replaced by the carried numpy<2),
    patch it for CUDA 13, place its extern archives, build the CUDA home; returns (python, env)."""
    system_python = shutil.which("python3") or sys.executable
    venv = WORK / "venv"
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([system_python, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    pkgs = [p.name for p in sorted(wheels.glob("*.whl"))]
    log("wheels:", ", ".join(pkgs))
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--disable-pip-version-check"] + [str(wheels / p) for p in pkgs],
                       capture_output=True, text=True)
    log.raw(r.stdout + r.stderr)
    if r.returncode != 0:
        raise RuntimeError(f"pip install from {wheels} failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    jittor_dir = subprocess.run([str(py), "-c", "import importlib.util as u; print(u.find_spec('jittor').submodule_search_locations[0])"],
                                capture_output=True, text=True, check=True).stdout.strip()
    summary["jittor_dir"] = jittor_dir
    summary["jittor_patches"] = patch_jittor(jittor_dir, log)
    home = WORK / "home"
    for name, (sub, digest) in EXTERN_ARCHIVES.items():
        src = wheels / "jittor_extern" / name
        if src.exists():
            dst = home / ".cache" / "jittor" / sub / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
            log(f"extern {name}: md5 {'ok' if md5(dst) == digest else 'MISMATCH'}")
        else:
            log(f"extern {name}: not carried")
    env = dict(os.environ)
    env.update(HOME=str(home), PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", use_cutlass="0", use_mkl="0",
               log_silent="0")
    nvcc = find_nvcc()
    summary["nvcc"] = nvcc
    if nvcc:
        v = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1:]
        log(f"nvcc: {nvcc} {v}")
        cuda_home = WORK / "cuda"
        summary["cuda_home"] = build_cuda_home(nvcc, system_python, cuda_home, log)
        env["nvcc_path"] = str(cuda_home / "bin" / "nvcc")
        env["LD_LIBRARY_PATH"] = str(cuda_home / "lib64") + ":" + env.get("LD_LIBRARY_PATH", "")
    else:
        log("nvcc: NOT FOUND (Jittor will run on the CPU)")
    summary["env"] = {k: env[k] for k in ("nvcc_path", "LD_LIBRARY_PATH", "HOME", "use_cutlass", "use_mkl") if k in env}
    return py, env, system_python


def main_run(args):
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "gpu_check.log")
    cpu = args.cpu
    budget = args.budget or (CPU_BUDGET_S if cpu else GPU_BUDGET_S)
    start = time.time()
    deadline = start + budget
    summary = {"mode": "cpu" if cpu else "gpu", "started": time.strftime("%Y-%m-%d %H:%M:%S"), "budget_s": budget,
               "gpu": None if cpu else gpu_info(), "steps": {}}
    results = summary["steps"]
    wheels = Path(args.wheels).resolve()
    log(f"gpu_check: mode {summary['mode']}, budget {budget} s, GPU {summary['gpu']}")
    torch_python = None
    if cpu:
        py, env = Path(sys.executable), dict(os.environ, PYTHONPATH=str(REPO), JSPADE_DEVICE="cpu",
                                               PYTHONUNBUFFERED="1")
    else:
        try:
            py, env, torch_python = setup_device(wheels, log, summary)
            results["setup"] = {"status": "passed", "seconds": round(time.time() - start, 1)}
        except Exception as e:  # recorded; the steps below then fail fast and say why
            results["setup"] = {"status": "failed", "error_tail": [str(e)], "seconds": round(time.time() - start, 1)}
            log(f"[setup] failed: {e}")
            py, env = Path(sys.executable), dict(os.environ, PYTHONPATH=str(REPO))
    me = Path(__file__).resolve()
    worker = [py, me, "worker"]
    want = set(args.steps.split(",")) if args.steps else None

    def step(name, cmd, timeout, **kw):
        if want is None or name in want or name.split("_")[0] in want:
            return run_step(name, cmd, env, timeout, log, results, deadline, **kw)
        return None

    # 0: Jittor imports, compiles its core (with nvcc), and runs an op where it should
    imp = step("import", worker + ["import"] + (["--cpu"] if cpu else []), 90 if cpu else 300, parse_json=True)
    if not cpu and imp and imp["status"] != "passed" and "cudnn" in " ".join(imp.get("error_tail", [])).lower():
        env["conv_opt"] = "1"  # Jittor's switch: cuBLAS and cuRAND only, convolutions without cuDNN
        log("retrying without cuDNN (conv_opt=1)")
        imp = step("import_no_cudnn", worker + ["import"], 240, parse_json=True)
        summary["no_cudnn"] = True
    # b: the CUDA paths of every jt.code kernel against the CPU kernels / float64 references
    step("b_kernels", worker + ["kernels"] + (["--cpu"] if cpu else []), 90 if cpu else 120, parse_json=True)
    # a: parity with the original code's reference archives
    fixtures = {"spade": wheels / "fixtures" / "spade_landscape_vae.npz",
                "tsit": wheels / "fixtures" / "tsit_landscape_vae.npz"}
    if not cpu:
        for shared in (REPO.parent / "shared" / "fixtures", REPO / "shared" / "fixtures"):
            for key, sub in (("spade", "spade_reference"), ("tsit", "tsit_reference")):
                if not fixtures[key].exists() and (shared / sub / fixtures[key].name).exists():
                    fixtures[key] = shared / sub / fixtures[key].name
    size = dict(ngf=8, ndf=8, crop=128, label_nc=8, iters=2) if cpu else dict(ngf=64, ndf=64, crop=512, label_nc=29, iters=30)
    geometry = ["--ngf", size["ngf"], "--ndf", size["ndf"], "--crop-size", size["crop"], "--label-nc", size["label_nc"]]
    geometry += ["--no-vgg"] if cpu else []  # VGG19 at full width is most of a tiny CPU iteration
    if cpu:
        for key in fixtures:
            results[f"a_parity_{key}"] = {"status": "skipped", "reason": "CPU rehearsal: the fixtures take minutes "
                                          "on the CPU; tests/test_check_parity.py and tests/test_models.py hold them there"}
    # c: training at the preset's size, the largest batch that fits; then the same with AMP; then the original
    train = step("c_train", worker + ["train", "--iters", size["iters"]] + geometry + (["--cpu"] if cpu else []),
                 120 if cpu else 150, parse_json=True)
    batch = (train or {}).get("result", {}).get("batch_size") or 1
    step("d_infer", worker + ["infer", "--batch-size", batch] + geometry, 90 if cpu else 45, parse_json=True)
    if not cpu:
        for key in ("spade", "tsit"):
            if fixtures[key].exists():
                step(f"a_parity_{key}", [py, REPO / "scripts" / "check_parity.py", fixtures[key], "--noise-runs", "2"],
                     120 if key == "spade" else 100)
            else:
                results[f"a_parity_{key}"] = {"status": "skipped", "reason": f"{fixtures[key].name} not carried"}
        step("c_train_amp", worker + ["train", "--iters", size["iters"], "--amp", "--batch-size", batch] + geometry,
             100, parse_json=True)
        original = wheels / "original_spade"
        if original.is_dir() and torch_python:
            step("c_original_pytorch", [torch_python, me, "worker", "original", original, "--batch-size", batch,
                                        "--iters", size["iters"]] + geometry, 100, parse_json=True)
        else:
            results["c_original_pytorch"] = {"status": "skipped", "reason": "original_spade not carried"}
    mpirun = shutil.which("mpirun")
    if mpirun:
        extra = ["--allow-run-as-root"] if os.geteuid() == 0 else []
        step("d_mpi_2proc", [mpirun, "-np", "2", "--oversubscribe"] + extra + worker + ["train", "--iters", size["iters"], "--batch-size", 2]
             + geometry + (["--cpu"] if cpu else []), 120 if cpu else 120, parse_json=True)
    else:
        results["d_mpi_2proc"] = {"status": "skipped", "reason": "no mpirun on this machine"}
    summary["total_s"] = round(time.time() - start, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print_table(summary, log)
    return 0 if all(r.get("status") in ("passed", "skipped") for r in results.values()) else 1


def print_table(summary, log):
    log("\n=== gpu_check summary " + f"({summary['mode']}, {summary.get('gpu')}, {summary.get('total_s')} s) ===")
    log(f"{'step':22} {'status':8} {'s':>6} {'gpu MiB':>8}  result")
    for name, r in summary["steps"].items():
        res = r.get("result") or {}
        brief = {k: v for k, v in res.items() if not isinstance(v, (dict, list))}
        text = json.dumps(brief)[:150] if brief else (r.get("reason") or " | ".join(r.get("error_tail", []))[:150])
        log(f"{name:22} {r.get('status', '?'):8} {r.get('seconds', ''):>6} {str(r.get('gpu_peak_mib_polled', '')):>8}  {text}")


# -------------------------------------------------------------------------------------------- workers
def _jt(cpu):
    if cpu:
        os.environ["JSPADE_DEVICE"] = "cpu"
    from jspade.runtime import jt
    return jt


def worker_import(args):
    t = time.time()
    jt = _jt(args.cpu)
    x = (jt.ones((256, 256)) * 2).sum()
    v = float(x.item())
    print(json.dumps({"use_cuda": int(jt.flags.use_cuda), "has_cuda": int(jt.has_cuda), "sum": v,
                      "cudnn": jt.compile_extern.cudnn is not None if jt.has_cuda else None,
                      "import_s": round(time.time() - t, 1)}))
    return 0 if v == 2 * 256 * 256 and (args.cpu or jt.flags.use_cuda) else 1


def worker_kernels(args):
    """label_conv (forward and weight gradient) and winograd.conv3x3 as the networks call them, on the
    device Jittor chose, against the CPU kernels (label_conv) and a float64 numpy convolution."""
    import numpy as np
    jt = _jt(args.cpu)
    from jspade.models import label_conv, winograd
    rng = np.random.default_rng(0)
    n, k, h, w, c = 2, 29, 24, 32, 40
    labels = rng.integers(0, k, (n, h, w)).astype(np.int32)
    labels[:, 4:12, 4:20] = 3  # uniform regions, as in a real map (the kernel's other branch)
    weight = rng.standard_normal((c, k, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32)
    dy = rng.standard_normal((n, c, h, w)).astype(np.float32)

    def onehot64(lab):
        return (lab[:, None] == np.arange(k)[None, :, None, None]).astype(np.float64)

    def conv64(x, wt, pad=1):
        xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        out = np.zeros((x.shape[0], wt.shape[0], x.shape[2], x.shape[3]))
        for ky in range(3):
            for kx in range(3):
                out += np.einsum("nchw,oc->nohw", xp[:, :, ky:ky + x.shape[2], kx:kx + x.shape[3]], wt[:, :, ky, kx])
        return out

    def wgrad64(x, g, pad=1):
        xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        dw = np.zeros((g.shape[1], x.shape[1], 3, 3))
        for ky in range(3):
            for kx in range(3):
                dw[:, :, ky, kx] = np.einsum("nchw,nohw->oc", xp[:, :, ky:ky + x.shape[2], kx:kx + x.shape[3]], g)
        return dw

    def rel(a, b):
        return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))

    report, ok = {"device": "cuda" if jt.flags.use_cuda else "cpu"}, True
    x1h = onehot64(labels)
    ref_fwd = conv64(x1h, weight.astype(np.float64)) + bias[None, :, None, None]
    ref_dw = wgrad64(x1h, dy.astype(np.float64))
    fwd = label_conv.label_conv(jt.array(labels), jt.array(weight), jt.array(bias), 1).numpy()
    dw = label_conv.label_conv_weight_grad(jt.array(labels), jt.array(dy), k, 3, 1).numpy()
    report["label_conv_fwd_rel"], report["label_conv_dw_rel"] = rel(fwd, ref_fwd), rel(dw, ref_dw)
    # the gradient through the autograd path the networks use
    wv = jt.array(weight)
    g = jt.grad((label_conv.label_conv(jt.array(labels), wv, jt.array(bias), 1) * jt.array(dy)).sum(), wv).numpy()
    report["label_conv_autograd_dw_rel"] = rel(g, ref_dw)
    if jt.flags.use_cuda:  # the CPU kernels on the same inputs (the path this GPU result must equal)
        jt.flags.use_cuda = 0
        cpu_fwd = label_conv.label_conv(jt.array(labels), jt.array(weight), jt.array(bias), 1).numpy()
        jt.flags.use_cuda = 1
        report["label_conv_fwd_vs_cpu_kernel_rel"] = rel(fwd, cpu_fwd)
    x = rng.standard_normal((n, 32, h, w)).astype(np.float32)
    w3 = rng.standard_normal((24, 32, 3, 3)).astype(np.float32) * 0.1
    xv, wv3 = jt.array(x), jt.array(w3)
    y = winograd.conv3x3(xv, wv3, None)
    gx, gw = jt.grad((y * jt.array(dy[:, :24])).sum(), [xv, wv3])
    ref_y = conv64(x.astype(np.float64), w3.astype(np.float64))
    ref_gw = wgrad64(x.astype(np.float64), dy[:, :24].astype(np.float64))
    report["conv3x3_path"] = "winograd" if winograd.enabled() and winograd.winograd_pays(x.shape, w3.shape[0]) else "jittor conv2d"
    report["conv3x3_fwd_rel"], report["conv3x3_dw_rel"] = rel(y.numpy(), ref_y), rel(gw.numpy(), ref_gw)
    report["conv3x3_dx_finite"] = bool(np.isfinite(gx.numpy()).all())
    # float32 (and TF32 on the GPU: ~1e-3) against float64
    tol = 5e-3 if jt.flags.use_cuda else 1e-4
    for key, v in report.items():
        if key.endswith("_rel") and not v <= tol:
            ok = False
    ok &= report["conv3x3_dx_finite"]
    report["tolerance"], report["ok"] = tol, ok
    print(json.dumps(report))
    return 0 if ok else 1


def _model_options(args):
    from jspade.config import load_config
    import dataclasses
    base = load_config(REPO / "configs" / "landscape_512.toml").model  # the preset; sizes from the arguments
    return dataclasses.replace(base, ngf=args.ngf, ndf=args.ndf, crop_size=args.crop_size, label_nc=args.label_nc,
                               no_vgg_loss=args.no_vgg or base.no_vgg_loss)


def _gpu_peak_mib(jt):
    """Jittor's allocator statistics where it keeps them (bytes in use at most), else None."""
    try:
        return jt.flags.stat_allocator_total_alloc_byte / 2**20 if jt.flags.use_cuda else None
    except Exception:
        return None


def _training(jt, opt, batch, amp):
    import numpy as np
    from jspade.data.semantics import semantics_for
    from jspade.models.base import trainable_parameters
    from jspade.models.spade_model import SPADEModel
    from jspade.train.optim import Adam
    if amp:
        jt.flags.auto_mixed_precision_level = 4
    model = SPADEModel(opt)
    model.train()
    g_params = trainable_parameters(model.netG) + (trainable_parameters(model.netE) if model.netE else [])
    opt_g, opt_d = Adam(g_params, 1e-4), Adam(trainable_parameters(model.netD), 4e-4)
    _, h = opt.image_size
    rng = np.random.default_rng(0)
    label = jt.array(rng.integers(0, opt.label_nc, (batch, 1, h, opt.crop_size)).astype(np.int32))
    real = jt.array(rng.uniform(-1, 1, (batch, 3, h, opt.crop_size)).astype(np.float32))
    sem = semantics_for(opt, label).detach()

    def it():
        g_losses, fake, _ = model.generator_losses(sem, real)
        opt_g.step(sum(g_losses.values()), fetch=list(g_losses.values()))
        d_losses = model.discriminator_losses(sem, real)
        opt_d.step(sum(d_losses.values()), fetch=list(d_losses.values()))
        return [float(v.item()) for v in list(g_losses.values()) + list(d_losses.values())]

    return model, sem, it


def worker_train(args):
    """s/iteration of a full training iteration (G step + D step, VGG, TTUR Adam) at the largest batch
    that fits: batch 1 first, then doubling (or --batch-size only), each tried for 2 iterations."""
    import numpy as np
    jt = _jt(args.cpu)
    opt = _model_options(args)
    tried = {}
    candidates = [args.batch_size] if args.batch_size else [1, 2, 4, 8, 16, 32]
    if args.cpu and not args.batch_size:
        candidates = [1, 2]
    best = None
    for b in candidates:
        try:
            model, sem, it = _training(jt, opt, b, args.amp)
            losses = it() + it()
            jt.sync_all(True)
            if not np.isfinite(losses).all():
                tried[b] = "non-finite loss"
                break
            tried[b] = "fits"
            best = (b, model, sem, it)
        except Exception as e:  # out of memory (or any failure at this size): the previous batch is the answer
            tried[b] = str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__
            break
        finally:
            jt.gc()
    if best is None:
        print(json.dumps({"tried": tried, "ok": False}))
        return 1
    b, model, sem, it = best
    jt.sync_all(True)
    t = time.perf_counter()
    for _ in range(args.iters):
        losses = it()
    jt.sync_all(True)
    s = (time.perf_counter() - t) / args.iters
    res = {"batch_size": b, "iters": args.iters, "train_iter_s": round(s, 4), "img_per_s": round(b / s, 2),
           "amp": args.amp, "use_cuda": int(jt.flags.use_cuda), "tried": tried,
           "losses_finite": bool(np.isfinite(losses).all()), "jittor_peak_mib": _gpu_peak_mib(jt),
           "world_size": jt.world_size if hasattr(jt, "world_size") else 1}
    if getattr(jt, "rank", 0) == 0:
        print(json.dumps(res))
    return 0 if res["losses_finite"] else 1


def worker_infer(args):
    import numpy as np
    jt = _jt(args.cpu)
    opt = _model_options(args)
    from jspade.data.semantics import semantics_for
    from jspade.models.spade_model import SPADEModel
    model = SPADEModel(opt)
    model.eval()
    _, h = opt.image_size
    b = args.batch_size or 1
    label = jt.array(np.random.default_rng(0).integers(0, opt.label_nc, (b, 1, h, opt.crop_size)).astype(np.int32))
    sem = semantics_for(opt, label).detach()
    with jt.no_grad():
        for _ in range(2):
            model.netG(sem).sync()
        jt.sync_all(True)
        n = 3 if args.cpu else 10
        t = time.perf_counter()
        for _ in range(n):
            out = model.netG(sem)
            out.sync()
        jt.sync_all(True)
    s = time.perf_counter() - t
    ok = bool(np.isfinite(out.numpy()).all())
    print(json.dumps({"size": f"{opt.crop_size}x{h}", "batch_size": b, "img_per_s": round(n * b / s, 2), "finite": ok}))
    return 0 if ok else 1


def worker_original(args):
    """The original SPADE (scripts/benchmark_original.py) on the GPU: its tensors created on CUDA by
    default, its timer synchronising CUDA first, its peak GPU memory from torch."""
    import torch
    torch.set_default_device("cuda")
    sys.path.insert(0, str(REPO / "scripts"))
    import benchmark_original as bo
    real_clock = time.perf_counter

    def synced_clock():
        torch.cuda.synchronize()
        return real_clock()
    bo.time = type(time)("time")
    bo.time.__dict__.update({k: getattr(time, k) for k in dir(time) if not k.startswith("__")})
    bo.time.perf_counter = synced_clock
    argv = [str(args.original), "--ngf", str(args.ngf), "--ndf", str(args.ndf), "--crop-size", str(args.crop_size),
            "--label-nc", str(args.label_nc), "--batch-size", str(args.batch_size or 1), "--iters", str(args.iters),
            "--warmup", "3", "--use-vae", "--json"]
    sys.argv = ["benchmark_original.py"] + argv
    rc = bo.main() if hasattr(bo, "main") else 1
    print(json.dumps({"torch_gpu_peak_mib": torch.cuda.max_memory_allocated() / 2**20, "torch": torch.__version__}))
    return rc or 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run every step, write OUT/summary.json and OUT/gpu_check.log")
    r.add_argument("out")
    r.add_argument("--wheels", default=str(REPO / "gpu_wheels"))
    r.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU (the rehearsal)")
    r.add_argument("--steps", help="comma-separated step names or letters (import,b,a,c,d) to run only these")
    r.add_argument("--budget", type=int, help="seconds for all steps together")
    w = sub.add_parser("worker", help="one step (run by `run` in its own process)")
    w.add_argument("what", choices=("import", "kernels", "train", "infer", "original"))
    w.add_argument("original", nargs="?", help="for `original`: the NVlabs/SPADE code")
    w.add_argument("--cpu", action="store_true")
    w.add_argument("--amp", action="store_true")
    w.add_argument("--no-vgg", action="store_true", help="without the VGG loss (the CPU rehearsal)")
    w.add_argument("--batch-size", type=int)
    w.add_argument("--iters", type=int, default=30)
    w.add_argument("--ngf", type=int, default=64)
    w.add_argument("--ndf", type=int, default=64)
    w.add_argument("--crop-size", type=int, default=512)
    w.add_argument("--label-nc", type=int, default=29)
    args = ap.parse_args(argv)
    if args.cmd == "run":
        return main_run(args)
    return {"import": worker_import, "kernels": worker_kernels, "train": worker_train, "infer": worker_infer,
            "original": worker_original}[args.what](args)


if __name__ == "__main__":
    sys.exit(main())
