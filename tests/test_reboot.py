"""A running camera sent to its bootloader and flashed: real pyserial on the virtual
camera's pseudo-terminal, the pyusb stack on the virtual bus, and every firmware
generation against every bootloader in the field (openmv-protocol.md, ae3-bootloader.md
§13). The same through real libusb and pyserial's discovery is in test_bridge.py."""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import shutil
import subprocess
import sys
import threading
import tty
from collections.abc import Callable
from pathlib import Path

import pytest
import serial

from ae3tools.camera.protocol import Generation, version_text
from ae3tools.device.discovery import Selector
from ae3tools.device.reach import reach_bootloader
from ae3tools.dfu.flash import flash_images
from ae3tools.dfu.host import DfuSession, read_serial
from ae3tools.dfu.protocol import BOOTLOADER_RELEASES, bootloader_release
from ae3tools.findings import UsageError
from ae3tools.formats.identity import NO_SERIAL_BOOTLOADER, application_serial
from ae3tools.release.bundle import read_bundle
from ae3tools.virtual.application import FIRMWARES, AppFault, BootRequest, Firmware
from ae3tools.virtual.backend import VirtualBackend
from ae3tools.virtual.bootloader import VirtualAE3, virtual_serial
from ae3tools.virtual.camera import VirtualCamera, virtual_ports
from ae3tools.virtual.memory import DeviceMemory, partition_image
from ae3tools.virtual.timing import Timing
from tests.conftest import MPREMOTE, eventually

AE3TOOLS = Path(sys.executable).with_name("ae3tools")
MODES = list(FIRMWARES)
BOOTLOADERS = [release.name for release in BOOTLOADER_RELEASES]


@pytest.fixture(autouse=True)
def zero_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AE3TOOLS_VIRTUAL_TIMING", "zero")
    for name in ("AE3TOOLS_VIRTUAL_FAULTS", "AE3TOOLS_VIRTUAL_MODE", "AE3TOOLS_VIRTUAL_BOOTLOADER"):
        monkeypatch.delenv(name, raising=False)


def camera(mode: str = "app", bootloader: str = "1.0.3", **kwargs: object) -> VirtualCamera:
    return VirtualCamera(
        DeviceMemory(),
        FIRMWARES[mode],
        bootloader_release(bootloader),
        **kwargs,  # type: ignore[arg-type]
    )


# ------------------------------------------------------------------ every generation


@pytest.mark.parametrize("script", ["idle", "printing"])
@pytest.mark.parametrize("bootloader", BOOTLOADERS)
@pytest.mark.parametrize("mode", MODES)
def test_reboot_flash_verify_on_every_generation(
    cli, bundle: Path, tmp_path: Path, mode: str, bootloader: str, script: str
) -> None:
    """Idle, or running a script that prints (a v5 camera then sends a stdout event every
    50 ms, unprompted: §6.1), on every firmware and every bootloader in the field."""
    cam = tmp_path / "cam"
    faults = ["--fault", "app:printing"] if script == "printing" else []
    result = cli(
        "flash", bundle, "--virtual", cam, "--virtual-mode", mode,
        "--virtual-bootloader", bootloader, "--json", *faults,
    )  # fmt: skip
    assert result.code == 0, result.err
    report = json.loads(result.out)
    firmware = FIRMWARES[mode]
    assert report["was_running"]["firmware_version"] == ".".join(map(str, firmware.version))
    assert report["was_running"]["protocol"] == firmware.generation.protocol
    assert report["was_running"]["answered"] == firmware.generation.protocol
    assert report["was_running"]["bootloader_matched_by"].startswith("its serial")
    device = report["device"]
    assert device["bootloader_version"] == bootloader  # from bcdDevice, honestly
    assert device["boot_header_version"] == (None if bootloader == "1.0.0" else bootloader)
    assert all(image["verified"] for image in report["images"])
    assert report["after"] == "camera reset: running its application again"
    for image in read_bundle(bundle):
        assert partition_image(cam, image.role).read_bytes()[: len(image.data)] == image.data


@pytest.mark.parametrize("bootloader", BOOTLOADERS)
def test_the_final_reset_ends_every_bootloader_session(bundle: Path, bootloader: str) -> None:
    """§13.2 step 2: DETACH then a USB reset. 1.0.2+ leave on the DETACH; the older ones,
    entered forced, never do: the reset is what ends the session there."""
    cam = camera("app", bootloader)
    backend = VirtualBackend([cam])
    try:
        device, running = reach_bootloader(backend, lambda: virtual_ports(backend), Selector())
        assert running is not None and running.camera.port.serial == cam.serial
        session = DfuSession(device)
        session.open()
        flash_images(session, read_bundle(bundle))
        bootloader_model = cam.bootloader
        assert bootloader_model is not None and bootloader_model.forced
        session.detach_and_reset()
        expected = "DETACH" if bootloader_model.release.detach_leaves else "USB reset"
        assert bootloader_model.exit_reason == expected
        assert cam.attached() is cam.app_usb and cam.boots == 2  # the application again
    finally:
        backend.shutdown()


