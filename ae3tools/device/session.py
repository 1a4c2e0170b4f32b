"""One bootloader session on one camera: reach it, open it, end it so the camera boots.

Device access for every command that writes or reads a camera, and for each worker of
a many-camera flash: the camera is reached in whichever state it is in (`reach`),
opened and checked to be an AE3's, and at the end DETACHed and reset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ae3tools.board import APPLICATION_PID, USB_VID, Role
from ae3tools.device.discovery import PortSource, Selector
from ae3tools.device.reach import (
    APPLICATION_TIMEOUT,
    BOOTLOADER_TIMEOUT,
    Rebooted,
    Status,
    await_application,
    reach_bootloader,
)
from ae3tools.dfu.host import BootloaderInfo, DfuSession
from ae3tools.dfu.protocol import DEFAULT_TIMEOUT_MS
from ae3tools.findings import DeviceError
from ae3tools.formats.firmware import firmware_identity
from ae3tools.release.bundle import BundleImage


@dataclass
class Session:
    """An open bootloader session, and how the camera got there."""

    dfu: DfuSession
    info: BootloaderInfo
    rebooted: Rebooted | None  # the running camera this was, if it was sent here
    ports: PortSource


def _quiet(_: str) -> None:
    pass


def refuse_downgrade(session: Session, images: Sequence[BundleImage]) -> None:
    """DeviceError when the bundle's HP firmware is an older OpenMV release than the one
    the camera was running (known only for a camera that was running: a bootloader does
    not say), as fwupd, SWUpdate and MCUboot refuse a rollback unless told."""
    camera = session.rebooted.camera if session.rebooted else None
    running = camera.firmware if camera and not camera.implausible else None
    hp = next((image for image in images if image.role is Role.HP), None)
    identity = firmware_identity(hp.data) if hp is not None else None
    offered = identity.openmv_version if identity else None
    if running is None or offered is None or offered >= tuple(running):
        return
    raise DeviceError(
        f"refused: the bundle's HP firmware is OpenMV {identity.openmv if identity else ''}, "
        f"older than the v{'.'.join(map(str, running))} the camera was running. Nothing "
        "was written",
        hint="To install the older release anyway, flash again with --allow-downgrade.",
    )


@contextmanager
def open_session(
    backend: Any,
    ports: PortSource,
    selector: Selector,
    *,
    wait: float = 0.0,
    reboot_wait: float = BOOTLOADER_TIMEOUT,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
    status: Status = _quiet,
    on_waiting: Callable[[], None] | None = None,
) -> Iterator[Session]:
    """Reach the selected camera's bootloader (sending a running camera there), open it,
    and check it is an AE3's; waits up to `wait` seconds for a camera to appear."""
    device, rebooted = reach_bootloader(
        backend,
        ports,
        selector,
        wait=wait,
        reboot_wait=reboot_wait,
        status=status,
        on_waiting=on_waiting,
    )
    session = DfuSession(device, timeout_ms=timeout_ms)
    try:
        info = session.open()
        session.check_layout(info.alt_names)
        status(f"bootloader {info.describe()} ready: serial {info.serial} at {info.path}")
        yield Session(session, info, rebooted, ports)
    finally:
        session.close()  # the handle, whatever happened (a station goes on running)


def end_session(session: Session, reset: bool, *, warn: Status = _quiet) -> str:
    """DETACH, then a USB reset, so the camera boots (every bootloader leaves on one of
    the two, ae3-bootloader.md §13.2), or leave it in the bootloader. Returns what became
    of it."""
    if not reset:
        session.dfu.close()
        return "camera left in the bootloader"
    session.dfu.detach_and_reset()
    if session.rebooted is None:
        return "camera reset"
    if await_application(session.ports, session.rebooted.camera, APPLICATION_TIMEOUT):
        return "camera reset: running its application again"
    warn(
        "warning: the camera did not come back running its application "
        f"({USB_VID:04x}:{APPLICATION_PID:04x}); unplug it and plug it in again"
    )
    return "camera reset, but it did not come back: replug it"
