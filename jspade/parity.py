"""Check a port against reference vectors from the original PyTorch SPADE or TSIT
(`../shared/fixtures/spade_reference/FORMAT.md` describes the archive, `tsit_reference/FORMAT.md`
what a TSIT archive adds).

Every check starts from the archive's `init.*` weights; the networks are built from its
`config_json` alone, so any configuration of the format can be checked.

FORMAT.md's rule: activations, features, losses and state within 1e-4 * max(1, max|expected|);
gradients within 1e-3 * max|expected| plus the array's float32 noise (the largest change of our own
result over ulp-nudged reruns of the step; FORMAT.md asks for at least 8). Where the archive carries
`noise.expected.<name>` (the original code's own spread under one-ulp nudges), every array is held to
its tolerance plus that noise; a gradient to its tolerance plus the larger of that and our own noise."""
import json
import zipfile
from dataclasses import dataclass

import numpy as np

from jspade.runtime import jt
from jspade.checkpoint import load_state_strict, original_layout, part_of, state_arrays
from jspade.config import ModelConfig
from jspade.data.semantics import instance_edges, semantics_for
from jspade.errors import JspadeError
from jspade.models.spade_model import SPADEModel


@dataclass
class Comparison:
    name: str
    error: float
    tolerance: float
    gradient: bool = False
    # How far our own result moves when every weight and input moves by at most one float32 ulp
    # (None: not measured). Gradients of a GAN step pass through thousands of ReLU/hinge/L1 kinks; a
    # few of them sit within rounding of zero, so a float32 gradient is only defined up to this much.
    noise: float | None = None
    # The reference's own float32 noise (`noise.expected.<name>` of the archive; None: it has none): how far
    # the original code's result moves under one-ulp nudges of its weights and inputs.
    reference_noise: float | None = None

    @property
    def ok(self):
        """Within FORMAT.md's tolerance."""
        return bool(np.isfinite(self.error) and self.error <= self.tolerance)

    @property
    def allowance(self):
        """The noise FORMAT.md adds to the tolerance: the reference's, and for a gradient the larger
        of that and our own."""
        own = (self.noise or 0.0) if self.gradient else 0.0
        return max(self.reference_noise or 0.0, own)

    @property
    def within_noise(self):
        """Not within tolerance, but within tolerance + the larger of the reference's and our own
        measured float32 noise of this array."""
        noise = max(self.noise or 0.0, self.reference_noise or 0.0)
        return bool(not self.ok and (self.noise is not None or self.reference_noise is not None)
                    and np.isfinite(self.error) and self.error <= self.tolerance + noise)

    @property
    def passed(self):
        """FORMAT.md's bound: the tolerance plus the reference's noise, for a gradient plus the larger
        of that and our own."""
        return self.ok or bool(np.isfinite(self.error) and self.error <= self.tolerance + self.allowance)

    @property
    def needed_reference_noise(self):
        """Passed, over the bare tolerance, within tolerance + the reference's noise alone."""
        return bool(self.passed and not self.ok and self.reference_noise is not None
                    and self.error <= self.tolerance + self.reference_noise)


class ArchiveError(JspadeError, ValueError):
    """A reference archive that cannot be checked (one line: the file and the reason)."""

    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)


def required_arrays(config):
    """The arrays FORMAT.md says every archive of this configuration has (more are compared where present)."""
    names = ["input.label", "input.semantics", "input.real_image", "expected.G.train_forward",
             "expected.G.eval_forward", "expected.G_step.fake", "expected.G_step.loss.total",
             "expected.D_step.loss.D_Fake", "expected.D_step.loss.D_real"]
    if config.get("use_vae"):
        names += ["input.z", "input.eps", "expected.E.train_forward.mu", "expected.E.train_forward.logvar"]
    names += [f"expected.D.train_forward.scale{i}.layer0" for i in range(int(config.get("num_D", 0)))]
    return names


