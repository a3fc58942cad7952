r"""Reading of PyTorch `torch.save` files without PyTorch, into numpy arrays and plain values.

The two formats (facts from torch/serialization.py; no code is shared with it):

  zip (torch >= 1.6)  one top folder of any name holding `data.pkl` (the pickled object),
                      `data/<key>` (the raw bytes of each storage) and `byteorder` ('little' /
                      'big'; files of older versions lack it and are little-endian). `version`
                      and the other records are not needed: every torch.save since 1.6 writes
                      this layout.
  legacy (< 1.6)      consecutive pickles: the magic number 0x1950A86A20F9469CFC6C, the protocol
                      version 1001, a sys_info dict, the object, the list of storage keys; then
                      each storage in that order: its element count (8 bytes) and its elements,
                      both little-endian whatever the machine that wrote them.

A tensor is pickled as a call of `torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
requires_grad, backward_hooks[, metadata])`, its storage as the persistent id ('storage', <typed
storage class, e.g. torch.FloatStorage>, key, location, numel); the legacy format adds a sixth
item, an optional view (key, offset, numel) into the storage. Several tensors may view one
storage (slices, transposes, iBOT's `last_layer2` = `last_layer`).

Safety: the pickles are read by a `pickle.Unpickler` whose `find_class` hands out only the
globals of `ALLOWED_GLOBALS` (tensor rebuilders, storage classes, OrderedDict, torch.Size /
dtype / device, set, complex, bytes) and `argparse.Namespace`; any other global (os.system, a
model class, collections.Counter, ...) stops the read before anything is called. The callables
handed out are pure functions of this module in immutable wrappers, and `argparse.Namespace` is
a subclass whose attributes cannot be set, so not even a pickle's BUILD can alter them. Tensors
are placeholders while unpickling; their arrays are cut from the storages afterwards, bounds
checked.

The result is what `torch.load(weights_only=True)` gave before this reader existed, converted
as the converter needs it: tensors -> numpy arrays (float16 / bfloat16 upcast to float32, other
dtypes kept; views of one storage share its memory, as in PyTorch), dicts and OrderedDicts (whose
`_metadata` is dropped) -> dict, argparse.Namespace -> dict, lists and tuples kept, other values
as they are. PyTorch values that are not tensors come back in plain form: torch.Size -> tuple,
torch.float32 -> 'torch.float32', torch.device -> 'cuda:0', a storage saved by itself -> a 1-D
array of its elements.

Not supported, each refused with a one-line error: PyTorch's oldest (tar) format, TorchScript
archives, the tensors of PyTorch's other rebuild functions (`UNSUPPORTED_TENSORS`: uint16 /
uint32 / uint64 / float8 dtypes, quantized, sparse, nested, subclasses, ...) and conjugate or
negated views.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import collections
import io
import pickle
import zipfile
from typing import Any, Callable, NamedTuple

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
RESAVE_HINT = ("load it in PyTorch (torch.load(path, weights_only=True)) and torch.save it again "
               "with torch >= 1.6")
ALLOWED_TEXT = ("only tensors, storages, containers, numbers, strings and argparse.Namespace are "
                "allowed")

# torch dtype -> one element as the file stores it (little-endian; `_upcast` says what is returned).
DTYPES = {
    "float32": "<f4", "float64": "<f8", "float16": "<f2",
    "bfloat16": "<u2",  # numpy has no bfloat16: its bits, upcast to float32 when read
    "int64": "<i8", "int32": "<i4", "int16": "<i2", "int8": "i1", "uint8": "u1", "bool": "?",
    "complex64": "<c8", "complex128": "<c16",
}
# Typed storage class (as the persistent ids name it) -> torch dtype of its elements.
STORAGE_DTYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64", "ComplexDoubleStorage": "complex128",
    "UntypedStorage": "uint8",  # bytes
}


# PyTorch's other tensor rebuilders: tensors, but not ones this reader makes arrays of.
UNSUPPORTED_TENSORS = {
    "torch._utils._rebuild_tensor_v3": "uint16 / uint32 / uint64 / float8 tensors",
    "torch._utils._rebuild_qtensor": "quantized tensors",
    "torch._utils._rebuild_sparse_tensor": "sparse tensors",
    "torch._utils._rebuild_nested_tensor": "nested tensors",
    "torch._utils._rebuild_meta_tensor_no_storage": "meta tensors",
    "torch._utils._rebuild_wrapper_subclass": "tensor subclasses",
    "torch._tensor._rebuild_from_type_v2": "tensor subclasses or tensors with Python attributes",
    "torch._utils._rebuild_device_tensor_from_numpy": "tensors of other devices",
    "torch._utils._rebuild_device_tensor_from_cpu_tensor": "tensors of other devices",
}
PLAIN_TENSORS_HINT = ("load it in PyTorch, turn them into plain dense tensors (e.g. .float()) "
                      "and torch.save it again")


# ---------------------------------------------------------------------------- errors
class _Refused(Exception):
    """The pickle asks for a global outside the allowed ones (its dotted name)."""


class _Problem(Exception):
    """A one-line description of what is wrong with the file (without its path)."""


def _unreadable(detail: str) -> _Problem:
    return _Problem(f"not a readable PyTorch file ({detail})")


def _unsupported(what: str, hint: str = RESAVE_HINT) -> _Problem:
    return _Problem(f"{what}, which this reader does not support; {hint}")


def _printable(value: Any, limit: int = 120) -> str:
    """`value` on one line (newlines and control characters escaped), at most `limit` chars."""
    text = value if isinstance(value, str) else repr(value)
    text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[:limit] + "..."


# ---------------------------------------------------------------------------- placeholders
class _Storage(NamedTuple):
    """A storage as the pickle names it: `numel` elements of `dtype` from element `start` of the
    storage `key` (start > 0 only for legacy views)."""
    key: str
    dtype: str
    start: int
    numel: int


class _Tensor(NamedTuple):
    """A tensor rebuilt by the pickle, before its array is cut from the storage."""
    storage: _Storage
    offset: int
    shape: tuple
    stride: tuple


class _StorageClass(NamedTuple):
    """What find_class gives for torch.FloatStorage and the like: only a name to look up."""
    name: str


class _Global(NamedTuple):
    """An allowed callable global. A tuple has no __dict__ and read-only fields, so a pickle
    cannot alter it (BUILD on it fails); calling it calls `fn`."""
    name: str
    fn: Callable

    def __call__(self, *args):
        return self.fn(*args)


class _Sealed(type):
    """A metaclass whose classes refuse attribute assignment (a pickle's BUILD on the class)."""

    def __setattr__(cls, name, value):
        raise AttributeError(f"{cls.__name__} is read-only here")


class _Namespace(argparse.Namespace, metaclass=_Sealed):
    """What find_class gives for argparse.Namespace: instances are Namespaces, but the class
    cannot be altered (NEWOBJ needs a class, so an immutable wrapper would not do)."""


_PLACEHOLDERS = (_Storage, _Tensor, _StorageClass, _Global)


# ---------------------------------------------------------------------------- allowed calls
def _dims(value: Any, what: str) -> tuple:
    """A tensor's size or stride: a tuple of non-negative ints."""
    if not isinstance(value, (tuple, list)) or not all(
            isinstance(n, int) and n >= 0 for n in value):
        raise _unreadable(f"a tensor's {what} is {_printable(value)}, not non-negative integers")
    return tuple(int(n) for n in value)


def _rebuild_tensor(storage, offset, size, stride) -> _Tensor:
    """torch._utils._rebuild_tensor: a tensor viewing `storage` (checked against it later)."""
    if not isinstance(storage, _Storage):
        raise _unreadable(f"a tensor's storage is a {type(storage).__name__}, not a storage")
    if not isinstance(offset, int) or offset < 0:
        raise _unreadable(f"a tensor's storage offset is {_printable(offset)}")
    shape, strides = _dims(size, "size"), _dims(stride, "stride")
    if len(shape) != len(strides):
        raise _unreadable(f"a tensor has size {shape} but stride {strides}")
    return _Tensor(storage, int(offset), shape, strides)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, backward_hooks,
                       metadata=None) -> _Tensor:
    """torch._utils._rebuild_tensor_v2. requires_grad and hooks mean nothing to arrays; the
    metadata flags (conj / neg) would change the values, so they are refused."""
    if metadata is not None and (not isinstance(metadata, dict) or any(metadata.values())):
        raise _unsupported(f"a tensor carries the metadata {_printable(metadata)} (a conjugate "
                           "or negated view)", "load it in PyTorch, apply .resolve_conj() and "
                           ".resolve_neg() to the tensor and torch.save it again")
    return _rebuild_tensor(storage, offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None) -> _Tensor:
    """torch._utils._rebuild_parameter(_with_state): an nn.Parameter saved as itself; its
    Python attributes (`state`) are dropped, as converting it to an array did."""
    if not isinstance(data, _Tensor):
        raise _unreadable(f"a parameter holds a {type(data).__name__}, not a tensor")
    return data


