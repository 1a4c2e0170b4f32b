"""What every command shares: the typer app, consoles, output helpers, option types."""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperCommand

from ae3tools import __version__
from ae3tools.findings import Finding, Severity, UsageError

if TYPE_CHECKING:
    from rich.table import Table

# Exit statuses besides 0 and 2 (a usage error, click's own).
EXIT_FAILED = 1  # a check failed, or the camera did
EXIT_INTERNAL = 3  # a bug: said in one line, with AE3TOOLS_DEBUG=1 for the traceback
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM, as shells report SIGINT

# C0 and C1 control characters other than newline and tab: never sent to a terminal. And
# the lone surrogates that stand for a file name's undecodable bytes (PEP 383), which no
# terminal encoding takes: both shown as \xNN, the byte they are.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\udc80-\udcff]")


def printable(text: str) -> str:
    """`text` with every control character shown as \\xNN: a name from an input can then
    neither move the cursor nor clear the screen."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()) & 0xFF:02x}", text)


class LiteralConsole(Console):
    """A console that prints strings literally: no markup, no highlighting, control
    characters escaped. Text from inputs (file names, ROMFS names, release strings) goes
    through it as is; styled output is built from rich Text objects, never markup."""

    def render_str(self, text: str, **kwargs: Any) -> Text:
        kwargs["markup"] = False
        kwargs["highlight"] = False
        kwargs.pop("emoji", None)
        return super().render_str(printable(text), emoji=False, **kwargs)


# Piped output is read by people in CI logs and by grep: do not wrap it at 80 columns,
# unless COLUMNS says how wide.
_PIPE_WIDTH = 160


def _width(stream: Any) -> int | None:
    return None if stream.isatty() or os.environ.get("COLUMNS") else _PIPE_WIDTH


out = LiteralConsole(highlight=False, width=_width(sys.stdout))
err = LiteralConsole(stderr=True, highlight=False, width=_width(sys.stderr))


_Command = TypeVar("_Command", bound=Callable[..., Any])


class Ae3Command(TyperCommand):
    """A command whose usage line names its arguments as their help does (`BUNDLE`,
    `[IMAGE]`, `FILE...`), not in typer's braces (`{BUNDLE}`)."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = param.metavar or str(param.name).upper()
                pieces.append(name if param.required else f"[{name}]")
        return pieces


class Ae3Typer(typer.Typer):
    """ae3tools' command groups: every command an Ae3Command, help as the app's."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(
            no_args_is_help=True,
            pretty_exceptions_enable=False,
            rich_markup_mode="markdown",
            context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
            **settings,
        )

    def command(self, name: str | None = None, **settings: Any) -> Callable[[_Command], _Command]:
        return super().command(name, cls=Ae3Command, **settings)


app = Ae3Typer(
    help="""Build, check, bundle and flash OpenMV AE3 firmware artifacts.

    Exit status: 0 all well (warnings allowed), 1 a check or the camera failed, 2 a
    usage error (a bad option, a missing input, an output that exists), 3 an internal
    error (a bug), 130 interrupted. No camera at hand? Add `--virtual DIR` to a device
    command to rehearse on a virtual AE3 whose memory lives in DIR.

    Example: ae3tools flash firmware_v5.0.0.zip

    Example: ae3tools flash firmware_v5.0.0.zip --virtual my-cam
    """
)

JsonOption = typer.Option(
    False, "--json", help="Print the result (or the error) as one JSON object on stdout."
)
ForceOption = typer.Option(False, "--force", "-f", help="Overwrite an existing output file.")


def completion(choices: Sequence[str]) -> Callable[[str], list[str]]:
    """Shell completion of an option that takes one of `choices`."""

    def complete(incomplete: str) -> list[str]:
        return [choice for choice in choices if choice.startswith(incomplete.lower())]

    return complete


def plural(count: int, one: str, many: str | None = None) -> str:
    """A count with its noun: "1 file", "2 files"."""
    return f"{count} {one if count == 1 else many or one + 's'}"


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
    """The options before any command."""


# ----------------------------------------------------------------------------- values

_SIZE = re.compile(r"(0x[0-9a-f]+|[0-9]+)\s*(k|kib|m|mib)?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "kib": 1024, "m": 1024 * 1024, "mib": 1024 * 1024}


def parse_size(text: str, option: str) -> int:
    """A byte count: 4096, 0x1000, 64K or 3M (K and M are binary: KiB, MiB)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise UsageError(f"{option} {text}: expected a byte count such as 4096, 0x1000, 64K, 3M")
    number = match.group(1)  # "010" is ten: a leading zero is not octal here
    value = int(number, 16) if number.lower().startswith("0x") else int(number, 10)
    return value * _UNITS[(match.group(2) or "").lower()]


# ----------------------------------------------------------------------------- output


_ENVELOPE = ("ok", "error", "exit_code")


def envelope(
    value: dict[str, Any], failure: str | None = None, exit_code: int = EXIT_FAILED
) -> dict[str, Any]:
    """The one envelope of every --json object: `ok` first, and for a failure `error`
    (one line, as the text output says it) and `exit_code`, the status the command
    exits with. The command's own fields follow."""
    body = {key: item for key, item in value.items() if key not in _ENVELOPE}
    if failure is None:
        return {"ok": True, **body}
    return {"ok": False, "error": failure, "exit_code": exit_code, **body}


def emit_json(
    value: dict[str, Any], failure: str | None = None, exit_code: int = EXIT_FAILED
) -> None:
    """Print a command's result as its one JSON object (see `envelope`)."""
    sys.stdout.write(json.dumps(envelope(value, failure, exit_code), indent=2) + "\n")


