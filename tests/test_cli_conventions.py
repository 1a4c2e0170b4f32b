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


# ------------------------------------------------------------------------------ help


def _help_screens() -> list[list[str]]:
    """Every group's and command's path, from the app itself (a new command is held to
    these rules without being listed here)."""
    import typer

    from ae3tools.cli import app

    paths: list[list[str]] = []

    def walk(command, path: list[str]) -> None:
        paths.append(path)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return paths


def test_every_help_fits_80_columns_and_shows_an_example(cli, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    screens = _help_screens()
    assert len(screens) == 20  # the app, 2 groups, 17 commands
    for path in screens:
        result = cli(*path, "--help")
        assert result.code == 0, path
        lines = result.out.splitlines()
        assert all(len(line) <= 80 for line in lines), path
        assert "…" not in result.out, (path, [line for line in lines if "…" in line])
        # typer 0.16 (the floor) runs a help's paragraphs together: the example may wrap
        assert "Example: ae3tools " in " ".join(result.out.split()), path
        assert "{" not in lines[1], (path, lines[1])  # usage: BUNDLE, not typer's {BUNDLE}


def test_every_option_names_what_it_takes() -> None:
    """An explicit placeholder on every option and argument that takes a value, so help
    reads the same whatever typer's version (no `<str>`, no lower-case names)."""
    import typer

    from ae3tools.cli import app

    def walk(command, path: str) -> None:
        for param in command.params:
            if not getattr(param, "is_flag", False):
                assert param.metavar, (path, param.name)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}")

    walk(typer.main.get_command(app), "ae3tools")


def test_usage_hint_names_the_whole_command(cli) -> None:
    result = cli("romfs", "build", ".")
    assert result.code == 2 and "Missing option '--output'" in result.err
    assert "Try 'ae3tools romfs build --help'." in result.err


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        ("ae3tools read r", ["romfs1", "romfs0", "rwfs"]),
        ("ae3tools flash b.zip --only hp,r", ["hp,romfs1", "hp,romfs0"]),
        ("ae3tools flash b.zip --virtual-mode app", ["app", "app-legacy", "app-4.7"]),
        ("ae3tools romfs ls --device r", ["romfs1", "romfs0"]),
    ],
)
def test_shell_completes_partitions_images_and_modes(words: str, expected: list[str]) -> None:
    """Through the installed console script, as bash's completion calls it."""
    import os
    import subprocess
    import sys

    script = Path(sys.executable).with_name("ae3tools")
    env = {
        **os.environ,
        "_AE3TOOLS_COMPLETE": "complete_bash",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split()) - 1),
    }
    result = subprocess.run([script], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split()) == sorted(expected)


# ------------------------------------------------------------------ progress in a log


def test_plain_progress_lines_at_a_sensible_rate() -> None:
    """A 200 s transfer: a line at 0, each 10 %, and every 10 s through a slow stretch;
    never two lines in a second but for the last."""
    from ae3tools.cli.progress import PlainProgress

    lines: list[str] = []
    now = [0.0]
    progress = PlainProgress(lines.append, "cam: ", clock=lambda: now[0])
    total = 1000 * 4096
    progress.begin("write ROMFS0", total)
    for block in range(1, 1001):
        now[0] += 0.2 if block < 500 else 0.01  # 100 s for half, then 5 s for the rest
        if 300 <= block < 400:
            now[0] += 0.3  # a slow stretch
        progress.advance(block * 4096)
    assert lines[0] == "cam: write ROMFS0: 0% (0 of 4096000 bytes)"
    assert lines[-1] == "cam: write ROMFS0: 100% (4096000 of 4096000 bytes)"
    percents = [int(line.split(": ")[2].split("%")[0]) for line in lines]
    assert percents == sorted(percents) and len(lines) <= 20
    assert {10, 20, 30, 40} <= set(percents)  # every step while slow enough
    assert 5 <= sum(50 <= p < 100 for p in percents) <= 6  # 5 s: a line a second at most