def _size(dims) -> tuple:
    """torch.Size -> tuple."""
    return _dims(dims, "torch.Size")


def _device(kind, index=None) -> str:
    """torch.device -> its name, e.g. 'cuda:0'."""
    if not isinstance(kind, str) or not (index is None or isinstance(index, int)):
        raise _unreadable(f"torch.device{_printable((kind, index))} is not a device")
    return kind if index is None else f"{kind}:{index}"


def _encode(text, encoding) -> bytes:
    """_codecs.encode as protocol 2 pickles bytes: (text, 'latin1') -> bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _unreadable(f"_codecs.encode{_printable((text, encoding))} is not pickled bytes")
    return text.encode("latin1")


def _allowed_globals() -> dict:
    """(module, name) -> what find_class returns for it."""
    table = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,  # tensors
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,  # tensors of old versions
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,  # an nn.Parameter as itself
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,  # ... with attrs
        ("collections", "OrderedDict"): collections.OrderedDict,  # state_dict()
        ("torch", "Size"): _size,
        ("torch", "device"): _device,
        ("builtins", "set"): set,
        ("builtins", "complex"): complex,
        ("_codecs", "encode"): _encode,  # bytes (protocol 2 has no opcode for them)
    }
    table = {key: _Global(".".join(key), fn) for key, fn in table.items()}
    for name in STORAGE_DTYPES:  # torch.cuda.*: CUDA storages of old legacy files
        for module in ("torch", "torch.cuda"):
            table[(module, name)] = _StorageClass(name)
    table[("torch.storage", "UntypedStorage")] = _StorageClass("UntypedStorage")
    for name in DTYPES:  # torch.float32 etc., e.g. in a dict of dtypes
        table[("torch", name)] = f"torch.{name}"
    return table


ALLOWED_GLOBALS = _allowed_globals()


# ---------------------------------------------------------------------------- unpickling
def _text(value: Any, what: str) -> str:
    """A persistent id's string (bytes in pickles written by Python 2)."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        raise _unreadable(f"a storage's {what} is {_printable(value)}, not a string")
    return value


