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
    def __init__(self, key, array, numel=None):
        self.key, self.array = key, array
        self.numel = array.size if numel is None else numel  # what the pickle declares


class _Tensor:
    def __init__(self, storage, offset, size, stride, rebuild):
        self.args, self.rebuild = (storage, offset, size, stride, False, collections.OrderedDict()), rebuild

    def __reduce__(self):
        return self.rebuild, self.args


class Strided:
    """A tensor viewing `array`'s storage with its own size, stride and offset (e.g. a transpose)."""

    def __init__(self, array, size, stride, offset=0, declared_numel=None):
        self.array, self.size, self.stride, self.offset = array, size, stride, offset
        self.declared_numel = declared_numel  # the storage's element count as the pickle states it


def _torch_pickle(obj, protocol=2):
    """Pickle `obj` ({name: float32 array} or anything) the way torch.save does: tensors as
    _rebuild_tensor_v2 calls on persistent storage ids. Returns (pickle bytes, storages)."""
    import io
    storages = []

    class TorchPickler(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, _Storage):
                return ("storage", storage_cls, o.key, "cpu", o.numel)
            return None

    def convert(value):
        if isinstance(value, Strided):
            st = _Storage(str(len(storages)), np.ascontiguousarray(value.array, np.float32).ravel(),
                          value.declared_numel)
            storages.append(st)
            return _Tensor(st, value.offset, value.size, value.stride, rebuild)
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
    from jspade.train.run_folder import RUN_MARKER
    from jspade.train.trainer import Trainer
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



# --- hostile structure: out-of-bounds views, unbounded sizes, self-reference, depth -------------------
def refused(path, *words):
    """safe_load(path) is refused in one line naming the file and the reason."""
    with pytest.raises(CheckpointError) as e:
        safe_load(path)
    message = str(e.value)
    assert str(path) in message and "\n" not in message, message
    for word in words:
        assert word in message, message
    return message


@pytest.mark.parametrize("writer", [write_torch_zip, write_torch_legacy])
@pytest.mark.parametrize("tensor, words", [
    # fc.bias at offset -1: before, 255 of 256 values came from process memory
    (Strided(np.ones(256), (256,), (1,), offset=-1), ["storage offset -1"]),
    (Strided(np.ones(256), (256,), (-1,), offset=255), ["stride entry -1"]),
    (Strided(np.ones(4), (5,), (1,)), ["past its storage", "element 4", "holds 4"]),
    (Strided(np.ones(6), (2, 3), (3, 2)), ["past its storage"]),
    (Strided(np.ones(4), (2,), (1,), offset=5), ["past its storage"]),
    # an 8 KB file asking for a 1 GiB tensor of one repeated element
    (Strided(np.ones(1), (1 << 28,), (0,)), ["would take 1073741840 bytes", "storages of 20 bytes"]),
    (Strided(np.ones(1), (1 << 14, 1 << 14), (0, 0)), ["would take 1073741840 bytes"]),
    (Strided(np.ones(2), (2.0,), (1,)), ["size entry a float"]),
])
def test_tensors_are_checked_against_their_storage_before_memory_is_touched(tmp_path, writer, tensor, words):
    path = writer(tmp_path / "latest_net_G.pth", {"fc.weight": np.ones((2, 2), np.float32), "fc.bias": tensor})
    assert path.stat().st_size < 8192
    refused(path, "refused", *words)


def test_views_inside_their_storage_still_read(tmp_path):
    """The bounds are exact: the last element of the storage, a stride-0 broadcast within the budget,
    an empty tensor at the storage's end."""
    storage = np.arange(6, dtype=np.float32)
    path = write_torch_zip(tmp_path / "ok.pth", {"tail": Strided(storage, (2,), (2,), offset=3),
                                                 "bcast": Strided(storage, (3, 4), (1, 0), offset=3),
                                                 "empty": Strided(storage, (0, 5), (5, 1), offset=6)})
    state = safe_load(path)
    assert state["tail"].tolist() == [3, 5]
    assert state["bcast"].tolist() == [[3] * 4, [4] * 4, [5] * 4]
    assert state["empty"].shape == (0, 5)


