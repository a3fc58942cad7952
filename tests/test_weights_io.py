"""Our reader of PyTorch's `torch.save` format (personvit_jax/tools/pth_reader.py, used by
`read_weights` for .pth files) against PyTorch itself: every golden .pth fixture and files
torch.save writes here (zip and legacy formats, all supported dtypes, non-contiguous views,
tensors sharing a storage, state_dict()'s `_metadata`, checkpoint values) come back exactly as
`torch.load(weights_only=True)` + the conversion read_weights used to do gives them (structure,
types, dtypes, bits); those comparisons are skipped without PyTorch. Hostile and broken files,
most of them written by hand (no PyTorch needed), are refused with one line naming the file
(and, for globals, the global) without executing anything."""

import argparse
import collections
import io
import os
import struct
import subprocess
import tarfile
import zipfile
from typing import Any, NamedTuple

import numpy as np
import pytest

from conftest import WEIGHT_FIXTURES, block_torch, write_torch_zip
from personvit_jax.tools import pth_reader
from personvit_jax.tools.weights_io import read_weights

PTH_FIXTURES = sorted(f for f in os.listdir(WEIGHT_FIXTURES) if f.endswith(".pth"))
FORMATS = ["zip", "legacy"]


# ---------------------------------------------------------------------------- the reference
def _to_numpy(obj: Any, torch) -> Any:
    """read_weights' conversion of what torch.load returned, before our reader: tensors -> numpy
    (bfloat16 / float16 upcast to float32), Namespace -> dict, recursively."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        if t.is_floating_point() and t.dtype != torch.float64:
            t = t.float()
        return t.numpy()
    if isinstance(obj, argparse.Namespace):
        return {k: _to_numpy(v, torch) for k, v in vars(obj).items()}
    if isinstance(obj, dict):
        return {k: _to_numpy(v, torch) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_numpy(v, torch) for v in obj)
    return obj


def torch_reference(path) -> Any:
    """What read_weights returned for a .pth before our reader (PyTorch's weights-only
    unpickler with argparse.Namespace allowed)."""
    torch = pytest.importorskip("torch", reason="the PyTorch reference needs "
                                "requirements-convert.txt")
    with torch.serialization.safe_globals([argparse.Namespace]):
        obj = torch.load(path, map_location="cpu", weights_only=True)
    return _to_numpy(obj, torch)


def assert_same(ours: Any, ref: Any, where: str = "result") -> None:
    """Same structure and types, arrays of the same dtype and shape equal bit for bit."""
    assert type(ours) is type(ref), f"{where}: {type(ours).__name__} vs {type(ref).__name__}"
    if isinstance(ref, np.ndarray):
        assert (ours.dtype, ours.shape) == (ref.dtype, ref.shape), (
            f"{where}: {ours.dtype}{ours.shape} vs {ref.dtype}{ref.shape}")
        assert ours.tobytes() == ref.tobytes(), f"{where}: values differ"
    elif isinstance(ref, dict):
        assert list(ours) == list(ref), f"{where}: keys {list(ours)} vs {list(ref)}"
        for k in ref:
            assert_same(ours[k], ref[k], f"{where}[{k!r}]")
    elif isinstance(ref, (list, tuple)):
        assert len(ours) == len(ref), f"{where}: length {len(ours)} vs {len(ref)}"
        for i, (a, b) in enumerate(zip(ours, ref)):
            assert_same(a, b, f"{where}[{i}]")
    else:
        assert ours == ref, f"{where}: {ours!r} vs {ref!r}"


def saved(tmp_path, obj, fmt: str = "zip", name: str = "saved.pth") -> str:
    """`obj` torch.save'd in `fmt` (zip: torch >= 1.6; legacy: the format before it)."""
    torch = pytest.importorskip("torch", reason="writing with torch.save needs "
                                "requirements-convert.txt")
    path = str(tmp_path / name)
    torch.save(obj, path, _use_new_zipfile_serialization=(fmt == "zip"))
    return path


# ---------------------------------------------------------------------------- pickles by hand
class G(NamedTuple):
    """A global (GLOBAL opcode)."""
    module: str
    name: str


class Call(NamedTuple):
    """fn(*args) (REDUCE)."""
    fn: Any
    args: tuple


class Pid(NamedTuple):
    """A persistent id (BINPERSID)."""
    value: Any


