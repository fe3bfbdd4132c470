"""The training schedule: which phase, epoch and batch comes next, in what sample order, at what lr.

A run is a list of phases (`jspade.config.Phase`: epochs, batch size, lr, optional subset file,
optional linear decay). `Schedule` owns the position in it and everything derived from the position,
so that a checkpoint stores `schedule.state_dict()` and a resumed run continues with exactly the
batches, learning rates and augmentations the uninterrupted run would have used:
  - the order of an epoch is a permutation fixed by (seed, phase, epoch); resuming mid-epoch skips
    the samples of the batches already trained on;
  - the augmentation epoch (crops, flips) is the epoch counted across all phases;
  - the lr decays linearly over a phase's last `decay_epochs` epochs (the original's niter_decay).
"""
from dataclasses import asdict, dataclass

import numpy as np

from jspade.errors import ConfigError
from jspade.safe_load import CheckpointError


@dataclass
class Position:
    """Where training is: the next batch to train on."""
    iteration: int = 0  # iterations done in total
    phase: int = 0
    epoch: int = 0  # epoch within the phase
    batch: int = 0  # batches done within the epoch


def phase_lr(phase, epoch):
    """Phase lr, decayed linearly over its last `decay_epochs` epochs (the original's niter_decay)."""
    decay_start = phase.epochs - phase.decay_epochs
    if phase.decay_epochs <= 0 or epoch < decay_start:
        return phase.lr
    return phase.lr * (1 - (epoch - decay_start + 1) / (phase.decay_epochs + 1))


class EpochOrder:
    """A dataset sampler over a fixed list of indices (Jittor datasets iterate `sampler`)."""

    def __init__(self, indices):
        self.indices = list(indices)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


class Schedule:
    """Position in a list of phases, with `phase_sizes[k]` samples in phase k's data (its subset)."""

    def __init__(self, phases, phase_sizes, seed):
        if len(phases) != len(phase_sizes):
            raise ValueError("one dataset size per phase is needed")
        for k, (phase, n) in enumerate(zip(phases, phase_sizes)):
            if n < phase.batch_size:
                raise ConfigError(f"[[phases]] #{k + 1}: {n} samples, fewer than batch_size {phase.batch_size}")
        self.phases, self.phase_sizes, self.seed = list(phases), list(phase_sizes), seed
        self.pos = Position()

    # --- what comes next ------------------------------------------------------------------------
    @property
    def done(self):
        return self.pos.phase >= len(self.phases)

    @property
    def phase(self):
        return self.phases[self.pos.phase]

    def batches_per_epoch(self, phase_index=None):
        k = self.pos.phase if phase_index is None else phase_index
        return self.phase_sizes[k] // self.phases[k].batch_size  # the last partial batch is dropped

    def total_iterations(self):
        return sum(p.epochs * self.batches_per_epoch(k) for k, p in enumerate(self.phases))

    @property
    def lr(self):
        return phase_lr(self.phase, self.pos.epoch)

    def epoch_order(self):
        """Dataset indices still to train on in this epoch, in order."""
        order = np.random.default_rng((self.seed, self.pos.phase, self.pos.epoch)).permutation(
            self.phase_sizes[self.pos.phase])
        return EpochOrder(order[self.pos.batch * self.phase.batch_size:].tolist())

    def augmentation_epoch(self):
        """Epoch index across phases: the dataset's crops and flips depend on it."""
        return sum(p.epochs for p in self.phases[: self.pos.phase]) + self.pos.epoch

    # --- moving on ------------------------------------------------------------------------------
    def advance(self):
        """Count one trained batch. Returns 'phase_end', 'epoch_end' or None."""
        self.pos.iteration += 1
        self.pos.batch += 1
        if self.pos.batch < self.batches_per_epoch():
            return None
        self.pos.batch = 0
        self.pos.epoch += 1
        if self.pos.epoch < self.phase.epochs:
            return "epoch_end"
        self.pos.epoch = 0
        self.pos.phase += 1
        return "phase_end"

    # --- checkpoints ----------------------------------------------------------------------------
    def state_dict(self):
        return asdict(self.pos)

    def load_state_dict(self, state):
        pos = Position(**{k: int(state[k]) for k in ("iteration", "phase", "epoch", "batch")})
        if pos.phase > len(self.phases) or (pos.phase < len(self.phases) and (
                pos.epoch >= self.phases[pos.phase].epochs or pos.batch >= self.batches_per_epoch(pos.phase))):
            raise CheckpointError(f"the checkpoint's position (phase {pos.phase + 1}, epoch {pos.epoch + 1}, "
                                  f"batch {pos.batch}) lies outside this run's phases")
        self.pos = pos