def test_piped_flash_prints_progress_lines(tmp_path: Path, bundle: Path) -> None:
    """stderr not a terminal (a CI job): plain lines, each transfer's start and end."""
    import os
    import subprocess
    import sys

    script = Path(sys.executable).with_name("ae3tools")
    env = {**os.environ, "AE3TOOLS_VIRTUAL_TIMING": "zero"}
    run = subprocess.run(
        [script, "flash", bundle, "--virtual", tmp_path / "cam"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    for role in ("HP", "HE", "ROMFS1", "ROMFS0"):
        assert any(line.startswith(f"update {role}: 0% (0 of ") for line in lines), lines
        assert any(line.startswith(f"verify {role}: 100% (") for line in lines), lines
    assert not any("━" in line for line in lines)  # no bar drawn into the log


# ------------------------------------------------------------------ narrow terminals


def _run_at(columns: int, *args: object) -> str:
    import os
    import subprocess
    import sys

    script = Path(sys.executable).with_name("ae3tools")
    env = {**os.environ, "COLUMNS": str(columns), "AE3TOOLS_VIRTUAL_TIMING": "zero"}
    run = subprocess.run(
        [script, *map(str, args)], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    return run.stdout


@pytest.mark.parametrize("columns", [60, 80, 200])
def test_tables_never_cut_serials_paths_or_hashes(
    tmp_path: Path, bundle: Path, columns: int
) -> None:
    """At any width each identifier is whole on one line: a table while it fits, a
    list of `column: value` lines when it does not."""
    from ae3tools.release.bundle import open_bundle
    from ae3tools.virtual.bootloader import virtual_serial

    cams = [tmp_path / "camera-a", tmp_path / "camera-b"]
    listing = _run_at(columns, "devices", "--virtual", cams[0], "--virtual", cams[1])
    flashed = _run_at(columns, "flash", bundle, "--all", "--virtual", cams[0], "--virtual", cams[1])
    verified = _run_at(columns, "verify", bundle)
    deep = tmp_path / "a-directory-with-a-long-name" / "and-another-one-below-it"
    deep.mkdir(parents=True)
    firmware = deep / "firmware_M55_HP.bin"
    firmware.write_bytes((FIXTURES / "good" / "firmware_M55_HP.bin").read_bytes())
    inspected = _run_at(columns, "inspect", firmware)
    for text in (listing, flashed, verified, inspected):
        assert "…" not in text
    for cam in cams:
        serial = virtual_serial(cam)
        assert any(serial in line for line in listing.splitlines()), listing
    for image in open_bundle(bundle).images:
        assert image.entry.sha256[:16] in verified
    assert any(str(firmware) in line for line in inspected.splitlines()), inspected
    assert "2 of 2 cameras flashed and verified" in flashed


# ------------------------------------------------------------------ the audit trail


def test_a_stray_virtual_setting_is_said_in_output_json_and_log(
    cli, tmp_path: Path, monkeypatch
) -> None:
    """AE3TOOLS_VIRTUAL turns a production flash into a rehearsal: every record says so,
    and names the signer's key."""
    key = tmp_path / "release.pem"
    assert cli("keypair", "-o", key).code == 0
    signed = tmp_path / "signed.zip"
    assert cli("bundle", "--from", FIXTURES / "good", "--sign", key, "-o", signed).code == 0
    fingerprint = json.loads(cli("verify", signed, "--json").out)["signature"]["fingerprint"]
    monkeypatch.setenv("AE3TOOLS_VIRTUAL", str(tmp_path / "cam"))

    result = cli("flash", signed, "--json")
    report = _envelope(result)
    assert report["virtual"] == {
        "directories": [str(tmp_path / "cam")],
        "named_by": "AE3TOOLS_VIRTUAL",
    }
    assert report["source"] == {"kind": "ae3tools-bundle", "signer": fingerprint}
    assert "VIRTUAL camera (AE3TOOLS_VIRTUAL is set)" in result.err

    result = cli("flash", signed, "--full")
    assert result.code == 0 and result.out.rstrip().endswith("(a VIRTUAL camera)")
    assert f"bundle signed by key {fingerprint}" in result.out

    log = tmp_path / "line.jsonl"
    assert cli("flash", signed, "--all", "--log", log).code == 0
    (record,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert record["virtual"]["named_by"] == "AE3TOOLS_VIRTUAL"
    assert record["source"]["signer"] == fingerprint

    monkeypatch.delenv("AE3TOOLS_VIRTUAL")
    report = _envelope(cli("check", signed, "--virtual", tmp_path / "cam", "--json"))
    assert report["virtual"]["named_by"] == "--virtual"
    with_usb = _envelope(cli("flash", signed, "--dry-run", "--json"))
    assert "virtual" not in with_usb  # a dry run talks to no camera


# ------------------------------------------------------------------ recovery


def _answering(answer: str, *args: object, cwd: Path) -> tuple[int, str, str]:
    """Run ae3tools with a terminal for stdin (a pseudo-terminal), answering its question."""
    import os
    import pty
    import subprocess
    import sys

    main_fd, terminal = pty.openpty()
    script = Path(sys.executable).with_name("ae3tools")
    env = {**os.environ, "AE3TOOLS_VIRTUAL_TIMING": "zero"}
    with subprocess.Popen(
        [script, *map(str, args)], stdin=terminal, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
    ) as child:  # fmt: skip
        os.close(terminal)
        os.write(main_fd, answer.encode() + b"\n")
        out, err = child.communicate(timeout=60)
    os.close(main_fd)
    return child.returncode, out, err


def test_recover_names_the_everspin_builds_and_asks_on_a_terminal(cli, tmp_path: Path) -> None:
    cam = tmp_path / "cam"
    code, _, err = _answering("n", "recover", "--virtual", cam, cwd=tmp_path)
    assert code == 1 and "Everspin MRAM" in err and "cannot tell which chip" in err
    assert "not confirmed; nothing was sent to the camera" in err
    assert not cam.exists()  # asked before the camera was touched
    code, out, err = _answering("y", "recover", "--virtual", cam, cwd=tmp_path)
    assert code == 0 and "recovery done" in out, err
    # off a terminal, --yes is the answer
    result = cli("recover", "--virtual", tmp_path / "other")
    assert result.code == 2 and "run it again with --yes" in result.err
    assert "Everspin" in cli("recover", "--help").out
