"""Training SPADE: the original's step order (a generator step, then a discriminator step on a
fresh fake), TTUR Adam, staged phases over data subsets, exact resume, MPI data parallelism.

The loop and what only it knows live here; each other concern has its module:
    run_folder.py   the run folder: lock, creation, checkpoint kinds, resume point, pruning, disk use
    data.py         the training, held-out and sample pairs      schedule.py  phase, epoch, batch, lr
    step.py         one iteration's arithmetic (also benchmarked) optim.py     Adam, averaged over MPI
    fid_tracker.py  FID during training and its history          ema.py       the averaged generator
    samples.py      the sample grids                             clip.py      CLIP conditioning
    clock.py        the time train.max_minutes counts            ranks.py     who writes under MPI
A run's folder `<output_dir>/<name>/` holds config.toml, log.jsonl (one JSON object per logged
iteration or event), checkpoints/ (latest.pkl, phaseK_end.pkl: the full state; iter_XXXXXXX.pkl:
snapshots; best_fid.pkl), fid_real_stats.npz, samples/ and report.html. Under MPI every rank
trains; only rank 0 writes.
"""
import math
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from jspade.runtime import jt
from jspade.checkpoint import CheckpointError, load_networks
from jspade.config import Config, check_config, to_toml
from jspade.errors import ConfigError
from jspade.models.spade_model import SPADEModel, check_output_size
from jspade.report import write_report
from jspade.train import run_folder
from jspade.train.clip import NO_STYLE_P, ClipConditioning
from jspade.train.clock import TrainingClock
from jspade.train.data import TrainingData
from jspade.train.diffaugment import DiffAugment
from jspade.train.ema import ModelEMA
from jspade.train.fid_tracker import REAL_STATS_FILE, FIDTracker
from jspade.train.progress import training_bar
from jspade.train.ranks import is_main_rank, log, rank, rank0_decides
from jspade.train.run_folder import RunFolder, RunFolderError
from jspade.train.samples import SampleGrids
from jspade.train.schedule import Schedule
from jspade.train.step import build_optimizers, load_vgg, set_lr, set_mixed_precision, train_step


def check_trainable(cfg):
    """Rules only the model and the augmentations check (ConfigError, before anything is made)."""
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


