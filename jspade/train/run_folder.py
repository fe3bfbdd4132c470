"""A run folder, `<output_dir>/<name>/`: who may use it, its checkpoints (their two kinds, which one a
resume continues from, pruning, the disk they take).

    .jspade-run                              marks a folder training made (the only kind --resume uses)
    .lock                                    held (flock) by the process training in it: one at a time
    config.toml, log.jsonl, samples/, report.html
    checkpoints/latest.pkl, phaseK_end.pkl   the full training state: G, D, E, both Adam moments,
                                             position, config (what a resume needs)
    checkpoints/iter_XXXXXXX.pkl             snapshots: G, E (and EMA weights when kept), position,
                                             config, float32 (what inference and averaging need)

A full state is about 3x a snapshot (D, and two moments per trainable weight), so keeping every
snapshot as a full state would not fit a contest run on a disk.
"""
import fcntl
import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from jspade.atomic import write_bytes_atomic
from jspade.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from jspade.errors import JspadeError

RUN_MARKER = ".jspade-run"
LATEST = "latest.pkl"
LOCK = ".lock"  # held (flock) by the process training in the folder; holds its PID
BEST_FID = "best_fid.pkl"  # the lowest-FID weights so far (train.fid_every): what a snapshot holds
SNAPSHOT_NETWORKS = ("G", "E")
SNAPSHOT_KEYS = ("config", "position", "vgg_pretrained", "ema_networks", "ema_updates", "fid_history",
                 "style_bank")
_SNAPSHOT = re.compile(r"^iter_(\d+)\.pkl$")
_PHASE_END = re.compile(r"^phase(\d+)_end\.pkl$")
_TEMP = re.compile(r"^\..+\.tmp(\.[A-Za-z0-9]+)?$")  # jspade.atomic.atomic_path's temporary names


class RunFolderError(JspadeError, RuntimeError):
    """A run folder that cannot be used as asked (exists, in use, not a jspade run, unwritable)."""


def lock_run_folder(run_dir):
    """Lock `run_dir` for this process (an OS lock on <run_dir>/.lock, released when the returned file
    is closed or the process ends, crash included); RunFolderError naming the holder's PID when
    another process holds it. The folder must exist."""
    path = Path(run_dir) / LOCK
    handle = open(path, "a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise RunFolderError(f"{run_dir} is in use: another training process (PID {holder}) holds {path}; "
                             "wait for it to end, or choose another --name") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


