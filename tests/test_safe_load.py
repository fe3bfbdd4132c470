"""Loading a file never runs code: a pickle whose payload would create a marker folder is planted in
every place the project reads a pickle-based file, and each refuses it with one line naming the file
and the global it asked for, while the marker never appears. The safe reader still reads every
legitimate format: our checkpoints, PyTorch zip and legacy `.pth`, Jittor `.pkl`."""
import collections
import contextlib
import hashlib
import os
import pickle
import struct
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

from jspade.safe_load import CheckpointError, UnsafeFileError, safe_load

ROOT = Path(__file__).resolve().parents[1]


class Plant:
    """Unpickling this calls os.mkdir(marker): what a hostile checkpoint would do, harmlessly."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def hostile_payload(marker):
    """A checkpoint-shaped dict with the plant inside (so readers get past any format check only
    by running it)."""
    return {"format": "jspade-checkpoint-1", "networks": {"G": {"fc.weight": Plant(marker)}},
            "config": {}, "position": {"iteration": 1, "phase": 0, "epoch": 0, "batch": 1}}


def test_the_planted_payload_really_runs_under_plain_pickle(tmp_path):
    """Control: without the safe reader the plant does create its marker (so the tests below mean something)."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(hostile_payload(marker)))
    assert marker.is_dir()


# --- writing PyTorch files without torch -----------------------------------------------------------
@contextlib.contextmanager
def fake_torch():
    """Just enough of a `torch` module for pickle to name torch.FloatStorage and _rebuild_tensor_v2."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
    storage = type("FloatStorage", (), {"__module__": "torch"})

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while writing")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    torch.FloatStorage, torch._utils, utils._rebuild_tensor_v2 = storage, utils, _rebuild_tensor_v2
    saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
    sys.modules.update({"torch": torch, "torch._utils": utils})
    try:
        yield storage, _rebuild_tensor_v2
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


class _Storage:
    def __init__(self, key, array):
        self.key, self.array = key, array


class _Tensor:
    def __init__(self, storage, offset, size, stride, rebuild):
        self.args, self.rebuild = (storage, offset, size, stride, False, collections.OrderedDict()), rebuild

    def __reduce__(self):
        return self.rebuild, self.args


class Strided:
    """A tensor viewing `array`'s storage with its own size and stride (e.g. a transpose)."""

    def __init__(self, array, size, stride):
        self.array, self.size, self.stride = array, size, stride


def _torch_pickle(obj, protocol=2):
    """Pickle `obj` ({name: float32 array} or anything) the way torch.save does: tensors as
    _rebuild_tensor_v2 calls on persistent storage ids. Returns (pickle bytes, storages)."""
    import io
    storages = []

    class TorchPickler(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, _Storage):
                return ("storage", storage_cls, o.key, "cpu", o.array.size)
            return None

    def convert(value):
        if isinstance(value, Strided):
            st = _Storage(str(len(storages)), np.ascontiguousarray(value.array, np.float32).ravel())
            storages.append(st)
            return _Tensor(st, 0, value.size, value.stride, rebuild)
        if isinstance(value, np.ndarray):
            st = _Storage(str(len(storages)), np.ascontiguousarray(value, np.float32).ravel())
            storages.append(st)
            stride = tuple(s // 4 for s in np.ascontiguousarray(value, np.float32).strides)
            return _Tensor(st, 0, value.shape, stride, rebuild)
        if isinstance(value, dict):
            return collections.OrderedDict((k, convert(v)) for k, v in value.items())
        return value

    with fake_torch() as (storage_cls, rebuild):
        buf = io.BytesIO()
        TorchPickler(buf, protocol=protocol).dump(convert(obj))
    return buf.getvalue(), storages


def write_torch_zip(path, obj):
    data, storages = _torch_pickle(obj)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data)
        for st in storages:
            z.writestr(f"archive/data/{st.key}", st.array.astype("<f4").tobytes())
    return path


