"""Every device command without the POSIX-only modules, as on Windows.

In a child interpreter, `termios`, `fcntl`, `tty` and `pty` cannot be imported (and
`msvcrt` stands in for Windows' file locking, whose lock the virtual camera takes;
pyserial, which has a Windows backend of its own, is loaded before): the
device commands run against the virtual bootloader, and the virtual running camera,
which needs a pseudo-terminal, says so in one line instead of failing inside.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

WINDOWS_LIKE = """
import sys, types
import subprocess, getpass  # before msvcrt appears: they take it as a sign of Windows
import serial, serial.tools.list_ports  # pyserial has a Windows backend of its own
for name in ("termios", "fcntl", "tty", "pty"):
    sys.modules[name] = None  # import raises ImportError, as on Windows
msvcrt = types.ModuleType("msvcrt")
msvcrt.LK_NBLCK = 2
msvcrt.locking = lambda fd, mode, length: None
sys.modules["msvcrt"] = msvcrt
from ae3tools.cli import main
main(sys.argv[1:])
"""


def ae3tools_without_posix(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WINDOWS_LIKE, *map(str, args)],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
        env={"AE3TOOLS_VIRTUAL_TIMING": "zero", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip


def test_device_commands_run_without_posix_modules(bundle: Path, tmp_path: Path) -> None:
    camera = tmp_path / "cam"
    boot = ("--virtual", camera, "--virtual-mode", "bootloader")
    runs = {
        "devices": ae3tools_without_posix("devices", *boot, "--json"),
        "flash": ae3tools_without_posix("flash", bundle, *boot, "--json"),
        "check": ae3tools_without_posix("check", bundle, *boot, "--json"),
        "read": ae3tools_without_posix("read", "he", "-o", tmp_path / "he.bin", *boot),
        "erase-fs": ae3tools_without_posix("erase-fs", "--yes", *boot),
        "recover": ae3tools_without_posix("recover", "--yes", "--bundle", bundle, *boot),
    }
    for command, result in runs.items():
        assert result.returncode == 0, (command, result.stderr)
        assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert json.loads(runs["check"].stdout)["ok"]
    assert (tmp_path / "he.bin").stat().st_size > 0
    running = ae3tools_without_posix(
        "bootloader", "--virtual", tmp_path / "running", "--virtual-mode", "app"
    )
    assert running.returncode == 1 and "Traceback" not in running.stderr
    assert "needs a POSIX pseudo-terminal" in running.stderr
    assert "--virtual-mode bootloader" in running.stderr
