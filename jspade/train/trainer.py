"""Training SPADE: the original's step order (a generator step, then a discriminator step on a
fresh fake), TTUR Adam, staged phases over data subsets, exact resume, MPI data parallelism.

A run lives in one folder, `<output_dir>/<name>/`:
    config.toml            the full configuration the run was made with
    log.jsonl              one JSON object per logged iteration (losses, lr, timings)
    checkpoints/latest.pkl, phaseK_end.pkl   the full training state (networks, optimiser moments,
                           position in the schedule)
    checkpoints/iter_XXXXXXX.pkl   snapshots for inference/averaging (G, E), never overwritten
    (jspade/train/run_folder.py: checkpoint kinds, which one a resume uses, pruning)
    checkpoints/best_fid.pkl  the lowest-FID state so far (with train.fid_every), replaced as it improves
    fid_real_stats.npz     the held-out photos' Inception statistics (with train.fid_every)
    samples/iter_XXXXXXX.jpg  coloured label | generated | real, one row per sample
    report.html            loss/FID/lr curves and the sample grids (refreshed at each sample step)
Under MPI every rank trains; only rank 0 writes.
"""
import json
import math
import os
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image

from jspade.runtime import jt
from jspade.checkpoint import CheckpointError, load_networks, save_checkpoint
from jspade.config import Config, check_config, to_toml
from jspade.errors import ConfigError
from jspade.data.datasets import build_dataset
from jspade.data.labels import colorize
from jspade.data.readers import DataError
from jspade.data.semantics import semantics_for
from jspade.data.synthetic import write_synthetic_dataset
from jspade.data.transforms import to_uint8_images
from jspade.data.validate import validate_dataset
from jspade.atomic import save_image_atomic, write_bytes_atomic
from jspade.models.base import trainable_parameters
from jspade.models.generator import check_output_size
from jspade.models.spade_model import SPADEModel
from jspade.style_bank import StyleBank, build_style_bank
from jspade.train import run_folder
from jspade.report import write_report
from jspade.train.diffaugment import DiffAugment
from jspade.train.ema import ModelEMA
from jspade.train.fid_tracker import REAL_STATS_FILE, FIDHistory, HeldOutFID, drop_samples, is_held_out
from jspade.train.optim import Adam
from jspade.train.schedule import EpochOrder, Schedule
from jspade.train.progress import training_bar

RUN_MARKER = ".jspade-run"
RunFolderError = run_folder.RunFolderError  # (its home is run_folder; imported from here by callers)


def is_main_rank():
    return not jt.in_mpi or jt.rank == 0


