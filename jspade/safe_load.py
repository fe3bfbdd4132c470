"""The one reader for every pickle-based file the project opens: its own checkpoints, the original
SPADE's `.pth` files (PyTorch zip and legacy formats), Jittor `.pkl` files (VGG19 weights), segmenter
checkpoints and the FID Inception weights.

A plain `pickle.load` (and `jt.load`, `torch.load`, which end in it) runs whatever callable the file
names, so a shared checkpoint can run code on the machine that opens it. `safe_load` unpickles with
a whitelist instead: numpy arrays, dtypes and scalars, Jittor Vars (as numpy arrays), PyTorch tensors
(rebuilt from the archive's raw storages, without torch), OrderedDict, and what pickle builds with
no global at all (dict, list, tuple, set, str, bytes, numbers, bool, None). Any other global is
refused before it is looked up, with the file and the global named, so nothing in the file runs.

PyTorch zip archive: `<prefix>/data.pkl` (the pickled object) plus one raw little-endian buffer per
storage at `<prefix>/data/<key>`; a tensor is pickled as `torch._utils._rebuild_tensor_v2(storage,
offset, size, stride, ...)` with `storage` a persistent id `('storage', <dtype class>, key, location,
numel)`. TorchScript archives pickle each module as an object of class `__torch__.<name>`, read here
as a `ScriptObject` holding its attributes. The legacy format (PyTorch < 1.6) is a stream of pickles:
a magic number, the protocol, system info, the object (storages as persistent ids), the storage keys,
then each storage as an int64 element count and its raw bytes.
"""
import collections
import hashlib
import json
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np


class CheckpointError(ValueError):
    """A weights/checkpoint file that cannot be used; the message names the file and the reason."""


class UnsafeFileError(CheckpointError):
    """The file asks to run something that a weights file has no need of."""


# dtype of each pickled storage class (torch keeps these legacy names in the pickle).
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",  # no numpy dtype: widened to float32
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
_JITTOR_TRAILER = b"HCAJSLHD"  # jt.save appends sha1(pickle) + this tag


class ScriptObject:
    """Stand-in for a pickled TorchScript object (module): `attributes` holds its pickled state."""

    qualified_name = "?"

    def __setstate__(self, state):
        self.attributes = dict(state)

    def __repr__(self):
        return f"<{self.qualified_name} {sorted(getattr(self, 'attributes', {}))}>"


_script_classes = {}


def _script_class(qualified_name):
    if qualified_name not in _script_classes:
        short = qualified_name.rsplit(".", 1)[-1]
        _script_classes[qualified_name] = type(short, (ScriptObject,), {"qualified_name": qualified_name})
    return _script_classes[qualified_name]


# --- the whitelist ----------------------------------------------------------------------------------
def _checked_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise pickle.UnpicklingError("an array of Python objects")
    return dtype


def _ndarray_reconstruct(cls, shape, dtype):
    if cls is not np.ndarray:
        raise pickle.UnpicklingError("an array of a class other than numpy.ndarray")
    return np.ndarray.__new__(np.ndarray, shape, _checked_dtype(dtype))


def _dtype(spec, align=False, copy=False):
    return _checked_dtype(np.dtype(spec, align, copy))


def _numpy_scalar(dtype, data=None):
    dtype = _checked_dtype(dtype)
    return np.frombuffer(data, dtype, count=1)[0] if data is not None else dtype.type()


def _jittor_var(data):
    """A pickled `jittor.Var` is `(Var, (ndarray,))`: keep the array, never touch Jittor."""
    if not isinstance(data, np.ndarray):
        raise pickle.UnpicklingError("a jittor.Var built from something other than an array")
    return data


