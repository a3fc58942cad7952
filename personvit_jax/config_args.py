"""The configs/*.py files: loading them from Python, parsing their `get_config(arg)` string
('key=value,key=value,flag'), and the blocks every stage's config shares."""

from __future__ import annotations

import importlib.util
import os

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def configs_dir() -> str:
    """Where the configs/*.py files are: the copy an installed package ships
    (personvit_jax/configs/, mapped from the top-level configs/ by pyproject.toml's
    package-dir), else the checkout's top-level configs/ (a source tree or `pip install -e`)."""
    installed = os.path.join(PACKAGE_DIR, "configs")
    if os.path.isfile(os.path.join(installed, "finetune.py")):
        return installed
    return os.path.join(os.path.dirname(PACKAGE_DIR), "configs")


CONFIGS_DIR = configs_dir()


def config_path(name: str) -> str:
    """The config file `name` names: a path to an existing .py file as given (a user's own
    config wins), else the packaged config of that name (`finetune`, `finetune.py` and
    `configs/finetune.py` all mean CONFIGS_DIR/finetune.py), so the README's commands work
    from the installed package anywhere. A name with neither gives its path as typed (the
    loader then lists the known configs)."""
    given = os.path.abspath(os.path.expanduser(name))
    if name.endswith(".py") and os.path.isfile(given):
        return given
    packaged = os.path.join(CONFIGS_DIR, os.path.basename(name).removesuffix(".py") + ".py")
    if os.path.isfile(packaged):
        return packaged
    return given if name.endswith(".py") else packaged


def resolve_config_spec(spec: str) -> str:
    """'path/to/config.py[:arg]' (the --config flag's value) with the path made `config_path`'s:
    `--config=finetune.py:synthetic` works wherever the user stands."""
    path, colon, arg = spec.partition(":")
    return config_path(path) + colon + arg


def load_config_module(name: str):
    """A config file as a module (configs/ is not a package); `name` as in `config_path`."""
    path = config_path(name)
    if not os.path.isfile(path):
        known = sorted(f[:-3] for f in os.listdir(CONFIGS_DIR) if f.endswith(".py"))
        raise FileNotFoundError(f"{path} does not exist: expected a config file or one of the "
                                f"packaged configs {known} (in {CONFIGS_DIR})")
    stem = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(f"personvit_configs_{stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config(name: str, arg: str | None = None):
    """THE config loader: the config `--config=configs/<name>.py:<arg>` starts from, e.g.
    `load_config("finetune", "synthetic")` (or a path: `load_config("configs/finetune.py")`);
    change fields as `--config.x.y=` would, then pass it to the stage
    (`personvit_jax.stages.<stage>`). The command line (`config_flags`) reads the same files."""
    return load_config_module(name).get_config(arg)


def load_config_spec(spec: str):
    """'path/to/config.py[:arg]' (the --config flag's value) -> its config."""
    path, _, arg = spec.partition(":")
    return load_config(path, arg or None)


def parse_config_arg(arg: str | None, defaults: dict, source: str) -> dict:
    """Returns `defaults` updated from `arg`. Keys with a boolean default are flags (given
    bare, e.g. `synthetic`); the others need a value. Anything else raises a ValueError naming
    `source` (the config file) and the accepted keys."""
    out = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, eq, value = item.partition("=")
        known = key in defaults
        is_flag = known and isinstance(defaults[key], bool)
        if known and is_flag and not eq:
            out[key] = True
        elif known and not is_flag and value:
            out[key] = value
        else:
            accepted = ", ".join(k if isinstance(v, bool) else f"{k}=..." for k, v in defaults.items())
            raise ValueError(f"{source}: unknown config argument {item!r}; accepted: {accepted}")
    return out


def mesh_config():
    """The `mesh` block every stage's config shares. Batches are split over data x fsdp devices;
    parameters and optimizer state (student, teacher) are replicated over `data` and split over
    `fsdp` (training/sharding.py). -1 = the devices the other axis leaves."""
    import ml_collections

    m = ml_collections.ConfigDict()
    m.data = -1  # devices on the `data` axis
    m.fsdp = 1  # devices on the `fsdp` axis (1 = plain data parallelism)
    m.fsdp_min_size = 2 ** 16  # arrays with fewer elements stay replicated
    return m


def add_training_bookkeeping(c) -> None:
    """Logging, checkpointing and failure-handling fields shared by the training stages."""
    c.log_every_steps = 50  # metrics to TensorBoard / metrics.jsonl / progress line
    c.checkpoint_every_steps = 1000  # Orbax save interval (a final save always happens)
    c.keep_checkpoints = 3  # keep the last N checkpoints
    # A NaN/Inf loss or gradient: 'stop' (error naming the step, loss terms and batch ids; the
    # state is never updated with it and no checkpoint follows it) or 'skip' the step and go on.
    c.nonfinite = "stop"


def cpu_sized_reid(c) -> None:
    """The CPU-sized ReID run of the `synthetic` config argument (finetune, usl): 128x64 inputs
    (the synthetic images' own size), a 6-block ViT-Tiny with an 8x4 patch grid, batch 8 x 4.
    Trained from scratch, so AdamW (the SGD recipes are for fine-tuning a pretrained backbone
    and barely move here)."""
    c.data.image_size = (128, 64)
    c.data.num_ids_per_batch = 8
    c.data.num_instances = 4
    c.data.pad = 5
    c.model.name = "vit_tiny"
    c.model.depth = 6
    c.model.pos_grid = (8, 4)
    c.optim.name = "adamw"
    c.optim.base_lr = 1e-3
    c.optim.weight_decay = 0.05
    c.optim.weight_decay_bias = 0.0  # AdamW decays matrices only
    c.optim.bias_lr_factor = 1.0
