"""The running camera's CDC port on a pseudo-terminal (POSIX only: Linux's pty, termios2
and inotify), which pyserial opens like any tty.

The baud rate pyserial sets (read back through the master side's termios) and whether
the port is open (DTR, which pyserial raises on open) drive the `VirtualApplication`.
Imported only where a running camera is served: the virtual bootloader works without
it, on Windows too.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import select
import struct
import termios
import threading
import tty
from collections.abc import Callable

from ae3tools.virtual.application import VirtualApplication

# termios2 (asm-generic/termbits.h): TCGETS2 reads the rate a custom baud (12 Mbaud) set;
# on a pty master it returns the slave's settings, which is what pyserial changed.
TCGETS2 = 0x802C542A
_TERMIOS2 = struct.Struct("<IIIIB19sII")
POLL_INTERVAL = 0.005  # how often the pty's line state is looked at
CLOSE_GRACE = 0.25  # how long a write may trail its close into the master (see _drain)


def _baud(master: int) -> int:
    """The rate pyserial set on the slave side (TCGETS2 on the master reads the slave's)."""
    raw = fcntl.ioctl(master, TCGETS2, bytes(_TERMIOS2.size))
    speed: int = _TERMIOS2.unpack(raw)[-1]
    return speed


# inotify (linux/inotify.h): a pty has no DTR line; whether a program has the port open
# stands in for it (pyserial raises DTR on open and drops it on close).
IN_OPEN, IN_CLOSE_WRITE, IN_CLOSE_NOWRITE = 0x20, 0x08, 0x10
_EVENT = struct.Struct("iIII")


class _OpenWatch:
    """How many programs have a path open, from inotify's open and close events.

    The server keeps its own descriptor on the slave side (so bytes a host writes just
    before it closes are never lost with the pty's "other side closed"), which is why
    POLLHUP cannot tell it when the host closes.
    """

    def __init__(self, path: str) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        mask = IN_OPEN | IN_CLOSE_WRITE | IN_CLOSE_NOWRITE
        if self._libc.inotify_add_watch(self.fd, path.encode(), mask) < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")
        self.count = 0

    def update(self) -> int:
        with contextlib.suppress(BlockingIOError):
            raw = os.read(self.fd, 4096)
            offset = 0
            while offset < len(raw):
                _, mask, _, length = _EVENT.unpack_from(raw, offset)
                offset += _EVENT.size + length
                self.count += 1 if mask & IN_OPEN else -1
        return self.count

    def close(self) -> None:
        os.close(self.fd)


class PtyPort:
    """Serves one VirtualApplication on a pseudo-terminal, on a thread of its own.

    `terminal`: a pty someone else made, as (master descriptor, slave path) (the umockdev
    bridge's /dev/ttyACM0); by default a new one. The master descriptor becomes this
    object's: it is closed when the application leaves.
    """

    def __init__(
        self,
        app: VirtualApplication,
        on_gone: Callable[[], None],
        terminal: tuple[int, str] | None = None,
    ) -> None:
        self.app = app
        self.on_gone = on_gone
        if terminal is None:
            self.master, self.slave = os.openpty()
            self.path = os.ttyname(self.slave)
        else:
            self.master, self.path = terminal
            self.slave = os.open(self.path, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self.slave)  # no echo or line editing: bytes pass as on a USB CDC port
        self.opened = _OpenWatch(self.path)  # after our own open, which it does not count
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"pty {self.path}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        line = (0, False)
        try:
            while not self._stop.is_set():
                readable, _, _ = select.select([self.master, self.opened.fd], [], [], POLL_INTERVAL)
                data = b""
                if self.master in readable:
                    data = os.read(self.master, 65536)
                # Read after the data: a host sets the baud rate and opens the port before
                # it writes, and closes after, so this is the state the data was sent under
                # (a close is applied after the data, below).
                current = (_baud(self.master), self.opened.update() > 0)
                closing = line[1] and not current[1]
                if closing:
                    data += self._drain()
                if current != line and not closing:
                    line = current
                    self.app.set_line(*line)
                out = self.app.poll()
                if data and line[1]:
                    out += self.app.receive(data)
                if out and line[1] and not closing:
                    os.write(self.master, out)
                if closing:
                    line = current
                    self.app.set_line(*line)  # DTR drops after the data (§2.1)
                    termios.tcflush(self.slave, termios.TCIFLUSH)  # unread replies go too
                if self.app.boot_request is not None:
                    break
        finally:
            self.opened.close()
            os.close(self.slave)
            os.close(self.master)  # the port vanishes with the CDC device
            if self.app.boot_request is not None:
                self.on_gone()

    def _drain(self) -> bytes:
        """What the host wrote just before it closed: the kernel moves a write into the
        master's buffer by deferred work, which can trail the close's inotify event."""
        data = b""
        while select.select([self.master], [], [], CLOSE_GRACE)[0]:
            data += os.read(self.master, 65536)
        return data

    def stop(self, wait: bool = True) -> None:
        """Stop serving; the port is gone once the thread ends (`wait` for that)."""
        self._stop.set()
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()


PortFactory = Callable[[VirtualApplication, Callable[[], None]], PtyPort]
