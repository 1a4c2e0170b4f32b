"""Asking a running camera for its bootloader (openmv-protocol.md §6), on its open port.

Three ways in, tried the safe way round (§6.1): the usbdbg FW_VERSION command first,
which protocol V2 discards while it scans for its sync word, so a v4.7.0 camera (which
dies on 6 bytes that do not start with 0x30, §4.3) is never sent a V2 packet; then a
PROTO_SYNC; and where neither debug protocol answers, the REPL (§6.3). Each answer is
checked before it is believed: a usbdbg version must be one v4 ever reported, a V2
reply must pass its CRCs, a REPL must print a banner naming an OpenMV AE3. A port that
babbles, echoes or streams events is therefore never taken for a camera.

This module only asks. Whether the camera went (its port vanished, its bootloader
enumerated) is for the caller to confirm: `ae3tools.device.reach`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ae3tools.camera.port import CameraPort, open_port, port_error_types, read_exactly
from ae3tools.camera.protocol import (
    SYNC_BYTES,
    Flag,
    Generation,
    Opcode,
    UsbdbgCommand,
    Version,
    generation_of_usbdbg,
    parse_version,
    unpack_fw_version,
    unpack_versions,
    usbdbg_command,
    version_text,
)
from ae3tools.camera.repl import repl_bootloader, repl_identity
from ae3tools.camera.v2_link import REPLY_TIMEOUT, NoReply, V2Link
from ae3tools.findings import DeviceError

PORT_ERRORS = port_error_types()

# §6.1: "nothing valid back within about 1 s" means the camera does not speak usbdbg.
# usbdbg answers within its 50 ms poll (§7 item 12), but guessing V2 too early on a slow
# host would send a v4.7.0 camera the packet that kills it (§4.3): the spec's second it is.
PROBE_TIMEOUT = 1.0

NONE_ANSWERED_HINT = (
    "Something else may own the camera's USB port (a script using it, or a hung camera), "
    "or this is not an OpenMV AE3. Replug the camera, or press its reset button and run "
    "this again: the bootloader listens for about 1.5 s after a reset."
)
NOT_TRIED_REPL = (
    " (its REPL was not tried: that would stop the script it runs; `ae3tools bootloader` tries it)"
)


class Way(str, Enum):
    """How the camera was asked: which of its three ways in answered."""

    USBDBG = "usbdbg"  # v4.7, v4.8: RESET_TO_BL
    V2 = "V2"  # v5: SYS_BOOT
    REPL = "REPL"  # any: machine.bootloader()


@dataclass(frozen=True)
class RunningCamera:
    """What a running camera said about itself, and which way it answered."""

    port: CameraPort
    way: Way
    firmware: Version | None
    generation: Generation | None
    # PROTO_VERSION's bootloader field: a v5 application reports its own 1.0.3 when the
    # bootloader has no header (§3.10), so this is shown, never trusted.
    reported_bootloader: Version | None = None
    implausible: str | None = None  # why the version it reported cannot be a release's

    @property
    def description(self) -> str:
        version = f"OpenMV v{version_text(self.firmware)}" if self.firmware else "OpenMV"
        how = "through its REPL" if self.way is Way.REPL else self.way.value
        note = f"; {self.implausible}" if self.implausible else ""
        return f"{version} ({how}{note})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": "application",
            "port": self.port.device,
            "serial": self.port.serial,
            "firmware_version": version_text(self.firmware) if self.firmware else None,
            "protocol": self.generation.protocol if self.generation else None,
            "answered": self.way.value,
            "reported_bootloader_version": version_text(self.reported_bootloader)
            if self.reported_bootloader
            else None,
            "implausible": self.implausible,
        }


# ----------------------------------------------------------------------------- usbdbg (§4)


def plausible_usbdbg(reply: bytes) -> Version | None:
    """§6.1: FW_VERSION's 12 bytes decode as a version some v4 release reported
    (major 4, minor 7 or 8, a small patch); V2 traffic (`AA D5 ...`) and noise do not."""
    if len(reply) != 12 or reply.startswith(SYNC_BYTES):
        return None
    version = unpack_fw_version(reply)
    major, minor, patch = version
    return version if major == 4 and minor in (7, 8) and patch < 100 else None


def _usbdbg_version(link: Any) -> Version | None:
    """FW_VERSION; a valid usbdbg reply within PROBE_TIMEOUT means v4."""
    link.reset_input_buffer()
    link.write(usbdbg_command(UsbdbgCommand.FW_VERSION))
    return plausible_usbdbg(read_exactly(link, 12, PROBE_TIMEOUT))


# ----------------------------------------------------------------------------- V2 (§3)


def implausible_v2(protocol: Version, firmware: Version) -> str | None:
    """Why PROTO_VERSION's versions cannot be an OpenMV v5 release's, or None."""
    if protocol[0] != 1:
        return f"it reports protocol version {version_text(protocol)}, which no release has"
    if not 5 <= firmware[0] < 100 or max(firmware[1:]) >= 100:
        return f"it reports firmware version {version_text(firmware)}, which no v5 release has"
    return None


def _v2_camera(link: Any, port: CameraPort) -> tuple[RunningCamera, V2Link] | None:
    v2 = V2Link(link, port.device)
    try:
        v2.sync()
        reply = v2.ask(Opcode.PROTO_VERSION)
    except NoReply:
        return None
    if reply.flags & Flag.NAK:
        status = reply.nak_status
        raise DeviceError(
            f"{port.device}: the camera refused PROTO_VERSION "
            f"(NAK {status.name if status else '?'}) right after a SYNC"
        )
    protocol, bootloader, firmware = unpack_versions(reply.payload)
    camera = RunningCamera(
        port, Way.V2, firmware, Generation.G3, bootloader, implausible_v2(protocol, firmware)
    )
    return camera, v2


# ----------------------------------------------------------------------------- together


@dataclass
class Asked:
    """A camera identified on an open port, and the way to ask it for its bootloader."""

    camera: RunningCamera
    link: Any
    v2: V2Link | None = None

    def request_bootloader(self) -> None:
        """§6.2 step 4: the forced bootloader entry; no reply comes (§5.1). The camera
        resets at once and its port goes with it: once the request is written, the port
        failing is what a reset looks like, not an error (the caller confirms it went)."""
        device = self.camera.port.device
        way = self.camera.way
        with port_errors(device):
            if way is Way.V2:
                assert self.v2 is not None
                try:  # a fresh SYNC also frees a camera still waiting for an ACK (§6.2)
                    self.v2.sync(REPLY_TIMEOUT)
                except NoReply:
                    raise DeviceError(
                        f"{device}: the camera stopped answering before it could be sent to "
                        "its bootloader",
                        hint=NONE_ANSWERED_HINT,
                    ) from None
                self.v2.request(Opcode.SYS_BOOT)
            elif way is Way.USBDBG:
                self.link.write(usbdbg_command(UsbdbgCommand.SYS_RESET_TO_BL))
            elif not repl_bootloader(self.link):
                raise DeviceError(
                    f"{device}: the camera's REPL did not take machine.bootloader()",
                    hint=NONE_ANSWERED_HINT,
                )
        with contextlib.suppress(*PORT_ERRORS):
            self.link.flush()


@contextlib.contextmanager
def port_errors(device: str) -> Iterator[None]:
    """The port failing under a read or write (unplugged, or reset by someone else) as
    one sentence naming it."""
    try:
        yield
    except PORT_ERRORS as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise DeviceError(
            f"{device}: the port went away while the camera was being asked ({reason})",
            hint="Check the cable, then run this again.",
            vanished=True,
        ) from None


def identify(link: Any, port: CameraPort, *, repl: bool = True) -> Asked:
    """Which way the camera on `link` answers, and what it runs (§6.1); with `repl`, its
    REPL is the last resort (it stops the running script). DeviceError if none does."""
    legacy = _usbdbg_version(link)
    if legacy is not None:
        camera = RunningCamera(port, Way.USBDBG, legacy, generation_of_usbdbg(legacy))
        return Asked(camera, link)
    found = _v2_camera(link, port)
    if found is not None:
        camera, v2 = found
        return Asked(camera, link, v2)
    identity = repl_identity(link) if repl else None
    if identity is not None:
        firmware = parse_version(identity.openmv or "")
        return Asked(RunningCamera(port, Way.REPL, firmware, _generation_of(firmware)), link)
    raise DeviceError(
        f"{port.device}: the camera answers neither OpenMV's v4 (usbdbg) nor its v5 protocol "
        "(V2)" + (", nor its REPL as an OpenMV AE3" if repl else NOT_TRIED_REPL),
        hint=NONE_ANSWERED_HINT,
    )


def _generation_of(firmware: Version | None) -> Generation | None:
    if firmware is None:
        return None
    if firmware[0] >= 5:
        return Generation.G3
    return generation_of_usbdbg(firmware) if firmware[0] == 4 else None


def describe(port: CameraPort) -> RunningCamera:
    """Open the port, ask the camera what it runs (not through the REPL), close it."""
    link = open_port(port.device)
    try:
        with port_errors(port.device):
            return identify(link, port, repl=False).camera
    finally:
        with contextlib.suppress(*PORT_ERRORS):
            link.close()


def send_to_bootloader(port: CameraPort) -> RunningCamera:
    """§6.2 steps 2-5: open at 921600 with DTR, identify, request the forced bootloader
    entry, and close the port at once. Returns what the camera said it was running; that
    it went is for the caller to confirm."""
    link = open_port(port.device)
    try:
        with port_errors(port.device):
            asked = identify(link, port)
        asked.request_bootloader()
    finally:
        with contextlib.suppress(*PORT_ERRORS):
            link.close()
    return asked.camera
