"""Command lines: one convention (absl flags), `--help` on each, and user errors as one line
`error: ...` with exit status 2 and no traceback (an unexpected exception keeps its traceback)."""

import subprocess
import sys

import pytest

from conftest import REPO
from personvit_jax import cli
from personvit_jax.data import prepare
from personvit_jax.synthetic import __main__ as synthetic
from personvit_jax.tools import convert, export, extract

TOOLS = {"convert": (convert, "--input"), "export": (export, "--checkpoint"),
         "extract": (extract, "--images"), "prepare": (prepare, "--dataset"),
         "synthetic": (synthetic, "--num_train_ids")}


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_help_lists_the_flags(name, capsys):
    module, flag = TOOLS[name]
    assert module.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m personvit_jax.") and flag in out


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_bad_flags_are_one_line(name, capsys):
    module, _ = TOOLS[name]
    assert module.main(["--no_such_flag=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_user_error_of_a_tool_is_one_line(tmp_path, capsys):
    missing = tmp_path / "nothing.pth"
    assert convert.main([f"--input={missing}", f"--output={tmp_path / 'o'}"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: weight file {missing} does not exist\n"


def test_only_our_own_anticipated_errors_are_one_line():
    import numpy as np

    from personvit_jax import validation

    with pytest.raises(ValueError) as ours:
        validation._fail("x", 1, "expected 2")  # raised by the package: a user error
    assert cli.is_user_error(ours.value)

    with pytest.raises(ValueError) as lib:
        np.zeros(3).reshape(2, 2)  # a library's ValueError: keeps its traceback
    assert not cli.is_user_error(lib.value)
    with pytest.raises(RuntimeError) as other:
        raise RuntimeError("a bug")
    assert not cli.is_user_error(other.value)


def _main(*args, **kw):
    return subprocess.run([sys.executable, "-m", "personvit_jax.main", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300, **kw)


def test_trainer_helpfull_and_one_line_errors(tmp_path):
    r = _main("--helpfull")
    assert "--workdir" in r.stdout and "--config" in r.stdout  # absl exits 1 after help
    r = _main("--config=configs/finetune.py:synthetic", f"--workdir={tmp_path / 'w'}",
              "--config.data.num_instances=1")
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last == ("error: config.data.num_instances=1: the batch-hard triplet needs K >= 2 "
                    "images per identity") and "Traceback" not in r.stderr
    r = _main("--config=configs/finetune.py:datset=x", f"--workdir={tmp_path / 'w'}")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "unknown config argument 'datset=x'" in r.stderr.strip().splitlines()[-1]