def test_a_v4_7_camera_is_never_sent_a_v2_packet(bundle: Path) -> None:
    cam = camera("app-4.7")
    backend = VirtualBackend([cam])
    try:
        reach_bootloader(backend, lambda: virtual_ports(backend), Selector())
        assert not cam.app.crashed and not cam.app.notes  # §4.3 would have killed it
    finally:
        backend.shutdown()


# ------------------------------------------------------------------ which camera


def test_the_bootloader_of_that_camera_and_no_other() -> None:
    """Two running cameras and a third already in its bootloader: the one asked for is
    rebooted, and the session is with its own bootloader (found by the serial mapping)."""
    first = camera("app", serial="4F6A1C6A3381000000000001")
    second = camera("app-legacy", serial="0123456789AB000000000002", port=2)
    other = VirtualAE3(DeviceMemory(), serial="AABBCCDDEEFF000000000003")
    backend = VirtualBackend([first, second, other])
    ports = lambda: virtual_ports(backend)  # noqa: E731
    try:
        with pytest.raises(UsageError, match=r"3 AE3s found.*running camera serial"):
            reach_bootloader(backend, ports, Selector())
        device, running = reach_bootloader(backend, ports, Selector(serial=second.serial))
        assert running is not None and running.camera.port.device.startswith("/dev/pts/")
        assert read_serial(device) == "0123456789AB000000000002"
        assert application_serial(read_serial(device) or "") == second.serial
        assert first.app.boot_request is None and first.attached() is first.app_usb
        assert other.stats.blocks_written == other.stats.blocks_read == 0
        assert other.exit_reason is None and other.boot_mode.value == "detached"
        # The camera's bootloader serial (24 digits) picks it too, once it is there.
        again, running = reach_bootloader(backend, ports, Selector(serial=second.bootloader_serial))
        assert running is None and read_serial(again) == second.bootloader_serial
    finally:
        backend.shutdown()


def test_a_camera_whose_serial_is_unknown_takes_the_one_new_bootloader() -> None:
    # The SE call failed: all-zero serials on both sides (§1.4).
    cam = camera("app", serial=NO_SERIAL_BOOTLOADER)
    backend = VirtualBackend([cam])
    try:
        device, running = reach_bootloader(backend, lambda: virtual_ports(backend), Selector())
        assert running is not None and running.camera.port.serial == "0" * 16
        assert read_serial(device) == NO_SERIAL_BOOTLOADER
    finally:
        backend.shutdown()


# ------------------------------------------------------------------ the bootloader command


@pytest.mark.parametrize("script", ["idle", "printing"])
@pytest.mark.parametrize("bootloader", BOOTLOADERS)
@pytest.mark.parametrize("mode", MODES)
def test_bootloader_command(cli, tmp_path: Path, mode: str, bootloader: str, script: str) -> None:
    cam = tmp_path / "cam"
    faults = ["--fault", "app:printing"] if script == "printing" else []
    result = cli(
        "bootloader", "--virtual", cam, "--virtual-mode", mode,
        "--virtual-bootloader", bootloader, "--json", *faults,
    )  # fmt: skip
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["was_running"]["firmware_version"] == version_text(FIRMWARES[mode].version)
    assert report["bootloader"]["bootloader_version"] == bootloader
    assert report["bootloader"]["serial"] == virtual_serial(cam)
    assert "maps to the camera's" in report["was_running"]["bootloader_matched_by"]


def test_bootloader_command_text(cli, tmp_path: Path) -> None:
    cam = tmp_path / "cam"
    text = cli("bootloader", "--virtual", cam, "--virtual-mode", "app-legacy")
    assert text.code == 0, text.err
    assert "went to its bootloader" in text.out and virtual_serial(cam) in text.out
    already = cli("bootloader", "--virtual", cam, "--virtual-mode", "bootloader")
    assert already.code == 0 and "in its bootloader already" in already.out


