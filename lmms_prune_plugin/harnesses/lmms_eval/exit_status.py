"""A failed ``pruned_vlm`` run ends the ``lmms-eval`` command with a non-zero exit status.

lmms-eval's ``cli_evaluate`` catches every exception of an evaluation, logs "Error during
evaluation" and exits 0 (unless ``--verbosity DEBUG``), so a CI job that prunes with a bad
argument would be green with no results. lmms-eval offers no setting for this. When one of our
calls fails while ``cli_evaluate`` is running, the process is made to exit with status 1 once
lmms-eval has finished; everywhere else (Python callers, tests) the exception is all there is.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from loguru import logger

EXIT_STATUS = 1
_CLI = ("lmms_eval/__main__.py", "cli_evaluate")
_registered = False


def inside_lmms_eval_cli() -> bool:
    """Whether lmms-eval's ``cli_evaluate`` (which swallows our exceptions) is on the stack."""
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == _CLI[1] and code.co_filename.replace(os.sep, "/").endswith(_CLI[0]):
            return True
        frame = frame.f_back
    return False


def _exit_with_failure() -> None:
    logger.error(
        f"lmms-prune: pruned_vlm failed (see the error above); lmms-eval's CLI exits 0 after a "
        f"model error, so this process exits {EXIT_STATUS}"
    )
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(EXIT_STATUS)  # an exit handler cannot set the status any other way


@contextmanager
def exit_nonzero_on_failure() -> Iterator[None]:
    """Re-raise any exception; inside lmms-eval's CLI, also make the process exit non-zero."""
    global _registered
    try:
        yield
    except BaseException as err:
        if not isinstance(err, KeyboardInterrupt | SystemExit) and not _registered:
            if inside_lmms_eval_cli():
                atexit.register(_exit_with_failure)
                _registered = True
        raise


def check_unique_keys(arg_string: str) -> None:
    """``budget=2,budget=3``: lmms-eval keeps the last one silently; name both instead."""
    from lmms_eval.utils import _smart_comma_split

    if not isinstance(arg_string, str):
        return
    seen: dict[str, str] = {}
    for part in _smart_comma_split(arg_string.strip()) if arg_string.strip() else []:
        k, _, v = part.partition("=")
        k = k.strip()
        if k in seen:
            raise ValueError(
                f"{k} is given twice in model_args ({k}={seen[k]} and {k}={v}); lmms-eval would "
                "silently keep the last: give it once"
            )
        seen[k] = v
