r"""Command-line entry point: parse flags, set up JAX (multi-process when launched so), dispatch
on `config.stage`.

  python -m personvit_jax.main --config=configs/finetune.py:synthetic --workdir=runs/synthetic

Re-running the same command resumes from the latest checkpoint in --workdir.
"""

import importlib
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from personvit_jax import cli
from personvit_jax.config_args import CONFIGS_DIR, load_config_spec, resolve_config_spec
from personvit_jax.training.logging import quiet_library_logs
from personvit_jax.validation import check_override_keys

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, f"Config file (configs/<stage>.py[:args]); a name of the packaged configs "
    f"(finetune.py:synthetic, pretrain.py, usl.py, evaluate.py) works anywhere: {CONFIGS_DIR}",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, results.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 for multi-process runs (else the "
                                   "cluster environment is auto-detected, if any).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-process).")
flags.mark_flags_as_required(["config", "workdir"])

STAGES = {"finetune": "train", "pretrain": "train", "usl": "train",
          "evaluate": "evaluate"}  # module: function


def _setup_jax() -> None:
    import jax

    if _COORDINATOR.value or _NUM_PROCESSES.value:
        # CPU collectives across processes (only used by the CPU backend; harmless elsewhere).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                                   num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
    elif any(v in os.environ for v in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE",
                                        "TPU_WORKER_HOSTNAMES", "JAX_COORDINATOR_ADDRESS")):
        jax.distributed.initialize()  # cluster auto-detection (SLURM, Open MPI, TPU pods)
    logging.info("JAX %s: process %d/%d, %d local / %d global devices (%s)", jax.__version__,
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count(), jax.default_backend())


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    quiet_library_logs()
    _setup_jax()
    try:
        if config.stage not in STAGES:
            raise ValueError(f"config.stage={config.stage!r}: expected one of {sorted(STAGES)}")
        stage = importlib.import_module(f"personvit_jax.stages.{config.stage}")
        getattr(stage, STAGES[config.stage])(config, _WORKDIR.value)
    except Exception as e:  # one line for anticipated errors; a traceback for the rest
        sys.exit(cli.report(e))


def _parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with one-line errors: a bad flag, a config file that refuses its
    argument, or a `--config.x.y=` override of a key that does not exist (ml_collections
    reports those as a bare AttributeError). `--config=NAME.py` with no such file here means
    the packaged config of that name."""
    argv = [f"--config={resolve_config_spec(a.split('=', 1)[1])}" if a.startswith("--config=")
            else a for a in argv]
    spec = _config_spec(argv)
    if spec is not None and not os.path.isfile(spec.partition(":")[0]):
        try:  # one line naming the file and the packaged configs (absl would trace back)
            load_config_spec(spec)
        except Exception as e:  # noqa: BLE001 (report re-raises unexpected ones)
            raise SystemExit(cli.report(e)) from e
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        spec = _config_spec(argv)
        if spec is not None and "Error whilst parsing config file" in str(e):
            try:  # ml_collections folds the config file's own error into a traceback text
                load_config_spec(spec)
            except Exception as inner:  # noqa: BLE001 (report re-raises unexpected ones)
                raise SystemExit(cli.report(inner)) from e
        print(f"error: {cli.one_line(e)} (see --helpfull)", file=sys.stderr)
        raise SystemExit(cli.EXIT_USER_ERROR) from e
    except (AttributeError, KeyError) as e:
        msg = _unknown_override(argv)
        if msg is None:
            raise
        print(f"error: {msg}", file=sys.stderr)
        raise SystemExit(cli.EXIT_USER_ERROR) from e
    except Exception as e:  # e.g. the config file's own argument check
        raise SystemExit(cli.report(e)) from e


def _config_spec(argv: list[str]):
    """The value of --config= ('path/to/config.py[:arg]'), or None."""
    return next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)


def _unknown_override(argv: list[str]):
    spec = _config_spec(argv)
    if spec is None:
        return None
    return check_override_keys(load_config_spec(spec), argv)


def console() -> None:
    """`personvit-train` (pyproject.toml's console script) and `python -m personvit_jax.main`.
    The tools need no such wrapper: their `main()` returns the exit status, which the console
    script passes to sys.exit."""
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    console()