def log(msg):
    if is_main_rank():
        print(msg, file=sys.stderr, flush=True)


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
        """Everything that can fail (configuration, data, subsets, VGG weights, the checkpoint to
        resume) is checked before the run folder is created or changed: a failed start leaves it as it
        was. The run folder is locked (run_folder.lock_run_folder) from here until train() ends."""
        self.cfg = cfg
        self._lock = None
        check_config(cfg, "configuration")
        try:
            check_output_size(cfg.model.crop_size, cfg.model.aspect_ratio, cfg.model.num_upsampling_layers,
                              netG=cfg.model.netG)
        except ValueError as e:
            raise ConfigError(f"[model] {e}") from None
        for i, phase in enumerate(cfg.phases):
            try:
                DiffAugment(phase.diffaugment)
            except ValueError as e:
                raise ConfigError(f"[[phases]] #{i + 1}: {e}") from None
        self.progress = progress and is_main_rank()
        try:
            self._start(resume, overwrite, preset_name)
        except BaseException:
            self.release_lock()
            raise

    def _start(self, resume, overwrite, preset_name):
        cfg = self.cfg
        self.run_dir = self._choose_run_dir(resume, overwrite, preset_name)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.sample_dir = self.run_dir / "samples"
        self.data_root = self._prepare_data()
        self.validate_data()
        self.schedule = Schedule(cfg.phases, self.phase_sizes(), cfg.train.seed)

        opt = cfg.model
        jt.set_global_seed(cfg.train.seed, different_seed_for_mpi=False)  # identical init on every rank
        self.model = SPADEModel(opt)
        if jt.in_mpi:
            for net in self.model.networks().values():
                net.mpi_param_broadcast(0)
        # a CLIP model: {stem: embedding} of the training images, and the style bank (sets netG.clip_mean)
        self.clip_embeddings = self._load_clip_embeddings() if self.model.uses_clip else None
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
        self.optimizer_G = Adam(g_params, lr=0.0, betas=self._betas())
        self.optimizer_D = Adam(trainable_parameters(self.model.netD), lr=0.0, betas=self._betas())
        self.ema = self._build_ema()
        self._ema_calibrated_at = None
        self.fid_history = FIDHistory()
        self.held_out_fid = None
        self.fid_seconds = 0.0  # time spent measuring FID in this process
        resumed = self._resume(run_folder.find_resume_point(self.ckpt_dir)) if resume else None
        self._commit_run_dir(resumed, overwrite)
        self.samples = None
        self.report_path = None
        held_out = self.held_out_dataset().total_len if cfg.train.fid_every else None
        if held_out is not None and held_out < 2:  # fail now, not at the first FID
            raise DataError(f"train.fid_every: the held-out set has {held_out} pair(s); FID needs at least 2")

    def release_lock(self):
        """Let another process train in this run folder (the lock also ends with the process)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    @property
    def pos(self):
        """Where training is (phase, epoch, batch, iteration): owned by the schedule."""
        return self.schedule.pos

    # --- set-up -----------------------------------------------------------------------------
    def _choose_run_dir(self, resume, overwrite, preset_name):
        """The run folder, checked against --resume/--overwrite; nothing is written yet."""
        t = self.cfg.train
        if resume and overwrite:
            raise RunFolderError("--resume and --overwrite contradict each other: pass one")
        name = t.name or f"{preset_name}-{datetime.now():%Y%m%d-%H%M%S}"
        run_dir = Path(t.output_dir) / name
        if run_dir.exists() and not run_dir.is_dir():
            raise RunFolderError(f"{run_dir} is a file, not a run folder")
        if run_dir.is_dir() and (run_dir / RUN_MARKER).exists() and is_main_rank():
            self._lock = run_folder.lock_run_folder(run_dir)  # refused while another process trains in it
        if run_dir.exists() and run_folder.folder_contents(run_dir):
            if resume and not (run_dir / RUN_MARKER).exists():
                raise RunFolderError(f"{run_dir} was not created by jspade training; refusing to resume into it")
            if not resume and not overwrite:
                raise RunFolderError(f"{run_dir} already exists: pass --resume to continue that run, or "
                                     "--overwrite to start over (its contents are moved aside to "
                                     f"{run_dir.name}.replaced-<time>)")
        elif resume:
            raise RunFolderError(f"nothing to resume: {run_dir} does not exist or is empty")
        return run_dir

    def _commit_run_dir(self, resumed, overwrite):
        """Create (or, with --overwrite, replace) the run folder once the model has loaded."""
        if not is_main_rank():
            return
        run_dir = self.run_dir
        if overwrite and run_dir.exists() and run_folder.folder_contents(run_dir):
            aside = run_dir.with_name(f"{run_dir.name}.replaced-{datetime.now():%Y%m%d-%H%M%S}")
            os.replace(run_dir, aside)
            self.release_lock()  # its lock file moved aside with it
            log(f"--overwrite: the previous contents of {run_dir} were moved to {aside}")
        run_dir.mkdir(parents=True, exist_ok=True)
        if self._lock is None:
            self._lock = run_folder.lock_run_folder(run_dir)
            if resumed is None and not overwrite and run_folder.folder_contents(run_dir):
                # another process started this run folder since _choose_run_dir looked
                self.release_lock()
                raise RunFolderError(f"{run_dir} was created by another training process meanwhile; "
                                     "choose another --name")
        for p in run_folder.remove_stale_temp_files(run_dir):
            log(f"removed {p}, a temporary file left by an interrupted write")
        if resumed is not None:
            for path, reason in resumed.damaged:  # set aside, so that the run never needs their names again
                if path.exists():
                    aside = run_folder.set_aside_damaged(path)
                    log(f"{path.name} is damaged ({reason}); renamed to {aside.name}")
        (run_dir / RUN_MARKER).touch()
        write_bytes_atomic(run_dir / "config.toml", to_toml(self.cfg).encode())
        if resumed is not None:
            self.log_event("resume", checkpoint=resumed.path.name, reason=resumed.why)

    def log_event(self, event, **fields):
        """One line in log.jsonl for something that is not an iteration (resume, restart)."""
        if is_main_rank():
            line = {"event": event, "iter": self.pos.iteration, **fields, "at": datetime.now().isoformat(timespec="seconds")}
            with open(self.run_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(line) + "\n")

    def _prepare_data(self):
        d, m = self.cfg.data, self.cfg.model
        if d.dataset != "synthetic":
            if not d.root:
                raise ConfigError("no training data: pass --data DIR (or --data.dataset synthetic)")
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
        val = root / "val"
        have_val = len(list((val / "labels").glob("*.png"))) if (val / "labels").exists() else 0
        if have_val < d.synthetic_val_n and is_main_rank():
            # Scene indices from 10^6 on: never among the training scenes.
            write_synthetic_dataset(val, d.synthetic_val_n - have_val, size=(width, height),
                                    seed=d.synthetic_seed, start=1_000_000 + have_val)
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
                    seed=self.cfg.train.seed, strict=d.validate)

    def _dataset_name(self):
        return "landscape" if self.cfg.data.dataset == "synthetic" else self.cfg.data.dataset

    def training_dataset(self, subset="", **opts):
        """The training pairs (of `subset`), without the held-out fraction."""
        ds = build_dataset(self._dataset_name(), self.data_root, **{**self.dataset_options(subset), **opts})
        fraction = self.cfg.data.holdout_fraction if not self.cfg.data.val_root else 0.0
        if fraction > 0:
            drop_samples(ds, lambda sample: not is_held_out(sample.stem, fraction))
        return ds

    def build_phase_dataset(self, phase_index):
        phase = self.cfg.phases[phase_index]
        ds = self.training_dataset(phase.subset)
        ds.set_attrs(batch_size=phase.batch_size, shuffle=False, drop_last=True,
                     num_workers=self.cfg.data.num_workers)
        return ds

    def phase_sizes(self):
        """Samples in each phase's data (all of it, or its subset)."""
        return [self.training_dataset(p.subset).total_len for p in self.cfg.phases]

    def validate_data(self):
        """Report every broken pair / out-of-range id before spending GPU time. With data.validate
        false the scan is skipped and incomplete pairs are left out (said once); a file that cannot be
        read stops the run when it is reached."""
        if self.cfg.data.dataset == "synthetic" or not is_main_rank():
            return
        opts = self.dataset_options()
        opts.pop("subset")
        opts.pop("strict")
        if not self.cfg.data.validate:
            skipped = build_dataset(self._dataset_name(), self.data_root, strict=False, **opts).problems
            if skipped:
                log(f"--data.validate false: {len(skipped)} incomplete pair(s) in {self.data_root} left out "
                    f"(first: {skipped[0]})")
            return
        problems = validate_dataset(self._dataset_name(), self.data_root, progress=self.progress, **opts)
        if problems:
            shown = "\n  ".join(str(p) for p in problems[:50])
            raise DataError(f"{len(problems)} problem(s) in {self.data_root} (fix them, or pass --data.validate "
                            f"false to skip this check: incomplete pairs are then left out, and a broken file "
                            f"stops the run when it is read):\n  {shown}")

    def _betas(self):
        t = self.cfg.train
        return (t.beta1, t.beta2) if t.no_ttur else (0.0, 0.9)

    def _set_lr(self, lr):
        if self.cfg.train.no_ttur:
            self.optimizer_G.lr, self.optimizer_D.lr = lr, lr
        else:
            self.optimizer_G.lr, self.optimizer_D.lr = lr / 2, lr * 2

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

    # --- EMA generator and FID during training ---------------------------------------------------
    def _build_ema(self):
        if self.cfg.train.ema_decay <= 0:
            return None
        copies = SPADEModel(self.cfg.model, with_discriminator=False, with_vgg=False).networks()
        sources = {name: net for name, net in self.model.networks().items() if name in copies}
        return ModelEMA(sources, copies, self.cfg.train.ema_decay)

    def ema_calibration_inputs(self):
        """The first `ema_bn_batches` batches of a fixed order of the training pairs (the same
        batches at every calibration, so a resumed run recalibrates as the uninterrupted one)."""
        phase = self.cfg.phases[min(self.pos.phase, len(self.cfg.phases) - 1)]
        ds = self.training_dataset(phase.subset)
        ds.set_attrs(batch_size=min(phase.batch_size, ds.total_len), shuffle=False, drop_last=True,
                     num_workers=self.cfg.data.num_workers)
        # an order no training epoch uses
        ds.sampler = EpochOrder(np.random.default_rng((self.cfg.train.seed, 1_000_000)).permutation(ds.total_len))
        for i, batch in enumerate(ds):
            if i >= self.cfg.train.ema_bn_batches:
                break
            yield self.inputs(batch)

    def calibrate_ema(self):
        """Recompute the EMA copy's batch-norm statistics, once per iteration at most (all ranks)."""
        if self.ema is None or self._ema_calibrated_at == self.pos.iteration:
            return
        jt.set_global_seed(self.cfg.train.seed + 7, different_seed_for_mpi=False)  # the encoder's z noise
        self.ema.recalibrate(self.ema_calibration_inputs())
        self._ema_calibrated_at = self.pos.iteration

    def held_out_dataset(self):
        """The pairs FID is measured on: data.val_root, <synthetic root>/val, or the held-out fraction."""
        d = self.cfg.data
        opts = {**self.dataset_options(), "no_flip": True}
        if d.val_root or (d.dataset == "synthetic" and d.synthetic_val_n > 0):
            root = Path(d.val_root) if d.val_root else self.data_root / "val"
            return build_dataset(self._dataset_name(), root, phase="val", **opts)
        if d.holdout_fraction > 0:
            ds = build_dataset(self._dataset_name(), self.data_root, phase="val", **opts)
            return drop_samples(ds, lambda sample: is_held_out(sample.stem, d.holdout_fraction))
        raise ConfigError("train.fid_every needs held-out pairs: pass --data.val_root DIR or "
                         "--data.holdout_fraction F (e.g. 0.02)")

    def fid_generator(self):
        """(netG, netE) that FID and best_fid.pkl are about: the EMA copy when there is one."""
        nets = self.ema.networks if self.ema is not None else self.model.networks()
        return nets["G"], nets.get("E")

    def fid_postfix(self):
        if not self.fid_history.entries:
            return {}
        return {"fid": f"{self.fid_history.last[1]:.2f}", "best": f"{self.fid_history.best[1]:.2f}"}

    def evaluate_fid(self, log_file=None, bar=None):
        """Measure FID now; log it, show it, and keep best_fid.pkl the best so far. Returns it.
        Its time does not count toward train.max_minutes (a training budget)."""
        started = time.time()
        try:
            return self._evaluate_fid(log_file, bar)
        finally:
            self.fid_seconds += time.time() - started

    def _evaluate_fid(self, log_file, bar):
        self.calibrate_ema()
        if not is_main_rank():
            return None
        if self.held_out_fid is None:
            self.held_out_fid = HeldOutFID(self.held_out_dataset(), self.cfg.model,
                                           self.run_dir / REAL_STATS_FILE, seed=self.cfg.train.seed)
        netG, netE = self.fid_generator()
        raw = self.ema is None
        if raw:
            self.model.eval()
        try:
            value = self.held_out_fid.measure(netG, netE)
        finally:
            if raw:
                self.model.train()
        is_best = self.fid_history.add(self.pos.iteration, value)
        if is_best:
            self.save(run_folder.BEST_FID, keep_latest=False)
        if bar is not None:
            bar.set_postfix(self.fid_postfix(), refresh=False)
        if log_file:
            log_file.write(json.dumps({"iter": self.pos.iteration, "phase": self.pos.phase + 1,
                                       "fid": round(value, 4), "fid_best": is_best}) + "\n")
            log_file.flush()
        return value

    # --- checkpoints --------------------------------------------------------------------------
    def save(self, filename, keep_latest=True):
        """`iter_*.pkl`: a snapshot (G, E); any other name: the full training state. Saving anything
        but latest.pkl also refreshes latest.pkl. On a full disk the run stops, latest.pkl intact."""
        self.calibrate_ema()  # collective under MPI: before the rank check
        if not is_main_rank():
            return
        extra = {"optimizers": {"G": self.optimizer_G.state_dict(), "D": self.optimizer_D.state_dict()},
                 **({"style_bank": self.model.style_bank.to_payload()} if self.model.style_bank is not None else {}),
                 "position": self.schedule.state_dict(), "config": self.cfg.to_dict(),
                 "vgg_pretrained": self.vgg_pretrained, "fid_history": self.fid_history.entries}
        if self.ema is not None:
            extra.update(ema_networks=self.ema.state(), ema_updates=self.ema.updates)
        path = self.ckpt_dir / filename
        keep_existing = path.exists() and filename not in (run_folder.LATEST, run_folder.BEST_FID)
        if keep_existing:  # a resume replaying the iterations after a crash between two writes
            log(f"{path} exists already; keeping it (numbered checkpoints are never overwritten)")
        full = {**extra, "kind": "full"}
        writing = path  # the file being written when a write fails (the message names it)
        try:
            if (run_folder.is_snapshot(filename) or filename == run_folder.BEST_FID) and not keep_existing:
                save_checkpoint(path, self.model, run_folder.snapshot_extra(extra),
                                networks=run_folder.SNAPSHOT_NETWORKS)
            elif not keep_existing:
                save_checkpoint(path, self.model, full)
            if keep_latest and filename != run_folder.LATEST:
                writing = self.ckpt_dir / run_folder.LATEST
                save_checkpoint(writing, self.model, full)
        except OSError as e:
            failed = writing
            raise RunFolderError(f"cannot write {failed}: {e.strerror or e}; training stopped, the last "
                                 f"{run_folder.LATEST} written is intact") from None
        if run_folder.is_snapshot(filename):
            run_folder.prune_snapshots(self.ckpt_dir, self.cfg.train.keep_last)

    def _resume(self, point):
        """Load a `run_folder.ResumePoint` (networks strictly, optimiser moments, position)."""
        load_networks(point.payload, self.model, networks=run_folder.SNAPSHOT_NETWORKS, source=str(point.path))
        if point.full_state is not None:
            load_networks(point.full_state, self.model, networks=("D",), source=str(point.full_state_path))
        if point.full_state is point.payload:
            self.optimizer_G.load_state_dict(point.payload["optimizers"]["G"])
            self.optimizer_D.load_state_dict(point.payload["optimizers"]["D"])
        try:
            self.schedule.load_state_dict(point.payload["position"])
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{point.path}: {e}") from None
        self.fid_history = FIDHistory(point.payload.get("fid_history", ()))
        if self.model.style_bank is not None and "style_bank" in point.payload:
            made_with = StyleBank.from_payload(point.payload["style_bank"], source=str(point.path)).weights_sha256
            if made_with != self.model.style_bank.weights_sha256:
                raise CheckpointError(f"{point.path}: the run was trained on embeddings of other CLIP weights (sha256 "
                                      f"{made_with[:12]}...) than {self.clip_cache_path()} holds "
                                      f"({self.model.style_bank.weights_sha256[:12]}...)")
        if self.ema is not None and "ema_networks" in point.payload:
            self.ema.load_state(point.payload["ema_networks"], point.payload.get("ema_updates", 0),
                                source=str(point.path))
            self._ema_calibrated_at = self.pos.iteration
        elif self.ema is not None:
            log(f"{point.path} has no EMA weights: the EMA starts from its weights now")
            self.ema = self._build_ema()
        log(f"resuming from {point.path} ({point.why}) at iteration {self.pos.iteration} (phase "
            f"{self.pos.phase + 1}, epoch {self.pos.epoch + 1}, batch {self.pos.batch})")
        return point

    # --- one iteration --------------------------------------------------------------------------
    def inputs(self, batch):
        sem = semantics_for(self.cfg.model, batch["label"], batch.get("instance"))
        return sem, batch["image"]

    # --- CLIP conditioning (model.clip_dim > 0; docs/clip_spade.md) ---------------------------
    CLIP_NO_STYLE_P = 0.1  # how often an image's embedding is replaced by the bank mean ("no style")

    def clip_cache_path(self):
        from jspade.clip.features import DEFAULT_NAME
        return self.data_root / DEFAULT_NAME

    def _load_clip_embeddings(self):
        """The training images' CLIP embeddings from the feature cache beside the data (refused, with the
        command that rebuilds it, when missing, incomplete or damaged), and the style bank over them."""
        from jspade.clip.features import load_feature_cache, normalize
        stems = sorted({sample.stem for sample in self.training_dataset("").samples})
        from jspade.clip.cache_update import prepare_training_cache  # the demo's cache; loud if random weights
        prepare_training_cache(self.clip_cache_path(), self.data_root, self.cfg.data.dataset == "synthetic", stems, log)
        cache = load_feature_cache(self.clip_cache_path(), stems)
        if cache.features.shape[1] != self.cfg.model.clip_dim:
            raise ValueError(f"{cache.path}: holds {cache.features.shape[1]}-d CLIP embeddings but model.clip_dim is "
                             f"{self.cfg.model.clip_dim}: set --model.clip_dim {cache.features.shape[1]}")
        self.model.set_style_bank(build_style_bank(cache.features, cache.stems, cache.weights_sha256))
        log(f"CLIP conditioning: {len(stems)} embeddings from {cache.path}; style bank of "
            f"{self.model.style_bank.k} centres")
        return dict(zip(cache.stems, normalize(cache.features)))

    def clip_inputs(self, batch, no_style_p=None):
        """The batch's CLIP embeddings [N, D] by stem (None for a plain model); each replaced by the bank
        mean with probability CLIP_NO_STYLE_P, drawn from (seed, iteration, rank): resumable."""
        if self.clip_embeddings is None:
            return None
        p = self.CLIP_NO_STYLE_P if no_style_p is None else no_style_p
        mean = self.model.style_bank.mean
        rows = np.stack([self.clip_embeddings.get(stem, mean) for stem in batch["stem"]]).astype(np.float32)
        rng = np.random.default_rng((self.cfg.train.seed, self.pos.iteration, jt.rank if jt.in_mpi else 0, 23))
        rows[rng.random(len(rows)) < p] = mean
        return jt.array(rows)

    def train_step(self, sem, real, clip=None):
        """One generator step, then one discriminator step on a fresh fake (on the generator step's with
        train.reuse_fake). Returns float losses. `clip`: the batch's CLIP embeddings (a CLIP model)."""
        g_losses, fake, _ = self.model.generator_losses(sem, real, clip=clip)
        g_total = sum(g_losses.values())
        self.optimizer_G.step(g_total, fetch=list(g_losses.values()) + [fake] * self.cfg.train.reuse_fake)
        d_losses = self.model.discriminator_losses(sem, real, fake=fake if self.cfg.train.reuse_fake else None,
                                                   clip=clip)
        self.optimizer_D.step(sum(d_losses.values()), fetch=list(d_losses.values()))
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
            self.sample_clip = self.clip_inputs({"stem": [it["stem"] for it in items]}, no_style_p=0.0)
        label, inst, real = self.samples
        sem = semantics_for(self.cfg.model, label, inst)
        self.model.eval()
        with jt.no_grad():
            z = self.model.netE(real)[0] if self.model.netE is not None else None  # the style of the real photo
            fake = self.model.generate(sem, z=z, style=real, clip=self.sample_clip)
        self.model.train()
        grid = sample_grid(label.numpy()[:, 0], to_uint8_images(fake), to_uint8_images(real), self.cfg.model.label_nc)
        save_image_atomic(self.sample_dir / f"{tag}.jpg", Image.fromarray(grid), quality=90)

    # --- the loop ------------------------------------------------------------------------------
    def batches(self):
        """Yield the batches the schedule says come next, phase after phase, epoch after epoch."""
        while not self.schedule.done:
            phase_index = self.pos.phase
            ds = self.build_phase_dataset(phase_index)
            augment = self.schedule.phase.diffaugment
            self.model.diffaugment = DiffAugment(augment) if augment else None
            while self.pos.phase == phase_index:
                self._set_lr(self.schedule.lr)
                ds.sampler = self.schedule.epoch_order()
                ds.set_epoch(self.schedule.augmentation_epoch())
                yield from ds

    def train(self):
        t = self.cfg.train
        total = self.schedule.total_iterations()
        if t.max_iters:
            total = min(total, t.max_iters)
        self._announce(total)
        self.bar = training_bar(total, self.pos.iteration, t.max_minutes, disable=not self.progress,
                                uncounted_seconds=lambda: self.fid_seconds)  # as time_to_stop counts
        self.started = time.time()
        self.model.train()
        self.log_file = open(self.run_dir / "log.jsonl", "a") if is_main_rank() else None
        stop_reason = "all phases done"
        try:
            t_data = time.time()
            for batch in self.batches():
                data_s = time.time() - t_data
                jt.set_global_seed(t.seed * 1_000_003 + self.pos.iteration)  # per-iteration noise: resumable
                t_step = time.time()
                losses = self.train_step(*self.inputs(batch), clip=self.clip_inputs(batch))
                self.step_info = {"phase": self.pos.phase + 1, "epoch": self.pos.epoch + 1, "lr": self.schedule.lr,
                                  "step_s": round(time.time() - t_step, 4), "data_s": round(data_s, 4)}
                event = self.schedule.advance()
                self.after_iteration(losses)
                if event == "phase_end":
                    self.save(f"phase{self.pos.phase}_end.pkl")
                if self.time_to_stop():
                    stop_reason = self.time_to_stop()
                    break
                t_data = time.time()
            if t.fid_every and self.pos.iteration % t.fid_every != 0:
                self.evaluate_fid(self.log_file)  # the final weights' FID
            tag = f"iter_{self.pos.iteration:07d}"
            self.write_samples(tag)
            if not (self.ckpt_dir / f"{tag}.pkl").exists():
                self.save(f"{tag}.pkl")
            self.refresh_report()
        finally:
            self.bar.close()
            if self.log_file:
                self.log_file.close()
            self.release_lock()
        log(f"training stopped: {stop_reason} after {self.pos.iteration} iterations "
            f"({(time.time() - self.started) / 60:.1f} min)")
        return self.run_dir

    def after_iteration(self, losses):
        """Per-iteration work once the schedule has advanced: checks, logging, samples, snapshots.
        (The one place to hook in more, e.g. an EMA update or periodic FID.)"""
        t, it = self.cfg.train, self.pos.iteration
        if self.ema is not None:
            self.ema.update()
        self.bar.update(1)
        if not all(math.isfinite(v) for v in losses.values()):
            raise FloatingPointError(f"non-finite loss at iteration {it}: {losses}")
        if it % t.log_every == 0 or it == 1:
            self.bar.set_postfix({**{k: f"{v:.3f}" for k, v in losses.items()}, **self.fid_postfix()}, refresh=False)
            if self.log_file:
                self.log_file.write(json.dumps({"iter": it, **self.step_info, "losses": losses,
                                                "time": round(time.time() - self.started, 1)}) + "\n")
                self.log_file.flush()
        if t.fid_every and it % t.fid_every == 0:
            self.evaluate_fid(self.log_file, self.bar)
        if t.sample_every and it % t.sample_every == 0:
            self.write_samples(f"iter_{it:07d}")
            self.refresh_report()
        if t.save_every and it % t.save_every == 0:
            self.save(f"iter_{it:07d}.pkl")

    def refresh_report(self):
        """Rewrite <run>/report.html. A failure to draw it is reported, not raised: a plot must
        never end a training run."""
        if not is_main_rank():
            return
        try:
            self.report_path = write_report(self.run_dir)
        except Exception as e:  # noqa: BLE001
            log(f"report.html not refreshed: {type(e).__name__}: {e}")

    def time_to_stop(self):
        """Why to stop now ('' to go on): the schedule is done, or a limit is reached."""
        t = self.cfg.train
        if self.schedule.done:
            return "all phases done"
        if t.max_iters and self.pos.iteration >= t.max_iters:
            return f"reached max_iters={t.max_iters}"
        if t.max_minutes and time.time() - self.started - self.fid_seconds > t.max_minutes * 60:
            return f"reached max_minutes={t.max_minutes}"
        return ""

    def _announce(self, total):
        t = self.cfg.train
        limits = [f"{t.max_iters} iterations" if t.max_iters else "", f"{t.max_minutes:g} minutes" if t.max_minutes else ""]
        log(f"training {self.run_dir}: {total} iterations over {len(self.cfg.phases)} phase(s)"
            + (f", stopping after {' or '.join(x for x in limits if x)}" if any(limits) else ""))
        n_trainable = sum(int(np.prod(p.shape)) for optimizer in (self.optimizer_G, self.optimizer_D) for p in optimizer.params)
        full, snap = run_folder.checkpoint_sizes(self.model, n_trainable,
                                                 self.ema.networks if self.ema is not None else None)
        # every save_every iterations, plus the one written when the run stops (unless it fell on one)
        n_snap = (total // t.save_every if t.save_every else 0) + int(not t.save_every or total % t.save_every > 0)
        if t.keep_last:
            n_snap = min(n_snap, t.keep_last)
        nets = ("G, E" if self.model.netE is not None else "G") + (" + EMA copies" if self.ema is not None else "")
        mib = 1 / 2**20
        log(f"checkpoints: ~{n_snap} snapshots x {snap * mib:.0f} MiB ({nets}) + latest.pkl and "
            f"{len(self.cfg.phases)} phase end(s) x {full * mib:.0f} MiB (full state) = "
            f"~{(n_snap * snap + (1 + len(self.cfg.phases)) * full) / 2**30:.2f} GiB"
            + ("" if t.keep_last else " (--train.keep_last K keeps only the newest K snapshots)"))
