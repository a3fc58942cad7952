r"""Command-line entry point: parse flags, set up JAX (multi-process when launched so), dispatch
on `config.stage`.

  python -m personvit_jax.main --config=configs/finetune.py:synthetic --workdir=runs/synthetic

Re-running the same command resumes from the latest checkpoint in --workdir.
"""

import importlib.util
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from personvit_jax.training.logging import quiet_library_logs

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/<stage>.py[:args]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, results.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 for multi-process runs (else the "
                                   "cluster environment is auto-detected, if any).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-process).")
flags.mark_flags_as_required(["config", "workdir"])

STAGES = ("finetune", "pretrain", "evaluate")


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
    if config.stage == "finetune":
        from personvit_jax.stages.finetune import train
    elif config.stage == "pretrain":
        from personvit_jax.stages.pretrain import train
    elif config.stage == "evaluate":
        from personvit_jax.stages.evaluate import evaluate as train
    else:
        raise ValueError(f"config.stage={config.stage!r}: expected one of {STAGES}")
    train(config, _WORKDIR.value)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing, with a readable error for `--config.x.y=` overrides of keys that do
    not exist (ml_collections reports those as a bare AttributeError)."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as e:
        msg = _unknown_override(argv)
        if msg is None:
            raise
        print(f"FATAL config error: {msg}", file=sys.stderr)
        raise SystemExit(2) from e


def _unknown_override(argv: list[str]):
    from personvit_jax.validation import check_override_keys

    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if spec is None:
        return None
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_user_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return check_override_keys(module.get_config(arg or None), argv)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
