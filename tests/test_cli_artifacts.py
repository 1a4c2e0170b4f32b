"""The artifact commands as a user runs them: exit codes, messages, files, JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ae3tools.formats.key import make_key_file
from tests.conftest import FIXTURES


def test_keygen_writes_the_key_and_never_overwrites(cli, tmp_path: Path) -> None:
    target = tmp_path / "key.bin"
    assert cli("keygen", "-o", target).code == 0
    assert target.read_bytes() == make_key_file()
    target.write_bytes(b"precious")
    result = cli("keygen", "-o", target)
    assert result.code == 2 and str(target) in result.err and "--force" in result.err
    assert target.read_bytes() == b"precious"
    assert cli("keygen", "-o", target, "--force").code == 0
    assert target.read_bytes() == make_key_file()
    assert [p.name for p in tmp_path.iterdir()] == ["key.bin"]  # no temporary left behind


def test_keygen_default_path_and_json(cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = cli("keygen", "--json")
    assert result.code == 0 and json.loads(result.out) == {
        "ok": True,
        "output": "key.bin",
        "size": 4096,
    }
    assert (tmp_path / "key.bin").stat().st_size == 4096


def test_keygen_into_missing_directory_is_one_line(cli, tmp_path: Path) -> None:
    result = cli("keygen", "-o", tmp_path / "nope" / "key.bin")
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1


def test_inspect_good_set_exits_zero(cli) -> None:
    files = sorted((FIXTURES / "good").iterdir()) + sorted((FIXTURES / "containers").glob("f*HP*"))
    result = cli("inspect", *files)
    assert result.code == 0, result.out
    assert "HP firmware" in result.out and "recovery key" in result.out


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("firmware_M55_HP.bin", "HE firmware"),
        ("romfs0-truncated.img", "needs 4446 bytes"),
        ("erased.img", "not an AE3 firmware image"),
        ("wrong-key.bin", "not the AE3 recovery key"),
        ("corrupt-crc.dfu", "CRC"),
        ("broken.hex", "unreadable Intel HEX"),
        ("empty.bin", "empty"),
    ],
)
def test_inspect_each_broken_artifact_exits_one(cli, name: str, words: str) -> None:
    path = FIXTURES / "bad" / name
    result = cli("inspect", path)
    assert result.code == 1
    line = next(line for line in result.out.splitlines() if line.startswith(f"{path}: error"))
    assert words in line
    data = json.loads(cli("inspect", "--json", path).out)
    assert data["files"][0]["status"] == "error" and data["files"][0]["errors"]


def test_inspect_missing_file_is_a_usage_error(cli, tmp_path: Path) -> None:
    result = cli("inspect", FIXTURES / "good" / "key.bin", tmp_path / "gone.bin")
    assert result.code == 2 and f"{tmp_path / 'gone.bin'}: no such file" in result.err


def test_inspect_unreadable_file_is_a_failed_row(cli, tmp_path: Path) -> None:
    (tmp_path / "dir.bin").mkdir()
    result = cli("inspect", FIXTURES / "good" / "key.bin", tmp_path / "dir.bin")
    assert result.code == 1 and f"{tmp_path / 'dir.bin'}: error UNREADABLE" in result.out


def test_romfs_ls_json(cli) -> None:
    result = cli("romfs", "ls", "--json", FIXTURES / "romfs" / "mpremote-nested.img")
    assert result.code == 0
    data = json.loads(result.out)
    entry = next(e for e in data["entries"] if e["path"] == "/lib/mod.py")
    assert entry["type"] == "file" and entry["size"] == 6 and entry["offset"] == 0x1E
    assert len(entry["sha256"]) == 64
    assert {e["type"] for e in data["entries"]} == {"file", "dir"}
    # mpremote does not align: its .bin is where the AE3's rules want 16 (romfs §8.14).
    assert data["errors"] == [] and [(w["code"], w["location"]) for w in data["warnings"]] == [
        ("ROMFS_MISALIGNED", "/lib/sub/data.bin @ 0x2a")
    ]


def test_romfs_ls_table_puts_the_path_last(cli) -> None:
    """Fixed-width columns first and the free-form path last, as `ls -l`: the table is
    printed in one pass, however many entries and however long their paths."""
    lines = cli("romfs", "ls", FIXTURES / "romfs" / "mpremote-nested.img").out.splitlines()
    assert lines[1].split() == ["size", "offset", "align", "sha256", "path"]
    table = lines[2 : next(i for i, line in enumerate(lines) if " files, filesystem " in line)]
    rows = {line.split()[-1]: line for line in table}
    assert rows["/lib/"].lstrip() == "/lib/"
    assert rows["/lib/mod.py"].split()[:3] == ["6", "0x0000001e", "2"]
    column = lines[1].index("path")
    assert len(table) == 7 and all(line.index("/") == column for line in table)


def test_romfs_ls_errors_and_usage(cli, tmp_path: Path) -> None:
    result = cli("romfs", "ls", FIXTURES / "bad" / "romfs0-truncated.img")
    assert result.code == 1 and "ROMFS_TRUNCATED" in result.out
    assert cli("romfs", "ls", tmp_path / "missing.img").code == 2
    assert cli("romfs", "ls", "--partition", "hp", FIXTURES / "good" / "romfs1.img").code == 2
    assert cli("romfs", "ls", "--align", "*.x=3", FIXTURES / "good" / "romfs1.img").code == 2
    assert cli("romfs", "ls", "--no-such-option").code == 2


def test_romfs_build_extract_round_trip(cli, tmp_path: Path) -> None:
    image = tmp_path / "romfs0.img"
    tree = FIXTURES / "trees" / "romfs0"
    assert cli("romfs", "build", tree, "-o", image, "--partition", "romfs0").code == 0
    assert cli("romfs", "build", tree, "-o", image).code == 2  # exists, no --force
    assert cli("romfs", "ls", image).code == 0
    assert cli("romfs", "extract", image, tmp_path / "out").code == 0
    for source in tree.rglob("*"):
        if source.is_file():
            copy = tmp_path / "out" / source.relative_to(tree)
            assert copy.read_bytes() == source.read_bytes()


def test_romfs_build_too_big_for_partition(cli, tmp_path: Path) -> None:
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "big.bin").write_bytes(bytes(1024 * 1024))
    result = cli(
        "romfs", "build", tmp_path / "tree", "-o", tmp_path / "x.img", "--partition", "romfs1"
    )
    assert result.code == 1 and "ROMFS1" in result.err
    assert not (tmp_path / "x.img").exists()


def test_every_command_has_help_with_an_example(cli) -> None:
    for command in (
        ["keygen"],
        ["inspect"],
        ["romfs", "ls"],
        ["romfs", "build"],
        ["romfs", "extract"],
    ):
        result = cli(*command, "--help")
        assert result.code == 0 and "Example:" in result.out, command


def test_console_script_and_module_run(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("ae3tools")
    for argv in ([str(exe)], [sys.executable, "-m", "ae3tools"]):
        result = subprocess.run(
            [*argv, "inspect", str(FIXTURES / "bad" / "empty.bin")],
            capture_output=True,
            text=True,
            env={**os.environ, "COLUMNS": "200"},
        )
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert "file is empty" in result.stdout
