"""Commands that talk to a camera: flash, check, read, bootloader, devices, recover, erase-fs.

The device stack (pyusb, the DFU host, the virtual AE3) is imported inside each
command, when it is about to open a camera.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ae3tools.board import (
    ALT_NAMES,
    FLASH_ORDER,
    PARTITIONS,
    Memory,
    Role,
    partition_by_name,
    partition_for_role,
)
from ae3tools.cli.common import (
    EXIT_FAILED,
    ForceOption,
    JsonOption,
    app,
    completion,
    emit_json,
    err,
    new_table,
    out,
    parse_size,
    plural,
    print_table,
    styled,
)
from ae3tools.cli.progress import ProgressBars
from ae3tools.cli.release import KeyOption
from ae3tools.cli.target import (
    NO_CAMERA_HINT,
    VIRTUAL_MARK,
    ResetOption,
    Target,
    YesOption,
    device_command,
    end_session,
    resume_hint,
    session_for,
    shut,
)
from ae3tools.dfu.protocol import RECOVERY_TIMEOUT_MS
from ae3tools.fileio import atomic_output, check_output, read_input, refuse_output_over_input
from ae3tools.findings import Ae3Error, DeviceError, UsageError
from ae3tools.formats.key import make_key_file

if TYPE_CHECKING:
    from rich.table import Table

    from ae3tools.dfu.builder import ImageComparison, ImageResult

RECOVERY_TIMEOUT = RECOVERY_TIMEOUT_MS / 1000  # seconds (spec §7: four chip erases)


def _complete_images(incomplete: str) -> list[str]:
    """--only's completion: the image after the last comma."""
    done, _, last = incomplete.rpartition(",")
    prefix = f"{done}," if done else ""
    taken = set(done.lower().split(","))
    names = [r.value for r in FLASH_ORDER if r.value not in taken]
    return [prefix + name for name in names if name.startswith(last.lower())]


OnlyOption = typer.Option(
    None,
    "--only",
    metavar="IMAGES",
    autocompletion=_complete_images,
    help="Only these images, comma-separated: hp, he, romfs1, romfs0 (e.g. hp,he).",
)
BundleArgument = typer.Argument(
    ...,
    metavar="BUNDLE",
    help="Release bundle made by `ae3tools bundle`, or an OpenMV release zip as "
    "downloaded (firmware_v5.0.0.zip, firmware_OPENMV_AE3.zip).",
)
MANY_PANEL = "Many cameras"
SAFETY_PANEL = "Refusals and their overrides"


def results_table(results: Sequence[ImageResult]) -> Table:
    numbers = ("bytes", "written", "skipped", "read", "seconds")
    table = new_table(("image", "alt", *numbers, "verified"), right=numbers)
    for r in results:
        if r.verified:
            verdict = styled("equal" if r.written == 0 else "read back equal", "green")
        else:
            verdict = styled("not read back", "yellow")
        table.add_row(
            r.role.name,
            f"{r.partition.alt} {r.partition.name}",
            str(r.length),
            f"{r.written}/{r.blocks}",
            str(r.skipped),
            str(r.read + r.read_back),
            f"{r.seconds:.2f}",
            verdict,
        )
    return table


def _ranges_text(ranges: Sequence[tuple[int, int]], shown: int = 8) -> str:
    parts = [str(a) if a == b else f"{a}-{b}" for a, b in ranges[:shown]]
    more = f" and {len(ranges) - shown} more ranges" if len(ranges) > shown else ""
    return ", ".join(parts) + more


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def comparison_table(comparisons: Sequence[ImageComparison]) -> Table:
    table = new_table(("image", "alt", "bytes", "blocks", "result"), right=("bytes", "blocks"))
    for c in comparisons:
        result = (
            styled("equal", "green")
            if c.equal
            else styled(
                f"{plural(c.differing_blocks, 'block')} "
                f"{'differs' if c.differing_blocks == 1 else 'differ'}: "
                f"{_ranges_text(c.differing)}",
                "red",
            )
        )
        table.add_row(
            c.role.name,
            f"{c.partition.alt} {c.partition.name}",
            str(c.length),
            str(c.blocks),
            result,
        )
    return table


# ----------------------------------------------------------------------------- commands


