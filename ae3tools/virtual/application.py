"""The running application's CDC side, as a model: bytes and line state in, bytes out.

From openmv-protocol.md (cited as §N), following its simulator checklist (§7): the line
coding and DTR choose between the REPL and the debug protocol per generation (§2);
protocol V2 as the firmware runs it (`ae3tools.virtual.protocol_v2`, with the channels
and script of `ae3tools.virtual.channels`); the legacy usbdbg commands, where v4.7.0 dies
on a unit not starting with 0x30 (§4); MicroPython's REPL (`ae3tools.virtual.repl`);
and the requests that send the camera to its bootloader (§5), reported to the owner as
a `BootRequest`. No I/O and no threads: `ae3tools.virtual.camera` serves it on a
pseudo-terminal.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum

from ae3tools.board import APPLICATION_PID, USB_VID
from ae3tools.camera.protocol import (
    TOUCH_BAUD,
    USBDBG_FAST_BAUD,
    USBDBG_MAGIC,
    USBDBG_UNIT,
    V2_BAUD,
    Generation,
    UsbdbgCommand,
    Version,
    pack_versions,
    version_text,
)
from ae3tools.virtual.channels import Channels, Script
from ae3tools.virtual.protocol_v2 import Identity, V2Device
from ae3tools.virtual.repl import Repl

PROTOCOL_VERSION: Version = (1, 0, 2)  # §3.10: v5.0.0
TASK_PERIOD = 0.050  # §3.8: the protocol task runs from a 50 ms soft timer
# §3.10: SYS_INFO's hw_caps[0] on the AE3.
AE3_HW_CAPS = 0x003F08C3
CPU_ID = 0x411FD221  # illustrative SCB->CPUID of a Cortex-M55 (§3.11's example)
# SYS_MEMORY (§3.9, protocol 1.0.2): the GC heap and two UMA pools; the sizes are
# illustrative (no AE3's were read), the layout is the firmware's: u8 count, 3 reserved,
# then per pool u8 type (0 GC, 1 UMA), u8 reserved, u16 flags, u32 total, used, free,
# persist, peak.
MEMORY_POOLS = (
    (0, 0, 262_144, 18_432, 243_712, 0, 0),
    (1, 0, 4_194_304, 1_048_576, 3_145_728, 65_536, 1_310_720),
    (1, 1, 1_048_576, 0, 1_048_576, 0, 262_144),
)


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
    """Ways a running camera meets a host (§7 item 10), injected with --fault app:KIND."""

    MUTE = "mute"  # a script has taken over the USB port: nothing answers
    BAD_CRC = "badcrc"  # every V2 reply carries a corrupted CRC
    STUCK = "stuck"  # the TRCENA spin (§5.1): it stops answering, no bootloader comes
    GONE = "gone"  # it drops off the bus in its reset and never comes back (unplugged)
    PRINTING = "printing"  # its script prints: stdout events every 50 ms, unprompted (§6.1)
    REPL_ONLY = "repl-only"  # the debug protocols do not answer; the REPL does (§6.3)


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

    FORCED = "forced"  # SYS_BOOT, RESET_TO_BL, the 1200-baud touch, machine.bootloader()
    NORMAL = "normal"  # SYS_RESET, machine.reset(): a non-forced bootloader (1.5 s window)


def _u32(value: int) -> bytes:
    return value.to_bytes(4, "little")


def sys_info(serial: str) -> bytes:
    """SYS_INFO's 76 bytes (§3.10). dev_id holds the words at +8, +4 and +0 of the board
    UID array, which is the serial's five EUI bytes e0..e4 reversed into 12 bytes (§1.4):
    on the wire e3 e2 e1 e0, 00 00 00 e4, then zeros."""
    eui = bytes.fromhex(serial[:10]).ljust(5, b"\0")
    uid = (eui + bytes(7))[::-1]
    dev_id = uid[8:12] + uid[4:8] + uid[0:4]
    return (
        _u32(CPU_ID)
        + dev_id
        + _u32((USB_VID << 16) | APPLICATION_PID)
        + bytes(12 + 8)  # chip_id (no sensor), reserved
        + _u32(AE3_HW_CAPS)
        + bytes(4 + 8 + 8 + 12)  # hw_caps[1], flash and RAM sizes, buffer sizes, reserved
    )


def memory_stats() -> bytes:
    entries = b"".join(struct.pack("<BBHIIIII", kind, 0, *rest) for kind, *rest in MEMORY_POOLS)
    return bytes([len(MEMORY_POOLS), 0, 0, 0]) + entries


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
        self.usbdbg_rx = bytearray()
        self.boot_request: BootRequest | None = None  # set once it resets itself
        self.crashed = False  # G1's __fatal_error (§4.3): USB no longer serviced
        self.notes: list[str] = []  # what the host did that a real camera would not survive
        self.last_task = clock()
        self.channels = Channels()
        if AppFault.PRINTING in faults:  # main.py, started at power-up, prints
            self.channels.script = Script(running=True, prints=True, last_print=clock())
        self.v2 = V2Device(
            Identity(
                pack_versions(PROTOCOL_VERSION, reported_bootloader, firmware.version),
                sys_info(serial),
                memory_stats(),
            ),
            self.channels,
            clock=clock,
            on_reset=lambda forced: self._reset_request(forced, "a V2 request"),
            corrupt_crc=AppFault.BAD_CRC in faults,
        )
        self.repl = Repl(
            version_text(firmware.version),
            on_reset=lambda forced: self._reset_request(forced, "the REPL"),
            script_running=lambda: self.channels.script.running,
            stop_script=self.channels.stop_script,
        )

    # ------------------------------------------------------------------ line state (§2)

    @property
    def legacy(self) -> bool:
        return self.firmware.generation is not Generation.G3

    def set_line(self, baud: int, dtr: bool) -> bytes:
        """SET_LINE_CODING and SET_CONTROL_LINE_STATE. Returns nothing to send: a mode
        change never answers, but it may reset the camera (the 1200-baud touch)."""
        changed_baud = baud != self.baud
        self.baud, was_dtr, self.dtr = baud, self.dtr, dtr
        if self.gone:
            return b""
        if changed_baud and self.legacy and baud == TOUCH_BAUD:
            self._reboot(BootRequest.FORCED, "1200-baud touch")  # §2.2: no DTR needed
        if not self.legacy:
            # §2.1: DTR=0 turns V2 off and discards pending output (the buffer, the
            # sequence and an ACK wait are kept); DTR=1 turns it on at 921600; a new line
            # coding alone turns it on or off by its rate, whatever DTR is.
            if was_dtr and not dtr:
                self.v2.set_active(False)
                self.v2.take_output()
            elif dtr != was_dtr or changed_baud:
                self.v2.set_active(baud == V2_BAUD)
        return b""

    @property
    def gone(self) -> bool:
        """No longer answering on this port: reset, crashed or stuck."""
        return self.boot_request is not None or self.crashed

    @property
    def protocol_active(self) -> bool:
        if not self.legacy:
            return self.v2.active
        return self.baud in (V2_BAUD, USBDBG_FAST_BAUD)  # §2.2

    # ------------------------------------------------------------------ bytes in, bytes out

    def receive(self, data: bytes) -> bytes:
        """Bytes from the host; returns the camera's answer (possibly nothing)."""
        if self.gone or AppFault.MUTE in self.faults:
            return b""
        if not self.protocol_active:
            out = self.repl.receive(data)  # what it printed before any reset still goes
            return out if self.dtr else b""
        if AppFault.REPL_ONLY in self.faults:
            return b""
        if not self.legacy:
            self.v2.receive(data)
            return self.v2.take_output() if not self.gone else b""
        self.usbdbg_rx += data
        return self._usbdbg_poll() if self.dtr else b""

    def poll(self) -> bytes:
        """Time passing: the script runs, a V2 sender waiting for its ACK looks at its
        clock, and every 50 ms the protocol task runs (events, §3.6 retransmissions)."""
        if self.gone or AppFault.MUTE in self.faults:
            return b""
        now = self.clock()
        tick = now - self.last_task >= TASK_PERIOD
        if tick:
            self.last_task = now
        if self.legacy or AppFault.REPL_ONLY in self.faults:
            self.channels.run(now, active=False)
        else:
            self.v2.advance(tick=tick)
        printed = bytes(self.channels.repl_output)
        self.channels.repl_output.clear()
        out = b"" if self.protocol_active else printed
        if not self.legacy:
            out += self.v2.take_output()
        return out if self.dtr and not self.gone else b""

    def _reset_request(self, forced: bool, why: str) -> None:
        self._reboot(BootRequest.FORCED if forced else BootRequest.NORMAL, why)

    def _reboot(self, request: BootRequest, why: str) -> None:
        if AppFault.STUCK in self.faults:
            self.crashed = True  # §5.1: spins in NVIC_SystemReset; USB stays, nothing answers
            self.notes.append(f"{why}: stuck in the TRCENA spin (injected)")
            return
        self.boot_request = request

    # ------------------------------------------------------------------ usbdbg (§4)

    def _usbdbg_poll(self) -> bytes:
        out = bytearray()
        rx = self.usbdbg_rx
        while len(rx) >= USBDBG_UNIT and not self.gone:
            unit = bytes(rx[:USBDBG_UNIT])
            if unit[0] != USBDBG_MAGIC:
                del rx[:USBDBG_UNIT]
                if self.firmware.generation is Generation.G1:
                    self.crashed = True  # §4.3: __fatal_error, the LED blinks forever
                    self.notes.append(f"v4.7.0 fatal error on a non-usbdbg unit {unit.hex(' ')}")
                    break
                continue  # G2 ignores it
            opcode, length = unit[1], struct.unpack_from("<I", unit, 2)[0]
            if not opcode & 0x80 and length:
                if len(rx) < USBDBG_UNIT + length:
                    break  # the host's data phase is still coming
                del rx[: USBDBG_UNIT + length]
            else:
                del rx[:USBDBG_UNIT]
            out += self._usbdbg_command(opcode, length)
        return bytes(out)

    def _usbdbg_command(self, opcode: int, length: int) -> bytes:
        if opcode == UsbdbgCommand.FW_VERSION:
            reply = b"".join(_u32(part) for part in self.firmware.version)
        elif opcode == UsbdbgCommand.ARCH_STR:
            # §4.2: the rest of a stack buffer that is not zeroed follows the NUL.
            reply = f"OPENMV AE3 [AE3:{self.arch_id}]".encode() + b"\0" + b"\xa5" * 64
        elif opcode == UsbdbgCommand.SCRIPT_RUNNING:
            reply = _u32(int(self.channels.script.running))
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
