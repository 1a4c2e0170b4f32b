"""The running camera's protocol V2 channels and the script behind them, as a model.

openmv-protocol.md §3.9 lists the default channels of a release build: 0 "usb" (the
transport), 1 "stdin" (a script is written here and executed), 2 "stdout" (what the
script prints, in a 1024-byte ring buffer) and 3 "stream" (the frame buffer). This
module holds their state and answers the channel operations as the firmware's channel
code does, including its odd corners (reading more of stdout than it holds sends the
data and then a NAK FAILED; a write is acknowledged even when it could not be stored).

The virtual camera runs no MicroPython: a script written to stdin "runs" until it is
stopped, printing nothing, and a camera with the `printing` fault runs one that prints a
line every `PRINT_INTERVAL` seconds. No frame is ever ready on the stream channel (there
is no sensor), so it answers as a camera that is not streaming does.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

# §3.9: channel ids and the flags CHANNEL_LIST reports for them.
USB, STDIN, STDOUT, STREAM = 0, 1, 2, 3
FLAG_READ, FLAG_WRITE, FLAG_EXEC, FLAG_LOCK, FLAG_STREAM, FLAG_PHYSICAL = (
    0x01,
    0x02,
    0x04,
    0x08,
    0x10,
    0x40,
)
CHANNELS = (
    (USB, FLAG_PHYSICAL, "usb"),
    (STDIN, FLAG_WRITE | FLAG_EXEC, "stdin"),
    (STDOUT, FLAG_READ, "stdout"),
    (STREAM, FLAG_READ | FLAG_LOCK | FLAG_STREAM, "stream"),
)
NAME_SIZE = 14  # a CHANNEL_LIST entry: u8 id, u8 flags, name[14] (NUL-terminated)

# The stdio channel (omv_protocol_channel_stdio.c): a 1024-byte ring buffer for stdout
# (it holds 1023 bytes), a NOTIFY event when it passes half full, and one every 50 ms
# while it holds anything (§6.1).
STDOUT_RING = 1024
STDOUT_FLUSH = 0.050
# The stdin and stream ioctls, with the argument sizes the firmware checks (§3.9).
IOCTL_STDIN_STOP, IOCTL_STDIN_EXEC, IOCTL_STDIN_RESET = 1, 2, 3
IOCTL_STREAM_CTRL, IOCTL_STREAM_RAW_CTRL, IOCTL_STREAM_RAW_CFG, IOCTL_STREAM_SOURCE = 0, 1, 2, 3
IOCTL_SIZES = {
    (STDIN, IOCTL_STDIN_STOP): 0,
    (STDIN, IOCTL_STDIN_EXEC): 0,
    (STDIN, IOCTL_STDIN_RESET): 0,
    (STREAM, IOCTL_STREAM_CTRL): 4,
    (STREAM, IOCTL_STREAM_RAW_CTRL): 4,
    (STREAM, IOCTL_STREAM_RAW_CFG): 8,
    (STREAM, IOCTL_STREAM_SOURCE): 4,
}
# A script larger than this is not stored (the firmware's heap would run out), but the
# write is still acknowledged, as the firmware's is.
SCRIPT_LIMIT = 1 << 20
PRINT_INTERVAL = 0.1
PRINTED_LINE = "fps: 30.0\n"

# §3.10: the event codes.
EVENT_SOFT_REBOOT = 2
EVENT_NOTIFY = 0xFFFF


def channel_list() -> bytes:
    """CHANNEL_LIST's payload: 16 bytes per registered channel."""
    return b"".join(
        bytes([number, flags]) + name.encode()[: NAME_SIZE - 1].ljust(NAME_SIZE, b"\0")
        for number, flags, name in CHANNELS
    )


@dataclass
class Event:
    """An event the channels want sent: (channel, code)."""

    channel: int
    code: int


@dataclass
class Script:
    """What runs on the camera: whether a script is running, and whether it prints."""

    running: bool = False
    prints: bool = False
    last_print: float = 0.0