class Trainer:
    def __init__(self, cfg: Config, resume=False, overwrite=False, preset_name="run", progress=True):
        """Everything that can fail (configuration, data, subsets, VGG weights, the checkpoint to
        resume) is checked before the run folder is created or changed: a failed start leaves it as it
        was. The run folder is locked from here until train() ends."""
        check_trainable(cfg)
        self.cfg, t = cfg, cfg.train
        self.progress = progress and is_main_rank()
        name = t.name or f"{preset_name}-{datetime.now():%Y%m%d-%H%M%S}"
        self.run = RunFolder(Path(t.output_dir) / name, resume, overwrite, writer=is_main_rank(), log=log)
        self.run_dir = self.run.path
        try:
            self.data = TrainingData(cfg, self.progress)
            self.schedule = Schedule(cfg.phases, self.data.phase_sizes(), t.seed)
            jt.set_global_seed(t.seed, different_seed_for_mpi=False)  # identical init on every rank
            self.model = SPADEModel(cfg.model)
            if jt.in_mpi:
                for net in self.model.networks().values():
                    net.mpi_param_broadcast(0)
                # run the broadcasts now, alone: left in the first step's graph, their order against that
                # graph's all-reduces is not the same on every rank (MPI_ERR_TRUNCATE, measured)
                jt.sync_all()
            # a CLIP model: {stem: embedding} of the training images, and the style bank (sets netG.clip_mean)
            self.clip = ClipConditioning(self.data, self.model, t.seed, log) if self.model.uses_clip else None
            self.vgg_pretrained = load_vgg(self.model, t.vgg_weights, log)
            set_mixed_precision(t.amp, log)
            self.optimizer_G, self.optimizer_D = build_optimizers(self.model, t)
            self.ema = self._build_ema()
            self._ema_calibrated_at = None
            self.fid = FIDTracker(self.data.held_out, cfg.model, self.run_dir / REAL_STATS_FILE, seed=t.seed)
            self.samples = SampleGrids(self.data, t.num_samples, self.clip)
            self.clock = TrainingClock()
            self.report_path = None
            resumed = self._resume(run_folder.find_resume_point(self.run.checkpoints)) if resume else None
            self.run.create(to_toml(cfg), resumed, overwrite)
            if resumed is not None:
                self.run.log_event("resume", self.pos.iteration, checkpoint=resumed.path.name, reason=resumed.why)
        except BaseException:
            self.run.close()
            raise

    @property
    def pos(self):
        """Where training is (phase, epoch, batch, iteration): owned by the schedule."""
        return self.schedule.pos

    @property
    def fid_history(self):
        return self.fid.history

    def _build_ema(self):
        if self.cfg.train.ema_decay <= 0:
            return None
        copies = SPADEModel(self.cfg.model, with_discriminator=False, with_vgg=False).networks()
        sources = {name: net for name, net in self.model.networks().items() if name in copies}
        return ModelEMA(sources, copies, self.cfg.train.ema_decay)

    # --- one iteration --------------------------------------------------------------------------
    def _set_lr(self, lr):
        set_lr(self.optimizer_G, self.optimizer_D, lr, self.cfg.train.no_ttur)

    def clip_inputs(self, batch, no_style_p=NO_STYLE_P):
        """The batch's CLIP embeddings (None for a plain model), drawn for this iteration and rank."""
        return None if self.clip is None else self.clip.inputs(batch["stem"], self.pos.iteration, rank(), no_style_p)

    def train_step(self, sem, real, clip=None):
        """jspade.train.step.train_step on this run's model and optimisers. Returns float losses."""
        return train_step(self.model, self.optimizer_G, self.optimizer_D, sem, real, clip, self.cfg.train.reuse_fake)

    def batches(self):
        """Yield the batches the schedule says come next, phase after phase, epoch after epoch."""
        while not self.schedule.done:
            phase_index = self.pos.phase
            ds = self.data.phase_loader(phase_index)
            augment = self.schedule.phase.diffaugment
            self.model.diffaugment = DiffAugment(augment) if augment else None
            while self.pos.phase == phase_index:
                self._set_lr(self.schedule.lr)
                ds.sampler = self.schedule.epoch_order()
                ds.set_epoch(self.schedule.augmentation_epoch())
                yield from ds

    # --- the loop ------------------------------------------------------------------------------
    def train(self):
        t = self.cfg.train
        total = min(self.schedule.total_iterations(), t.max_iters or math.inf)
        self._announce(total)
        bar = training_bar(total, self.pos.iteration, t.max_minutes, disable=not self.progress,
                           uncounted_seconds=lambda: self.clock.uncounted_s)  # as time_to_stop counts
        self.clock.start()
        self.model.train()
        stop_reason = "all phases done"
        try:
            t_data = time.time()
            for batch in self.batches():
                data_s = time.time() - t_data
                with self.clock.watch():  # an iteration in which Jittor compiled kernels is not counted
                    jt.set_global_seed(t.seed * 1_000_003 + self.pos.iteration)  # per-iteration noise: resumable
                    t_step = time.time()
                    losses = self.train_step(*self.data.inputs(batch), clip=self.clip_inputs(batch))
                    record = {"phase": self.pos.phase + 1, "epoch": self.pos.epoch + 1, "lr": self.schedule.lr,
                              "step_s": round(time.time() - t_step, 4), "data_s": round(data_s, 4)}
                    event = self.schedule.advance()
                    self.after_iteration(losses, record, bar)
                    if event == "phase_end":
                        self.save(f"phase{self.pos.phase}_end.pkl")
                stop_reason = self.time_to_stop()
                if stop_reason:
                    break
                t_data = time.time()
            with self.clock.watch():
                if t.fid_every and self.pos.iteration % t.fid_every != 0:
                    self.evaluate_fid()  # the final weights' FID
                tag = f"iter_{self.pos.iteration:07d}"
                self.write_samples(tag)
                if not (self.run.checkpoints / f"{tag}.pkl").exists():
                    self.save(f"{tag}.pkl")
                self.refresh_report()
        finally:
            bar.close()
            self.run.close()
        log(f"training stopped: {stop_reason} after {self.pos.iteration} iterations "
            f"({self.clock.summary()})")
        return self.run_dir

    def after_iteration(self, losses, record, bar):
        """Per-iteration work once the schedule has advanced: EMA, checks, logging, FID, samples,
        snapshots. `record`: what log.jsonl gets besides the losses."""
        t, it = self.cfg.train, self.pos.iteration
        if self.ema is not None:
            self.ema.update()
        bar.update(1)
        if not all(math.isfinite(v) for v in losses.values()):
            raise FloatingPointError(f"non-finite loss at iteration {it}: {losses}")
        if it % t.log_every == 0 or it == 1:
            bar.set_postfix({**{k: f"{v:.3f}" for k, v in losses.items()}, **self.fid.postfix()}, refresh=False)
            self.run.append_log({"iter": it, **record, "losses": losses, "time": round(self.clock.wall_s, 1)})
        if t.fid_every and it % t.fid_every == 0:
            self.evaluate_fid()
            bar.set_postfix(self.fid.postfix(), refresh=False)
        if t.sample_every and it % t.sample_every == 0:
            self.write_samples(f"iter_{it:07d}")
            self.refresh_report()
        if t.save_every and it % t.save_every == 0:
            self.save(f"iter_{it:07d}.pkl")

    def time_to_stop(self):
        """Why to stop now ('' to go on): the schedule is done, or a limit is reached."""
        t = self.cfg.train
        if self.schedule.done:
            return "all phases done"
        if t.max_iters and self.pos.iteration >= t.max_iters:
            return f"reached max_iters={t.max_iters}"
        if t.max_minutes and rank0_decides(self.clock.counted_s > t.max_minutes * 60):
            return f"reached max_minutes={t.max_minutes}"
        return ""

    # --- what an iteration may do besides training ------------------------------------------------
    def calibrate_ema(self):
        """Recompute the EMA copy's batch-norm statistics, once per iteration at most (all ranks)."""
        if self.ema is None or self._ema_calibrated_at == self.pos.iteration:
            return
        jt.set_global_seed(self.cfg.train.seed + 7, different_seed_for_mpi=False)  # the encoder's z noise
        self.ema.recalibrate(self.data.calibration_batches(self.pos.phase, self.cfg.train.ema_bn_batches))
        self._ema_calibrated_at = self.pos.iteration

    def evaluate_fid(self):
        """Measure FID now (of the EMA copy when there is one); log it and keep best_fid.pkl the best
        so far. Its time does not count toward train.max_minutes (a training budget). Returns it."""
        with self.clock.measuring():
            self.calibrate_ema()  # collective under MPI: before the rank check
            if not is_main_rank():
                return None
            nets = self.ema.networks if self.ema is not None else self.model.networks()
            self.model.eval()
            try:
                value, is_best = self.fid.measure(self.pos.iteration, nets["G"], nets.get("E"))
            finally:
                self.model.train()
            if is_best:
                self.save(run_folder.BEST_FID, keep_latest=False)
            self.run.append_log({"iter": self.pos.iteration, "phase": self.pos.phase + 1, "fid": round(value, 4),
                                 "fid_best": is_best})
            return value

    def write_samples(self, tag):
        if is_main_rank():
            self.samples.write(self.model, self.run.samples / f"{tag}.jpg")

    def refresh_report(self):
        """Rewrite <run>/report.html. A failure to draw it is reported, not raised: a plot must
        never end a training run."""
        if not is_main_rank():
            return
        try:
            self.report_path = write_report(self.run_dir)
        except Exception as e:  # noqa: BLE001
            log(f"report.html not refreshed: {type(e).__name__}: {e}")

    # --- checkpoints --------------------------------------------------------------------------
    def save(self, filename, keep_latest=True):
        """Checkpoint the run as checkpoints/<filename> (run_folder.RunFolder.write_checkpoint: its kind,
        latest.pkl refreshed, a full disk stops the run)."""
        self.calibrate_ema()  # collective under MPI: before the rank check
        if not is_main_rank():
            return
        extra = {"optimizers": {"G": self.optimizer_G.state_dict(), "D": self.optimizer_D.state_dict()},
                 **({"style_bank": self.model.style_bank.to_payload()} if self.model.style_bank is not None else {}),
                 "position": self.schedule.state_dict(), "config": self.cfg.to_dict(),
                 "vgg_pretrained": self.vgg_pretrained, "fid_history": self.fid.state_dict()}
        if self.ema is not None:
            extra.update(ema_networks=self.ema.state(), ema_updates=self.ema.updates)
        self.run.write_checkpoint(filename, self.model, extra, keep_latest, self.cfg.train.keep_last)

    def _resume(self, point):
        """Load a `run_folder.ResumePoint` (networks strictly, optimiser moments, position, FID history)."""
        load_networks(point.payload, self.model, networks=run_folder.SNAPSHOT_NETWORKS, source=str(point.path))
        if point.full_state is not None:
            load_networks(point.full_state, self.model, networks=("D",), source=str(point.full_state_path))
        try:
            if point.full_state is point.payload:
                self.optimizer_G.load_state_dict(point.payload["optimizers"]["G"])
                self.optimizer_D.load_state_dict(point.payload["optimizers"]["D"])
            self.schedule.load_state_dict(point.payload["position"])
            self.fid.load_state_dict(point.payload.get("fid_history", ()))
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{point.path}: {e}") from None
        if self.clip is not None:
            self.clip.check_checkpoint(point.payload, point.path)
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

    def _announce(self, total):
        t = self.cfg.train
        limits = [f"{t.max_iters} iterations" if t.max_iters else "", f"{t.max_minutes:g} minutes" if t.max_minutes else ""]
        log(f"training {self.run_dir}: {total} iterations over {len(self.cfg.phases)} phase(s)"
            + (f", stopping after {' or '.join(x for x in limits if x)}" if any(limits) else ""))
        n_trainable = sum(int(np.prod(p.shape)) for opt in (self.optimizer_G, self.optimizer_D) for p in opt.params)
        log(run_folder.disk_estimate(self.model, n_trainable, self.ema.networks if self.ema is not None else None,
                                     total, t.save_every, t.keep_last, len(self.cfg.phases)))
