"""The console script: imports the command line inside the Ctrl-C handler.

Importing the CLI takes a noticeable fraction of a second; a Ctrl-C in that time must
end in one line and status 130, not a traceback.
"""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from ae3tools.cli import main as cli_main
    except KeyboardInterrupt:
        sys.stderr.write("ae3tools: interrupted\n")
        sys.exit(130)
    cli_main()
