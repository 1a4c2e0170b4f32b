from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from ae3tools.cli import main
from ae3tools.release.bundle import ReleaseInfo, inputs_from_directory, write_bundle

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
MPREMOTE = Path(sys.executable).with_name("mpremote")


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """Run `ae3tools ARGS` in process through main(), exactly as the console script does."""

    def run(*args: object) -> CliResult:
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err, captured.err
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample release (fixtures/good) as a bundle: the device tests flash it."""
    path = tmp_path_factory.mktemp("sample") / "bundle.zip"
    write_bundle(path, inputs_from_directory(FIXTURES / "good"), ReleaseInfo(version="test"))
    return path


def interruptible() -> None:
    """A child's Ctrl-C back to the default (`preexec_fn`): started from a background job
    of a script, as CI may start the suite, a process inherits SIGINT ignored, and a
    Python child then never turns it into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def eventually(condition: Callable[[], bool], seconds: float = 20.0) -> bool:
    """Whether `condition` holds within `seconds`, looking every 10 ms."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def good(tmp_path: Path) -> Path:
    """A private copy of the sample release artifacts."""
    dest = tmp_path / "good"
    shutil.copytree(FIXTURES / "good", dest)
    return dest


def mpremote_build(source: Path, output: Path) -> bytes:
    """Build a ROMFS image with the real mpremote (a peer tool, needs no device)."""
    subprocess.run(
        [str(MPREMOTE), "romfs", "--no-mpy", "-o", str(output), "build", str(source)],
        check=True,
        capture_output=True,
    )
    return output.read_bytes()


# Tests that need a peer this machine may lack, and what the summary calls them.
WITNESSED = {
    "test_bridge.py": "bridge tests",
    "test_openmv_client.py": "openmv client tests",
    "test_romfs_witnesses.py": "openmv-ota and MicroPython ROMFS tests",
}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say plainly how many tests of each peer ran, and why any were skipped."""
    for module, title in WITNESSED.items():
        ran = skipped = 0
        reasons: set[str] = set()
        for outcome in ("passed", "failed", "error", "skipped"):
            for report in terminalreporter.stats.get(outcome, []):
                if module not in getattr(report, "nodeid", ""):
                    continue
                if outcome == "skipped":
                    skipped += 1
                    if isinstance(report.longrepr, tuple):
                        reasons.add(str(report.longrepr[2]).removeprefix("Skipped: "))
                elif report.when == "call" or outcome == "error":
                    ran += 1
        if ran or skipped:
            why = f" ({'; '.join(sorted(reasons))})" if reasons else ""
            terminalreporter.write_line(f"{title}: {ran} ran, {skipped} skipped{why}")