# Long listings are written in blocks of this many lines: a write per line is a tenth
# of a 250,000-line listing.
_LINES_PER_WRITE = 4096
json_string = json.encoder.encode_basestring_ascii  # json.dumps of a str, in C


def json_scalar(value: int | str | None) -> str:
    """json.dumps of an integer, a string or None."""
    if value is None:
        return "null"
    return json_string(value) if isinstance(value, str) else str(value)


def emit_json_streaming(value: dict[str, Any], streamed: str, failure: str | None) -> None:
    """emit_json for an object whose `streamed` value is an iterable of very many items
    (a crafted ROMFS lists 250,000), each already JSON text: they are written one per
    line, in blocks, so the whole document never exists as one string."""
    write = sys.stdout.write
    value = envelope(value, failure)
    for index, (key, item) in enumerate(value.items()):
        write(("{\n" if index == 0 else ",\n") + f"  {json.dumps(key)}: ")
        if key != streamed:
            write(json.dumps(item, indent=2).replace("\n", "\n  "))
            continue
        write("[")
        elements, separator = iter(item), "\n    "
        while chunk := list(itertools.islice(elements, _LINES_PER_WRITE)):
            write(separator + ",\n    ".join(chunk))  # a block of elements per write
            separator = ",\n    "
        write("\n  ]")
    write("\n}\n" if value else "{}\n")


def failure_line(subject: str, findings: Iterable[Finding]) -> str | None:
    """A failed check in one line, for --json's `error`: its first error, and how many
    more; None when there is no error."""
    errors = [f for f in findings if f.severity is Severity.ERROR]
    if not errors:
        return None
    more = f" (and {plural(len(errors) - 1, 'more error')})" if len(errors) > 1 else ""
    return f"{subject}: {errors[0]}{more}"


def finding_rows(findings: Sequence[Finding]) -> dict[str, list[dict[str, str]]]:
    return {
        "errors": [f.as_dict() for f in findings if f.severity is Severity.ERROR],
        "warnings": [f.as_dict() for f in findings if f.severity is Severity.WARNING],
        "notes": [f.as_dict() for f in findings if f.severity is Severity.INFO],
    }


def styled(text: str, style: str) -> Text:
    return Text(printable(text), style=style)


STATUS_TEXT = {
    "ok": styled("ok", "green"),
    "warning": styled("warning", "yellow"),
    "error": styled("ERROR", "red"),
}

_STYLE = {Severity.ERROR: "red", Severity.WARNING: "yellow", Severity.INFO: "dim"}


def print_findings(findings: Sequence[Finding], prefix: str = "") -> None:
    for finding in findings:
        out.print(f"{prefix}{finding}", style=_STYLE[finding.severity], soft_wrap=True)


def new_table(columns: Sequence[str], right: Sequence[str] = (), title: str = "") -> Table:
    """A rich table whose cells are never cut with "…": a cell too wide folds."""
    from rich.table import Table

    table = Table(title=printable(title) or None, title_justify="left")
    for column in columns:
        table.add_column(column, justify="right" if column in right else "left", overflow="fold")
    return table


def print_table(table: Table, console: Console = out) -> None:
    """Print `table`; on a terminal too narrow for its identifiers (serials, paths,
    hashes: words a table cannot break), each row as a block of `column: value` lines
    instead, so a serial that --serial needs is shown whole, on one line."""
    from rich.measure import Measurement

    options = console.options
    columns = table.columns
    for column in columns:  # as wide as its longest word, or the table becomes a list
        cells = [column.header, *column.cells]
        column.min_width = max(Measurement.get(console, options, c).minimum for c in cells)
    # Each column has a space either side and a rule on its right; the table one on its left.
    if sum(c.min_width or 0 for c in columns) + 3 * len(columns) + 1 <= console.width:
        console.print(table)
        return
    if table.title:
        console.print(table.title)
    for row in zip(*(column.cells for column in columns), strict=True):
        for column, cell in zip(columns, row, strict=True):
            value = Text(printable(cell)) if isinstance(cell, str) else cell
            if value:  # an empty cell is no line
                console.print(Text.assemble(f"{column.header}: ", value), soft_wrap=True)
        console.print()


def print_columns(
    columns: Sequence[tuple[str, int]],
    rows: Iterable[Sequence[str]],
    *,
    right: Sequence[str] = (),
) -> None:
    """A plain table written to stdout in one pass, in blocks of lines: for listings
    of hundreds of thousands of rows (a crafted ROMFS image), where a rich Table costs
    minutes. `columns` are (header, width): the caller knows how wide its values get.
    The last column is free-form, as in `ls -l`, and not padded. Cells are escaped like
    everything else printed.
    """
    *fixed, _ = columns
    cells = [f"{{:{'>' if h in right else '<'}{max(w, len(h))}}}" for h, w in fixed]
    layout = "  ".join([*cells, "{}"])  # one str.format per row

    def block_text(block: list[Sequence[str]]) -> str:
        text = "\n".join([layout.format(*row).rstrip() for row in block])
        if _CONTROL.search(text):  # rare: one search per block, then escape the cells
            text = "\n".join([layout.format(*map(printable, row)).rstrip() for row in block])
        return text + "\n"

    table = itertools.chain([[header for header, _ in columns]], rows)
    while block := list(itertools.islice(table, _LINES_PER_WRITE)):
        sys.stdout.write(block_text(block))