def test_a_storage_the_file_cannot_hold_is_refused_before_it_is_read(tmp_path):
    """The legacy format's storages follow in the file itself; a zip entry's size must be what the
    pickle declares."""
    legacy = write_torch_legacy(tmp_path / "legacy.pth", {"w": Strided(np.ones(4), (4,), (1,), declared_numel=1 << 40)})
    refused(legacy, "more than the whole")
    zipped = write_torch_zip(tmp_path / "zipped.pth", {"w": Strided(np.ones(4), (4,), (1,), declared_numel=8)})
    refused(zipped, "holds 16 bytes", "declares 8 elements")


def test_object_arrays_and_calls_of_ndarray_are_refused(tmp_path):
    plain = tmp_path / "objects.pkl"
    plain.write_bytes(pickle.dumps({"fc.weight": np.array([None] * 4, dtype=object)}, protocol=2))
    refused(plain, "refused", "object dtype")
    # numpy.ndarray(shape, dtype) called directly: an uninitialised (or object) array; refused
    call = tmp_path / "call.pkl"
    call.write_bytes(b"\x80\x02cnumpy\nndarray\nK\x04\x85X\x01\x00\x00\x00O\x86R.")
    refused(call, "numpy.ndarray")


def self_referencing_list():
    loop = []
    loop.append(loop)
    return loop


@pytest.mark.parametrize("writer", [write_torch_legacy, write_torch_zip, write_jittor_pkl])
def test_a_container_that_contains_itself_is_refused(tmp_path, writer):
    """Before: a legacy .pth list containing itself printed a 3-million-line RecursionError."""
    path = writer(tmp_path / "loop.pth", {"w": np.ones(3, np.float32), "loop": self_referencing_list()})
    refused(path, "refused", "list that contains itself")


@contextlib.contextmanager
def recursion_limit(limit):
    saved = sys.getrecursionlimit()
    sys.setrecursionlimit(limit)
    try:
        yield
    finally:
        sys.setrecursionlimit(saved)


def test_deep_nesting_is_refused_whatever_the_recursion_limit(tmp_path):
    """100000 nested lists (a 200 KB pickle): refused by depth, walked without recursion, under the
    10^6 recursion limit Jittor sets (where a recursive walk would overflow the C stack)."""
    from jspade.safe_load import MAX_NESTING

    n = 100_000
    path = tmp_path / "deep.pkl"
    path.write_bytes(b"\x80\x02" + b"]" * (n + 1) + b"a" * n + b".")  # EMPTY_LIST x n+1, APPEND x n
    with recursion_limit(10 ** 6):
        refused(path, "refused", "nested more than")
    shallow = tmp_path / "shallow.pkl"  # within the bound: read
    shallow.write_bytes(b"\x80\x02" + b"]" * 50 + b"a" * 49 + b".")
    assert isinstance(safe_load(shallow), list)


def test_a_deeply_nested_dict_key_is_refused_before_unpickling(tmp_path):
    """A dict key that is a tuple nested 10^6 deep (a 1 MB pickle): Python's C unpickler hashes the key
    recursively and overflows its stack (the process dies); the opcodes are checked first."""
    n = 1_000_000
    path = tmp_path / "deep_key.pkl"
    path.write_bytes(b"\x80\x02}" + b")" + b"\x85" * n + b"Ns.")  # {((((),),)...): None}
    with recursion_limit(10 ** 6):
        refused(path, "refused", "nested more than")
    ok = tmp_path / "key.pkl"  # a few levels: read
    ok.write_bytes(b"\x80\x02}" + b")" + b"\x85" * 5 + b"Ns.")
    assert list(safe_load(ok).values()) == [None]


def test_a_container_grown_after_it_was_memoised_still_counts(tmp_path):
    """Nesting built through the memo: a list is stored, a 300-deep tuple appended to it, and the list
    fetched back and wrapped 200 times (501 levels). Counted where the container is, not where it was
    first stored (a count taken at storing time would see 200)."""
    from jspade.safe_load import MAX_OPCODE_NESTING
    assert 200 < MAX_OPCODE_NESTING < 501
    path = tmp_path / "memo.pkl"
    path.write_bytes(b"\x80\x02" + b"]q\x00" + b")" + b"\x85" * 300 + b"a0" + b"h\x00" + b"\x85" * 200 + b".")
    refused(path, "refused", "nested more than")