def test_a_port_with_no_usb_identity_takes_the_one_new_bootloader() -> None:
    """--port on a plain tty: nothing discovers it, so its bootloader is the one that
    appeared after the request, and the report says that is how it was matched."""
    cam = camera("app")
    backend = VirtualBackend([cam])
    port = cam.port
    assert port is not None
    try:
        device, rebooted = reach_bootloader(backend, list, Selector(port=port.device))
        assert rebooted is not None and rebooted.camera.port.serial is None
        assert "the only bootloader that appeared after the request" in rebooted.matched_by
        assert read_serial(device) == cam.bootloader_serial
    finally:
        backend.shutdown()


def test_bootloader_on_a_bare_tty_is_not_called_done_without_its_bootloader() -> None:
    """The camera on a plain pseudo-terminal goes (its port vanishes), but its bootloader
    is on no bus this command can see: what is known is said, and the status is 1."""
    cam = camera("app")
    port = cam.port
    assert port is not None
    try:
        result = subprocess.run(
            [str(AE3TOOLS), "bootloader", "--port", port.device, "--wait-timeout", "1", "--json"],
            capture_output=True, text=True, timeout=60,
            env={k: v for k, v in os.environ.items() if not k.startswith("AE3TOOLS_")},
        )  # fmt: skip
        assert result.returncode == 1, result.stderr
        error = json.loads(result.stdout)
        assert error["ok"] is False
        assert "reset, but did not come back as a bootloader" in error["error"]
        assert cam.app.boot_request is not None  # it did take the request
    finally:
        cam.stop()


# ------------------------------------------------------------------ devices


def test_devices_lists_running_cameras_and_bootloaders(cli, tmp_path: Path) -> None:
    running = json.loads(
        cli("devices", "--virtual", tmp_path / "a", "--virtual-mode", "app", "--json").out
    )["devices"]
    assert running == [
        {
            "state": "application",
            "port": running[0]["port"],
            "serial": application_serial(virtual_serial(tmp_path / "a")),
            "firmware_version": "5.0.0",
            "protocol": "V2",
            "answered": "V2",
            "reported_bootloader_version": "1.0.3",
            "implausible": None,
        }
    ]
    legacy = cli("devices", "--virtual", tmp_path / "b", "--virtual-mode", "bootloader",
                 "--virtual-bootloader", "legacy", "--json")  # fmt: skip
    (device,) = json.loads(legacy.out)["devices"]
    assert device["state"] == "bootloader" and device["bootloader_version"] == "1.0.0"
    assert device["shipped_in"] == "v4.7.0 and v4.8.0"  # not "2.0.0"
    table = cli("devices", "--virtual", tmp_path / "a", "--virtual-mode", "app-4.7")
    assert "application" in table.out and "4.7.0" in table.out


# ------------------------------------------------------------------ bad input and faults


def _flash(cli, bundle: Path, cam: Path, *extra: str):  # type: ignore[no-untyped-def]
    return cli("flash", bundle, "--virtual", cam, "--virtual-mode", "app", "--json", *extra)


@pytest.mark.parametrize("mode", MODES)
def test_the_repl_is_the_third_way_in(cli, bundle: Path, tmp_path: Path, mode: str) -> None:
    """Neither debug protocol answers, the REPL does (§6.3): machine.bootloader()."""
    cam = tmp_path / "cam"
    result = cli(
        "flash", bundle, "--virtual", cam, "--virtual-mode", mode, "--json",
        "--fault", "app:repl-only,app:printing",
    )  # fmt: skip
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["was_running"]["answered"] == "REPL"
    assert report["was_running"]["firmware_version"] == version_text(FIRMWARES[mode].version)
    assert all(image["verified"] for image in report["images"])


def test_a_camera_answering_none_of_its_ways(cli, bundle: Path, tmp_path: Path) -> None:
    result = _flash(cli, bundle, tmp_path / "cam", "--fault", "app:mute")
    assert result.code == 1
    error = json.loads(result.out)
    assert "answers neither OpenMV's v4 (usbdbg) nor its v5 protocol" in error["error"]
    assert "nor its REPL" in error["error"]
    assert "Replug" in error["hint"] and "reset button" in error["hint"]
    assert not (tmp_path / "cam" / "1-HP.bin").exists()  # nothing reached the camera


def test_a_reply_with_a_bad_crc(cli, bundle: Path, tmp_path: Path) -> None:
    result = _flash(cli, bundle, tmp_path / "cam", "--fault", "app:badcrc")
    assert result.code == 1 and "failed its check (bad header CRC)" in result.err  # the SYNC ACK
    assert not (tmp_path / "cam" / "1-HP.bin").exists()