def _latin1_bytes(text, encoding="latin1"):
    """Protocol-2 pickles spell bytes as `_codecs.encode(str, 'latin1')`."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode with arguments other than (str, 'latin1')")
    return text.encode("latin1")


_NUMPY_GLOBALS = {}
for _core in ("numpy.core.multiarray", "numpy._core.multiarray"):  # numpy 1.x and 2.x spellings
    _NUMPY_GLOBALS[(_core, "_reconstruct")] = _ndarray_reconstruct
    _NUMPY_GLOBALS[(_core, "scalar")] = _numpy_scalar
_PLAIN_GLOBALS = {
    **_NUMPY_GLOBALS,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("jittor", "Var"): _jittor_var,
    ("jittor.jittor_core", "Var"): _jittor_var,
    ("_codecs", "encode"): _latin1_bytes,
}


class _StorageType:
    def __init__(self, name):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


def _as_dtype_array(raw, storage_type):
    if storage_type.dtype == "bfloat16":  # bfloat16 = the high half of a float32
        return (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
    array = np.frombuffer(raw, np.dtype(storage_type.dtype).newbyteorder("<"))
    return array.astype(array.dtype.newbyteorder("="), copy=False)


def _strided_copy(storage, storage_offset, size, stride):
    size, stride = tuple(size), tuple(stride)
    if not size:
        return storage[storage_offset].copy()
    if 0 in size:
        return np.zeros(size, storage.dtype)
    needed = storage_offset + 1 + sum((n - 1) * s for n, s in zip(size, stride))
    if min(stride) < 0 or needed > storage.size:
        raise pickle.UnpicklingError(f"a tensor reaching past its storage ({needed} > {storage.size} elements)")
    view = np.lib.stride_tricks.as_strided(
        storage[storage_offset:], shape=size, strides=tuple(s * storage.dtype.itemsize for s in stride))
    return np.array(view)  # own, writable copy (the storage buffer is shared and read-only)


class _PendingStorage:
    """A legacy-format storage whose bytes come after the object's pickle."""

    def __init__(self, storage_type, numel):
        self.storage_type, self.numel, self.array = storage_type, numel, None


class _PendingTensor:
    def __init__(self, storage, args):
        self.storage, self.args = storage, args


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    """`torch._utils._rebuild_tensor_v2`: a strided view of `storage`, copied to a dense array."""
    if isinstance(storage, _PendingStorage):
        return _PendingTensor(storage, (storage_offset, size, stride))
    if not isinstance(storage, np.ndarray):
        raise pickle.UnpicklingError("a tensor without a storage")
    return _strided_copy(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *_ignored):
    return data


def _identity(value):
    return value


_TORCH_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): tuple,
    ("torch.jit._pickle", "build_intlist"): _identity,
    ("torch.jit._pickle", "build_doublelist"): _identity,
    ("torch.jit._pickle", "build_boollist"): _identity,
    ("torch.jit._pickle", "build_tensorlist"): _identity,
}


class _SafeUnpickler(pickle.Unpickler):
    """Looks globals up in the whitelist only; with `torch=True` also PyTorch's tensor machinery."""

    def __init__(self, file, torch=False, storages=None):
        super().__init__(file)
        self.torch = torch
        self.storages = storages  # key -> array (zip) or a reader for legacy pending storages

    def find_class(self, module, name):
        if (module, name) in _PLAIN_GLOBALS:
            return _PLAIN_GLOBALS[(module, name)]
        if self.torch:
            if (module, name) in _TORCH_GLOBALS:
                return _TORCH_GLOBALS[(module, name)]
            if module == "torch" and name in _STORAGE_DTYPES:
                return _StorageType(name)
            if module.startswith("__torch__"):
                return _script_class(f"{module}.{name}")
        raise UnsafeFileError(f"{module}.{name}")

    def persistent_load(self, pid):
        if self.storages is None:
            raise pickle.UnpicklingError("a persistent id outside a PyTorch file")
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"an unknown persistent id {pid!r:.80}")
        return self.storages(pid[1], str(pid[2]), int(pid[4]))


def _unpickle(path, file, **kwargs):
    try:
        return _SafeUnpickler(file, **kwargs).load()
    except UnsafeFileError as e:
        raise UnsafeFileError(
            f"{path}: refused: it asks to run {e}, which a weights file has no need of (only arrays, "
            "tensors, plain containers and scalars are accepted); nothing in it was run") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, struct.error, MemoryError, zipfile.BadZipFile) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, EOFError):
            reason = "the file ends early (truncated)"
        raise CheckpointError(f"{path}: truncated or not a checkpoint ({reason})") from None