@app.command()
@device_command()
def flash(
    bundle: Path = BundleArgument,
    only: str | None = OnlyOption,
    full: bool = typer.Option(
        False,
        "--full",
        help="Write every block, as dfu-util does, instead of only those that differ.",
    ),
    verify: bool = typer.Option(
        True, "--verify/--no-verify", help="Read every written block back and compare."
    ),
    reset: bool = ResetOption,
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the plan and the equivalent dfu-util commands."
    ),
    key: Path | None = KeyOption,
    replace_ota_layout: bool = typer.Option(
        False,
        "--replace-ota-layout",
        rich_help_panel=SAFETY_PANEL,
        help="Write a plain ROMFS0 even over openmv-ota's A/B layout on the camera "
        "(refused otherwise: the camera would keep booting the old application).",
    ),
    allow_downgrade: bool = typer.Option(
        False,
        "--allow-downgrade",
        rich_help_panel=SAFETY_PANEL,
        help="Flash a bundle whose HP firmware is older than the release the running camera "
        "reports (refused otherwise).",
    ),
    every: bool = typer.Option(
        False,
        "--all",
        rich_help_panel=MANY_PANEL,
        help="Flash every attached AE3 at once, one worker per camera (bootloaders and "
        "running cameras).",
    ),
    station: bool = typer.Option(
        False,
        "--station",
        rich_help_panel=MANY_PANEL,
        help="Production line: flash each AE3 as it is plugged in, until Ctrl-C; a camera "
        "is flashed again only after it is re-plugged.",
    ),
    count: int | None = typer.Option(
        None,
        "--count",
        min=1,
        metavar="N",
        rich_help_panel=MANY_PANEL,
        help="With --station: stop after N cameras.",
    ),
    log: Path | None = typer.Option(
        None,
        "--log",
        metavar="FILE",
        rich_help_panel=MANY_PANEL,
        help="Append one JSON line per camera to FILE (serial, bundle sha256, versions, "
        "per-image result, time, error).",
    ),
    json_progress: bool = typer.Option(
        False,
        "--json-progress",
        rich_help_panel=MANY_PANEL,
        help="Stream JSON events on stdout, one per line (camera, step, bytes done, result), "
        "ending with the report.",
    ),
    as_json: bool = JsonOption,
    *,
    target: Target,
) -> None:
    """Flash a verified bundle onto an AE3 in one DFU session, writing only what changed.

    The whole bundle is verified before USB is touched. A running camera is sent to its
    bootloader (no replugging); a camera already in its bootloader is used as it is
    (waiting for one to be plugged in). For each image, the camera's blocks are read
    and only those that differ are written (`--full` writes them all); every written
    block is read back and compared, and the camera is reset. A re-run after a failure
    writes only what is still wrong.

    With `--key`, only a bundle signed by that key is flashed.

    Many cameras: `--all` flashes every attached AE3 at once (or repeat --serial/--path
    to pick several), with a line per camera and a result per camera; `--station` waits
    for cameras and flashes each as it is plugged in. `--log` keeps a JSON line per
    camera; `--json-progress` streams events for a GUI or line controller.

    Example: ae3tools flash ae3-v4.7.0.zip --only hp,he

    Example: ae3tools flash ae3-v4.7.0.zip --station --log line1.jsonl
    """
    from ae3tools.dfu.flash import dfu_util_commands, parse_only, select_images
    from ae3tools.release.openmv_zip import images_for_flash
    from ae3tools.release.signing import trusted_key

    many = every or station or json_progress or log is not None
    many = many or len(target.serials) + len(target.paths) > 1
    if as_json and json_progress:
        raise UsageError("--json and --json-progress: give one")
    if every and station:
        raise UsageError(
            "--all flashes the cameras attached now, --station each as it comes: give one"
        )
    if count is not None and not station:
        raise UsageError("--count goes with --station")
    trusted = trusted_key(key) if key is not None else None
    source = images_for_flash(bundle, trusted)
    release = source.release
    images = select_images(source.images, parse_only(only))
    if release is not None and not (as_json or json_progress):
        err.print(
            f"{bundle}: {release.description}: images checked for their roles; provenance "
            f"unknown (no manifest, hashes or signature; `ae3tools bundle --from {bundle}` "
            "makes a verified bundle)",
            soft_wrap=True,
        )
        from ae3tools.cli.release import print_left_alone

        print_left_alone(err, release)
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
                    "incremental": not full,
                    "verify": verify,
                    "reset": reset,
                    "dfu_util": commands,
                }
            )
            return
        how = "write every block of" if full else "write the blocks that differ of"
        then = ", then read them back" if verify else ""
        for i in images:
            out.print(
                f"would {how} {i.role.name:<7} {len(i.data):>9} bytes to alt "
                f"{i.partition.alt} {i.partition.name}{then}"
            )
        out.print("then DETACH and reset" if reset else "then stay in the bootloader")
        out.print(f"equivalent dfu-util commands (after unzip {bundle}):")
        for command in commands:
            out.print(f"  {command}")
        return

    if many:
        from ae3tools.cli.fleet import flash_many
        from ae3tools.device.fleet import FlashJob

        job = FlashJob(
            tuple(images),
            incremental=not full,
            verify=verify,
            reset=reset,
            timeout_ms=target.timeout_ms,
            reboot_wait=target.reboot_wait,
            replace_ota_layout=replace_ota_layout,
            allow_downgrade=allow_downgrade,
        )
        flash_many(
            bundle, source, images, job, target, every=every, station=station, count=count, log=log,
            key=key, as_json=as_json, json_progress=json_progress,
        )  # fmt: skip
        return

    from ae3tools.device.session import refuse_downgrade
    from ae3tools.dfu.flash import FlashFailed, flash_images

    started = time.perf_counter()
    try:
        with session_for(target, quiet=as_json) as session, ProgressBars(not as_json) as bars:
            if not allow_downgrade:
                refuse_downgrade(session, images)
            results = flash_images(
                session.dfu,
                images,
                incremental=not full,
                verify=verify,
                replace_ota_layout=replace_ota_layout,
                observer=bars,
            )
            after = end_session(session, reset, quiet=as_json)
    except FlashFailed as exc:
        raise DeviceError(
            str(exc),
            hint=resume_hint(exc, ["ae3tools", "flash", str(bundle)], target),
            details={
                "bundle": str(bundle),
                "images": [r.as_dict() for r in exc.completed],
                "remaining": [r.value for r in exc.remaining],
            },
        ) from None
    from ae3tools.cli.fleet import firmware_versions

    firmware = firmware_versions(images)
    report = {
        "bundle": str(bundle),
        "source": source.as_dict(),
        "virtual": target.audit(),
        "firmware": firmware,
        "device": session.info.as_dict(),
        "was_running": session.rebooted.as_dict() if session.rebooted else None,
        "incremental": not full,
        "images": [r.as_dict() for r in results],
        "reset": reset,
        "after": after,
        "seconds": round(time.perf_counter() - started, 3),
    }
    if as_json:
        emit_json(report)
        return
    print_table(results_table(results))
    for role, said in firmware.items():
        shown = ", ".join(f"{k} {v}" for k, v in said.items() if v)
        out.print(f"{role.upper()} firmware: {shown}")
    written = sum(r.written for r in results)
    blocks = sum(r.blocks for r in results)
    verdict = (
        "flashed and verified"
        if all(r.verified for r in results)
        else "flashed (written blocks not read back: --no-verify)"
    )
    if source.signer:
        out.print(f"bundle signed by key {source.signer}")
    rest = ", the rest already equal" if written < blocks else ""
    out.print(
        f"{plural(len(results), 'image')} {verdict} in {report['seconds']} s: {written} of "
        f"{plural(blocks, 'block')} written{rest}; {after}{VIRTUAL_MARK if target.virtual else ''}"
    )


