"""Reaching a camera's bootloader, whichever state the camera is in.

A camera is either in its bootloader (37C5:96E3 on USB, `ae3tools.dfu`) or running its
application (37C5:16E3, a CDC serial port, `ae3tools.camera`). A running camera is sent
to its bootloader in forced mode, and then *its* bootloader is waited for, never another
one that happens to be attached: the new 96E3 device whose serial maps to the running
camera's (openmv-protocol.md §1.4, §6.2).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ae3tools.board import APPLICATION_PID, BOOTLOADER_PID, USB_VID
from ae3tools.camera.port import CameraPort
from ae3tools.camera.reboot import RunningCamera, describe, send_to_bootloader
from ae3tools.dfu.host import (
    BootloaderInfo,
    describe_bootloader,
    device_path,
    find_bootloaders,
    read_serial,
)
from ae3tools.findings import DeviceError, UsageError
from ae3tools.formats.identity import (
    NO_SERIAL_APPLICATION,
    application_serial,
    running_camera_is,
    same_camera,
)

# openmv-protocol.md §5.2, §6.2 step 6: the reset to 96E3 is "well under a second"; allow
# 10 s before calling the camera stuck. Poll at 20 ms, as dfu-util -w does.
BOOTLOADER_TIMEOUT = 10.0
APPLICATION_TIMEOUT = 10.0
POLL_INTERVAL = 0.02

PortSource = Callable[[], list[CameraPort]]
Status = Callable[[str], None]


@dataclass(frozen=True)
class Selector:
    """Which camera: by serial (either form, §1.4), bootloader bus path, or serial port."""

    serial: str | None = None
    path: str | None = None
    port: str | None = None

    @property
    def given(self) -> bool:
        return any((self.serial, self.path, self.port))

    def bootloader(self, device: Any) -> bool:
        serial = read_serial(device) if self.serial is not None else None
        return self.names_bootloader(device_path(device), serial)

    def names_bootloader(self, path: str, serial: str | None) -> bool:
        """Whether the bootloader at `path` reporting `serial` is the one selected."""
        if self.port is not None:
            return False
        if self.path is not None and path != self.path:
            return False
        return self.serial is None or same_camera(serial, self.serial)

    def running(self, port: CameraPort) -> bool:
        if self.path is not None:
            return False  # a bus path names a bootloader (dfu-util -p)
        if self.port is not None and port.device != self.port:
            return False
        return self.serial is None or running_camera_is(port.serial, self.serial)

    def describe(self) -> str:
        named = (("serial", self.serial), ("path", self.path), ("port", self.port))
        return " ".join(f"{what} {value}" for what, value in named if value)


def running_cameras(ports: PortSource, selector: Selector) -> list[CameraPort]:
    found = [port for port in ports() if selector.running(port)]
    if selector.port is not None and selector.path is None and not found:
        # --port takes any tty (esptool, mpremote do the same): one with no USB behind it
        # has no serial to match the bootloader by.
        found = [CameraPort(selector.port, None)]
    return found


def _listing(bootloaders: Sequence[Any], running: Sequence[CameraPort]) -> str:
    items = [
        f"bootloader serial {read_serial(d) or '?'} at path {device_path(d)}" for d in bootloaders
    ]
    items += [f"running camera serial {p.serial or '?'} on {p.device}" for p in running]
    return "; ".join(items)


def _one(bootloaders: list[Any], running: list[CameraPort]) -> Any | CameraPort | None:
    if len(bootloaders) + len(running) > 1:
        raise UsageError(
            f"{len(bootloaders) + len(running)} AE3s found ({_listing(bootloaders, running)}): "
            "choose one with --serial, --path (a bootloader) or --port (a running camera)"
        )
    return (bootloaders or running or [None])[0]


def find_camera(backend: Any, ports: PortSource, selector: Selector) -> Any | CameraPort | None:
    """The one camera the selector names, as a bootloader device or a running camera's
    port; None if there is none; UsageError if it is ambiguous (a bootloader and a
    running camera are two cameras: a camera is never both at once)."""
    bootloaders = [d for d in find_bootloaders(backend) if selector.bootloader(d)]
    return _one(bootloaders, running_cameras(ports, selector))


def reach_bootloader(
    backend: Any,
    ports: PortSource,
    selector: Selector,
    *,
    wait: float = 0.0,
    reboot_wait: float = BOOTLOADER_TIMEOUT,
    status: Status | None = None,
    on_waiting: Callable[[], None] | None = None,
) -> tuple[Any, RunningCamera | None]:
    """The named camera's bootloader device, sending a running camera there first.

    Returns the device and, if the camera was running, what it ran. Waits up to `wait`
    seconds for a camera to appear (plugged in, or reset into the bootloader), and up to
    `reboot_wait` for a running camera's bootloader.
    """
    say = status or (lambda _: None)
    deadline = time.monotonic() + wait
    announced = False
    while True:
        found = find_camera(backend, ports, selector)
        if found is not None and not isinstance(found, CameraPort):
            return found, None
        if isinstance(found, CameraPort):
            return reboot_and_wait(backend, found, say, reboot_wait)
        if time.monotonic() >= deadline:
            break
        if not announced and on_waiting is not None:
            on_waiting()
            announced = True
        time.sleep(POLL_INTERVAL)
    wanted = f" with {selector.describe()}" if selector.given else ""
    waited = f" within {wait:g} s" if wait else ""
    raise DeviceError(
        f"no AE3 ({USB_VID:04x}:{BOOTLOADER_PID:04x} bootloader or "
        f"{USB_VID:04x}:{APPLICATION_PID:04x} running camera){wanted} found{waited}",
        hint="Plug the camera in (or press reset) while this command waits; "
        "use --wait-timeout to wait longer.",
    )


def reboot_only(
    backend: Any,
    ports: PortSource,
    selector: Selector,
    *,
    wait: bool,
    reboot_wait: float = BOOTLOADER_TIMEOUT,
    status: Status | None = None,
) -> tuple[RunningCamera | None, BootloaderInfo | None]:
    """`ae3tools bootloader`: send the named running camera to its bootloader; with
    `wait`, also wait for that bootloader to enumerate (it is not opened: nothing latches).

    A camera already in its bootloader is reported as such (camera None).
    """
    found = find_camera(backend, ports, selector)
    if found is None:
        wanted = f" with {selector.describe()}" if selector.given else ""
        raise DeviceError(
            f"no running AE3 ({USB_VID:04x}:{APPLICATION_PID:04x}){wanted} found",
            hint="Plug the camera in and let it boot, or name its serial port with --port.",
        )
    if not isinstance(found, CameraPort):
        return None, describe_bootloader(found)
    if not wait:
        camera = send_to_bootloader(found)
        (status or (lambda _: None))(f"camera on {found.device} running {camera.description}")
        return camera, None
    device, camera = reboot_and_wait(backend, found, status or (lambda _: None), reboot_wait)
    return camera, describe_bootloader(device)


def list_cameras(backend: Any, ports: PortSource) -> list[BootloaderInfo | CameraListing]:
    """Every AE3 present: bootloaders from their descriptors, and running cameras as they
    answer on their ports (one that cannot be asked says why)."""
    found: list[BootloaderInfo | CameraListing] = [
        describe_bootloader(device) for device in find_bootloaders(backend)
    ]
    for port in ports():
        try:
            found.append(CameraListing(port, describe(port), None))
        except DeviceError as exc:
            found.append(CameraListing(port, None, str(exc)))
    return found


@dataclass(frozen=True)
class CameraListing:
    """A running camera in `devices`: what it said, or why it could not be asked."""

    port: CameraPort
    camera: RunningCamera | None
    error: str | None

    def as_dict(self) -> dict[str, Any]:
        if self.camera is not None:
            return self.camera.as_dict()
        return {
            "state": "application",
            "port": self.port.device,
            "serial": self.port.serial,
            "error": self.error,
        }


def reboot_and_wait(
    backend: Any, port: CameraPort, say: Status, timeout: float = BOOTLOADER_TIMEOUT
) -> tuple[Any, RunningCamera]:
    """§6.2: note the bootloaders present, send the camera to its bootloader, and wait
    for the new one that is this camera."""
    before = {(device_path(d), read_serial(d)) for d in find_bootloaders(backend)}
    camera = send_to_bootloader(port)
    say(f"camera on {port.device} running {camera.description}: sent it to the bootloader")
    return wait_for_its_bootloader(backend, camera, before, timeout), camera


def wait_for_its_bootloader(
    backend: Any, camera: RunningCamera, before: set[tuple[str, str | None]], timeout: float
) -> Any:
    """The new bootloader that is `camera`: its serial maps to the camera's (§1.4); if the
    camera's serial is unknown or all zeros (the SE call failed), the one new bootloader."""
    known = camera.port.serial and camera.port.serial.lower() != NO_SERIAL_APPLICATION
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = [
            d for d in find_bootloaders(backend) if (device_path(d), read_serial(d)) not in before
        ]
        if known:
            new = [d for d in new if application_serial(read_serial(d) or "") == camera.port.serial]
        if len(new) == 1:
            return new[0]
        if len(new) > 1:
            raise DeviceError(
                f"{len(new)} new AE3 bootloaders appeared ({_listing(new, [])}) and none can be "
                f"told to be the camera from {camera.port.device}",
                hint="Flash them one at a time, or pick one with --serial.",
            )
        time.sleep(POLL_INTERVAL)
    raise DeviceError(
        f"the camera from {camera.port.device} did not come back as a bootloader "
        f"({USB_VID:04x}:{BOOTLOADER_PID:04x}) within {timeout:g} s",
        hint="It may be stuck in its reset (openmv-protocol.md §5.1) or a USB driver may be "
        "missing. Replug it, or press its reset button and run this again with --wait.",
        timed_out=True,
    )


def await_application(ports: PortSource, camera: RunningCamera, timeout: float) -> bool:
    """After the final reset: whether the camera came back running (§6.2 step 10)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for port in ports():
            if camera.port.serial is None or port.serial == camera.port.serial:
                return True
        time.sleep(POLL_INTERVAL)
    return False