@dataclass
class Channels:
    """The state of the four default channels and of the script behind stdin/stdout."""

    script: Script = field(default_factory=Script)
    stdin_buffer: bytearray = field(default_factory=bytearray)
    stdout: bytearray = field(default_factory=bytearray)  # the ring buffer's contents
    notified: bool = False
    last_notify: float = 0.0
    stream_enabled: bool = False
    events: list[Event] = field(default_factory=list)  # to be sent, oldest first
    repl_output: bytearray = field(default_factory=bytearray)  # prints while inactive
    exec_pending: bool = False  # an EXEC ioctl waits for the main loop to run the script

    # ---------------------------------------------------------------- the script

    def start_script(self, prints: bool, now: float) -> None:
        """The main loop runs a script: SOFT_REBOOT, then stdin's running event."""
        self.script = Script(running=True, prints=prints, last_print=now)
        self.events.append(Event(USB, EVENT_SOFT_REBOOT))
        self.events.append(Event(STDIN, 1))

    def stop_script(self) -> None:
        if self.script.running:
            self.script.running = False
            self.events.append(Event(STDIN, 0))

    def run(self, now: float, active: bool) -> None:
        """Time passing in the main loop: the script prints, a pending EXEC starts."""
        if self.exec_pending:
            self.exec_pending = False
            if self.stdin_buffer:
                self.stdin_buffer.clear()  # pyexec_vstr consumes it
                self.start_script(prints=False, now=now)
        script = self.script
        if not (script.running and script.prints):
            return
        while now - script.last_print >= PRINT_INTERVAL:
            script.last_print += PRINT_INTERVAL
            self.print_text(PRINTED_LINE.encode(), now, active)

    def print_text(self, text: bytes, now: float, active: bool) -> None:
        """mp_hal_stdout_tx_strn: into the ring while the protocol is active, else to the
        REPL's port. A ring that would overflow is emptied and keeps the text's tail."""
        if not active:
            self.repl_output += text
            return
        capacity = STDOUT_RING - 1
        if len(text) <= capacity - len(self.stdout):
            self.stdout += text
        else:
            self.stdout[:] = text[-capacity:]
            self.notified = False
        if not self.notified and len(self.stdout) > STDOUT_RING // 2:
            self.notified = True
            self.last_notify = now
            self.events.append(Event(STDOUT, EVENT_NOTIFY))

    def tick(self, now: float) -> None:
        """The stdout channel's tick (every protocol task): NOTIFY while it holds data."""
        if self.stdout and now - self.last_notify >= STDOUT_FLUSH:
            self.last_notify = now
            self.events.append(Event(STDOUT, EVENT_NOTIFY))

    # ---------------------------------------------------------------- operations

    def poll_bits(self) -> int:
        """CHANNEL_POLL: a bit per channel with something to say."""
        bits = 0
        if self.script.running:
            bits |= 1 << STDIN
        if self.stdout:
            bits |= 1 << STDOUT
        return bits  # the stream never has a frame ready here

    def size(self, channel: int) -> int | None:
        """CHANNEL_SIZE; None where the channel has no size (NAK INVALID)."""
        if channel == STDOUT:
            return len(self.stdout)
        if channel in (USB, STREAM):
            return 0  # the transport's unread input (already siphoned); no frame ready
        return None

    def shape(self, channel: int) -> tuple[int, ...] | None:
        """CHANNEL_SHAPE: the stream's (width, height, bpp) of an empty frame buffer."""
        return (0, 0, 0) if channel == STREAM else None

    def read_stdout(self, size: int) -> bytes:
        """Up to `size` bytes out of the ring (the read clears the notified state)."""
        data = bytes(self.stdout[:size])
        del self.stdout[:size]
        self.notified = False
        return data

    def readable(self, channel: int) -> str | None:
        """How CHANNEL_READ reads `channel`: 'stdout' (chunks), 'stream' (a pointer into
        the frame buffer), 'usb' (the transport: nothing arrives), or None (NAK INVALID)."""
        return {STDOUT: "stdout", STREAM: "stream", USB: "usb"}.get(channel)

    def write(self, channel: int, offset: int, data: bytes) -> str:
        """CHANNEL_WRITE: 'ack', 'echo' (the transport writes it back raw), or 'invalid'."""
        if channel == USB:
            return "echo"
        if channel != STDIN:
            return "invalid"
        if offset == 0:
            self.stdin_buffer.clear()
        if len(self.stdin_buffer) + len(data) <= SCRIPT_LIMIT:
            self.stdin_buffer += data
        return "ack"

    def lock(self, channel: int) -> bool:
        return False  # only the stream locks, and only with a frame ready

    def unlock(self, channel: int) -> bool:
        return channel == STREAM

    def ioctl(self, channel: int, request: int, argument: bytes) -> str:
        """CHANNEL_IOCTL: 'ack', 'failed' or 'invalid' (unknown, or a wrong argument size)."""
        if channel not in (STDIN, STREAM):
            return "invalid"
        if IOCTL_SIZES.get((channel, request)) != len(argument):
            return "invalid"
        if channel == STREAM:
            if request == IOCTL_STREAM_CTRL:
                self.stream_enabled = struct.unpack("<I", argument)[0] != 0
            return "ack"
        if request == IOCTL_STDIN_RESET:
            self.stdin_buffer.clear()
        elif request == IOCTL_STDIN_STOP:
            self.stop_script()
        elif request == IOCTL_STDIN_EXEC:
            if not self.stdin_buffer:
                return "failed"
            self.stop_script()
            self.exec_pending = True
        return "ack"
