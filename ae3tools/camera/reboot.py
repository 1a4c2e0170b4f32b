"""Asking a running camera for its bootloader (openmv-protocol.md §6), on an open port.

Which firmware generation answers is found the safe way round (§6.1): the usbdbg
FW_VERSION command first, which protocol V2 discards while it scans for its sync word;
only if nothing answers, a PROTO_SYNC. A v4.7.0 camera, which dies on any 6 bytes that do
not start with 0x30 (§4.3), is therefore never sent a V2 packet.
"""

from __future__ import annotations

import contextlib
import termios
import time
from dataclasses import dataclass
from typing import Any

from serial import SerialException

from ae3tools.camera.port import CameraPort, open_port
from ae3tools.camera.protocol import (
    HEADER_SIZE,
    SYNC_BYTES,
    BadPacket,
    Flag,
    Generation,
    Opcode,
    Packet,
    UsbdbgCommand,
    Version,
    decode,
    decode_header,
    generation_of_usbdbg,
    unpack_fw_version,
    unpack_versions,
    usbdbg_command,
    version_text,
)
from ae3tools.findings import DeviceError

# §6.1: "nothing back within about 1 s" means the camera speaks V2 (or nothing). usbdbg
# answers within its 50 ms poll (§7 item 12), but guessing V2 too early on a slow host
# would send a v4.7.0 camera the packet that kills it (§4.3): the spec's second it is.
PROBE_TIMEOUT = 1.0
REPLY_TIMEOUT = 1.0  # §7 item 12: a host should allow >= 1 s, as openmv-python does

NEITHER_HINT = (
    "Something else may own the camera's USB port (a script using it, or a hung camera). "
    "Replug the camera, or press its reset button and run this again with --wait: the "
    "bootloader listens for about 1.5 s after a reset."
)


@dataclass(frozen=True)
class RunningCamera:
    """What a running camera said about itself."""

    port: CameraPort
    generation: Generation
    firmware: Version
    # PROTO_VERSION's bootloader field: a v5 application reports its own 1.0.3 when the
    # bootloader has no header (§3.10), so this is shown, never trusted.
    reported_bootloader: Version | None = None

    @property
    def description(self) -> str:
        return f"OpenMV v{version_text(self.firmware)} ({self.generation.protocol})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": "application",
            "port": self.port.device,
            "serial": self.port.serial,
            "firmware_version": version_text(self.firmware),
            "protocol": self.generation.protocol,
            "reported_bootloader_version": version_text(self.reported_bootloader)
            if self.reported_bootloader
            else None,
        }


class V2Link:
    """Protocol V2 on an open port: one sequence counter, as the device keeps (§3.4)."""

    def __init__(self, link: Any, where: str) -> None:
        self.link = link
        self.where = where
        self.sequence = 0

    def request(self, opcode: Opcode) -> None:
        self.link.write(Packet(opcode, self.sequence).encode())

    def reply(self, timeout: float = REPLY_TIMEOUT) -> Packet:
        """The next non-event packet (events are skipped, §3.10); it moves the counter."""
        deadline = time.monotonic() + timeout
        while True:
            packet = self._read_packet(deadline)
            if packet.is_event:
                continue
            self.sequence = (packet.sequence + 1) & 0xFF
            if packet.flags & Flag.ACK_REQ:  # acknowledge, same opcode and sequence (§3.5)
                ack = Packet(packet.opcode, packet.sequence, packet.channel, Flag.ACK)
                self.link.write(ack.encode())
            return packet

    def _read(self, count: int, deadline: float) -> bytes:
        data = b""
        while len(data) < count:
            self.link.timeout = max(0.0, deadline - time.monotonic())
            chunk = self.link.read(count - len(data))
            if not chunk:
                raise TimeoutError
            data += chunk
        return data

    def _read_packet(self, deadline: float) -> Packet:
        window = b""
        while window != SYNC_BYTES:  # §3.8 step 1: skip to the sync word
            window = (window + self._read(1, deadline))[-2:]
        head = SYNC_BYTES + self._read(HEADER_SIZE - 2, deadline)
        try:
            header = decode_header(head)
            body = self._read(header.packet_size - HEADER_SIZE, deadline)
            return decode(head + body)
        except BadPacket as exc:
            raise DeviceError(
                f"{self.where}: the camera's reply failed its check ({exc}): the USB link "
                "is corrupting data, or something other than OpenMV firmware answered",
                hint="Try another cable or USB port, or replug the camera.",
            ) from None


def _usbdbg_version(link: Any) -> Version | None:
    """§6.1: FW_VERSION; 12 bytes back within PROBE_TIMEOUT means usbdbg (v4)."""
    link.reset_input_buffer()
    link.write(usbdbg_command(UsbdbgCommand.FW_VERSION))
    link.timeout = PROBE_TIMEOUT
    reply = link.read(12)
    return unpack_fw_version(reply) if len(reply) == 12 else None


def identify(link: Any, port: CameraPort) -> tuple[RunningCamera, V2Link | None]:
    """Which firmware answers on `link`, and its version (§6.1)."""
    legacy = _usbdbg_version(link)
    if legacy is not None:
        return RunningCamera(port, generation_of_usbdbg(legacy), legacy), None
    v2 = V2Link(link, port.device)
    link.reset_input_buffer()
    v2.request(Opcode.PROTO_SYNC)
    try:
        ack = v2.reply()
        if ack.opcode != Opcode.PROTO_SYNC or not ack.flags & Flag.ACK:
            raise TimeoutError
        v2.sequence = 1  # the SYNC's ACK went out with sequence 0 (§3.4)
        v2.request(Opcode.PROTO_VERSION)
        version = v2.reply()
        _, bootloader, firmware = unpack_versions(version.payload)
    except (TimeoutError, BadPacket):
        raise DeviceError(
            f"{port.device}: the camera answers neither OpenMV's v4 (usbdbg) nor its v5 "
            "protocol (V2)",
            hint=NEITHER_HINT,
        ) from None
    return RunningCamera(port, Generation.G3, firmware, bootloader), v2


def request_bootloader(link: Any, v2: V2Link | None) -> None:
    """§6.2 step 4: the forced bootloader entry; no reply comes."""
    if v2 is None:
        link.write(usbdbg_command(UsbdbgCommand.SYS_RESET_TO_BL))
    else:
        v2.request(Opcode.SYS_BOOT)
    # The camera resets at once and its port goes with it: draining may find it gone.
    with contextlib.suppress(OSError, termios.error, SerialException):
        link.flush()


def describe(port: CameraPort) -> RunningCamera:
    """Open the port, ask the camera what it runs, close it."""
    link = open_port(port.device, REPLY_TIMEOUT)
    try:
        camera, _ = identify(link, port)
    finally:
        link.close()
    return camera


def send_to_bootloader(port: CameraPort) -> RunningCamera:
    """§6.2 steps 2-5: open at 921600 with DTR, identify, request the forced bootloader
    entry, and close the port at once. Returns what the camera said it was running."""
    link = open_port(port.device, REPLY_TIMEOUT)
    try:
        camera, v2 = identify(link, port)
        request_bootloader(link, v2)
    finally:
        link.close()
    return camera