def _python3_name(module: str, name: str) -> tuple[str, str]:
    """Protocol 2 pickles spell some globals as Python 2 did (`__builtin__.set`,
    `commands.Popen`); pickle's own mapping gives their Python 3 names."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


class _Unpickler(pickle.Unpickler):
    """Unpickler that resolves only ALLOWED_GLOBALS and storage persistent ids. `declared`
    collects each storage key's (dtype, numel) as the pickle declares it."""

    def __init__(self, file, legacy: bool):
        super().__init__(file, encoding="utf-8")
        self.legacy = legacy
        self.declared: dict[str, tuple[str, int]] = {}

    def find_class(self, module, name):
        module, name = _python3_name(module, name)
        if (module, name) == ("argparse", "Namespace"):  # `args` of iBOT / DINO checkpoints
            return _Namespace
        if (module, name) in ALLOWED_GLOBALS:
            return ALLOWED_GLOBALS[(module, name)]
        dotted = f"{_printable(module)}.{_printable(name)}"
        if dotted in UNSUPPORTED_TENSORS:
            raise _unsupported(f"it holds {UNSUPPORTED_TENSORS[dotted]} ({dotted})",
                               PLAIN_TENSORS_HINT)
        raise _Refused(dotted)

    def persistent_load(self, pid):
        """('storage', storage class, key, location, numel[, view]) -> _Storage."""
        items = 6 if self.legacy else 5
        if not (isinstance(pid, tuple) and len(pid) == items and pid[0] in ("storage", b"storage")
                and isinstance(pid[1], _StorageClass)):
            raise _unreadable(f"unknown persistent id {_printable(pid)} (expected ('storage', "
                              f"<storage class>, key, location, numel{', view' * self.legacy}))")
        dtype, key, numel = STORAGE_DTYPES[pid[1].name], _text(pid[2], "key"), pid[4]
        if not isinstance(numel, int) or numel < 0:
            raise _unreadable(f"storage {key!r} declares {_printable(numel)} elements")
        if self.declared.setdefault(key, (dtype, numel)) != (dtype, numel):
            raise _unreadable(f"storage {key!r} is declared as {self.declared[key]} and as "
                              f"{(dtype, numel)}")
        view = pid[5] if self.legacy else None
        if view is None:
            return _Storage(key, dtype, 0, numel)
        # A view into the storage (written by old versions): (view key, start, numel).
        if not (isinstance(view, tuple) and len(view) == 3 and all(
                isinstance(n, int) and n >= 0 for n in view[1:]) and sum(view[1:]) <= numel):
            raise _unreadable(f"storage {key!r} of {numel} elements has the view "
                              f"{_printable(view)}")
        return _Storage(key, dtype, view[1], view[2])


