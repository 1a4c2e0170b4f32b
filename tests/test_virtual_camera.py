"""The virtual running camera, fed bytes and line states directly, against the corrected
protocol spec (openmv-protocol.md §3, §6, §7): the worked examples byte for byte, the
sequence after a SYNC, the SYNC emptying the buffer, a host NAK's back-to-back
retransmissions, fragments, SET_CAPS limits, the ACK wait a DTR drop leaves behind, the
channels, a printing camera's unprompted events, the REPL. OpenMV's own client drives
the same camera over a pseudo-terminal in test_openmv_client.py."""

from __future__ import annotations

import pytest

from ae3tools.camera.protocol import (
    HEADER_SIZE,
    REPL_BAUD,
    TOUCH_BAUD,
    USBDBG_FAST_BAUD,
    V2_BAUD,
    BadPacket,
    Caps,
    Flag,
    Opcode,
    Packet,
    Status,
    UsbdbgCommand,
    decode,
    decode_header,
    pack_caps,
    usbdbg_command,
)
from ae3tools.virtual.application import (
    FIRMWARES,
    AppFault,
    BootRequest,
    VirtualApplication,
    split_faults,
)
from ae3tools.virtual.repl import RAW_BANNER

H = bytes.fromhex
SERIAL = "9fab9ab381000000"  # §1.4's worked example
SYNC = Packet(Opcode.PROTO_SYNC).encode()
SYNC_ACK = H("AA D5 00 00 01 00 00 00 08 46")
VERSION_PAYLOAD = H("01 00 02 01 00 03 05 00 00 00 00 00 00 00 00 00")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def app(mode: str = "app", *faults: AppFault, clock: Clock | None = None) -> VirtualApplication:
    camera = VirtualApplication(
        FIRMWARES[mode],
        serial=SERIAL,
        reported_bootloader=(1, 0, 3),
        arch_id=SERIAL.upper() + "0" * 8,
        faults=frozenset(faults),
        clock=clock or Clock(),
    )
    camera.set_line(V2_BAUD, True)
    return camera


def packets(data: bytes) -> list[Packet]:
    """A stream of whole packets, split and decoded (every check applied)."""
    found = []
    while data:
        size = decode_header(data, check_crc=False).packet_size
        found.append(decode(data[:size]))
        data = data[size:]
    return found


def ack_of(packet: Packet) -> bytes:
    return Packet(packet.opcode, packet.sequence, packet.channel, Flag.ACK).encode()


def ask(camera: VirtualApplication, opcode: int, sequence: int, **kwargs: object) -> Packet:
    """A request, its one reply (events around it skipped, as a host does), and the ACK
    it asks for."""
    sent = camera.receive(Packet(opcode, sequence, **kwargs).encode())  # type: ignore[arg-type]
    (reply,) = [packet for packet in packets(sent) if not packet.is_event]
    if reply.flags & Flag.ACK_REQ:
        assert camera.receive(ack_of(reply)) == b""
    return reply


def synced(*faults: AppFault, clock: Clock | None = None) -> VirtualApplication:
    camera = app("app", *faults, clock=clock)
    assert camera.receive(SYNC) == SYNC_ACK
    return camera


# ------------------------------------------------------------------ the worked examples (§3.11)


def test_the_worked_exchange_byte_for_byte() -> None:
    camera = app()
    assert camera.receive(H("AA D5 00 00 00 00 00 00 B0 AC")) == SYNC_ACK
    version = camera.receive(H("AA D5 00 00 00 04 00 00 33 90"))
    assert version == H("AA D5 00 00 08 04 10 00 1F 46") + VERSION_PAYLOAD + H("65 5C F2 99")
    assert camera.receive(H("AA D5 00 00 01 04 00 00 8B 7A")) == b""
    sys_info = camera.receive(H("AA D5 01 00 00 12 00 00 14 DB"))
    assert sys_info == H(
        "AA D5 01 00 08 12 4C 00 3B 23"
        "21 D2 1F 41  B3 9A AB 9F 00 00 00 81 00 00 00 00  E3 16 C5 37"
        "00 00 00 00 00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00"
        "C3 08 3F 00 00 00 00 00  00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00"
        "00 00 00 00 00 00 00 00 00 00 00 00"
        "A0 75 EA 15"
    )
    assert camera.receive(H("AA D5 01 00 01 12 00 00 AC 31")) == b""
    assert camera.receive(H("AA D5 02 00 00 11 00 00 53 E1")) == b""  # SYS_BOOT seq 2
    assert camera.boot_request is BootRequest.FORCED


