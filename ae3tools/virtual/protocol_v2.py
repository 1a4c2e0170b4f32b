"""Protocol V2 as the camera's firmware runs it (openmv-protocol.md §3), for the virtual
running camera.

The firmware's protocol task is sequential: it moves what the host sent into an
8192-byte buffer, parses it, and answers each request; a reply that asks for an
acknowledgement blocks it, still polling its input but only for that ACK or a SYNC,
until the ACK comes, its retransmissions run out, or the host drops DTR. This model keeps
that control flow as Python generators: `_poll`, `_process` and `_send_packet` follow the
firmware's functions of those names, and a bare `yield` is where the firmware spins
waiting. `V2Device.run` resumes the blocked task, or starts a new one, each time input
arrives or time passes. The quirks come with the control flow: the first request after a
SYNC carries sequence 0 (§3.4); a SYNC empties the buffer, so a request sent with it is
lost; one host NAK sets off every remaining retransmission back to back (§3.5); a DTR
drop leaves the device waiting for its ACK (§2.1); an event sent while it so waits
blocks like a reply.

Only the packet layout and the CRCs come from `ae3tools.camera.protocol` (shared with the
host); every rule about sequences, acknowledgements, SYNC and channels is this module's
own reading of the spec, and the tests hold it to OpenMV's own client (`openmv` 1.0.7).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Generator
from dataclasses import astuple, dataclass
from enum import Enum

from ae3tools.camera.protocol import (
    HEADER_SIZE,
    MAX_PAYLOAD,
    PAYLOAD_CRC_SIZE,
    SYNC_BYTES,
    SYSTEM_OPCODE_LIMIT,
    Caps,
    Flag,
    Opcode,
    Status,
    crc16,
    crc32,
    pack_caps,
)
from ae3tools.virtual import channels as ch
from ae3tools.virtual.channels import Channels

BUFFER_SIZE = 8192  # §3.7: OMV_PROTOCOL_MAX_BUFFER_SIZE on the AE3
MIN_PAYLOAD = 50  # §3.7, §3.9: SET_CAPS refuses less
RTX_RETRIES = 3  # §3.6: the original and three retransmissions
RTX_TIMEOUT = 0.5  # §3.6: doubled after each
LOCK_INTERVAL = 0.010  # CHANNEL_LOCK is BUSY within 10 ms of the last one (omv_protocol.h)
READ_CHUNK = 512  # §3.7: CHANNEL_READ of a read() channel goes in chunks of at most this
NO_ACK = Flag.ACK | Flag.NAK | Flag.EVENT  # §3.5: packets that never carry ACK_REQ
_HEADER = struct.Struct("<HBBBBH")

Task = Generator[None, None, int]


class ParseState(Enum):
    """§3.8: the receive parser's states (WAIT_ACK is `wait_for_ack` on top of them)."""

    SYNC = "sync"
    HEADER = "header"
    PAYLOAD = "payload"
    SYNC_RECOVERY = "sync recovery"


@dataclass
class Config:
    """The negotiated capabilities (§3.10), back to these defaults on every reset."""

    crc: bool = True
    seq: bool = True
    ack: bool = True
    events: bool = True
    max_payload: int = MAX_PAYLOAD

    def wire(self) -> bytes:
        switches = zip(Caps, (self.crc, self.seq, self.ack, self.events), strict=True)
        return pack_caps(Caps(sum(flag for flag, on in switches if on)), self.max_payload)


@dataclass
class Stats:
    """PROTO_STATS (§3.9): eight u32 counters, the last reserved."""

    sent: int = 0
    received: int = 0
    checksum_errors: int = 0
    sequence_errors: int = 0
    retransmits: int = 0
    transport_errors: int = 0
    sent_events: int = 0
    reserved: int = 0

    def wire(self) -> bytes:
        return struct.pack("<8I", *(value & 0xFFFFFFFF for value in astuple(self)))


