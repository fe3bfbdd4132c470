"""An exponential moving average of the generator's (and encoder's) weights, as OASIS and the strong
Jittor contest entries render with.

After every optimiser step each trainable parameter of the averaged copy becomes
    ema = d * ema + (1 - d) * live,   d = min(decay, (1 + n) / (10 + n))
where n counts the updates so far: the warm-up (TensorFlow's `ExponentialMovingAverage(num_updates)`)
keeps the average from being dominated by the random initial weights in short runs.

Buffers are not averaged. `recalibrate` takes the live network's buffers (spectral-norm u, v: close
to the averaged weights' singular vectors, and the same in a resumed run as in an uninterrupted one),
then recomputes the batch-norm running statistics, which for averaged weights are not the average of
the live network's: they are set to the plain mean, over the given training batches, of each batch's
mean and unbiased variance (PyTorch's `momentum=None`). Those train-mode passes also run one
power iteration each, moving u, v on toward the averaged weights' singular vectors. Under MPI every rank holds the same live
weights, batch statistics are synchronised, so the copies stay identical on all ranks.
"""
from jspade.checkpoint import CheckpointError, load_state_strict, state_arrays
from jspade.models.base import trainable_parameters
from jspade.models.normalization import SyncBatchNorm
from jspade.runtime import jt

WARMUP_OFFSET = 10  # the warm-up's d = (1 + n) / (10 + n): 0.1 at the first update, 0.99 after ~900


def ema_decay_at(decay, updates):
    """The decay used for update number `updates` (0-based)."""
    return min(decay, (1 + updates) / (WARMUP_OFFSET + updates))


def _named_trainable(module):
    trainable = {id(p) for p in trainable_parameters(module)}
    return {k: v for k, v in module.state_dict().items() if id(v) in trainable}


class ModelEMA:
    """Averaged copies of `sources` ({"G": netG, "E": netE}) held in `copies` (modules of the same
    architecture; their initial weights are overwritten with the sources')."""

    def __init__(self, sources, copies, decay):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        if set(sources) != set(copies):
            raise ValueError(f"EMA copies {sorted(copies)} do not match the networks {sorted(sources)}")
        self.sources, self.networks, self.decay = sources, copies, decay
        self.updates = 0
        for name, net in copies.items():
            load_state_strict(net, state_arrays(sources[name]), source=f"net{name}")
            net.eval()
        # Pairs (average, live) of trainable parameters, matched by name.
        self._pairs = []
        for name, net in copies.items():
            live = _named_trainable(sources[name])
            mine = net.state_dict()
            self._pairs += [(mine[k], v) for k, v in live.items()]
        for average, _ in self._pairs:
            average.stop_grad()

    def update(self):
        """Fold the live weights in (call after each optimiser step)."""
        d = ema_decay_at(self.decay, self.updates)
        for average, live in self._pairs:
            average.update(average * d + live.detach() * (1.0 - d))
        jt.sync([average for average, _ in self._pairs])
        self.updates += 1

    def recalibrate(self, inputs):
        """Recompute batch-norm running statistics (and spectral-norm u, v) of the copies from
        `inputs`, an iterable of (semantics, real image) batches; the encoder copy gives G's z as
        in training. Returns the number of batches used."""
        for name, net in self.networks.items():
            trainable = _named_trainable(self.sources[name])
            mine = net.state_dict()
            for k, v in self.sources[name].state_dict().items():
                if k not in trainable:
                    mine[k].update(v.detach().clone())
        norms = [m for net in self.networks.values() for m in net.modules() if isinstance(m, SyncBatchNorm)]
        saved = [m.momentum for m in norms]
        for m in norms:
            m.running_mean.update(jt.zeros(m.num_features))
            m.running_var.update(jt.ones(m.num_features))
        for net in self.networks.values():
            net.train()
        count = 0
        try:
            with jt.no_grad():
                for semantics, real in inputs:
                    for m in norms:
                        m.momentum = 1.0 / (count + 1)  # cumulative mean of the per-batch statistics
                    z = None
                    if "E" in self.networks:
                        mu, logvar = self.networks["E"](real)
                        z = jt.randn(mu.shape) * jt.exp(0.5 * logvar) + mu
                    self.networks["G"](semantics, z=z).sync()
                    count += 1
        finally:
            for m, momentum in zip(norms, saved):
                m.momentum = momentum
            for net in self.networks.values():
                net.eval()
        jt.sync([v for net in self.networks.values() for v in net.state_dict().values()])
        return count

    # --- checkpoints -----------------------------------------------------------------------------
    def state(self):
        """{"G": arrays, "E": arrays} for a checkpoint's "ema_networks"."""
        return {name: state_arrays(net) for name, net in self.networks.items()}

    def load_state(self, networks, updates, source="checkpoint"):
        for name, net in self.networks.items():
            if name not in networks:
                raise CheckpointError(f"{source} has no EMA weights for net{name}")
            load_state_strict(net, networks[name], source=f"{source} [ema {name}]")
            net.eval()
        self.updates = int(updates)

