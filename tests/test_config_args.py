"""config_args: loading configs/<name>.py from Python and parsing its get_config(arg)."""

import json
import os
import subprocess
import sys

import pytest

from personvit_jax.config_args import load_config, parse_config_arg


def test_load_config_is_the_command_lines_config():
    c = load_config("finetune", "synthetic")
    assert (c.stage, c.data.name, c.model.name, c.optim.epochs) == ("finetune", "synthetic",
                                                                     "vit_tiny", 40)
    e = load_config("evaluate", "dataset=reid_folder")
    assert (e.stage, e.data.name) == ("evaluate", "reid_folder")
    assert load_config("pretrain").data.name == "unlabeled_folder"  # no arg: the defaults


def test_load_config_names_what_exists():
    with pytest.raises(FileNotFoundError, match=r"configs/finetun\.py does not exist.*"
                                                r"\['evaluate', 'finetune', 'pretrain', 'usl'\]"):
        load_config("finetun")
    with pytest.raises(ValueError, match="configs/finetune.py: unknown config argument 'epochs=3'"):
        load_config("finetune", "epochs=3")


def test_parse_config_arg_flags_and_values():
    defaults = {"dataset": "market1501", "synthetic": False}
    assert parse_config_arg("synthetic,dataset=msmt17", defaults, "x.py") == {
        "dataset": "msmt17", "synthetic": True}
    with pytest.raises(ValueError, match="accepted: dataset=..., synthetic"):
        parse_config_arg("dataset", defaults, "x.py")


def test_configs_by_name_from_anywhere_and_a_users_file_wins(tmp_path, monkeypatch):
    """`--config=finetune.py:synthetic` where no such file is: the packaged config (what an
    installed package's user types); a config file of the user's own of that name wins."""
    from personvit_jax.config_args import CONFIGS_DIR, config_path, resolve_config_spec

    monkeypatch.chdir(tmp_path)
    packaged = os.path.join(CONFIGS_DIR, "finetune.py")
    for name in ("finetune", "finetune.py", "configs/finetune.py"):
        assert config_path(name) == packaged
    assert resolve_config_spec("usl.py:synthetic,uda") == os.path.join(CONFIGS_DIR,
                                                                       "usl.py:synthetic,uda")
    assert load_config("finetune.py", "synthetic").data.name == "synthetic"
    own = tmp_path / "finetune.py"
    own.write_text("import ml_collections\n\ndef get_config(arg=None):\n"
                   "    return ml_collections.ConfigDict({'stage': 'mine'})\n")
    assert config_path("finetune.py") == str(own)
    assert load_config("finetune.py").stage == "mine"
    with pytest.raises(FileNotFoundError, match="nosuch.py does not exist.*packaged configs"):
        load_config("nosuch.py")


def test_trainer_takes_a_packaged_config_by_name_outside_the_checkout(tiny_data_dir, tmp_path):
    from conftest import TINY_SYNTHETIC

    over = {"data.data_dir": tiny_data_dir, "data.image_size": "(64,32)",
            "data.num_ids_per_batch": 4, "data.pad": 4, "model.width": 64, "model.depth": 2,
            "model.num_heads": 2, "model.patch_size": 8, "model.patch_stride": 8,
            "model.pos_grid": "(8,4)", "eval.batch_size": 32, "optim.epochs": 0,
            "data.synthetic.images_per_id": "(6,10)",
            **{f"data.synthetic.{k}": v for k, v in TINY_SYNTHETIC.items()
               if k != "images_per_id"}}
    cmd = [sys.executable, "-m", "personvit_jax.main", "--config=finetune.py:synthetic",
           "--workdir=w"] + [f"--config.{k}={v}" for k, v in over.items()]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((tmp_path / "w" / "eval_results.json").read_text())["step"] == 0
    bad = subprocess.run(cmd[:3] + ["--config=finetun.py", "--workdir=w2"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith(
        "error: ") and "packaged configs" in bad.stderr


def test_keys_a_combination_would_ignore_are_refused():
    from personvit_jax import validation

    c = load_config("finetune", "synthetic")  # adamw
    validation.check_finetune_config(c)
    c.optim.weight_decay_bias = 1e-4
    with pytest.raises(ValueError, match="optim.weight_decay_bias=0.0001.*adamw never decays"):
        validation.check_finetune_config(c)
    u = load_config("usl", "synthetic")  # StepLR
    validation.check_usl_config(u)
    u.optim.warmup_epochs = 5
    with pytest.raises(ValueError, match="optim.warmup_epochs=5.*'step' has no warm-up"):
        validation.check_usl_config(u)
