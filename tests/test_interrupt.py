"""Ctrl-C: a real SIGINT, at start-up and while a command waits, ends in one line and
status 130, never a traceback; a station stopped by one finishes its cameras first."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, interruptible

# The child signals itself from inside the import of the command line (an import hook
# fires when ae3tools.cli.common is loaded): a real SIGINT, at a known point of start-up.
DURING_IMPORT = """
import importlib.abc, os, signal, sys

class Interrupt(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "ae3tools.cli.common":
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, Interrupt())
sys.argv = ["ae3tools", "--help"]
from ae3tools.entry import main
main()
"""


def test_ctrl_c_during_start_up_is_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-c", DURING_IMPORT],
        capture_output=True,
        text=True,
        cwd=ROOT,
        preexec_fn=interruptible,
    )
    assert result.returncode == 130
    assert result.stderr == "ae3tools: interrupted\n"
    assert result.stdout == ""


def test_ctrl_c_while_waiting_for_a_camera_is_one_line(tmp_path: Path, bundle: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AE3TOOLS_VIRTUAL")}
    waiting = subprocess.Popen(
        [sys.executable, "-m", "ae3tools", "flash", str(bundle), "--virtual", str(tmp_path / "cam"),
         "--wait-timeout", "60", "--virtual-plug-delay", "600"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=interruptible,
    )  # fmt: skip
    try:
        assert waiting.stderr is not None
        seen = ""
        while "waiting for an AE3" not in seen:  # it says so once it waits
            line = waiting.stderr.readline()
            assert line, seen
            seen += line
        waiting.send_signal(signal.SIGINT)
        out, err = waiting.communicate(timeout=30)
    finally:
        waiting.kill()
    assert waiting.returncode == 130, err
    assert "Traceback" not in err and err.splitlines()[-1] == "ae3tools: error: interrupted"
    assert out == ""
