"""Safe reading of foreign weight files into numpy: `.pth`/`.pt` (PyTorch), `.safetensors`, `.npz`.

Nothing here executes code from a file. `.pth` goes through PyTorch's weights-only unpickler,
which rebuilds only tensors and plain containers; the one extra class allowed is
`argparse.Namespace`, the `args` entry of iBOT / DINO training checkpoints. `.safetensors` and
`.npz` are read without PyTorch (numpy, no pickle). PyTorch is an optional dependency of the
converter only: `pip install -r requirements-convert.txt`.
"""

from __future__ import annotations

import argparse
import os
import pickle
import zipfile
from typing import Any

import numpy as np

TORCH_INSTALL_HINT = ("reading .pth files needs PyTorch: pip install -r requirements-convert.txt "
                      "(CPU wheel torch==2.13.0); .safetensors and .npz files need no PyTorch")

# Classes beyond tensors / containers that the weights-only unpickler may rebuild, with why.
SAFE_GLOBALS = (
    argparse.Namespace,  # `args` of iBOT / DINO training checkpoints
)


def read_weights(path: str) -> Any:
    """The contents of a weight file as nested dicts / lists of numpy arrays (and plain Python
    values). A state dict comes back as {name: array}; a training checkpoint as its dict (an
    argparse.Namespace becomes a dict)."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weight file {path} does not exist")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".safetensors":
        return _read_safetensors(path)
    if ext == ".npz":
        return _read_npz(path)
    if ext in (".pth", ".pt", ".bin", ".ckpt", ".tar"):
        return _read_torch(path)
    raise ValueError(f"{path}: unknown weight file type {ext!r} (expected .pth / .pt / .bin / "
                     ".ckpt / .tar (PyTorch), .safetensors or .npz)")


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    try:
        from safetensors.numpy import load_file
    except ImportError as e:
        raise ImportError(f"{path}: reading .safetensors needs the `safetensors` package "
                          "(pip install -r requirements.txt)") from e
    try:
        return dict(load_file(path))
    except Exception as e:  # the package raises its own error types for corrupt headers
        raise ValueError(f"{path}: not a readable .safetensors file ({e})") from e


def _read_npz(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:  # object arrays would need pickle: refused
            return {k: f[k] for k in f.files}
    except ValueError as e:
        raise ValueError(f"{path}: .npz holds pickled objects, which are refused ({e})") from e
    except (OSError, EOFError, KeyError, zipfile.BadZipFile) as e:  # e.g. a truncated file
        raise ValueError(f"{path}: not a readable .npz file ({e})") from e


def _read_torch(path: str) -> Any:
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"{path}: {TORCH_INSTALL_HINT}") from e
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{path}: refused by the weights-only unpickler (the file asks to run or build "
            f"something other than tensors, containers and {[c.__name__ for c in SAFE_GLOBALS]}; "
            f"arbitrary pickles are never executed). Details: {str(e).splitlines()[0]}") from e
    except (RuntimeError, EOFError, OSError) as e:
        raise ValueError(f"{path}: not a readable PyTorch file ({e})") from e
    return _to_numpy(obj, torch)


def _to_numpy(obj: Any, torch) -> Any:
    """Tensors -> numpy (bfloat16 / float16 upcast to float32), Namespace -> dict, recursively."""
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
