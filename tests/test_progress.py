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
