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

Bounded work (the limits below; docs/safety.md): tensors are declared while unpickling and checked
against their storages' declared sizes (offset and strides non-negative, the highest element inside)
before any byte is read; a zip entry's inflated size is checked before it is opened; the loaded object
is walked once without recursion and refused if a container contains itself, nests deeper than
MAX_NESTING or expands to more than MAX_ITEMS items (and before unpickling, its opcodes are checked for
objects nested deeper than MAX_OPCODE_NESTING: the C unpickler recurses on some); then the tensors' total bytes are checked against
their storages' before they are materialised. Every refusal is one line naming the file and the reason.
"""
import collections
import hashlib
import itertools
import json
import math
import pickle
import pickletools
import struct
import zipfile
from pathlib import Path

import numpy as np

from jspade.errors import JspadeError


class CheckpointError(JspadeError, ValueError):
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


# --- limits -----------------------------------------------------------------------------------------
# Everything a file can make the reader (or a consumer walking its result) do is bounded by these,
# whatever Python's recursion limit (Jittor raises it to 10^6, where a deep walk overflows the C stack).
MAX_NESTING = 100                # containers inside containers (our files: under 20)
MAX_ITEMS = 10_000_000           # items of the loaded object, shared parts counted each time they are
                                 # reached (what a walk over the result visits; a checkpoint: ~10^4)
MAX_TENSOR_DIMS = 64
MAX_DIM_SIZE = 1 << 48           # one size entry of a tensor (even of an empty one)
TENSOR_BUDGET_FLOOR = 64 << 20   # bytes the tensors may take: this, or twice their storages' bytes
TENSOR_BUDGET_FACTOR = 2         # (views repeating a storage's elements, as stride 0 does)
ZIP_INFLATION_FLOOR = 256 << 20  # bytes a zip's entries may inflate to: this, or 16x the archive
MAX_ZIP_INFLATION = 16           # (torch stores its entries uncompressed: 1x)
MAX_OPCODE_NESTING = 4 * MAX_NESTING  # objects built from objects, counted on the pickle's opcodes before
                                      # unpickling (a tensor adds ~3 levels: its reduce and size tuples)


class _Refused(pickle.UnpicklingError):
    """A file that asks for more than a weights file may (reported as 'refused: <reason>')."""


def _kind(value):
    """A value for a message: small ints as themselves, anything else by its type (never a repr,
    which could recurse through a hostile structure)."""
    if type(value) is int and abs(value) < 1 << 64:
        return str(value)
    return f"a {type(value).__name__}"


# --- the whitelist ----------------------------------------------------------------------------------
# Kinds of numpy array a file may hold: numbers, booleans, strings. Object arrays (pointers, and
# Python objects a consumer would compute with), datetimes and raw/structured records are refused.
_ARRAY_KINDS = set("biufcSU")


def _checked_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise _Refused("an array of Python objects (object dtype)")
    if dtype.kind not in _ARRAY_KINDS:
        raise _Refused(f"an array of dtype {dtype.str}; only numbers, booleans and strings are accepted")
    return dtype


class _NdarrayClass:
    """What a pickle gets for `numpy.ndarray`: only an argument of `_reconstruct` (as numpy's own pickles
    use it); calling it (numpy.ndarray(shape, dtype, buffer, offset, strides)) is refused."""

    def __new__(cls, *args, **kwargs):
        raise _Refused("a call of numpy.ndarray (only numpy's own array pickles are accepted)")


def _ndarray_reconstruct(cls, shape, dtype):
    """numpy's pickles build an empty array and fill it with __setstate__ (whose data must match its
    shape); the empty array never holds uninitialised memory, whatever shape the file gives here."""
    if cls is not _NdarrayClass:
        raise pickle.UnpicklingError("an array of a class other than numpy.ndarray")
    return np.ndarray.__new__(np.ndarray, (0,), _checked_dtype(dtype))


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
    ("numpy", "ndarray"): _NdarrayClass,
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
        self.itemsize = 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize


def _as_dtype_array(raw, storage_type):
    if storage_type.dtype == "bfloat16":  # bfloat16 = the high half of a float32
        return (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
    array = np.frombuffer(raw, np.dtype(storage_type.dtype).newbyteorder("<"))
    return array.astype(array.dtype.newbyteorder("="), copy=False)


# --- tensors: declared while unpickling, checked, then materialised --------------------------------
class _PendingStorage:
    """A storage as the pickle declares it (type, key, element count); its bytes are read only after
    the whole object has been checked."""

    def __init__(self, storage_type, key, numel):
        self.storage_type, self.key, self.numel, self.array = storage_type, key, numel, None

    @property
    def nbytes(self):
        return self.numel * self.storage_type.itemsize


class _PendingTensor:
    """A strided view of a pending storage, already checked to lie inside it."""

    def __init__(self, storage, offset, size, stride, numel):
        self.storage, self.offset, self.size, self.stride, self.numel = storage, offset, size, stride, numel

    @property
    def nbytes(self):
        return self.numel * self.storage.storage_type.itemsize


def _counts(values, what):
    """A tensor's size or stride: a short sequence of non-negative ints."""
    if not isinstance(values, (tuple, list)):
        raise _Refused(f"a tensor whose {what} is {_kind(values)}, not a sequence")
    if len(values) > MAX_TENSOR_DIMS:
        raise _Refused(f"a tensor with {len(values)} dimensions (at most {MAX_TENSOR_DIMS})")
    for n in values:
        if type(n) is not int or n < 0:
            raise _Refused(f"a tensor {what} entry {_kind(n)} (must be a non-negative integer)")
        if n > MAX_DIM_SIZE:
            raise _Refused(f"a tensor {what} entry {n} (at most 2^48)")
    return tuple(values)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    """`torch._utils._rebuild_tensor_v2`: checked against the storage's declared size before any
    memory is touched (offset and strides non-negative, the highest element inside the storage)."""
    if not isinstance(storage, _PendingStorage):
        raise pickle.UnpicklingError("a tensor without a storage")
    size, stride = _counts(size, "size"), _counts(stride, "stride")
    if len(stride) != len(size):
        raise _Refused(f"a tensor with {len(size)} sizes but {len(stride)} strides")
    if type(storage_offset) is not int or storage_offset < 0:
        raise _Refused(f"a tensor with storage offset {_kind(storage_offset)} (must be a non-negative integer)")
    numel = math.prod(size)
    highest = storage_offset + sum((n - 1) * s for n, s in zip(size, stride)) if numel else storage_offset - 1
    if highest >= storage.numel or storage_offset > storage.numel:
        raise _Refused(f"a tensor reaching past its storage {storage.key} (element {highest}, the storage "
                       f"holds {storage.numel})")
    return _PendingTensor(storage, storage_offset, size, stride, numel)


