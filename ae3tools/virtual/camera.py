"""A virtual AE3 that starts as a running camera: its CDC port is a real pseudo-terminal.

The application's USB identity (37C5:16E3, openmv-protocol.md §1) sits on the virtual
bus as a `BusDevice`, and its CDC port is served on a pseudo-terminal that pyserial opens
like any tty: the baud rate pyserial sets (read back through the master side's termios)
and whether the port is open (DTR, which pyserial raises on open) drive the
`VirtualApplication`. When it resets itself (SYS_BOOT, RESET_TO_BL, the 1200-baud touch,
§5), its port and USB device vanish and, after the re-enumeration delay, the bootloader
(`VirtualAE3`, forced or not, of the chosen release) appears on the same bus port with the
same memory; when the bootloader leaves, the application comes back.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import select
import struct
import termios
import threading
import time
import tty
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ae3tools.board import APPLICATION_PID, USB_VID
from ae3tools.camera.port import CameraPort
from ae3tools.dfu.protocol import (
    LATEST_BOOTLOADER,
    BootloaderRelease,
    DescriptorType,
    StdRequest,
    bootloader_release,
)
from ae3tools.formats.identity import NO_SERIAL_APPLICATION, application_serial
from ae3tools.virtual.application import (
    FIRMWARES,
    AppFault,
    BootRequest,
    Firmware,
    VirtualApplication,
    split_faults,
)
from ae3tools.virtual.bootloader import (
    DEFAULT_SERIAL,
    VIRTUAL_BUS,
    DeviceStats,
    Setup,
    VirtualAE3,
    virtual_serial,
)
from ae3tools.virtual.descriptors import string_descriptor
from ae3tools.virtual.faults import Fault, NoDevice, Stall
from ae3tools.virtual.memory import DeviceMemory
from ae3tools.virtual.timing import Timing, precise_sleep

if TYPE_CHECKING:
    from ae3tools.virtual.backend import VirtualBackend

# §1.1: the application's device descriptor (IAD composite; bcdDevice fixed at 0x0100).
APP_DEVICE_DESCRIPTOR = (
    bytes([0x12, 0x01, 0x00, 0x02, 0xEF, 0x02, 0x01, 0x40])
    + USB_VID.to_bytes(2, "little")
    + APPLICATION_PID.to_bytes(2, "little")
    + bytes([0x00, 0x01, 1, 2, 3, 1])
)
# §1.2: CDC ACM (IAD, control with its functional descriptors and an interrupt endpoint,
# data with two bulk endpoints) and mass storage: 98 bytes.
APP_CONFIGURATION_DESCRIPTOR = bytes.fromhex(
    "0902620003010080 7d"
    "080b000202020000"
    "090400000102020004" "0524002001" "0524010001" "04240206" "0524060001" "07058103080001"
    "09040100020a000000" "07050202000200" "07058202000200"
    "090402000208065005" "07050302000200" "07058302000200"
)  # fmt: skip
APP_STRINGS = ("", "OpenMV", "OpenMV Camera")  # §1.3; 3 is the serial, 4 and 5 below
APP_INTERFACE_STRINGS = ("Board CDC", "Board MSC")

# termios2 (asm-generic/termbits.h): TCGETS2 reads the rate a custom baud (12 Mbaud) set;
# on a pty master it returns the slave's settings, which is what pyserial changed.
TCGETS2 = 0x802C542A
_TERMIOS2 = struct.Struct("<IIIIB19sII")
POLL_INTERVAL = 0.005  # how often the pty's line state is looked at
CLOSE_GRACE = 0.25  # how long a write may trail its close into the master (see _drain)


class AppUsbDevice:
    """The running application on the virtual bus: descriptors and strings only (the
    CDC data goes through the pseudo-terminal, MSC is not modelled)."""

    device_descriptor = APP_DEVICE_DESCRIPTOR
    configuration_descriptor = APP_CONFIGURATION_DESCRIPTOR

    def __init__(self, camera: VirtualCamera) -> None:
        self.camera = camera
        self.memory = camera.memory
        self.configuration = 1
        self.left = False

    @property
    def present(self) -> bool:
        return not self.left

    def control(self, setup: Setup, data: bytes = b"", timeout: float = 5.0) -> bytes:
        if not self.present:
            raise NoDevice("the application has left the bus")
        if setup.kind == 0 and setup.request == StdRequest.GET_DESCRIPTOR:
            kind, index = setup.value >> 8, setup.value & 0xFF
            if kind == DescriptorType.DEVICE:
                return self.device_descriptor[: setup.length]
            if kind == DescriptorType.CONFIGURATION:
                return self.configuration_descriptor[: setup.length]
            if kind == DescriptorType.STRING:
                strings = [*APP_STRINGS, self.camera.serial, *APP_INTERFACE_STRINGS]
                if index == 0:
                    return bytes([4, DescriptorType.STRING, 0x09, 0x04])[: setup.length]
                if index < len(strings):
                    return string_descriptor(strings[index])[: setup.length]
        if setup.kind == 0 and setup.request == StdRequest.GET_CONFIGURATION:
            return bytes([self.configuration])[: setup.length]
        if setup.kind == 0 and setup.request == StdRequest.SET_CONFIGURATION:
            self.configuration = setup.value & 0xFF
            return b""
        raise Stall("not modelled on the running camera")

    def bus_reset(self) -> None:
        self.camera.app_bus_reset()


def _baud(master: int) -> int:
    """The rate pyserial set on the slave side (TCGETS2 on the master reads the slave's)."""
    raw = fcntl.ioctl(master, TCGETS2, bytes(_TERMIOS2.size))
    speed: int = _TERMIOS2.unpack(raw)[-1]
    return speed


# inotify (linux/inotify.h): a pty has no DTR line; whether a program has the port open
# stands in for it (pyserial raises DTR on open and drops it on close).
IN_OPEN, IN_CLOSE_WRITE, IN_CLOSE_NOWRITE = 0x20, 0x08, 0x10
_EVENT = struct.Struct("iIII")


class _OpenWatch:
    """How many programs have a path open, from inotify's open and close events.

    The server keeps its own descriptor on the slave side (so bytes a host writes just
    before it closes are never lost with the pty's "other side closed"), which is why
    POLLHUP cannot tell it when the host closes.
    """

    def __init__(self, path: str) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        mask = IN_OPEN | IN_CLOSE_WRITE | IN_CLOSE_NOWRITE
        if self._libc.inotify_add_watch(self.fd, path.encode(), mask) < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")
        self.count = 0

    def update(self) -> int:
        with contextlib.suppress(BlockingIOError):
            raw = os.read(self.fd, 4096)
            offset = 0
            while offset < len(raw):
                _, mask, _, length = _EVENT.unpack_from(raw, offset)
                offset += _EVENT.size + length
                self.count += 1 if mask & IN_OPEN else -1
        return self.count

    def close(self) -> None:
        os.close(self.fd)


class PtyPort:
    """Serves one VirtualApplication on a pseudo-terminal, on a thread of its own.

    `terminal`: a pty someone else made, as (master descriptor, slave path) (the umockdev
    bridge's /dev/ttyACM0); by default a new one. The master descriptor becomes this
    object's: it is closed when the application leaves.
    """

    def __init__(
        self,
        app: VirtualApplication,
        on_gone: Callable[[], None],
        terminal: tuple[int, str] | None = None,
    ) -> None:
        self.app = app
        self.on_gone = on_gone
        if terminal is None:
            self.master, self.slave = os.openpty()
            self.path = os.ttyname(self.slave)
        else:
            self.master, self.path = terminal
            self.slave = os.open(self.path, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self.slave)  # no echo or line editing: bytes pass as on a USB CDC port
        self.opened = _OpenWatch(self.path)  # after our own open, which it does not count
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"pty {self.path}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        line = (0, False)
        try:
            while not self._stop.is_set():
                readable, _, _ = select.select([self.master, self.opened.fd], [], [], POLL_INTERVAL)
                data = b""
                if self.master in readable:
                    data = os.read(self.master, 65536)
                # Read after the data: a host sets the baud rate and opens the port before
                # it writes, and closes after, so this is the state the data was sent under
                # (a close is applied after the data, below).
                current = (_baud(self.master), self.opened.update() > 0)
                closing = line[1] and not current[1]
                if closing:
                    data += self._drain()
                if current != line and not closing:
                    line = current
                    self.app.set_line(*line)
                out = self.app.poll()
                if data and line[1]:
                    out += self.app.receive(data)
                if out and line[1] and not closing:
                    os.write(self.master, out)
                if closing:
                    line = current
                    self.app.set_line(*line)  # DTR drops after the data (§2.1)
                    termios.tcflush(self.slave, termios.TCIFLUSH)  # unread replies go too
                if self.app.boot_request is not None:
                    break
        finally:
            self.opened.close()
            os.close(self.slave)
            os.close(self.master)  # the port vanishes with the CDC device
            if self.app.boot_request is not None:
                self.on_gone()

    def _drain(self) -> bytes:
        """What the host wrote just before it closed: the kernel moves a write into the
        master's buffer by deferred work, which can trail the close's inotify event."""
        data = b""
        while select.select([self.master], [], [], CLOSE_GRACE)[0]:
            data += os.read(self.master, 65536)
        return data

    def stop(self, wait: bool = True) -> None:
        """Stop serving; the port is gone once the thread ends (`wait` for that)."""
        self._stop.set()
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()


PortFactory = Callable[[VirtualApplication, Callable[[], None]], PtyPort]


UNPLUGGED_MARKER = "unplugged"  # a file in a virtual camera's directory: its cable is out


def set_plugged(directory: Path, plugged: bool) -> None:
    """Plug a virtual camera in or pull its cable, from any process (the one running the
    camera sees it at its next look at the bus). OSError if `directory` is not one."""
    if not directory.is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such virtual camera directory", str(directory))
    marker = directory / UNPLUGGED_MARKER
    if plugged:
        marker.unlink(missing_ok=True)
    else:
        marker.touch()


class VirtualCamera:
    """A virtual AE3 whose application runs until it is sent to its bootloader.

    A slot of the virtual bus: `attached()` is the application's USB device, nothing
    while it re-enumerates, or the bootloader. One process runs it: the memory is
    claimed for the camera's life, as a real camera has one USB host. `serve_port` puts
    the application's CDC port on a pseudo-terminal (a new one by default).

    With no `firmware` the camera starts plugged in during its bootloader's listen
    window and nothing runs after the bootloader leaves (`--virtual-mode bootloader`).
    A camera kept in a directory has a cable (`set_plugged`): pulled, it leaves the bus
    at once; plugged back, it powers up into its bootloader's listen window (§8.1).
    """

    def __init__(
        self,
        memory: DeviceMemory,
        firmware: Firmware | None,
        release: BootloaderRelease,
        *,
        timing: Timing | None = None,
        faults: Iterable[Fault] = (),
        app_faults: Iterable[AppFault] = (),
        serial: str = DEFAULT_SERIAL,
        port: int = 1,
        plug_delay: float = 0.0,
        serve_port: PortFactory = PtyPort,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = precise_sleep,
    ) -> None:
        self.memory = memory
        self.serve_port = serve_port
        memory.claim()
        self.firmware = firmware
        self.release = release
        self.timing = timing or Timing.zero()
        self.faults = list(faults)
        self.app_faults = frozenset(app_faults)
        self.bootloader_serial = serial
        self.serial = application_serial(serial) or NO_SERIAL_APPLICATION
        self.port_number = port
        self.clock, self.sleep = clock, sleep
        self.lock = threading.RLock()
        self.bootloader: VirtualAE3 | None = None
        self.app_usb: AppUsbDevice | None = None
        self.pty: PtyPort | None = None
        self.next_change: tuple[float, Callable[[], None]] | None = None
        self.boots = 0  # how many times the application has started
        self.history: list[str] = []  # what the camera did, in order, for tests
        self.stats = DeviceStats()  # over all its bootloader sessions
        self.exit_reason: str | None = None  # why its bootloader last left
        self.plugged = True
        if firmware is None:
            self._enter(forced=False, plug_delay=plug_delay)
        else:
            self._start_application()

    # ------------------------------------------------------------------ the two halves

    def _start_application(self) -> None:
        if self.firmware is None:
            return  # a firmware the model does not run: the camera leaves the bus
        self.boots += 1
        self.bootloader = None
        self.app = VirtualApplication(
            self.firmware,
            serial=self.serial,
            # §3.10: a header-less bootloader is reported as the firmware's own, 1.0.3.
            reported_bootloader=(
                self.release if self.release.boot_header else LATEST_BOOTLOADER
            ).version,
            arch_id=self.serial.upper() + "0" * 8,
            faults=self.app_faults,
            clock=self.clock,
        )
        self.app_usb = AppUsbDevice(self)
        self.pty = self.serve_port(self.app, self._application_reset)
        self.history.append(f"application {self.firmware.version} on {self.pty.path}")

    def _application_reset(self) -> None:
        """The application reset itself: its port and USB device leave the bus, and the
        bootloader enumerates after the re-enumeration delay (§5.1, §5.2)."""
        with self.lock:
            request = self.app.boot_request
            if self.app_usb is not None:
                self.app_usb.left = True
            self.app_usb, self.pty = None, None
            forced = request is BootRequest.FORCED
            if AppFault.GONE in self.app_faults:
                self.history.append("unplugged during its reset (injected)")
                return
            self.history.append(f"reset into the bootloader ({'forced' if forced else 'normal'})")
            self.next_change = (self.clock() + self.timing.reboot, lambda: self._enter(forced))

    def _enter(self, forced: bool, plug_delay: float = 0.0) -> None:
        self.bootloader = VirtualAE3(
            self.memory,
            self.timing,
            self.faults,
            serial=self.bootloader_serial,
            forced=forced,
            plug_delay=plug_delay,
            release=self.release,
            stats=self.stats,
            clock=self.clock,
            sleep=self.sleep,
        )
        self.history.append(f"bootloader {self.release.name} ({'forced' if forced else 'normal'})")

    def app_bus_reset(self) -> None:
        """A bus reset to the running application: §2.1, the protocol goes inactive."""
        with self.lock:
            self.app.set_line(self.app.baud, False)

    # ------------------------------------------------------------------ the bus slot

    def attached(self) -> AppUsbDevice | VirtualAE3 | None:
        with self.lock:
            self._advance()
            if self.app_usb is not None and self.app_usb.present and not self.app.boot_request:
                return self.app_usb
            if self.bootloader is not None and self.bootloader.present:
                return self.bootloader
            return None

    def _advance(self) -> None:
        """Time-driven changes: the bootloader leaving boots the application (§8.1 step 5:
        it jumps to HP), each after the re-enumeration delay; the cable."""
        self._check_cable()
        if not self.plugged:
            return
        bootloader = self.bootloader
        # Absent is not left: a bootloader still within its plug delay has yet to appear.
        left = bootloader is not None and not bootloader.present and bootloader.exit_reason
        if bootloader is not None and self.next_change is None and left:
            self.history.append(f"bootloader left: {bootloader.exit_reason}")
            self.exit_reason = bootloader.exit_reason
            self.bootloader = None
            self.next_change = (self.clock() + self.timing.reboot, self._start_application)
        if self.next_change is not None and self.clock() >= self.next_change[0]:
            _, change = self.next_change
            self.next_change = None
            change()

    def _check_cable(self) -> None:
        directory = self.memory.directory
        if directory is None:
            return
        plugged = not (directory / UNPLUGGED_MARKER).exists()
        if plugged == self.plugged:
            return
        self.plugged = plugged
        if not plugged:
            self.history.append("unplugged")
            if self.bootloader is not None:
                self.bootloader.unplug()
            if self.app_usb is not None:
                self.app_usb.left = True
            self.bootloader, self.app_usb, self.next_change = None, None, None
            pty, self.pty = self.pty, None
            if pty is not None:
                pty.stop(wait=False)  # its thread may be waiting for this camera's lock
        else:
            self.history.append("plugged in")
            self._enter(forced=False)  # power-up: the listen window (§8.1)

    @property
    def port(self) -> CameraPort | None:
        """The CDC port while the application runs (a pty path pyserial opens)."""
        with self.lock:
            self._advance()
            if self.pty is None or self.app.boot_request is not None:  # a stuck one stays
                return None
            return CameraPort(self.pty.path, self.serial, f"{VIRTUAL_BUS}-{self.port_number}")

    def stop(self) -> None:
        with self.lock:
            pty, self.pty = self.pty, None
        if pty is not None:
            pty.stop()


LATEST_NAME = LATEST_BOOTLOADER.name

# --virtual-mode: the bootloader alone (a camera plugged in during its listen window), or
# a running camera of one firmware generation.
BOOTLOADER_MODE = "bootloader"
VIRTUAL_MODES = (*FIRMWARES, BOOTLOADER_MODE)


def virtual_bus(
    directories: Sequence[Path | None],
    *,
    mode: str = BOOTLOADER_MODE,
    bootloader: str = LATEST_NAME,
    timing: Timing | None = None,
    faults: Iterable[str] = (),
    plug_delay: float = 0.0,
) -> VirtualBackend:
    """A bus with one virtual AE3 in `mode` per directory (its memory; None: in RAM), on
    ports 1, 2, ... Each camera's serial comes from its directory (`virtual_serial`).

    ValueError for a mode, bootloader or fault that does not parse; CameraInUse or
    OSError for a directory another process runs or that cannot be one.
    """
    from ae3tools.virtual.backend import VirtualBackend

    if mode not in VIRTUAL_MODES:
        raise ValueError(f"virtual mode {mode!r}: expected one of {', '.join(VIRTUAL_MODES)}")
    release = bootloader_release(bootloader)
    dfu_faults, app_faults = split_faults(faults)
    parsed = Fault.parse_many(dfu_faults)
    if mode == BOOTLOADER_MODE and app_faults:
        raise ValueError("app: faults need a running camera (--virtual-mode app...)")
    # Several cameras share this process: their device waits must not spin (precise_sleep
    # holds the interpreter), or one camera's wait would delay another's host.
    sleep = precise_sleep if len(directories) == 1 else time.sleep
    cameras: list[VirtualCamera] = []
    try:
        for port, directory in enumerate(directories, 1):
            cameras.append(
                VirtualCamera(
                    DeviceMemory(directory),
                    None if mode == BOOTLOADER_MODE else FIRMWARES[mode],
                    release,
                    timing=timing,
                    faults=parsed,
                    app_faults=app_faults,
                    serial=DEFAULT_SERIAL if directory is None else virtual_serial(directory),
                    port=port,
                    plug_delay=plug_delay,
                    sleep=sleep,
                )
            )
    except BaseException:
        VirtualBackend(cameras).shutdown()
        raise
    return VirtualBackend(cameras)


def virtual_ports(backend: VirtualBackend) -> list[CameraPort]:
    """The CDC ports of the running cameras on a virtual bus."""
    ports = (slot.port for slot in backend.devices if isinstance(slot, VirtualCamera))
    return [port for port in ports if port is not None]
