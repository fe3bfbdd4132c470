"""Worker for tests/test_mpi_syncbn.py, run under `mpirun -np 2`: each rank takes its half of a fixed
union batch through a SyncBatchNorm and a SPADEResnetBlock (spectralspadesyncbatch3x3) whose weights
are set identically on every rank from numpy, and rank 0 writes what the ranks computed to
<outdir>/mpi_result.npz. The test also imports `compute` from here to run the same computation in one
process on the union batch.

By hand:  JSPADE_DEVICE=cpu mpirun --allow-run-as-root --oversubscribe -np 2 \
              .venv/bin/python tests/mpi_syncbn_worker.py /tmp/out
"""
import os
import sys
from pathlib import Path

os.environ.setdefault("JSPADE_DEVICE", "cpu")

import numpy as np  # noqa: E402

from jspade.models.base import trainable_parameters
from jspade.models.generator import SPADEResnetBlock
from jspade.models.normalization import SyncBatchNorm
from jspade.runtime import jt

UNION = 4          # samples in the union batch
BN_SHAPE = (3, 5, 6)
BLOCK = dict(fin=4, fout=3, semantic_nc=3, hw=(8, 8))
NORM_G = "spectralspadesyncbatch3x3"


def union_data():
    """The fixed union batch and the fixed loss coefficients (the same on every rank)."""
    rng = np.random.default_rng(1234)
    f = lambda *s, scale=1.0, offset=0.0: (rng.standard_normal(s) * scale + offset).astype(np.float32)
    h, w = BLOCK["hw"]
    label = rng.integers(0, BLOCK["semantic_nc"], (UNION, h, w))
    seg = (label[:, None] == np.arange(BLOCK["semantic_nc"])[None, :, None, None]).astype(np.float32)
    return {
        "bn_x": f(UNION, *BN_SHAPE, scale=2.0, offset=1.5),
        "bn_coef": f(UNION, *BN_SHAPE),
        "blk_x": f(UNION, BLOCK["fin"], h, w, offset=0.5),
        "blk_seg": seg,
        "blk_coef": f(UNION, BLOCK["fout"], h, w),
    }


def build_modules():
    """A SyncBatchNorm (affine) and a SPADEResnetBlock, every parameter and buffer set from numpy
    (jt.set_global_seed seeds each MPI rank differently, so Jittor's own init would differ)."""
    rng = np.random.default_rng(99)
    bn = SyncBatchNorm(BN_SHAPE[0], affine=True)
    block = SPADEResnetBlock(BLOCK["fin"], BLOCK["fout"], NORM_G, BLOCK["semantic_nc"])
    for module in (bn, block):
        for name, var in sorted(module.state_dict().items()):
            shape = tuple(var.shape)
            if name.endswith(("weight_u", "weight_v")):
                value = rng.standard_normal(shape)
                value /= np.linalg.norm(value)
            elif name.endswith("running_var"):
                value = rng.uniform(0.5, 1.5, shape)
            elif name.endswith("running_mean"):
                value = rng.standard_normal(shape) * 0.1
            elif module is bn and name == "weight":
                value = 1 + 0.3 * rng.standard_normal(shape)
            else:
                value = rng.standard_normal(shape) * 0.2
            var.update(jt.array(value.astype(np.float32)))
    jt.sync_all()
    return bn, block


def param_names(module):
    by_id = {id(v): k for k, v in module.state_dict().items()}
    return [(by_id[id(p)], p) for p in trainable_parameters(module)]


def compute(lo, hi):
    """Run both modules (training mode) on samples lo:hi of the union batch; the loss is
    sum(output * coefficients) over those samples. Returns {name: ndarray}: outputs, input
    gradients, parameter gradients (`grad.bn.*`, `grad.block.*`) and buffers (`state.*`)."""
    data = union_data()
    bn, block = build_modules()
    bn.train()
    block.train()
    out = {}

    x = jt.array(data["bn_x"][lo:hi])
    y = bn(x)
    loss = (y * jt.array(data["bn_coef"][lo:hi])).sum()
    names = param_names(bn)
    grads = jt.grad(loss, [x] + [p for _, p in names])
    out["bn.out"], out["bn.grad_x"] = y.numpy(), grads[0].numpy()
    for (name, _), g in zip(names, grads[1:]):
        out[f"grad.bn.{name}"] = g.numpy()

    x = jt.array(data["blk_x"][lo:hi])
    seg = jt.array(data["blk_seg"][lo:hi])
    y = block(x, seg)
    loss = (y * jt.array(data["blk_coef"][lo:hi])).sum()
    names = param_names(block)
    grads = jt.grad(loss, [x, seg] + [p for _, p in names])
    out["block.out"], out["block.grad_x"], out["block.grad_seg"] = y.numpy(), grads[0].numpy(), grads[1].numpy()
    for (name, _), g in zip(names, grads[2:]):
        out[f"grad.block.{name}"] = g.numpy()

    jt.sync_all()
    for prefix, module in (("bn", bn), ("block", block)):
        for name, var in module.state_dict().items():
            if name.endswith(("running_mean", "running_var", "weight_u", "weight_v")):
                out[f"state.{prefix}.{name}"] = var.numpy()
    return out


def gather(value, rank, world):
    """[world, *shape] holding every rank's value (a sum all-reduce of zero-padded copies)."""
    buf = np.zeros((world,) + value.shape, np.float32)
    buf[rank] = value
    return jt.array(buf).mpi_all_reduce("add").numpy()


def main(outdir):
    assert jt.in_mpi, "not running under MPI (start with mpirun -np 2)"
    rank, world = jt.rank, jt.world_size
    assert world == 2 and UNION % world == 0
    per = UNION // world
    res = compute(rank * per, (rank + 1) * per)
    result = {"world_size": np.array(world), "ranks": gather(np.array([rank], np.float32), rank, world)}
    for key, value in res.items():
        result[f"per_rank.{key}"] = gather(value, rank, world)
        if key.startswith("grad."):  # each rank's parameter gradient covers its own loss only
            result[f"allreduced.{key}"] = jt.array(value).mpi_all_reduce("add").numpy()
    if rank == 0:
        Path(outdir).mkdir(parents=True, exist_ok=True)
        np.savez(Path(outdir) / "mpi_result.npz", **result)
    jt.sync_all()


if __name__ == "__main__":
    main(sys.argv[1])
