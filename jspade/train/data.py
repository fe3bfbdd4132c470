"""The pairs a run trains on and the pairs it measures FID and draws samples on, all built from one
configuration (`[data]`, the model's sizes and classes).

Invariants: the training pairs never include the held-out pairs (`data.val_root`, the synthetic
`val/` scenes, or the `data.holdout_fraction` chosen by jspade.train.fid_tracker.is_held_out), so
the schedule counts only what is trained on; with train.fid_every there are at least 2 held-out
pairs; every dataset is built with the same options, so a
phase's subset, the FID pairs and the EMA calibration batches see the same preprocessing. Problems
in the data are reported (all of them) before a run folder is made.
"""
from pathlib import Path

import numpy as np

from jspade.data.datasets import build_dataset
from jspade.data.readers import DataError
from jspade.data.semantics import semantics_for
from jspade.data.synthetic import write_synthetic_dataset
from jspade.data.validate import validate_dataset
from jspade.errors import ConfigError
from jspade.train.fid_tracker import drop_samples, is_held_out
from jspade.train.ranks import barrier, is_main_rank, log
from jspade.train.schedule import EpochOrder

VAL_SCENES_FROM = 1_000_000  # the synthetic held-out scenes' indices: never among the training scenes


def count_pairs(root):
    return len(list((root / "labels").glob("*.png"))) if (root / "labels").exists() else 0


def prepare_synthetic(cfg, progress=True):
    """The synthetic landscapes' folder, with the pairs the configuration asks for written by rank 0
    (the others wait). Returns its path."""
    d, (width, height) = cfg.data, cfg.model.image_size
    root = Path(d.root or f"{cfg.train.output_dir}/synthetic_{width}x{height}")
    have, have_val = count_pairs(root), count_pairs(root / "val")
    if have < d.synthetic_n and is_main_rank():
        from tqdm import tqdm
        log(f"generating {d.synthetic_n - have} synthetic landscape pairs in {root}")
        write_synthetic_dataset(root, d.synthetic_n - have, size=(width, height), seed=d.synthetic_seed, start=have,
                                progress=lambda r: tqdm(r, desc="synthetic data", disable=not progress))
    if have_val < d.synthetic_val_n and is_main_rank():
        write_synthetic_dataset(root / "val", d.synthetic_val_n - have_val, size=(width, height),
                                seed=d.synthetic_seed, start=VAL_SCENES_FROM + have_val)
    barrier()
    return root