@pytest.mark.parametrize("fault", ["stuck", "gone"])
def test_a_camera_that_never_comes_back(cli, bundle: Path, tmp_path: Path, fault: str) -> None:
    result = _flash(cli, bundle, tmp_path / "cam", "--fault", f"app:{fault}", "--wait-timeout", "1")
    assert result.code == 1
    error = json.loads(result.out)
    if fault == "stuck":  # §5.1: it spins in its reset; the port stays
        assert "did not reset: its port is still there after 2 s" in error["error"]
    else:
        assert "did not come back as a bootloader (37c5:96e3) within 1 s" in error["error"]
    assert "press its reset button" in error["hint"]


def test_a_busy_port(cli, tmp_path: Path) -> None:
    cam = camera("app")
    port = cam.port
    assert port is not None
    held = serial.Serial(port.device, exclusive=True)  # as OpenMV IDE holds it
    try:
        result = cli("bootloader", "--port", port.device, "--json")
        assert result.code == 1 and "in use by another program" in result.err
        assert cam.app.boot_request is None
    finally:
        held.close()
        cam.stop()


def test_permission_denied_on_the_tty() -> None:
    """The port belongs to someone else and the command may not override that: as root,
    the capability that would is dropped (setpriv), which is what a user outside the
    port's group meets."""
    setpriv = shutil.which("setpriv")
    if os.getuid() != 0 or setpriv is None:
        pytest.skip("needs root and util-linux's setpriv to take the override away")
    cam = camera("app")
    port = cam.port
    assert port is not None
    try:
        os.chown(port.device, 65534, 65534)
        os.chmod(port.device, 0o600)
        drop = "-dac_override,-dac_read_search"
        command = [
            str(Path(sys.executable).with_name("ae3tools")),
            "bootloader",
            "--port",
            port.device,
        ]
        result = subprocess.run(
            [setpriv, "--bounding-set", drop, "--inh-caps", drop, "--", *command],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 1, result.stderr
        assert "permission denied opening the port" in result.stderr
        assert "dialout" in result.stderr and "Traceback" not in result.stderr
        assert cam.app.boot_request is None
    finally:
        cam.stop()


def test_one_process_per_virtual_camera(cli, tmp_path: Path) -> None:
    directory = tmp_path / "cam"
    held = VirtualCamera(DeviceMemory(directory), FIRMWARES["app"], bootloader_release("1.0.3"))
    try:
        result = cli("devices", "--virtual", directory, "--virtual-mode", "app", "--json")
        assert result.code == 1 and "in use by another process" in result.err
    finally:
        held.stop()
        held.memory.close()


def test_the_app_faults_need_a_running_camera(cli, tmp_path: Path) -> None:
    result = cli(
        "read", "hp", "-o", tmp_path / "x", "--virtual", tmp_path / "c", "--fault", "app:mute"
    )
    assert result.code == 2 and "need a running camera" in result.err
    bad = cli("devices", "--virtual", tmp_path / "c", "--virtual-bootloader", "2.0")
    assert bad.code == 2 and "expected one of 1.0.0, 1.0.1, 1.0.2, 1.0.3, legacy" in bad.err


def test_timing_realistic_reboot_delay(tmp_path: Path) -> None:
    cam = VirtualCamera(
        DeviceMemory(), FIRMWARES["app"], bootloader_release("1.0.3"), timing=Timing.realistic()
    )
    backend = VirtualBackend([cam])
    try:
        device, _ = reach_bootloader(backend, lambda: virtual_ports(backend), Selector())
        assert device is not None and any("forced" in line for line in cam.history)
    finally:
        backend.shutdown()


# ------------------------------------------------------------------ ports that are not cameras


class NotACamera:
    """A pseudo-terminal whose other end is not an AE3: `answer(data)` returns what it
    sends back for what it read, and `chatter()` what it sends unprompted (each 10 ms)."""

    def __init__(self, answer: Callable[[bytes], bytes], chatter: Callable[[], bytes]) -> None:
        self.master, slave = os.openpty()
        self.path = os.ttyname(slave)
        tty.setraw(slave)
        # Nobody reads once the host has closed: a full pty must not block the server.
        os.set_blocking(self.master, False)
        self._slave = slave  # held, so the host's close does not hang up the master
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(answer, chatter), daemon=True)
        self._thread.start()

    def _serve(self, answer: Callable[[bytes], bytes], chatter: Callable[[], bytes]) -> None:
        while not self._stop.is_set():
            readable, _, _ = select.select([self.master], [], [], 0.01)
            with contextlib.suppress(BlockingIOError):
                out = answer(os.read(self.master, 65536)) if readable else b""
                out += chatter()
                if out:
                    os.write(self.master, out)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        os.close(self.master)
        os.close(self._slave)


