"""The package's layers, read from its own import statements (every one, also those inside
functions): each room imports only the rooms below it, the real host never imports the
simulated AE3, USB is touched only in dfu/ and serial I/O only in camera/.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ae3tools"

# Room -> the rooms it may import. "base" is the board layout and the shared helpers.
BASE = {"board", "findings", "fileio", "collector", "__init__"}
ALLOWED: dict[str, set[str]] = {
    "base": {"base"},
    "formats": {"base", "formats"},
    "release": {"base", "formats", "release"},
    "dfu": {"base", "formats", "release", "dfu"},
    "camera": {"base", "formats", "camera"},
    "device": {"base", "formats", "release", "dfu", "camera", "device"},
    # The simulator models the camera from the protocols' data; it never uses the host.
    "virtual": {"base", "formats", "dfu", "camera", "virtual"},
    "cli": {"base", "formats", "release", "dfu", "camera", "device", "virtual", "cli"},
    "entry": {"cli"},
    "__main__": {"entry"},
}
# Third-party modules that only one room (and the simulator standing in for it) may use.
CONFINED = {"usb": {"dfu", "virtual"}, "serial": {"camera"}}


def room_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "ae3tools":
        raise ValueError(module)
    if len(parts) == 1 or parts[1] in BASE:
        return "base"
    return parts[1]


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append(node.module)
            found += [f"{node.module}.{alias.name}" for alias in node.names]
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_each_module_imports_only_the_rooms_below_it(path: Path) -> None:
    room = room_of(module_name(path))
    wrong = []
    for imported in imports_of(path):
        top = imported.split(".")[0]
        if top == "ae3tools":
            if imported.count(".") == 1 and room_of(imported) != "base":
                continue  # "from ae3tools.cli import x": the next entry names the module
            if room_of(imported) not in ALLOWED[room]:
                wrong.append(imported)
        elif top in CONFINED and room not in CONFINED[top]:
            wrong.append(imported)
    assert not wrong, f"{module_name(path)} ({room}) imports {sorted(set(wrong))}"


def test_the_rooms_are_the_ones_the_layering_names() -> None:
    rooms = {room_of(module_name(path)) for path in MODULES}
    assert rooms == set(ALLOWED)


def test_no_module_outside_the_cli_is_over_about_700_lines() -> None:
    """One concern per module: a module past this size has grown a second one."""
    long = {
        module_name(path): lines
        for path in MODULES
        if room_of(module_name(path)) != "cli"
        and (lines := len(path.read_text().splitlines())) > 720
    }
    assert not long
