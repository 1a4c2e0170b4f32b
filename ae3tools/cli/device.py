"""Commands that talk to a camera: flash, devices, recover, erase-fs."""

from __future__ import annotations

import shlex
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from ae3tools.board import BOOTLOADER_PID, USB_VID, Role, partition_for_role
from ae3tools.bundle import read_bundle
from ae3tools.cli.common import JsonOption, app, emit_json, err, out, styled
from ae3tools.dfu.flash import (
    RECOVERY_TIMEOUT_MS,
    FlashFailed,
    ImageResult,
    dfu_util_commands,
    erase_filesystem,
    flash_images,
    load_recovery_key,
    parse_only,
    recover,
    roles_text,
    select_images,
)
from ae3tools.dfu.host import (
    DEFAULT_TIMEOUT_MS,
    BootloaderInfo,
    DeviceError,
    DfuSession,
    describe_bootloaders,
    libusb_backend,
    wait_for_bootloader,
)
from ae3tools.dfu.virtual import Fault, Timing
from ae3tools.dfu.virtual_backend import VirtualBackend, virtual_backend
from ae3tools.fileio import read_input
from ae3tools.findings import UsageError
from ae3tools.key import make_key_file

# ----------------------------------------------------------------------------- options

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
    DEFAULT_TIMEOUT_MS / 1000,
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

    virtual: Path | None
    timing: str
    faults: list[str]
    plug_delay: float
    serial: str | None
    path: str | None
    wait: bool
    wait_timeout: float
    timeout: float  # seconds, per control transfer

    @property
    def timeout_ms(self) -> int:
        return max(1, round(self.timeout * 1000))

    def backend(self) -> Any:
        if self.virtual is None:
            return libusb_backend()
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
    if isinstance(backend, VirtualBackend):
        backend.shutdown()


@contextmanager
def session_for(target: Target) -> Iterator[tuple[DfuSession, BootloaderInfo]]:
    """Find, open and check the bootloader; the camera must have the AE3's alt layout."""
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