def _materialise(tensor):
    """The tensor's elements as a dense array of its own (the storage buffer is shared and read-only)."""
    storage = tensor.storage.array
    if not tensor.size:
        return storage[tensor.offset].copy()
    if tensor.numel == 0:
        return np.zeros(tensor.size, storage.dtype)
    strides = tuple(s * storage.itemsize if n > 1 else 0 for n, s in zip(tensor.size, tensor.stride))
    return np.array(np.lib.stride_tricks.as_strided(storage[tensor.offset:], shape=tensor.size, strides=strides))


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
        self.storages = storages  # (storage type, key, numel) -> _PendingStorage, for PyTorch files

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
                and isinstance(pid[1], _StorageType) and type(pid[2]) in (str, int)):
            raise pickle.UnpicklingError(f"an unknown persistent id ({_kind(pid)})")
        if type(pid[4]) is not int or pid[4] < 0:
            raise _Refused(f"storage {pid[2]} declares {_kind(pid[4])} elements")
        return self.storages(pid[1], str(pid[2]), pid[4])


def _check_opcode_nesting(file):
    """Refuse a pickle whose objects nest deeper than MAX_OPCODE_NESTING, from its opcodes alone (one
    linear pass, nothing built; the file is read back to where it was). The C unpickler itself recurses
    on some nested objects (hashing a dict key that is a tuple nested 10^6 deep overflows its stack and
    kills the process), so this runs before it. Each stack entry is a cell [depth] shared with the memo,
    so items appended to a memoised container after it was stored still count."""
    start = file.tell()
    stack, marks, memo = [], [], {}
    for op, arg, _ in pickletools.genops(file):
        before, after = op.stack_before, op.stack_after
        if op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = stack[-1]
            continue
        if op.name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
            continue
        if op.name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo[arg])
            continue
        if op.name == "MARK":
            marks.append(len(stack))
            continue
        if op.name == "DUP":
            stack.append(stack[-1])
            continue
        items = []
        if pickletools.markobject in before:  # the items since the last MARK, then those below it
            mark = marks.pop()
            items, stack[mark:] = stack[mark:], []
            below = before.index(pickletools.markobject)
        else:
            below = len(before)
        held = stack[len(stack) - below:] if below else []
        del stack[len(stack) - below:]
        if not after:
            continue
        if op.name in ("APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"):
            target, items = held[0], held[1:] + items  # the container grows in place: its memo entry too
        else:
            target, items = [0], held + items
        target[0] = max(target[0], 1 + max((cell[0] for cell in items), default=-1))
        stack.append(target)
        if target[0] > MAX_OPCODE_NESTING:
            raise _Refused(f"objects nested more than {MAX_OPCODE_NESTING} deep")
    file.seek(start)


