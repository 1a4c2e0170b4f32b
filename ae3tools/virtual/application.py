"""The running application's CDC side, as a model: bytes and line state in, bytes out.

From openmv-protocol.md (cited as §N), following its simulator checklist (§7): the
line coding and DTR choose between the REPL and the debug protocol per generation (§2);
protocol V2 with its parser, sequence counter, ACK_REQ and retransmissions (§3); the
legacy usbdbg commands, where v4.7.0 dies on a unit not starting with 0x30 (§4); and the
requests that send the camera to its bootloader (§5), reported to the owner as a
`BootRequest`. No I/O and no threads: `ae3tools.virtual.camera` serves it on a
pseudo-terminal.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from enum import Enum

from ae3tools.board import APPLICATION_PID, USB_VID
from ae3tools.camera.protocol import (
    DEFAULT_CAPS,
    HEADER_SIZE,
    MAX_PAYLOAD,
    SYNC_BYTES,
    TOUCH_BAUD,
    USBDBG_FAST_BAUD,
    USBDBG_MAGIC,
    USBDBG_UNIT,
    V2_BAUD,
    Caps,
    Flag,
    Generation,
    Header,
    Opcode,
    Packet,
    Status,
    UsbdbgCommand,
    Version,
    decode_header,
    header_crc_ok,
    pack_caps,
    pack_versions,
    payload_crc_ok,
    unpack_caps,
)

PROTOCOL_VERSION: Version = (1, 0, 2)  # §3.10: v5.0.0
# §3.6: a reply with ACK_REQ is resent after these waits, then the protocol resets.
RETRANSMIT_WAITS = (0.5, 1.0, 2.0, 4.0)
# §3.10: SYS_INFO's hw_caps[0] on the AE3, and its usb_id.
AE3_HW_CAPS = 0x003F08C3
CPU_ID = 0x411FD221  # illustrative SCB->CPUID of a Cortex-M55 (§3.11's example)
# §3.9: the default channels of a release build.
CHANNELS = ((0, "usb"), (1, "stdin"), (2, "stdout"), (3, "stream"))


@dataclass(frozen=True)
class Firmware:
    """One firmware release the virtual camera can run."""

    generation: Generation
    version: Version


# The modes --virtual-mode offers, by firmware (§0).
FIRMWARES = {
    "app": Firmware(Generation.G3, (5, 0, 0)),
    "app-legacy": Firmware(Generation.G2, (4, 8, 1)),
    "app-4.7": Firmware(Generation.G1, (4, 7, 0)),
}


class AppFault(str, Enum):
    """Ways a running camera fails a host (§7 item 10), injected with --fault app:KIND."""

    MUTE = "mute"  # a script has taken over the USB port: nothing answers
    BAD_CRC = "badcrc"  # every V2 reply carries a corrupted payload CRC
    STUCK = "stuck"  # the TRCENA spin (§5.1): it stops answering, no bootloader comes
    GONE = "gone"  # it drops off the bus in its reset and never comes back (unplugged)
    EVENTS = "events"  # a stdout NOTIFY event before every V2 reply (§7 item 7): skip them


APP_FAULT_PREFIX = "app:"


def split_faults(texts: Iterable[str]) -> tuple[list[str], frozenset[AppFault]]:
    """--fault values: the running camera's (app:KIND) apart from the bootloader's."""
    parts = [part.strip() for text in texts for part in text.split(",") if part.strip()]
    app = []
    for part in parts:
        if part.startswith(APP_FAULT_PREFIX):
            kind = part.removeprefix(APP_FAULT_PREFIX)
            try:
                app.append(AppFault(kind))
            except ValueError:
                kinds = ", ".join(APP_FAULT_PREFIX + k.value for k in AppFault)
                raise ValueError(f"fault {part!r}: expected one of {kinds}") from None
    return [p for p in parts if not p.startswith(APP_FAULT_PREFIX)], frozenset(app)


class BootRequest(Enum):
    """How the application reset itself (§5.1): with the magic word, or without."""

    FORCED = "forced"  # SYS_BOOT, RESET_TO_BL, the 1200-baud touch
    NORMAL = "normal"  # SYS_RESET: a non-forced bootloader, with its 1.5 s window


def _u32(value: int) -> bytes:
    return value.to_bytes(4, "little")


class VirtualApplication:
    """One running camera's CDC port: feed it line state and bytes, send what it returns."""

    def __init__(
        self,
        firmware: Firmware,
        *,
        serial: str,
        reported_bootloader: Version,
        arch_id: str,
        faults: frozenset[AppFault] = frozenset(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.firmware = firmware
        self.serial = serial  # the application's 16 lower-case digits (§1.4)
        self.reported_bootloader = reported_bootloader  # what PROTO_VERSION says (§3.10)
        self.arch_id = arch_id  # 24 upper-case digits: serial + "00000000" (§1.4)
        self.faults = faults
        self.clock = clock
        self.baud = 115200  # §2.1: TinyUSB's default line coding
        self.dtr = False
        self.rx = bytearray()
        self.boot_request: BootRequest | None = None  # set once it resets itself
        self.crashed = False  # G1's __fatal_error (§4.3): USB no longer serviced
        self.notes: list[str] = []  # what the host did that a real camera would not survive
        # A reply with ACK_REQ not yet acknowledged: (packet, sent at, attempt) (§3.6).
        self.awaiting: tuple[Packet, float, int] | None = None
        self._reset_protocol()

    # ------------------------------------------------------------------ line state (§2)

    def set_line(self, baud: int, dtr: bool) -> bytes:
        """SET_LINE_CODING and SET_CONTROL_LINE_STATE. Returns nothing to send: a mode
        change never answers, but it may reset the camera (the 1200-baud touch)."""
        changed_baud = baud != self.baud
        self.baud, was_dtr, self.dtr = baud, self.dtr, dtr
        if self.gone:
            return b""
        legacy = self.firmware.generation is not Generation.G3
        if changed_baud and legacy and baud == TOUCH_BAUD:
            self._reboot(BootRequest.FORCED, "1200-baud touch")  # §2.2: no DTR needed
        if was_dtr and not dtr and self.firmware.generation is Generation.G3:
            self.rx.clear()  # §2.1: DTR=0 deactivates; pending TX is discarded
            self.awaiting = None
        return b""

    @property
    def gone(self) -> bool:
        """No longer answering on this port: reset, crashed or stuck."""
        return self.boot_request is not None or self.crashed

    @property
    def protocol_active(self) -> bool:
        if self.firmware.generation is Generation.G3:
            return self.baud == V2_BAUD  # §2.1: at once, DTR not looked at
        return self.baud in (V2_BAUD, USBDBG_FAST_BAUD)  # §2.2

    # ------------------------------------------------------------------ bytes in, bytes out

    def receive(self, data: bytes) -> bytes:
        """Bytes from the host; returns the camera's answer (possibly nothing)."""
        if self.gone or AppFault.MUTE in self.faults:
            return b""
        if not self.protocol_active:
            return data if self.dtr else b""  # the REPL echoes what is typed (§7 item 11)
        self.rx += data
        if self.firmware.generation is Generation.G3:
            return self._v2_poll()
        return self._usbdbg_poll() if self.dtr else b""

    def poll(self) -> bytes:
        """Time passing: retransmissions of an unacknowledged reply (§3.6)."""
        if self.gone or self.awaiting is None:
            return b""
        packet, sent_at, attempt = self.awaiting
        if self.clock() - sent_at < RETRANSMIT_WAITS[attempt]:
            return b""
        if attempt + 1 >= len(RETRANSMIT_WAITS):
            self._reset_protocol()  # §3.6: the device gives up and resets the protocol
            return b""
        self.awaiting = (packet, self.clock(), attempt + 1)
        return self._encode(replace(packet, flags=packet.flags | Flag.RTX))

    def _reboot(self, request: BootRequest, why: str) -> None:
        if AppFault.STUCK in self.faults:
            self.crashed = True  # §5.1: spins in NVIC_SystemReset; USB stays, nothing answers
            self.notes.append(f"{why}: stuck in the TRCENA spin (injected)")
            return
        self.boot_request = request

    # ------------------------------------------------------------------ V2 (§3)

    def _reset_protocol(self, *, clear_input: bool = True) -> None:
        """§3.6, omv_protocol_reset(): sequence 0, default caps, parser cleared.

        A PROTO_SYNC resets the same state but keeps what follows it in the buffer: the
        checklist's "two packets in one read are both processed" (§7 item 4) holds for
        a SYNC followed by a request too.
        """
        self.sequence = 0
        self.caps = DEFAULT_CAPS
        self.max_payload = MAX_PAYLOAD
        self.awaiting = None
        if clear_input:
            self.rx.clear()

    def _encode(self, packet: Packet) -> bytes:
        raw = bytearray(packet.encode())
        if not self.caps & Caps.CRC:
            raw[8:10] = b"\0\0"  # §3.3: header CRC 0 when CRC is off
        if AppFault.BAD_CRC in self.faults:
            raw[-1] ^= 0xFF
        return bytes(raw)

    def _send(self, opcode: int, flags: Flag, payload: bytes = b"", channel: int = 0) -> bytes:
        """A non-event packet: it carries the current sequence, which then advances (§3.4)."""
        event = b""
        if AppFault.EVENTS in self.faults:
            # §3.10: stdout NOTIFY, channel 2, no payload; events do not move the sequence.
            event = self._encode(Packet(Opcode.CHANNEL_EVENT, self.sequence, 2, Flag.EVENT))
        packet = Packet(opcode, self.sequence, channel, flags, payload)
        self.sequence = (self.sequence + 1) & 0xFF
        if flags & Flag.ACK_REQ:
            self.awaiting = (packet, self.clock(), 0)
        return event + self._encode(packet)

    def _nak(self, header: Header, status: Status) -> bytes:
        return self._send(header.opcode, Flag.NAK, status.to_bytes(2, "little"), header.channel)

    def _data(self, header: Header, payload: bytes) -> bytes:
        flags = Flag.ACK_REQ if self.caps & Caps.ACK else Flag.NONE
        return self._send(header.opcode, flags, payload, header.channel)

    def _sequence_ok(self, header: Header) -> bool:
        return (
            not self.caps & Caps.SEQ
            or header.sequence == self.sequence
            or bool(header.flags & (Flag.ACK | Flag.NAK))
            or header.opcode in (Opcode.SYS_EVENT, Opcode.CHANNEL_EVENT, Opcode.PROTO_SYNC)
        )

    def _v2_poll(self) -> bytes:
        """§3.8: parse every complete packet in the buffer and answer it."""
        out = bytearray()
        while True:
            if self.awaiting is not None and not self._take_ack(out):
                break
            start = self.rx.find(SYNC_BYTES)
            if start < 0:
                del self.rx[: max(0, len(self.rx) - 1)]  # keep a trailing AA
                break
            del self.rx[:start]
            if len(self.rx) < HEADER_SIZE:
                break
            crc_on = bool(self.caps & Caps.CRC)
            if crc_on and not header_crc_ok(bytes(self.rx)):
                del self.rx[:1]  # silent (§3.8 step 2)
                continue
            header = decode_header(bytes(self.rx), check_crc=False)
            if header.length > self.max_payload:
                out += self._nak(header, Status.OVERFLOW)
                del self.rx[:1]
                continue
            if not self._sequence_ok(header):
                out += self._nak(header, Status.SEQUENCE)
                del self.rx[:1]
                continue
            if len(self.rx) < header.packet_size:
                if not self._recover_sync():
                    break  # no receive timeout: wait for the rest (§3.8 step 3)
                continue
            raw = bytes(self.rx[: header.packet_size])
            del self.rx[: header.packet_size]
            if crc_on and not payload_crc_ok(header, raw):
                out += self._nak(header, Status.CHECKSUM)
                continue
            if header.opcode <= Opcode.SYS_MEMORY and header.channel != 0:
                out += self._nak(header, Status.INVALID)
                continue
            if header.flags & (Flag.ACK | Flag.NAK):
                continue  # an ACK with nothing awaiting it
            out += self._v2_request(header, raw[HEADER_SIZE : HEADER_SIZE + header.length])
            if self.gone:
                break
        return bytes(out)

    def _recover_sync(self) -> bool:
        """§3.8 step 3: a complete valid PROTO_SYNC later in the buffer wins over a
        truncated packet in front of it."""
        sync = Packet(Opcode.PROTO_SYNC).encode()[:8]  # sync word, seq 0, no flags
        at = self.rx.find(sync[:2], 1)
        while at > 0:
            chunk = bytes(self.rx[at : at + HEADER_SIZE])
            if len(chunk) == HEADER_SIZE and header_crc_ok(chunk):
                header = decode_header(chunk, check_crc=False)
                if header.opcode == Opcode.PROTO_SYNC and not header.length:
                    del self.rx[:at]
                    return True
            at = self.rx.find(sync[:2], at + 1)
        return False

    def _take_ack(self, out: bytearray) -> bool:
        """§3.5: while awaiting an ACK, only the matching ACK/NAK or a PROTO_SYNC count;
        other requests stay buffered. Returns whether normal parsing may go on."""
        assert self.awaiting is not None
        packet, _, attempt = self.awaiting
        at = self.rx.find(SYNC_BYTES)
        while at >= 0 and len(self.rx) - at >= HEADER_SIZE:
            chunk = bytes(self.rx[at : at + HEADER_SIZE])
            if header_crc_ok(chunk):
                header = decode_header(chunk, check_crc=False)
                size = header.packet_size
                if header.opcode == Opcode.PROTO_SYNC and len(self.rx) - at >= size:
                    self.awaiting = None
                    del self.rx[:at]  # the SYNC aborts the wait and is processed
                    return True
                if (
                    header.flags & (Flag.ACK | Flag.NAK)
                    and header.opcode == packet.opcode
                    and header.sequence == packet.sequence
                ):
                    del self.rx[at : at + size]
                    if header.flags & Flag.NAK:  # resend at once
                        self.awaiting = (packet, self.clock(), attempt)
                        out += self._encode(replace(packet, flags=packet.flags | Flag.RTX))
                        return False
                    self.awaiting = None
                    return True
            at = self.rx.find(SYNC_BYTES, at + 1)
        return False

    def _v2_request(self, header: Header, payload: bytes) -> bytes:
        opcode = header.opcode
        if opcode == Opcode.PROTO_SYNC:
            self._reset_protocol(clear_input=False)
            return self._send(opcode, Flag.ACK)
        if opcode == Opcode.PROTO_GET_CAPS:
            return self._data(header, pack_caps(self.caps, self.max_payload))
        if opcode == Opcode.PROTO_SET_CAPS:
            if len(payload) != 16:
                return self._nak(header, Status.INVALID)
            reply = self._send(opcode, Flag.ACK)  # sent before the new caps apply (§3.9)
            self.caps, self.max_payload = unpack_caps(payload)
            return reply
        if opcode == Opcode.PROTO_STATS:
            return self._data(header, bytes(32))
        if opcode == Opcode.PROTO_VERSION:
            versions = pack_versions(
                PROTOCOL_VERSION, self.reported_bootloader, self.firmware.version
            )
            return self._data(header, versions)
        if opcode == Opcode.SYS_INFO:
            return self._data(header, self._sys_info())
        if opcode == Opcode.SYS_MEMORY:
            return self._data(header, _u32(0))
        if opcode == Opcode.SYS_BOOT:
            self._reboot(BootRequest.FORCED, "SYS_BOOT")  # no reply (§3.5)
            return b""
        if opcode == Opcode.SYS_RESET:
            self._reboot(BootRequest.NORMAL, "SYS_RESET")
            return b""
        if opcode == Opcode.CHANNEL_LIST:
            listing = b"".join(
                bytes([number, 0]) + name.encode().ljust(14, b"\0") for number, name in CHANNELS
            )
            return self._data(header, listing)
        # Unknown opcodes, the device-only events, and the channel operations this
        # model leaves out: NAK INVALID (§3.8 step 4).
        return self._nak(header, Status.INVALID)

    def _sys_info(self) -> bytes:
        """§3.10: 76 bytes; dev_id holds the application serial's words (§1.4)."""
        uid = bytes.fromhex(self.arch_id)  # the words at +8, +4, +0 of the reversed UID
        dev_id = uid[8:12][::-1] + uid[4:8][::-1] + uid[0:4][::-1]
        return (
            _u32(CPU_ID)
            + dev_id
            + _u32((USB_VID << 16) | APPLICATION_PID)
            + bytes(12 + 8)
            + _u32(AE3_HW_CAPS)
            + bytes(4 + 8 + 8 + 12)
        )

    # ------------------------------------------------------------------ usbdbg (§4)

    def _usbdbg_poll(self) -> bytes:
        out = bytearray()
        while len(self.rx) >= USBDBG_UNIT and not self.gone:
            unit = bytes(self.rx[:USBDBG_UNIT])
            if unit[0] != USBDBG_MAGIC:
                del self.rx[:USBDBG_UNIT]
                if self.firmware.generation is Generation.G1:
                    self.crashed = True  # §4.3: __fatal_error, the LED blinks forever
                    self.notes.append(f"v4.7.0 fatal error on a non-usbdbg unit {unit.hex(' ')}")
                    break
                continue  # G2 ignores it
            opcode, length = unit[1], struct.unpack_from("<I", unit, 2)[0]
            if not opcode & 0x80 and length:
                if len(self.rx) < USBDBG_UNIT + length:
                    break  # the host's data phase is still coming
                del self.rx[: USBDBG_UNIT + length]
            else:
                del self.rx[:USBDBG_UNIT]
            out += self._usbdbg_command(opcode, length)
        return bytes(out)

    def _usbdbg_command(self, opcode: int, length: int) -> bytes:
        if opcode == UsbdbgCommand.FW_VERSION:
            reply = b"".join(_u32(part) for part in self.firmware.version)
        elif opcode == UsbdbgCommand.ARCH_STR:
            # §4.2: the rest of a stack buffer that is not zeroed follows the NUL.
            reply = f"OPENMV AE3 [AE3:{self.arch_id}]".encode() + b"\0" + b"\xa5" * 64
        elif opcode == UsbdbgCommand.SCRIPT_RUNNING:
            reply = _u32(0)
        elif opcode == UsbdbgCommand.SENSOR_ID:
            reply = _u32(0xFF)
        elif opcode == UsbdbgCommand.SYS_RESET:
            self._reboot(BootRequest.NORMAL, "USBDBG_SYS_RESET")
            return b""
        elif opcode == UsbdbgCommand.SYS_RESET_TO_BL:
            self._reboot(BootRequest.FORCED, "USBDBG_SYS_RESET_TO_BL")
            return b""
        else:
            reply = b""  # other commands: read-backs of zeros, or writes with no reply
        # Bit 7: the device sends exactly the `length` bytes the header asked for (§4.1).
        return reply[:length].ljust(length, b"\0") if opcode & 0x80 else b""
