"""MicroPython's REPL on the running camera's CDC port, as far as a host that wants the
bootloader uses it (openmv-protocol.md §6.3): the friendly REPL with its banner (Ctrl-B),
Ctrl-C to stop a running script, and the raw REPL that mpremote drives (Ctrl-A, code,
Ctrl-D; raw-paste mode answered as unsupported, so mpremote falls back to plain raw).

The virtual camera runs no Python. Its REPL executes `import machine`,
`machine.bootloader()` (a forced bootloader entry, §5.1) and `machine.reset()` (a
plain reset); any other statement gets a NotImplementedError saying so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

CTRL_A, CTRL_B, CTRL_C, CTRL_D = b"\x01", b"\x02", b"\x03", b"\x04"
PROMPT = b">>> "
RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
RAW_PASTE_REQUEST = b"\x05A\x01"
RAW_PASTE_UNSUPPORTED = b"R\x00"
MICROPYTHON_VERSION = "v1.25.0"
MACHINE = "OpenMV-AE3 with AE302F80F55D5AE"  # MICROPY_BANNER_MACHINE (§6.1)
LINE_LIMIT = 4096  # a line or raw-REPL program longer than this is cut (a model's bound)


def banner(firmware: str) -> bytes:
    """The friendly REPL's banner (§6.1): MICROPY_BANNER_NAME_AND_VERSION and MACHINE."""
    return (
        f"OpenMV v{firmware}; MicroPython {MICROPYTHON_VERSION}; {MACHINE}\r\n"
        'Type "help()" for more information.\r\n'
    ).encode()


@dataclass
class Repl:
    """Bytes typed in, bytes printed back. `on_reset(forced)` is called for
    machine.bootloader() (forced) and machine.reset(); `script_running` and
    `stop_script` are the camera's running script, which Ctrl-C interrupts."""

    firmware: str
    on_reset: Callable[[bool], None]
    script_running: Callable[[], bool]
    stop_script: Callable[[], None]
    raw: bool = False
    line: bytearray = field(default_factory=bytearray)
    machine_imported: bool = False
    reset: bool = False

    def receive(self, data: bytes) -> bytes:
        out = bytearray()
        for index in range(len(data)):
            if self.reset:
                break
            out += self._key(data[index : index + 1])
        return bytes(out)

    def _key(self, key: bytes) -> bytes:
        if key == CTRL_C:
            self.line.clear()
            if self.script_running():
                self.stop_script()
                return (
                    b"Traceback (most recent call last):\r\n"
                    b'  File "main.py", line 8, in <module>\r\n'
                    b"KeyboardInterrupt: \r\n" + banner(self.firmware) + PROMPT
                )
            return b"" if self.raw else b"\r\n" + PROMPT
        if self.script_running():
            return b""  # the script does not read stdin: what is typed is lost
        if self.raw:
            return self._raw_key(key)
        if key == CTRL_A:
            self.raw = True
            self.line.clear()
            return b"\r\n" + RAW_BANNER + b">"
        if key == CTRL_B:
            self.line.clear()
            return b"\r\n" + banner(self.firmware) + PROMPT
        if key == CTRL_D and not self.line:
            return b"MPY: soft reboot\r\n" + banner(self.firmware) + PROMPT
        if key == b"\r":
            statement = self.line.decode("utf-8", "replace")
            self.line.clear()
            return b"\r\n" + self._execute(statement) + (b"" if self.reset else PROMPT)
        if key in (b"\x08", b"\x7f"):
            if self.line:
                self.line.pop()
                return b"\x08 \x08"
            return b""
        if key >= b" " and len(self.line) < LINE_LIMIT:
            self.line += key
            return key  # echoed
        return b""

    def _raw_key(self, key: bytes) -> bytes:
        if self.line + key == RAW_PASTE_REQUEST:  # at the start of a program only
            self.line.clear()
            return RAW_PASTE_UNSUPPORTED
        if key == CTRL_B:
            self.raw = False
            self.line.clear()
            return b"\r\n" + banner(self.firmware) + PROMPT
        if key == CTRL_A:
            self.line.clear()
            return b"\r\n" + RAW_BANNER + b">"
        if key == CTRL_D:
            program = self.line.decode("utf-8", "replace")
            self.line.clear()
            if not program:
                return b"MPY: soft reboot\r\n" + RAW_BANNER + b">"
            output = self._execute(program)
            if self.reset:
                return b"OK"
            errors = output if output.startswith(b"Traceback") else b""
            printed = b"" if errors else output
            return b"OK" + printed + CTRL_D + errors + CTRL_D + b">"
        if len(self.line) < LINE_LIMIT:
            self.line += key
        return b""

    def _execute(self, program: str) -> bytes:
        """Run the statements this model knows; the first it does not stops the rest."""
        statements = [s.strip() for part in program.splitlines() for s in part.split(";")]
        for statement in statements:
            if statement in ("", "pass"):
                continue
            if statement == "import machine":
                self.machine_imported = True
            elif statement in ("machine.bootloader()", "machine.reset()"):
                if not self.machine_imported:
                    return _traceback("NameError: name 'machine' isn't defined")
                self.reset = True
                self.on_reset(statement == "machine.bootloader()")
                return b""
            else:
                return _traceback(
                    "NotImplementedError: the virtual camera's REPL runs only import machine, "
                    "machine.bootloader() and machine.reset()"
                )
        return b""


def _traceback(error: str) -> bytes:
    return (
        b"Traceback (most recent call last):\r\n"
        b'  File "<stdin>", line 1, in <module>\r\n' + error.encode() + b"\r\n"
    )
