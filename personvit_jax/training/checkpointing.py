"""The one checkpoint wrapper: Orbax CheckpointManager over {train state, data iterator}.

Layout: <workdir>/checkpoints/<step>/{state, data}. Orbax writes each checkpoint into a temporary
folder and renames it when complete, so a run killed mid-write never leaves a "latest" checkpoint
that cannot be read. `data` holds the Grain iterator position, so a resumed run sees exactly the
batches an uninterrupted run would have seen.

A save that fails (disk full, permission denied, I/O error) raises files.WriteError naming the
step folder; its half-written temporary folder is never taken for a checkpoint, and the next run
removes it (safe: the workdir lock means no other process is writing one). `resume_note` says
which complete checkpoint a rerun resumes from, having read it.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Optional

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from personvit_jax import files, trees


class Checkpointer:
    def __init__(self, directory: str, *, max_to_keep: int = 3, save_interval_steps: int = 1000,
                 async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, save_interval_steps=save_interval_steps, create=True,
                enable_async_checkpointing=async_save, cleanup_tmp_directories=True))
        self._in_flight: Optional[int] = None  # the step of the save not yet known complete

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_iter=None, force: bool = False) -> bool:
        """Saves when `step` is on the interval (or `force`); returns whether it saved."""
        if not (force or self.manager.should_save(step)):
            return False
        self.wait_until_finished()  # Orbax would too; here a failure is named as that save's
        items = {"state": ocp.args.StandardSave(state)}
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        self._in_flight = step
        with self._failed_write_is_one_line():
            saved = self.manager.save(step, args=ocp.args.Composite(**items), force=force)
        return saved

    def wait_until_finished(self) -> None:
        """Blocks until an asynchronous save completes (WriteError if it failed)."""
        with self._failed_write_is_one_line():
            self.manager.wait_until_finished()
        self._in_flight = None

    @contextlib.contextmanager
    def _failed_write_is_one_line(self):
        """A save's I/O failure (an OSError in the exception's chain, or the file-system error
        text that TensorStore puts in its own errors; Orbax and Grain raise them from their
        threads) -> files.WriteError naming the step folder being written."""
        try:
            yield
        except Exception as e:  # noqa: BLE001 (re-raised unless it is an I/O failure)
            if isinstance(e, files.WriteError) or files.io_failure(e) is None:
                raise
            what = os.path.join(self.directory, str(self._in_flight))
            self._in_flight = None
            raise files.write_failed(what, e, "nothing of it is taken for a checkpoint") from e

    def resume_note(self) -> str:
        """After a failed write: waits for a save still in flight (its own failure aside), then
        names the latest complete checkpoint, whose metadata it has read, as where a rerun
        resumes."""
        with contextlib.suppress(Exception):
            self.manager.wait_until_finished()
        self.manager.reload()
        step = self.manager.latest_step()
        if step is None:
            return "no checkpoint was complete yet: a rerun starts from the beginning"
        step_dir = os.path.join(self.directory, str(step))
        try:
            saved_shapes(step_dir)
        except Exception as e:  # noqa: BLE001 (said in the note; the rerun falls back past it)
            return (f"the latest checkpoint {step_dir} is unreadable ({type(e).__name__}); a "
                    "rerun sets it aside and resumes from the one before")
        return (f"the latest complete checkpoint {step_dir} is intact and readable: rerun the "
                "same command to resume from it")

    def restore(self, step: int, abstract_state: Any, data_iter=None) -> Any:
        """Restores the state onto the shardings of `abstract_state` (and the iterator in place)."""
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        return self.manager.restore(step, args=ocp.args.Composite(**items))["state"]

    def close(self) -> None:
        self.wait_until_finished()
        self.manager.close()


def abstract_state(state: Any) -> Any:
    """Shape/dtype/sharding skeleton of a (sharded) state, the restore target."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


def resolve_checkpoint(path: str) -> str:
    """A workdir, its `checkpoints/` folder or one step folder -> the step folder to read.

    A workdir or `checkpoints/` folder resolves to its latest complete step.
    """
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(os.path.join(path, "state")):
        return path
    ckpt_dir = os.path.join(path, "checkpoints") if os.path.isdir(
        os.path.join(path, "checkpoints")) else path
    if os.path.isfile(path):
        raise NotADirectoryError(
            f"checkpoint path {path} is a file: expected a run's workdir, its checkpoints/ "
            "folder, a step folder or a converted folder (convert .pth / .safetensors / .npz "
            "weights first: python -m personvit_jax.tools.convert)")
    if not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(f"checkpoint path {path} does not exist")
    steps = sorted(int(n) for n in os.listdir(ckpt_dir)
                   if n.isdigit() and os.path.isdir(os.path.join(ckpt_dir, n, "state")))
    if not steps:
        raise FileNotFoundError(
            f"no checkpoint under {path}: expected a workdir with checkpoints/<step>/state, a "
            "checkpoints folder, or a step folder containing state/")
    return os.path.join(ckpt_dir, str(steps[-1]))


