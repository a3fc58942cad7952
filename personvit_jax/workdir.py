"""One writer per workdir: the stages that write a workdir (fine-tune, pretrain, evaluate) hold
an exclusive OS lock on <workdir>/workdir.lock while they run.

The lock is `flock` on that file: the kernel releases it when the holding process ends in any
way (SIGKILL and OOM kills included), so a dead run never leaves a stale lock and the file's
mere presence means nothing. The holder writes into it who it is (host, pid, start time,
command line), which is what a refused run prints. On multi-process runs process 0 takes the
lock and tells the others whether it got it (on a shared file system the workdir is one folder).

The file is never deleted: removing a lock file while another process waits on it would let a
third lock a new file of the same name, and two runs would write the workdir.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import shlex
import socket
import sys
import time
from typing import Callable, Iterator

LOCK_NAME = "workdir.lock"
_HELD_FDS: set[int] = set()


class WorkdirInUseError(RuntimeError):
    """Another live process holds the workdir's lock (a user error: one line, exit status 2)."""


def _close_held_in_child() -> None:
    """A forked child (e.g. a data worker) drops its copies of the lock descriptors, so that it
    cannot keep a dead parent's workdir locked; the parent's own descriptors keep the lock."""
    for fd in list(_HELD_FDS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_FDS.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


def _holder_record() -> str:
    return json.dumps({
        "host": socket.gethostname(), "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "command": shlex.join(getattr(sys, "orig_argv", sys.argv))[:500]}) + "\n"


def _describe_holder(fd: int, path: str) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
        return (f"host {holder['host']}, pid {holder['pid']}, started {holder['started']}, "
                f"command: {holder['command']}")
    except (OSError, ValueError, KeyError, TypeError):  # it has locked but not yet written
        return f"a process that has not yet recorded itself in {path}"


def acquire(workdir: str) -> int:
    """Takes the lock of `workdir` (created if needed) without waiting; returns the descriptor
    that holds it. Raises WorkdirInUseError naming the holder, having changed nothing."""
    path = os.path.join(workdir, LOCK_NAME)
    os.makedirs(workdir, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _describe_holder(fd, path)
        os.close(fd)
        raise WorkdirInUseError(
            f"workdir {workdir} is in use by another run ({holder}); wait for it to end, stop "
            "it, or choose another --workdir (the lock is released when that process ends, "
            "however it ends)") from None
    except BaseException:
        os.close(fd)
        raise
    _HELD_FDS.add(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, _holder_record().encode(), 0)
    return fd


def release(fd: int) -> None:
    _HELD_FDS.discard(fd)
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


@contextlib.contextmanager
def locked(workdir: str) -> Iterator[str]:
    """Holds the lock of `workdir` (absolute, created) for the block; process 0 takes it and
    every process learns whether it did, so all stop together when it is refused."""
    import jax

    workdir = os.path.abspath(os.path.expanduser(workdir))
    fd, refused = None, None
    if jax.process_index() == 0:
        try:
            fd = acquire(workdir)
        except Exception as e:  # noqa: BLE001 (re-raised below, once the others know)
            refused = e
    if jax.process_count() > 1:
        import numpy as np
        from jax.experimental import multihost_utils

        got = bool(multihost_utils.broadcast_one_to_all(np.int32(refused is None)))
        if not got and refused is None:
            refused = WorkdirInUseError(f"workdir {workdir} is in use by another run "
                                        "(process 0's log names it)")
    if refused is not None:
        raise refused
    try:
        yield workdir
    finally:
        if fd is not None:
            release(fd)


def holds_workdir_lock(stage: Callable) -> Callable:
    """Decorates a stage `fn(config, workdir)`: it runs holding the workdir's lock, taken before
    anything in the workdir is read."""
    @functools.wraps(stage)
    def run(config, workdir: str, *args, **kwargs):
        with locked(workdir) as absolute:
            return stage(config, absolute, *args, **kwargs)
    return run
