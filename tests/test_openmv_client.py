"""OpenMV's own host library judges the virtual running camera.

`openmv` 1.0.7 (PyPI, MIT: OpenMV's protocol V2 client, what its tools are built on) runs
unpatched in its own interpreter (.venv-witness, Python 3.12+, made by
scripts/setup-witnesses) against a virtual v5 camera on a pseudo-terminal: connect
(SYNC, caps, channel list, version, system info), statistics, channel status, a frame,
a script written to stdin, executed and stopped, stdout read, and boot. The camera was
written from the spec; this client was written by OpenMV, so where they disagree, the
camera is wrong.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ae3tools.dfu.protocol import bootloader_release
from ae3tools.virtual.application import FIRMWARES, AppFault, BootRequest
from ae3tools.virtual.camera import VirtualCamera
from ae3tools.virtual.memory import DeviceMemory
from tests.conftest import ROOT, eventually

WITNESS = Path(os.environ.get("AE3TOOLS_WITNESS_VENV", ROOT / ".venv-witness")) / "bin" / "python"
DRIVER = ROOT / "tests" / "witness_openmv_client.py"
BOOTLOADER_SERIAL = "4F6A1C6A3381" + "0" * 12  # the SE library's test vector (§1.4)


def run_client(port: str, *args: str) -> dict[str, Any]:
    if not WITNESS.exists():
        pytest.skip("OpenMV's openmv client is not installed: scripts/setup-witnesses needs "
                    "a Python 3.12 or 3.13")  # fmt: skip
    result = subprocess.run(
        [str(WITNESS), str(DRIVER), port, *args],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    seen: dict[str, Any] = json.loads(result.stdout)
    return seen


def camera(bootloader: str = "1.0.3", *faults: AppFault) -> VirtualCamera:
    return VirtualCamera(
        DeviceMemory(),
        FIRMWARES["app"],
        bootloader_release(bootloader),
        app_faults=faults,
        serial=BOOTLOADER_SERIAL,
    )


def booted_forced(cam: VirtualCamera) -> bool:
    return any("reset into the bootloader (forced)" in line for line in cam.history)


@pytest.mark.parametrize("bootloader", ["1.0.3", "1.0.0"])
def test_the_client_connects_reads_runs_a_script_and_boots(bootloader: str) -> None:
    cam = camera(bootloader)
    port = cam.port
    assert port is not None
    try:
        seen = run_client(port.device, "--script", "print('hello')\n")
        # §3.10: an application over a header-less bootloader reports its own 1.0.3.
        assert seen["version"] == {
            "protocol_version": [1, 0, 2],
            "bootloader_version": [1, 0, 3],
            "firmware_version": [5, 0, 0],
        }
        info = seen["sysinfo"]
        # §1.4: the device id words print as upper(application serial) + "00000000".
        assert "".join(f"{word:08X}" for word in info["device_id"]) == (
            "9FAB9AB381000000" + "0" * 8
        )
        assert (info["usb_vid"], info["usb_pid"]) == (0x37C5, 0x16E3)
        assert info["cpu_id"] == 0x411FD221 and info["chip_id"] == [0, 0, 0]
        assert info["pmu_eventcnt"] == 8 and info["multicore_present"] and info["npu_present"]
        assert seen["channels"] == {
            "0": {"name": "usb", "flags": 0x40},
            "1": {"name": "stdin", "flags": 0x06},
            "2": {"name": "stdout", "flags": 0x01},
            "3": {"name": "stream", "flags": 0x19},
        }
        assert seen["caps"]["max_payload"] == 4096  # min(device 8178, its 4096)
        stats = seen["stats"]
        # SYNC, GET_CAPS, SET_CAPS, CHANNEL_LIST, VERSION, SYS_INFO, then STATS itself.
        assert stats["received"] == 7 and stats["sent"] == 6
        assert stats["checksum"] == stats["sequence"] == stats["retransmit"] == 0
        assert seen["status"] == {"usb": False, "stdin": False, "stdout": False, "stream": False}
        assert seen["frame"] is None  # no sensor: the stream channel will not lock
        assert seen["running"] is True and seen["stopped"] is True
        assert seen["host_stats"]["checksum"] == seen["host_stats"]["sequence"] == 0
        assert eventually(lambda: cam.app.boot_request is BootRequest.FORCED)
        assert eventually(lambda: booted_forced(cam))
    finally:
        cam.stop()


def test_the_client_reads_a_printing_cameras_stdout_between_its_events() -> None:
    cam = camera("1.0.3", AppFault.PRINTING)
    port = cam.port
    assert port is not None
    try:
        seen = run_client(port.device, "--read-stdout")
        assert "fps: 30.0\n" in seen["stdout"]
        assert seen["status"]["stdin"] is True  # its main.py runs
        assert eventually(lambda: booted_forced(cam))
    finally:
        cam.stop()


@pytest.mark.parametrize(
    ("options", "payload"),
    [(["--ack", "0"], 4096), (["--max-payload", "50"], 50)],
    ids=["ack off, as OpenMV IDE runs it", "50-byte payloads: fragments"],
)
def test_the_client_with_other_capabilities(options: list[str], payload: int) -> None:
    cam = camera()
    port = cam.port
    assert port is not None
    try:
        seen = run_client(port.device, *options)
        assert seen["caps"]["max_payload"] == payload
        assert seen["version"]["firmware_version"] == [5, 0, 0]
        assert len(seen["sysinfo"]["device_id"]) == 3  # 76 bytes, in two fragments at 50
        assert seen["stats"]["sequence"] == 0
        assert eventually(lambda: booted_forced(cam))
    finally:
        cam.stop()
