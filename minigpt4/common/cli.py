"""How every entry point ends: a problem with the user's input in one line, a bug with its traceback.

Each script's ``if __name__ == "__main__":`` block calls ``run_main(main, "script.py")``. What
counts as the user's problem, and so is printed as ``script.py: <message>`` with exit status 1:

* the project's own errors (:class:`minigpt4.common.errors.MiniGPT4Error` and its subclasses:
  config, names, devices, weights, shards, inputs); their messages name the file, key or value;
* a file that is missing, unreadable, a folder where a file was expected, or the reverse
  (``FileNotFoundError``, ``PermissionError``, ``IsADirectoryError``, ``NotADirectoryError``,
  ``FileExistsError``), told with the path the operating system names.

Everything else is a bug and keeps its traceback. ``--debug`` (every entry point has it) or
``MINIGPT4_DEBUG=1`` shows the traceback of every error. This module imports nothing heavy, so
that the scripts can build their parsers from it and answer ``--help`` at once.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from minigpt4.common.errors import MiniGPT4Error

DEBUG_ENV = "MINIGPT4_DEBUG"
EXIT_USER_ERROR = 1
FILE_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


def add_debug_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"show the full traceback of any error, not only of bugs (or set {DEBUG_ENV}=1)",
    )


def add_model_arguments(parser: argparse.ArgumentParser, default_device: str) -> None:
    """``--cfg-path``, ``--options``, ``--device``, ``--patch-generation`` and ``--debug``: the
    options of every command that builds a ``Chat`` from an eval config."""
    parser.add_argument("--cfg-path", required=True, help="the eval YAML config (eval_configs/...)")
    parser.add_argument(
        "--options",
        nargs="+",
        help="overrides merged last, as key=value (or key value) pairs: model.ckpt=... model.low_resource=False",
    )
    parser.add_argument(
        "--device",
        default=default_device,
        help=f"cuda, npu, cpu or auto, optionally with an index such as cuda:1 (default: {default_device})",
    )
    parser.add_argument(
        "--patch-generation",
        action="store_true",
        help="apply transformers_modify, the Ascend port's generation edits (always on with --device npu)",
    )
    add_debug_argument(parser)


def debug_requested(argv: Sequence[str] | None = None) -> bool:
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def user_error_message(error: BaseException) -> str | None:
    """The one line an entry point prints for ``error``, or None when ``error`` is a bug."""
    if isinstance(error, MiniGPT4Error):
        text = str(error)
    elif isinstance(error, FILE_ERRORS):
        # str(OSError) reads "[Errno 2] No such file or directory: 'x'"; the errno adds nothing.
        text = f"{error.filename}: {error.strerror}" if error.filename and error.strerror else str(error)
    else:
        return None
    # Messages are written as one line; a wrapped library message must not become several.
    return " ".join(line.strip() for line in text.splitlines() if line.strip()) or type(error).__name__


def run_main(main: Callable[[], Any], prog: str, cleanup: Callable[[], None] | None = None) -> None:
    """Calls ``main()`` and exits with its status (an int return is the status; None is 0).
    A user's error ends as one line on stderr and status 1; ``cleanup`` runs in any case."""
    try:
        status = main()
    except Exception as error:
        message = user_error_message(error)
        if message is None or debug_requested():
            raise
        sys.exit(f"{prog}: {message}")
    finally:
        if cleanup is not None:
            cleanup()
    sys.exit(status if isinstance(status, int) else 0)
