"""DFU 1.1 as the AE3 bootloader speaks it: requests, states, statuses (spec §3, §4).

Shared by the host and the virtual device, so both name things the same way.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

# A host's control transfer timeout: dfu-util's default (spec §7 mentions it).
DEFAULT_TIMEOUT_MS = 5000
# spec §7: recovery runs four chip erases inside one GETSTATUS; give it minutes, not 5 s.
RECOVERY_TIMEOUT_MS = 300_000

# spec §3: class requests use interface recipient; bmRequestType 0x21 (OUT) or 0xA1 (IN).
REQUEST_OUT = 0x21
REQUEST_IN = 0xA1


class Request(IntEnum):
    """spec §3: DFU class requests."""

    DETACH = 0
    DNLOAD = 1
    UPLOAD = 2
    GETSTATUS = 3
    CLRSTATUS = 4
    GETSTATE = 5
    ABORT = 6


class State(IntEnum):
    """spec §3: DFU states (dfu.h)."""

    APP_IDLE = 0
    APP_DETACH = 1
    IDLE = 2
    DNLOAD_SYNC = 3
    DNBUSY = 4
    DNLOAD_IDLE = 5
    MANIFEST_SYNC = 6
    MANIFEST = 7
    MANIFEST_WAIT_RESET = 8
    UPLOAD_IDLE = 9
    ERROR = 10


class Status(IntEnum):
    """spec §3: DFU status codes; the AE3 produces OK, errFILE, errWRITE, errADDRESS."""

    OK = 0x00
    errTARGET = 0x01
    errFILE = 0x02
    errWRITE = 0x03
    errERASE = 0x04
    errCHECK_ERASED = 0x05
    errPROG = 0x06
    errVERIFY = 0x07
    errADDRESS = 0x08
    errNOTDONE = 0x09
    errFIRMWARE = 0x0A
    errVENDOR = 0x0B
    errUSBR = 0x0C
    errPOR = 0x0D
    errUNKNOWN = 0x0E
    errSTALLEDPKT = 0x0F

    @classmethod
    def parse(cls, text: str) -> Status:
        """A status by name (errWRITE, write, 3) for fault specs and options."""
        for status in cls:
            if text.lower() in (status.name.lower(), status.name.lower().removeprefix("err")):
                return status
        try:
            return cls(int(text, 0))
        except ValueError:
            raise ValueError(f"unknown DFU status {text!r}") from None


# What each status means to someone flashing an AE3 (spec §5-§7 for the ones it sends).
STATUS_SENTENCES: dict[Status, str] = {
    Status.OK: "no error",
    Status.errTARGET: "the file is not for this device",
    Status.errFILE: "the partition cannot be read back (on RECOVERY: it has nothing to read)",
    Status.errWRITE: "the bootloader refused or failed the write (BOOT is read-only; on "
    "RECOVERY: wrong key, or recovery already ran this session)",
    Status.errERASE: "the memory could not be erased",
    Status.errCHECK_ERASED: "the memory did not read back erased",
    Status.errPROG: "the memory could not be programmed",
    Status.errVERIFY: "the memory did not verify after programming",
    Status.errADDRESS: "the image does not fit its partition (a block lies past the end)",
    Status.errNOTDONE: "the image ended before it was complete",
    Status.errFIRMWARE: "the firmware on the device is corrupt",
    Status.errVENDOR: "a vendor-specific error",
    Status.errUSBR: "an unexpected USB reset",
    Status.errPOR: "an unexpected power-on reset",
    Status.errUNKNOWN: "an unknown error",
    Status.errSTALLEDPKT: "the device stalled an unexpected request",
}

_STATUS_RECORD = struct.Struct("<B3sBB")  # bStatus, bwPollTimeout (24-bit LE), bState, iString
STATUS_LENGTH = _STATUS_RECORD.size


@dataclass(frozen=True)
class DfuStatus:
    """A GETSTATUS reply (spec §3)."""

    status: Status
    poll_timeout_ms: int
    state: State

    def pack(self) -> bytes:
        return _STATUS_RECORD.pack(
            self.status, self.poll_timeout_ms.to_bytes(3, "little"), self.state, 0
        )

    @classmethod
    def unpack(cls, data: bytes) -> DfuStatus:
        if len(data) < STATUS_LENGTH:
            raise ValueError(f"GETSTATUS reply of {len(data)} bytes, expected {STATUS_LENGTH}")
        status, poll, state, _ = _STATUS_RECORD.unpack(bytes(data[:STATUS_LENGTH]))
        return cls(Status(status), int.from_bytes(poll, "little"), State(state))


# USB standard requests and descriptor types (USB 2.0 §9.4) that the bootloader answers.
class StdRequest(IntEnum):
    GET_STATUS = 0
    CLEAR_FEATURE = 1
    SET_FEATURE = 3
    GET_DESCRIPTOR = 6
    GET_CONFIGURATION = 8
    SET_CONFIGURATION = 9
    GET_INTERFACE = 10
    SET_INTERFACE = 11


DEVICE_REMOTE_WAKEUP = 1  # USB 2.0 table 9-6, the one device feature the bootloader takes


class DescriptorType(IntEnum):
    DEVICE = 1
    CONFIGURATION = 2
    STRING = 3
    DEVICE_QUALIFIER = 6


# ----------------------------------------------------------------------------- releases


@dataclass(frozen=True)
class BootloaderRelease:
    """One bootloader shipped in released cameras (spec §13.1).

    Descriptors, alt names, partitions, flash drivers and the recovery key are the same
    in all of them; what differs is how the version shows, and what DETACH does.
    """

    version: tuple[int, int, int]
    bcd_device: int
    boot_header: bool  # the 32-byte header at BOOT + 0x1000 (§10); absent before 1.0.1
    detach_leaves: bool  # 1.0.2+: DETACH leaves at once; before: it only re-arms the timeout
    shipped_in: str

    @property
    def name(self) -> str:
        return ".".join(str(part) for part in self.version)


BOOTLOADER_RELEASES: tuple[BootloaderRelease, ...] = (
    BootloaderRelease((1, 0, 0), 0x0200, False, False, "v4.7.0 and v4.8.0"),
    BootloaderRelease((1, 0, 1), 0x0101, True, False, "development builds of 2025-12-16..21"),
    BootloaderRelease((1, 0, 2), 0x0102, True, True, "v4.8.1"),
    BootloaderRelease((1, 0, 3), 0x0103, True, True, "v5.0.0 and later"),
)
LATEST_BOOTLOADER = BOOTLOADER_RELEASES[-1]
# §13.1: the header-less bootloader of v4.7.0 and v4.8.0 ("1.0.0 era").
BOOTLOADER_ALIASES = {"legacy": BOOTLOADER_RELEASES[0]}


def bootloader_release(name: str) -> BootloaderRelease:
    """A release by version ("1.0.2") or alias ("legacy"); ValueError otherwise."""
    for release in BOOTLOADER_RELEASES:
        if release.name == name:
            return release
    if name in BOOTLOADER_ALIASES:
        return BOOTLOADER_ALIASES[name]
    names = ", ".join([*(r.name for r in BOOTLOADER_RELEASES), *BOOTLOADER_ALIASES])
    raise ValueError(f"bootloader {name!r}: expected one of {names}")


def bootloader_from_bcd(bcd_device: int) -> tuple[str, BootloaderRelease | None]:
    """The version a bootloader's bcdDevice stands for (§13.2 step 1).

    0x0200 is the literal of the header-less 1.0.0, not "2.0.0"; from 1.0.1 on it is
    (major << 8) | (minor << 4) | patch (§1.1). Unknown values decode by that formula.
    """
    for release in BOOTLOADER_RELEASES:
        if release.bcd_device == bcd_device:
            return release.name, release
    return f"{bcd_device >> 8}.{(bcd_device >> 4) & 0xF}.{bcd_device & 0xF}", None
