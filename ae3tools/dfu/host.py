"""The DFU 1.1 host: find the AE3 bootloader, hold one session, download and upload.

Written against pyusb only; whether the backend is libusb or the virtual AE3 does not
matter here. The procedure is spec §9's: SET_INTERFACE, 4096-byte DNLOADs each
followed by GETSTATUS until DNLOAD_IDLE (honouring bwPollTimeout), a zero-length
DNLOAD and GETSTATUS until IDLE, UPLOAD in 4096-byte blocks.
"""

from __future__ import annotations

import array
import contextlib
import errno
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import usb.core
import usb.util

from ae3tools.board import (
    ALT_NAMES,
    BOOT,
    BOOT_HEADER_OFFSET,
    BOOT_HEADER_SIZE,
    BOOT_MAGIC,
    BOOTLOADER_PID,
    DFU_BLOCK_SIZE,
    USB_VID,
    Partition,
)
from ae3tools.dfu.protocol import (
    DEFAULT_TIMEOUT_MS,
    REQUEST_IN,
    REQUEST_OUT,
    STATUS_LENGTH,
    STATUS_SENTENCES,
    BootloaderRelease,
    DfuStatus,
    Request,
    State,
    bootloader_from_bcd,
)
from ae3tools.findings import Ae3Error, DeviceError

MAX_POLLS = 10_000  # GETSTATUS polls for one block before giving up on a stuck device
OPEN_RETRY_DELAYS = (0.1, 0.2, 0.3)  # seconds before each retry of a refused open
DFU_INTERFACE = 0
UDEV_RULE = (
    f'SUBSYSTEM=="usb", ATTRS{{idVendor}}=="{USB_VID:04x}", '
    f'ATTRS{{idProduct}}=="{BOOTLOADER_PID:04x}", MODE="0660", TAG+="uaccess"'
)

# The bootloader has no BOS or Microsoft OS descriptors (spec §1.1), so Windows binds no
# driver by itself.
NO_DRIVER = "the camera's bootloader has no USB driver bound (on Windows it needs WinUSB)"
NO_DRIVER_HINT = (
    "Install OpenMV IDE once (it installs a signed driver for 37c5:96e3), or bind WinUSB "
    "to 'OpenMV Camera (DFU Mode)' with Zadig, then run this again."
)

Progress = Callable[[int], None]  # bytes done so far in the current transfer


class DfuStatusError(DeviceError):
    def __init__(self, where: str, status: DfuStatus) -> None:
        sentence = STATUS_SENTENCES.get(status.status, "unknown status")
        super().__init__(f"{where}: the bootloader reported {status.status.name}: {sentence}")
        self.status = status


def describe_usb_error(exc: usb.core.USBError, where: str, timeout_ms: int) -> DeviceError:
    """One sentence for each way the bus can fail (pyusb reports libusb's errno)."""
    if isinstance(exc, usb.core.USBTimeoutError):
        return DeviceError(
            f"{where}: the camera did not answer within {timeout_ms} ms "
            "(it may have hung, or the operation needs a longer --timeout)",
            timed_out=True,
        )
    if exc.errno == errno.EPIPE:
        return DeviceError(f"{where}: the bootloader stalled the request", transient=True)
    if exc.errno in (errno.ENODEV, errno.ENOENT, errno.ESHUTDOWN):
        return DeviceError(
            f"{where}: the camera disconnected (unplugged, reset, or left the bootloader)",
            vanished=True,
        )
    if exc.errno == errno.EBUSY:
        return DeviceError(
            f"{where}: the camera is in use by another program (another ae3tools, dfu-util "
            "or OpenMV IDE has claimed it)",
            hint="Close that program, or wait for it to finish, then run this again.",
            transient=True,
        )
    if exc.errno == errno.EACCES:
        return DeviceError(
            f"{where}: permission denied opening the camera",
            hint=f"On Linux, allow access with a udev rule, then replug:\n  {UDEV_RULE}\n"
            "  (in /etc/udev/rules.d/50-openmv.rules; then: sudo udevadm control --reload)",
        )
    # An I/O error, or libusb's OTHER (errno None): how Linux reports a SET_INTERFACE the
    # device refused, as one just enumerated does.
    transient = exc.errno in (errno.EIO, None)
    return DeviceError(f"{where}: USB error: {exc.strerror or exc}", transient=transient)


