"""Training SPADE: the original's step order (a generator step, then a discriminator step on a
fresh fake), TTUR Adam, staged phases over data subsets, exact resume, MPI data parallelism.

A run lives in one folder, `<output_dir>/<name>/`:
    config.toml            the full configuration the run was made with
    log.jsonl              one JSON object per logged iteration (losses, lr, timings)
    checkpoints/latest.pkl the newest state (networks, optimiser moments, position in the schedule)
    checkpoints/iter_XXXXXXX.pkl, phaseK_end.pkl   kept snapshots, never overwritten
    samples/iter_XXXXXXX.jpg  coloured label | generated | real, one row per sample
Under MPI every rank trains; only rank 0 writes.
"""
import json
import math
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image

from jspade.runtime import jt
from jspade.checkpoint import CheckpointError, load_state_strict, read_checkpoint, save_checkpoint
from jspade.config import Config, to_toml
from jspade.data.datasets import build_dataset
from jspade.data.labels import colorize
from jspade.data.semantics import semantics_for
from jspade.data.synthetic import write_synthetic_dataset
from jspade.data.transforms import to_uint8_images
from jspade.data.validate import validate_dataset
from jspade.atomic import save_image_atomic, write_bytes_atomic
from jspade.models.base import trainable_parameters
from jspade.models.generator import check_output_size
from jspade.models.spade_model import SPADEModel
from jspade.train.optim import Adam
from jspade.train.progress import training_bar

RUN_MARKER = ".jspade-run"


class RunFolderError(RuntimeError):
    pass


def is_main_rank():
    return not jt.in_mpi or jt.rank == 0


def log(msg):
    if is_main_rank():
        print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# The schedule
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


class EpochSampler:
    """The order of samples in an epoch: a permutation fixed by (seed, phase, epoch), so that a
    resumed run sees exactly the batches the uninterrupted one would have; `skip` drops the
    samples of batches already trained on. The same on every MPI rank (Jittor splits each batch)."""

    def __init__(self, n, seed):
        self.n, self.seed = n, seed
        self.phase = self.epoch = self.skip = 0

    def __iter__(self):
        order = np.random.default_rng((self.seed, self.phase, self.epoch)).permutation(self.n)
        return iter(order[self.skip:].tolist())

    def __len__(self):
        return self.n - self.skip


# ---------------------------------------------------------------------------------------------
def sample_grid(labels, fakes, reals, label_nc):
    """Rows of coloured label | generated | real (uint8 HxWx3 arrays)."""
    rows = []
    for i in range(len(fakes)):
        cells = [colorize(labels[i], label_nc), fakes[i]] + ([reals[i]] if reals is not None else [])
        rows.append(np.concatenate(cells, axis=1))
    return np.concatenate(rows, axis=0)