class Build(NamedTuple):
    """obj after BUILD with `state`."""
    obj: Any
    state: Any


def opcodes(node: Any) -> bytes:
    """Protocol 2 opcodes that push `node` (plain values, containers, the nodes above)."""
    if isinstance(node, G):
        return b"c" + f"{node.module}\n{node.name}\n".encode()
    if isinstance(node, Call):
        return opcodes(node.fn) + opcodes(tuple(node.args)) + b"R"
    if isinstance(node, Pid):
        return opcodes(node.value) + b"Q"
    if isinstance(node, Build):
        return opcodes(node.obj) + opcodes(node.state) + b"b"
    if node is None:
        return b"N"
    if isinstance(node, bool):
        return b"\x88" if node else b"\x89"
    if isinstance(node, int):
        n = (node.bit_length() + 8) // 8
        return b"\x8a" + bytes([n]) + node.to_bytes(n, "little", signed=True)
    if isinstance(node, float):
        return b"G" + struct.pack(">d", node)
    if isinstance(node, str):
        raw = node.encode()
        return b"X" + len(raw).to_bytes(4, "little") + raw
    if isinstance(node, tuple):
        return b"(" + b"".join(map(opcodes, node)) + b"t"
    if isinstance(node, list):
        return b"](" + b"".join(map(opcodes, node)) + b"e"
    if isinstance(node, dict):
        return b"}(" + b"".join(opcodes(k) + opcodes(v) for k, v in node.items()) + b"u"
    raise TypeError(node)


def pickled(node: Any) -> bytes:
    return b"\x80\x02" + opcodes(node) + b"."


def tensor(key: str, numel: int, size, stride, offset: int = 0, storage: str = "FloatStorage",
           **pid_changes) -> Call:
    """A tensor as torch.save pickles it: _rebuild_tensor_v2 of a storage persistent id."""
    pid = dict(kind="storage", cls=G("torch", storage), key=key, location="cpu", numel=numel)
    pid.update(pid_changes)
    return Call(G("torch._utils", "_rebuild_tensor_v2"),
                (Pid(tuple(pid.values())), offset, tuple(size), tuple(stride), False,
                 Call(G("collections", "OrderedDict"), ())))


def assert_one_line_error(path, *fragments) -> str:
    """read_weights(path) raises a one-line ValueError starting with the path and containing
    every fragment; returns the message."""
    with pytest.raises(ValueError) as info:
        read_weights(str(path))
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith(f"{path}: "), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


# ---------------------------------------------------------------------------- golden fixtures
@pytest.mark.parametrize("name", PTH_FIXTURES)
def test_fixtures_equal_torch(name):
    path = os.path.join(WEIGHT_FIXTURES, name)
    assert_same(read_weights(path), torch_reference(path))


def test_fixture_contents_without_torch(monkeypatch):
    """The iBOT checkpoint read with `import torch` failing: its args Namespace as a dict, the
    optimizer state with int keys and a 0-d step, the fp16 scaler, and the shared head."""
    block_torch(monkeypatch)
    ckpt = read_weights(os.path.join(WEIGHT_FIXTURES, "ibot.pth"))
    assert list(ckpt) == ["student", "teacher", "optimizer", "epoch", "args", "fp16_scaler",
                          "ibot_loss"]
    args = ckpt["args"]
    assert type(args) is dict and args["arch"] == "vit_small" and args["shared_head"] is True
    assert args["pred_ratio"] == [0.0, 0.3] and args["global_crops_scale"] == (0.4, 1.0)
    assert ckpt["epoch"] == 3 and ckpt["fp16_scaler"]["_growth_tracker"] == 7
    step = ckpt["optimizer"]["state"][0]["step"]
    assert step.shape == () and step.dtype == np.float32 and step == 3.0
    teacher = ckpt["teacher"]
    assert type(teacher) is dict and all(isinstance(v, np.ndarray) for v in teacher.values())
    assert teacher["backbone.pos_embed"].shape == (1, 65, 32)
    for part in ("weight_g", "weight_v"):  # last_layer2 is last_layer under a second name
        np.testing.assert_array_equal(teacher[f"head.last_layer2.{part}"],
                                      teacher[f"head.last_layer.{part}"])