class RunFolder:
    """The folder of one training run. Invariants: nothing in it is created or changed before
    `create()` (a failed start leaves it as it was); from the first look until `close()` (or the end
    of the process) no other process trains in it (its lock). Under MPI only rank 0 (`writer`) writes."""

    def __init__(self, path, resume=False, overwrite=False, writer=True, log=print):
        """Check `path` against --resume/--overwrite and lock it when it is a run already."""
        self.path, self.writer, self.log = Path(path), writer, log
        self.checkpoints, self.samples = self.path / "checkpoints", self.path / "samples"
        self._lock = None
        if resume and overwrite:
            raise RunFolderError("--resume and --overwrite contradict each other: pass one")
        run_dir = self.path
        if run_dir.exists() and not run_dir.is_dir():
            raise RunFolderError(f"{run_dir} is a file, not a run folder")
        if run_dir.is_dir() and (run_dir / RUN_MARKER).exists() and writer:
            self._lock = lock_run_folder(run_dir)  # refused while another process trains in it
        if run_dir.exists() and folder_contents(run_dir):
            if resume and not (run_dir / RUN_MARKER).exists():
                self.close()
                raise RunFolderError(f"{run_dir} was not created by jspade training; refusing to resume into it")
            if not resume and not overwrite:
                self.close()
                raise RunFolderError(f"{run_dir} already exists: pass --resume to continue that run, or "
                                     "--overwrite to start over (its contents are moved aside to "
                                     f"{run_dir.name}.replaced-<time>)")
        elif resume:
            raise RunFolderError(f"nothing to resume: {run_dir} does not exist or is empty")

    def create(self, config_toml, resumed=None, overwrite=False):
        """Create (or, with `overwrite`, replace) the folder once everything it depends on has loaded;
        write config.toml; set aside the damaged checkpoints of `resumed` (a ResumePoint)."""
        if not self.writer:
            return
        run_dir = self.path
        if overwrite and run_dir.exists() and folder_contents(run_dir):
            aside = run_dir.with_name(f"{run_dir.name}.replaced-{datetime.now():%Y%m%d-%H%M%S}")
            os.replace(run_dir, aside)
            self.close()  # its lock file moved aside with it
            self.log(f"--overwrite: the previous contents of {run_dir} were moved to {aside}")
        run_dir.mkdir(parents=True, exist_ok=True)
        if self._lock is None:
            self._lock = lock_run_folder(run_dir)
            if resumed is None and not overwrite and folder_contents(run_dir):
                self.close()  # another process started this run folder since __init__ looked
                raise RunFolderError(f"{run_dir} was created by another training process meanwhile; "
                                     "choose another --name")
        for p in remove_stale_temp_files(run_dir):
            self.log(f"removed {p}, a temporary file left by an interrupted write")
        for path, reason in (resumed.damaged if resumed is not None else ()):
            if path.exists():  # set aside, so that the run never needs their names again
                self.log(f"{path.name} is damaged ({reason}); renamed to {set_aside_damaged(path).name}")
        (run_dir / RUN_MARKER).touch()
        write_bytes_atomic(run_dir / "config.toml", config_toml.encode())

    def append_log(self, record):
        """One line in log.jsonl (an iteration's losses and timings, an FID, an event)."""
        if self.writer:
            with open(self.path / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def log_event(self, event, iteration, **fields):
        """One line in log.jsonl for something that is not an iteration (resume, restart)."""
        self.append_log({"event": event, "iter": iteration, **fields, "at": datetime.now().isoformat(timespec="seconds")})

    def write_checkpoint(self, filename, model, extra, keep_latest=True, keep_last=0):
        """Write `model` and `extra` (the full state's extras) as checkpoints/<filename>: a snapshot for
        iter_*.pkl and best_fid.pkl, the full state for any other name. Anything but latest.pkl also
        refreshes latest.pkl (unless not `keep_latest`). A numbered checkpoint that exists is kept (a
        resume replaying the iterations after a crash between two writes); snapshots beyond the newest
        `keep_last` are pruned. A failed write (a full disk) is a RunFolderError naming the file; the
        latest.pkl written before it is intact."""
        path = writing = self.checkpoints / filename  # `writing`: the file a failed write names
        keep_existing = path.exists() and filename not in (LATEST, BEST_FID)
        if keep_existing:
            self.log(f"{path} exists already; keeping it (numbered checkpoints are never overwritten)")
        full = {**extra, "kind": "full"}
        try:
            if (is_snapshot(filename) or filename == BEST_FID) and not keep_existing:
                save_checkpoint(path, model, snapshot_extra(extra), networks=SNAPSHOT_NETWORKS)
            elif not keep_existing:
                save_checkpoint(path, model, full)
            if keep_latest and filename != LATEST:
                writing = self.checkpoints / LATEST
                save_checkpoint(writing, model, full)
        except OSError as e:
            raise RunFolderError(f"cannot write {writing}: {e.strerror or e}; training stopped, the last "
                                 f"{LATEST} written is intact") from None
        if is_snapshot(filename):
            prune_snapshots(self.checkpoints, keep_last)

    def close(self):
        """Let another process train in this folder (the lock also ends with the process)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def folder_contents(run_dir):
    """What a run folder holds besides its lock file."""
    return [p for p in Path(run_dir).iterdir() if p.name != LOCK]


def set_aside_damaged(path):
    """Rename a damaged checkpoint to <name>.damaged (.damaged.2, .3, ... when an earlier one is
    there: every damaged file is kept as evidence). Returns the new path."""
    target = path.with_name(path.name + ".damaged")
    n = 2
    while target.exists():
        target = path.with_name(f"{path.name}.damaged.{n}")
        n += 1
    os.replace(path, target)
    return target


def is_snapshot(filename):
    return _SNAPSHOT.match(Path(filename).name) is not None


def _float32(tree):
    if isinstance(tree, dict):
        return {k: _float32(v) for k, v in tree.items()}
    if isinstance(tree, np.ndarray) and np.issubdtype(tree.dtype, np.floating):
        return tree.astype(np.float32, copy=False)
    return tree


def snapshot_extra(extra):
    """The part of a full checkpoint's `extra` that a snapshot keeps, in float32."""
    return {**{k: _float32(extra[k]) for k in SNAPSHOT_KEYS if k in extra}, "kind": "snapshot"}


def is_full_state(payload):
    return "optimizers" in payload and "D" in payload["networks"] and "position" in payload


def snapshots(ckpt_dir):
    """Numbered snapshots, oldest first."""
    found = [(int(m.group(1)), p) for p in Path(ckpt_dir).glob("iter_*.pkl") if (m := _SNAPSHOT.match(p.name))]
    return [p for _, p in sorted(found)]


def phase_ends(ckpt_dir):
    found = [(int(m.group(1)), p) for p in Path(ckpt_dir).glob("phase*_end.pkl") if (m := _PHASE_END.match(p.name))]
    return [p for _, p in sorted(found)]


def prune_snapshots(ckpt_dir, keep_last):
    """Delete all but the newest `keep_last` numbered snapshots (0 keeps all); phase ends and
    latest.pkl are never pruned. Returns the deleted paths."""
    if keep_last <= 0:
        return []
    old = snapshots(ckpt_dir)[:-keep_last]
    for p in old:
        p.unlink()
    return old


def remove_stale_temp_files(run_dir):
    """Temporary files left by a process killed while writing (the atomic writer's `.name.*.tmp*`)."""
    removed = []
    for folder in (run_dir, run_dir / "checkpoints", run_dir / "samples"):
        if folder.is_dir():
            for p in folder.iterdir():
                if _TEMP.match(p.name) and p.is_file():
                    p.unlink()
                    removed.append(p)
    return removed


@dataclass
class ResumePoint:
    """What a resume continues from: `payload` gives G, E and the position; `full_state` (the same
    payload, an older full checkpoint, or None) gives D and the optimiser moments."""
    path: Path
    payload: dict
    full_state_path: Path = None
    full_state: dict = None
    why: str = ""
    damaged: list = field(default_factory=list)  # (path, reason) of files that could not be read


def find_resume_point(ckpt_dir):
    """latest.pkl when intact; otherwise the newest intact checkpoint (a phase end or a snapshot).
    Raises CheckpointError when there is none."""
    ckpt_dir = Path(ckpt_dir)
    damaged = []

    def read(path):
        try:
            payload = read_checkpoint(path)
            position = payload.get("position")
            if position is None:
                raise CheckpointError(f"{path} holds no training position")
            check_position(position, path)
            return payload
        except CheckpointError as e:
            damaged.append((path, str(e).splitlines()[0]))
            return None

    latest = ckpt_dir / LATEST
    if latest.exists():
        payload = read(latest)
        if payload is not None and is_full_state(payload):
            return ResumePoint(latest, payload, latest, payload, "the newest full training state")
        if payload is not None:
            damaged.append((latest, "it holds no full training state"))
    why = f"{LATEST} is " + ("damaged (" + damaged[0][1] + ")" if damaged else "missing")

    full = next(((p, pl) for p in reversed(phase_ends(ckpt_dir))
                 if (pl := read(p)) is not None and is_full_state(pl)), (None, None))
    snap = next(((p, pl) for p in reversed(snapshots(ckpt_dir)) if (pl := read(p)) is not None), (None, None))
    iteration = lambda pl: int(pl["position"]["iteration"])  # noqa: E731
    if full[0] is not None and (snap[0] is None or iteration(full[1]) >= iteration(snap[1])):
        return ResumePoint(full[0], full[1], full[0], full[1], why + "; this is the newest intact checkpoint", damaged)
    if snap[0] is not None:
        restart = (f"netD and the optimiser moments from {full[0].name}" if full[0] is not None
                   else "netD and the optimiser moments start afresh")
        return ResumePoint(snap[0], snap[1], full[0], full[1],
                           why + f"; this is the newest intact checkpoint, a snapshot without the full "
                                 f"training state: {restart}", damaged)
    listed = "; ".join(f"{p.name}: {r}" for p, r in damaged)
    raise CheckpointError(f"nothing to resume in {ckpt_dir}: no intact checkpoint" + (f" ({listed})" if listed else ""))


def check_position(position, path):
    """A checkpoint's `position` must be {iteration, phase, epoch, batch: whole numbers >= 0}."""
    keys = ("iteration", "phase", "epoch", "batch")
    if (not isinstance(position, dict) or any(k not in position for k in keys)
            or any(isinstance(position[k], bool) or not isinstance(position[k], (int, np.integer))
                   or position[k] < 0 for k in keys)):
        raise CheckpointError(f"{path}: malformed training position {position!r:.100} (expected whole "
                              f"numbers >= 0 for {', '.join(keys)})")


def state_bytes(module):
    return sum(int(np.prod(v.shape)) * 4 for v in module.state_dict().values())


def checkpoint_sizes(model, trainable_counts, ema_networks=None):
    """(full state, snapshot) sizes in bytes, float32: a full state holds every network and two Adam
    moments per trainable weight (`trainable_counts`: number of trainable values); a snapshot G and E.
    Both also hold the EMA copies (`ema_networks`, {name: module}) when the run keeps them."""
    nets = model.networks()
    ema = sum(state_bytes(n) for n in (ema_networks or {}).values())
    full = sum(state_bytes(n) for n in nets.values()) + 2 * 4 * trainable_counts + ema
    snapshot = sum(state_bytes(n) for k, n in nets.items() if k in SNAPSHOT_NETWORKS) + ema
    return full, snapshot


def disk_estimate(model, trainable_counts, ema_networks, iterations, save_every, keep_last, phases):
    """One line: what the checkpoints of a run of `iterations` will take (snapshots every `save_every`
    and one when it stops, at most `keep_last` of them kept; latest.pkl and one full state per phase)."""
    full, snap = checkpoint_sizes(model, trainable_counts, ema_networks)
    n_snap = (iterations // save_every if save_every else 0) + int(not save_every or iterations % save_every > 0)
    if keep_last:
        n_snap = min(n_snap, keep_last)
    nets = ("G, E" if model.netE is not None else "G") + (" + EMA copies" if ema_networks else "")
    mib = 1 / 2**20
    return (f"checkpoints: ~{n_snap} snapshots x {snap * mib:.0f} MiB ({nets}) + {LATEST} and {phases} phase "
            f"end(s) x {full * mib:.0f} MiB (full state) = ~{(n_snap * snap + (1 + phases) * full) / 2**30:.2f} GiB"
            + ("" if keep_last else " (--train.keep_last K keeps only the newest K snapshots)"))
