"""Safe reading of foreign weight files into numpy: `.pth`/`.pt` (PyTorch), `.safetensors`, `.npz`.

Nothing here executes code from a file, and nothing needs PyTorch. `.pth` files are read by our
own reader of PyTorch's serialisation format (`pth_reader`: zip and legacy formats, a restricted
unpickler that rebuilds only tensors, containers, numbers, strings and `argparse.Namespace`, the
`args` entry of iBOT / DINO training checkpoints); `.safetensors` through its numpy API and
`.npz` through numpy without pickle.
"""

from __future__ import annotations

import os
import zipfile
from typing import Any

import numpy as np

from personvit_jax.tools.pth_reader import read_pth


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
        return read_pth(path)
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