# ---------------------------------------------------------------------------- torch.save files
def _dtype_tensors(torch) -> dict:
    g = torch.Generator().manual_seed(0)
    special = torch.tensor([0.0, -0.0, 1e-8, -2.5, 65504.0, float("inf"), -float("inf")])
    return {
        "float32": torch.randn(3, 4, generator=g),
        "float64": torch.randn(5, generator=g, dtype=torch.float64),
        "float16": torch.cat([torch.randn(6, generator=g), special]).half(),
        "bfloat16": torch.cat([torch.randn(6, generator=g), special]).bfloat16(),
        "int64": torch.tensor([-(2 ** 62), -1, 0, 2 ** 40]),
        "int32": torch.tensor([-(2 ** 31), 7], dtype=torch.int32),
        "int16": torch.tensor([-300, 300], dtype=torch.int16),
        "int8": torch.tensor([-128, 127], dtype=torch.int8),
        "uint8": torch.tensor([0, 255], dtype=torch.uint8),
        "bool": torch.tensor([[True, False], [False, True]]),
        "complex64": torch.tensor([1 + 2j, -3j], dtype=torch.complex64),
        "complex128": torch.tensor([0.5 - 1j], dtype=torch.complex128),
    }


@pytest.mark.parametrize("fmt", FORMATS)
def test_dtypes_equal_torch(fmt, tmp_path):
    """float16 / bfloat16 upcast to float32 (exactly), every other dtype kept."""
    torch = pytest.importorskip("torch", reason="writing with torch.save needs PyTorch")
    tensors = _dtype_tensors(torch)
    path = saved(tmp_path, tensors, fmt)
    ours = read_weights(path)
    assert_same(ours, torch_reference(path))
    expected = {name: "float32" if name in ("float16", "bfloat16") else name for name in tensors}
    assert {k: str(v.dtype) for k, v in ours.items()} == expected
    np.testing.assert_array_equal(ours["float16"], tensors["float16"].float().numpy())
    np.testing.assert_array_equal(ours["bfloat16"], tensors["bfloat16"].float().numpy())


def _views(torch) -> dict:
    """Tensors viewing shared storages in every way a state dict or checkpoint can hold them."""
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    half = torch.arange(10, dtype=torch.float16)
    return {
        "base": base,
        "transposed": base.t(),  # non-contiguous
        "slice": base[1:3, ::2],  # offset and strides
        "row": base[2],  # offset into the same storage
        "again": base,  # the same tensor twice
        "expanded": torch.arange(3.0).expand(2, 3),  # stride 0
        "half_strided": half[1::3],  # upcast of a strided view
        "half": half,
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "ints_t": torch.arange(6).reshape(2, 3).t(),
    }


@pytest.mark.parametrize("fmt", FORMATS)
def test_views_and_shared_storages_equal_torch(fmt, tmp_path):
    torch = pytest.importorskip("torch", reason="writing with torch.save needs PyTorch")
    path = saved(tmp_path, _views(torch), fmt)
    ours = read_weights(path)
    assert_same(ours, torch_reference(path))
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    np.testing.assert_array_equal(ours["transposed"], base.T)
    np.testing.assert_array_equal(ours["slice"], base[1:3, ::2])
    np.testing.assert_array_equal(ours["row"], base[2])
    np.testing.assert_array_equal(ours["expanded"], [[0, 1, 2], [0, 1, 2]])
    np.testing.assert_array_equal(ours["half_strided"], [1, 4, 7])
    np.testing.assert_array_equal(ours["ints_t"], np.arange(6).reshape(2, 3).T)
    # Views of one storage share its memory, as PyTorch's tensors (and their .numpy()) do.
    assert np.shares_memory(ours["base"], ours["transposed"])
    assert np.shares_memory(ours["base"], ours["row"])


def test_state_dict_metadata_dropped(tmp_path):
    """state_dict() is an OrderedDict with a `_metadata` attribute: a plain dict, in order."""
    torch = pytest.importorskip("torch", reason="writing with torch.save needs PyTorch")
    module = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    state = module.state_dict()
    assert hasattr(state, "_metadata")
    path = saved(tmp_path, state)
    ours = read_weights(path)
    assert type(ours) is dict and list(ours) == list(state)
    assert ours["1.num_batches_tracked"].dtype == np.int64
    assert_same(ours, torch_reference(path))


