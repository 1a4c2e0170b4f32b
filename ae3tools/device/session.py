"""One bootloader session on one camera: reach it, open it, end it so the camera boots.

Device access for every command that writes or reads a camera, and for each worker of
a many-camera flash: the camera is reached in whichever state it is in (`reach`),
opened and checked to be an AE3's, and at the end DETACHed and reset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ae3tools.board import APPLICATION_PID, USB_VID
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


@dataclass
class Session:
    """An open bootloader session, and how the camera got there."""

    dfu: DfuSession
    info: BootloaderInfo
    rebooted: Rebooted | None  # the running camera this was, if it was sent here
    ports: PortSource


def _quiet(_: str) -> None:
    pass


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
