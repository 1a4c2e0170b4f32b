"""The third way into the bootloader: MicroPython's REPL (openmv-protocol.md §6.3).

At any baud rate but the debug protocols' the CDC port is the REPL, on every firmware
generation. Ctrl-C stops a running script, Ctrl-B prints the banner, which says what
the camera is (§6.1: `OpenMV v4.8.1; MicroPython v1.25.0; OpenMV-AE3 with ...`), and in
the raw REPL (Ctrl-A) `machine.bootloader()` is a forced bootloader entry (§5.1), which
is what OpenMV's openmv-ota sends through mpremote. Only a banner naming an OpenMV AE3
is trusted: a port that echoes, or babbles, is not a camera.
"""

from __future__ import annotations

from typing import Any

from ae3tools.camera.port import port_error_types, read_until
from ae3tools.camera.protocol import REPL_BAUD
from ae3tools.formats.firmware import FirmwareIdentity, firmware_identity

REPL_TIMEOUT = 1.5
BOARD = "OpenMV-AE3"  # MICROPY_HW_BOARD_NAME in the banner (§6.1)
INTERRUPT = b"\r\x03\x03"  # Ctrl-C twice: stop a script, even one that catches the first
FRIENDLY = b"\x02"  # Ctrl-B: the friendly REPL, with its banner
RAW = b"\x01"  # Ctrl-A: the raw REPL
RAW_READY = b"raw REPL; CTRL-B to exit\r\n>"
PROMPT = b">>> "
BOOTLOADER = b"import machine\nmachine.bootloader()\n\x04"  # Ctrl-D runs it
ACCEPTED = b"OK"


def repl_identity(link: Any) -> FirmwareIdentity | None:
    """Switch the open port to the REPL, stop what runs, and read the banner; the
    identity it gives if it names an OpenMV AE3, else None."""
    link.baudrate = REPL_BAUD  # a new line coding: the debug protocol lets go (§2)
    link.reset_input_buffer()
    link.write(INTERRUPT)
    read_until(link, PROMPT, 0.3)  # a traceback, the interrupted script's last prints
    link.reset_input_buffer()
    link.write(FRIENDLY)
    text = read_until(link, PROMPT, REPL_TIMEOUT)
    identity = firmware_identity(text) if text.endswith(PROMPT) else None
    if identity is None or identity.board != BOARD:
        return None
    return identity


def repl_bootloader(link: Any) -> bool:
    """machine.bootloader() through the raw REPL; whether the REPL took the command.
    It answers OK before it runs it, but the camera resets while it runs and its OK may
    be lost with the port: the port failing then counts as taken (the caller confirms
    that the camera went)."""
    link.write(RAW)
    if not read_until(link, RAW_READY, REPL_TIMEOUT).endswith(RAW_READY):
        return False
    link.write(BOOTLOADER)
    try:
        return read_until(link, ACCEPTED, REPL_TIMEOUT).endswith(ACCEPTED)
    except port_error_types():
        return True
