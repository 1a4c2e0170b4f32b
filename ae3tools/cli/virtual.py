"""`ae3tools virtual plug|unplug DIR`: the cable of a virtual camera.

A station (`flash --station --virtual DIR ...`) runs the virtual cameras; these commands,
from another terminal, pull a camera's cable or plug it back in, as an operator would.
"""

from __future__ import annotations

from pathlib import Path

import typer

from ae3tools.cli.common import Ae3Typer, JsonOption, app, emit_json, out
from ae3tools.findings import UsageError

virtual_app = Ae3Typer(
    help="Rehearse with virtual cameras: pull a cable, plug it back in.\n\n"
    "A virtual camera is a directory given to --virtual; these commands act on one that "
    "a station (`flash --station --virtual DIR ...`) runs in another terminal.\n\n"
    "Example: ae3tools virtual unplug cams/a"
)
app.add_typer(virtual_app, name="virtual")

CamerasArgument = typer.Argument(
    ..., metavar="DIR...", help="Virtual camera directories (as given to --virtual)."
)


def _set(directories: list[Path], plugged: bool, as_json: bool) -> None:
    from ae3tools.virtual.camera import set_plugged

    for directory in directories:
        try:
            set_plugged(directory, plugged)
        except OSError as exc:
            raise UsageError(f"{directory}: {exc.strerror or exc}") from None
    state = "plugged in" if plugged else "unplugged"
    if as_json:
        emit_json({"state": state, "cameras": [str(d) for d in directories]})
    else:
        for directory in directories:
            out.print(f"{directory}: {state}")


@virtual_app.command()
def unplug(directories: list[Path] = CamerasArgument, as_json: bool = JsonOption) -> None:
    """Pull the cable of virtual cameras: they leave the bus at once.

    Example: ae3tools virtual unplug cams/a
    """
    _set(directories, False, as_json)


@virtual_app.command()
def plug(directories: list[Path] = CamerasArgument, as_json: bool = JsonOption) -> None:
    """Plug virtual cameras back in: each powers up into its bootloader's listen window.

    Example: ae3tools virtual plug cams/a cams/b
    """
    _set(directories, True, as_json)
