"""The `ae3tools` command line: parse arguments, call the library, present results.

Each module below registers its commands on the shared app; this one runs it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from ae3tools.cli import artifacts as _artifacts  # noqa: F401  (registers commands)
from ae3tools.cli import device as _device  # noqa: F401
from ae3tools.cli import release as _release  # noqa: F401
from ae3tools.cli.common import app, err
from ae3tools.findings import Ae3Error

# ----------------------------------------------------------------------------- entry


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: every failure ends in one line and an exit status."""
    try:
        app(args=list(argv) if argv is not None else None, prog_name="ae3tools")
    except Ae3Error as exc:
        err.print(f"ae3tools: error: {exc}", markup=False, soft_wrap=True)
        if exc.hint:
            err.print(exc.hint, markup=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("ae3tools: interrupted", markup=False)
        sys.exit(130)
    except OSError as exc:
        err.print(f"ae3tools: error: {exc}", markup=False, soft_wrap=True)
        sys.exit(1)
    except Exception as exc:  # a bug: still one line, with a way to see more
        if os.environ.get("AE3TOOLS_DEBUG"):
            raise
        err.print(
            f"ae3tools: internal error: {type(exc).__name__}: {exc} "
            "(set AE3TOOLS_DEBUG=1 for a traceback, and please report it)",
            markup=False,
            soft_wrap=True,
        )
        sys.exit(3)