class Trainer:
    def __init__(self, cfg: Config, resume=False, overwrite=False, preset_name="run", progress=True):
        self.cfg = cfg
        check_output_size(cfg.model.crop_size, cfg.model.aspect_ratio, cfg.model.num_upsampling_layers)
        self.progress = progress and is_main_rank()
        self.run_dir = self._prepare_run_dir(resume, overwrite, preset_name)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.sample_dir = self.run_dir / "samples"
        self.data_root = self._prepare_data()

        opt = cfg.model
        jt.set_global_seed(cfg.train.seed, different_seed_for_mpi=False)  # identical init on every rank
        self.model = SPADEModel(opt)
        if jt.in_mpi:
            for net in self.model.networks().values():
                net.mpi_param_broadcast(0)
        self.vgg_pretrained = self._load_vgg()
        if cfg.train.amp:
            if jt.flags.use_cuda:
                # Jittor's automatic mixed precision: fp16 where safe, fp32 for reductions/exp.
                jt.flags.auto_mixed_precision_level = 4
                log("mixed precision on (Jittor auto_mixed_precision_level=4)")
            else:
                log("--train.amp ignored: mixed precision needs a CUDA device")
        g_params = trainable_parameters(self.model.netG)
        if self.model.netE is not None:
            g_params += trainable_parameters(self.model.netE)
        self.opt_G = Adam(g_params, lr=0.0, betas=self._betas())
        self.opt_D = Adam(trainable_parameters(self.model.netD), lr=0.0, betas=self._betas())
        self.pos = Position()
        if resume and (self.ckpt_dir / "latest.pkl").exists():
            self._resume(self.ckpt_dir / "latest.pkl")
        self.samples = None

    # --- set-up -----------------------------------------------------------------------------
    def _prepare_run_dir(self, resume, overwrite, preset_name):
        t = self.cfg.train
        name = t.name or f"{preset_name}-{datetime.now():%Y%m%d-%H%M%S}"
        run_dir = Path(t.output_dir) / name
        if run_dir.exists() and any(run_dir.iterdir()):
            ours = (run_dir / RUN_MARKER).exists()
            if resume and not ours:
                raise RunFolderError(f"{run_dir} was not created by jspade training; refusing to resume into it")
            if not resume and not overwrite:
                raise RunFolderError(f"{run_dir} already exists: pass --resume to continue that run, "
                                     "or --overwrite to train into it anyway (its checkpoints will be replaced)")
        elif resume:
            raise RunFolderError(f"nothing to resume: {run_dir} does not exist")
        if is_main_rank():
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / RUN_MARKER).touch()
            write_bytes_atomic(run_dir / "config.toml", to_toml(self.cfg).encode())
        return run_dir

    def _prepare_data(self):
        d, m = self.cfg.data, self.cfg.model
        if d.dataset != "synthetic":
            if not d.root:
                raise ValueError("no training data: pass --data DIR (or --data.dataset synthetic)")
            return Path(d.root)
        width, height = m.image_size
        root = Path(d.root or f"{self.cfg.train.output_dir}/synthetic_{width}x{height}")
        have = len(list((root / "labels").glob("*.png"))) if (root / "labels").exists() else 0
        if have < d.synthetic_n and is_main_rank():
            from tqdm import tqdm
            log(f"generating {d.synthetic_n - have} synthetic landscape pairs in {root}")
            write_synthetic_dataset(root, d.synthetic_n - have, size=(width, height), seed=d.synthetic_seed,
                                    start=have, progress=lambda r: tqdm(r, desc="synthetic data",
                                                                        disable=not self.progress))
        if jt.in_mpi:
            jt.array([0]).mpi_all_reduce().sync()  # a barrier: other ranks wait for rank 0's data
        return root

    def dataset_options(self, subset=""):
        d, m = self.cfg.data, self.cfg.model
        if subset and not Path(subset).is_absolute() and not Path(subset).exists():
            subset = str(self.data_root / subset)
        return dict(label_nc=m.label_nc, crop_size=m.crop_size, aspect_ratio=m.aspect_ratio,
                    load_size=d.load_size or None, preprocess_mode=d.preprocess_mode or None,
                    no_flip=d.no_flip, no_instance=m.no_instance,
                    contain_dontcare_label=m.contain_dontcare_label, subset=subset or None,
                    seed=self.cfg.train.seed)

    def _dataset_name(self):
        return "landscape" if self.cfg.data.dataset == "synthetic" else self.cfg.data.dataset

    def build_phase_dataset(self, phase_index):
        phase = self.cfg.phases[phase_index]
        ds = build_dataset(self._dataset_name(), self.data_root, **self.dataset_options(phase.subset))
        if ds.total_len < phase.batch_size:
            raise ValueError(f"phase {phase_index + 1}: {ds.total_len} samples, fewer than batch size {phase.batch_size}")
        ds.set_attrs(batch_size=phase.batch_size, shuffle=False, drop_last=True,
                     num_workers=self.cfg.data.num_workers)
        ds.sampler = EpochSampler(ds.total_len, self.cfg.train.seed)
        return ds

    def validate_data(self):
        """Report every broken pair / out-of-range id before spending GPU time."""
        if self.cfg.data.dataset == "synthetic" or not self.cfg.data.validate or not is_main_rank():
            return
        opts = self.dataset_options()
        opts.pop("subset")
        problems = validate_dataset(self._dataset_name(), self.data_root, progress=self.progress, **opts)
        if problems:
            shown = "\n  ".join(str(p) for p in problems[:50])
            raise ValueError(f"{len(problems)} problem(s) in {self.data_root} (fix them, or pass "
                             f"--data.validate false to train on the valid pairs only):\n  {shown}")

    def _betas(self):
        t = self.cfg.train
        return (t.beta1, t.beta2) if t.no_ttur else (0.0, 0.9)

    def _set_lr(self, lr):
        if self.cfg.train.no_ttur:
            self.opt_G.lr, self.opt_D.lr = lr, lr
        else:
            self.opt_G.lr, self.opt_D.lr = lr / 2, lr * 2

    def _load_vgg(self):
        if self.model.vgg is None:
            return None
        path = self.cfg.train.vgg_weights
        if path:
            self.model.vgg.load_weights(path)
            log(f"VGG19 weights loaded from {path}")
            return True
        log("\n" + "!" * 78 + "\n!! WARNING: training WITHOUT pretrained VGG19 weights: the perceptual loss uses\n"
            "!! RANDOM VGG features. Pass --train.vgg_weights PATH (torchvision vgg19-*.pth or Jittor\n"
            "!! vgg19.pkl) for real training, or --model.no_vgg_loss true to drop the term.\n" + "!" * 78)
        return False

    # --- checkpoints --------------------------------------------------------------------------
    def save(self, filename, keep_latest=True):
        if not is_main_rank():
            return
        extra = {"optimizers": {"G": self.opt_G.state_dict(), "D": self.opt_D.state_dict()},
                 "position": vars(self.pos).copy(), "config": self.cfg.to_dict(),
                 "vgg_pretrained": self.vgg_pretrained}
        path = self.ckpt_dir / filename
        if path.exists() and filename != "latest.pkl":
            raise CheckpointError(f"{path} exists already; refusing to overwrite it")
        save_checkpoint(path, self.model, extra)
        if keep_latest and filename != "latest.pkl":
            save_checkpoint(self.ckpt_dir / "latest.pkl", self.model, extra)

    def _resume(self, path):
        payload = read_checkpoint(path)
        for name, net in self.model.networks().items():
            load_state_strict(net, payload["networks"][name], source=f"{path} [{name}]")
        self.opt_G.load_state_dict(payload["optimizers"]["G"])
        self.opt_D.load_state_dict(payload["optimizers"]["D"])
        self.pos = Position(**payload["position"])
        log(f"resumed {path} at iteration {self.pos.iteration} (phase {self.pos.phase + 1}, "
            f"epoch {self.pos.epoch + 1}, batch {self.pos.batch})")

    # --- one iteration --------------------------------------------------------------------------
    def inputs(self, batch):
        sem = semantics_for(self.cfg.model, batch["label"], batch.get("instance"))
        return sem, batch["image"]

    def train_step(self, sem, real):
        """One generator step, then one discriminator step on a fresh fake. Returns float losses."""
        g_losses, _, _ = self.model.generator_losses(sem, real)
        g_total = sum(g_losses.values())
        self.opt_G.step(g_total, fetch=list(g_losses.values()))
        d_losses = self.model.discriminator_losses(sem, real)
        self.opt_D.step(sum(d_losses.values()), fetch=list(d_losses.values()))
        return {k: float(v.item()) for k, v in {**g_losses, **d_losses}.items()}

    def write_samples(self, tag):
        if not is_main_rank() or self.cfg.train.num_samples <= 0:
            return
        if self.samples is None:
            ds = build_dataset(self._dataset_name(), self.data_root, phase="val",
                               **{**self.dataset_options(), "no_flip": True})
            items = [ds[i] for i in range(min(self.cfg.train.num_samples, ds.total_len))]
            label = jt.array(np.stack([it["label"] for it in items]).astype(np.int32))
            inst = jt.array(np.stack([it["instance"] for it in items])) if "instance" in items[0] else None
            self.samples = (label, inst, jt.array(np.stack([it["image"] for it in items])))
        label, inst, real = self.samples
        sem = semantics_for(self.cfg.model, label, inst)
        self.model.eval()
        with jt.no_grad():
            z = self.model.netE(real)[0] if self.model.netE is not None else None  # the style of the real photo
            fake = self.model.netG(sem, z=z)
        self.model.train()
        grid = sample_grid(label.numpy()[:, 0], to_uint8_images(fake), to_uint8_images(real), self.cfg.model.label_nc)
        save_image_atomic(self.sample_dir / f"{tag}.jpg", Image.fromarray(grid), quality=90)

    # --- the loop ------------------------------------------------------------------------------
    def iterations_per_phase(self):
        out = []
        for i, phase in enumerate(self.cfg.phases):
            n = build_dataset(self._dataset_name(), self.data_root, **self.dataset_options(phase.subset)).total_len
            out.append(phase.epochs * (n // phase.batch_size))
        return out

    def train(self):
        t = self.cfg.train
        self.validate_data()
        per_phase = self.iterations_per_phase()
        total = sum(per_phase)
        if t.max_iters:
            total = min(total, t.max_iters)
        bar = training_bar(total, self.pos.iteration, t.max_minutes, disable=not self.progress)
        started = time.time()
        limits = [f"{t.max_iters} iterations" if t.max_iters else "", f"{t.max_minutes:g} minutes" if t.max_minutes else ""]
        log(f"training {self.run_dir}: {total} iterations over {len(self.cfg.phases)} phase(s)"
            + (f", stopping after {' or '.join(x for x in limits if x)}" if any(limits) else ""))
        self.model.train()
        log_file = open(self.run_dir / "log.jsonl", "a") if is_main_rank() else None
        stop_reason = None
        try:
            while self.pos.phase < len(self.cfg.phases) and stop_reason is None:
                phase = self.cfg.phases[self.pos.phase]
                ds = self.build_phase_dataset(self.pos.phase)
                while self.pos.epoch < phase.epochs and stop_reason is None:
                    lr = phase_lr(phase, self.pos.epoch)
                    self._set_lr(lr)
                    ds.sampler.phase, ds.sampler.epoch = self.pos.phase, self.pos.epoch
                    ds.sampler.skip = self.pos.batch * phase.batch_size
                    ds.set_epoch(self.epoch_seed())
                    t_data = time.time()
                    for batch in ds:
                        data_s = time.time() - t_data
                        jt.set_global_seed(t.seed * 1_000_003 + self.pos.iteration)  # per-iteration noise: resumable
                        t_step = time.time()
                        losses = self.train_step(*self.inputs(batch))
                        step_s = time.time() - t_step
                        self.pos.iteration += 1
                        self.pos.batch += 1
                        bar.update(1)
                        if not all(math.isfinite(v) for v in losses.values()):
                            raise FloatingPointError(f"non-finite loss at iteration {self.pos.iteration}: {losses}")
                        if self.pos.iteration % t.log_every == 0 or self.pos.iteration == 1:
                            bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()}, refresh=False)
                            if log_file:
                                log_file.write(json.dumps({
                                    "iter": self.pos.iteration, "phase": self.pos.phase + 1,
                                    "epoch": self.pos.epoch + 1, "lr": lr, "losses": losses,
                                    "step_s": round(step_s, 4), "data_s": round(data_s, 4),
                                    "time": round(time.time() - started, 1)}) + "\n")
                                log_file.flush()
                        if t.sample_every and self.pos.iteration % t.sample_every == 0:
                            self.write_samples(f"iter_{self.pos.iteration:07d}")
                        if t.save_every and self.pos.iteration % t.save_every == 0:
                            self.save(f"iter_{self.pos.iteration:07d}.pkl")
                        if t.max_iters and self.pos.iteration >= t.max_iters:
                            stop_reason = f"reached max_iters={t.max_iters}"
                        elif t.max_minutes and time.time() - started > t.max_minutes * 60:
                            stop_reason = f"reached max_minutes={t.max_minutes}"
                        if stop_reason:
                            break
                        t_data = time.time()
                    if stop_reason is None:
                        self.pos.epoch += 1
                        self.pos.batch = 0
                if stop_reason is None:
                    self.pos.phase += 1
                    self.pos.epoch = 0
                    self.save(f"phase{self.pos.phase}_end.pkl")
        finally:
            bar.close()
            if log_file:
                log_file.close()
        tag = f"iter_{self.pos.iteration:07d}"
        self.write_samples(tag)
        if not (self.ckpt_dir / f"{tag}.pkl").exists():
            self.save(f"{tag}.pkl")
        log(f"training stopped: {stop_reason or 'all phases done'} after {self.pos.iteration} iterations "
            f"({(time.time() - started) / 60:.1f} min)")
        return self.run_dir

    def epoch_seed(self):
        """Augmentation epoch index, unique across phases (crops/flips depend on it)."""
        return sum(p.epochs for p in self.cfg.phases[: self.pos.phase]) + self.pos.epoch