def libusb_backend() -> Any:
    """pyusb's libusb1 backend, with libusb-package's bundled library as a fallback."""
    import usb.backend.libusb1

    backend = usb.backend.libusb1.get_backend()
    if backend is None:
        try:
            import libusb_package

            backend = libusb_package.get_libusb1_backend()
        except ImportError:
            backend = None
    if backend is None:
        raise Ae3Error(
            "no libusb backend found: install libusb-1.0 (apt install libusb-1.0-0) "
            "or the libusb-package Python package"
        )
    return backend


# ----------------------------------------------------------------------------- discovery


def device_path(device: usb.core.Device) -> str:
    """Bus and port numbers as dfu-util's -p prints them: "1-2.4"."""
    ports = getattr(device, "port_numbers", None) or ()
    return f"{device.bus}-{'.'.join(str(p) for p in ports)}" if ports else f"{device.bus}"


def find_bootloaders(backend: Any) -> list[usb.core.Device]:
    try:
        found = usb.core.find(
            find_all=True, idVendor=USB_VID, idProduct=BOOTLOADER_PID, backend=backend
        )
        return list(found)
    except usb.core.NoBackendError:
        raise Ae3Error("no libusb backend found: install libusb-1.0") from None


def read_serial(device: usb.core.Device) -> str | None:
    try:
        serial: str | None = usb.util.get_string(device, device.iSerialNumber)
    except (usb.core.USBError, ValueError):
        return None
    return serial


def bootloader_version(device: usb.core.Device) -> tuple[str, BootloaderRelease | None]:
    """The version bcdDevice stands for (spec §1.1, §13.2: 0x0200 is the header-less 1.0.0)."""
    return bootloader_from_bcd(device.bcdDevice)


def describe_bootloader(device: usb.core.Device) -> BootloaderInfo:
    """A bootloader from its descriptors only: no session is latched (spec §8.2)."""
    session = DfuSession(device)
    try:
        names = tuple(session.alt_names())
    finally:
        session.close()
    version, release = bootloader_version(device)
    return BootloaderInfo(read_serial(device), device_path(device), version, release, None, names)


# ----------------------------------------------------------------------------- the session


@dataclass(frozen=True)
class BootloaderInfo:
    serial: str | None
    path: str
    version: str  # what bcdDevice stands for (spec §13.2)
    release: BootloaderRelease | None  # the shipped bootloader it is, if known (§13.1)
    header_version: str | None  # from the boot header (§10); None: not read, or none there
    alt_names: tuple[str, ...]

    def describe(self) -> str:
        """The version and where it shipped; honest about the header-less 1.0.0."""
        if self.release is None:
            return self.version
        header = "" if self.release.boot_header else ", no boot header"
        return f"{self.version} ({self.release.shipped_in}{header})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": "bootloader",
            "serial": self.serial,
            "path": self.path,
            "bootloader_version": self.version,
            "boot_header_version": self.header_version,
            "shipped_in": self.release.shipped_in if self.release else None,
            "alt_names": list(self.alt_names),
        }