class ReferenceArchive:
    """An archive of FORMAT.md's layout, checked on opening: an .npz (no pickled objects), a
    `config_json` that builds a model, the arrays FORMAT.md names and weights for every network."""

    def __init__(self, path):
        self.path = str(path)
        if not zipfile.is_zipfile(path):
            raise ArchiveError(path, "not an .npz archive (numpy's zip format)")
        try:
            self.npz = np.load(path)
            files = set(self.npz.files)
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            raise ArchiveError(path, f"unreadable .npz archive ({error})") from None
        if "config_json" not in files:
            raise ArchiveError(path, "has no config_json (the reference's options, FORMAT.md)")
        try:
            self.config = json.loads(str(self.npz["config_json"]))
            if not isinstance(self.config, dict):
                raise ValueError("not a JSON object")
            self.opt = ModelConfig.from_dict(self.config)
        except (ValueError, TypeError, zipfile.BadZipFile) as error:
            raise ArchiveError(path, f"config_json: {error}") from None
        missing = [k for k in required_arrays(self.config) if k not in files]
        missing += [f"init.{net}.*" for net in ("G", "D") + (("E",) if self.opt.use_vae else ())
                    if not any(k.startswith(f"init.{net}.") for k in files)]
        if missing:
            raise ArchiveError(path, f"missing arrays {', '.join(missing)} (FORMAT.md)")

    def __contains__(self, key):
        return key in self.npz.files

    def __getitem__(self, key):
        try:
            return self.npz[key]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:  # a truncated or corrupt member
            raise ArchiveError(self.path, f"unreadable array {key} ({error})") from None

    @property
    def has_noise(self):
        """Whether the archive carries the reference's own float32 noise (`noise.expected.*`)."""
        return any(k.startswith("noise.expected.") for k in self.npz.files)

    def reference_noise(self, name):
        """noise.expected.<name> as a float (None where the archive has none for it)."""
        key = f"noise.expected.{name}"
        return float(self[key]) if key in self else None

    def group(self, prefix):
        """{name: array} of every key under `prefix.` with the prefix removed."""
        return {k[len(prefix) + 1:]: self[k] for k in self.npz.files if k.startswith(prefix + ".")}


def _tol_activation(expected):
    return 1e-4 * max(1.0, float(np.abs(expected).max()) if expected.size else 1.0)


def _tol_gradient(expected):
    return 1e-3 * float(np.abs(expected).max())


def ulp_nudge(array, rng):
    """`array` (float32) with every nonzero element moved by -1, 0 or +1 ulp, at random."""
    a = np.asarray(array, np.float32)
    step = rng.randint(-1, 2, a.shape)
    toward = np.where(step > 0, np.float32(np.inf), np.float32(-np.inf))
    return np.where((step == 0) | (a == 0), a, np.nextafter(a, toward)).astype(np.float32)


