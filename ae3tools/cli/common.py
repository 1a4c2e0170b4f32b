"""What every command shares: the typer app, consoles, output helpers, option types."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import typer
from rich.console import Console

from ae3tools import __version__
from ae3tools.findings import Finding, Severity

# Piped output is read by people in CI logs and by grep: do not wrap it at 80 columns.
_PIPE_WIDTH = 160
out = Console(highlight=False, width=None if sys.stdout.isatty() else _PIPE_WIDTH)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else _PIPE_WIDTH)

app = typer.Typer(
    help="Build, check, bundle and flash OpenMV AE3 firmware artifacts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

JsonOption = typer.Option(False, "--json", help="Print the result as one JSON object.")
ForceOption = typer.Option(False, "--force", "-f", help="Overwrite an existing output file.")


def _version(value: bool) -> None:
    if value:
        out.print(f"ae3tools {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Build, check, bundle and flash OpenMV AE3 firmware artifacts."""


# ----------------------------------------------------------------------------- output


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


def finding_rows(findings: Sequence[Finding]) -> dict[str, list[dict[str, str]]]:
    return {
        "errors": [f.as_dict() for f in findings if f.severity is Severity.ERROR],
        "warnings": [f.as_dict() for f in findings if f.severity is Severity.WARNING],
        "notes": [f.as_dict() for f in findings if f.severity is Severity.INFO],
    }


STATUS_MARKUP = {"ok": "[green]ok[/]", "warning": "[yellow]warning[/]", "error": "[red]ERROR[/]"}

_STYLE = {Severity.ERROR: "red", Severity.WARNING: "yellow", Severity.INFO: "dim"}


def print_findings(findings: Sequence[Finding], prefix: str = "") -> None:
    for finding in findings:
        out.print(
            f"{prefix}{finding}", style=_STYLE[finding.severity], markup=False, soft_wrap=True
        )


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"ae3tools: error: {message}", markup=False, soft_wrap=True)
    raise typer.Exit(code)