class ProgressBars:
    """A FlashObserver drawing one rich progress bar per transfer, on stderr."""

    def __init__(self, enabled: bool) -> None:
        self.progress = Progress(
            TextColumn("{task.description:<16}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=err,
            disable=not enabled,
        )
        self.task: TaskID | None = None

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


def results_table(results: list[ImageResult]) -> Table:
    table = Table()
    for column in ("image", "alt", "bytes", "seconds", "verified"):
        table.add_column(column, justify="right" if column in ("bytes", "seconds") else "left")
    for r in results:
        table.add_row(
            r.role.name,
            f"{r.partition.alt} {r.partition.name}",
            str(r.length),
            f"{r.write_seconds + (r.verify_seconds or 0):.2f}",
            styled("read back equal", "green") if r.verified else styled("not read back", "yellow"),
        )
    return table


def failure_hint(exc: FlashFailed, bundle: Path, target: Target) -> str:
    resume = shlex.join(
        ["ae3tools", "flash", str(bundle), "--only", roles_text(exc.remaining), *target.options()]
    )
    if exc.session_lost:
        return (
            "The camera left the bootloader (or stopped answering). Replug it (or press reset) "
            f"and run again; to write only what is left: {resume}"
        )
    return f"The camera is still in the bootloader (not reset). To resume: {resume}"


# ----------------------------------------------------------------------------- commands


@app.command()
def flash(
    bundle: Path = typer.Argument(..., help="Release bundle made by `ae3tools bundle`."),
    only: str | None = typer.Option(
        None, "--only", help="Flash only these images: hp,he,romfs1,romfs0."
    ),
    verify: bool = typer.Option(
        True, "--verify/--no-verify", help="Read every image back and compare."
    ),
    reset: bool = ResetOption,
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the plan and the equivalent dfu-util commands."
    ),
    serial: str | None = SerialOption,
    path: str | None = PathOption,
    wait: bool = WaitOption,
    wait_timeout: float = WaitTimeoutOption,
    timeout: float = TimeoutOption,
    virtual: Path | None = VirtualOption,
    virtual_timing: str = TimingOption,
    fault: list[str] = FaultOption,
    plug_delay: float = PlugDelayOption,
    as_json: bool = JsonOption,
) -> None:
    """Flash a verified bundle onto an AE3 in one DFU session, reading every image back.

    The whole bundle is verified before USB is touched. Then the bootloader is found
    (waiting for it), the session is latched at once, the images are written in the
    bundle's order and read back, and the camera is reset.

    Example: ae3tools flash ae3-v4.7.0.zip --only hp,he
    """
    images = select_images(read_bundle(bundle), parse_only(only))
    if dry_run:
        commands = dfu_util_commands(images, reset=reset)
        if as_json:
            emit_json(
                {
                    "bundle": str(bundle),
                    "plan": [
                        {"role": i.role.value, "alt": i.partition.alt, "bytes": len(i.data)}
                        for i in images
                    ],
                    "verify": verify,
                    "reset": reset,
                    "dfu_util": commands,
                }
            )
            return
        for i in images:
            out.print(
                f"would write {i.role.name:<7} {len(i.data):>9} bytes to alt "
                f"{i.partition.alt} {i.partition.name}" + (", then read it back" if verify else "")
            )
        out.print("then DETACH and reset" if reset else "then stay in the bootloader")
        out.print(f"equivalent dfu-util commands (after unzip {bundle}):")
        for command in commands:
            out.print(f"  {command}")
        return

    target = Target(
        virtual, virtual_timing, fault, plug_delay, serial, path, wait, wait_timeout, timeout
    )
    started = time.perf_counter()
    try:
        with session_for(target) as (session, info), ProgressBars(not as_json) as bars:
            if not as_json:
                err.print(f"bootloader {info.version or '?'} serial {info.serial} at {info.path}")
            results = flash_images(session, images, verify=verify, observer=bars)
            if reset:
                session.detach_and_reset()
            else:
                session.close()
    except FlashFailed as exc:
        raise DeviceError(
            str(exc),
            hint=failure_hint(exc, bundle, target),
            details={
                "bundle": str(bundle),
                "images": [r.as_dict() for r in exc.completed],
                "remaining": [r.value for r in exc.remaining],
            },
        ) from None
    report = {
        "bundle": str(bundle),
        "ok": True,
        "device": info.as_dict(),
        "images": [r.as_dict() for r in results],
        "reset": reset,
        "seconds": round(time.perf_counter() - started, 3),
    }
    if as_json:
        emit_json(report)
        return
    out.print(results_table(results))
    verdict = "flashed and verified" if verify else "flashed (not read back: --no-verify)"
    after = "camera reset" if reset else "camera left in the bootloader"
    out.print(f"{len(results)} images {verdict} in {report['seconds']} s; {after}")


@app.command()
def devices(
    virtual: Path | None = VirtualOption,
    virtual_timing: str = TimingOption,
    as_json: bool = JsonOption,
) -> None:
    """List AE3 bootloaders on USB: serial, path, bootloader version, alt names.

    Listing reads descriptors only, so it does not hold the bootloader open.

    Example: ae3tools devices --json
    """
    target = Target(
        virtual, virtual_timing, [], 0.0, None, None, False, 0.0, DEFAULT_TIMEOUT_MS / 1000
    )
    backend = target.backend()
    try:
        found = describe_bootloaders(backend)
    finally:
        shut(backend)
    if as_json:
        emit_json({"devices": [d.as_dict() for d in found]})
        return
    if not found:
        out.print(
            "no AE3 bootloader found (it listens ~1.5 s after power-up; "
            "`ae3tools flash` waits for it)"
        )
        return
    table = Table()
    for column in ("serial", "path", "bootloader", "alt settings"):
        table.add_column(column)
    for d in found:
        table.add_row(
            d.serial or "?",
            d.path,
            d.version or "?",
            " ".join(f"{alt}:{name}" for alt, name in enumerate(d.alt_names)),
        )
    out.print(table)


