"""Reliability: random SIGKILLs + restarts are bit-exact (both stages), SIGTERM saves and exits 0,
a second run on a workdir in use is refused touching nothing, a failed checkpoint / metrics /
results write stops with one line and the rerun is bit-exact, an unreadable newest checkpoint
falls back to the previous one, non-finite steps stop or are skipped, and bad configs / workdirs
/ checkpoints fail before any work with precise errors."""

import errno
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import (REPO, TINY_SYNTHETIC, assert_trees, fail_fsync, open_file_name,
                      tiny_finetune_config, tiny_pretrain_config, user_error_line)
from personvit_jax import files, validation, workdir
from personvit_jax.stages import finetune, pretrain
from personvit_jax.training import checkpointing, loop
from personvit_jax.training.checkpointing import load_state_tree
from personvit_jax.training.logging import read_metrics

STAGES = {"finetune": (finetune, tiny_finetune_config), "pretrain": (pretrain, tiny_pretrain_config)}

# A stage run in a child process, from the same tiny configs as the in-process runs; with
# `park_after` it stops (sleeps) right after logging that step, holding the workdir.
_CHILD = """
import sys, time
sys.modules["torch"] = None  # tensorboardX imports PyTorch if installed: seconds, never used
sys.path.insert(0, {tests!r})
import conftest
from personvit_jax.stages import {stage}
from personvit_jax.training import logging as metric_logging
park_after = {park_after!r}
if park_after is not None:
    append = metric_logging.MetricLogger._append_row
    def parked(self, line):
        append(self, line)
        if line.startswith('{{"step": {park_after}, "split": "train"'):
            time.sleep(3600)
    metric_logging.MetricLogger._append_row = parked
cfg = conftest.tiny_{stage}_config({data!r}, **{over!r})
{stage}.train(cfg, {workdir!r})
"""


def _child(stage, data_dir, workdir, over, park_after=None):
    code = _CHILD.format(tests=os.path.join(REPO, "tests"), stage=stage, data=data_dir,
                         over=over, workdir=str(workdir), park_after=park_after)
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _wait_started(proc, workdir, timeout=300):
    """Until the child has logged its first train step (or ended)."""
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(metrics) and os.path.getsize(metrics) > 0:
            return
        time.sleep(0.02)


# ---------------------------------------------------------------------------- fault injection
RESUME_OVER = {"checkpoint_every_steps": 2, "log_every_steps": 1, "optim.epochs": 3}  # 9 steps


@pytest.fixture(scope="module")
def resume_reference(tiny_data_dir, tmp_path_factory):
    """The final train state of an uninterrupted RESUME_OVER run, which every interrupted and
    resumed run below must reproduce bit for bit."""
    ref = tmp_path_factory.mktemp("reference")
    finetune.train(tiny_finetune_config(tiny_data_dir, **RESUME_OVER), str(ref))
    return load_state_tree(ref)