@app.command()
@device_command(omit=("plug_delay",))
def check(
    bundle: Path = BundleArgument,
    only: str | None = OnlyOption,
    reset: bool = ResetOption,
    as_json: bool = JsonOption,
    *,
    target: Target,
) -> None:
    """Compare the camera with a bundle, writing nothing.

    Every block the bundle's images cover is read and compared. Exit status 0 when the
    camera holds the bundle, 1 when any image differs (the differing block ranges are
    listed: `ae3tools flash` writes just those).

    Example: ae3tools check ae3-v4.7.0.zip --json
    """
    from ae3tools.dfu.flash import check_images, ota_layouts_replaced, parse_only, select_images
    from ae3tools.release.openmv_zip import images_for_flash

    images = select_images(images_for_flash(bundle).images, parse_only(only))
    with session_for(target, quiet=as_json) as session, ProgressBars(not as_json) as bars:
        comparisons = check_images(session.dfu, images, observer=bars)
        replaced = ota_layouts_replaced(session.dfu, images)
        after = end_session(session, reset, quiet=as_json)
    differing = [c.role.value for c in comparisons if not c.equal]
    failure = None
    if differing:
        failure = f"the camera differs from the bundle in {', '.join(differing)}"
    if as_json:
        emit_json(
            {
                "bundle": str(bundle),
                "virtual": target.audit(),
                "device": session.info.as_dict(),
                "images": [c.as_dict() for c in comparisons],
                "replaces_ota_layout": {
                    image.role.value: layout.as_dict() for image, layout in replaced
                },
                "reset": reset,
                "after": after,
            },
            failure,
        )
    else:
        print_table(comparison_table(comparisons))
        for image, layout in replaced:
            out.print(
                f"{image.partition.name} on the camera holds {layout.describe()}: flashing "
                f"this bundle's plain {image.entry.file} over it needs --replace-ota-layout"
            )
        out.print(
            "the camera holds the bundle"
            if failure is None
            else f"{failure}: `ae3tools flash {bundle}` writes just the differing blocks"
        )
    if failure is not None:
        raise typer.Exit(EXIT_FAILED)


