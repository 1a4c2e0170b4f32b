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

import errno
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ae3tools.board import APPLICATION_PID, PARTITIONS, USB_VID
from ae3tools.camera.port import CameraPort
from ae3tools.dfu.protocol import (
    LATEST_BOOTLOADER,
    BootloaderRelease,
    DescriptorType,
    StdRequest,
    bootloader_release,
)
from ae3tools.findings import Ae3Error
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
from ae3tools.virtual.memory import DeviceMemory, partition_file_name
from ae3tools.virtual.timing import Timing, precise_sleep

if TYPE_CHECKING:
    from ae3tools.virtual.backend import VirtualBackend
    from ae3tools.virtual.pty_port import PortFactory, PtyPort

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


UNPLUGGED_MARKER = "unplugged"  # a file in a virtual camera's directory: its cable is out


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


def _pty_port_factory() -> PortFactory:
    """The default port: a new pseudo-terminal, where the platform has them."""
    try:
        from ae3tools.virtual.pty_port import PtyPort
    except ImportError:  # no fcntl, termios or tty: Windows
        raise Ae3Error(
            "the virtual running camera needs a POSIX pseudo-terminal, which this platform "
            "does not have",
            hint="Use --virtual-mode bootloader: the virtual bootloader works everywhere.",
        ) from None
    return PtyPort


def set_plugged(directory: Path, plugged: bool) -> None:
    """Plug a virtual camera in or pull its cable, from any process (the one running the
    camera sees it at its next look at the bus). OSError if `directory` is not one."""
    if not directory.is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such virtual camera directory", str(directory))
    ours = {DeviceMemory.LOCK_NAME, UNPLUGGED_MARKER, *map(partition_file_name, PARTITIONS)}
    strangers = [path.name for path in directory.iterdir() if path.name not in ours]
    if strangers:  # an empty directory is a camera not yet powered: it may wait unplugged
        raise NotADirectoryError(
            errno.ENOTDIR, f"not a virtual camera's directory (it holds {strangers[0]})",
            str(directory),
        )  # fmt: skip
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
        serve_port: PortFactory | None = None,
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
        self.pty = (self.serve_port or _pty_port_factory())(self.app, self._application_reset)
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
