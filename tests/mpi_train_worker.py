"""Run under `mpirun -np N`: one training step of a tiny SPADE on a fixed union batch of 4 pairs,
each rank taking its shard (G's and D's gradients both at the initial weights, then both updates);
writes the gradients and the generator/discriminator weights after the step.
With N=1 it is the single-process reference. Usage: mpi_train_worker.py OUT.npz"""
import sys

import numpy as np

from jspade.runtime import jt
from jspade.config import ModelConfig
from jspade.data.semantics import semantics_for
from jspade.models.base import trainable_parameters
from jspade.models.spade_model import SPADEModel
from jspade.train.optim import Adam

opt = ModelConfig(label_nc=29, crop_size=64, aspect_ratio=2.0, ngf=8, ndf=8, num_D=2, n_layers_D=3, use_vae=False)
jt.set_global_seed(0, different_seed_for_mpi=False)
model = SPADEModel(opt)
if jt.in_mpi:
    for net in model.networks().values():
        net.mpi_param_broadcast(0)
    jt.sync_all()  # as the trainer: the broadcasts in a graph of their own
model.train()
optimizer_G = Adam(trainable_parameters(model.netG), 2e-4)
optimizer_D = Adam(trainable_parameters(model.netD), 8e-4)

rng = np.random.default_rng(7)
label = rng.integers(0, 29, (4, 1, 32, 64)).astype(np.int32)
image = rng.uniform(-1, 1, (4, 3, 32, 64)).astype(np.float32)
world, rank = (jt.world_size, jt.rank) if jt.in_mpi else (1, 0)
shard = slice(rank * 4 // world, (rank + 1) * 4 // world)
sem = semantics_for(opt, jt.array(label[shard]))
real = jt.array(image[shard])

names = {id(v): f"{net}.{k}" for net, m in (("G", model.netG), ("D", model.netD)) for k, v in m.state_dict().items()}
arrays = {}
# Both gradients at the initial weights (training applies G's step before D's): Adam's first step moves
# each weight by ~lr * sign(gradient), so where a gradient is float noise (a bias before batch norm) one
# rank count's G differs from the other's by lr there, and the D gradients on its fake would compare that
g_losses, _, _ = model.generator_losses(sem, real)
grads_G = optimizer_G.gradients(sum(g_losses.values()))
arrays.update({f"grad.{names[id(p)]}": g.numpy() for p, g in zip(optimizer_G.params, grads_G)})
d_losses = model.discriminator_losses(sem, real)
grads_D = optimizer_D.gradients(sum(d_losses.values()))
arrays.update({f"grad.{names[id(p)]}": g.numpy() for p, g in zip(optimizer_D.params, grads_D)})
optimizer_G.apply(grads_G)
optimizer_D.apply(grads_D)
if rank == 0:
    arrays.update({f"G.{k}": v.numpy() for k, v in model.netG.state_dict().items()})
    arrays.update({f"D.{k}": v.numpy() for k, v in model.netD.state_dict().items()})
    np.savez(sys.argv[1], **arrays)