READABLE = tuple(p.name.lower() for p in PARTITIONS if p.memory is not Memory.RECOVERY)


@app.command()
@device_command(omit=("plug_delay",))
def read(
    partition_name: str = typer.Argument(
        ...,
        metavar="PARTITION",
        autocompletion=completion(READABLE),
        help=f"Which partition: {', '.join(READABLE)}.",
    ),
    output: Path = typer.Option(
        ..., "--output", "-o", metavar="FILE", help="File to write the dump to (required)."
    ),
    length: str | None = typer.Option(
        None,
        "--length",
        "-l",
        metavar="BYTES",
        help="Stop after this many bytes (4096, 0x1000, 64K, 3M); default: the partition.",
    ),
    force: bool = ForceOption,
    reset: bool = ResetOption,
    as_json: bool = JsonOption,
    *,
    target: Target,
) -> None:
    """Dump a partition of the camera to a file (exactly the partition, no end marker).

    Back up the internal filesystem before `recover` (`read rwfs`), or pull ROMFS0 off
    a camera to inspect it. The file appears only once the whole dump is read.

    Example: ae3tools read rwfs -o rwfs-backup.img
    """
    if partition_name.lower() not in READABLE:
        raise UsageError(f"{partition_name}: expected one of {', '.join(READABLE)}")
    partition = partition_by_name(partition_name)
    size = partition.size if length is None else parse_size(length, "--length")
    if not 0 < size <= partition.size:
        raise UsageError(f"--length {length}: {partition.name} holds 1 to {partition.size} bytes")
    check_output(output, force=force)
    refuse_output_over_input(output, target.virtual)  # a virtual camera's memory is an input
    started = time.perf_counter()
    with (
        session_for(target, quiet=as_json) as session,
        ProgressBars(not as_json) as bars,
        atomic_output(output, force=force) as stream,
    ):
        bars.begin(f"read {partition.name}", size)
        for chunk in session.dfu.read_blocks(partition, size, progress=bars.advance):
            stream.write(chunk)
        bars.end()
        after = end_session(session, reset, quiet=as_json)
    seconds = round(time.perf_counter() - started, 3)
    if as_json:
        emit_json(
            {
                "virtual": target.audit(),
                "partition": partition.name,
                "alt": partition.alt,
                "output": str(output),
                "bytes": size,
                "seconds": seconds,
                "reset": reset,
                "after": after,
            }
        )
    else:
        out.print(
            f"wrote {output}: {size} bytes of {partition.name} (alt {partition.alt}); {after}"
        )