@pytest.mark.parametrize("stage", ["finetune", "pretrain"])
def test_random_kills_then_resume_is_bit_exact(stage, tiny_data_dir, tmp_path, request):
    # A checkpoint at every step (the kills often land inside an asynchronous write); the
    # training is that of an uninterrupted reference run (checkpoints change nothing):
    # RESUME_OVER's 9 steps (fine-tuning), the tiny config's 14 (pretraining).
    over = {"checkpoint_every_steps": 1, "log_every_steps": 1, "keep_checkpoints": 2}
    if stage == "finetune":
        over["optim.epochs"] = RESUME_OVER["optim.epochs"]
        ref = request.getfixturevalue("resume_reference")
    else:
        ref = load_state_tree(request.getfixturevalue("pretrain_reference"))

    work = tmp_path / "killed"
    rng = random.Random(f"kills-{stage}")
    for _ in range(2):  # kill at random moments, often inside an (async) checkpoint write
        proc = _child(stage, tiny_data_dir, work, over)
        _wait_started(proc, work)
        time.sleep(rng.uniform(0.0, 2.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    proc = _child(stage, tiny_data_dir, work, over)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    # Orbax commits atomically: no kill ever left an unreadable "latest" to fall back from.
    assert not [n for n in os.listdir(work / "checkpoints") if "unreadable" in n]
    assert_trees(ref, load_state_tree(work))  # bit-identical to the uninterrupted run


def test_sigterm_saves_exits_zero_and_resumes_exactly(tiny_data_dir, tmp_path,
                                                    resume_reference):
    # RESUME_OVER's training with no interval checkpoint: only the SIGTERM saves mid-run
    over = dict(RESUME_OVER, checkpoint_every_steps=1000)
    work = tmp_path / "term"
    proc = _child("finetune", tiny_data_dir, work, over)
    _wait_started(proc, work)
    assert proc.poll() is None, "the run ended before SIGTERM"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "preempted: checkpoint of step" in err
    steps = [int(n) for n in os.listdir(work / "checkpoints") if n.isdigit()]
    total = int(resume_reference["step"])
    assert steps and max(steps) < total  # an off-interval save made by the SIGTERM
    assert not (work / "eval_results.json").exists()
    proc = _child("finetune", tiny_data_dir, work, over)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert_trees(resume_reference, load_state_tree(work))


# ---------------------------------------------------------------------------- one writer
def _listing(folder) -> dict:
    """{relative path: (size, mtime_ns)} of every file and folder below `folder`."""
    out = {}
    for root, dirs, names in os.walk(folder):
        for n in dirs + names:
            st = os.stat(os.path.join(root, n))
            out[os.path.relpath(os.path.join(root, n), folder)] = (st.st_size, st.st_mtime_ns)
    return out


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def test_second_run_is_refused_then_a_killed_run_resumes_exactly(tiny_data_dir, tmp_path,
                                                                 resume_reference):
    work = tmp_path / "w"
    a = _child("finetune", tiny_data_dir, work, RESUME_OVER, park_after=7)
    deadline = time.time() + 600  # a hang guard, not a timing condition
    metrics = work / "metrics.jsonl"
    while a.poll() is None and time.time() < deadline and not (
            metrics.exists() and '"step": 7,' in metrics.read_text()):
        time.sleep(0.05)
    assert a.poll() is None, a.stderr.read()[-3000:]
    a.send_signal(signal.SIGSTOP)  # frozen, so that nothing but B could change the workdir
    while not _stopped(a.pid):
        time.sleep(0.01)
    before = _listing(work)
    assert "checkpoints/4" in before
    b = subprocess.run([sys.executable, "-m", "personvit_jax.main",
                        "--config=configs/finetune.py:synthetic", f"--workdir={work}"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert b.returncode == 2, b.stderr[-3000:]
    assert "Traceback" not in b.stderr
    last = b.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: workdir {work} is in use by another run (host ")
    assert f"pid {a.pid}, started " in last and "command: " in last and "-c" in last
    assert _listing(work) == before  # B touched nothing

    a.send_signal(signal.SIGKILL)  # no clean-up at all: the kernel drops the lock
    a.wait()
    finetune.train(tiny_finetune_config(tiny_data_dir, **RESUME_OVER), str(work))  # run C
    assert_trees(resume_reference, load_state_tree(work))


def test_lock_is_exclusive_and_released(tmp_path):
    with workdir.locked(str(tmp_path / "w")) as held:
        with pytest.raises(workdir.WorkdirInUseError, match=rf"pid {os.getpid()}, started"):
            workdir.acquire(held)
    workdir.release(workdir.acquire(held))  # free again once the block ends


# ---------------------------------------------------------------------------- failed writes
def _fail_checkpoint_4(monkeypatch):
    """The step-4 checkpoint's data-iterator item fails to write: disk full."""
    import grain._src.python.checkpoint.handler as grain_handler

    save = grain_handler.CheckpointHandler.save

    def full(self, directory, *args, **kw):
        if "/4.orbax-checkpoint-tmp" in str(directory):
            raise OSError(errno.ENOSPC, "No space left on device", str(directory))
        return save(self, directory, *args, **kw)

    monkeypatch.setattr(grain_handler.CheckpointHandler, "save", full)


def _fail_metrics_row_7(monkeypatch):
    """Appending step 7's train row to metrics.jsonl fails: I/O error, half of it written."""
    write = os.write

    def failing(fd, data):
        if open_file_name(fd) == "metrics.jsonl" and data.startswith(b'{"step": 7, "split"'):
            write(fd, data[: len(data) // 2])
            raise OSError(errno.EIO, "Input/output error")
        return write(fd, data)

    monkeypatch.setattr(os, "write", failing)


def _fail_results(monkeypatch):
    """eval_results.json is written but its fsync reports the disk full."""
    fail_fsync(monkeypatch, ".eval_results.json.tmp-")


def test_failed_writes_stop_in_one_line_and_the_reruns_are_exact(
        tiny_data_dir, tmp_path, monkeypatch, resume_reference):
    """One workdir, three failures in a row, each rerun resuming where the last one stopped:
    a checkpoint (step 4), a metrics row (step 7), the results file; then a healthy rerun."""
    cfg = tiny_finetune_config(tiny_data_dir, **RESUME_OVER)
    work = tmp_path / "w"
    for fail, path, reason, latest in [
            (_fail_checkpoint_4, "checkpoints/4", "No space left on device", 2),
            (_fail_metrics_row_7, "metrics.jsonl", "Input/output error", 6),
            (_fail_results, "eval_results.json", "No space left on device", 9)]:
        with monkeypatch.context() as m:
            fail(m)
            with pytest.raises(files.WriteError) as failed:
                finetune.train(cfg, str(work))
        line = user_error_line(failed.value, f"could not write {work / path}: {reason}")
        assert (f"the latest complete checkpoint {work / 'checkpoints' / str(latest)} is intact "
                "and readable: rerun the same command to resume from it") in line
        assert int(load_state_tree(work)["step"]) == latest  # the latest, and it reads
        assert not (work / "eval_results.json").exists()
        assert not [n for n in os.listdir(work) if ".tmp-" in n]  # no half-written file
        assert (work / "metrics.jsonl").read_text().endswith("\n")  # no half row

    finetune.train(cfg, str(work))  # the rerun, on a healthy disk
    assert_trees(resume_reference, load_state_tree(work))
    assert json.loads((work / "eval_results.json").read_text())["step"] == 9
    assert not [n for n in os.listdir(work / "checkpoints") if "tmp" in n]  # cleaned up
    assert read_metrics(work)["train"]["step"].tolist() == list(range(1, 10))

def test_unreadable_newest_checkpoint_falls_back_to_previous(tiny_data_dir, tmp_path, caplog):
    cfg = tiny_finetune_config(tiny_data_dir, **{"checkpoint_every_steps": 2, "optim.epochs": 2})
    work = tmp_path / "w"
    finetune.train(cfg, str(work))
    ref = load_state_tree(work)
    newest = max(int(n) for n in os.listdir(work / "checkpoints") if n.isdigit())
    for root, _, files in os.walk(work / "checkpoints" / str(newest) / "state"):
        for f in files:
            if "manifest" in f or root.endswith("/d"):  # array data and its index
                with open(os.path.join(root, f), "r+b") as fh:
                    fh.truncate(max(0, os.path.getsize(fh.name) // 3))
    caplog.set_level("WARNING")
    finetune.train(cfg, str(work))  # resumes from newest - 2 and recomputes the last steps
    assert any("unreadable" in r.getMessage() for r in caplog.records)
    aside = work / "checkpoints" / f"{newest}.unreadable"
    assert aside.is_dir()  # kept for inspection, never deleted
    assert_trees(ref, load_state_tree(work))


# ---------------------------------------------------------------------------- non-finite guard
def test_guard_keeps_the_old_state_on_nan():
    old = {"step": jnp.int32(3), "w": jnp.ones(2)}
    new = {"step": jnp.int32(4), "w": jnp.full(2, jnp.nan)}
    state, m = loop.guard_nonfinite(old, new, {"loss": jnp.nan, "grad_norm": jnp.float32(1.0)})
    assert int(state["step"]) == 4 and np.array_equal(state["w"], np.ones(2))
    assert float(m["nonfinite"]) == 1.0
    state, m = loop.guard_nonfinite(old, dict(new, w=jnp.zeros(2)),
                                    {"loss": jnp.float32(1.0), "grad_norm": jnp.float32(2.0)})
    assert np.array_equal(state["w"], np.zeros(2)) and float(m["nonfinite"]) == 0.0


def _nan_at_step(monkeypatch, module, bad_step: int):
    """Patches the stage's step so that the batch of `bad_step` (0-based) is all NaN."""
    make = module.make_train_step if module is finetune else module.make_pretrain_step

    def patched(*args, **kw):
        step_fn = make(*args, **kw)

        def f(state, batch):
            bad = state["step"] == bad_step
            return step_fn(state, {k: (jnp.where(bad, jnp.nan, v) if v.dtype == jnp.float32
                                       else v) for k, v in batch.items()})
        return f

    name = "make_train_step" if module is finetune else "make_pretrain_step"
    monkeypatch.setattr(module, name, patched)


@pytest.mark.parametrize("stage", ["finetune", "pretrain"])
def test_nonfinite_stop_names_step_terms_and_batch(stage, tiny_data_dir, tmp_path, monkeypatch):
    module, make_config = STAGES[stage]
    _nan_at_step(monkeypatch, module, bad_step=4)
    cfg = make_config(tiny_data_dir, **{"checkpoint_every_steps": 2, "log_every_steps": 3})
    with pytest.raises(loop.NonFiniteError, match=r"step 5: .*loss.*batch record ids \[\d+"):
        module.train(cfg, str(tmp_path / "w"))
    steps = sorted(int(n) for n in os.listdir(tmp_path / "w" / "checkpoints") if n.isdigit())
    assert steps[-1] == 4  # the last good checkpoint; nothing written after the bad step
    leaves = jax.tree.leaves(load_state_tree(tmp_path / "w"))
    assert all(np.all(np.isfinite(x)) for x in leaves if np.issubdtype(x.dtype, np.floating))


def test_nonfinite_skip_goes_on_with_finite_state(tiny_data_dir, tmp_path, monkeypatch, caplog):
    _nan_at_step(monkeypatch, finetune, bad_step=2)
    caplog.set_level("WARNING")
    cfg = tiny_finetune_config(tiny_data_dir, nonfinite="skip")
    finetune.train(cfg, str(tmp_path / "w"))
    assert any("skipped: non-finite loss or gradient at step 3" in r.getMessage()
               for r in caplog.records)
    tree = load_state_tree(tmp_path / "w")
    assert int(tree["step"]) == json.loads((tmp_path / "w" / "eval_results.json").read_text())["step"]
    rows = [json.loads(line) for line in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert sum(r["nonfinite"] for r in train_rows) == 1
    assert all(np.isfinite(r["loss"]) for r in train_rows)  # means over the finite steps only
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(tree["params"]))


# ---------------------------------------------------------------------------- config validation
@pytest.mark.parametrize("override,match", [
    ({"data.num_instances": 1}, r"data.num_instances=1: the batch-hard triplet needs K >= 2"),
    ({"data.image_size": (60, 32)}, r"data.image_size=\(60, 32\): each side"),
    ({"optim.name": "lamb"}, r"optim.name='lamb': expected one of"),
    ({"eval.neck_feat": "middle"}, r"eval.neck_feat='middle'"),
    ({"data.num_ids_per_batch": 9}, r"data.num_ids_per_batch=9: larger than the 8 identities"),
    ({"data.num_ids_per_batch": 3}, r"train batch \(P x K\) = 12 is not divisible by the 8"),
    ({"nonfinite": "ignore"}, r"nonfinite='ignore'"),
])
def test_finetune_config_errors(override, match, tiny_data_dir, tmp_path):
    with pytest.raises(ValueError, match=match):
        finetune.train(tiny_finetune_config(tiny_data_dir, **override), str(tmp_path / "w"))
    assert not (tmp_path / "w" / "checkpoints").exists()


@pytest.mark.parametrize("override,match", [
    ({"data.local_size": (72, 32)}, r"data.local_size=\(72, 32\): local crops larger"),
    ({"data.global_scale": (0.5, 0.4)}, r"data.global_scale=\(0.5, 0.4\): expected \(min, max\)"),
    ({"data.crop_ratio": (0.7, 0.5)}, r"data.crop_ratio=\(0.7, 0.5\): expected a w/h range"),
    ({"data.sensor_jitter.min_resolution": 0.0},
     r"data.sensor_jitter.min_resolution=0.0: expected a size factor in \(0, 1\]"),
    ({"data.background_swap.margin": 0.5},
     r"data.background_swap.margin=0.5: expected a fraction of the width per side"),
    ({"head.patch_out_dim": 32}, r"a shared head needs patch_out_dim == out_dim \(64\)"),
    ({"data.batch_size": 4096}, r"data.batch_size=4096: larger than the \d+ pretraining images"),
    ({"mask.ratio": 0.9}, r"mask.ratio=\(0.9, 0.2\)"),
    ({"data.color_jitter.channel_gain": -0.1},
     r"data.color_jitter.channel_gain=-0.1: expected a value in \[0.0, 1.0\]"),
])
def test_pretrain_config_errors(override, match, tiny_data_dir, tmp_path):
    with pytest.raises(ValueError, match=match):
        pretrain.train(tiny_pretrain_config(tiny_data_dir, **override), str(tmp_path / "w"))


def test_unknown_override_key_names_it_and_the_valid_keys(tmp_path):
    r = subprocess.run([sys.executable, "-m", "personvit_jax.main",
                        "--config=configs/finetune.py:synthetic", f"--workdir={tmp_path}",
                        "--config.optim.base_lrr=1"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2
    assert "config has no key 'optim.base_lrr'" in r.stderr and "'base_lr'" in r.stderr


def test_workdir_with_other_shapes_is_refused_and_kept(tiny_data_dir, tmp_path):
    work = tmp_path / "w"
    finetune.train(tiny_finetune_config(tiny_data_dir, **{"optim.epochs": 1}), str(work))
    before = (work / "config.json").read_text()
    with pytest.raises(ValueError, match=r"model.depth: saved 2, now 3"):
        finetune.train(tiny_finetune_config(tiny_data_dir, **{"model.depth": 3}), str(work))
    assert (work / "config.json").read_text() == before  # nothing overwritten
    # Without the saved config, the checkpoint itself names the arrays that do not fit.
    os.remove(work / "config.json")
    with pytest.raises(checkpointing.IncompatibleCheckpointError,
                       match=r"params/backbone/blocks_2/.*only in the model"):
        finetune.train(tiny_finetune_config(tiny_data_dir, **{"model.depth": 3}), str(work))


def test_init_from_says_classifier_is_fresh(tiny_data_dir, tmp_path, caplog):
    src = tmp_path / "src"
    finetune.train(tiny_finetune_config(tiny_data_dir, **{"optim.epochs": 1}), str(src))
    caplog.set_level("INFO")
    other = dict(TINY_SYNTHETIC, seed=1, num_train_ids=6)
    data2 = tmp_path / "data2"
    cfg = tiny_finetune_config(str(data2), **{"optim.epochs": 1, "init_from": str(src),
                                              "data.synthetic": other})
    finetune.train(cfg, str(tmp_path / "dst"))
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "ID classifier start fresh for the 6 ids" in msg
    assert "the checkpoint's classifier had 8 ids" in msg


def test_saved_config_round_trip_is_accepted(tiny_data_dir, tmp_path):
    cfg = tiny_finetune_config(tiny_data_dir, **{"optim.epochs": 1})
    work = tmp_path / "w"
    finetune.train(cfg, str(work))
    saved = json.loads((work / "config.json").read_text())
    validation.check_workdir_config(cfg, str(work), has_checkpoint=True)  # same config: fine
    assert saved["model"]["depth"] == 2


def test_missing_data_and_bad_checkpoint_paths_are_one_line_before_any_work(tmp_path):
    from personvit_jax.config_args import load_config
    from personvit_jax.stages import evaluate

    weights = tmp_path / "weights.npz"
    weights.write_bytes(b"not a checkpoint folder")
    nodata = tmp_path / "nodata"

    def evaluate_config(checkpoint):
        c = load_config("evaluate")
        c.checkpoint = str(checkpoint)
        return c

    cases = [
        (lambda w: finetune.train(tiny_finetune_config(str(nodata), **{"data.name": "market1501"}),
                                  w), ["'market1501' is not prepared under data_dir", nodata]),
        (lambda w: finetune.train(tiny_finetune_config(str(nodata), init_from=str(weights)), w),
         [f"checkpoint path {weights} is a file", "tools.convert"]),
        (lambda w: evaluate.evaluate(evaluate_config(weights), w), [f"{weights} is a file"]),
        (lambda w: evaluate.evaluate(evaluate_config(tmp_path / "none"), w),
         [f"checkpoint path {tmp_path / 'none'} does not exist"]),
    ]
    for i, (run, names) in enumerate(cases):
        with pytest.raises(Exception) as failed:
            run(str(tmp_path / f"w{i}"))
        user_error_line(failed.value, *names)
        assert not (tmp_path / f"w{i}" / "checkpoints").exists()


def test_a_resume_with_another_config_keeps_the_earlier_one_and_names_the_changes(tmp_path):
    from personvit_jax.config_args import load_config

    first = load_config("finetune", "synthetic")
    messages = []
    log = lambda msg, *args: messages.append(msg % args)
    work = str(tmp_path / "run")
    validation.prepare_workdir(first, work, True, log=log)
    validation.prepare_workdir(first, work, True, log=log)  # the same config: nothing kept
    assert sorted(os.listdir(work)) == ["config.json"] and not messages
    second = load_config("finetune", "synthetic")
    second.optim.base_lr = 2e-3
    second.eval.flip = True
    validation.prepare_workdir(second, work, True, log=log)
    revisions = [n for n in os.listdir(work) if n != "config.json"]
    assert len(revisions) == 1 and re.fullmatch(r"config\.\d{8}T\d{6}Z\.json", revisions[0])
    assert json.loads(open(os.path.join(work, revisions[0])).read())["optim"]["base_lr"] == 1e-3
    assert json.loads(open(os.path.join(work, "config.json")).read())["optim"]["base_lr"] == 2e-3
    (msg,) = messages
    assert "eval.flip: False -> True; optim.base_lr: 0.001 -> 0.002" in msg and revisions[0] in msg
    third = load_config("finetune", "synthetic")  # back to the first: a second revision
    validation.prepare_workdir(third, work, True, log=log)
    assert len(os.listdir(work)) == 3
