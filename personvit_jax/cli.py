"""The command lines' one convention: absl flags, `--help` on each, user errors as one line.

Every tool defines its flags on its own `flags.FlagValues` (so tools can be imported and their
`main(argv)` called side by side, e.g. from tests) and runs through `run_tool`; the trainer
(`personvit_jax.main`) uses absl's global flags for ml_collections' `--config` and goes through
`user_errors` too.

An anticipated error is an exception of USER_ERRORS raised by this package's own code (a bad
or unknown config value, a missing or malformed dataset, checkpoint or weight file, a refused
output or workdir, a workdir another run holds, a write that failed): it prints one line
`error: <message>` and exits with status 2. Anything else (a bug, a library failure) keeps its traceback; so does everything with
PERSONVIT_TRACEBACK=1 in the environment.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Callable, Optional, Sequence

from absl import flags

from personvit_jax.config_args import CONFIGS_DIR, PACKAGE_DIR
from personvit_jax.files import WriteError
from personvit_jax.workdir import WorkdirInUseError

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
               IsADirectoryError, PermissionError, KeyError, WriteError, WorkdirInUseError)
EXIT_USER_ERROR = 2


def is_user_error(e: BaseException) -> bool:
    """An anticipated error: one of USER_ERRORS raised by our own code (its innermost frame is
    in this package or the config files), not a failure inside a library."""
    if not isinstance(e, USER_ERRORS) or os.environ.get("PERSONVIT_TRACEBACK"):
        return False
    frames = traceback.extract_tb(e.__traceback__)
    if not frames:
        return True
    where = os.path.abspath(frames[-1].filename)
    return where.startswith(PACKAGE_DIR + os.sep) or where.startswith(CONFIGS_DIR + os.sep)


def one_line(e: BaseException) -> str:
    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(str(msg).split())


def report(e: BaseException, stream=None) -> int:
    """Prints `error: ...` for a user error and returns its exit status; re-raises others."""
    if not is_user_error(e):
        raise e
    print(f"error: {one_line(e)}", file=stream or sys.stderr)
    return EXIT_USER_ERROR


def run_tool(prog: str, doc: str, define: Callable[[flags.FlagValues], None],
             run: Callable[[flags.FlagValues], Optional[int]],
             argv: Optional[Sequence[str]] = None) -> int:
    """Parses `argv` (default: sys.argv[1:]) into the flags `define(fv)` declares and calls
    `run(fv)`; returns the exit status (0, `run`'s own, or 2 for a flag or user error). `--help`
    prints `doc` and the flags."""
    fv = flags.FlagValues()
    define(fv)
    flags.DEFINE_boolean("help", False, "Show this help and exit.", flag_values=fv)
    args = list(sys.argv[1:] if argv is None else argv)
    if "--help" in args or "-h" in args:
        print(f"usage: {prog} [flags]\n\n{doc.strip()}\n\nflags:\n"
              f"{fv.get_help(include_special_flags=False)}")
        return 0
    try:
        rest = fv([prog] + args)
    except flags.Error as e:
        print(f"error: {one_line(e)} (see {prog} --help)", file=sys.stderr)
        return EXIT_USER_ERROR
    if len(rest) > 1:
        print(f"error: unexpected arguments {rest[1:]} (see {prog} --help)", file=sys.stderr)
        return EXIT_USER_ERROR
    try:
        return run(fv) or 0
    except BaseException as e:  # noqa: BLE001 (report re-raises what is not a user error)
        return report(e)