@app.command()
@device_command(omit=("plug_delay", "wait"))
def bootloader(
    as_json: bool = JsonOption,
    *,
    target: Target,
) -> None:
    """Send a running AE3 to its bootloader (forced: it stays until DETACH or a reset).

    For dfu-util or OpenMV IDE users: afterwards, `dfu-util -w -d ,37C5:96E3 ...` finds
    the camera with no replugging. Every firmware generation is handled (v5's protocol
    V2, v4's usbdbg, and the REPL where neither answers). Exit status 0 only once the
    camera's port has gone and its bootloader has enumerated (up to --wait-timeout
    seconds, at most 10); 1 if it did not go, saying what is known.

    Example: ae3tools bootloader --port /dev/ttyACM0
    """
    from ae3tools.device.reach import reboot_only

    backend = target.backend()
    try:
        rebooted, device = reboot_only(
            backend,
            target.ports(backend),
            target.selector(),
            reboot_wait=target.reboot_wait,
            status=None if as_json else err.print,
        )
    finally:
        shut(backend)
    if as_json:
        emit_json(
            {
                "virtual": target.audit(),
                "was_running": rebooted.as_dict() if rebooted else None,
                "bootloader": device.as_dict(),
            }
        )
        return
    where = f"serial {device.serial} at {device.path}"
    if rebooted is None:
        out.print(
            f"bootloader {device.describe()} ready (it was in its bootloader already): {where}"
        )
        return
    out.print(
        f"the camera on {rebooted.camera.port.device} went to its bootloader: "
        f"{device.describe()}, {where} ({rebooted.matched_by})"
    )


@app.command()
@device_command(omit=("plug_delay", "fault", "wait", "wait_timeout", "timeout", "path"))
def devices(
    as_json: bool = JsonOption,
    *,
    target: Target,
) -> None:
    """List AE3s: bootloaders on USB and running cameras on serial ports.

    For each: its state, serial, where it is (bus path or port), and the versions it
    reports (a running camera's firmware; a bootloader's version from its bcdDevice).
    Listing reads descriptors and asks running cameras their version: it does not hold a
    bootloader open or reset anything.

    Example: ae3tools devices --json
    """
    from ae3tools.device.reach import list_cameras

    backend = target.backend()
    try:
        found = list_cameras(backend, target.ports(backend))
    finally:
        shut(backend)
    rows = [item.as_dict() for item in found]
    if as_json:
        emit_json({"virtual": target.audit(), "devices": rows})
        return
    if not rows:
        out.print(
            "no AE3 found (no bootloader on USB, no running camera on a serial port; a "
            "bootloader listens ~1.5 s after power-up)" + ("" if target.virtual else NO_CAMERA_HINT)
        )
        return
    # The alt settings are the AE3's on every AE3: a column only when one differs.
    unusual = any(tuple(row.get("alt_names", ALT_NAMES)) != ALT_NAMES for row in rows)
    columns = ("state", "serial", "where", "firmware", "bootloader")
    table = new_table((*columns, "alt settings") if unusual else columns)
    for row in rows:
        alts = " ".join(f"{alt}:{name}" for alt, name in enumerate(row.get("alt_names", [])))
        table.add_row(
            row["state"],
            row["serial"] or "?",
            row.get("path") or row.get("port") or "?",
            row.get("firmware_version") or row.get("error") or "",
            row.get("bootloader_version") or "",
            *([alts] if unusual else []),
        )
    print_table(table)


# What ae3tools can and cannot tell before alt 7 is used (ae3-bootloader.md §7).
RECOVERY_CAVEAT = (
    "recover: alt 7 is the recovery of OpenMV's special AE3 builds with an Everspin MRAM chip "
    "in place of the standard octal NOR flash. ae3tools cannot tell which chip a camera has "
    "(its bootloader looks the same over USB). On an Everspin build it blanks the external "
    "memory: the filesystem (RWFS) and ROMFS0. On a standard AE3 it is expected to fail "
    "(errWRITE), and what it does to the NOR chip is not documented."
)