def test_caps_examples() -> None:
    camera = synced()
    caps = camera.receive(H("AA D5 00 00 00 01 00 00 C3 DD"))
    assert caps == H("AA D5 00 00 08 01 10 00 EF 0B 0F 00 00 00 F2 1F") + bytes(10) + H(
        "6C F4 5D B8"
    )
    camera.receive(H("AA D5 00 00 01 01 00 00") + ack_of(decode(caps))[8:10])
    set_caps = H("AA D5 01 00 00 02 10 00 C8 4F 0B 00 00 00 00 10") + bytes(10) + H("E1 0C D1 3C")
    assert camera.receive(set_caps) == H("AA D5 01 00 01 02 00 00 A0 C3")
    # ack is off now: data replies carry no ACK_REQ and need no ACK (§3.5).
    reply = decode(camera.receive(Packet(Opcode.PROTO_VERSION, 2).encode()))
    assert reply.flags == Flag.NONE and reply.sequence == 2


def test_nak_examples() -> None:
    # An unknown opcode: NAK INVALID; a system opcode on channel 1: NAK INVALID.
    assert app().receive(Packet(0x30).encode()) == H(
        "AA D5 00 00 02 30 02 00 0E 63 02 00 D5 4A 11 C4"
    )
    camera = app()
    assert camera.receive(Packet(Opcode.SYS_BOOT, 0, channel=1).encode()) == H(
        "AA D5 00 01 02 11 02 00 51 52 02 00 D5 4A 11 C4"
    )
    assert camera.boot_request is None
    # A bad payload CRC: NAK CHECKSUM, the packet consumed.
    set_caps = bytearray(Packet(Opcode.PROTO_SET_CAPS, 0, payload=bytes(16)).encode())
    set_caps[-1] ^= 0xFF
    assert app().receive(bytes(set_caps)) == H("AA D5 00 00 02 02 02 00 B3 6E 05 00 BB 93 F8 DC")
    # Out of sequence: NAK SEQUENCE, not acted on.
    camera = app()
    nak = camera.receive(Packet(Opcode.SYS_BOOT, 5).encode())
    assert nak == H("AA D5 00 00 02 11 02 00 2A 0F 06 00 DE 22 81 9A")
    assert camera.boot_request is None


# ------------------------------------------------------------------ sequence and SYNC (§3.4)


def test_the_first_request_after_a_sync_carries_sequence_0() -> None:
    camera = synced()
    assert ask(camera, Opcode.PROTO_VERSION, 0).sequence == 0
    camera = synced()
    reply = decode(camera.receive(Packet(Opcode.PROTO_VERSION, 1).encode()))
    assert reply.nak_status is Status.SEQUENCE  # what every v5 camera told the old host


def test_a_sync_empties_the_buffer_so_a_request_sent_with_it_is_lost() -> None:
    camera = app()
    both = camera.receive(SYNC + Packet(Opcode.PROTO_GET_CAPS, 0).encode())
    assert both == SYNC_ACK  # §3.8: the SYNC's reset cleared the buffer behind it
    camera = app()
    # A SYNC on channel 1 is not a SYNC: a system opcode there is NAK INVALID.
    on_channel = Packet(Opcode.PROTO_SYNC, channel=1).encode()
    assert decode(camera.receive(on_channel)).nak_status is Status.INVALID


def test_split_reads_and_a_truncated_packet_rescued_by_a_sync() -> None:
    camera = app()
    assert b"".join(camera.receive(bytes([byte])) for byte in SYNC) == SYNC_ACK
    camera = app()
    truncated = Packet(Opcode.CHANNEL_WRITE, 0, channel=1, payload=bytes(40)).encode()[:20]
    assert camera.receive(truncated) == b""  # no receive timeout: it waits for the rest
    assert camera.receive(SYNC) == SYNC_ACK  # SYNC recovery (§3.8 step 3)


# ------------------------------------------------------------------ ACKs and retransmission