@pytest.mark.parametrize("fmt", FORMATS)
def test_checkpoint_values_equal_torch(fmt, tmp_path):
    """What iBOT / DINO training checkpoints hold besides state dicts: an args Namespace,
    optimizer state (int keys, tensors, hyper-parameters), nested dicts / lists / tuples,
    numbers, strings, bytes, None, and nn.Parameters saved as themselves."""
    torch = pytest.importorskip("torch", reason="writing with torch.save needs PyTorch")
    with_state = torch.nn.Parameter(torch.ones(2))
    with_state.note = "an attribute"  # pickled through _rebuild_parameter_with_state
    obj = {
        "args": argparse.Namespace(arch="vit_small", lr=5e-4, pred_ratio=[0.0, 0.3],
                                   global_crops_scale=(0.4, 1.0), use_fp16=True, seed=None,
                                   nested={"a": [1, (2, "b")]}),
        "optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(4)}},
                      "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": [0],
                                        "foreach": None, "amsgrad": False}]},
        "epoch": 100, "best": -1.5, "name": "ünïcode", "raw": b"\x00\xffab", "big": 2 ** 70,
        "ids": {1, 2}, "z": 1 + 2j, "empty": {}, "param": torch.nn.Parameter(torch.ones(2, 2)),
        "with_state": with_state,
    }
    path = saved(tmp_path, obj, fmt)
    assert_same(read_weights(path), torch_reference(path))


def test_torch_values_in_plain_form(tmp_path):
    """torch.Size -> tuple, torch.dtype -> its name, torch.device -> its name, a storage saved
    as itself -> a 1-D array of its elements."""
    torch = pytest.importorskip("torch", reason="writing with torch.save needs PyTorch")
    path = saved(tmp_path, {"size": torch.Size([2, 3]), "dtype": torch.bfloat16,
                            "devices": [torch.device("cpu"), torch.device("cuda", 1)],
                            "bytes": torch.arange(3, dtype=torch.uint8).untyped_storage()})
    ours = read_weights(path)
    assert ours["size"] == (2, 3) and type(ours["size"]) is tuple
    assert ours["dtype"] == "torch.bfloat16" == str(torch.bfloat16)
    assert ours["devices"] == ["cpu", "cuda:1"] == [str(d) for d in torch_reference(path)
                                                    ["devices"]]
    assert ours["bytes"].dtype == np.uint8 and ours["bytes"].tolist() == [0, 1, 2]