def _unpickle(path, file, **kwargs):
    try:
        _check_opcode_nesting(file)
        return _SafeUnpickler(file, **kwargs).load()
    except UnsafeFileError as e:
        raise UnsafeFileError(
            f"{path}: refused: it asks to run {e}, which a weights file has no need of (only arrays, "
            "tensors, plain containers and scalars are accepted); nothing in it was run") from None
    except _Refused as e:
        raise CheckpointError(f"{path}: refused: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, struct.error, MemoryError, OverflowError, RecursionError, zipfile.BadZipFile) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, EOFError):
            reason = "the file ends early (truncated)"
        raise CheckpointError(f"{path}: truncated or not a checkpoint ({reason})") from None


# --- the loaded object: no cycles, bounded nesting and size ------------------------------------------
def _children(obj):
    """An iterator over what a container holds (dict keys and values), None for anything else."""
    if isinstance(obj, dict):
        return itertools.chain.from_iterable(obj.items())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return iter(obj)
    if isinstance(obj, ScriptObject):
        return iter((obj.attributes,) if hasattr(obj, "attributes") else ())
    return None


_END = object()


def check_structure(path, root):
    """Refuse (CheckpointError naming `path`) an object with a container that contains itself, containers nested deeper than
    MAX_NESTING, or more than MAX_ITEMS items counting shared parts each time they are reached; walked
    without recursion, each container once. Returns the pending tensors and storages in it."""
    pending = {}
    done = {}      # id -> item count of a container walked already (shared parts are walked once)
    on_path = set()
    stack = []     # [container, its children, its item count so far]

    def refuse(reason):
        return CheckpointError(f"{path}: refused: {reason}")

    children = _children(root)
    if children is None:
        if isinstance(root, (_PendingTensor, _PendingStorage)):
            pending[id(root)] = root
        return list(pending.values())
    stack.append([root, children, 1])
    on_path.add(id(root))
    while stack:
        frame = stack[-1]
        child = next(frame[1], _END)
        if child is _END:
            stack.pop()
            on_path.discard(id(frame[0]))
            done[id(frame[0])] = frame[2]
            if stack:
                stack[-1][2] += frame[2]
                if stack[-1][2] > MAX_ITEMS:
                    raise refuse(f"it holds more than {MAX_ITEMS} items (counting shared parts each time)")
            continue
        if isinstance(child, (_PendingTensor, _PendingStorage)):
            pending[id(child)] = child
        grandchildren = _children(child)
        if grandchildren is None:
            frame[2] += 1
        elif id(child) in on_path:
            raise refuse(f"a {type(child).__name__} that contains itself")
        elif id(child) in done:
            frame[2] += done[id(child)]
        elif len(stack) >= MAX_NESTING:
            raise refuse(f"containers nested more than {MAX_NESTING} deep")
        else:
            on_path.add(id(child))
            stack.append([child, grandchildren, 1])
            continue
        if frame[2] > MAX_ITEMS:
            raise refuse(f"it holds more than {MAX_ITEMS} items (counting shared parts each time)")
    return list(pending.values())



MAX_TENSORS = 100_000  # named tensors (flatten_tensors) in one archive (the FID Inception: 376; CLIP ViT-L/14: ~400)


def flatten_tensors(obj, prefix="", source="the archive"):
    """{dotted name: array} for every array inside dicts, lists and TorchScript objects. `obj` may come
    from any file: the safe reader's structure check (no container inside itself, nesting and items
    bounded) runs first, so the walk below is bounded too; more than MAX_TENSORS names are refused."""
    check_structure(source, obj)
    tensors = {}

    def walk(value, name):
        if isinstance(value, (np.ndarray, np.generic)):  # a 0-d tensor may come back as a numpy scalar
            if len(tensors) >= MAX_TENSORS:
                raise CheckpointError(f"{source}: refused: more than {MAX_TENSORS} tensors")
            tensors[name] = np.asarray(value)
            return
        container = getattr(value, "attributes", {}) if isinstance(value, ScriptObject) else value
        if isinstance(container, dict):
            items = container.items()
        elif isinstance(container, (list, tuple)):
            items = enumerate(container)
        else:
            return
        for key, item in items:
            walk(item, f"{name}.{key}" if name else str(key))

    walk(obj, prefix)
    return tensors


def _check_tensor_budget(path, pending):
    """The tensors' bytes within twice their storages' (or TENSOR_BUDGET_FLOOR): an 8 KB file cannot
    declare a 1 GiB tensor of one repeated element (stride 0)."""
    storages = {id(p): p for p in pending if isinstance(p, _PendingStorage)}
    storages.update({id(p.storage): p.storage for p in pending if isinstance(p, _PendingTensor)})
    stored = sum(s.nbytes for s in storages.values())
    wanted = sum(p.nbytes for p in pending)
    budget = max(TENSOR_BUDGET_FLOOR, TENSOR_BUDGET_FACTOR * stored)
    if wanted > budget:
        raise CheckpointError(f"{path}: refused: its tensors would take {wanted} bytes, more than the "
                              f"{budget} allowed for storages of {stored} bytes")
    return list(storages.values())


def _resolve(path, obj, memo):
    """Replace pending tensors and storages by arrays, in place through dicts and lists (tuples are
    rebuilt; each shared container once). Recursion is bounded by MAX_NESTING, checked before."""
    if isinstance(obj, _PendingTensor):
        return _materialise(obj)
    if isinstance(obj, _PendingStorage):
        return obj.array
    if _children(obj) is None:
        return obj
    if id(obj) in memo:
        return memo[id(obj)]
    memo[id(obj)] = obj
    if isinstance(obj, dict):
        for k in obj:
            if isinstance(k, (_PendingTensor, _PendingStorage)):
                raise CheckpointError(f"{path}: refused: a tensor used as a dict key")
            obj[k] = _resolve(path, obj[k], memo)
    elif isinstance(obj, list):
        obj[:] = [_resolve(path, v, memo) for v in obj]
    elif isinstance(obj, tuple):
        memo[id(obj)] = tuple(_resolve(path, v, memo) for v in obj)
    elif isinstance(obj, (set, frozenset)):
        if any(isinstance(v, (_PendingTensor, _PendingStorage)) for v in obj):
            raise CheckpointError(f"{path}: refused: a tensor inside a set")
    elif isinstance(obj, ScriptObject):
        _resolve(path, obj.attributes, memo)
    return memo[id(obj)]


def _checked(path, obj, read_storage=None):
    """`obj` once its structure is checked; with tensors: their bytes within budget, each storage's
    bytes read by `read_storage(storage)` (returns bytes) only then, tensors materialised."""
    pending = check_structure(path, obj)
    if not pending:
        return obj
    for storage in _check_tensor_budget(path, pending):
        if storage.array is None:
            storage.array = _as_dtype_array(read_storage(storage), storage.storage_type)
        if storage.array.size != storage.numel:
            raise CheckpointError(f"{path}: truncated or not a checkpoint (storage {storage.key}: "
                                  f"{storage.array.size} elements, expected {storage.numel})")
    return _resolve(path, obj, {})


def _load_torch_zip(path):
    """A PyTorch zip file. Every entry's inflated size (declared in the zip's directory) is checked
    before it is opened: a storage's must be what the pickle declares, and all of them together
    within ZIP_INFLATION_FLOOR or MAX_ZIP_INFLATION times the archive's size."""
    inflation_budget = max(ZIP_INFLATION_FLOOR, MAX_ZIP_INFLATION * path.stat().st_size)
    inflated = [0]

    def take(info):
        inflated[0] += info.file_size
        if inflated[0] > inflation_budget:
            raise _Refused(f"its entries would inflate to more than {inflation_budget} bytes ({info.filename} "
                           f"declares {info.file_size}; a {path.stat().st_size}-byte archive may inflate to "
                           f"at most max({ZIP_INFLATION_FLOOR}, {MAX_ZIP_INFLATION}x its size))")

    with zipfile.ZipFile(path) as archive:
        prefix = next((n.split("/")[0] for n in archive.namelist()
                       if n.count("/") == 1 and n.endswith("/data.pkl")), None)
        if prefix is None:
            raise CheckpointError(f"{path}: a zip file without <folder>/data.pkl, not a PyTorch file")
        storages = {}

        def storage(storage_type, key, numel):
            if key in storages:  # several tensors may share one storage
                known = storages[key]
                if known.numel != numel or known.storage_type.name != storage_type.name:
                    raise _Refused(f"storage {key} is declared twice, differently")
                return known
            try:
                info = archive.getinfo(f"{prefix}/data/{key}")
            except KeyError:
                raise pickle.UnpicklingError(f"storage {key} is missing from the archive") from None
            declared = numel * storage_type.itemsize
            if info.file_size != declared:
                raise _Refused(f"storage {key}: the archive holds {info.file_size} bytes, the pickle declares "
                               f"{numel} elements ({declared} bytes)")
            take(info)
            storages[key] = _PendingStorage(storage_type, key, numel)
            return storages[key]

        try:
            take(archive.getinfo(f"{prefix}/data.pkl"))
        except _Refused as e:
            raise CheckpointError(f"{path}: refused: {e}") from None
        with archive.open(f"{prefix}/data.pkl") as file:
            obj = _unpickle(path, file, torch=True, storages=storage)
        return _checked(path, obj, lambda st: archive.read(f"{prefix}/data/{st.key}"))


def _load_legacy_torch(path, f):
    """The rest of a PyTorch < 1.6 file after its magic number."""
    _unpickle(path, f)  # protocol version
    _unpickle(path, f)  # system info (byte order, type sizes)
    file_size = path.stat().st_size
    pending = {}

    def storage(storage_type, key, numel):
        if key in pending:
            if pending[key].numel != numel or pending[key].storage_type.name != storage_type.name:
                raise _Refused(f"storage {key} is declared twice, differently")
            return pending[key]
        pending[key] = _PendingStorage(storage_type, key, numel)
        declared = sum(st.nbytes for st in pending.values())
        if declared > file_size:  # the bytes of every storage follow in the file itself
            raise _Refused(f"its storages declare {declared} bytes, more than the whole {file_size}-byte file")
        return pending[key]

    obj = _unpickle(path, f, torch=True, storages=storage)
    check_structure(path, obj)  # before the storages' bytes are read
    keys = _unpickle(path, f)
    if not (isinstance(keys, list) and all(type(key) in (str, int) for key in keys)):
        raise CheckpointError(f"{path}: truncated or not a checkpoint (no storage key list)")
    for key in keys:
        head = f.read(8)
        if len(head) != 8 or str(key) not in pending:
            raise CheckpointError(f"{path}: truncated or not a checkpoint (storage {_kind(key)})")
        (numel,) = struct.unpack("<q", head)
        st = pending[str(key)]
        if numel != st.numel:
            raise CheckpointError(f"{path}: truncated or not a checkpoint (storage {key}: {numel} elements, "
                                  f"the pickle declares {st.numel})")
        raw = f.read(st.nbytes)  # within the file's size, checked while unpickling
        if len(raw) != st.nbytes:
            raise CheckpointError(f"{path}: truncated or not a checkpoint (storage {key} is short)")
        st.array = _as_dtype_array(raw, st.storage_type)
    if any(st.array is None for st in pending.values()):
        raise CheckpointError(f"{path}: truncated or not a checkpoint (a storage has no data)")
    return _checked(path, obj)


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
            return _checked(path, obj)
    except zipfile.BadZipFile as e:
        raise CheckpointError(f"{path}: a damaged zip file ({e})") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror or e})") from None


