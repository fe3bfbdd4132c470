"""The training progress bar. A run capped by time (`train.max_minutes`, e.g. the 8-minute CPU demo)
would otherwise show every iteration of its schedule and an ETA of hours: its bar runs over the
minutes of the cap instead, with the iterations done beside it. Time the cap does not count (FID
measurements) is not counted by the bar either, so it reaches the end when the run stops."""
import time

from tqdm import tqdm


class TimeCappedBar:
    """tqdm's update / set_postfix / close, drawn over `max_minutes` of wall time from its creation, less
    `uncounted_seconds()`."""

    def __init__(self, max_minutes, total_iterations, done_iterations=0, disable=False, file=None,
                 uncounted_seconds=lambda: 0.0):
        self.bar = tqdm(total=max_minutes, desc="train", unit="min", disable=disable, dynamic_ncols=True, file=file,
                        bar_format="{l_bar}{bar}| {n:.1f}/{total:g} min [{elapsed}{postfix}]")
        self.started, self.uncounted_seconds = time.time(), uncounted_seconds
        self.iteration, self.total_iterations = done_iterations, total_iterations
        self.postfix = {}

    def update(self, iterations=1):
        self.iteration += iterations
        minutes = min((time.time() - self.started - self.uncounted_seconds()) / 60, self.bar.total)
        self.bar.set_postfix({"it": f"{self.iteration}/{self.total_iterations}", **self.postfix}, refresh=False)
        self.bar.update(minutes - self.bar.n)

    def set_postfix(self, values, refresh=True):
        self.postfix = dict(values)
        self.bar.set_postfix({"it": f"{self.iteration}/{self.total_iterations}", **self.postfix}, refresh=refresh)

    def close(self):
        self.bar.close()


def training_bar(total_iterations, done_iterations=0, max_minutes=0.0, disable=False, file=None,
                 uncounted_seconds=lambda: 0.0):
    """The bar of a training run: over minutes when the run is capped by time (less `uncounted_seconds()`,
    the time the cap does not count), else over iterations."""
    if max_minutes:
        return TimeCappedBar(max_minutes, total_iterations, done_iterations, disable, file, uncounted_seconds)
    return tqdm(total=total_iterations, initial=min(done_iterations, total_iterations), desc="train", unit="it",
                disable=disable, dynamic_ncols=True, file=file)