class DfuSession:
    """One USB session with one bootloader. Close it with detach_and_reset() or close()."""

    def __init__(self, device: usb.core.Device, *, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> None:
        self.device = device
        self.timeout_ms = timeout_ms
        self.path = device_path(device)
        self._alt: int | None = None

    # ---------------------------------------------------------------- low level

    def _usb(self, where: str, action: Callable[[], Any]) -> Any:
        try:
            return action()
        except usb.core.USBError as exc:
            raise describe_usb_error(exc, where, self.timeout_ms) from None
        except NotImplementedError:
            # pyusb's translation of LIBUSB_ERROR_NOT_SUPPORTED: on Windows, no WinUSB
            # driver is bound to the bootloader.
            raise DeviceError(f"{where}: {NO_DRIVER}", hint=NO_DRIVER_HINT) from None

    def _out(
        self,
        request: Request,
        value: int,
        data: bytes | array.array[int],
        where: str,
        timeout_ms: int | None = None,
    ) -> None:
        self._usb(
            where,
            lambda: self.device.ctrl_transfer(
                REQUEST_OUT, request, value, DFU_INTERFACE, data, timeout_ms or self.timeout_ms
            ),
        )

    def _in(
        self, request: Request, value: int, length: int, where: str, timeout_ms: int | None = None
    ) -> bytes:
        reply = self._usb(
            where,
            lambda: self.device.ctrl_transfer(
                REQUEST_IN, request, value, DFU_INTERFACE, length, timeout_ms or self.timeout_ms
            ),
        )
        return bytes(reply)

    def get_status(self, where: str = "GETSTATUS", timeout_ms: int | None = None) -> DfuStatus:
        raw = self._in(Request.GETSTATUS, 0, STATUS_LENGTH, where, timeout_ms)
        try:
            return DfuStatus.unpack(raw)
        except ValueError as exc:
            raise DeviceError(f"{where}: malformed GETSTATUS reply: {exc}") from None

    def clear_status(self) -> None:
        self._out(Request.CLRSTATUS, 0, b"", "CLRSTATUS")

    def abort(self) -> None:
        self._out(Request.ABORT, 0, b"", "ABORT")

    # ---------------------------------------------------------------- session set-up

    def open(self) -> BootloaderInfo:
        """Configure, claim, latch the session at once (§9 step 3) and describe it.

        A bootloader that has just enumerated may refuse its first requests: openmv-ota
        measured "Cannot set alternate interface" 3 times in 3 opening OpenMV's bootloader
        for another board at once, and waits 300 ms. The open is retried after 0.1, 0.2
        and 0.3 s, well inside the 1.5 s listen window (§8), when the failure is one that
        can pass (a stall, an I/O error, busy)."""
        for delay in (*OPEN_RETRY_DELAYS, None):
            try:
                header = self._attach()
                break
            except DeviceError as exc:
                if delay is None or not exc.transient:
                    raise
                time.sleep(delay)
        names = tuple(self.alt_names())
        version, release = bootloader_version(self.device)
        return BootloaderInfo(read_serial(self.device), self.path, version, release, header, names)

    def _attach(self) -> str | None:
        device = self.device

        def configure() -> None:
            if device.get_active_configuration().bConfigurationValue != 1:
                device.set_configuration(1)

        self._usb("configure", configure)
        self._usb("claim interface", lambda: usb.util.claim_interface(device, DFU_INTERFACE))
        return self.read_version()  # an UPLOAD: latches ATTACHED before the window ends

    def alt_names(self) -> list[str]:
        config = self._usb("read descriptors", self.device.get_active_configuration)
        indices = [i.iInterface for i in config if i.bInterfaceNumber == DFU_INTERFACE]
        return [self._string(index) or "" for index in indices]

    def _string(self, index: int) -> str | None:
        text: str | None = self._usb(
            "read alt names", lambda: usb.util.get_string(self.device, index)
        )
        return text

    def check_layout(self, names: Sequence[str]) -> None:
        """Refuse a device whose alt settings are not the AE3's (another board, another build)."""
        if tuple(names) != ALT_NAMES:
            raise DeviceError(
                f"device at {self.path} has alt settings {', '.join(names) or 'none'}, not the "
                f"AE3's {', '.join(ALT_NAMES)}: refusing to write to it"
            )

    def read_version(self) -> str | None:
        """UPLOAD alt 0 block 1: the boot header (§10), which also latches the session."""
        self.set_alt(BOOT.alt)
        header = self._in(
            Request.UPLOAD,
            BOOT_HEADER_OFFSET // DFU_BLOCK_SIZE,
            BOOT_HEADER_SIZE,
            "read bootloader version",
        )
        if len(header) < 7 or int.from_bytes(header[:4], "little") != BOOT_MAGIC:
            return None
        return f"{header[4]}.{header[5]}.{header[6]}"

    def set_alt(self, alt: int) -> None:
        """SET_INTERFACE: also takes the DFU state back to IDLE (§3)."""
        self._usb(
            f"select alt {alt}",
            lambda: self.device.set_interface_altsetting(DFU_INTERFACE, alt),
        )
        self._alt = alt

    def begin(self, partition: Partition) -> None:
        """Start work on one partition, §9 step 4: select the alt; leave ERROR or any
        other non-IDLE state."""
        self.set_alt(partition.alt)
        status = self.get_status(f"{partition.name} (alt {partition.alt})")
        if status.state is State.ERROR:
            self.clear_status()
        elif status.state is not State.IDLE:
            self.abort()

    # ---------------------------------------------------------------- transfers

    def _poll(
        self, where: str, busy: tuple[State, ...], timeout_ms: int | None = None
    ) -> DfuStatus:
        """GETSTATUS until the device leaves the busy states, sleeping bwPollTimeout."""
        for _ in range(MAX_POLLS):
            status = self.get_status(where, timeout_ms)
            if status.state is State.ERROR:
                with contextlib.suppress(DeviceError):
                    self.clear_status()  # leave ERROR, so the session stays usable (§9)
                raise DfuStatusError(where, status)
            if status.state not in busy:
                return status
            if status.poll_timeout_ms:
                time.sleep(status.poll_timeout_ms / 1000)
        raise DeviceError(f"{where}: the bootloader stayed busy through {MAX_POLLS} polls")

    def write_block(
        self,
        partition: Partition,
        block: int,
        data: bytes | memoryview,
        timeout_ms: int | None = None,
    ) -> None:
        """DNLOAD one block (at block x 4096, §5) and wait for DNLOAD_IDLE (§4.3)."""
        where = f"{partition.name} (alt {partition.alt}) block {block}"
        # pyusb passes an array('B') through as is; anything else it copies byte by byte.
        payload = array.array("B")
        payload.frombytes(data)
        self._out(Request.DNLOAD, block, payload, where, timeout_ms)
        status = self._poll(where, (State.DNBUSY, State.DNLOAD_SYNC), timeout_ms)
        if status.state is not State.DNLOAD_IDLE:
            raise DeviceError(
                f"{where}: expected DNLOAD_IDLE, the bootloader is in {status.state.name}"
            )

    def read_block(self, partition: Partition, block: int) -> bytes:
        """UPLOAD one whole block (§6); a short reply is an error or the end marker."""
        where = f"{partition.name} (alt {partition.alt}) read block {block}"
        chunk = self._in(Request.UPLOAD, block, DFU_BLOCK_SIZE, where)
        if len(chunk) != DFU_BLOCK_SIZE:
            status = self.get_status(where)
            if status.state is State.ERROR:
                self.clear_status()
                raise DfuStatusError(where, status)
            raise DeviceError(f"{where}: short read of {len(chunk)} bytes (end of partition)")
        return chunk

    def download(
        self,
        partition: Partition,
        data: bytes,
        *,
        progress: Progress | None = None,
        timeout_ms: int | None = None,
    ) -> None:
        """Write `data` at the start of `partition`, every block, then the manifest."""
        self.begin(partition)
        view = memoryview(data)
        offsets = range(0, len(data), DFU_BLOCK_SIZE)
        for block, offset in enumerate(offsets):
            self.write_block(partition, block, view[offset : offset + DFU_BLOCK_SIZE], timeout_ms)
            if progress:
                progress(min(offset + DFU_BLOCK_SIZE, len(data)))
        self.manifest(partition, len(offsets), timeout_ms)

    def manifest(self, partition: Partition, block: int, timeout_ms: int | None = None) -> None:
        """The zero-length DNLOAD that ends an image (§4.3); manifestation-tolerant: IDLE."""
        where = f"{partition.name} (alt {partition.alt}) manifest"
        self._out(Request.DNLOAD, block, b"", where, timeout_ms)
        status = self._poll(where, (State.MANIFEST, State.MANIFEST_SYNC), timeout_ms)
        if status.state is not State.IDLE:
            raise DeviceError(f"{where}: expected IDLE, the bootloader is in {status.state.name}")

    def read_blocks(
        self, partition: Partition, length: int, *, progress: Progress | None = None
    ) -> Iterator[bytes]:
        """The first `length` bytes of `partition`, block by block (§6); the last block
        is cut to `length`."""
        self.begin(partition)
        for offset in range(0, length, DFU_BLOCK_SIZE):
            chunk = self.read_block(partition, offset // DFU_BLOCK_SIZE)
            yield chunk[: length - offset]
            if progress:
                progress(min(offset + DFU_BLOCK_SIZE, length))

    # ---------------------------------------------------------------- ending

    def detach_and_reset(self) -> None:
        """DETACH, then a USB reset, as dfu-util -R does: the camera boots (§8.3)."""
        try:
            self._out(Request.DETACH, 0, b"", "DETACH")
        except DeviceError as exc:
            if not exc.vanished:
                raise
        with contextlib.suppress(usb.core.USBError):
            self.device.reset()  # it may have left already: DETACH alone ends the session
        self.close()

    def close(self) -> None:
        with contextlib.suppress(usb.core.USBError):
            usb.util.dispose_resources(self.device)