NOTHING: Callable[[], bytes] = lambda: b""  # noqa: E731
NOT_CAMERAS = {
    "random bytes": (lambda data: b"", lambda: random.randbytes(2048)),
    "a loopback": (lambda data: data, NOTHING),
    "silence": (lambda data: b"", NOTHING),
    # 12 bytes back for every command, as usbdbg's FW_VERSION, but no v4 release's.
    "an implausible usbdbg version": (lambda data: bytes.fromhex("07" + "00" * 11), NOTHING),
    # A REPL banner that is not an OpenMV AE3's.
    "another board's REPL": (
        lambda data: b"MicroPython v1.25.0; Raspberry Pi Pico with RP2040\r\n>>> " if data else b"",
        NOTHING,
    ),
}


@pytest.mark.parametrize("command", ["bootloader", "flash"])
@pytest.mark.parametrize("kind", list(NOT_CAMERAS))
def test_no_port_that_is_not_a_camera_gives_success(bundle: Path, kind: str, command: str) -> None:
    port = NotACamera(*NOT_CAMERAS[kind])
    args = [str(bundle)] if command == "flash" else []
    try:
        result = subprocess.run(
            [str(AE3TOOLS), command, *args, "--port", port.path, "--wait-timeout", "1", "--json"],
            capture_output=True, text=True, timeout=120,
            env={k: v for k, v in os.environ.items() if not k.startswith("AE3TOOLS_")},
        )  # fmt: skip
    finally:
        port.close()
    assert result.returncode == 1, (result.stdout, result.stderr)
    report = json.loads(result.stdout)
    assert report["ok"] is False and "Traceback" not in result.stderr
    assert "answers neither" in report["error"], report["error"]


def test_an_implausible_v2_version_is_reported_and_not_trusted(tmp_path: Path) -> None:
    """A V2 device (CRCs and all) reporting firmware 0.0.0 that does not reset: said so,
    and not called done."""
    cam = VirtualCamera(
        DeviceMemory(),
        Firmware(Generation.G3, (0, 0, 0)),
        bootloader_release("1.0.3"),
        app_faults=[AppFault.STUCK],
    )
    port = cam.port
    assert port is not None
    try:
        result = subprocess.run(
            [str(AE3TOOLS), "bootloader", "--port", port.device, "--json"],
            capture_output=True, text=True, timeout=60,
            env={k: v for k, v in os.environ.items() if not k.startswith("AE3TOOLS_")},
        )  # fmt: skip
    finally:
        cam.stop()
    assert result.returncode == 1
    error = json.loads(result.stdout)["error"]
    assert "firmware version 0.0.0, which no v5 release has" in error
    assert "did not reset: its port is still there" in error


def test_mpremote_sends_the_camera_to_its_bootloader_through_its_repl() -> None:
    """What OpenMV's openmv-ota does (§6.3): `mpremote exec "import machine;
    machine.bootloader()"`, mpremote's raw REPL against the virtual camera's. Like a real
    camera's, the port vanishes under mpremote, which then exits with an error."""
    cam = camera("app", app_faults=[AppFault.PRINTING])
    port = cam.port
    assert port is not None
    try:
        subprocess.run(
            [str(MPREMOTE), "connect", port.device, "exec", "import machine; machine.bootloader()"],
            capture_output=True, timeout=60,
        )  # fmt: skip
        assert eventually(lambda: cam.app.boot_request is BootRequest.FORCED)
        assert eventually(lambda: isinstance(cam.attached(), VirtualAE3))
    finally:
        cam.stop()


def test_a_port_whose_camera_left_is_one_error_not_a_crash() -> None:
    """pyserial's flush and reset_input_buffer on a tty whose other end has gone raise
    termios.error (EIO), which is neither an OSError nor a SerialException: a camera
    that resets as soon as it takes the request did this to one worker of `--all` in 20."""
    import pty

    from ae3tools.camera.reboot import port_errors
    from ae3tools.findings import DeviceError

    camera_end, host_end = pty.openpty()
    link = serial.Serial(os.ttyname(host_end), 921600, timeout=0.02)
    try:
        link.write(b"request")
        os.close(camera_end)  # the camera resets: its end of the port is gone
        for step in (link.flush, link.reset_input_buffer):
            with pytest.raises(DeviceError) as failed, port_errors("/dev/ttyACM0"):
                step()
            assert failed.value.vanished and "went away" in str(failed.value)
    finally:
        link.close()
        os.close(host_end)
