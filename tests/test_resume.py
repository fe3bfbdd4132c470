"""Resume that never loses work, checkpoints that fit, crash restarts, and the schedule across a
phase boundary: what a user running a days-long job relies on."""
import errno
import json
import os
import pickle
import signal
import sys

import numpy as np
import pytest

from jspade.checkpoint import CheckpointError, read_checkpoint, state_arrays
from jspade.config import Phase
from jspade.data.synthetic import write_synthetic_dataset
from jspade.train import restart, run_folder
from jspade.train.trainer import RunFolderError, Trainer

from tiny_models import tiny_config


def g_weights(trainer):
    return state_arrays(trainer.model.netG)  # as checkpoints name them


def tree(folder):
    """{relative path: bytes} of everything in a folder."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def short_run(tmp_path):
    """A run stopped at iteration 4 with snapshots at 2 and 4 (and latest.pkl at 4)."""
    data = tmp_path / "data"
    run_dir = Trainer(tiny_config(tmp_path, data, max_iters=4, save_every=2), progress=False).train()
    return tmp_path, data, run_dir


# --- which checkpoint a resume uses -------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncated", "empty", "missing"])
def test_damaged_latest_resumes_from_the_newest_intact_snapshot(short_run, damage, capsys):
    tmp_path, data, run_dir = short_run
    latest = run_dir / "checkpoints" / "latest.pkl"
    if damage == "missing":
        latest.unlink()
    else:
        latest.write_bytes(latest.read_bytes()[: 1000 if damage == "truncated" else 0])
    snapshot_g = read_checkpoint(run_dir / "checkpoints" / "iter_0000004.pkl")["networks"]["G"]
    resumed = Trainer(tiny_config(tmp_path, data, max_iters=6, save_every=2), resume=True, progress=False)
    err = capsys.readouterr().err
    assert resumed.pos.iteration == 4 and "iter_0000004.pkl" in err
    assert ("missing" if damage == "missing" else "damaged") in err
    assert all(np.array_equal(v, snapshot_g[k]) for k, v in g_weights(resumed).items())
    if damage != "missing":
        assert (run_dir / "checkpoints" / "latest.pkl.damaged").exists()
    resumed.train()  # reaches the snapshots it will write without tripping over old names
    assert read_checkpoint(latest)["position"]["iteration"] == 6
    events = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [e for e in events if e.get("event") == "resume"][0]["checkpoint"] == "iter_0000004.pkl"


def test_resume_without_an_intact_checkpoint_refuses_and_changes_nothing(short_run):
    tmp_path, data, run_dir = short_run
    for p in (run_dir / "checkpoints").iterdir():
        p.write_bytes(b"")
    before = tree(run_dir)
    with pytest.raises(CheckpointError, match="nothing to resume") as e:
        Trainer(tiny_config(tmp_path, data, max_iters=6), resume=True, progress=False)
    assert "\n" not in str(e.value)
    assert tree(run_dir) == before


def test_resume_with_a_different_model_fails_before_touching_the_run(short_run):
    tmp_path, data, run_dir = short_run
    before = tree(run_dir)
    cfg = tiny_config(tmp_path, data, max_iters=6)
    cfg.model.ngf = 16
    with pytest.raises(CheckpointError, match="shape mismatch"):
        Trainer(cfg, resume=True, progress=False)
    assert tree(run_dir) == before  # config.toml and log.jsonl unchanged


def test_stale_temporary_files_are_removed_on_resume(short_run):
    tmp_path, data, run_dir = short_run
    stale = run_dir / "checkpoints" / ".latest.pkl.k2j4h1.tmp.pkl"
    stale.write_bytes(b"half a checkpoint")
    Trainer(tiny_config(tmp_path, data, max_iters=6), resume=True, progress=False)
    assert not stale.exists()


# --- starting over, failed starts, a full disk ----------------------------------------------------------
def test_overwrite_starts_over_and_keeps_the_old_run_aside(short_run):
    tmp_path, data, run_dir = short_run
    old = tree(run_dir)
    Trainer(tiny_config(tmp_path, data, max_iters=2, save_every=2), overwrite=True, progress=False).train()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.replaced-")]
    assert len(aside) == 1 and tree(aside[0]) == old
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["iter_0000002.pkl", "latest.pkl"]


def test_a_failed_start_leaves_no_folder_behind(tmp_path):
    data = tmp_path / "data"
    cfg = tiny_config(tmp_path / "out", data, max_iters=1)
    cfg.train.vgg_weights = str(tmp_path / "no_such_vgg19.pth")
    with pytest.raises(FileNotFoundError):
        Trainer(cfg, progress=False)
    assert not (tmp_path / "out" / "run").exists()
    cfg.train.vgg_weights = ""
    Trainer(cfg, progress=False)  # the retry needs neither --resume nor --overwrite


@pytest.mark.parametrize("failing_write, failed_file", [(3, "iter_0000004.pkl"), (4, "latest.pkl")])
def test_a_full_disk_stops_the_run_with_latest_intact(tmp_path, monkeypatch, failing_write, failed_file):
    import jspade.checkpoint as checkpoint
    trainer = Trainer(tiny_config(tmp_path, tmp_path / "data", max_iters=6, save_every=2), progress=False)
    real_dump, calls = pickle.dump, []

    def dump(obj, f, protocol=None):
        calls.append(1)
        if len(calls) >= failing_write:  # iter 2 and latest go through; a later write finds the disk full
            f.write(b"\0" * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_dump(obj, f, protocol=protocol)

    monkeypatch.setattr(checkpoint.pickle, "dump", dump)
    with pytest.raises(RunFolderError, match="No space left.*latest.pkl written is intact") as caught:
        trainer.train()
    assert f"cannot write {trainer.run.checkpoints / failed_file}:" in str(caught.value)  # the file that failed
    ckpts = trainer.run.checkpoints
    assert read_checkpoint(ckpts / "latest.pkl")["position"]["iteration"] == 2
    written = ["iter_0000002.pkl"] + (["iter_0000004.pkl"] if failed_file == "latest.pkl" else [])
    assert sorted(p.name for p in ckpts.iterdir()) == written + ["latest.pkl"]  # no temp files


# --- checkpoints that fit -------------------------------------------------------------------------------
def test_snapshots_are_slim_and_keep_last_prunes_them(tmp_path):
    cfg = tiny_config(tmp_path, tmp_path / "data", max_iters=8, save_every=2, keep_last=2)
    cfg.model.use_vae = True
    cfg.phases = [Phase(epochs=1, batch_size=4, lr=4e-4), Phase(epochs=1, batch_size=4, lr=4e-4)]
    run_dir = Trainer(cfg, progress=False).train()
    ckpts = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == [
        "iter_0000006.pkl", "iter_0000008.pkl", "latest.pkl", "phase1_end.pkl", "phase2_end.pkl"]
    snap, full = read_checkpoint(ckpts / "iter_0000008.pkl"), read_checkpoint(ckpts / "latest.pkl")
    assert set(snap["networks"]) == {"G", "E"} and "optimizers" not in snap
    assert snap["position"]["iteration"] == 8 and snap["config"] == full["config"]
    assert snap["vgg_pretrained"] is False and snap["kind"] == "snapshot"
    assert set(full["networks"]) == {"G", "D", "E"} and set(full["optimizers"]) == {"G", "D"}
    assert all(a.dtype == np.float32 for net in snap["networks"].values() for a in net.values())
    for k, v in full["networks"]["G"].items():
        assert np.array_equal(snap["networks"]["G"][k], v)
    assert (ckpts / "iter_0000008.pkl").stat().st_size <= 0.5 * (ckpts / "latest.pkl").stat().st_size


def test_snapshots_keep_ema_weights_in_float32():
    ema = {"G": {"w": np.ones(3, np.float64)}}
    extra = {"optimizers": {}, "position": {"iteration": 1}, "config": {}, "vgg_pretrained": True, "ema_networks": ema}
    snap = run_folder.snapshot_extra(extra)
    assert set(snap) == {"position", "config", "vgg_pretrained", "ema_networks", "kind"}
    assert snap["ema_networks"]["G"]["w"].dtype == np.float32


def test_the_run_says_what_it_will_write(tmp_path, capsys):
    Trainer(tiny_config(tmp_path, tmp_path / "data", max_iters=1, save_every=4, keep_last=3), progress=False).train()
    line = next(x for x in capsys.readouterr().err.splitlines() if x.startswith("checkpoints:"))
    assert "~1 snapshots x" in line and "MiB (G)" in line


# --- the schedule across a phase boundary ------------------------------------------------------------------
def two_phase_config(tmp_path, data, **train):
    """Phase 1: all 16 pairs, batch 4, one epoch (4 iterations). Phase 2: the 6 stems of a subset
    file, batch 2, two epochs (6 iterations), the lr halved in its last epoch."""
    cfg = tiny_config(tmp_path, data, **train)
    cfg.phases = [Phase(epochs=1, batch_size=4, lr=4e-4),
                  Phase(epochs=2, batch_size=2, lr=2e-4, subset="selection.txt", decay_epochs=1)]
    return cfg


@pytest.fixture
def subset_data(tmp_path):
    data = tmp_path / "data"
    write_synthetic_dataset(data, 16, size=(64, 32))
    stems = sorted(p.stem for p in (data / "labels").glob("*.png"))[::3][:6]
    (data / "selection.txt").write_text("# phase 2\n" + "\n".join(stems) + "\n")
    return data, stems


def test_two_phases_with_a_subset_and_lr_decay_across_the_boundary(tmp_path, subset_data):
    data, stems = subset_data
    trainer = Trainer(two_phase_config(tmp_path, data), progress=False)
    assert trainer.schedule.phase_sizes == [16, 6] and trainer.schedule.total_iterations() == 10
    assert sorted(s.label_path.stem for s in trainer.data.phase_loader(1).samples) == stems
    run_dir = trainer.train()
    lines = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [(x["iter"], x["phase"], x["epoch"], x["lr"]) for x in lines] == (
        [(i, 1, 1, 4e-4) for i in range(1, 5)] + [(i, 2, 1, 2e-4) for i in range(5, 8)]
        + [(i, 2, 2, 1e-4) for i in range(8, 11)])
    phase1 = read_checkpoint(run_dir / "checkpoints" / "phase1_end.pkl")
    assert phase1["position"] == {"iteration": 4, "phase": 1, "epoch": 0, "batch": 0} and "optimizers" in phase1
    assert trainer.optimizer_G.lr == 1e-4 / 2 and trainer.optimizer_D.lr == 1e-4 * 2  # TTUR on the decayed lr


def test_resume_in_the_middle_of_phase_2_equals_the_uninterrupted_run(tmp_path, subset_data):
    data, _ = subset_data
    straight = Trainer(two_phase_config(tmp_path / "a", data), progress=False)
    straight.train()
    Trainer(two_phase_config(tmp_path / "b", data, max_iters=8), progress=False).train()  # phase 2, epoch 2, batch 1
    resumed = Trainer(two_phase_config(tmp_path / "b", data), resume=True, progress=False)
    assert (resumed.pos.phase, resumed.pos.epoch, resumed.pos.batch) == (1, 1, 1)
    resumed.train()
    a, b = g_weights(straight), g_weights(resumed)
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-5
    for opt_a, opt_b in ((straight.optimizer_G, resumed.optimizer_G), (straight.optimizer_D, resumed.optimizer_D)):
        assert opt_a.step_count == opt_b.step_count == 10
        assert max(float(np.abs(x.numpy() - y.numpy()).max()) for x, y in zip(opt_a.v, opt_b.v)) < 1e-9


# --- crash restarts ------------------------------------------------------------------------------------------
FAKE_TRAINING = """
import os, signal, sys
from pathlib import Path
run = Path(sys.argv[1])
with open(run.parent / "calls.txt", "a") as f:
    f.write(" ".join(sys.argv[2:]) + "\\n")