def test_unacknowledged_replies_are_resent_then_the_protocol_resets() -> None:
    clock = Clock()
    camera = synced(clock=clock)
    start = clock.now
    (version,) = packets(camera.receive(Packet(Opcode.PROTO_VERSION, 0).encode()))
    assert version.flags == Flag.ACK_REQ
    resent_at = []
    for step in range(1, 400):  # 4 s in 10 ms steps
        clock.now = start + step / 100
        resent = camera.poll()
        if resent:
            assert decode(resent) == Packet(
                Opcode.PROTO_VERSION, 0, flags=Flag.ACK_REQ | Flag.RTX, payload=version.payload
            )
            resent_at.append(step / 100)
    # Waits of 500, 1000 and 2000 ms, each measured from the last send (§3.6).
    assert resent_at == pytest.approx([0.51, 1.52, 3.53])
    # While it waits, another request stays buffered; the matching ACK releases it.
    assert camera.receive(Packet(Opcode.PROTO_GET_CAPS, 1).encode()) == b""
    (caps,) = packets(camera.receive(ack_of(version)))
    assert caps.opcode == Opcode.PROTO_GET_CAPS and caps.sequence == 1
    # That one is never acknowledged: 7.5 s after it was sent the protocol resets.
    sent = clock.now
    while camera.v2.wait_for_ack:
        clock.now += 0.01
        camera.poll()
    assert clock.now - sent == pytest.approx(7.5, abs=0.05) and camera.v2.sequence == 0


def test_one_host_nak_sets_off_every_remaining_retransmission() -> None:
    """§3.5: the NAK sets the wait's status to FAILED and nothing re-arms it."""
    camera = synced()
    (version,) = packets(camera.receive(Packet(Opcode.PROTO_VERSION, 0).encode()))
    nak = Packet(Opcode.PROTO_VERSION, 0, flags=Flag.NAK, payload=b"\x05\x00").encode()
    resent = packets(camera.receive(nak))
    assert [p.flags for p in resent] == [Flag.ACK_REQ | Flag.RTX] * 3
    assert all(p.payload == version.payload and p.sequence == 0 for p in resent)
    assert camera.v2.sequence == 0 and not camera.v2.wait_for_ack  # reset
    assert camera.v2.stats.retransmits == 3


def test_replies_longer_than_max_payload_come_in_fragments() -> None:
    camera = synced()
    ask(camera, Opcode.PROTO_SET_CAPS, 0, payload=pack_caps(Caps(0x0F), 50))
    first = packets(camera.receive(Packet(Opcode.SYS_INFO, 1).encode()))
    assert [(p.flags, len(p.payload), p.sequence) for p in first] == [
        (Flag.ACK_REQ | Flag.FRAGMENT, 50, 1)
    ]
    (last,) = packets(camera.receive(ack_of(first[0])))  # each fragment waits for its ACK
    assert (last.flags, len(last.payload), last.sequence) == (Flag.ACK_REQ, 26, 2)
    camera.receive(ack_of(last))
    assert first[0].payload + last.payload == camera.v2.identity.sys_info
    assert ask(camera, Opcode.PROTO_VERSION, 3).sequence == 3


@pytest.mark.parametrize(("size", "accepted"), [(0, False), (49, False), (50, True),
                                                (8178, True), (8179, False)])  # fmt: skip
def test_set_caps_limits(size: int, accepted: bool) -> None:
    camera = synced()
    reply = ask(camera, Opcode.PROTO_SET_CAPS, 0, payload=pack_caps(Caps(0x0F), size))
    assert (reply.flags == Flag.ACK) is accepted
    assert camera.v2.config.max_payload == (size if accepted else 8178)
    assert ask(camera, Opcode.PROTO_SET_CAPS, 1, payload=bytes(15)).nak_status is Status.INVALID


def test_with_crc_off_an_ack_with_crc_0_counts_and_replies_carry_crc_0() -> None:
    camera = synced()
    ask(camera, Opcode.PROTO_SET_CAPS, 0, payload=pack_caps(Caps(0x0E), 4096))  # no CRC
    raw = camera.receive(Packet(Opcode.PROTO_VERSION, 1).encode())
    assert raw[8:10] == b"\0\0"  # §3.3: header CRC 0
    with pytest.raises(BadPacket):
        decode(raw)
    ack = bytearray(Packet(Opcode.PROTO_VERSION, 1, flags=Flag.ACK).encode())
    ack[8:10] = b"\0\0"
    assert camera.receive(bytes(ack)) == b"" and not camera.v2.wait_for_ack


def test_a_dtr_drop_keeps_the_input_and_the_ack_wait() -> None:
    """§2.1: a host that closes the port mid-exchange and reopens it finds the device
    still waiting for its ACK, with what it had buffered."""
    clock = Clock()
    camera = synced(clock=clock)
    (version,) = packets(camera.receive(Packet(Opcode.PROTO_VERSION, 0).encode()))
    camera.receive(Packet(Opcode.PROTO_GET_CAPS, 1).encode()[:6])  # half a request
    camera.set_line(V2_BAUD, False)
    camera.set_line(V2_BAUD, True)
    assert camera.v2.wait_for_ack and len(camera.v2.rx) == 6
    rest = Packet(Opcode.PROTO_GET_CAPS, 1).encode()[6:]
    assert camera.receive(rest) == b""  # still waiting: only the ACK or a SYNC counts
    assert camera.receive(ack_of(version)) == b"" and not camera.v2.wait_for_ack
    clock.now += 0.06  # the next 50 ms task
    (answer,) = packets(camera.poll())  # the next protocol task parses the request
    # The reply the ACK was for never counted its sequence (its sender gave up at the
    # drop), so the request numbered after it is out of sequence: the device's quirk.
    assert answer.opcode == Opcode.PROTO_GET_CAPS and answer.nak_status is Status.SEQUENCE
    assert answer.sequence == 0