@dataclass(frozen=True)
class Identity:
    """What the camera reports about itself: PROTO_VERSION, SYS_INFO, SYS_MEMORY."""

    versions: bytes
    sys_info: bytes
    memory: bytes


def _header_crc_ok(config: Config, header: bytes) -> bool:
    stored = int.from_bytes(header[8:10], "little")
    return not config.crc or crc16(header[:8]) == stored


class V2Device:
    """One camera's protocol V2 endpoint. Feed it input with `receive`, call `run` as
    time passes (the firmware's 50 ms task), and send the host what `take_output`
    returns. `on_reset(forced)` is called when a request resets the camera."""

    def __init__(
        self,
        identity: Identity,
        channels: Channels,
        *,
        clock: Callable[[], float],
        on_reset: Callable[[bool], None],
        corrupt_crc: bool = False,
    ) -> None:
        self.identity = identity
        self.channels = channels
        self.clock = clock
        self.on_reset = on_reset
        self.corrupt_crc = corrupt_crc
        self.active = False
        self.backlog = bytearray()  # the CDC receive FIFO, not yet moved into the buffer
        self.rx = bytearray()  # the protocol's buffer (at most BUFFER_SIZE)
        self.out = bytearray()
        self.stats = Stats()
        self.last_lock = float("-inf")
        self.reset_requested = False
        self._blocked: Task | None = None  # a task spinning in _send_packet's wait
        self._reset()

    # ------------------------------------------------------------------ driving

    def receive(self, data: bytes) -> None:
        """Input from the host: a sender waiting for its ACK looks at it, or (the
        scheduler being free) the USB event runs a poll."""
        self.backlog += data
        if self._resume_blocked():
            self._step(self._task(tick=False))

    def advance(self, *, tick: bool) -> None:
        """Time passing: a waiting sender looks at its clock; otherwise the script runs,
        and on the 50 ms `tick` the protocol task runs (channel ticks, then a poll)."""
        if not self._resume_blocked():
            return
        now = self.clock()
        self.channels.run(now, self.active)
        if tick:
            self.channels.tick(now)
        if tick or self.channels.events:
            self._step(self._task(tick=tick))

    def _resume_blocked(self) -> bool:
        """One more turn of a blocked sender's loop; whether the scheduler is free."""
        if self.reset_requested:
            return False
        if self._blocked is not None:
            self._step(self._blocked)
        return self._blocked is None and not self.reset_requested

    def take_output(self) -> bytes:
        data = bytes(self.out)
        self.out.clear()
        return data

    def set_active(self, active: bool) -> None:
        """The line state turned the protocol on or off (§2.1); a blocked sender notices
        at once (its poll fails) and gives up, still waiting for its ACK."""
        self.active = active
        if not active and self._blocked is not None:
            self._step(self._blocked)

    def _step(self, task: Task) -> None:
        try:
            next(task)
        except StopIteration:
            self._blocked = None
        else:
            self._blocked = task

    def _task(self, *, tick: bool) -> Task:
        """The protocol task (or the USB event's poll, without `tick`): events the
        script and the channel ticks raised go out first, then the input is parsed."""
        events = list(self.channels.events)
        self.channels.events.clear()
        for event in events:
            yield from self._send_event(event)
        return (yield from self._poll())

    # ------------------------------------------------------------------ state (§3.6)

    def _reset(self) -> None:
        """omv_protocol_reset(): sequence 0, parser and buffer cleared, default caps,
        channels unlocked. What is still in the CDC FIFO is not the buffer's."""
        self.sequence = 0
        self.scan_offset = 0
        self.wait_for_ack = False
        self.ack_opcode = self.ack_sequence = 0
        self.ack_status: Status | None = None
        self.state = ParseState.SYNC
        self.rx.clear()
        self.config = Config()

    def _siphon(self) -> None:
        room = BUFFER_SIZE - len(self.rx)
        self.rx += self.backlog[:room]
        del self.backlog[:room]

    # ------------------------------------------------------------------ receiving (§3.8)

    def _sequence_ok(self, sequence: int, flags: int, opcode: int) -> bool:
        return (
            not self.config.seq
            or sequence == self.sequence
            or bool(flags & (Flag.ACK | Flag.NAK))
            or opcode in (Opcode.SYS_EVENT, Opcode.CHANNEL_EVENT, Opcode.PROTO_SYNC)
        )

    def _is_sync(self, header: bytes) -> bool:
        _, _, channel, _, opcode, length = _HEADER.unpack_from(header)
        return (
            header[:2] == SYNC_BYTES
            and channel == 0
            and length == 0
            and opcode == Opcode.PROTO_SYNC
            and _header_crc_ok(self.config, header)
        )

    def _is_ack(self, header: bytes) -> bool:
        _, sequence, _, flags, opcode, _ = _HEADER.unpack_from(header)
        return (
            header[:2] == SYNC_BYTES
            and bool(flags & (Flag.ACK | Flag.NAK))
            and opcode == self.ack_opcode
            and sequence == self.ack_sequence
            and _header_crc_ok(self.config, header)
        )

    def _poll(self) -> Task:
        """omv_protocol_poll: siphon the input, then parse; -1 while inactive."""
        if not self.active:
            return -1
        self._siphon()
        while len(self.rx) >= 2:
            if self.wait_for_ack:
                return (yield from self._scan_for_ack())
            if self.state is ParseState.SYNC:
                while len(self.rx) >= 2:
                    if self.rx[:2] == SYNC_BYTES:
                        self.state = ParseState.HEADER
                        break
                    del self.rx[0]
            elif self.state is ParseState.HEADER:
                if len(self.rx) < HEADER_SIZE:
                    return 0
                if (yield from self._header_accepted(bytes(self.rx[:HEADER_SIZE]))):
                    self.state = ParseState.PAYLOAD
                else:
                    self.state = ParseState.SYNC
                    del self.rx[0]
            elif self.state is ParseState.PAYLOAD:
                size = self._packet_size(self.rx)
                if len(self.rx) < size:
                    self.scan_offset = 0
                    self.state = ParseState.SYNC_RECOVERY
                    continue
                self.state = ParseState.SYNC
                packet = bytes(self.rx[:size])
                del self.rx[:size]  # consumed before it is answered
                yield from self._received(packet)
                if self.reset_requested:
                    return 0
            else:  # SYNC_RECOVERY: a complete SYNC behind a truncated packet wins
                if len(self.rx) >= self._packet_size(self.rx):
                    self.state = ParseState.SYNC
                    continue
                while self.scan_offset <= len(self.rx) - HEADER_SIZE:
                    header = bytes(self.rx[self.scan_offset : self.scan_offset + HEADER_SIZE])
                    if self._is_sync(header):
                        yield from self._process(header, b"")
                        return 0
                    self.scan_offset += 1
                self.state = ParseState.PAYLOAD
                return 0
        return 0

    @staticmethod
    def _packet_size(data: bytes | bytearray) -> int:
        length = int.from_bytes(data[6:8], "little")
        return HEADER_SIZE + length + (PAYLOAD_CRC_SIZE if length else 0)

    def _header_accepted(self, header: bytes) -> Generator[None, None, bool]:
        """§3.8 step 2: a bad CRC is dropped silently; too long, or out of sequence, is
        answered with a NAK."""
        _, sequence, channel, flags, opcode, length = _HEADER.unpack_from(header)
        if not _header_crc_ok(self.config, header):
            return False
        if length > self.config.max_payload:
            yield from self._send_status(opcode, channel, Status.OVERFLOW)
            return False
        if not self._sequence_ok(sequence, flags, opcode):
            yield from self._send_status(opcode, channel, Status.SEQUENCE)
            return False
        return True

    def _received(self, packet: bytes) -> Task:
        _, _, channel, flags, opcode, length = _HEADER.unpack_from(packet)
        payload = packet[HEADER_SIZE : HEADER_SIZE + length]
        stored = int.from_bytes(packet[HEADER_SIZE + length :], "little")
        if length and self.config.crc and crc32(payload) != stored:
            yield from self._send_status(opcode, channel, Status.CHECKSUM)
        elif channel != 0 and opcode <= SYSTEM_OPCODE_LIMIT:
            yield from self._send_status(opcode, channel, Status.INVALID)
        elif flags & (Flag.ACK | Flag.NAK):
            pass  # an acknowledgement nobody waits for
        else:
            yield from self._process(packet[:HEADER_SIZE], payload)
        return 0

    def _scan_for_ack(self) -> Task:
        """WAIT_ACK (§3.5): only the awaited ACK/NAK, or a SYNC, is looked for; the rest
        of the buffer stays for later. The scan resumes where the last one stopped."""
        while self.scan_offset <= len(self.rx) - HEADER_SIZE:
            at = self.scan_offset
            header = bytes(self.rx[at : at + HEADER_SIZE])
            if self._is_sync(header):
                yield from self._process(header, b"")
                return -1
            if self._is_ack(header):
                self.scan_offset = 0
                if at == 0:
                    del self.rx[:HEADER_SIZE]
                if header[4] & Flag.ACK:
                    self.wait_for_ack = False
                    self.ack_status = Status.SUCCESS
                else:
                    self.ack_status = Status.FAILED
                return 0
            self.scan_offset += 1
        return 0

    # ------------------------------------------------------------------ sending (§3.5, §3.6)

    def _send_status(self, opcode: int, channel: int, status: Status) -> Task:
        if status is Status.SEQUENCE:
            self.stats.sequence_errors += 1
        elif status is Status.CHECKSUM:
            self.stats.checksum_errors += 1
        if status is Status.SUCCESS:
            return (yield from self._send_packet(opcode, channel, b"", Flag.ACK))
        payload = int(status).to_bytes(2, "little")
        return (yield from self._send_packet(opcode, channel, payload, Flag.NAK))

    def _send_event(self, event: ch.Event) -> Task:
        if not self.config.events or not self.active:
            return -1
        opcode = Opcode.SYS_EVENT if event.channel == 0 else Opcode.CHANNEL_EVENT
        self.stats.sent_events += 1
        payload = b"" if event.code == ch.EVENT_NOTIFY else event.code.to_bytes(2, "little")
        return (yield from self._send_packet(opcode, event.channel, payload, Flag.EVENT))

    def _encode(self, fields: tuple[int, int, int, int], payload: bytes, crc: bytes) -> bytes:
        sequence, channel, flags, opcode = fields
        header = _HEADER.pack(0xD5AA, sequence, channel, flags, opcode, len(payload))
        check = crc16(header) if self.config.crc else 0  # §3.3: 0 with CRC off
        raw = bytearray(header + check.to_bytes(2, "little"))
        if payload:
            raw += payload + crc
        if self.corrupt_crc:
            raw[-1] ^= 0xFF
        return bytes(raw)

    def _send_packet(self, opcode: int, channel: int, data: bytes, flags: Flag = Flag.NONE) -> Task:
        """omv_protocol_send_packet: fragments of at most max_payload, each carrying the
        current sequence; one with ACK_REQ waits for its ACK, resent with RTX after 0.5,
        1, 2 s (at once after a NAK), the protocol reset after the fourth wait."""
        if not self.active:
            return -1
        if not self.config.ack:
            flags &= ~Flag.ACK_REQ
        elif not flags & NO_ACK:
            flags |= Flag.ACK_REQ
        remaining = data
        while True:
            retries, timeout = RTX_RETRIES, RTX_TIMEOUT
            fragment = remaining[: self.config.max_payload]
            fragment_flags = flags
            if len(remaining) > self.config.max_payload:
                fragment_flags |= Flag.FRAGMENT
            sequence = self.sequence
            # With CRC off the firmware sends an uninitialised array here (§3.3).
            crc = crc32(fragment).to_bytes(4, "little") if self.config.crc else bytes(4)
            if fragment_flags & Flag.ACK_REQ:
                self.scan_offset = 0
                self.ack_status = None
                self.ack_opcode, self.ack_sequence = opcode, sequence
                self.wait_for_ack = True
            while True:
                fields = (sequence, channel, int(fragment_flags), opcode)
                self.out += self._encode(fields, fragment, crc)
                start = self.clock()
                while self.wait_for_ack:
                    if (yield from self._poll()) == -1:
                        return -1
                    if self.ack_status is Status.SUCCESS:
                        break
                    if self.ack_status is Status.FAILED or self.clock() - start > timeout:
                        if retries <= 0:
                            self._reset()
                            return -1
                        retries -= 1
                        timeout *= 2
                        self.stats.retransmits += 1
                        if self.config.crc:
                            fragment_flags |= Flag.RTX
                        break
                    yield  # spinning until the ACK, a NAK or the timeout
                if not self.wait_for_ack:
                    break
            remaining = remaining[len(fragment) :]
            if not flags & Flag.EVENT:
                self.sequence = (self.sequence + 1) & 0xFF
                self.stats.sent += 1
            if not remaining:
                return 0

    # ------------------------------------------------------------------ requests (§3.9)

    def _process(self, header: bytes, payload: bytes) -> Task:
        """omv_protocol_process: answer one request."""
        _, _, channel, _, opcode, length = _HEADER.unpack_from(header)
        self.stats.received += 1
        if opcode == Opcode.PROTO_SYNC:
            self._reset()
            yield from self._send_status(opcode, channel, Status.SUCCESS)
            self.sequence = 0  # §3.4: the ACK went out as 0, and so does the next request
        elif opcode == Opcode.PROTO_GET_CAPS:
            yield from self._send_packet(opcode, channel, self.config.wire())
        elif opcode == Opcode.PROTO_SET_CAPS:
            yield from self._set_caps(opcode, channel, payload)
        elif opcode == Opcode.PROTO_STATS:
            yield from self._send_packet(opcode, channel, self.stats.wire())
        elif opcode == Opcode.PROTO_VERSION:
            yield from self._send_packet(opcode, channel, self.identity.versions)
        elif opcode in (Opcode.SYS_RESET, Opcode.SYS_BOOT):
            self.reset_requested = True  # §5.1: no reply; the camera resets at once
            self.on_reset(opcode == Opcode.SYS_BOOT)
        elif opcode == Opcode.SYS_INFO:
            yield from self._send_packet(opcode, channel, self.identity.sys_info)
        elif opcode == Opcode.SYS_MEMORY:
            yield from self._send_packet(opcode, channel, self.identity.memory)
        elif opcode >= Opcode.CHANNEL_LIST and opcode < Opcode.CHANNEL_EVENT:
            yield from self._channel_request(opcode, channel, length, payload)
        else:  # unknown opcodes, and the device-to-host events (§3.8 step 4)
            yield from self._send_status(opcode, channel, Status.INVALID)
        return 0

    def _set_caps(self, opcode: int, channel: int, payload: bytes) -> Task:
        flags, max_payload = struct.unpack_from("<IH", payload.ljust(6, b"\0"))
        if len(payload) != 16 or not MIN_PAYLOAD <= max_payload <= MAX_PAYLOAD:
            return (yield from self._send_status(opcode, channel, Status.INVALID))
        yield from self._send_status(opcode, channel, Status.SUCCESS)  # before they apply
        self.config = Config(
            crc=bool(flags & Caps.CRC),
            seq=bool(flags & Caps.SEQ),
            ack=bool(flags & Caps.ACK),
            events=bool(flags & Caps.EVENTS),
            max_payload=max_payload,
        )
        return 0

    def _channel_request(self, opcode: int, channel: int, length: int, payload: bytes) -> Task:
        """CHANNEL_* (§3.9). Channels 0 to 3 exist; a request on another finds none."""
        exists = channel < len(ch.CHANNELS)
        # The firmware reads a request's fields wherever its payload is short.
        offset, count = struct.unpack_from("<II", payload.ljust(8, b"\0"))
        if opcode == Opcode.CHANNEL_READ:
            return (yield from self._channel_read(channel, exists, count))
        if opcode == Opcode.CHANNEL_WRITE:
            return (yield from self._channel_write(channel, exists, offset, count, payload[8:]))
        answer = self._channel_answer(opcode, channel, exists, length, payload)
        if isinstance(answer, Status):
            return (yield from self._send_status(opcode, channel, answer))
        return (yield from self._send_packet(opcode, channel, answer))

    def _channel_answer(
        self, opcode: int, channel: int, exists: bool, length: int, payload: bytes
    ) -> bytes | Status:
        """The data reply, or the status, of a channel request that sends one packet."""
        channels = self.channels
        if opcode == Opcode.CHANNEL_LIST:
            return ch.channel_list()
        if opcode == Opcode.CHANNEL_POLL:
            return struct.pack("<I", channels.poll_bits())
        if opcode == Opcode.CHANNEL_LOCK:
            now = self.clock()
            if now - self.last_lock > LOCK_INTERVAL and exists and channels.lock(channel):
                self.last_lock = now
                return Status.SUCCESS
            return Status.BUSY
        if opcode == Opcode.CHANNEL_UNLOCK:
            return Status.SUCCESS if exists and channels.unlock(channel) else Status.BUSY
        if opcode == Opcode.CHANNEL_SIZE:
            size = channels.size(channel) if exists else None
            return Status.INVALID if size is None else struct.pack("<I", size)
        if opcode == Opcode.CHANNEL_SHAPE:
            shape = channels.shape(channel) if exists else None
            return Status.INVALID if shape is None else struct.pack(f"<{len(shape)}I", *shape)
        # CHANNEL_IOCTL: u32 request, then its argument (length - 4 bytes).
        if length < 4:
            return Status.INVALID  # the argument size underflows and matches no ioctl
        result = channels.ioctl(channel, struct.unpack_from("<I", payload)[0], payload[4:])
        return {"ack": Status.SUCCESS, "failed": Status.FAILED}.get(result, Status.INVALID)

    def _channel_read(self, channel: int, exists: bool, count: int) -> Task:
        opcode = Opcode.CHANNEL_READ
        how = self.channels.readable(channel) if exists else None
        if not count or how is None:
            return (yield from self._send_status(opcode, channel, Status.INVALID))
        if how != "stdout":
            # The stream's frame buffer holds nothing to point at; the transport's read
            # waits 1.5 s for raw input that is not a packet and gets none.
            return (yield from self._send_status(opcode, channel, Status.FAILED))
        chunk = min(READ_CHUNK, self.config.max_payload)
        while count > 0:
            data = self.channels.read_stdout(min(count, chunk))
            if not data:
                yield from self._send_status(opcode, channel, Status.FAILED)
                break
            count -= len(data)
            flags = Flag.NONE if count == 0 else Flag.FRAGMENT
            yield from self._send_packet(opcode, channel, data, flags)
        return 0

    def _channel_write(
        self, channel: int, exists: bool, offset: int, count: int, data: bytes
    ) -> Task:
        opcode = Opcode.CHANNEL_WRITE
        data = data[:count].ljust(count, b"\0")
        result = self.channels.write(channel, offset, data) if exists and count else "invalid"
        if result == "invalid":
            return (yield from self._send_status(opcode, channel, Status.INVALID))
        if result == "echo":  # the transport channel writes the bytes to the host, raw
            self.out += data
        return (yield from self._send_status(opcode, channel, Status.SUCCESS))
