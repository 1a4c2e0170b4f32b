"""The `ae3tools` command line: parse arguments, call the library, present results.

Each module below registers its commands on the shared app; this one runs it and is
the one place that turns a failure into a line (or, with --json, an object) and an
exit status.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import typer

from ae3tools.cli import artifacts as _artifacts  # noqa: F401  (registers commands)
from ae3tools.cli import device as _device  # noqa: F401
from ae3tools.cli import release as _release  # noqa: F401
from ae3tools.cli import virtual as _virtual  # noqa: F401
from ae3tools.cli.common import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    app,
    emit_json,
    envelope,
    err,
)
from ae3tools.findings import Ae3Error

# Set by main: --json-progress streams one JSON object per line, and an error ends the
# stream as its last event, a report, on one line too.
_streaming = False


def _fail(
    message: str, code: int, *, hint: str = "", as_json: bool, details: dict[str, Any] | None
) -> None:
    failure = {"hint": hint or None, **(details or {})}
    if as_json and _streaming:
        event = {"event": "report", "time": round(time.time(), 3)}
        sys.stdout.write(json.dumps({**event, **envelope(failure, message, code)}) + "\n")
        sys.stdout.flush()
    elif as_json:
        emit_json(failure, message, code)
    err.print(f"ae3tools: error: {message}", soft_wrap=True)
    if hint:
        err.print(hint, soft_wrap=True)
    sys.exit(code)


def _command_path(command: Any, args: Sequence[str]) -> list[str]:
    """The command names at the start of `args` (`romfs build`), for a usage hint."""
    path: list[str] = []
    for arg in args:
        commands = getattr(command, "commands", None)
        if not commands or arg not in commands:
            break
        path.append(arg)
        command = commands[arg]
    return path


def _is_click_error(exc: BaseException) -> bool:
    """click's usage errors (typer re-exports or vendors click, by version)."""
    return hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: every failure ends in one line and an exit status.

    With --json, stdout carries exactly one JSON object, errors included.
    """
    global _streaming
    args = list(argv) if argv is not None else sys.argv[1:]
    _streaming = "--json-progress" in args
    as_json = "--json" in args or _streaming
    try:
        command = typer.main.get_command(app)
        result = command.main(args=args, prog_name="ae3tools", standalone_mode=False)
    except Ae3Error as exc:
        _fail(str(exc), exc.exit_code, hint=exc.hint, as_json=as_json, details=exc.details)
    except (KeyboardInterrupt, typer.Abort):
        _fail("interrupted", EXIT_INTERRUPTED, as_json=as_json, details=None)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        _fail(f"{where}{exc.strerror or exc}", 1, as_json=as_json, details=None)
    except Exception as exc:  # click's usage errors, and bugs
        if _is_click_error(exc):
            message = exc.format_message()  # type: ignore[attr-defined]
            if not message:  # no arguments: the help was shown, which says it all
                sys.exit(exc.exit_code)  # type: ignore[attr-defined]
            hint = f"Try '{' '.join(['ae3tools', *_command_path(command, args), '--help'])}'."
            _fail(message, exc.exit_code, hint=hint, as_json=as_json, details=None)  # type: ignore[attr-defined]
        if os.environ.get("AE3TOOLS_DEBUG"):
            raise
        _fail(
            f"internal error: {type(exc).__name__}: {exc} "
            "(set AE3TOOLS_DEBUG=1 for a traceback, and please report it)",
            EXIT_INTERNAL,
            as_json=as_json,
            details=None,
        )
    if result == EXIT_INTERRUPTED:  # typer turns a KeyboardInterrupt into Exit(130)
        _fail("interrupted", EXIT_INTERRUPTED, as_json=as_json, details=None)
    sys.exit(result if isinstance(result, int) else 0)
