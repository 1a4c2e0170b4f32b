"""The running camera's protocols, as bytes: the spec's worked examples (openmv-protocol.md
§3.11), the serial mapping (§1.4), and the virtual application against the simulator
checklist (§7), fed bytes and line states directly."""

from __future__ import annotations

import pytest

from ae3tools.camera.protocol import (
    REPL_BAUD,
    TOUCH_BAUD,
    USBDBG_FAST_BAUD,
    V2_BAUD,
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
from ae3tools.formats.identity import application_serial, same_camera
from ae3tools.virtual.application import (
    FIRMWARES,
    AppFault,
    BootRequest,
    VirtualApplication,
    split_faults,
)

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


# ------------------------------------------------------------------ the virtual application


def app(mode: str = "app", **kwargs: object) -> VirtualApplication:
    clock = kwargs.pop("clock", None)
    camera = VirtualApplication(
        FIRMWARES[mode],
        serial="9fab9ab381000000",
        reported_bootloader=(1, 0, 3),
        arch_id="9FAB9AB38100000000000000",
        **({"clock": clock} if clock else {}),  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )
    camera.set_line(V2_BAUD, True)
    return camera


SYNC = Packet(Opcode.PROTO_SYNC).encode()
SYNC_ACK = H("AA D5 00 00 01 00 00 00 08 46")


def test_v2_sync_version_and_boot() -> None:
    camera = app()
    assert camera.receive(SYNC) == SYNC_ACK
    reply = decode(camera.receive(Packet(Opcode.PROTO_VERSION, 1).encode()))
    assert reply.flags == Flag.ACK_REQ and reply.sequence == 1
    assert reply.payload[:9] == H("01 00 02 01 00 03 05 00 00")  # proto 1.0.2, boot 1.0.3, fw 5.0.0
    assert camera.receive(Packet(Opcode.PROTO_VERSION, 1, flags=Flag.ACK).encode()) == b""
    assert camera.receive(Packet(Opcode.SYS_BOOT, 2).encode()) == b""  # no reply (§3.5)
    assert camera.boot_request is BootRequest.FORCED


def test_v2_sys_reset_is_not_forced() -> None:
    camera = app()
    camera.receive(SYNC)
    camera.receive(Packet(Opcode.SYS_RESET, 1).encode())
    assert camera.boot_request is BootRequest.NORMAL


def test_v2_parser_checklist() -> None:
    camera = app()
    camera.receive(SYNC)
    # A bad header CRC: silent; the parser skips a byte and finds nothing more.
    broken = bytearray(Packet(Opcode.PROTO_VERSION, 1).encode())
    broken[9] ^= 0xFF
    assert camera.receive(bytes(broken)) == b""
    # A bad payload CRC: NAK CHECKSUM, the packet consumed (the spec's example, at seq 0).
    camera = app()
    set_caps = bytearray(Packet(Opcode.PROTO_SET_CAPS, 0, payload=bytes(16)).encode())
    set_caps[-1] ^= 0xFF
    assert camera.receive(bytes(set_caps)) == H("AA D5 00 00 02 02 02 00 B3 6E 05 00 BB 93 F8 DC")
    # A system opcode on channel 1: NAK INVALID; an unknown opcode: NAK INVALID.
    camera = app()
    on_channel = Packet(Opcode.SYS_BOOT, 0, channel=1).encode()
    assert camera.receive(on_channel) == H("AA D5 00 01 02 11 02 00 51 52 02 00 D5 4A 11 C4")
    assert camera.boot_request is None
    camera = app()
    assert camera.receive(Packet(0x30).encode()) == H(
        "AA D5 00 00 02 30 02 00 0E 63 02 00 D5 4A 11 C4"
    )
    # A request out of sequence: NAK SEQUENCE, and it is not acted on.
    camera = app()
    nak = camera.receive(Packet(Opcode.SYS_BOOT, 5).encode())
    assert nak.startswith(H("AA D5 00 00 02 11 02 00 2A 0F 06 00")) and camera.boot_request is None
    # Longer than the negotiated payload: NAK OVERFLOW.
    camera = app()
    camera.receive(SYNC)
    camera.receive(Packet(Opcode.PROTO_SET_CAPS, 1, payload=pack_caps(Caps(0x03), 64)).encode())
    overflow = decode(camera.receive(Packet(0x27, 2, channel=1, payload=bytes(65)).encode()))
    assert overflow.nak_status is not None and overflow.nak_status.name == "OVERFLOW"


def test_split_reads_and_two_packets_in_one() -> None:
    camera = app()
    out = b"".join(camera.receive(bytes([byte])) for byte in SYNC)
    assert out == SYNC_ACK
    camera = app()
    both = camera.receive(SYNC + Packet(Opcode.PROTO_GET_CAPS, 1).encode())
    assert (
        both.startswith(SYNC_ACK) and decode(both[len(SYNC_ACK) :]).opcode == Opcode.PROTO_GET_CAPS
    )


def test_a_truncated_packet_waits_until_a_later_sync_recovers() -> None:
    camera = app()
    truncated = Packet(0x27, 0, channel=1, payload=bytes(40)).encode()[:20]
    assert camera.receive(truncated) == b""  # no timeout: it waits for the rest
    assert camera.receive(SYNC) == SYNC_ACK  # SYNC recovery (§3.8 step 3)


def test_ack_req_retransmissions_then_reset() -> None:
    now = [0.0]
    camera = app(clock=lambda: now[0])
    camera.receive(SYNC)
    version = camera.receive(Packet(Opcode.PROTO_VERSION, 1).encode())
    assert decode(version).flags == Flag.ACK_REQ
    resent = []
    for t in (0.49, 0.5, 1.5, 3.5):
        now[0] = t
        resent.append(camera.poll())
    assert resent[0] == b"" and all(resent[1:])
    assert all(decode(r).flags == Flag.ACK_REQ | Flag.RTX for r in resent[1:])
    # While it waits, other requests stay buffered; the matching ACK releases them.
    assert camera.receive(Packet(Opcode.PROTO_GET_CAPS, 2).encode()) == b""
    caps = camera.receive(Packet(Opcode.PROTO_VERSION, 1, flags=Flag.ACK).encode())
    assert decode(caps).opcode == Opcode.PROTO_GET_CAPS
    # That reply (sent at 3.5 s) is never acknowledged: resent at +0.5, +1.5, +3.5 s,
    # and at +7.5 s the protocol resets, sequence back to 0 (§3.6).
    for t in (4.0, 5.0, 7.0):
        now[0] = t
        assert decode(camera.poll()).flags == Flag.ACK_REQ | Flag.RTX
    now[0] = 10.9
    assert camera.poll() == b"" and camera.awaiting is not None
    now[0] = 11.0
    assert camera.poll() == b"" and camera.awaiting is None and camera.sequence == 0


def test_mode_follows_line_coding_and_dtr() -> None:
    camera = app()
    camera.set_line(REPL_BAUD, True)
    assert camera.receive(SYNC) == SYNC  # the REPL echoes; no protocol at the wrong baud
    camera.set_line(USBDBG_FAST_BAUD, True)
    assert camera.receive(SYNC) == SYNC  # 12 Mbaud does not activate V2 on G3
    legacy = app("app-legacy")
    legacy.set_line(USBDBG_FAST_BAUD, True)
    assert len(legacy.receive(usbdbg_command(UsbdbgCommand.FW_VERSION))) == 12
    legacy.set_line(USBDBG_FAST_BAUD, False)
    assert legacy.receive(usbdbg_command(UsbdbgCommand.FW_VERSION)) == b""  # DTR=1 needed
    legacy.set_line(TOUCH_BAUD, False)  # the 1200-baud touch: no DTR, no write
    assert legacy.boot_request is BootRequest.FORCED
    g3 = app()
    g3.set_line(TOUCH_BAUD, True)
    assert g3.boot_request is None  # G3 has no touch (§2.1)


def test_usbdbg_replies_and_bootloader_requests() -> None:
    camera = app("app-legacy")
    assert camera.receive(usbdbg_command(UsbdbgCommand.FW_VERSION)) == H(
        "04 00 00 00 08 00 00 00 01 00 00 00"
    )
    arch = camera.receive(usbdbg_command(UsbdbgCommand.ARCH_STR))
    assert len(arch) == 64 and arch.startswith(b"OPENMV AE3 [AE3:9FAB9AB38100000000000000]\0")
    camera.receive(usbdbg_command(UsbdbgCommand.SYS_RESET_TO_BL))
    assert camera.boot_request is BootRequest.FORCED
    camera = app("app-legacy")
    camera.receive(usbdbg_command(UsbdbgCommand.SYS_RESET))
    assert camera.boot_request is BootRequest.NORMAL


def test_v4_7_dies_on_a_v2_packet_and_v4_8_ignores_it() -> None:
    # §4.3: why the host asks usbdbg first. A PROTO_SYNC's first 6 bytes do not start
    # with 0x30: fatal on v4.7.0, ignored on v4.8.
    v47 = app("app-4.7")
    assert v47.receive(SYNC) == b"" and v47.crashed and v47.notes
    assert v47.receive(usbdbg_command(UsbdbgCommand.FW_VERSION)) == b""  # never again
    v48 = app("app-legacy")
    v48.receive(SYNC[:6])
    assert not v48.crashed
    assert len(v48.receive(usbdbg_command(UsbdbgCommand.FW_VERSION))) == 12
    # A V2 camera discards the usbdbg probe while it scans for AA D5 (§6.1).
    v5 = app()
    assert v5.receive(usbdbg_command(UsbdbgCommand.FW_VERSION)) == b""
    assert v5.receive(SYNC) == SYNC_ACK


def test_injected_faults() -> None:
    assert app(faults=frozenset({AppFault.MUTE})).receive(SYNC) == b""
    bad = app(faults=frozenset({AppFault.BAD_CRC})).receive(SYNC)
    with pytest.raises(BadPacket):
        decode(bad)
    stuck = app(faults=frozenset({AppFault.STUCK}))
    stuck.receive(SYNC)
    stuck.receive(Packet(Opcode.SYS_BOOT, 1).encode())
    assert stuck.boot_request is None and stuck.crashed
    chatty = app(faults=frozenset({AppFault.EVENTS}))
    out = chatty.receive(SYNC)
    assert out == H("AA D5 00 02 20 29 00 00") + out[8:10] + SYNC_ACK  # an event, then the ACK
    assert split_faults(["app:mute,status:alt=HP:block=1", "app:gone"]) == (
        ["status:alt=HP:block=1"],
        frozenset({AppFault.MUTE, AppFault.GONE}),
    )
    with pytest.raises(ValueError, match="app:mute"):
        split_faults(["app:nonsense"])
