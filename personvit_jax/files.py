"""The one atomic-write helper: every output file (configs, results, features, pictures,
exported models, caches) is written to a temporary file in its folder and renamed into place,
so a reader never sees half a file and a failed write leaves the previous version intact."""

from __future__ import annotations

import io
import json
import os
import tempfile
from typing import Any, Callable


def atomic_write(path: str, write: Callable[[io.IOBase], None], *, binary: bool = True,
                 overwrite: bool = True) -> str:
    """Calls `write(f)` on a temporary file beside `path`, then renames it to `path`; returns the
    absolute path. `overwrite=False` refuses an existing `path` (FileExistsError naming it).
    On any error the temporary file is removed and `path` is untouched."""
    path = os.path.abspath(os.path.expanduser(path))
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"{path} exists: choose another path or allow overwriting")
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the file from other users
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_bytes(path: str, data: bytes, overwrite: bool = True) -> str:
    return atomic_write(path, lambda f: f.write(data), overwrite=overwrite)


def write_text(path: str, text: str, overwrite: bool = True) -> str:
    return atomic_write(path, lambda f: f.write(text), binary=False, overwrite=overwrite)


def write_json(path: str, obj: Any, overwrite: bool = True) -> str:
    return write_text(path, json.dumps(obj, indent=2) + "\n", overwrite)


def save_npz(path: str, arrays: dict, overwrite: bool = True) -> str:
    """np.savez to exactly `path` (no added suffix)."""
    import numpy as np

    return atomic_write(path, lambda f: np.savez(f, **arrays), overwrite=overwrite)