def confirm(yes: bool, command: str, loses: str, question: str) -> None:
    """A destructive command goes on with --yes, or when the user says so on a terminal;
    off a terminal, without --yes, it is a usage error. Before the camera is touched."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"{command} {loses}: run it again with --yes")
    if not typer.confirm(f"{question} ({loses})", err=True):
        raise Ae3Error(f"{command}: not confirmed; nothing was sent to the camera")


@app.command("recover")
@device_command(options={"timeout": typer.Option(
    RECOVERY_TIMEOUT,
    "--timeout",
    metavar="SECONDS",
    help="Control transfer timeout in seconds (recovery runs four chip erases).",
)}, omit=("plug_delay",))  # fmt: skip
def recover_command(
    key: Path | None = typer.Option(
        None,
        "--key",
        metavar="KEY.bin",
        help="Recovery key file (default: the AE3 key, made in memory).",
    ),
    bundle: Path | None = typer.Option(
        None,
        "--bundle",
        metavar="BUNDLE",
        help="Re-flash ROMFS0 from this bundle (or release zip) after the recovery.",
    ),
    yes: bool = YesOption,
    reset: bool = ResetOption,
    as_json: bool = JsonOption,
    *,
    target: Target,
) -> None:
    """Recover the external memory of a special AE3 build with an Everspin MRAM (alt 7).

    OpenMV documents alt 7 for its special builds that carry an Everspin MRAM chip in
    place of the standard octal NOR flash, and for those only. The recovery key
    re-initialises that chip and leaves it BLANK: the internal filesystem (RWFS) and
    ROMFS0 are gone. Back the filesystem up first (`ae3tools read rwfs -o rwfs.img`).
    With --bundle, ROMFS0 is written again from the bundle in the same session. On a
    terminal it asks first; elsewhere it needs --yes.

    Example: ae3tools recover --yes --bundle ae3-v4.7.0.zip
    """
    err.print(RECOVERY_CAVEAT, soft_wrap=True)
    confirm(yes, "recover", "blanks RWFS and ROMFS0", "Is this camera an Everspin build?")
    from ae3tools.dfu.flash import (
        FlashFailed,
        flash_images,
        load_recovery_key,
        recover,
        select_images,
    )
    from ae3tools.release.openmv_zip import images_for_flash

    key_limit = partition_for_role(Role.KEY).size
    key_bytes = (
        load_recovery_key(read_input(key, limit=key_limit), str(key)) if key else make_key_file()
    )
    romfs0 = []
    if bundle is not None:
        romfs0 = select_images(images_for_flash(bundle).images, {Role.ROMFS0})
    with session_for(target, quiet=as_json) as session, ProgressBars(not as_json) as bars:
        seconds = recover(session.dfu, key_bytes, timeout_ms=target.timeout_ms, observer=bars)
        results: list[ImageResult] = []
        if romfs0:
            try:
                # The chip is blank: nothing to compare, every block is written.
                results = flash_images(session.dfu, romfs0, incremental=False, observer=bars)
            except FlashFailed as exc:
                command = ["ae3tools", "flash", str(bundle)]
                raise DeviceError(str(exc), hint=resume_hint(exc, command, target)) from None
        after = end_session(session, reset, quiet=as_json)
    if as_json:
        emit_json(
            {
                "virtual": target.audit(),
                "recovery_seconds": round(seconds, 3),
                "images": [r.as_dict() for r in results],
                "reset": reset,
                "after": after,
            }
        )
        return
    out.print(f"recovery done in {seconds:.1f} s: the external flash is blank; {after}")
    if results:
        print_table(results_table(results))
    else:
        out.print(
            "ROMFS0 is now empty: flash it with `ae3tools flash BUNDLE --only romfs0`. "
            "The FAT filesystem formats itself on the next boot."
        )


@app.command("erase-fs")
@device_command(omit=("plug_delay",))
def erase_fs(
    yes: bool = YesOption,
    reset: bool = ResetOption,
    as_json: bool = JsonOption,
    *,
    target: Target,
) -> None:
    """Wipe the camera's internal FAT filesystem (RWFS, alt 5) as OpenMV IDE does.

    The camera formats a fresh filesystem on its next boot. On a terminal it asks
    first; elsewhere it needs --yes.

    Example: ae3tools erase-fs --yes
    """
    confirm(yes, "erase-fs", "deletes every file on the camera", "Erase the filesystem?")
    from ae3tools.dfu.flash import erase_filesystem

    with session_for(target, quiet=as_json) as session:
        erase_filesystem(session.dfu)
        after = end_session(session, reset, quiet=as_json)
    if as_json:
        emit_json(
            {
                "virtual": target.audit(),
                "device": session.info.as_dict(),
                "reset": reset,
                "after": after,
            }
        )
    else:
        out.print(f"filesystem erased; {after}")


def device_romfs(role: Role, target: Target, *, reset: bool, show_progress: bool) -> bytes:
    """Just the ROMFS image in the camera's `role` partition (for `romfs ls --device`)."""
    from ae3tools.dfu.flash import read_romfs_image

    with (
        session_for(target, quiet=not show_progress) as session,
        ProgressBars(show_progress) as bars,
    ):
        data = read_romfs_image(session.dfu, partition_for_role(role), observer=bars)
        end_session(session, reset, quiet=not show_progress)
    return data