# --- JSON nesting, measured without parsing ---------------------------------------------------------
JSON_SCAN_CHUNK = 1 << 20  # bytes scanned at a time (bounds the scan's memory)


def json_depth(data):
    """How deeply the arrays/objects of a JSON text (bytes) nest, measured in one linear pass without
    parsing it: brackets inside strings do not count (a quote is escaped when an odd run of
    backslashes precedes it). Exact for valid JSON and for any prefix of it, which is as far as a
    parser goes before it fails; so `json.loads`, which recurses once per level, can be refused
    deep input first."""
    data = np.frombuffer(data, np.uint8)
    depth = deepest = 0
    in_string = False      # at the start of the chunk
    odd_backslashes = False  # the bytes before the chunk end in an odd run of backslashes
    for start in range(0, data.size, JSON_SCAN_CHUNK):
        chunk = data[start:start + JSON_SCAN_CHUNK]
        index = np.arange(chunk.size, dtype=np.int32)  # a chunk's positions fit int32
        backslash = chunk == ord("\\")
        last_other = np.maximum.accumulate(np.where(backslash, -1, index))
        # odd[i]: the run of backslashes ending at i is odd (a run reaching the chunk's start
        # continues the previous chunk's)
        odd = ((index - last_other) & 1).astype(bool) ^ ((last_other < 0) & odd_backslashes)
        escaped = np.empty(chunk.size, bool)
        escaped[0] = odd_backslashes
        escaped[1:] = odd[:-1]
        quote = (chunk == ord('"')) & ~escaped
        quotes_before = np.cumsum(quote, dtype=np.int32) - quote
        outside = ((quotes_before & 1) == 0) != in_string
        steps = (((chunk == ord("[")) | (chunk == ord("{"))) & outside).astype(np.int32)
        steps -= ((chunk == ord("]")) | (chunk == ord("}"))) & outside
        levels = depth + np.cumsum(steps, dtype=np.int64)
        deepest = max(deepest, int(levels.max()))
        depth = int(levels[-1])
        in_string ^= bool(int(quotes_before[-1] + quote[-1]) & 1)
        odd_backslashes = bool(backslash[-1] and odd[-1])
    return deepest


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
        text = f.read(header_len)
        if json_depth(text) > MAX_NESTING:  # json.loads recurses once per level
            raise bad(f"the header nests more than {MAX_NESTING} deep")
        try:
            header = json.loads(text.decode("utf-8"))
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
            if not (isinstance(shape, list) and len(shape) <= MAX_TENSOR_DIMS
                    and all(type(n) is int and 0 <= n <= MAX_DIM_SIZE for n in shape)):
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
