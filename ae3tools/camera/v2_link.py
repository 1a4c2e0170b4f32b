"""Protocol V2 from the host's side (openmv-protocol.md §3), on an open port.

One sequence counter, as the device keeps (§3.4): a SYNC, then its ACK read back before
anything else is written, then the counter at 0 for the first request; every non-event
packet the device sends moves it on. Reads skip what the camera sends unprompted (events,
§3.10: a camera whose script prints sends one every 50 ms) and anything left over from
an earlier exchange, and they resynchronise byte by byte on a bad header, as the device
does. What reaches the caller has passed both CRCs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NoReturn

from ae3tools.camera.protocol import (
    HEADER_SIZE,
    MAX_PAYLOAD,
    SYNC_BYTES,
    BadPacket,
    Flag,
    Header,
    Opcode,
    Packet,
    decode,
    decode_header,
)
from ae3tools.findings import DeviceError

REPLY_TIMEOUT = 1.0  # §7 item 12: a host should allow >= 1 s, as openmv-python does
# What one wait may take in before it calls the port something other than a camera: a
# camera sends a 10-byte event every 50 ms unprompted, never a flood.
READ_LIMIT = 64 * 1024

LINK_HINT = "Try another cable or USB port, or replug the camera."


class NoReply(Exception):
    """No packet of the kind waited for came back in time (or the port flooded us)."""


class V2Link:
    """Protocol V2 requests and replies over a pyserial-like `link`."""

    def __init__(self, link: Any, where: str) -> None:
        self.link = link
        self.where = where
        self.sequence = 0
        self.buffer = bytearray()

    def sync(self, timeout: float = REPLY_TIMEOUT) -> None:
        """PROTO_SYNC (§3.4): the device resets its protocol and answers ACK with
        sequence 0; the next request is sequence 0 too. NoReply if no ACK came."""
        self.link.reset_input_buffer()
        self.buffer.clear()
        self.link.write(Packet(Opcode.PROTO_SYNC).encode())
        self.receive(lambda p: p.opcode == Opcode.PROTO_SYNC and bool(p.flags & Flag.ACK), timeout)
        self.sequence = 0

    def request(self, opcode: Opcode) -> None:
        self.link.write(Packet(opcode, self.sequence).encode())

    def ask(self, opcode: Opcode, timeout: float = REPLY_TIMEOUT) -> Packet:
        """A request and its reply (data, or a NAK)."""
        self.request(opcode)
        return self.receive(lambda p: p.opcode == opcode, timeout)

    def receive(self, wanted: Callable[[Packet], bool], timeout: float) -> Packet:
        """The next packet `wanted` accepts; events and stale packets are skipped.
        Each non-event packet the device sent moves the counter; one that asks for an
        acknowledgement gets it (same opcode, channel and sequence, §3.5)."""
        deadline = time.monotonic() + timeout
        taken = 0
        while True:
            packet, size = self._next_packet(deadline)
            taken += size
            if packet.is_event:
                continue
            if packet.flags & Flag.ACK_REQ:
                ack = Packet(packet.opcode, packet.sequence, packet.channel, Flag.ACK)
                self.link.write(ack.encode())
            self.sequence = (packet.sequence + 1) & 0xFF
            if wanted(packet):
                return packet
            if taken > READ_LIMIT:
                raise NoReply

    # ------------------------------------------------------------------ framing

    def _fill(self, count: int, deadline: float) -> None:
        """Read until the buffer holds `count` bytes (each read returns within the
        port's short timeout, so the deadline is looked at often)."""
        while len(self.buffer) < count:
            if time.monotonic() >= deadline:
                raise NoReply
            self.buffer += self.link.read(count - len(self.buffer))

    def _next_packet(self, deadline: float) -> tuple[Packet, int]:
        """The next packet whose header checks out; returns it and the bytes consumed."""
        skipped = 0
        header = self._next_header(deadline)
        while header is None:
            skipped += 1
            if skipped > READ_LIMIT:
                raise NoReply
            header = self._next_header(deadline)
        size = header.packet_size
        self._fill(size, deadline)
        raw = bytes(self.buffer[:size])
        del self.buffer[:size]
        try:
            return decode(raw), skipped + size
        except BadPacket as exc:  # its header checked out: this is a damaged packet
            return self._corrupt(str(exc))

    def _next_header(self, deadline: float) -> Header | None:
        """Skip to the next sync word and read the header behind it; None (with one byte
        dropped, §3.8) if that header fails its CRC or is longer than any packet."""
        self._fill(2, deadline)
        while (at := self.buffer.find(SYNC_BYTES)) < 0:
            del self.buffer[:-1]  # keep a trailing AA
            self._fill(2, deadline)
        del self.buffer[:at]
        self._fill(HEADER_SIZE, deadline)
        raw = bytes(self.buffer[:HEADER_SIZE])
        try:
            header = decode_header(raw)
        except BadPacket:
            if _corrupted_sync_ack(raw):
                self._corrupt("bad header CRC")
            del self.buffer[:1]
            return None
        if header.length > MAX_PAYLOAD:
            del self.buffer[:1]
            return None
        return header

    def _corrupt(self, what: str) -> NoReturn:
        raise DeviceError(
            f"{self.where}: the camera's reply failed its check ({what}): the USB link is "
            "corrupting data, or something other than OpenMV firmware answered",
            hint=LINK_HINT,
        )


def _corrupted_sync_ack(header: bytes) -> bool:
    """A SYNC's ACK in every field but its CRC: a damaged reply, not stray bytes."""
    return header[:8] == Packet(Opcode.PROTO_SYNC, flags=Flag.ACK).encode()[:8]