def load_state_tree(path: str) -> dict:
    """Reads the saved train state of `path` (see `resolve_checkpoint`) as host numpy arrays,
    whatever the mesh it was written from."""
    state_dir = os.path.join(resolve_checkpoint(path), "state")
    with _unreadable_is_one_line(state_dir), ocp.PyTreeCheckpointer() as ckptr:
        meta = ckptr.metadata(state_dir).item_metadata
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta.tree)
        return ckptr.restore(state_dir, args=ocp.args.PyTreeRestore(restore_args=restore_args))


def saved_shapes(path: str) -> dict[str, tuple]:
    """{keystr path: shape} of the arrays saved at `path` (see `resolve_checkpoint`), from the
    checkpoint's metadata only (no array is read)."""
    state_dir = os.path.join(resolve_checkpoint(path), "state")
    with _unreadable_is_one_line(state_dir), ocp.PyTreeCheckpointer() as ckptr:
        saved = ckptr.metadata(state_dir).item_metadata.tree
    return {k: tuple(v.shape) for k, v in trees.flatten(saved).items() if hasattr(v, "shape")}


class UnreadableCheckpointError(ValueError):
    """A checkpoint folder whose files are truncated, garbled or missing."""


@contextlib.contextmanager
def _unreadable_is_one_line(state_dir: str):
    """Whatever Orbax / TensorStore raise on a damaged checkpoint -> UnreadableCheckpointError
    naming the folder (a user error: one line)."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 (the library's many error types for a bad file)
        text = " ".join(str(e).split())
        raise UnreadableCheckpointError(
            f"{state_dir}: unreadable checkpoint ({type(e).__name__}: {text[:300]}); it is "
            "truncated, garbled or not an Orbax checkpoint") from e


def check_restorable(step_dir: str, target: Any) -> None:
    """Raises a ValueError naming every array whose saved shape differs from `target`'s (a
    different model size, number of classes or head), or that exists on one side only."""
    problems = trees.diff(saved_shapes(step_dir),
                          trees.shapes(trees.flatten(target))).problems()
    if problems:  # model arrays first; the optimizer state mirrors them
        problems.sort(key=lambda p: (p.startswith("opt_state"), p))
        shown = problems[:20] + ([f"... {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise IncompatibleCheckpointError(
            f"{step_dir} does not fit the configured model: " + "; ".join(shown))


class IncompatibleCheckpointError(ValueError):
    """A readable checkpoint whose arrays do not match the model (never a reason to fall back)."""


def set_aside(ckpt: Checkpointer, step: int) -> str:
    """Renames an unreadable step folder to <step>.unreadable[-N] (kept for inspection, never
    deleted) so that the previous checkpoint becomes the latest. Process 0 renames (shared
    file system), every process then re-reads the step list."""
    src = os.path.join(ckpt.directory, str(step))
    dst, n = src + ".unreadable", 1
    while os.path.exists(dst):
        n += 1
        dst = f"{src}.unreadable-{n}"
    if jax.process_index() == 0:
        os.rename(src, dst)
    multihost_sync(f"set_aside_{step}")
    ckpt.manager.reload()
    return dst


def restore_or_initialize(ckpt: Checkpointer, state: Any, data_iter,
                          init: Optional[Callable[[Any], Any]] = None, log=print,
                          warn=print) -> Any:
    """The start order of every stage: 1) resume from this workdir's latest readable checkpoint
    (state and data-iterator position; an unreadable newest one is set aside with a warning and
    the one before it is used), 2) `init(state)`: the state with weights from another run put
    in (the stage's `config.init_from`), 3) keep the freshly initialised `state`."""
    target = abstract_state(state)
    ckpt.manager.reload()
    for step in sorted(ckpt.manager.all_steps(), reverse=True):
        step_dir = os.path.join(ckpt.directory, str(step))
        try:
            check_restorable(step_dir, target)
            restored = ckpt.restore(step, target, data_iter)
        except IncompatibleCheckpointError:
            raise
        except Exception as e:  # unreadable / truncated: fall back to the previous one
            moved = set_aside(ckpt, step)
            warn(f"checkpoint {step_dir} is unreadable ({type(e).__name__}: {str(e)[:300]}); "
                 f"moved to {moved}; trying the previous checkpoint")
            continue
        log(f"resumed from {ckpt.directory} at step {step}")
        return restored
    if init is not None:
        return init(state)
    log("starting from scratch (no checkpoint in the workdir, no init_from)")
    return state


def multihost_sync(name: str) -> None:
    """Barrier across processes (no-op for one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)
