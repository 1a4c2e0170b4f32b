"""Reaching a camera's bootloader, whichever state the camera is in.

A running camera is sent to its bootloader in forced mode (`ae3tools.camera.reboot`),
and then the host confirms that it went: its serial port must vanish, and then *its*
bootloader must enumerate, never another one that happens to be attached: the new 96E3
device whose serial maps to the running camera's (openmv-protocol.md §1.4, §6.2), or,
for a port with no USB identity behind it (`--port` on a plain tty), the one bootloader
that appeared after the request. Until both are seen nothing is reported as done.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ae3tools.board import APPLICATION_PID, BOOTLOADER_PID, USB_VID
from ae3tools.camera.port import CameraPort, port_exists
from ae3tools.camera.reboot import RunningCamera, describe, send_to_bootloader
from ae3tools.device.discovery import (
    APPLICATION,
    AttachedCamera,
    PortSource,
    Selector,
    attached_bootloaders,
    attached_cameras,
    selected,
)
from ae3tools.dfu.host import BootloaderInfo, describe_bootloader
from ae3tools.findings import DeviceError, UsageError
from ae3tools.formats.identity import NO_SERIAL_APPLICATION

# openmv-protocol.md §6.2 step 6: the port goes within about 2 s; the reset to 96E3 is
# "well under a second", allow 10 s before calling the camera stuck. Poll at 20 ms, as
# dfu-util -w does.
PORT_GONE_TIMEOUT = 2.0
BOOTLOADER_TIMEOUT = 10.0
APPLICATION_TIMEOUT = 10.0
POLL_INTERVAL = 0.02

Status = Callable[[str], None]

STUCK_HINT = (
    "It may be stuck in its reset (openmv-protocol.md §5.1), or a USB driver may be "
    "missing. Replug it, or press its reset button and run this again: its bootloader "
    "listens for about 1.5 s after a reset."
)


@dataclass(frozen=True)
class Rebooted:
    """A running camera sent to its bootloader, and how its bootloader was told apart."""

    camera: RunningCamera
    matched_by: str

    def as_dict(self) -> dict[str, Any]:
        return {**self.camera.as_dict(), "bootloader_matched_by": self.matched_by}


def _one(found: Sequence[AttachedCamera]) -> AttachedCamera | None:
    if len(found) > 1:
        listing = "; ".join(camera.describe() for camera in found)
        raise UsageError(
            f"{len(found)} AE3s found ({listing}): choose one with --serial, --path (a "
            "bootloader) or --port (a running camera)"
        )
    return found[0] if found else None


def find_camera(backend: Any, ports: PortSource, selector: Selector) -> AttachedCamera | None:
    """The one camera the selector names, from one look at what is attached; None if
    there is none; UsageError if it is ambiguous (a bootloader and a running camera are
    two cameras: a camera is never both at once). `--port` takes any tty (esptool and
    mpremote do the same): one that is not a discovered camera has no USB identity."""
    found = selected(attached_cameras(backend, ports), [selector])
    if not found and selector.port is not None and selector.path is None:
        if not selector.port or not port_exists(selector.port):  # the user's word: a usage error
            raise UsageError(f"--port {selector.port!r}: no such serial port")
        found = [
            AttachedCamera(APPLICATION, selector.port, None, port=CameraPort(selector.port, None))
        ]
    return _one(found)


def reach_bootloader(
    backend: Any,
    ports: PortSource,
    selector: Selector,
    *,
    wait: float = 0.0,
    reboot_wait: float = BOOTLOADER_TIMEOUT,
    status: Status | None = None,
    on_waiting: Callable[[], None] | None = None,
) -> tuple[Any, Rebooted | None]:
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
        if found is not None and found.port is None:
            return found.device, None
        if found is not None and found.port is not None:
            return reboot_and_wait(backend, ports, found.port, say, reboot_wait)
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
    reboot_wait: float = BOOTLOADER_TIMEOUT,
    status: Status | None = None,
) -> tuple[Rebooted | None, BootloaderInfo]:
    """`ae3tools bootloader`: send the named running camera to its bootloader and wait
    until that bootloader has enumerated (it is not opened: nothing latches).

    A camera already in its bootloader is reported as such (Rebooted None).
    """
    found = find_camera(backend, ports, selector)
    if found is None:
        wanted = f" with {selector.describe()}" if selector.given else ""
        raise DeviceError(
            f"no running AE3 ({USB_VID:04x}:{APPLICATION_PID:04x}){wanted} found",
            hint="Plug the camera in and let it boot, or name its serial port with --port.",
        )
    if found.port is None:
        return None, describe_bootloader(found.device)
    device, rebooted = reboot_and_wait(
        backend, ports, found.port, status or (lambda _: None), reboot_wait
    )
    return rebooted, describe_bootloader(device)


def list_cameras(backend: Any, ports: PortSource) -> list[BootloaderInfo | CameraListing]:
    """Every AE3 present: bootloaders from their descriptors, and running cameras as they
    answer on their ports (one that cannot be asked says why)."""
    found: list[BootloaderInfo | CameraListing] = []
    for camera in attached_cameras(backend, ports):
        if camera.port is None:
            found.append(describe_bootloader(camera.device))
            continue
        try:
            found.append(CameraListing(camera.port, describe(camera.port), None))
        except DeviceError as exc:
            found.append(CameraListing(camera.port, None, str(exc)))
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
    backend: Any, ports: PortSource, port: CameraPort, say: Status, timeout: float
) -> tuple[Any, Rebooted]:
    """§6.2: note the bootloaders present, send the camera to its bootloader, see its
    port go, and wait for the new bootloader that is this camera."""
    before = {(b.where, b.serial) for b in attached_bootloaders(backend)}
    camera = send_to_bootloader(port)
    say(f"camera on {port.device} running {camera.description}: asked it for its bootloader")
    wait_for_port_to_go(port, ports, camera)
    device, matched_by = wait_for_its_bootloader(backend, camera, before, timeout)
    return device, Rebooted(camera, matched_by)


def _port_present(port: CameraPort, ports: PortSource) -> bool:
    if port.serial is not None:  # a discovered camera: the OS lists it while it is there
        return any(p.device == port.device for p in ports())
    return port_exists(port.device)


def wait_for_port_to_go(
    port: CameraPort, ports: PortSource, camera: RunningCamera, timeout: float = PORT_GONE_TIMEOUT
) -> None:
    """§6.2 step 6: a camera that took the request resets, and its port goes with it."""
    deadline = time.monotonic() + timeout
    while _port_present(port, ports):
        if time.monotonic() >= deadline:
            raise DeviceError(
                f"{port.device}: the camera was asked for its bootloader ({camera.description}) "
                f"but did not reset: its port is still there after {timeout:g} s",
                hint=STUCK_HINT,
                timed_out=True,
            )
        time.sleep(POLL_INTERVAL)


def wait_for_its_bootloader(
    backend: Any, camera: RunningCamera, before: set[tuple[str, str | None]], timeout: float
) -> tuple[Any, str]:
    """The new bootloader that is `camera`, and how it was told apart: its serial maps
    to the camera's (§1.4); if the camera's serial is unknown (no USB identity, or all
    zeros: the SE call failed), the one new bootloader, and only if exactly one came."""
    serial = camera.port.serial
    known = bool(serial) and (serial or "").lower() != NO_SERIAL_APPLICATION
    deadline = time.monotonic() + timeout
    settled: float | None = None
    while time.monotonic() < deadline:
        new = [b for b in attached_bootloaders(backend) if (b.where, b.serial) not in before]
        if known:
            mine = [b for b in new if b.key == serial]
            if mine:
                return mine[0].device, f"its serial {mine[0].serial} maps to the camera's {serial}"
        elif len(new) > 1:
            listing = "; ".join(b.describe() for b in new)
            raise DeviceError(
                f"{len(new)} new AE3 bootloaders appeared ({listing}) and none can be told "
                f"to be the camera from {camera.port.device}",
                hint="Flash them one at a time, or pick one with --serial.",
            )
        elif new:
            # Give a second camera reset at the same moment the chance to show up: the
            # camera is known only as "the one that appeared" (§6.2 step 6).
            settled = settled or time.monotonic() + 0.2
            if time.monotonic() >= settled:
                why = "no USB serial" if not serial else "an all-zero serial"
                return new[0].device, (
                    f"the only bootloader that appeared after the request (the port has {why})"
                )
        time.sleep(POLL_INTERVAL)
    raise DeviceError(
        f"the camera from {camera.port.device} reset, but did not come back as a bootloader "
        f"({USB_VID:04x}:{BOOTLOADER_PID:04x}) within {timeout:g} s",
        hint=STUCK_HINT,
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