def write_torch_legacy(path, obj):
    data, storages = _torch_pickle(obj)
    with open(path, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(header, f, protocol=2)
        f.write(data)
        pickle.dump([st.key for st in storages], f, protocol=2)
        for st in storages:
            f.write(struct.pack("<q", st.array.size) + st.array.astype("<f4").tobytes())
    return path


def write_jittor_pkl(path, obj):
    """jt.save's format: the pickle, its sha1, a tag."""
    data = pickle.dumps(obj, 4)
    Path(path).write_bytes(data + hashlib.sha1(data).digest() + b"HCAJSLHD")
    return path


# --- legitimate files read correctly -----------------------------------------------------------------
STATE = {"conv.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2), "conv.bias": np.array([0.5, -1.0], np.float32)}


@pytest.mark.parametrize("writer", [write_torch_zip, write_torch_legacy, write_jittor_pkl])
def test_reads_pytorch_zip_legacy_and_jittor_files(tmp_path, writer):
    state = safe_load(writer(tmp_path / "w.pth", STATE))
    assert set(state) == set(STATE)
    for k in STATE:
        assert state[k].dtype == np.float32 and np.array_equal(state[k], STATE[k])


def test_reads_a_transposed_tensor_through_its_strides(tmp_path):
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    path = write_torch_zip(tmp_path / "t.pth", {"w": Strided(array, (3, 2), (1, 3))})
    assert np.array_equal(safe_load(path)["w"], array.T)


def test_reads_numpy_pickles_of_both_numpy_generations(tmp_path):
    """numpy 2 names its reconstructor numpy._core.multiarray, numpy 1 numpy.core.multiarray: a
    file written under either (as by a teammate) must read under both. Protocol 0 also spells
    bytes as _codecs.encode calls."""
    payload = {"a": np.arange(4, dtype=np.float32), "s": np.float32(2.5), "n": None, "t": (1, "x"), "b": b"\x00"}
    blob = pickle.dumps(payload, protocol=0)
    for module in (b"numpy.core.multiarray", b"numpy._core.multiarray"):
        (tmp_path / "p.pkl").write_bytes(
            blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray").replace(b"numpy.core.multiarray", module))
        out = safe_load(tmp_path / "p.pkl")
        assert np.array_equal(out["a"], payload["a"]) and out["s"] == 2.5 and out["t"] == (1, "x")
        assert out["b"] == b"\x00" and out["n"] is None


@pytest.mark.parametrize("content, words", [(b"", "empty"), (b"\x80\x04\x95", "truncated"),
                                            (b"not a pickle at all", "not a checkpoint")])
def test_damaged_files_give_one_line_naming_the_file(tmp_path, content, words):
    path = tmp_path / "latest.pkl"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as e:
        safe_load(path)
    assert str(path) in str(e.value) and words in str(e.value) and "\n" not in str(e.value)


def test_a_jittor_file_with_a_wrong_checksum_is_corrupt(tmp_path):
    path = write_jittor_pkl(tmp_path / "vgg19.pkl", STATE)
    data = bytearray(path.read_bytes())
    data[-40] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        safe_load(path)


# --- hostile files are refused in every loader ---------------------------------------------------------
def assert_refused(call, path, marker):
    with pytest.raises(CheckpointError) as e:
        call()
    message = str(e.value)
    assert isinstance(e.value, UnsafeFileError), message
    assert str(path) in message and "posix.mkdir" in message and "\n" not in message, message
    assert not marker.exists()


def hostile_files(tmp_path):
    """(kind, path, marker) for each file format a hostile pickle can hide in."""
    out = []
    for kind, writer in (("pkl", lambda p, m: p.write_bytes(pickle.dumps(hostile_payload(m), protocol=4))),
                         ("jittor-pkl", lambda p, m: write_jittor_pkl(p, hostile_payload(m))),
                         ("zip-pth", lambda p, m: write_torch_zip(p, {"fc.weight": Plant(m)})),
                         ("legacy-pth", lambda p, m: write_torch_legacy(p, {"fc.weight": Plant(m)}))):
        folder = tmp_path / kind
        folder.mkdir()
        path = folder / ("latest_net_G.pth" if kind.endswith("pth") else "latest.pkl")
        marker = folder / "MARKER"
        writer(path, marker)
        out.append((kind, path, marker))
    return out


def test_safe_load_refuses_every_format(tmp_path):
    for _, path, marker in hostile_files(tmp_path):
        assert_refused(lambda: safe_load(path), path, marker)


def test_inference_and_painter_refuse_a_hostile_checkpoint(tmp_path):
    """infer.py --checkpoint (a .pkl, a run folder, an original folder), paint.py --checkpoint/--results."""
    from jspade.inference import load_generator
    from jspade.painter import PainterApp, default_checkpoint

    for kind, path, marker in hostile_files(tmp_path):
        if kind.endswith("pth"):  # the original repository's folder of latest_net_G.pth
            assert_refused(lambda: load_generator(path.parent), path, marker)
            assert_refused(lambda: PainterApp.from_checkpoint(path.parent, warmup=False), path, marker)
            continue
        run = tmp_path / "results" / kind / "checkpoints"
        run.mkdir(parents=True)
        latest = run / "latest.pkl"
        latest.write_bytes(path.read_bytes())
        assert_refused(lambda: load_generator(path), path, marker)
        assert_refused(lambda: load_generator(run.parent), latest, marker)
        found = default_checkpoint(tmp_path / "results")
        assert_refused(lambda: PainterApp.from_checkpoint(found, warmup=False), found, marker)


def test_vgg_fid_and_segmenter_weights_refuse_hostile_files(tmp_path):
    """train.py --train.vgg_weights (.pkl and .pth), evaluate.py's FID weights, --segmenter."""
    from jspade.metrics.scores import load_segmenter  # the one loader (clean_dataset.py and evaluate.py)
    from jspade.metrics.torchscript import load_fid_inception_weights
    from jspade.models.vgg import VGG19

    vgg = VGG19()
    for kind, path, marker in hostile_files(tmp_path):
        assert_refused(lambda: vgg.load_weights(path), path, marker)
        assert_refused(lambda: load_fid_inception_weights(path), path, marker)
        if kind == "pkl":
            assert_refused(lambda: load_segmenter(path), path, marker)


def test_resume_refuses_a_hostile_latest_and_changes_nothing(tmp_path):
    """train.py --resume: the hostile latest.pkl is not run, and with no intact checkpoint beside it
    the resume stops before touching the run folder."""
    from jspade.train.trainer import RUN_MARKER, Trainer
    from tiny_models import tiny_config

    cfg = tiny_config(tmp_path / "out", tmp_path / "data", max_iters=1)
    run = tmp_path / "out" / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / RUN_MARKER).touch()
    marker = tmp_path / "MARKER"
    latest = run / "checkpoints" / "latest.pkl"
    latest.write_bytes(pickle.dumps(hostile_payload(marker), protocol=4))
    from jspade.train.run_folder import LOCK

    def contents():  # the folder's files, less the OS lock a trainer takes before it reads anything
        return sorted(p.relative_to(run) for p in run.rglob("*") if p.name != LOCK)
    before = contents()
    with pytest.raises(CheckpointError) as e:
        Trainer(cfg, resume=True, progress=False)
    assert "posix.mkdir" in str(e.value) and "latest.pkl" in str(e.value)
    assert not marker.exists()
    assert contents() == before


def test_average_checkpoints_refuses_a_hostile_input(tmp_path):
    marker = tmp_path / "MARKER"
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps(hostile_payload(marker), protocol=4))
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "average_checkpoints.py"), str(bad), str(bad),
                          "--out", str(tmp_path / "avg.pkl")], capture_output=True, text=True,
                         env={**os.environ, "JSPADE_DEVICE": "cpu"})
    assert run.returncode != 0
    assert str(bad) in run.stderr and "posix.mkdir" in run.stderr
    assert not marker.exists() and not (tmp_path / "avg.pkl").exists()
