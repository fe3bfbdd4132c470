"""Adam with PyTorch's update rule (Jittor's own Adam applies eps differently), data-parallel over
MPI: gradients are averaged across ranks before the update, so N ranks on N shards of a batch take
the same step as one process on the whole batch."""
import math

import numpy as np

from jspade.runtime import jt
from jspade.safe_load import CheckpointError


class Adam:
    def __init__(self, params, lr, betas=(0.0, 0.9), eps=1e-8):
        self.params = list(params)
        self.lr, self.betas, self.eps = lr, betas, eps
        self.step_count = 0
        self.m = [jt.zeros(p.shape, p.dtype).stop_grad() for p in self.params]
        self.v = [jt.zeros(p.shape, p.dtype).stop_grad() for p in self.params]

    def gradients(self, loss):
        """d loss / d params, averaged over MPI ranks (each rank's loss is the mean over its shard)."""
        # retain_graph=False: Jittor otherwise keeps every intermediate of the forward and backward
        # graphs that lies between a live parameter and a live gradient (for a second backward),
        # until the update has run: 2.1 GB more at the peak of a SPADE step at ngf 64, 256x192.
        grads = jt.grad(loss, self.params, retain_graph=False)
        if jt.in_mpi:
            grads = [g.mpi_all_reduce("mean") for g in grads]
        return grads

    def step(self, loss, fetch=()):
        """One update from the gradient of `loss`; `fetch` vars (e.g. loss terms) are computed in the same run."""
        self.apply(self.gradients(loss), fetch)

    def apply(self, grads, fetch=()):
        self.step_count += 1
        b1, b2 = self.betas
        bc1 = 1 - b1 ** self.step_count
        bc2_sqrt = math.sqrt(1 - b2 ** self.step_count)
        step_size = self.lr / bc1
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m.update(m * b1 + g * (1 - b1))
            v.update(v * b2 + g * g * (1 - b2))
            p.update(p - step_size * m / (jt.sqrt(v) / bc2_sqrt + self.eps))
        # One graph for the whole step: run it now so memory is released before the next one.
        jt.sync(self.params + self.m + self.v + list(fetch))

    def state_dict(self):
        return {"step": self.step_count, "lr": self.lr, "betas": tuple(self.betas), "eps": self.eps,
                "m": [x.numpy() for x in self.m], "v": [x.numpy() for x in self.v]}

    def load_state_dict(self, state):
        if len(state["m"]) != len(self.params):
            raise CheckpointError(f"optimizer state holds {len(state['m'])} tensors, the model has {len(self.params)}")
        self.step_count = int(state["step"])
        self.lr = state["lr"]
        for buf, arr in zip(self.m + self.v, list(state["m"]) + list(state["v"])):
            if tuple(buf.shape) != tuple(np.shape(arr)):
                raise CheckpointError("optimizer state does not match the model's parameter shapes")
            buf.update(jt.array(np.asarray(arr)))