@app.command("recover")
def recover_command(
    key: Path | None = typer.Option(
        None, "--key", help="Recovery key file (default: the AE3 key, made in memory)."
    ),
    bundle: Path | None = typer.Option(
        None, "--bundle", help="Re-flash ROMFS0 from this bundle after the recovery."
    ),
    yes: bool = YesOption,
    reset: bool = ResetOption,
    serial: str | None = SerialOption,
    path: str | None = PathOption,
    wait: bool = WaitOption,
    wait_timeout: float = WaitTimeoutOption,
    timeout: float = typer.Option(
        RECOVERY_TIMEOUT_MS / 1000,
        "--timeout",
        metavar="SECONDS",
        help="Control transfer timeout in seconds (recovery runs four chip erases).",
    ),
    virtual: Path | None = VirtualOption,
    virtual_timing: str = TimingOption,
    fault: list[str] = FaultOption,
    as_json: bool = JsonOption,
) -> None:
    """Re-initialise the external flash chip with the MRAM recovery key (alt 7).

    This BLANKS the external flash: the internal filesystem (RWFS) and ROMFS0. With
    --bundle, ROMFS0 is written again from the bundle in the same session.

    Example: ae3tools recover --yes --bundle ae3-v4.7.0.zip
    """
    if not yes:
        raise UsageError(
            "recover blanks the external flash (the filesystem and ROMFS0): run it again with --yes"
        )
    key_limit = partition_for_role(Role.KEY).size
    key_bytes = (
        load_recovery_key(read_input(key, limit=key_limit), str(key)) if key else make_key_file()
    )
    romfs0 = []
    if bundle is not None:
        romfs0 = select_images(read_bundle(bundle), {Role.ROMFS0})
    target = Target(virtual, virtual_timing, fault, 0.0, serial, path, wait, wait_timeout, timeout)
    with session_for(target) as (session, _), ProgressBars(not as_json) as bars:
        seconds = recover(session, key_bytes, timeout_ms=target.timeout_ms, observer=bars)
        results = []
        if romfs0:
            try:
                results = flash_images(session, romfs0, observer=bars)
            except FlashFailed as exc:
                raise DeviceError(
                    str(exc), hint=failure_hint(exc, bundle or Path(), target)
                ) from None
        if reset:
            session.detach_and_reset()
    if as_json:
        emit_json(
            {
                "ok": True,
                "recovery_seconds": round(seconds, 3),
                "images": [r.as_dict() for r in results],
                "reset": reset,
            }
        )
        return
    out.print(f"recovery done in {seconds:.1f} s: the external flash is blank")
    if results:
        out.print(results_table(results))
    else:
        out.print(
            "ROMFS0 is now empty: flash it with `ae3tools flash BUNDLE --only romfs0`. "
            "The FAT filesystem formats itself on the next boot."
        )


@app.command("erase-fs")
def erase_fs(
    yes: bool = YesOption,
    reset: bool = ResetOption,
    serial: str | None = SerialOption,
    path: str | None = PathOption,
    wait: bool = WaitOption,
    wait_timeout: float = WaitTimeoutOption,
    timeout: float = TimeoutOption,
    virtual: Path | None = VirtualOption,
    virtual_timing: str = TimingOption,
    fault: list[str] = FaultOption,
) -> None:
    """Wipe the camera's internal FAT filesystem (RWFS, alt 5) as OpenMV IDE does.

    The camera formats a fresh filesystem on its next boot.

    Example: ae3tools erase-fs --yes
    """
    if not yes:
        raise UsageError("erase-fs deletes every file on the camera: run it again with --yes")
    target = Target(virtual, virtual_timing, fault, 0.0, serial, path, wait, wait_timeout, timeout)
    with session_for(target) as (session, _):
        erase_filesystem(session)
        if reset:
            session.detach_and_reset()
    out.print("filesystem erased" + ("; camera reset" if reset else ""))
