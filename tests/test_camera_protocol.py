"""The running camera's protocols as data: the spec's worked examples (openmv-protocol.md
§3.11), the serial mapping (§1.4), and how the host tells a v4 reply from noise (§6.1).
The virtual camera's side is in test_virtual_camera.py."""

from __future__ import annotations

import pytest

from ae3tools.camera.protocol import (
    BadPacket,
    Caps,
    Flag,
    Opcode,
    Packet,
    UsbdbgCommand,
    crc16,
    crc32,
    decode,
    pack_caps,
    usbdbg_command,
)
from ae3tools.camera.reboot import implausible_v2, plausible_usbdbg
from ae3tools.formats.identity import application_serial, same_camera

H = bytes.fromhex


def test_crc_check_values() -> None:
    # §3.3: not standard CRCs; their check values over "123456789".
    assert crc16(b"123456789") == 0xE541
    assert crc32(b"123456789") == 0x41B403D3


def nak(opcode: int, status: str) -> Packet:
    return Packet(opcode, flags=Flag.NAK, payload=H(status))


VERSION_PAYLOAD = H("01 00 02 01 00 03 05 00 00 00 00 00 00 00 00 00")
CAPS_PAYLOAD = H("0F 00 00 00 F2 1F") + bytes(10)

# §3.11, byte for byte.
WORKED = [
    (Packet(Opcode.PROTO_SYNC), "AA D5 00 00 00 00 00 00 B0 AC"),
    (Packet(Opcode.PROTO_SYNC, flags=Flag.ACK), "AA D5 00 00 01 00 00 00 08 46"),
    (Packet(Opcode.PROTO_VERSION), "AA D5 00 00 00 04 00 00 33 90"),
    (
        Packet(Opcode.PROTO_VERSION, flags=Flag.ACK_REQ, payload=VERSION_PAYLOAD),
        "AA D5 00 00 08 04 10 00 1F 46" + VERSION_PAYLOAD.hex() + "65 5C F2 99",
    ),
    (
        Packet(Opcode.PROTO_VERSION, payload=VERSION_PAYLOAD),
        "AA D5 00 00 00 04 10 00 E3 F6" + VERSION_PAYLOAD.hex() + "65 5C F2 99",
    ),
    (
        Packet(Opcode.PROTO_VERSION, flags=Flag.ACK_REQ | Flag.RTX, payload=VERSION_PAYLOAD),
        "AA D5 00 00 0C 04 10 00 61 1E" + VERSION_PAYLOAD.hex() + "65 5C F2 99",
    ),
    (Packet(Opcode.PROTO_VERSION, flags=Flag.ACK), "AA D5 00 00 01 04 00 00 8B 7A"),
    (Packet(Opcode.SYS_INFO, 1), "AA D5 01 00 00 12 00 00 14 DB"),
    (Packet(Opcode.SYS_INFO, 1, flags=Flag.ACK), "AA D5 01 00 01 12 00 00 AC 31"),
    (Packet(Opcode.SYS_BOOT, 0), "AA D5 00 00 00 11 00 00 CF 2F"),
    (Packet(Opcode.SYS_BOOT, 1), "AA D5 01 00 00 11 00 00 81 48"),
    (Packet(Opcode.SYS_BOOT, 2), "AA D5 02 00 00 11 00 00 53 E1"),
    (Packet(Opcode.SYS_RESET, 0), "AA D5 00 00 00 10 00 00 BC 5E"),
    (Packet(Opcode.SYS_RESET, 1), "AA D5 01 00 00 10 00 00 F2 39"),
    (Packet(Opcode.PROTO_GET_CAPS), "AA D5 00 00 00 01 00 00 C3 DD"),
    (
        Packet(Opcode.PROTO_GET_CAPS, flags=Flag.ACK_REQ, payload=CAPS_PAYLOAD),
        "AA D5 00 00 08 01 10 00 EF 0B" + CAPS_PAYLOAD.hex() + "6C F4 5D B8",
    ),
    (
        Packet(Opcode.PROTO_SET_CAPS, 1, payload=pack_caps(Caps(0x0B), 4096)),
        "AA D5 01 00 00 02 10 00 C8 4F 0B 00 00 00 00 10" + "00" * 10 + "E1 0C D1 3C",
    ),
    (Packet(Opcode.PROTO_SET_CAPS, 1, flags=Flag.ACK), "AA D5 01 00 01 02 00 00 A0 C3"),
    (nak(0x30, "02 00"), "AA D5 00 00 02 30 02 00 0E 63 02 00 D5 4A 11 C4"),
    (nak(0x11, "06 00"), "AA D5 00 00 02 11 02 00 2A 0F 06 00 DE 22 81 9A"),
    (nak(0x02, "05 00"), "AA D5 00 00 02 02 02 00 B3 6E 05 00 BB 93 F8 DC"),
    (
        Packet(0x11, channel=1, flags=Flag.NAK, payload=H("02 00")),
        "AA D5 00 01 02 11 02 00 51 52 02 00 D5 4A 11 C4",
    ),
    (
        Packet(Opcode.SYS_EVENT, flags=Flag.EVENT, payload=H("02 00")),
        "AA D5 00 00 20 13 02 00 D2 09 02 00 D5 4A 11 C4",
    ),
    (Packet(0x29, 1, channel=2, flags=Flag.EVENT), "AA D5 01 02 20 29 00 00 0B AC"),
]  # fmt: skip


