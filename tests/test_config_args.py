"""config_args: loading configs/<name>.py from Python and parsing its get_config(arg)."""

import pytest

from personvit_jax.config_args import load_config, parse_config_arg


def test_load_config_is_the_command_lines_config():
    c = load_config("finetune", "synthetic")
    assert (c.stage, c.data.name, c.model.name, c.optim.epochs) == ("finetune", "synthetic",
                                                                     "vit_tiny", 30)
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