def test_big_endian_zip(tmp_path):
    """A zip whose byteorder record says 'big' (written on a big-endian machine): its
    storages are byte-swapped to native order, as torch.load does."""
    torch = pytest.importorskip("torch", reason="writing with torch.save needs PyTorch")
    tensors = _dtype_tensors(torch)
    little = saved(tmp_path, tensors)
    layouts = [pth_reader.DTYPES[name] for name in tensors]  # key i = the i-th tensor
    big = tmp_path / "big.pth"
    with zipfile.ZipFile(little) as src, zipfile.ZipFile(big, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            raw = src.read(info)
            folder, _, record = info.filename.partition("/")
            if record == "byteorder":
                raw = b"big"
            elif record.startswith("data/"):
                raw = np.frombuffer(raw, layouts[int(record[5:])]).byteswap().tobytes()
            dst.writestr(info, raw)
    ours = read_weights(str(big))
    assert_same(ours, torch_reference(str(big)))
    assert_same(ours, read_weights(little))


def test_any_top_folder_name(tmp_path):
    """torch.save names the zip's top folder after the file (or 'archive'); any name reads."""
    torch = pytest.importorskip("torch", reason="writing with torch.save needs PyTorch")
    path = saved(tmp_path, {"w": torch.arange(4.0)}, name="first.pth")
    renamed = tmp_path / "renamed.pth"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(renamed, "w") as dst:
        for info in src.infolist():
            dst.writestr("my.weights-v2/" + info.filename.partition("/")[2], src.read(info))
    assert_same(read_weights(str(renamed)), torch_reference(str(renamed)))


# ---------------------------------------------------------------------------- by hand
def test_hand_written_views_without_torch(tmp_path, monkeypatch):
    """Strides, offsets, a storage shared by several tensors, a 0-d and an empty tensor, a
    bfloat16 storage and a legacy-style view, read with `import torch` failing."""
    block_torch(monkeypatch)
    elems = np.arange(12, dtype="<f4")
    bf16 = (np.array([1.0, -2.5, 3.140625], "<f4").view("<u4") >> 16).astype("<u2")
    payload = {"matrix": tensor("0", 12, (3, 4), (4, 1)),
               "transposed": tensor("0", 12, (4, 3), (1, 4)),
               "column": tensor("0", 12, (3,), (4,), offset=2),
               "scalar": tensor("0", 12, (), (), offset=11),
               "empty": tensor("0", 12, (0, 5), (5, 1), offset=12),
               "bf16": tensor("1", 3, (3,), (1,), storage="BFloat16Storage")}
    path = write_torch_zip(tmp_path / "views.pth", pickled(payload),
                           {"0": elems.tobytes(), "1": bf16.tobytes()})
    ours = read_weights(path)
    np.testing.assert_array_equal(ours["matrix"], elems.reshape(3, 4))
    np.testing.assert_array_equal(ours["transposed"], elems.reshape(3, 4).T)
    np.testing.assert_array_equal(ours["column"], [2, 6, 10])
    assert ours["scalar"].shape == () and ours["scalar"] == 11
    assert ours["empty"].shape == (0, 5) and ours["empty"].dtype == np.float32
    assert ours["bf16"].dtype == np.float32 and ours["bf16"].tolist() == [1.0, -2.5, 3.140625]


def _hand_written_legacy(tmp_path) -> tuple[str, np.ndarray]:
    """The legacy format by hand: magic number, protocol version, sys_info, the object, the
    storage keys, then each storage as an 8-byte count and its elements. One tensor views the
    whole storage, one a storage view (key 'v': elements 2..4, as old versions wrote them)."""
    elems = np.arange(6, dtype="<f8")
    whole = ("storage", G("torch", "DoubleStorage"), "0", "cpu", 6, None)
    view = ("storage", G("torch", "DoubleStorage"), "0", "cpu", 6, ("v", 2, 3))
    rebuild = lambda pid, size, stride: Call(G("torch._utils", "_rebuild_tensor"),
                                             (Pid(pid), 0, size, stride))
    obj = {"whole": rebuild(whole, (2, 3), (3, 1)), "view": rebuild(view, (3,), (1,))}
    sys_info = {"protocol_version": 1001, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 4}}
    path = tmp_path / "legacy.pth"
    path.write_bytes(pickled(pth_reader.LEGACY_MAGIC) + pickled(1001) + pickled(sys_info)
                     + pickled(obj) + pickled(["0"]) + (6).to_bytes(8, "little")
                     + elems.tobytes())
    return str(path), elems


def test_hand_written_legacy_file_with_storage_views(tmp_path, monkeypatch):
    block_torch(monkeypatch)
    path, elems = _hand_written_legacy(tmp_path)
    ours = read_weights(path)
    np.testing.assert_array_equal(ours["whole"], elems.reshape(2, 3))
    np.testing.assert_array_equal(ours["view"], elems[2:5])
    assert ours["view"].dtype == np.float64


def test_hand_written_legacy_file_equals_torch(tmp_path):
    path, _ = _hand_written_legacy(tmp_path)
    assert_same(read_weights(path), torch_reference(path))


