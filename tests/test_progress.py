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


def test_uncapped_run_counts_iterations():
    out = io.StringIO()
    bar = training_bar(40, 10, file=out)
    bar.update(1)
    bar.close()
    assert "11/40" in out.getvalue()
