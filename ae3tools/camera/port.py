"""Running cameras' CDC ports, through pyserial: finding them, opening them, and what
each way of failing to open one means.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass
from typing import Any

from ae3tools.board import APPLICATION_PID, USB_VID
from ae3tools.camera.protocol import V2_BAUD
from ae3tools.findings import DeviceError

# What a Linux user needs to open /dev/ttyACM*: the group, or OpenMV's udev rule.
TTY_HINT = (
    "On Linux, add yourself to the group that owns the port (Debian and Ubuntu: "
    "sudo usermod -aG dialout $USER, then log in again), or install a udev rule:\n"
    f'  SUBSYSTEM=="tty", ATTRS{{idVendor}}=="{USB_VID:04x}", '
    f'ATTRS{{idProduct}}=="{APPLICATION_PID:04x}", MODE="0660", TAG+="uaccess"'
)
BUSY_HINT = (
    "Close the program that has the port open (OpenMV IDE, a serial terminal), then run this again."
)


@dataclass(frozen=True)
class CameraPort:
    """A running AE3's CDC port, as port discovery reports it."""

    device: str  # /dev/ttyACM0, COM5, /dev/cu.usbmodem..., or any tty path given with --port
    serial: str | None  # the application's USB serial (16 hex digits, §1.4), if known
    location: str | None = None  # the USB bus-port path, where the OS says


def port_exists(device: str) -> bool:
    """Whether a serial port of this name is there: a tty path (Linux, macOS), or a port
    the OS lists (a Windows COM port has no path)."""
    if os.path.exists(device):
        return True
    from serial.tools import list_ports

    return any(info.device == device for info in list_ports.comports())


def camera_ports() -> list[CameraPort]:
    """Every running AE3 (37C5:16E3) the OS shows as a serial port (pyserial's discovery:
    sysfs on Linux, IOKit on macOS, SetupAPI on Windows)."""
    from serial.tools import list_ports

    return [
        CameraPort(info.device, info.serial_number, info.location)
        for info in list_ports.comports()
        if info.vid == USB_VID and info.pid == APPLICATION_PID
    ]


def port_error_types() -> tuple[type[Exception], ...]:
    """What a port that went away raises under a read, write, flush or close: pyserial's
    own exception, an OSError, or on POSIX the termios module's error, which is neither
    (tcdrain on a tty whose camera has just left: EIO; seen when a camera reset at once).
    Imported when a port is used: the umockdev bridge's system Python has no pyserial."""
    from serial import SerialException

    try:
        import termios
    except ImportError:  # Windows
        return (OSError, SerialException)
    return (OSError, SerialException, termios.error)


# Reads return after this long with what has arrived, so a wait looks at its deadline
# often without reconfiguring the port (pyserial applies a new timeout through termios).
READ_SLICE = 0.02
WRITE_TIMEOUT = 1.0


def open_port(device: str) -> Any:
    """The port at the debug protocol's baud rate, DTR raised (pyserial does on open), and
    held exclusively; every failure is one sentence naming the port."""
    import serial

    try:
        return serial.Serial(
            device, V2_BAUD, timeout=READ_SLICE, write_timeout=WRITE_TIMEOUT, exclusive=True
        )
    except serial.SerialException as exc:
        code = getattr(exc, "errno", None)
        if code == errno.ENOENT:
            raise DeviceError(
                f"{device}: no such serial port (the camera may have been unplugged)",
                vanished=True,
            ) from None
        if code in (errno.EACCES, errno.EPERM):
            raise DeviceError(
                f"{device}: permission denied opening the port", hint=TTY_HINT
            ) from None
        if code in (errno.EBUSY, errno.EAGAIN, errno.EWOULDBLOCK):
            raise DeviceError(
                f"{device}: the port is in use by another program", hint=BUSY_HINT
            ) from None
        reason = exc.strerror if getattr(exc, "strerror", None) else str(exc)
        raise DeviceError(f"{device}: cannot open the port: {reason}") from None
    except ValueError as exc:  # pyserial's own refusals (a baud rate the OS cannot set)
        raise DeviceError(f"{device}: cannot open the port: {exc}") from None


# Bounded reads for the probes: a camera answers in a few bytes; a port that sends more
# before the marker, or nothing, is not a camera answering.
TEXT_LIMIT = 8192


def read_until(link: Any, marker: bytes, timeout: float, *, limit: int = TEXT_LIMIT) -> bytes:
    """What arrives until `marker` (included), or all that came before the timeout or
    `limit` bytes. Byte by byte: nothing after the marker is taken from the port."""
    deadline = time.monotonic() + timeout
    text = bytearray()
    while len(text) < limit and not (marker and text.endswith(marker)):
        if time.monotonic() >= deadline:
            break
        text += link.read(1)
    return bytes(text)


def read_exactly(link: Any, count: int, timeout: float) -> bytes:
    """`count` bytes, or fewer if the timeout passes first."""
    return read_until(link, b"", timeout, limit=count)
