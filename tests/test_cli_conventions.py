"""What every command shares: the one JSON envelope, help that fits, output that names
its target. Each command is run as a user runs it, on real files and virtual cameras."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import FIXTURES


@pytest.fixture(autouse=True)
def zero_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AE3TOOLS_VIRTUAL_TIMING", "zero")
    for name in ("AE3TOOLS_VIRTUAL", "AE3TOOLS_VIRTUAL_FAULTS", "AE3TOOLS_VIRTUAL_MODE"):
        monkeypatch.delenv(name, raising=False)


def _envelope(result) -> dict:
    """The one JSON object on stdout, held to the envelope every command shares."""
    value = json.loads(result.out)
    assert isinstance(value, dict)
    assert next(iter(value)) == "ok" and value["ok"] is (result.code == 0), value
    if result.code != 0:
        assert isinstance(value["error"], str) and "\n" not in value["error"], value
        assert value["exit_code"] == result.code, value
    else:
        assert "error" not in value and "exit_code" not in value, value
    return value


def test_every_command_json_has_the_envelope(cli, tmp_path: Path, bundle: Path) -> None:
    """Success and failure of every command that takes --json: `ok`, and for a failure
    `error` and `exit_code` equal to the exit status (1 a failed check, 2 a usage error)."""
    cam = tmp_path / "cam"
    good = FIXTURES / "good"
    tampered = tmp_path / "tampered.zip"
    tampered.write_bytes(bundle.read_bytes().replace(b"test", b"tEst"))
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "main.py").write_text("print('hi')\n")
    runs: list[tuple[tuple[object, ...], int]] = [
        (("keygen", "-o", tmp_path / "key.bin"), 0),
        (("keygen", "-o", tmp_path / "key.bin"), 2),  # exists: a usage error
        (("keypair", "-o", tmp_path / "release.pem"), 0),
        (("inspect", good / "firmware_M55_HP.bin"), 0),
        (("inspect", FIXTURES / "bad" / "romfs0-truncated.img"), 1),
        (("inspect", tmp_path / "missing.bin"), 2),
        (("romfs", "ls", good / "romfs0.img"), 0),
        (("romfs", "ls", FIXTURES / "bad" / "romfs0-truncated.img"), 1),
        (("romfs", "build", tree, "-o", tmp_path / "tree.img"), 0),
        (("romfs", "extract", good / "romfs0.img", tmp_path / "out"), 0),
        (("bundle", "--from", good, "-o", tmp_path / "b.zip"), 0),
        (("verify", bundle), 0),
        (("verify", tampered), 1),
        (("flash", bundle, "--virtual", cam, "--dry-run"), 0),
        (("check", bundle, "--virtual", cam), 1),  # a blank camera differs
        (("flash", bundle, "--virtual", cam), 0),
        (("check", bundle, "--virtual", cam), 0),
        (("flash", bundle, "--virtual", cam, "--all"), 0),
        (("read", "toc", "-o", tmp_path / "toc.bin", "--virtual", cam), 0),
        (("devices", "--virtual", cam), 0),
        (("bootloader", "--virtual", cam, "--virtual-mode", "app"), 0),
        (("erase-fs", "--yes", "--virtual", cam), 0),
        (("erase-fs", "--virtual", cam), 2),  # no --yes
        (("recover", "--yes", "--virtual", cam), 0),
        (("virtual", "unplug", cam), 0),
        (("virtual", "plug", cam), 0),
        (("flash", bundle, "--virtual", cam, "--full", "--fault", "status:alt=HP:block=0"), 1),
    ]
    for args, code in runs:
        result = cli(*args, "--json")
        assert result.code == code, (args, result)
        _envelope(result)


def test_failed_check_says_why_in_one_line(cli, tmp_path: Path) -> None:
    result = cli("romfs", "ls", FIXTURES / "bad" / "romfs0-truncated.img", "--json")
    value = _envelope(result)
    assert value["error"].startswith(f"{FIXTURES / 'bad' / 'romfs0-truncated.img'}: error ROMFS_")


def test_json_progress_report_has_the_envelope(cli, tmp_path: Path, bundle: Path) -> None:
    result = cli("flash", bundle, "--virtual", tmp_path / "cam", "--json-progress")
    report = json.loads(result.out.splitlines()[-1])
    assert result.code == 0 and report["event"] == "report" and report["ok"] is True
    result = cli(
        "flash", bundle, "--virtual", tmp_path / "cam", "--json-progress",
        "--fault", "vanish:alt=HP:block=0", "--full",
    )  # fmt: skip
    report = json.loads(result.out.splitlines()[-1])
    assert result.code == 1 and report["ok"] is False
    assert report["exit_code"] == 1 and "1 of 1 camera failed" in report["error"]