class TrainingData:
    def __init__(self, cfg, progress=True):
        self.cfg = cfg
        if cfg.data.dataset == "synthetic":
            self.root = prepare_synthetic(cfg, progress)
        elif not cfg.data.root:
            raise ConfigError("no training data: pass --data DIR (or --data.dataset synthetic)")
        else:
            self.root = Path(cfg.data.root)
        self.validate(progress)
        held_out = self.held_out().total_len if cfg.train.fid_every else None
        if held_out is not None and held_out < 2:  # fail now, not at the first FID
            raise DataError(f"train.fid_every: the held-out set has {held_out} pair(s); FID needs at least 2")

    @property
    def dataset_name(self):
        return "landscape" if self.cfg.data.dataset == "synthetic" else self.cfg.data.dataset

    def options(self, subset=""):
        d, m = self.cfg.data, self.cfg.model
        if subset and not Path(subset).is_absolute() and not Path(subset).exists():
            subset = str(self.root / subset)
        return dict(label_nc=m.label_nc, crop_size=m.crop_size, aspect_ratio=m.aspect_ratio,
                    load_size=d.load_size or None, preprocess_mode=d.preprocess_mode or None,
                    no_flip=d.no_flip, no_instance=m.no_instance,
                    contain_dontcare_label=m.contain_dontcare_label, subset=subset or None,
                    seed=self.cfg.train.seed, strict=d.validate)

    def validate(self, progress=True):
        """Report every broken pair / out-of-range id before spending GPU time. With data.validate
        false the scan is skipped and incomplete pairs are left out (said once); a file that cannot be
        read stops the run when it is reached."""
        if self.cfg.data.dataset == "synthetic" or not is_main_rank():
            return
        opts = self.options()
        opts.pop("subset")
        opts.pop("strict")
        if not self.cfg.data.validate:
            skipped = build_dataset(self.dataset_name, self.root, strict=False, **opts).problems
            if skipped:
                log(f"--data.validate false: {len(skipped)} incomplete pair(s) in {self.root} left out "
                    f"(first: {skipped[0]})")
            return
        problems = validate_dataset(self.dataset_name, self.root, progress=progress, **opts)
        if problems:
            shown = "\n  ".join(str(p) for p in problems[:50])
            raise DataError(f"{len(problems)} problem(s) in {self.root} (fix them, or pass --data.validate "
                            f"false to skip this check: incomplete pairs are then left out, and a broken file "
                            f"stops the run when it is read):\n  {shown}")

    # --- training pairs ---------------------------------------------------------------------------
    def training(self, subset="", **opts):
        """The training pairs (of `subset`), without the held-out fraction."""
        ds = build_dataset(self.dataset_name, self.root, **{**self.options(subset), **opts})
        fraction = self.cfg.data.holdout_fraction if not self.cfg.data.val_root else 0.0
        if fraction > 0:
            drop_samples(ds, lambda sample: not is_held_out(sample.stem, fraction))
        return ds

    def phase_sizes(self):
        """Samples in each phase's data (all of it, or its subset)."""
        return [self.training(p.subset).total_len for p in self.cfg.phases]

    def phase_loader(self, phase_index):
        """Phase `phase_index`'s pairs in its batches (the trainer sets the order: `sampler`)."""
        phase = self.cfg.phases[phase_index]
        ds = self.training(phase.subset)
        ds.set_attrs(batch_size=phase.batch_size, shuffle=False, drop_last=True, num_workers=self.cfg.data.num_workers)
        return ds

    def calibration_batches(self, phase_index, count):
        """The first `count` batches of a fixed order of phase `phase_index`'s pairs, an order no training
        epoch uses (the same batches at every EMA calibration, so a resumed run recalibrates as the
        uninterrupted one)."""
        phase = self.cfg.phases[min(phase_index, len(self.cfg.phases) - 1)]
        ds = self.training(phase.subset)
        ds.set_attrs(batch_size=min(phase.batch_size, ds.total_len), shuffle=False, drop_last=True,
                     num_workers=self.cfg.data.num_workers)
        ds.sampler = EpochOrder(np.random.default_rng((self.cfg.train.seed, 1_000_000)).permutation(ds.total_len))
        for i, batch in enumerate(ds):
            if i >= count:
                break
            yield self.inputs(batch)

    def inputs(self, batch):
        """(semantic maps, photos) of a batch, as the networks take them."""
        return semantics_for(self.cfg.model, batch["label"], batch.get("instance")), batch["image"]

    # --- held-out pairs ---------------------------------------------------------------------------
    def held_out(self):
        """The pairs FID is measured on and samples are drawn from: data.val_root, <synthetic root>/val,
        or the held-out fraction (no flips)."""
        d = self.cfg.data
        opts = {**self.options(), "no_flip": True}
        if d.val_root or (d.dataset == "synthetic" and d.synthetic_val_n > 0):
            root = Path(d.val_root) if d.val_root else self.root / "val"
            return build_dataset(self.dataset_name, root, phase="val", **opts)
        if d.holdout_fraction > 0:
            ds = build_dataset(self.dataset_name, self.root, phase="val", **opts)
            return drop_samples(ds, lambda sample: is_held_out(sample.stem, d.holdout_fraction))
        raise ConfigError("train.fid_every needs held-out pairs: pass --data.val_root DIR or "
                          "--data.holdout_fraction F (e.g. 0.02)")

    def sample_pairs(self):
        """The pairs sample grids show: the "val" phase of the data folder (no flips)."""
        return build_dataset(self.dataset_name, self.root, phase="val", **{**self.options(), "no_flip": True})