def test_stats_count_what_happened() -> None:
    camera = synced()
    ask(camera, Opcode.PROTO_VERSION, 0)
    camera.receive(Packet(Opcode.PROTO_VERSION, 9).encode())  # NAK SEQUENCE
    stats = ask(camera, Opcode.PROTO_STATS, 2).payload
    counters = [int.from_bytes(stats[i : i + 4], "little") for i in range(0, 32, 4)]
    sent, received, checksum, sequence, retransmits, transport, events, _ = counters
    assert (received, sequence, checksum, retransmits) == (3, 1, 0, 0)  # SYNC, VERSION, STATS
    assert sent == 3  # the SYNC's ACK, the VERSION reply, the NAK
    assert (transport, events) == (0, 0)


# ------------------------------------------------------------------ channels (§3.9)


def test_channel_list_and_poll() -> None:
    camera = synced()
    listing = ask(camera, Opcode.CHANNEL_LIST, 0).payload
    entries = [
        (listing[i], listing[i + 1], listing[i + 2 : i + 16].rstrip(b"\0"))
        for i in range(0, 64, 16)
    ]
    assert entries == [(0, 0x40, b"usb"), (1, 0x06, b"stdin"), (2, 0x01, b"stdout"),
                       (3, 0x19, b"stream")]  # fmt: skip
    assert ask(camera, Opcode.CHANNEL_POLL, 1).payload == bytes(4)  # idle: nothing to say


def test_stdin_stdout_and_stream_operations() -> None:
    camera = synced()
    seq = iter(range(256))

    def op(opcode: int, channel: int, payload: bytes = b"") -> Packet:
        return ask(camera, opcode, next(seq), channel=channel, payload=payload)

    assert op(Opcode.CHANNEL_SIZE, 2).payload == bytes(4)  # stdout empty
    assert op(Opcode.CHANNEL_READ, 2, H("00000000 10000000")).nak_status is Status.FAILED
    assert op(Opcode.CHANNEL_LOCK, 3).nak_status is Status.BUSY  # no frame ready
    assert op(Opcode.CHANNEL_UNLOCK, 3).flags == Flag.ACK
    assert op(Opcode.CHANNEL_SHAPE, 3).payload == bytes(12)
    assert op(Opcode.CHANNEL_SHAPE, 2).nak_status is Status.INVALID
    assert op(Opcode.CHANNEL_IOCTL, 3, H("00000000 01000000")).flags == Flag.ACK  # stream on
    assert op(Opcode.CHANNEL_IOCTL, 3, H("00000000")).nak_status is Status.INVALID  # no arg
    assert op(Opcode.CHANNEL_IOCTL, 1, H("02000000")).nak_status is Status.FAILED  # no script
    assert op(Opcode.CHANNEL_WRITE, 1, H("00000000 05000000") + b"print").flags == Flag.ACK
    assert op(Opcode.CHANNEL_WRITE, 2, H("00000000 01000000") + b"x").nak_status is Status.INVALID
    assert op(Opcode.CHANNEL_IOCTL, 1, H("02000000")).flags == Flag.ACK  # exec
    camera.poll()  # the main loop runs the script: SOFT_REBOOT, stdin running
    assert op(Opcode.CHANNEL_POLL, 0).payload == H("02000000")
    assert op(Opcode.CHANNEL_IOCTL, 1, H("01000000")).flags == Flag.ACK  # stop
    assert op(Opcode.CHANNEL_POLL, 0).payload == bytes(4)
    assert op(Opcode.CHANNEL_SIZE, 7).nak_status is Status.INVALID  # no such channel


def test_the_transport_channel_writes_raw_bytes_to_the_host() -> None:
    camera = synced()
    request = Packet(Opcode.CHANNEL_WRITE, 0, channel=0, payload=H("00000000 03000000") + b"abc")
    assert (
        camera.receive(request.encode())
        == b"abc" + Packet(Opcode.CHANNEL_WRITE, 0, flags=Flag.ACK).encode()
    )