crash = sys.argv[2]
(run / "checkpoints").mkdir(parents=True, exist_ok=True)
(run / "checkpoints" / "latest.pkl").write_bytes(b"state")
calls = (run.parent / "calls.txt").read_text().count("\\n")
if crash == "always" or (crash == "once" and calls == 1):
    os.kill(os.getpid(), signal.SIGSEGV)
if crash == "term":
    os.kill(os.getpid(), signal.SIGTERM)
"""


@pytest.mark.parametrize("crash, restarts, code", [("once", 1, 0), ("always", 2, 128 + signal.SIGSEGV),
                                                   ("term", 0, 128 + signal.SIGTERM)])
def test_a_run_killed_by_a_signal_is_restarted_with_resume(tmp_path, crash, restarts, code):
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAINING)
    run = tmp_path / "run"
    said = []
    status = restart.run_with_restarts([sys.executable, str(script), str(run)], [crash, "--overwrite"], run,
                                       max_restarts=2, env=dict(os.environ), say=said.append)
    assert status == code
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert calls == [f"{crash} --overwrite"] + [f"{crash} --resume"] * restarts
    events = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()] if restarts else []
    assert [(e["event"], e["attempt"], e["signal"]) for e in events] == [
        ("restart", k + 1, "SIGSEGV") for k in range(restarts)]
    assert (restarts == 0) == (not said)


def test_train_script_restarts_a_crashed_run_and_finishes_it(tmp_path):
    """scripts/train.py --train.restart_on_crash: the training child is killed with SIGSEGV after its
    first snapshot; the run is restarted with --resume and reaches its end, both events in log.jsonl.
    (Two restarts are allowed: Jittor's intermittent native crash, which this option exists for, was
    once seen in the restarted child too; every restart must then be followed by its resume.)"""
    import subprocess
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "out"
    command = [sys.executable, str(root / "scripts" / "train.py"), "--model.crop_size", "64", "--model.aspect_ratio", "2.0",
               "--model.ngf", "8", "--model.ndf", "8", "--model.n_layers_D", "3", "--data.root", str(tmp_path / "data"),
               "--data.synthetic_n", "16", "--train.output_dir", str(out), "--name", "run", "--train.max_minutes", "0",
               "--train.max_iters", "8", "--train.save_every", "2", "--train.sample_every", "0",
               "--phases", "2:2:0.0004", "--no-progress", "--train.restart_on_crash", "2"]
    parent = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "JSPADE_DEVICE": "cpu"})
    deadline = time.time() + 600
    while not (out / "run" / "checkpoints" / "iter_0000002.pkl").exists():
        assert parent.poll() is None and time.time() < deadline, "the run ended before its first snapshot"
        time.sleep(0.2)
    children = Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text().split()
    # (Jittor's compile workers, forks of the parent, are its children too: pick the training process)
    training = [c for c in children if b"JSPADE_RESTART_CHILD=1" in Path(f"/proc/{c}/environ").read_bytes()]
    assert len(training) == 1
    os.kill(int(training[0]), signal.SIGSEGV)
    stdout, stderr = parent.communicate(timeout=600)
    assert parent.returncode == 0, stderr[-3000:]
    assert "died from SIGSEGV; restart 1 of 2" in stderr and "Fatal Python error: Segmentation fault" in stderr
    assert stdout.strip().splitlines()[-1] == str((out / "run").resolve())
    events = [json.loads(x) for x in (out / "run" / "log.jsonl").read_text().splitlines()]
    kinds = [e.get("event") for e in events if "event" in e]
    assert kinds[:2] == ["restart", "resume"] and kinds in (["restart", "resume"], ["restart", "resume"] * 2)
    assert read_checkpoint(out / "run" / "checkpoints" / "latest.pkl")["position"]["iteration"] == 8


def test_a_replay_after_a_crash_between_two_writes_keeps_the_numbered_checkpoint(tmp_path, capsys):
    """A crash after iter_0000004.pkl was written but before latest.pkl was refreshed: the resume
    replays iterations 3-4 and must keep the existing snapshot rather than fail or overwrite it."""
    data = tmp_path / "data"
    cfg = lambda n: tiny_config(tmp_path, data, max_iters=n, save_every=2)  # noqa: E731
    Trainer(cfg(2), progress=False).train()
    ckpts = tmp_path / "run" / "checkpoints"
    at_2 = (ckpts / "latest.pkl").read_bytes()
    Trainer(cfg(4), resume=True, progress=False).train()
    snapshot = (ckpts / "iter_0000004.pkl").read_bytes()
    (ckpts / "latest.pkl").write_bytes(at_2)  # as if the crash came between the two writes
    resumed = Trainer(cfg(4), resume=True, progress=False)
    assert resumed.pos.iteration == 2
    resumed.train()
    assert "iter_0000004.pkl exists already; keeping it" in capsys.readouterr().err
    assert (ckpts / "iter_0000004.pkl").read_bytes() == snapshot
    assert read_checkpoint(ckpts / "latest.pkl")["position"]["iteration"] == 4