@pytest.mark.parametrize(("packet", "wire"), WORKED)
def test_worked_examples_encode_and_decode(packet: Packet, wire: str) -> None:
    assert packet.encode() == H(wire)
    assert decode(H(wire)) == packet


def test_decode_refuses_bad_crcs() -> None:
    good = bytearray(Packet(Opcode.PROTO_VERSION, payload=VERSION_PAYLOAD).encode())
    header = bytearray(good)
    header[8] ^= 1
    with pytest.raises(BadPacket, match="header CRC"):
        decode(bytes(header))
    good[-1] ^= 1
    with pytest.raises(BadPacket, match="payload CRC"):
        decode(bytes(good))


def test_usbdbg_commands() -> None:
    # §4.2, §6.1.
    assert usbdbg_command(UsbdbgCommand.FW_VERSION) == H("30 80 0C 00 00 00")
    assert usbdbg_command(UsbdbgCommand.SYS_RESET_TO_BL) == H("30 0E 00 00 00 00")
    assert usbdbg_command(UsbdbgCommand.SYS_RESET) == H("30 0C 00 00 00 00")


def test_serial_mapping() -> None:
    # §1.4: the SE library's own test vector.
    assert application_serial("4F6A1C6A3381" + "0" * 12) == "9fab9ab381000000"
    assert application_serial("not a serial") is None
    bootloader = "4F6A1C6A3381DEADBEEF0000"
    assert same_camera(bootloader, "9fab9ab381000000")
    assert same_camera(bootloader, bootloader.lower())
    assert not same_camera(bootloader, "9fab9ab381000001")
    assert not same_camera("0" * 24, "0" * 16)  # a failed SE call names no camera


@pytest.mark.parametrize(
    ("reply", "version"),
    [
        ("04 00 00 00 08 00 00 00 01 00 00 00", (4, 8, 1)),
        ("04 00 00 00 07 00 00 00 00 00 00 00", (4, 7, 0)),
        # §6.1: a printing v5 camera's stdout events, read as 12 bytes, are not a version.
        ("AA D5 00 02 20 29 00 00 45 CB AA D5", None),
        ("04 00 00 00 09 00 00 00 00 00 00 00", None),  # no v4.9 exists
        ("05 00 00 00 00 00 00 00 00 00 00 00", None),
        ("04 00 00 00 08 00 00 00 00 01 00 00", None),  # patch 256
        ("04 00 00 00 08 00 00 00 01 00 00", None),  # 11 bytes
    ],
)
def test_a_usbdbg_version_is_believed_only_if_one_was_released(
    reply: str, version: tuple[int, int, int] | None
) -> None:
    assert plausible_usbdbg(H(reply)) == version


def test_implausible_v2_versions_are_named() -> None:
    assert implausible_v2((1, 0, 2), (5, 0, 0)) is None
    assert implausible_v2((1, 0, 2), (5, 12, 3)) is None
    assert "firmware version 0.0.0" in (implausible_v2((1, 0, 2), (0, 0, 0)) or "")
    assert "firmware version 4.8.1" in (implausible_v2((1, 0, 2), (4, 8, 1)) or "")
    assert "protocol version 2.0.0" in (implausible_v2((2, 0, 0), (5, 0, 0)) or "")