class ParityRun:
    def __init__(self, archive_path):
        self.ref = ReferenceArchive(archive_path)
        self.results: list[Comparison] = []
        self._step_baseline = None  # step_outputs() of check_steps, reused by measure_noise
        self._forward_baseline = None  # generator_forwards() of check_generator_forwards, likewise

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
        self.results.append(Comparison(name, err, tol, gradient=gradient,
                                       reference_noise=self.ref.reference_noise(name)))

    def fresh_model(self, nudge=None):
        """A model holding the archive's init.* weights, in training mode; with `nudge` (a RandomState),
        every float weight moved by at most one ulp."""
        opt = self.ref.opt
        model = SPADEModel(opt, with_discriminator=True, with_vgg=opt.use_vgg)
        nets = dict(model.networks())
        if model.vgg is not None:
            nets["VGG"] = model.vgg
        for name, net in nets.items():
            state = self.ref.group(f"init.{name}")
            if nudge is not None:
                state = {k: ulp_nudge(v, nudge) if v.dtype == np.float32 else v for k, v in state.items()}
            load_state_strict(net, state, source=f"{self.ref.path} init.{name}")
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
        state = state_arrays(net)
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

    def generator_forwards(self, nudge_seed=None):
        """({name: array} of G's training-mode forward and the eval-mode forward after it, the model).
        With `nudge_seed`, weights and z first move by at most one float32 ulp each."""
        nudge = None if nudge_seed is None else np.random.RandomState(nudge_seed)
        model = self.fresh_model(nudge)
        sem, real, _ = self.inputs()
        z = self.ref["input.z"] if "input.z" in self.ref else None
        z = jt.array(ulp_nudge(z, nudge) if nudge is not None else z) if z is not None else None
        out = {"G.train_forward": model.generate(sem, z=z, style=real).numpy()}
        model.netG.eval()  # eval mode moves no state: the running statistics and u/v stay as the forward left them
        with jt.no_grad():
            out["G.eval_forward"] = model.generate(sem, z=z, style=real).numpy()
        return out, model

    def check_generator_forwards(self):
        outputs, model = self.generator_forwards()
        self._forward_baseline = outputs
        for name, actual in outputs.items():
            self.compare(name, actual, self.ref[f"expected.{name}"])
        self.compare_state("after_train_forward.G", model.netG)

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

    def step_outputs(self, nudge_seed=None):
        """{name: array} of everything the generator step, and the discriminator step after it, produce
        (fake, losses, gradients), named as in the archive without 'expected.'. With `nudge_seed`, the
        weights and inputs first move by at most one float32 ulp each (see `measure_noise`)."""
        r = self.ref
        nudge = None if nudge_seed is None else np.random.RandomState(nudge_seed)
        model = self.fresh_model(nudge)
        sem = jt.array(r["input.semantics"])
        real, eps = r["input.real_image"], r["input.eps"] if "input.eps" in r else None
        if nudge is not None:
            real = ulp_nudge(real, nudge)
            eps = ulp_nudge(eps, nudge) if eps is not None else None
        real, eps = jt.array(real), jt.array(eps) if eps is not None else None
        out = {}
        g_losses, fake, z = model.generator_losses(sem, real, eps=eps)
        total = sum(g_losses.values())
        out["G_step.fake"] = fake
        for name in r.group("expected.G_step.loss"):
            out[f"G_step.loss.{name}"] = total if name == "total" else g_losses.get(name, np.nan)
        out.update(self._gradients("expected.G_step.grad", total, model))
        # The discriminator step regenerates the fake in training mode from the same z (FORMAT.md): the
        # encoder does not run again, so its u/v get no second power iteration.
        d_losses = model.discriminator_losses(sem, real, z=z.detach() if z is not None else None)
        for name in r.group("expected.D_step.loss"):
            out[f"D_step.loss.{name}"] = d_losses.get(name, np.nan)
        out.update(self._gradients("expected.D_step.grad", sum(d_losses.values()), model))
        return {k: v.numpy() if isinstance(v, jt.Var) else np.asarray(v) for k, v in out.items()}

    def check_steps(self):
        """One generator step from init, then the discriminator step that follows it."""
        self._step_baseline = self.step_outputs()
        for name, actual in self._step_baseline.items():
            self.compare(name, actual, self.ref[f"expected.{name}"], gradient=".grad." in name)

    def _gradients(self, prefix, loss, model):
        entries = self.ref.group(prefix)
        if not entries:
            return {}
        # the archive names the original's parameters; ours may hold several in one (original_layout)
        nets = model.networks()
        where = {f"{net}.{name}": (net, key, part, parts) for net, module in nets.items()
                 for name, key, part, parts in original_layout(module)}
        keys = sorted({where[name][:2] for name in entries})
        states = {net: nets[net].state_dict() for net in {net for net, _ in keys}}
        grads = dict(zip(keys, jt.grad(loss, [states[net][key] for net, key in keys])))
        return {f"{prefix[len('expected.'):]}.{name}": part_of(grads[where[name][:2]], *where[name][2:])
                for name in entries}

    def measure_noise(self, runs=8):
        """The float32 noise of each step output and of G's forwards: the largest change of our own
        result over `runs` reruns with every weight and input nudged by at most one ulp. The reference
        carries noise of the same kind: for a gradient, an error within tolerance + noise cannot be told
        apart from rounding (FORMAT.md's rule); for an activation the noise is only reported."""
        if runs <= 0:
            return
        baseline = dict(self._step_baseline if self._step_baseline is not None else self.step_outputs())
        baseline.update(self._forward_baseline if self._forward_baseline is not None else self.generator_forwards()[0])
        noise = dict.fromkeys(baseline, 0.0)
        for seed in range(1, runs + 1):
            for outputs in (self.step_outputs(nudge_seed=seed), self.generator_forwards(nudge_seed=seed)[0]):
                for name, value in outputs.items():
                    diff = np.abs(value.astype(np.float64) - baseline[name].astype(np.float64))
                    noise[name] = max(noise[name], float(diff.max()) if diff.size else 0.0)
        for c in self.results:
            if c.name in noise:
                c.noise = noise[c.name]

    def run(self, noise_runs=8, noise_only_if_needed=False):
        """Every check; then our own float32 noise over `noise_runs` nudged reruns (with
        `noise_only_if_needed`, only when some gradient misses tolerance + the reference's noise, the
        one case where our own noise can decide)."""
        for check in (self.check_semantics, self.check_generator_forwards, self.check_discriminator_forward,
                      self.check_encoder_forward, self.check_vgg, self.check_steps):
            check()
        if not (noise_only_if_needed and all(c.passed for c in self.results if c.gradient)):
            self.measure_noise(noise_runs)
        return self.results


def run_parity(path, noise_runs=8, noise_only_if_needed=False):
    return ParityRun(path).run(noise_runs, noise_only_if_needed)
