"""The time a run's `train.max_minutes` counts: training, not measuring or compiling.

    counted = wall time since start() - FID measurements - spans in which Jittor compiled kernels

A cap is a training budget: the 8-minute CPU demo must train as long on a fresh machine, where Jittor
first compiles its kernels for minutes (the first iterations, the first sample grid, the first FID),
as on a warm one. Jittor compiles each new kernel by running the C++ compiler (nvcc for CUDA) in a
child process, so a span in which this process's finished children used CPU time is compilation:
`watch()` leaves it out whole (the little training inside it is left out too, in the run's favour).
Other processes compiling at the same time do not count. Under MPI each rank has its own clock; the
trainer lets rank 0's decide (jspade.train.ranks.rank0_decides)."""
import os
import time
from contextlib import contextmanager


def children_cpu_s():
    """CPU seconds used by this process's finished child processes (Jittor's compiler runs)."""
    times = os.times()
    return times.children_user + times.children_system


class TrainingClock:
    def __init__(self, compiler_cpu_s=children_cpu_s):
        self.compiler_cpu_s = compiler_cpu_s
        self.started = None
        self.measuring_s = 0.0  # FID measurements
        self.compiling_s = 0.0  # spans in which Jittor compiled kernels (less measuring inside them)

    def start(self):
        self.started = time.time()

    @property
    def wall_s(self):
        return 0.0 if self.started is None else time.time() - self.started

    @property
    def uncounted_s(self):
        return self.measuring_s + self.compiling_s

    @property
    def counted_s(self):
        return self.wall_s - self.uncounted_s

    @contextmanager
    def measuring(self):
        """Leave the span out (an FID measurement)."""
        started = time.time()
        try:
            yield
        finally:
            self.measuring_s += time.time() - started

    @contextmanager
    def watch(self):
        """Leave the span out if Jittor compiled a kernel in it (wrap one iteration)."""
        compiler, started, measured = self.compiler_cpu_s(), time.time(), self.measuring_s
        try:
            yield
        finally:
            if self.compiler_cpu_s() > compiler:
                self.compiling_s += time.time() - started - (self.measuring_s - measured)

    def summary(self):
        """'8.0 min' or '8.0 min of training; 2.4 min compiling kernels and 0.6 min measuring FID not counted'."""
        left_out = [f"{s / 60:.1f} min {what}" for s, what in ((self.compiling_s, "compiling kernels"),
                                                              (self.measuring_s, "measuring FID")) if s >= 0.05 * 60]
        return f"{self.counted_s / 60:.1f} min" + (f" of training; {' and '.join(left_out)} not counted"
                                                   if left_out else "")