def test_a_printing_camera_sends_events_unprompted_and_stdout_is_read_in_chunks() -> None:
    clock = Clock()
    camera = app("app", AppFault.PRINTING, clock=clock)
    sent = b""
    for _ in range(40):  # 0.4 s, nothing asked
        clock.now += 0.01
        sent += camera.poll()
    events = packets(sent)
    assert len(events) >= 5
    assert all(p.opcode == Opcode.CHANNEL_EVENT and p.channel == 2 for p in events)
    assert all(p.flags == Flag.EVENT and not p.payload for p in events)  # NOTIFY, 10 bytes
    camera.receive(SYNC)
    size = int.from_bytes(ask(camera, Opcode.CHANNEL_SIZE, 0, channel=2).payload, "little")
    assert size == len(camera.channels.stdout) > 0
    # Asking for more than it holds: the data, then NAK FAILED (the read loop runs dry).
    request = Packet(Opcode.CHANNEL_READ, 1, channel=2, payload=(0).to_bytes(4, "little")
                     + (size + 5).to_bytes(4, "little"))  # fmt: skip
    (data,) = packets(camera.receive(request.encode()))
    assert data.flags == Flag.ACK_REQ | Flag.FRAGMENT and data.payload.startswith(b"fps: ")
    (failed,) = packets(camera.receive(ack_of(data)))
    assert failed.nak_status is Status.FAILED and failed.sequence == 2


# ------------------------------------------------------------------ line state and the others


def test_mode_follows_line_coding_and_dtr() -> None:
    camera = app()
    camera.set_line(REPL_BAUD, True)
    assert camera.receive(b"ab") == b"ab"  # the REPL echoes; no protocol at the wrong baud
    camera.set_line(USBDBG_FAST_BAUD, True)
    assert camera.receive(SYNC) != SYNC_ACK  # 12 Mbaud does not activate V2 on G3: the REPL
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
    # §4.3: why the host asks usbdbg first.
    v47 = app("app-4.7")
    assert v47.receive(SYNC) == b"" and v47.crashed and v47.notes
    assert v47.receive(usbdbg_command(UsbdbgCommand.FW_VERSION)) == b""  # never again
    v48 = app("app-legacy")
    v48.receive(SYNC[:6])
    assert not v48.crashed
    assert len(v48.receive(usbdbg_command(UsbdbgCommand.FW_VERSION))) == 12
    v5 = app()  # V2 discards the usbdbg probe while it scans for AA D5 (§6.1)
    assert v5.receive(usbdbg_command(UsbdbgCommand.FW_VERSION)) == b""
    assert v5.receive(SYNC) == SYNC_ACK


@pytest.mark.parametrize("mode", list(FIRMWARES))
def test_the_repl_banner_and_machine_bootloader(mode: str) -> None:
    camera = app(mode, AppFault.PRINTING)
    camera.set_line(REPL_BAUD, True)
    stopped = camera.receive(b"\r\x03\x03")
    assert b"KeyboardInterrupt" in stopped and stopped.endswith(b">>> ")
    banner = camera.receive(b"\x02")
    version = ".".join(map(str, FIRMWARES[mode].version))
    assert f"OpenMV v{version}; MicroPython".encode() in banner
    assert b"OpenMV-AE3 with AE302F80F55D5AE" in banner and banner.endswith(b">>> ")
    assert camera.receive(b"\x01") == b"\r\n" + RAW_BANNER + b">"
    assert camera.receive(b"\x05A\x01") == b"R\x00"  # raw-paste: not offered
    assert camera.receive(b"print(1)\x04").startswith(b"OK\x04Traceback")  # no Python here
    assert camera.receive(b"import machine\nmachine.bootloader()\n\x04") == b"OK"
    assert camera.boot_request is BootRequest.FORCED


def test_injected_faults() -> None:
    assert app("app", AppFault.MUTE).receive(SYNC) == b""
    with pytest.raises(BadPacket):
        decode(app("app", AppFault.BAD_CRC).receive(SYNC))
    stuck = synced(AppFault.STUCK)
    stuck.receive(Packet(Opcode.SYS_BOOT, 0).encode())
    assert stuck.boot_request is None and stuck.crashed
    assert app("app", AppFault.REPL_ONLY).receive(SYNC) == b""
    assert split_faults(["app:mute,status:alt=HP:block=1", "app:gone"]) == (
        ["status:alt=HP:block=1"],
        frozenset({AppFault.MUTE, AppFault.GONE}),
    )
    with pytest.raises(ValueError, match="app:mute"):
        split_faults(["app:nonsense"])
    assert HEADER_SIZE == 10
