"""The checkpoints of a run folder: their two kinds, which one a resume continues from, pruning, and
the disk they take.

    checkpoints/latest.pkl, phaseK_end.pkl   the full training state: G, D, E, both Adam moments,
                                             position, config (what a resume needs)
    checkpoints/iter_XXXXXXX.pkl             snapshots: G, E (and EMA weights when kept), position,
                                             config, float32 (what inference and averaging need)

A full state is about 3x a snapshot (D, and two moments per trainable weight), so keeping every
snapshot as a full state would not fit a contest run on a disk.
"""
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jspade.checkpoint import CheckpointError, read_checkpoint

LATEST = "latest.pkl"
BEST_FID = "best_fid.pkl"  # the lowest-FID weights so far (train.fid_every): what a snapshot holds
SNAPSHOT_NETWORKS = ("G", "E")
SNAPSHOT_KEYS = ("config", "position", "vgg_pretrained", "ema_networks", "ema_updates", "fid_history")
_SNAPSHOT = re.compile(r"^iter_(\d+)\.pkl$")
_PHASE_END = re.compile(r"^phase(\d+)_end\.pkl$")
_TEMP = re.compile(r"^\..+\.tmp(\.[A-Za-z0-9]+)?$")  # jspade.atomic.atomic_path's temporary names


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
            if "position" not in payload:
                raise CheckpointError(f"{path} holds no training position")
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


def state_bytes(module):
    return sum(int(np.prod(v.shape)) * 4 for v in module.state_dict().values())


def checkpoint_sizes(model, trainable_counts):
    """(full state, snapshot) sizes in bytes, float32: a full state holds every network and two Adam
    moments per trainable weight (`trainable_counts`: number of trainable values); a snapshot G and E."""
    nets = model.networks()
    full = sum(state_bytes(n) for n in nets.values()) + 2 * 4 * trainable_counts
    snapshot = sum(state_bytes(n) for k, n in nets.items() if k in SNAPSHOT_NETWORKS)
    return full, snapshot
