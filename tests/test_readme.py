"""Every example in the README works as written.

The `sh` blocks are read from README.md and each `ae3tools` line is run through bash, in
order, in one directory that holds what the README says its reader has: a release zip
downloaded from OpenMV, a firmware build's output folder, an application tree. Commands
that talk to a camera find a virtual one through AE3TOOLS_VIRTUAL, as a user without a
camera would be told to do. A line whose comment says "(exit N)" must exit with N; every
other line must succeed. A new example is held to this without being listed here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_release_zip import board_folder, make_zip

README = ROOT / "README.md"
# Lines of the README's sh blocks that are not ae3tools examples: the set-up of a
# checkout, which this suite is itself run from.
NOT_RUN_HERE = ("./scripts/demo", "./scripts/test", "cd ae3tools", "python3 -m pip install .")
EXPECTED_EXIT = re.compile(r"#.*\(exit (\d+)\)")


def readme_examples() -> list[str]:
    """The command lines of the README's sh blocks, continuation lines joined."""
    blocks = re.findall(r"^```sh\n(.*?)^```", README.read_text(), re.MULTILINE | re.DOTALL)
    lines: list[str] = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip():
                lines.append(line.strip())
    return lines


def test_the_readme_has_only_known_lines() -> None:
    examples = readme_examples()
    assert len(examples) >= 30
    for line in examples:
        assert line.startswith("ae3tools ") or line.startswith(NOT_RUN_HERE), line


@pytest.fixture
def readers_directory(tmp_path: Path) -> Path:
    """What the README's reader has: OpenMV's tagged release zip, a firmware build's
    output folder, an application tree for ROMFS0."""
    release = tmp_path / "release"
    board_folder(release)
    make_zip(release, tmp_path / "firmware_v5.0.0.zip", flat=False)
    board_folder(tmp_path / "firmware")
    app = tmp_path / "app"
    (app / "lib").mkdir(parents=True)
    (app / "main.py").write_text("import util\nprint(util.greet())\n")
    (app / "lib" / "util.py").write_text("def greet():\n    return 'hello'\n")
    (app / "model.tflite").write_bytes(bytes(range(256)) * 16)
    return tmp_path


def test_every_readme_example_works_as_written(readers_directory: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AE3TOOLS_")}
    env |= {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "AE3TOOLS_VIRTUAL": str(readers_directory / "camera"),
        "AE3TOOLS_VIRTUAL_TIMING": "zero",
    }
    ran = 0
    for line in readme_examples():
        if not line.startswith("ae3tools "):
            continue
        expected = EXPECTED_EXIT.search(line)
        result = subprocess.run(
            ["bash", "-c", line],
            cwd=readers_directory, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        wanted = int(expected.group(1)) if expected else 0
        assert result.returncode == wanted, f"{line}\n{result.stdout}\n{result.stderr}"
        assert "Traceback" not in result.stderr, line
        ran += 1
    assert ran >= 25
