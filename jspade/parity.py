"""Check a port against reference vectors from the original PyTorch SPADE
(`../shared/fixtures/spade_reference/FORMAT.md` describes the archive).

Every check starts from the archive's `init.*` weights; the networks are built from its
`config_json` alone, so any configuration of the format can be checked."""
import json
from dataclasses import dataclass

import numpy as np

from jspade.runtime import jt
from jspade.checkpoint import load_state_strict
from jspade.config import ModelConfig
from jspade.data.semantics import instance_edges, semantics_for
from jspade.models.spade_model import SPADEModel


@dataclass
class Comparison:
    name: str
    error: float
    tolerance: float

    @property
    def ok(self):
        return bool(np.isfinite(self.error) and self.error <= self.tolerance)


class ReferenceArchive:
    def __init__(self, path):
        self.path = str(path)
        self.npz = np.load(path)
        self.config = json.loads(str(self.npz["config_json"]))
        self.opt = ModelConfig.from_dict(self.config)

    def __contains__(self, key):
        return key in self.npz.files

    def __getitem__(self, key):
        return self.npz[key]

    def group(self, prefix):
        """{name: array} of every key under `prefix.` with the prefix removed."""
        return {k[len(prefix) + 1:]: self.npz[k] for k in self.npz.files if k.startswith(prefix + ".")}


def _tol_activation(expected):
    return 1e-4 * max(1.0, float(np.abs(expected).max()) if expected.size else 1.0)


def _tol_gradient(expected):
    return 1e-3 * float(np.abs(expected).max())


class ParityRun:
    def __init__(self, archive_path):
        self.ref = ReferenceArchive(archive_path)
        self.results: list[Comparison] = []

    # --- helpers ---
    def compare(self, name, actual, expected, gradient=False):
        actual = actual.numpy() if isinstance(actual, jt.Var) else np.asarray(actual)
        expected = np.asarray(expected)
        if actual.shape != expected.shape and actual.size == expected.size:
            actual = actual.reshape(expected.shape)
        if actual.shape != expected.shape:
            err = float("inf")
        else:
            err = float(np.abs(actual.astype(np.float64) - expected).max()) if expected.size else 0.0
        tol = _tol_gradient(expected) if gradient else _tol_activation(expected)
        self.results.append(Comparison(name, err, tol))

    def fresh_model(self):
        """A model holding the archive's init.* weights, in training mode."""
        opt = self.ref.opt
        model = SPADEModel(opt, with_discriminator=True, with_vgg=opt.use_vgg)
        for name, net in model.networks().items():
            load_state_strict(net, self.ref.group(f"init.{name}"), source=f"{self.ref.path} init.{name}")
        if model.vgg is not None:
            load_state_strict(model.vgg, self.ref.group("init.VGG"), source=f"{self.ref.path} init.VGG")
        model.train()
        return model

    def inputs(self):
        r = self.ref
        sem = jt.array(r["input.semantics"])
        real = jt.array(r["input.real_image"])
        z = jt.array(r["input.z"]) if "input.z" in r else None
        return sem, real, z

    def compare_state(self, prefix, net):
        """after_train_forward.<net>.* (running statistics, u/v) against the network's buffers."""
        state = net.state_dict()
        for name, expected in self.ref.group(prefix).items():
            self.compare(f"{prefix}.{name}", state[name] if name in state else np.full(1, np.nan), expected)

    # --- the checks of FORMAT.md ---
    def check_semantics(self):
        r, opt = self.ref, self.ref.opt
        label = jt.array(r["input.label"])
        instance = jt.array(r["input.instance"]) if "input.instance" in r else None
        if instance is not None and "expected.instance_edges" in r:
            self.compare("instance_edges", instance_edges(instance), r["expected.instance_edges"])
        self.compare("input.semantics (one-hot from input.label)", semantics_for(opt, label, instance),
                     r["input.semantics"])

    def check_generator_forwards(self):
        model = self.fresh_model()
        sem, _, z = self.inputs()
        self.compare("G.train_forward", model.netG(sem, z=z), self.ref["expected.G.train_forward"])
        jt.sync_all()
        self.compare_state("after_train_forward.G", model.netG)
        model.netG.eval()
        with jt.no_grad():
            self.compare("G.eval_forward", model.netG(sem, z=z), self.ref["expected.G.eval_forward"])

    def check_discriminator_forward(self):
        model = self.fresh_model()
        sem, real, _ = self.inputs()
        out = model.netD(jt.concat([sem, real], dim=1))
        for i, scale in enumerate(out):
            for j, feat in enumerate(scale):
                key = f"expected.D.train_forward.scale{i}.layer{j}"
                self.compare(key[len("expected."):], feat, self.ref[key] if key in self.ref else np.full(1, np.nan))
        jt.sync_all()
        self.compare_state("after_train_forward.D", model.netD)

    def check_encoder_forward(self):
        if not self.ref.opt.use_vae:
            return
        model = self.fresh_model()
        _, real, _ = self.inputs()
        mu, logvar = model.netE(real)
        self.compare("E.train_forward.mu", mu, self.ref["expected.E.train_forward.mu"])
        self.compare("E.train_forward.logvar", logvar, self.ref["expected.E.train_forward.logvar"])
        jt.sync_all()
        self.compare_state("after_train_forward.E", model.netE)

    def check_vgg(self):
        if "expected.VGG.relu1_1" not in self.ref:
            return
        model = self.fresh_model()
        _, real, _ = self.inputs()
        feats = model.vgg(real[:, :, :64, :64])
        for k, f in zip(("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"), feats):
            self.compare(f"VGG.{k}", f, self.ref[f"expected.VGG.{k}"])

    def check_steps(self):
        """One generator step from init, then the discriminator step that follows it."""
        r = self.ref
        model = self.fresh_model()
        sem, real, _ = self.inputs()
        eps = jt.array(r["input.eps"]) if "input.eps" in r else None
        g_losses, fake = model.generator_losses(sem, real, eps=eps)
        total = sum(g_losses.values())
        self.compare("G_step.fake", fake, r["expected.G_step.fake"])
        for name, expected in r.group("expected.G_step.loss").items():
            value = total if name == "total" else g_losses.get(name)
            self.compare(f"G_step.loss.{name}", value if value is not None else np.nan, expected)
        self._compare_grads("expected.G_step.grad", total, model)
        # The discriminator step regenerates the fake in training mode: z from the encoder with the same eps.
        d_losses = model.discriminator_losses(sem, real, eps=eps)
        d_total = sum(d_losses.values())
        for name, expected in r.group("expected.D_step.loss").items():
            self.compare(f"D_step.loss.{name}", d_losses.get(name, np.nan), expected)
        self._compare_grads("expected.D_step.grad", d_total, model)

    def _compare_grads(self, prefix, loss, model):
        entries = self.ref.group(prefix)
        if not entries:
            return
        nets = model.networks()
        params, names = [], []
        for key in entries:
            net_name, pname = key.split(".", 1)
            params.append(nets[net_name].state_dict()[pname])
            names.append(key)
        grads = jt.grad(loss, params)
        for key, g in zip(names, grads):
            self.compare(f"{prefix[len('expected.'):]}.{key}", g, entries[key], gradient=True)

    def run(self):
        for check in (self.check_semantics, self.check_generator_forwards, self.check_discriminator_forward,
                      self.check_encoder_forward, self.check_vgg, self.check_steps):
            check()
        return self.results


def run_parity(path):
    return ParityRun(path).run()