def _load(unpickler: _Unpickler, what: str) -> Any:
    """One pickle from the unpickler; a malformed pickle is reported as such, naming `what`."""
    try:
        return unpickler.load()
    except (_Refused, _Problem):
        raise
    except Exception as e:  # whatever a broken pickle makes the unpickler or a rebuild raise
        raise _unreadable(f"{what} is not a valid pickle: {type(e).__name__}: "
                          f"{_printable(str(e))}") from None


# ---------------------------------------------------------------------------- arrays
def _elements(raw: np.ndarray, dtype: str, byteorder: str) -> np.ndarray:
    """Raw storage bytes -> its elements in native byte order."""
    layout = np.dtype(DTYPES[dtype])
    values = raw.view(layout.newbyteorder(">") if byteorder == "big" else layout)
    return values if values.dtype.isnative else values.astype(values.dtype.newbyteorder("="))


def _upcast(values: np.ndarray, dtype: str) -> np.ndarray:
    """float16 / bfloat16 -> float32 (exact); other dtypes unchanged."""
    if dtype == "float16":
        return values.astype(np.float32)
    if dtype == "bfloat16":  # the upper half of a float32
        bits = values.astype(np.uint32)
        bits <<= 16
        return bits.view(np.float32)
    return values


def _storage_elements(storage: _Storage, roots: dict) -> np.ndarray:
    return roots[storage.key][storage.start:storage.start + storage.numel]


def _tensor_array(t: _Tensor, roots: dict) -> np.ndarray:
    """The tensor as a strided view of its storage's elements (upcast as _upcast says)."""
    elems = _storage_elements(t.storage, roots)
    if 0 in t.shape:
        return _upcast(np.empty(t.shape, elems.dtype), t.storage.dtype)
    last = t.offset + sum((n - 1) * s for n, s in zip(t.shape, t.stride))
    if last >= len(elems):
        raise _unreadable(f"a tensor of size {t.shape}, stride {t.stride} and offset {t.offset} "
                          f"needs {last + 1} elements of storage {t.storage.key!r}, which holds "
                          f"{len(elems)}")
    view = np.lib.stride_tricks.as_strided(
        elems[t.offset:], t.shape, tuple(s * elems.itemsize for s in t.stride))
    return _upcast(view, t.storage.dtype)


