"""Import Jittor the right way for this machine: CUDA when a GPU is usable, CPU otherwise.

Jittor compiles CUDA kernels whenever it finds `nvcc`, and then fails at run time on a machine that
has the compiler but no driver or device. We probe the driver first and, when no device answers,
hide nvcc (`nvcc_path=""`) before Jittor is imported. `JSPADE_DEVICE=cpu` forces the CPU path.

Jittor also prints info lines at import (memory, compiler paths, "using N procs for compiling") before
anything of ours. They are silenced (`log_silent=1`, Jittor's switch for its info and warning lines)
unless the command line has --verbose (every script's flag, jspade.cli) or log_silent=0 is set.
"""
import ctypes
import os
import sys


def cuda_device_count() -> int:
    """Number of CUDA devices the driver reports (0 when there is no driver or no device)."""
    if os.environ.get("JSPADE_DEVICE", "").lower() == "cpu":
        return 0
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def import_jittor():
    """Return the `jittor` module, configured for the available device."""
    if "jittor" not in sys.modules:
        if cuda_device_count() == 0:
            os.environ["nvcc_path"] = ""
        if "--verbose" in sys.argv[1:]:
            os.environ["log_silent"] = "0"
        else:
            os.environ.setdefault("log_silent", "1")
    import jittor

    if jittor.has_cuda and cuda_device_count() > 0:
        jittor.flags.use_cuda = 1
    return jittor


jt = import_jittor()


def release_saved(function):
    """`function.saved` (what a jt.Function's execute kept for its backward), dropped from the Function as
    its grad takes it. Jittor keeps a Function alive as long as anything references its forward's graph,
    and with it all `saved` holds: in a training step the inputs and weights of every such layer stayed
    in memory through Adam's update (at ngf 64, 180 MB at the peak). The backward's ops hold what they
    need until they run."""
    saved = function.saved
    if saved is None:
        raise RuntimeError(f"{type(function).__name__}: a second backward through the same forward is not supported")
    function.saved = None
    return saved


def cpu_kernel(shapes, dtypes, inputs, header, src, data, flags=""):
    """`jt.code` with a CPU `header` and entry `src`, compiled with the extra compiler `flags` (they come
    after Jittor's own -Ofast, so they can take some of it back, e.g. -fno-unsafe-math-optimizations for
    sums and divisions in a stated order)."""
    out = jt.code(shapes, dtypes, inputs, cpu_header=header, cpu_src=src, data=data)
    if flags:
        for v in (out if isinstance(out, (list, tuple)) else [out]):
            v.compile_options = {f"FLAGS: {flags} ": 1}
    return out


def with_epilogue(src, first, bias, residual):
    """A convolution kernel's call `src` ("f(...);") given two more arguments: the pointers of its bias and
    its residual, the inputs after the first `first` ones where given (`bias`, `residual`: whether they
    are), else nullptr."""
    if not (bias or residual):
        return src
    pointers = (f"in{first}_p" if bias else "nullptr", f"in{first + bool(bias)}_p" if residual else "nullptr")
    return src[:-2] + f", {pointers[0]}, {pointers[1]});"