class _Reduces:
    """An object whose unpickling calls fn(*args) (what a hostile pickle does)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


class _Custom:
    """A class of our own: unpickling it would need its module imported."""

    def __init__(self):
        self.value = 1


def _hostile_pickles(marker) -> dict:
    """id -> (the global the pickle asks for, the pickle); the calls would create `marker`."""
    import pickle

    command = f"touch {marker}"
    objects = {
        "os.system": (f"{os.system.__module__}.system", _Reduces(os.system, command)),
        "builtins.eval": ("builtins.eval", _Reduces(eval, f"__import__('os').system({command!r})")),
        "subprocess.Popen": ("subprocess.Popen", _Reduces(subprocess.Popen, ["touch", marker])),
        "collections.Counter": ("collections.Counter", collections.Counter(a=1)),
        "custom class": (f"{__name__}._Custom", _Custom()),
    }
    return {k: (name, pickle.dumps({"w": 1, "payload": obj}, protocol=2))
            for k, (name, obj) in objects.items()}


@pytest.mark.parametrize("case", ["os.system", "builtins.eval", "subprocess.Popen",
                                  "collections.Counter", "custom class"])
def test_hostile_globals_refused(case, tmp_path, monkeypatch):
    block_torch(monkeypatch)
    marker = tmp_path / "pwned"
    forbidden, data = _hostile_pickles(marker)[case]
    path = write_torch_zip(tmp_path / "hostile.pth", data)
    message = assert_one_line_error(path)
    assert message == (f"{path}: refused: the pickle asks for {forbidden} "
                       f"({pth_reader.ALLOWED_TEXT}); nothing was executed")
    assert not marker.exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_hostile_torch_save_refused(fmt, tmp_path):
    """torch.save of an os.system payload next to a tensor, and of a whole nn.Module."""
    torch = pytest.importorskip("torch", reason="writing with torch.save needs PyTorch")
    marker = tmp_path / "pwned"
    path = saved(tmp_path, {"cls_token": torch.zeros(1), "payload": _Reduces(
        os.system, f"touch {marker}")}, fmt)
    assert_one_line_error(path, f"refused: the pickle asks for {os.system.__module__}.system")
    assert not marker.exists()
    path = saved(tmp_path, torch.nn.Linear(2, 2), fmt, name="module.pth")
    assert_one_line_error(path, "refused: the pickle asks for torch.nn.modules.linear.Linear")


def test_build_cannot_alter_allowed_globals(tmp_path):
    """BUILD on an allowed global itself (setting attributes on a class or function) fails:
    argparse.Namespace (and the subclass handed out for it), OrderedDict, the rebuild functions
    and the table of allowed globals are unchanged. copyreg.__newobj__ is not allowed."""
    globals_ = [G("argparse", "Namespace"), G("collections", "OrderedDict"),
                G("torch._utils", "_rebuild_tensor_v2"), G("torch", "FloatStorage")]
    allowed = dict(pth_reader.ALLOWED_GLOBALS)
    for i, target in enumerate(globals_):
        for state in ({"pwned": 1}, (None, {"pwned": 1})):  # __dict__ state, slot state
            path = write_torch_zip(tmp_path / f"build{i}.pth",
                                   pickled({"x": Build(target, state)}))
            with pytest.raises(ValueError):
                read_weights(path)
    assert not hasattr(argparse.Namespace, "pwned") and not hasattr(pth_reader._Namespace, "pwned")
    assert not hasattr(collections.OrderedDict, "pwned")
    assert not hasattr(pth_reader._rebuild_tensor_v2, "pwned")
    assert pth_reader.ALLOWED_GLOBALS == allowed
    ns = write_torch_zip(tmp_path / "ns.pth", pickled({"args": Build(
        Call(G("copyreg", "__newobj__"), ()), {})}))
    assert_one_line_error(ns, "refused: the pickle asks for copyreg.__newobj__")


def _broken_files(tmp_path) -> dict:
    """id -> (path, what the error says) for files torch.save would not write."""
    t3 = {"w": tensor("0", 3, (3,), (1,))}
    raw3 = np.arange(3, dtype="<f4").tobytes()
    zip_ = lambda name, *a, **kw: write_torch_zip(tmp_path / f"{name}.pth", *a, **kw)
    crc = zip_("crc", pickled(t3), {"0": raw3})
    data = bytearray(open(crc, "rb").read())
    data[data.index(raw3) + 5] ^= 0xFF  # a flipped bit in the stored tensor
    open(crc, "wb").write(bytes(data))
    no_pickle = tmp_path / "no_pickle.pth"
    with zipfile.ZipFile(no_pickle, "w") as zf:
        zf.writestr("archive/version", b"3\n")
    script = tmp_path / "script.pth"
    with zipfile.ZipFile(script, "w") as zf:
        for record in ("data.pkl", "constants.pkl", "code/__torch__.py"):
            zf.writestr(f"script/{record}", b"")
    tar = tmp_path / "tar.pth"
    with tarfile.open(tar, "w") as tf:
        info = tarfile.TarInfo("sys_info")
        info.size = 4
        tf.addfile(info, io.BytesIO(b"\x80\x02N."))
    text = tmp_path / "text.pth"
    text.write_text("not weights")
    conj_pid = ("storage", G("torch", "ComplexFloatStorage"), "0", "cpu", 1)
    deep = b"\x80\x02}X\x01\x00\x00\x00x" + b"]" * 100_000 + b"a" * 99_999 + b"s."
    return {
        "truncated fixture": (os.path.join(WEIGHT_FIXTURES, "malformed", "truncated.pth"),
                              "not a readable PyTorch file (truncated or corrupt zip archive"),
        "missing storage": (zip_("missing", pickled(t3)),
                            "storage '0' (archive/data/0) is not in the archive"),
        "short storage": (zip_("short", pickled(t3), {"0": raw3[:8]}),
                          "holds 8 bytes, the pickle declares 3 float32 elements (12 bytes)"),
        "tensor beyond storage": (
            zip_("beyond", pickled({"w": tensor("0", 3, (2, 2), (1, 1), offset=1)}), {"0": raw3}),
            "size (2, 2), stride (1, 1) and offset 1 needs 4 elements of storage '0', which "
            "holds 3"),
        "bad crc": (crc, "corrupt zip archive: Bad CRC-32"),
        "no data.pkl": (str(no_pickle), "without the <folder>/data.pkl record"),
        "not a dict": (zip_("list", pickled([tensor("0", 3, (3,), (1,))]), {"0": raw3}),
                       "holds a list, not a dict"),
        "unknown persistent id": (zip_("pid", pickled({"w": Pid(("module", "x"))})),
                                  "unknown persistent id ('module', 'x')"),
        "negative stride": (zip_("stride", pickled({"w": tensor("0", 3, (3,), (-1,), 2)}),
                                 {"0": raw3}), "stride is (-1,), not non-negative integers"),
        "two dtypes for one storage": (
            zip_("dtypes", pickled([t3, tensor("0", 3, (3,), (1,), storage="IntStorage")]),
                 {"0": raw3}), "storage '0' is declared as ('float32', 3) and as ('int32', 3)"),
        "conjugate view": (zip_("conj", pickled({"w": Call(G("torch._utils", "_rebuild_tensor_v2"),
                                                           (Pid(conj_pid), 0, (1,), (1,), False,
                                                            {}, {"conj": True}))}),
                                {"0": b"\0" * 8}), "conjugate or negated view"),
        "uint16 tensor": (zip_("uint16", pickled({"w": Call(G("torch._utils", "_rebuild_tensor_v3"),
                                                            ())})),
                          "it holds uint16 / uint32 / uint64 / float8 tensors "
                          "(torch._utils._rebuild_tensor_v3), which this reader does not support"),
        "bad byteorder": (zip_("order", pickled(t3), {"0": raw3}, byteorder=b"middle"),
                          "byteorder record is b'middle'"),
        "torchscript": (str(script), "TorchScript archive"),
        "tar format": (str(tar), "PyTorch's oldest (tar) format"),
        "not a pickle": (str(text), "neither a zip archive (torch >= 1.6) nor PyTorch's legacy"),
        "nested too deeply": (zip_("deep", deep), "nested too deeply"),
    }


@pytest.mark.parametrize("case", [
    "truncated fixture", "missing storage", "short storage", "tensor beyond storage", "bad crc",
    "no data.pkl", "not a dict", "unknown persistent id", "negative stride",
    "two dtypes for one storage", "conjugate view", "uint16 tensor", "bad byteorder", "torchscript",
    "tar format", "not a pickle", "nested too deeply"])
def test_broken_files(case, tmp_path, monkeypatch):
    block_torch(monkeypatch)
    path, says = _broken_files(tmp_path)[case]
    assert_one_line_error(path, says)


def test_broken_legacy_files(tmp_path):
    """A legacy file cut inside its storages or its pickles, and one with a wrong magic
    number."""
    torch = pytest.importorskip("torch", reason="writing with torch.save needs PyTorch")
    path = saved(tmp_path, {"w": torch.arange(100.0)}, "legacy")
    data = open(path, "rb").read()
    for cut, says in ((len(data) - 10, "storage '"), (30, "is not a valid pickle")):
        (tmp_path / "cut.pth").write_bytes(data[:cut])
        assert_one_line_error(tmp_path / "cut.pth", "not a readable PyTorch file", says)
    (tmp_path / "magic.pth").write_bytes(pickled(12345) + data[data.index(b".") + 1:])
    assert_one_line_error(tmp_path / "magic.pth", "first value 12345 is not PyTorch's magic")