def _materialize(obj: Any, roots: dict) -> Any:
    """The unpickled object with placeholders turned into arrays, dicts / OrderedDicts /
    Namespaces into dicts, lists and tuples rebuilt (element by element), the rest kept."""
    if isinstance(obj, _Tensor):
        return _tensor_array(obj, roots)
    if isinstance(obj, _Storage):  # a storage saved as itself
        return _upcast(_storage_elements(obj, roots), obj.dtype)
    if isinstance(obj, (_Global, _StorageClass, type)):
        name = obj.name if isinstance(obj, (_Global, _StorageClass)) else obj.__name__
        raise _unreadable(f"the pickle's result holds the global {name} itself, not a value")
    if isinstance(obj, argparse.Namespace):
        return {k: _materialize(v, roots) for k, v in vars(obj).items()}
    if isinstance(obj, dict):
        return {_plain_key(k): _materialize(v, roots) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_materialize(v, roots) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialize(v, roots) for v in obj)
    if isinstance(obj, set):
        return {_plain_key(v) for v in obj}
    return obj


def _plain_key(key: Any) -> Any:
    """Dict keys and set members stay as they are, so they must not be tensors."""
    if isinstance(key, _PLACEHOLDERS):
        raise _unsupported(f"a {type(key).__name__.strip('_').lower()} is used as a dict key or "
                           "set member")
    return key


def _read_exactly(f, nbytes: int, what: str) -> np.ndarray:
    """`nbytes` bytes of `f` as a fresh (writable) uint8 array."""
    buf = np.empty(nbytes, np.uint8)
    view, got = memoryview(buf), 0
    while got < nbytes:
        n = f.readinto(view[got:])
        if not n:
            raise _unreadable(f"{what} ends after {got} of its {nbytes} bytes")
        got += n
    return buf


# ---------------------------------------------------------------------------- zip format
def _archive_folder(zf: zipfile.ZipFile) -> str:
    """The top folder of the records ('name/'), found from its data.pkl."""
    names = zf.namelist()
    if any(n.count("/") == 1 and n.endswith("/constants.pkl") for n in names):
        raise _unsupported("it is a TorchScript archive (torch.jit.save), not a torch.save file",
                           "load it with torch.jit.load and torch.save its state_dict()")
    pickles = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
    if not pickles:
        raise _unreadable("a zip archive without the <folder>/data.pkl record torch.save writes")
    if len(pickles) > 1:
        raise _unreadable(f"a zip archive with several data.pkl records: {pickles[:4]}")
    return pickles[0][:-len("data.pkl")]


def _byteorder(zf: zipfile.ZipFile, folder: str) -> str:
    try:
        mark = zf.read(folder + "byteorder")
    except KeyError:  # not written by older versions, which ran on little-endian machines
        return "little"
    if mark not in (b"little", b"big"):
        raise _unreadable(f"its byteorder record is {_printable(mark)}, not 'little' or 'big'")
    return mark.decode()


def _read_zip(path: str) -> Any:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise _unreadable(f"truncated or corrupt zip archive: {_printable(str(e))}") from None
    with zf:
        folder = _archive_folder(zf)
        try:
            data = zf.read(folder + "data.pkl")
            byteorder = _byteorder(zf, folder)
            unpickler = _Unpickler(io.BytesIO(data), legacy=False)
            obj = _load(unpickler, f"{folder}data.pkl")
            roots = {}
            for key, (dtype, numel) in unpickler.declared.items():
                roots[key] = _elements(_zip_storage(zf, folder, key, dtype, numel), dtype,
                                       byteorder)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:  # e.g. a bad CRC
            raise _unreadable(f"corrupt zip archive: {_printable(str(e))}") from None
        return _materialize(obj, roots)


