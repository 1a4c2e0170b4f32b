"""The running camera's debug protocols on its CDC port, as data: no I/O here.

Protocol V2 (firmware v5, "G3") and the legacy usbdbg commands (v4.7-v4.8, "G1"/"G2"),
from openmv-protocol.md (cited as §N). Shared by the host (`ae3tools.camera.reboot`) and
the virtual running camera (`ae3tools.virtual.camera`), so both build and read the
same bytes.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, IntEnum, IntFlag

import crcmod

# §2.1, §2.2: the line codings that select the debug protocol (baud has no meaning on USB).
V2_BAUD = 921600  # OMV_PROTOCOL_MAGIC_BAUDRATE: V2 on G3; usbdbg on G1/G2
USBDBG_FAST_BAUD = 12_000_000  # usbdbg only
TOUCH_BAUD = 1200  # G1/G2: forced bootloader entry at once (no G3 equivalent)
REPL_BAUD = 115200  # TinyUSB's default line coding: the REPL


class Generation(str, Enum):
    """Firmware generations on the AE3 (§0)."""

    G1 = "v4.7"  # usbdbg; a 6-byte unit not starting with 0x30 is fatal (§4.3)
    G2 = "v4.8"  # usbdbg; such units are ignored
    G3 = "v5"  # protocol V2

    @property
    def protocol(self) -> str:
        return "V2" if self is Generation.G3 else "usbdbg"


# ----------------------------------------------------------------------------- V2 (§3)

SYNC_WORD = 0xD5AA  # §3.1: wire bytes AA D5
SYNC_BYTES = b"\xaa\xd5"
_HEADER = struct.Struct("<HBBBBH")  # sync, sequence, channel, flags, opcode, length
HEADER_SIZE = _HEADER.size + 2  # plus the header CRC-16
PAYLOAD_CRC_SIZE = 4

# §3.3: neither is a standard named CRC; MSB-first, no reflection, no final XOR.
crc16: Callable[[bytes], int] = crcmod.mkCrcFun(0x1F94F, initCrc=0xFFFF, rev=False, xorOut=0)
crc32: Callable[[bytes], int] = crcmod.mkCrcFun(
    0x1FA567D89, initCrc=0xFFFFFFFF, rev=False, xorOut=0
)


class Flag(IntFlag):
    """§3.2."""

    NONE = 0
    ACK = 0x01
    NAK = 0x02
    RTX = 0x04
    ACK_REQ = 0x08
    FRAGMENT = 0x10
    EVENT = 0x20


class Opcode(IntEnum):
    """§3.9."""

    PROTO_SYNC = 0x00
    PROTO_GET_CAPS = 0x01
    PROTO_SET_CAPS = 0x02
    PROTO_STATS = 0x03
    PROTO_VERSION = 0x04
    SYS_RESET = 0x10
    SYS_BOOT = 0x11
    SYS_INFO = 0x12
    SYS_EVENT = 0x13
    SYS_MEMORY = 0x14
    CHANNEL_LIST = 0x20
    CHANNEL_POLL = 0x21
    CHANNEL_LOCK = 0x22
    CHANNEL_UNLOCK = 0x23
    CHANNEL_SHAPE = 0x24
    CHANNEL_SIZE = 0x25
    CHANNEL_READ = 0x26
    CHANNEL_WRITE = 0x27
    CHANNEL_IOCTL = 0x28
    CHANNEL_EVENT = 0x29


SYSTEM_OPCODE_LIMIT = 0x14  # §3.8: opcodes up to here are channel 0 only


class Status(IntEnum):
    """§3.5: the u16 a NAK carries."""

    SUCCESS = 0
    FAILED = 1
    INVALID = 2
    TIMEOUT = 3
    BUSY = 4
    CHECKSUM = 5
    SEQUENCE = 6
    OVERFLOW = 7
    FRAGMENT = 8
    UNKNOWN = 9


@dataclass(frozen=True)
class Packet:
    """One V2 packet (§3.1)."""

    opcode: int
    sequence: int = 0
    channel: int = 0
    flags: Flag = Flag.NONE
    payload: bytes = b""

    def encode(self) -> bytes:
        header = _HEADER.pack(
            SYNC_WORD,
            self.sequence & 0xFF,
            self.channel,
            self.flags,
            self.opcode,
            len(self.payload),
        )
        packet = header + crc16(header).to_bytes(2, "little")
        if self.payload:
            packet += self.payload + crc32(self.payload).to_bytes(4, "little")
        return packet

    @property
    def is_event(self) -> bool:
        return bool(self.flags & Flag.EVENT)

    @property
    def nak_status(self) -> Status | None:
        if not self.flags & Flag.NAK or len(self.payload) < 2:
            return None
        code = int.from_bytes(self.payload[:2], "little")
        return Status(code) if code in Status._value2member_map_ else Status.UNKNOWN


class BadPacket(ValueError):
    """Bytes that are not a valid V2 packet (which check failed is in the message)."""


@dataclass(frozen=True)
class Header:
    sequence: int
    channel: int
    flags: Flag
    opcode: int
    length: int

    @property
    def packet_size(self) -> int:
        """§3.1: OMV_PROTOCOL_PACKET_GET_SIZE."""
        return HEADER_SIZE + self.length + (PAYLOAD_CRC_SIZE if self.length else 0)


def header_crc_ok(data: bytes) -> bool:
    return crc16(data[: _HEADER.size]) == int.from_bytes(data[_HEADER.size : HEADER_SIZE], "little")


def decode_header(data: bytes, *, check_crc: bool = True) -> Header:
    """The header at the start of `data` (at least HEADER_SIZE bytes, starting AA D5)."""
    if len(data) < HEADER_SIZE:
        raise BadPacket(f"{len(data)} bytes, less than a header")
    sync, sequence, channel, flags, opcode, length = _HEADER.unpack_from(data)
    if sync != SYNC_WORD:
        raise BadPacket("no sync word")
    if check_crc and not header_crc_ok(data):
        raise BadPacket("bad header CRC")
    return Header(sequence, channel, Flag(flags), opcode, length)


def payload_crc_ok(header: Header, data: bytes) -> bool:
    if not header.length:
        return True
    payload = data[HEADER_SIZE : HEADER_SIZE + header.length]
    stored = data[HEADER_SIZE + header.length : header.packet_size]
    return crc32(payload) == int.from_bytes(stored, "little")


def decode(data: bytes) -> Packet:
    """One whole packet (exactly its bytes), every check applied."""
    header = decode_header(data)
    if len(data) != header.packet_size:
        raise BadPacket(f"{len(data)} bytes for a packet of {header.packet_size}")
    if not payload_crc_ok(header, data):
        raise BadPacket("bad payload CRC")
    payload = data[HEADER_SIZE : HEADER_SIZE + header.length]
    return Packet(header.opcode, header.sequence, header.channel, header.flags, bytes(payload))


# §3.10: PROTO_VERSION: protocol, bootloader, firmware versions (3 bytes each), then zeros.
VERSION_PAYLOAD_SIZE = 16
# GET_CAPS/SET_CAPS: u32 flags (crc, seq, ack, events), u16 max payload, 10 reserved.
_CAPS = struct.Struct("<IH10x")


class Caps(IntFlag):
    CRC = 0x01
    SEQ = 0x02
    ACK = 0x04
    EVENTS = 0x08


DEFAULT_CAPS = Caps.CRC | Caps.SEQ | Caps.ACK | Caps.EVENTS  # §3.10, after SYNC
MAX_PAYLOAD = 8178  # §3.7: 8192-byte buffer on the AE3, less header and CRC


def pack_caps(caps: Caps, max_payload: int) -> bytes:
    return _CAPS.pack(caps, max_payload)


def unpack_caps(payload: bytes) -> tuple[Caps, int]:
    flags, max_payload = _CAPS.unpack_from(payload)
    return Caps(flags & 0x0F), max_payload


Version = tuple[int, int, int]


def pack_versions(protocol: Version, bootloader: Version, firmware: Version) -> bytes:
    return bytes([*protocol, *bootloader, *firmware]).ljust(VERSION_PAYLOAD_SIZE, b"\0")


def unpack_versions(payload: bytes) -> tuple[Version, Version, Version]:
    if len(payload) < 9:
        raise BadPacket(f"PROTO_VERSION reply of {len(payload)} bytes")
    p = payload
    return (p[0], p[1], p[2]), (p[3], p[4], p[5]), (p[6], p[7], p[8])


# ----------------------------------------------------------------------------- usbdbg (§4)

USBDBG_MAGIC = 0x30
USBDBG_UNIT = 6  # §4.1: headers are read in 6-byte units


class UsbdbgCommand(IntEnum):
    """§4.2: bit 7 set means the device answers with `length` bytes."""

    FW_VERSION = 0x80
    ARCH_STR = 0x83
    SCRIPT_RUNNING = 0x87
    SENSOR_ID = 0x90
    SYS_RESET = 0x0C
    SYS_RESET_TO_BL = 0x0E


USBDBG_REPLY_SIZES = {
    UsbdbgCommand.FW_VERSION: 12,
    UsbdbgCommand.ARCH_STR: 64,
    UsbdbgCommand.SCRIPT_RUNNING: 4,
    UsbdbgCommand.SENSOR_ID: 4,
}


def usbdbg_command(command: UsbdbgCommand) -> bytes:
    """`30 <opcode> <u32 LE length>`: the length a reply has, 0 for the others."""
    length = USBDBG_REPLY_SIZES.get(command, 0)
    return bytes([USBDBG_MAGIC, command]) + length.to_bytes(4, "little")


def unpack_fw_version(reply: bytes) -> Version:
    """FW_VERSION's 12 bytes: 3 x u32 LE (major, minor, patch)."""
    major, minor, patch = struct.unpack("<III", reply[:12])
    return major, minor, patch


def generation_of_usbdbg(version: Version) -> Generation:
    """§0: v4.7.0 is G1; v4.8.x is G2."""
    return Generation.G1 if version[:2] <= (4, 7) else Generation.G2


def version_text(version: Version) -> str:
    return ".".join(str(part) for part in version)


_VERSION = re.compile(r"v?(\d{1,3})\.(\d{1,3})\.(\d{1,3})")


def parse_version(text: str) -> Version | None:
    """ "v4.8.1" (a git tag, as the REPL banner shows it) as (4, 8, 1); None if it is not one."""
    match = _VERSION.match(text)
    if match is None:
        return None
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch
