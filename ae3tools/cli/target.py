"""Which camera a device command talks to: the shared options, the session, progress.

Importing this module costs nothing of the device stack: pyusb, the DFU host and the
virtual AE3 are imported when a command opens a camera, so `ae3tools --help` and the
file commands start without them.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from ae3tools.board import BOOTLOADER_PID, USB_VID
from ae3tools.cli.common import err
from ae3tools.dfu.protocol import DEFAULT_TIMEOUT_MS
from ae3tools.findings import UsageError

if TYPE_CHECKING:
    from ae3tools.dfu.flash import FlashFailed
    from ae3tools.dfu.host import BootloaderInfo, DfuSession

DEFAULT_TIMEOUT = DEFAULT_TIMEOUT_MS / 1000  # seconds

VirtualOption = typer.Option(
    None,
    "--virtual",
    envvar="AE3TOOLS_VIRTUAL",
    metavar="DIR",
    help="Use a virtual AE3 whose memory lives in DIR (one file per partition), "
    "instead of USB. Also AE3TOOLS_VIRTUAL.",
)
TimingOption = typer.Option(
    "realistic",
    "--virtual-timing",
    envvar="AE3TOOLS_VIRTUAL_TIMING",
    help="Virtual AE3 costs: 'realistic' (1.5 s listen window, flash times) or 'zero', "
    "optionally with overrides: realistic:nor_sector_erase=0.045:listen_window=none.",
)
FaultOption = typer.Option(
    [],
    "--fault",
    envvar="AE3TOOLS_VIRTUAL_FAULTS",
    help="Inject a virtual AE3 fault (repeatable, or comma-separated), e.g. "
    "status:alt=HP:block=3:status=errWRITE, vanish:alt=ROMFS0:block=10, "
    "stall:alt=HE:block=0, hang:alt=HP:block=5, slow:alt=HP:block=1:seconds=2.",
)
PlugDelayOption = typer.Option(
    0.0,
    "--virtual-plug-delay",
    envvar="AE3TOOLS_VIRTUAL_PLUG_DELAY",
    hidden=True,
    help="Seconds before the virtual AE3 appears (to rehearse --wait).",
)
SerialOption = typer.Option(None, "--serial", "-S", help="Use the bootloader with this serial.")
PathOption = typer.Option(
    None, "--path", "-p", help="Use the bootloader at this bus-port path, as dfu-util -p: 1-2.4."
)
WaitOption = typer.Option(
    True, "--wait/--no-wait", help="Wait for the bootloader to appear (it listens ~1.5 s)."
)
WaitTimeoutOption = typer.Option(
    30.0, "--wait-timeout", metavar="SECONDS", help="Seconds to wait for the bootloader."
)
TimeoutOption = typer.Option(
    DEFAULT_TIMEOUT,
    "--timeout",
    metavar="SECONDS",
    help="USB control transfer timeout in seconds.",
)
ResetOption = typer.Option(
    True, "--reset/--no-reset", help="DETACH and reset at the end so the camera boots."
)
YesOption = typer.Option(False, "--yes", "-y", help="Confirm the destructive operation.")


@dataclass(frozen=True)
class Target:
    """Which camera a command talks to, from the shared options."""

    virtual: Path | None = None
    timing: str = "realistic"
    faults: tuple[str, ...] = ()
    plug_delay: float = 0.0
    serial: str | None = None
    path: str | None = None
    wait: bool = True
    wait_timeout: float = 30.0
    timeout: float = DEFAULT_TIMEOUT  # seconds, per control transfer

    @property
    def timeout_ms(self) -> int:
        return max(1, round(self.timeout * 1000))

    def backend(self) -> Any:
        if self.virtual is None:
            from ae3tools.dfu.host import libusb_backend

            return libusb_backend()
        from ae3tools.dfu.virtual import Fault, Timing
        from ae3tools.dfu.virtual_backend import virtual_backend

        try:
            timing = Timing.parse(self.timing)
            faults = Fault.parse_many(self.faults)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        try:
            backend = virtual_backend(
                self.virtual, timing=timing, faults=faults, plug_delay=self.plug_delay
            )
        except OSError as exc:
            raise UsageError(f"--virtual {self.virtual}: {exc.strerror or exc}") from None
        if backend.devices[0].memory.created:
            err.print(f"created a new virtual AE3 in {self.virtual} (blank memory)")
        return backend

    def options(self) -> list[str]:
        """The options that pick this camera again, for a command printed as a hint."""
        picked = [("--serial", self.serial), ("--path", self.path)]
        if self.virtual is not None:
            picked += [("--virtual", str(self.virtual)), ("--virtual-timing", self.timing)]
        return [part for name, value in picked if value for part in (name, value)]


def shut(backend: Any) -> None:
    from ae3tools.dfu.virtual_backend import VirtualBackend

    if isinstance(backend, VirtualBackend):
        backend.shutdown()


@contextmanager
def session_for(target: Target) -> Iterator[tuple[DfuSession, BootloaderInfo]]:
    """Find, open and check the bootloader; the camera must have the AE3's alt layout."""
    from ae3tools.dfu.host import DfuSession, wait_for_bootloader

    backend = target.backend()
    try:

        def waiting() -> None:
            err.print(
                f"waiting for the AE3 bootloader ({USB_VID:04x}:{BOOTLOADER_PID:04x}): plug the "
                "camera in or press its reset button..."
            )

        device = wait_for_bootloader(
            backend,
            serial=target.serial,
            path=target.path,
            wait=target.wait_timeout if target.wait else 0.0,
            on_waiting=waiting,
        )
        session = DfuSession(device, timeout_ms=target.timeout_ms)
        info = session.open()
        session.check_layout(info.alt_names)
        yield session, info
    finally:
        shut(backend)


def end_session(session: DfuSession, reset: bool) -> None:
    """DETACH and reset so the camera boots, or leave it in the bootloader."""
    if reset:
        session.detach_and_reset()
    else:
        session.close()


class ProgressBars:
    """A FlashObserver drawing one rich progress bar per transfer, on stderr."""

    def __init__(self, enabled: bool) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description:<16}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=err,
            disable=not enabled,
        )
        self.task: Any = None

    def __enter__(self) -> ProgressBars:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def begin(self, label: str, total: int) -> None:
        self.task = self.progress.add_task(label, total=total)

    def advance(self, done: int) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=done)

    def end(self) -> None:
        self.task = None


def resume_hint(exc: FlashFailed, command: list[str], target: Target) -> str:
    """What to run after a failed flash: the same command, for what is left."""
    from ae3tools.dfu.flash import roles_text

    resume = shlex.join([*command, "--only", roles_text(exc.remaining), *target.options()])
    if exc.session_lost:
        return (
            "The camera left the bootloader (or stopped answering). Replug it (or press reset) "
            f"and run again; to write only what is left: {resume}"
        )
    return f"The camera is still in the bootloader (not reset). To resume: {resume}"