def _load_torch_zip(path):
    with zipfile.ZipFile(path) as archive:
        prefix = next((n.split("/")[0] for n in archive.namelist()
                       if n.count("/") == 1 and n.endswith("/data.pkl")), None)
        if prefix is None:
            raise CheckpointError(f"{path}: a zip file without <folder>/data.pkl, not a PyTorch file")
        storages = {}

        def storage(storage_type, key, numel):
            if key not in storages:  # several tensors may share one storage
                try:
                    raw = archive.read(f"{prefix}/data/{key}")
                except KeyError:
                    raise pickle.UnpicklingError(f"storage {key} is missing from the archive") from None
                array = _as_dtype_array(raw, storage_type)
                if array.size != numel:
                    raise pickle.UnpicklingError(f"storage {key}: {array.size} elements, expected {numel}")
                storages[key] = array
            return storages[key]

        with archive.open(f"{prefix}/data.pkl") as file:
            return _unpickle(path, file, torch=True, storages=storage)


def _resolve_pending(obj, seen=None):
    """Replace legacy-format placeholders by arrays, in place through containers."""
    if isinstance(obj, _PendingTensor):
        return _strided_copy(obj.storage.array, *obj.args)
    if isinstance(obj, dict):
        for k, v in obj.items():
            obj[k] = _resolve_pending(v)
    elif isinstance(obj, list):
        obj[:] = [_resolve_pending(v) for v in obj]
    elif isinstance(obj, tuple):
        return tuple(_resolve_pending(v) for v in obj)
    elif isinstance(obj, ScriptObject) and hasattr(obj, "attributes"):
        _resolve_pending(obj.attributes)
    return obj


def _load_legacy_torch(path, f):
    """The rest of a PyTorch < 1.6 file after its magic number."""
    _unpickle(path, f)  # protocol version
    _unpickle(path, f)  # system info (byte order, type sizes)
    pending = {}

    def storage(storage_type, key, numel):
        if key not in pending:
            pending[key] = _PendingStorage(storage_type, numel)
        return pending[key]

    obj = _unpickle(path, f, torch=True, storages=storage)
    keys = _unpickle(path, f)
    if not isinstance(keys, list):
        raise CheckpointError(f"{path}: truncated or not a checkpoint (no storage key list)")
    for key in keys:
        head = f.read(8)
        if len(head) != 8 or str(key) not in pending:
            raise CheckpointError(f"{path}: truncated or not a checkpoint (storage {key})")
        (numel,) = struct.unpack("<q", head)
        st = pending[str(key)]
        itemsize = 2 if st.storage_type.dtype == "bfloat16" else np.dtype(st.storage_type.dtype).itemsize
        raw = f.read(numel * itemsize)
        if numel != st.numel or len(raw) != numel * itemsize:
            raise CheckpointError(f"{path}: truncated or not a checkpoint (storage {key} is short)")
        st.array = _as_dtype_array(raw, st.storage_type)
    if any(st.array is None for st in pending.values()):
        raise CheckpointError(f"{path}: truncated or not a checkpoint (a storage has no data)")
    return _resolve_pending(obj)


def _check_jittor_trailer(path, f):
    """Files written by `jt.save` end in sha1(pickle) + a tag: verify it when present."""
    size = f.seek(0, 2)
    if size >= 28:
        f.seek(size - 8)
        if f.read(8) == _JITTOR_TRAILER:
            f.seek(size - 28)
            expected = f.read(20)
            f.seek(0)
            digest, left = hashlib.sha1(), size - 28
            while left:
                chunk = f.read(min(left, 1 << 24))
                digest.update(chunk)
                left -= len(chunk)
            if digest.digest() != expected:
                raise CheckpointError(f"{path}: corrupt (its checksum does not match)")
    f.seek(0)