def _zip_storage(zf: zipfile.ZipFile, folder: str, key: str, dtype: str, numel: int):
    name = f"{folder}data/{key}"
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise _unreadable(f"storage {key!r} ({name}) is not in the archive") from None
    nbytes = numel * np.dtype(DTYPES[dtype]).itemsize
    if info.file_size != nbytes:
        raise _unreadable(f"storage {key!r} ({name}) holds {info.file_size} bytes, the pickle "
                          f"declares {numel} {dtype} elements ({nbytes} bytes)")
    with zf.open(info) as f:
        return _read_exactly(f, nbytes, name)


# ---------------------------------------------------------------------------- legacy format
def _read_legacy(path: str) -> Any:
    with open(path, "rb") as f:
        head = f.read(512)
        f.seek(0)
        if head[257:262] == b"ustar":
            raise _unsupported("it is in PyTorch's oldest (tar) format")
        if not head.startswith(b"\x80"):
            raise _unreadable("neither a zip archive (torch >= 1.6) nor PyTorch's legacy format")
        magic = _load(_Unpickler(f, legacy=True), "the magic number")
        if type(magic) is not int or magic != LEGACY_MAGIC:
            raise _unreadable(f"a pickle, but its first value {_printable(magic, 40)} is not "
                              "PyTorch's magic number")
        version = _load(_Unpickler(f, legacy=True), "the protocol version")
        if type(version) is not int or version != LEGACY_PROTOCOL:
            raise _unreadable(f"legacy protocol version {_printable(version, 40)}, not "
                              f"{LEGACY_PROTOCOL}")
        if not isinstance(_load(_Unpickler(f, legacy=True), "sys_info"), dict):
            raise _unreadable("its sys_info record is not a dict")
        unpickler = _Unpickler(f, legacy=True)
        obj = _load(unpickler, "the object")
        keys = _load(_Unpickler(f, legacy=True), "the storage key list")
        if not isinstance(keys, list):
            raise _unreadable(f"its storage key list is a {type(keys).__name__}")
        roots = {}
        for key in (_text(k, "key") for k in keys):
            if key not in unpickler.declared:
                raise _unreadable(f"storage {key!r} is listed but no tensor uses it")
            dtype, numel = unpickler.declared[key]
            count = int.from_bytes(_read_exactly(f, 8, f"storage {key!r}"), "little", signed=True)
            if count != numel:
                raise _unreadable(f"storage {key!r} holds {count} elements, the pickle declares "
                                  f"{numel}")
            raw = _read_exactly(f, numel * np.dtype(DTYPES[dtype]).itemsize,
                                f"storage {key!r}")
            roots[key] = _elements(raw, dtype, "little")
    missing = sorted(set(unpickler.declared) - set(roots))
    if missing:
        raise _unreadable(f"storages {missing[:4]} are used but not in the file")
    return _materialize(obj, roots)


# ---------------------------------------------------------------------------- entry point
def read_pth(path: str) -> dict:
    """The dict a torch.save file holds (a state dict, or a checkpoint with nested dicts), with
    numpy arrays for its tensors. Raises ValueError (one line, naming the file) for refused,
    unsupported or corrupt content; nothing from the file is ever executed."""
    try:
        with open(path, "rb") as f:
            is_zip = f.read(4) in (b"PK\x03\x04", b"PK\x05\x06")  # a file or an empty archive
        obj = _read_zip(path) if is_zip else _read_legacy(path)
    except _Refused as e:
        raise ValueError(f"{path}: refused: the pickle asks for {e} ({ALLOWED_TEXT}); nothing "
                         "was executed") from None
    except _Problem as e:
        raise ValueError(f"{path}: {e}") from None
    except RecursionError:
        raise ValueError(f"{path}: not a readable PyTorch file (nested too deeply, or "
                         "cyclic)") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a dict (a state dict or a "
                         "checkpoint)")
    return obj