def test_shared_parts_count_each_time_they_are_reached(tmp_path):
    """A 64-level chain of lists each holding the next twice: 2^64 items to any consumer that walks it."""
    from jspade.safe_load import MAX_ITEMS

    inner = []
    for _ in range(64):
        inner = [inner, inner]
    path = write_jittor_pkl(tmp_path / "doubling.pkl", inner)
    refused(path, "refused", f"more than {MAX_ITEMS} items")
    tied = np.ones(3, np.float32)  # a shared array or dict (tied weights) is fine
    assert safe_load(write_jittor_pkl(tmp_path / "tied.pkl", {"a": tied, "b": tied}))["b"].tolist() == [1, 1, 1]


def test_a_zip_bomb_entry_is_refused_without_inflating_it(tmp_path, monkeypatch):
    """An honest deflated entry inflating past the budget (here 32 MiB of zeros in a 33 KB zip, with
    the floor lowered to 1 MiB) is refused from the zip's directory: the entry is never opened."""
    import jspade.safe_load as safe_load_module

    data, storages = _torch_pickle({"w": np.zeros(8 << 20, np.float32)})
    path = tmp_path / "bomb.pth"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", data)
        z.writestr("archive/data/0", storages[0].array.astype("<f4").tobytes())
    assert path.stat().st_size < 64 << 10
    monkeypatch.setattr(safe_load_module, "ZIP_INFLATION_FLOOR", 1 << 20)
    opened = []
    real_open = zipfile.ZipFile.open

    def spying_open(self, name, *args, **kwargs):
        opened.append(getattr(name, "filename", name))
        return real_open(self, name, *args, **kwargs)
    monkeypatch.setattr(zipfile.ZipFile, "open", spying_open)
    refused(path, "refused", "inflate", "archive/data/0 declares 33554432")
    assert opened == ["archive/data.pkl"]


def test_a_zip_declaring_a_huge_entry_is_refused_with_the_real_limits(tmp_path):
    """A 1 GiB storage declared by both the pickle and the zip's directory (the data is 4 bytes):
    refused by the inflation limit of a small archive, before reading it."""
    data, storages = _torch_pickle({"w": Strided(np.ones(1), (1,), (1,), declared_numel=1 << 28)})
    path = tmp_path / "declared.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data)
        z.writestr("archive/data/0", b"\x00" * 4)
        z.getinfo("archive/data/0").file_size = 1 << 30  # what the directory written at close says
    refused(path, "refused", "inflate", "1073741824")


def write_torchscript(path, attributes):
    """A TorchScript-shaped archive (code/ beside data.pkl) whose module pickles `attributes`."""
    module = types.ModuleType("__torch__")
    WrapNet = type("WrapNet", (), {"__module__": "__torch__"})
    module.WrapNet = WrapNet
    net = WrapNet()
    net.__dict__.update(attributes)
    sys.modules["__torch__"] = module
    try:
        data = pickle.dumps(net, protocol=2)
    finally:
        del sys.modules["__torch__"]
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data)
        z.writestr("archive/code/__torch__.py", "")
    return path


def test_torchscript_fid_archive_with_a_self_reference_is_refused(tmp_path):
    """Before: a ~200-byte archive like this drove evaluate.py to 23.9 GB."""
    from jspade.metrics.torchscript import flatten_tensors, load_fid_inception_weights

    path = write_torchscript(tmp_path / "default_1.pt", {"net": self_referencing_list()})
    assert path.stat().st_size < 512
    with recursion_limit(10 ** 6), pytest.raises(CheckpointError) as e:
        load_fid_inception_weights(path)
    assert str(path) in str(e.value) and "contains itself" in str(e.value)
    with pytest.raises(CheckpointError, match="contains itself"):  # the walk itself is bounded too
        flatten_tensors({"net": self_referencing_list()}, source="x.pt")
    with pytest.raises(CheckpointError, match="not the FID Inception"):  # a well-formed stranger: one line
        load_fid_inception_weights(write_torchscript(tmp_path / "other.pt", {"w": np.ones(2, np.float32)}))


def test_a_safetensors_header_nested_deeply_is_refused(tmp_path):
    header = b"[" * 200_000 + b"]" * 200_000
    path = tmp_path / "deep.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with recursion_limit(10 ** 6):
        refused(path, "nests more than")
