"""The one atomic-write helper: every output file (configs, results, features, pictures,
exported models, caches) is written to a temporary file in its folder and renamed into place,
so a reader never sees half a file and a failed write leaves the previous version intact.

A write that fails (disk full, permission denied, I/O error) raises WriteError, one line naming
the file and the error (a user error for the command lines: `error: ...`, exit status 2)."""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
from typing import Any, Callable, Optional


class WriteError(OSError):
    """A file or folder could not be written; the message names it, the error, and what was
    kept. `errno` is the underlying error's."""


_IO_ERROR_TEXT = re.compile(r"No space left|Disk quota|Input/output error|Read-only file system|"
                            r"Permission denied|File too large")


def io_failure(e: Optional[BaseException]) -> Optional[BaseException]:
    """The I/O failure at the root of `e`: the innermost OSError of its chain that has an error
    text (else the first OSError, or an error whose message is a file-system error's, as
    TensorStore's are); None when there is none (a bug, not a write failure)."""
    found, seen = None, set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and (e.strerror or found is None):
            found = e
        elif found is None and _IO_ERROR_TEXT.search(str(e)):
            found = e
        e = e.__cause__ or e.__context__
    return found


def write_failed(path: str, e: BaseException, kept: str) -> WriteError:
    """The WriteError for `e` raised while writing `path`; `kept` says what is left intact."""
    root = io_failure(e) or e
    reason = root.strerror if isinstance(root, OSError) and root.strerror else str(root)
    code = getattr(root, "errno", None)
    err = WriteError(f"could not write {path}: {reason} ({type(root).__name__}"
                     f"{f' errno {code}' if code else ''}); {kept}")
    err.errno = code
    return err


def atomic_write(path: str, write: Callable[[io.IOBase], None], *, binary: bool = True,
                 overwrite: bool = True) -> str:
    """Calls `write(f)` on a temporary file beside `path`, then renames it to `path`; returns the
    absolute path. `overwrite=False` refuses an existing `path` (FileExistsError naming it).
    On any error the temporary file is removed and `path` is untouched; an OSError of the
    write itself comes out as a WriteError naming `path`."""
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
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise write_failed(path, e, "its previous version, if any, is intact") from e
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

