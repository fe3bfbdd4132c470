"""The training progress bar shows what bounds the run: a time cap as minutes, not a schedule's ETA."""
import io

from jspade.train.progress import training_bar


def test_time_capped_run_shows_the_cap_in_minutes():
    out = io.StringIO()
    bar = training_bar(5120, 0, max_minutes=8.0, file=out)
    bar.update(1)
    bar.set_postfix({"G": "1.000"}, refresh=True)
    bar.close()
    text = out.getvalue()
    assert "/8 min" in text and "it=1/5120" in text and "G=1.000" in text
    assert "5120it" not in text and "/5120 [" not in text  # no bar over the schedule's iterations


def test_time_the_cap_does_not_count_is_not_drawn(monkeypatch):
    """FID time does not count toward max_minutes, so the bar must not reach the end before the run does."""
    import jspade.train.progress as progress
    now = [1000.0]
    monkeypatch.setattr(progress.time, "time", lambda: now[0])
    fid_seconds = [0.0]
    bar = training_bar(5120, 0, max_minutes=8.0, file=io.StringIO(), uncounted_seconds=lambda: fid_seconds[0])
    now[0] += 7 * 60
    bar.update(1)
    assert abs(bar.bar.n - 7.0) < 1e-9
    now[0] += 60
    fid_seconds[0] = 60.0  # a one-minute FID measurement
    bar.update(1)
    assert abs(bar.bar.n - 7.0) < 1e-9  # still 7 of 8 counted minutes, not the end
    bar.close()


def test_uncapped_run_counts_iterations():
    out = io.StringIO()
    bar = training_bar(40, 10, file=out)
    bar.update(1)
    bar.close()
    assert "11/40" in out.getvalue()


def test_the_cap_leaves_out_kernel_compilation_and_fid(monkeypatch):
    """A fresh machine compiles Jittor's kernels for minutes: those spans (and FID) are not training."""
    import jspade.train.clock as clock_module
    now, compiler_cpu = [0.0], [0.0]
    monkeypatch.setattr(clock_module.time, "time", lambda: now[0])
    clock = clock_module.TrainingClock(compiler_cpu_s=lambda: compiler_cpu[0])
    clock.start()
    with clock.watch():  # the first iteration: two minutes, the compiler ran
        now[0] += 120
        compiler_cpu[0] += 90
    with clock.watch():  # a warm iteration
        now[0] += 2
    with clock.watch():  # an iteration that measured FID for 30 s and compiled Inception's kernels
        now[0] += 1
        with clock.measuring():
            now[0] += 30
            compiler_cpu[0] += 20
    assert clock.wall_s == 153 and clock.counted_s == 2 and clock.measuring_s == 30
    assert clock.summary() == "0.0 min of training; 2.0 min compiling kernels and 0.5 min measuring FID not counted"


def test_a_real_compilation_is_seen():
    """Jittor's compiler runs are this process's children: a kernel never compiled before shows up."""
    import random
    from jspade.runtime import jt
    from jspade.train.clock import TrainingClock
    clock = TrainingClock()
    clock.start()
    x = jt.array([1.0, 2.0])
    with clock.watch():
        (x * random.randint(2, 10**9)).sync()  # warms the multiply kernel (compiled at most once)
    compiled = clock.compiling_s
    with clock.watch():
        (x * random.randint(2, 10**9)).sync()  # the same kernel: nothing compiled
    assert clock.compiling_s == compiled
    scale = random.randint(2, 10**9)  # a kernel source never seen: compiled now
    with clock.watch():
        jt.code(x.shape, x.dtype, [x], cpu_src=f"for (int i=0; i<in0_shape0; i++) @out(i) = @in0(i) * {scale}.0f;").sync()
    assert clock.compiling_s > compiled