def safe_load(path):
    """The object pickled in `path` (a jspade/Jittor pickle or a PyTorch file), tensors as numpy
    arrays. Raises CheckpointError (UnsafeFileError for a refused global), naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        if _looks_like_safetensors(path):
            return load_safetensors(path)
        if zipfile.is_zipfile(path):
            return _load_torch_zip(path)
        with open(path, "rb") as f:
            if f.read(1) == b"":
                raise CheckpointError(f"{path}: the file is empty")
            _check_jittor_trailer(path, f)
            obj = _unpickle(path, f)
            if isinstance(obj, int) and obj == _LEGACY_TORCH_MAGIC:
                return _load_legacy_torch(path, f)
            return obj
    except zipfile.BadZipFile as e:
        raise CheckpointError(f"{path}: a damaged zip file ({e})") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror or e})") from None


# --- safetensors --------------------------------------------------------------------------------------
# Layout: an unsigned little-endian 64-bit header length N, N bytes of JSON ({name: {"dtype", "shape",
# "data_offsets": [begin, end]}, optional "__metadata__": {str: str}}), then the data buffer; offsets
# are relative to the buffer, which the tensors must cover exactly (no overlap, no hole).
_SAFETENSORS_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "bfloat16", "I64": "<i8", "I32": "<i4",
    "I16": "<i2", "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}
_SAFETENSORS_MAX_HEADER = 100 << 20  # as the safetensors library


def _looks_like_safetensors(path):
    """By name, or by content: a sane header length followed by '{'."""
    if path.suffix.lower() == ".safetensors":
        return True
    with open(path, "rb") as f:
        head = f.read(9)
        size = f.seek(0, 2)
    return (len(head) == 9 and head[8:9] == b"{"
            and 2 <= struct.unpack("<Q", head[:8])[0] <= min(size - 8, _SAFETENSORS_MAX_HEADER))


def load_safetensors(path):
    """{name: ndarray} of a .safetensors file (BF16 widened to float32), checked before any array
    is read: header length within the file, JSON header, known dtypes, shapes matching their byte
    spans, spans inside the file and tiling the data buffer. Raises CheckpointError naming the file."""
    path = Path(path)

    def bad(reason):
        return CheckpointError(f"{path}: not a valid safetensors file ({reason})")

    with open(path, "rb") as f:
        size = f.seek(0, 2)
        f.seek(0)
        if size < 8:
            raise bad("shorter than its 8-byte header length")
        (header_len,) = struct.unpack("<Q", f.read(8))
        if not 2 <= header_len <= min(size - 8, _SAFETENSORS_MAX_HEADER):
            raise bad(f"header length {header_len} does not fit a file of {size} bytes")
        try:
            header = json.loads(f.read(header_len).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise bad(f"the header is not JSON: {str(e).splitlines()[0]}") from None
        if not isinstance(header, dict):
            raise bad("the header is not a JSON object")
        metadata = header.pop("__metadata__", {})
        if not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
            raise bad("__metadata__ is not a map of strings")
        buffer_len = size - 8 - header_len
        entries = []
        for name, info in header.items():
            if not (isinstance(info, dict) and set(info) == {"dtype", "shape", "data_offsets"}):
                raise bad(f"entry {name!r:.80} is not {{dtype, shape, data_offsets}}")
            dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
            if dtype not in _SAFETENSORS_DTYPES:
                raise bad(f"{name}: unknown dtype {dtype!r:.20}")
            if not (isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape)):
                raise bad(f"{name}: shape {shape!r:.80} is not a list of sizes")
            if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                    and 0 <= offsets[0] <= offsets[1] <= buffer_len):
                raise bad(f"{name}: data_offsets {offsets!r:.80} outside the {buffer_len}-byte data")
            itemsize = 2 if dtype == "BF16" else np.dtype(_SAFETENSORS_DTYPES[dtype]).itemsize
            if int(np.prod(shape, dtype=object)) * itemsize != offsets[1] - offsets[0]:
                raise bad(f"{name}: shape {shape} of {dtype} does not fill its {offsets[1] - offsets[0]} bytes")
            entries.append((offsets[0], offsets[1], name, dtype, shape))
        end = 0
        for begin, stop, name, _, _ in sorted(entries):
            if begin != end:
                raise bad(f"{name}: its bytes {'overlap another tensor' if begin < end else 'leave a hole'}")
            end = stop
        if end != buffer_len:
            raise bad(f"the tensors cover {end} of the {buffer_len} data bytes")
        state = collections.OrderedDict()
        for begin, stop, name, dtype, shape in entries:
            f.seek(8 + header_len + begin)
            raw = f.read(stop - begin)
            if dtype == "BF16":
                array = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
            else:
                array = np.frombuffer(raw, _SAFETENSORS_DTYPES[dtype])
                array = array.astype(array.dtype.newbyteorder("="))  # native order, own writable copy
            state[name] = array.reshape(shape)
        return state
