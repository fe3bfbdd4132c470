"""Adam with PyTorch's update rule (Jittor's own Adam applies eps differently), data-parallel over
MPI: gradients are averaged across ranks before the update, so N ranks on N shards of a batch take
the same step as one process on the whole batch.

PyTorch updates parameters and moments in place; a Jittor update makes new ones. Run as one graph,
every parameter's new p, m and v would exist beside the old ones at once (about 1 GB more at the
peak for SPADE at ngf 64), so the gradients are computed first and the update then runs in chunks of
about CHUNK_BYTES, each released before the next. On the CPU each parameter's update is one
multithreaded pass (`_ADAM_SRC`) instead of Jittor's single-threaded element-wise ops: the same
operations in the same order, equal to them up to float32 rounding (a fused multiply-add here or there)."""
import math

import numpy as np

from jspade.checkpoint import part_of
from jspade.runtime import jt
from jspade.safe_load import CheckpointError


CHUNK_BYTES = 64 << 20

# p, g, m, v -> the updated p, v (and m where it is kept): `Adam._update_ops`' operations in their order,
# float32 constants
_ADAM_SRC = r"""
@alias(p, in0)
@alias(g, in1)
@alias(m, in2)
@alias(v, in3)
@alias(p1, out0)
@alias(v1, out1)
const float b1 = data["b1"], c1 = data["c1"], b2 = data["b2"], c2 = data["c2"];
const float step_size = data["step_size"], bc2_sqrt = data["bc2_sqrt"], eps = data["eps"];
const size_t n = p->num;
#pragma omp parallel for schedule(static)
for (size_t i = 0; i < n; i++) {
    const float gi = g_p[i];
    const float mi = m_p[i] * b1 + gi * c1;
    const float vi = v_p[i] * b2 + gi * gi * c2;
    {store_m}
    v1_p[i] = vi;
    p1_p[i] = p_p[i] - step_size * mi / (std::sqrt(vi) / bc2_sqrt + eps);
}
"""


class Adam:
    """With beta1 = 0 (TTUR's betas, the default) the first moment is the gradient itself: m is then
    not kept (one parameter-sized tensor less per parameter: 350 MB for SPADE at ngf 64).
    `layout`: [(parameter index, part, parts)], the tensors `state_dict` holds the moments as (the
    original's parameters, `checkpoint.original_layout`: a stored-stacked parameter is several there);
    by default one per parameter."""

    def __init__(self, params, lr, betas=(0.0, 0.9), eps=1e-8, layout=None):
        self.params = list(params)
        self.layout = list(layout) if layout is not None else [(i, 0, 1) for i in range(len(self.params))]
        self.lr, self.betas, self.eps = lr, betas, eps
        self.step_count = 0
        self.keeps_m = betas[0] != 0
        self.m = [jt.zeros(p.shape, p.dtype).stop_grad() if self.keeps_m else None for p in self.params]
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
        constants = {"b1": b1, "c1": 1 - b1, "b2": b2, "c2": 1 - b2, "step_size": self.lr / bc1,
                     "bc2_sqrt": bc2_sqrt, "eps": self.eps}
        grads = list(grads)
        jt.sync(grads + list(fetch))  # the backward, then the update chunk by chunk (module docstring)
        chunk, size = [], 0
        for i, (p, m, v) in enumerate(zip(self.params, self.m, self.v)):
            # without a kept m, the gradient stands in for it: m * 0 + g * 1 is g exactly
            new_p, new_v, new_m = self._update(p, grads[i], grads[i] if m is None else m, v, constants, m is not None)
            grads[i] = None  # released once its update has run
            p.update(new_p)
            v.update(new_v)
            chunk += [p, v]
            if m is not None:
                m.update(new_m)
                chunk.append(m)
            size += (3 if m is not None else 2) * p.numel() * 4
            if size >= CHUNK_BYTES or i == len(self.params) - 1:
                jt.sync(chunk)
                chunk, size = [], 0

    @staticmethod
    def _update(p, g, m, v, k, keep_m=True):
        """(p, v, m) after one step with gradient g (m None unless `keep_m`)."""
        if jt.flags.use_cuda or p.dtype != "float32" or g.dtype != "float32":
            return Adam._update_ops(p, g, m, v, k, keep_m)
        src = _ADAM_SRC.replace("{store_m}", "out2_p[i] = mi;" if keep_m else "")
        out = jt.code([p.shape] * (2 + keep_m), ["float32"] * (2 + keep_m), [p, g, m, v],
                      cpu_header="#include <cmath>", cpu_src=src, data=k)
        return out[0], out[1], out[2] if keep_m else None

    @staticmethod
    def _update_ops(p, g, m, v, k, keep_m=True):
        m = m * k["b1"] + g * k["c1"]
        v = v * k["b2"] + g * g * k["c2"]
        return p - k["step_size"] * m / (jt.sqrt(v) / k["bc2_sqrt"] + k["eps"]), v, m if keep_m else None

    def state_dict(self):
        """m is saved as an empty list when not kept (beta1 = 0: its value never enters a step)."""
        def stored(moments):
            arrays = [x.numpy() for x in moments]
            return [part_of(arrays[i], part, parts) for i, part, parts in self.layout]
        return {"step": self.step_count, "lr": self.lr, "betas": tuple(self.betas), "eps": self.eps,
                "m": stored(self.m) if self.keeps_m else [], "v": stored(self.v)}

    def load_state_dict(self, state):
        m, v = list(state["m"]), list(state["v"])
        if len(v) != len(self.layout) or len(m) not in (0, len(self.layout)):
            raise CheckpointError(f"optimizer state holds {len(v)} tensors, the model has {len(self.layout)}")
        self.step_count = int(state["step"])
        self.lr = state["lr"]

        def joined(arrays):
            pieces = [[] for _ in self.params]
            for (i, _, _), array in zip(self.layout, arrays):
                pieces[i].append(np.asarray(array, np.float32))
            return [np.concatenate(p) if len(p) > 1 else p[0] if p else None for p in pieces]
        # a state saved without m (beta1 was 0) resumes with m = 0; one with m, into beta1 = 0, drops it
        pairs = list(zip(self.v, joined(v)))
        if self.keeps_m:
            pairs += list(zip(self.m, joined(m) if m else [np.zeros(b.shape, np.float32) for b in self.v]))
        for buf, arr in pairs:
            if arr is None or tuple(buf.shape) != tuple(arr.shape):
                raise CheckpointError("optimizer state does not match the model's parameter shapes")
            buf.update(jt.array(arr))
