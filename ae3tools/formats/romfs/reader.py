"""Parse and validate a ROMFS image (romfs §8): the walk over its records.

The parser walks record headers and names only; file content is never read, so listing
a 24 MiB image costs what its directory structure costs.
"""

from __future__ import annotations

from collections.abc import Sequence

from ae3tools.board import Partition
from ae3tools.collector import collector_paused
from ae3tools.findings import Finding, FindingLog, Severity, error
from ae3tools.formats.romfs import records
from ae3tools.formats.romfs.alignment import REQUIRED_ALIGNMENT, AlignmentRule
from ae3tools.formats.romfs.checks import (
    check_alignment,
    check_conventions,
    check_pointers,
    guess_builder,
)
from ae3tools.formats.romfs.model import RomfsEntry, RomfsHeader, RomfsImage
from ae3tools.formats.romfs.names import show_name
from ae3tools.formats.romfs.records import (
    KIND_DATA_POINTER,
    KIND_DATA_VERBATIM,
    KIND_DIRECTORY,
    KIND_FILE,
    KIND_PADDING,
    MAGIC,
    MIN_IMAGE_SIZE,
    VINT_LIMIT,
    VINT_PAD,
    Overrun,
    read_vint,
)
from ae3tools.formats.romfs.runs import (
    BAD_POINTER,
    IN_DIRECTORY,
    IN_FILE,
    NO_NAME,
    meaning_of,
    short_run,
)
from ae3tools.formats.romfs.walk import Frame, Walk


def parse_romfs(
    image: bytes | memoryview,
    *,
    partition: Partition | None = None,
    alignment: Sequence[AlignmentRule] = REQUIRED_ALIGNMENT,
) -> RomfsImage:
    """Parse and validate a ROMFS image against every invariant of romfs §8.

    Never raises for bad content: problems come back as findings, at most
    FINDINGS_PER_CODE of each code plus a count. Time and memory are linear in the
    image, whatever its shape (records of two bytes, directories nested to any depth).
    `partition`, when given, adds the fit check; `alignment` says which file data must
    be aligned.
    """
    buf = image if isinstance(image, bytes) else bytes(image)
    header, findings = _parse_header(buf)
    if partition is not None and len(buf) > partition.size:
        findings.append(
            error(
                "ROMFS_TOO_BIG",
                f"image is {len(buf)} bytes; partition {partition.name} holds {partition.size}",
            )
        )
    if header is None:
        return RomfsImage(len(buf), None, (), tuple(findings), "other")

    walk = Walk(buf, header, FindingLog(kept=findings))
    with collector_paused():
        _walk_records(walk)
    check_pointers(walk)
    check_alignment(walk, alignment)
    check_conventions(walk, partition)
    found = tuple(walk.log.result())
    builder = guess_builder(walk)
    return RomfsImage(len(buf), header, tuple(walk.entries), found, builder, walk.ota_layout)


def _parse_header(buf: bytes) -> tuple[RomfsHeader | None, list[Finding]]:
    """romfs §8.A: the mount-level checks; any failure means 'not a ROMFS'."""
    size = len(buf)
    if size < MIN_IMAGE_SIZE:
        return None, [error("ROMFS_TOO_SHORT", f"{size} bytes; a ROMFS image has at least 4")]
    head = buf[:3]
    if head != MAGIC:
        if head == b"\xff\xff\xff":
            return None, [error("ROMFS_ERASED", "starts with erased flash (FF): no ROMFS here")]
        if head[:2] == MAGIC[:2] and head[2] == VINT_PAD:
            return None, [
                error("ROMFS_PADDED_KIND", "the FILESYSTEM kind is padded; the reader refuses it")
            ]
        return None, [error("ROMFS_BAD_MAGIC", f"starts with {head.hex(' ')}, not d2 cd 31")]
    try:
        length, payload_start, pads = read_vint(buf, 3, size)
    except Overrun:
        return None, [
            error("ROMFS_BAD_HEADER", "the FILESYSTEM length runs off the end", "offset 3")
        ]
    if length >= VINT_LIMIT:
        return None, [
            error(
                "ROMFS_VINT_TOO_LARGE",
                "the FILESYSTEM length does not fit 32 bits (romfs §8.9)",
                "offset 3",
            )
        ]
    if payload_start + length > size:
        return None, [
            error(
                "ROMFS_TRUNCATED",
                f"the FILESYSTEM record needs {payload_start + length} bytes; the image has {size}",
                "offset 3",
            )
        ]
    return RomfsHeader(length, pads, payload_start), []


def _read_record(
    walk: Walk, pos: int, end: int, parent: RomfsEntry | None, context: str
) -> tuple[int, int, int] | None:
    """Read the record header at `pos` inside a region ending at `end`.

    Returns (kind, payload start, payload end), or None after a finding when it does
    not fit its parent (nothing after a broken record can be located) or is one record
    too many.
    """
    walk.records += 1
    if walk.records > records.MAX_RECORDS:
        walk.stop(pos, parent)
        return None
    buf = walk.buf  # callers read while pos < end
    kind, body, kind_pads = buf[pos], pos + 1, 0
    if kind < 0x80 and body < end and buf[body] < 0x80 and body + 1 + buf[body] <= end:
        # One-byte kind and length, the usual case.
        if kind == KIND_FILE:
            walk.file_header_sizes.add(2)
        return kind, body + 1, body + 1 + buf[body]
    try:
        if kind >= 0x80:
            kind, body, kind_pads = read_vint(buf, pos, end)
        length, body, length_pads = read_vint(buf, body, end)
    except Overrun:
        walk.add(
            "ROMFS_RECORD_OVERRUN",
            Severity.ERROR,
            f"record header runs past the end of its {context} at 0x{end:x}",
            parent,
            pos,
        )
        return None
    if kind >= VINT_LIMIT or length >= VINT_LIMIT:
        walk.add("ROMFS_VINT_TOO_LARGE", Severity.ERROR, "a vint does not fit 32 bits", parent, pos)
        return None
    if body + length > end:
        walk.add(
            "ROMFS_RECORD_OVERRUN",
            Severity.ERROR,
            f"record of {length} bytes runs past the end of its {context} at 0x{end:x}",
            parent,
            pos,
        )
        return None
    if kind_pads or length_pads:
        walk.padded_records += 1
    if kind == KIND_FILE:
        walk.file_header_sizes.add(body - pos)
    return kind, body, body + length


# What a record of each kind means where it stands, when it is not a file or directory


def _walk_records(walk: Walk) -> None:
    """Depth-first over the tree with an explicit stack (images may nest to any depth)."""
    buf = walk.buf
    header = walk.header
    stack = [Frame(header.payload_start, header.total_size, None)]
    while stack:
        frame = stack[-1]
        pos, end, parent = frame.pos, frame.end, frame.entry
        descend: Frame | None = None
        while pos < end and descend is None:
            if walk.stopped_at is not None:
                return
            if pos + 1 < end and buf[pos + 1] <= 3:
                run = short_run(walk, pos, end, parent, in_file=False)
                if run is not None:
                    pos = run.end
                    continue
            record = _read_record(walk, pos, end, parent, "directory")
            if record is None:
                pos = end
                break
            kind, body, record_end = record
            record_start, pos = pos, record_end
            if kind in (KIND_PADDING, KIND_DATA_VERBATIM):
                walk.add_blob(body, record_end)
            elif kind in (KIND_DIRECTORY, KIND_FILE):
                named = _read_name(walk, frame, record_start, body, record_end)
                if named is None:
                    continue
                raw, children = named
                if kind == KIND_DIRECTORY:
                    entry = RomfsEntry.child(
                        parent, raw, "dir", record_start, record_end - children
                    )
                    walk.entries.append(entry)
                    if children < record_end:  # an empty directory has nothing to walk
                        descend = Frame(children, record_end, entry)
                else:
                    _read_file(walk, parent, raw, record_start, children, record_end)
            else:
                meaning = (
                    IN_DIRECTORY[kind] if kind < 0x80 else meaning_of(kind, False, empty=False)
                )
                if meaning is not None:
                    walk.add(*meaning, parent, record_start)
        frame.pos = pos
        if descend is not None:
            if pos < end:
                stack.append(descend)
            else:  # its last child: nothing is left to read in this directory
                stack[-1] = descend
        elif pos >= end:
            stack.pop()


def _read_name(
    walk: Walk, parent: Frame, offset: int, start: int, end: int
) -> tuple[bytes, int] | None:
    """romfs §8.6 and §8.10: the name at the start of a FILE or DIRECTORY payload."""
    if start < end and walk.buf[start] < 0x80:  # a one-byte vint, the usual case
        name_len, pos = walk.buf[start], start + 1
    else:
        try:
            name_len, pos, _ = read_vint(walk.buf, start, end)
        except Overrun:
            name_len, pos = VINT_LIMIT, end
    if pos + name_len > end:
        walk.add(*NO_NAME, parent.entry, offset)
        return None
    raw = walk.buf[pos : pos + name_len]
    duplicate = parent.has(raw)
    if duplicate or not raw or raw.translate(None, _ORDINARY_BYTES) or raw in (b".", b".."):
        _check_name(walk, parent, raw, offset, duplicate)
    parent.remember(raw)
    return raw, pos + name_len


def _check_name(walk: Walk, parent: Frame, raw: bytes, offset: int, duplicate: bool) -> None:
    """The findings a name can earn (the common, plain name earns none). Texts are
    built only for the findings kept: a crafted image has millions of odd names."""
    found = []
    if not raw:
        found.append(_NAME_EMPTY)
    elif b"/" in raw or b"\0" in raw or raw in (b".", b".."):
        found.append(_NAME_INVALID)
    elif raw.translate(None, _NOT_CONTROL_BYTES):
        found.append(_NAME_CONTROL)
    elif not raw.isascii() and not _is_utf8(raw):
        found.append(_NAME_NOT_UTF8)
    if duplicate:
        found.append(_NAME_DUPLICATE)
    for code, severity, message in found:
        if walk.log.full(code):
            walk.log.note(code, severity, 1)
            continue
        shown = show_name(raw, offset)
        above = parent.entry.shown_path if parent.entry else ""
        walk.log.add(
            Finding(code, severity, message.format(shown), f"{above}/{shown} @ 0x{offset:x}")
        )


# What a name can earn: (code, severity, message with {} for the shown name).
_NAME_EMPTY = ("ROMFS_NAME_EMPTY", Severity.ERROR, "empty name: no path can reach it")
_NAME_INVALID = (
    "ROMFS_NAME_INVALID",
    Severity.ERROR,
    "name '{}' is '.', '..' or holds '/' or NUL",
)
_NAME_CONTROL = (
    "ROMFS_NAME_CONTROL",
    Severity.WARNING,
    "name '{}' holds control characters (shown escaped)",
)
_NAME_NOT_UTF8 = (
    "ROMFS_NAME_NOT_UTF8",
    Severity.WARNING,
    "name '{}' is not valid UTF-8: on the camera, os.listdir() of its directory raises "
    "UnicodeError",
)
_NAME_DUPLICATE = (
    "ROMFS_NAME_DUPLICATE",
    Severity.ERROR,
    "second entry named '{}' here: opening it returns the first",
)


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# Deleting these from a name leaves its control characters (C0 and DEL), if any.
_NOT_CONTROL_BYTES = bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))
# The bytes of a name that earns no finding by its bytes alone: printable ASCII, no '/'.
_ORDINARY_BYTES = bytes(range(0x20, 0x2F)) + bytes(range(0x30, 0x7F))


def _read_file(
    walk: Walk, parent: RomfsEntry | None, raw: bytes, offset: int, start: int, end: int
) -> None:
    """romfs §5 and §8.7: the first data record among a FILE's children is its content."""
    buf = walk.buf
    entry = RomfsEntry.child(parent, raw, "file", offset, 0)
    content: tuple[int, int, str] | None = None  # (size, data offset, data kind)
    data_records = 0
    pos = start
    while pos < end:
        if pos + 1 < end and buf[pos + 1] <= 3:
            run = short_run(walk, pos, end, entry, in_file=True)
            if run is not None:
                pos = run.end
                data_records += run.data_records
                if content is None and run.first_data is not None:
                    content = (*run.first_data, "verbatim")
                continue
        record = _read_record(walk, pos, end, entry, "file")
        if record is None:
            break
        kind, body, record_end = record
        record_start, pos = pos, record_end
        if kind == KIND_DATA_VERBATIM:
            data_records += 1
            walk.add_blob(body, record_end)
            if content is None:
                content = (record_end - body, body, "verbatim")
        elif kind == KIND_DATA_POINTER:
            data_records += 1
            pointer = _read_pointer(walk, entry, record_start, body, record_end)
            if content is None and pointer is not None:
                content = (*pointer, "pointer")
        elif kind == KIND_PADDING:
            walk.add_blob(body, record_end)
        else:
            meaning = IN_FILE[kind] if kind < 0x80 else meaning_of(kind, True, empty=False)
            if meaning is not None:
                walk.add(*meaning, entry, record_start)
    if walk.stopped_at is not None:
        return  # one record too many, in this file: neither listed nor judged
    if content is None:
        walk.add(
            "ROMFS_FILE_NO_DATA",
            Severity.ERROR,
            "file has no data record: it cannot be opened and hides later siblings",
            entry,
            offset,
        )
        return
    if data_records > 1:
        walk.add(
            "ROMFS_FILE_MULTIPLE_DATA",
            Severity.WARNING,
            f"{data_records} data records; only the first is used",
            entry,
            offset,
        )
    size, data_offset, data_kind = content
    walk.entries.append(
        RomfsEntry(
            raw, "file", offset, size, data_offset, data_kind, entry.parent, entry.depth, entry.top
        )
    )


def _read_pointer(
    walk: Walk, entry: RomfsEntry, offset: int, start: int, end: int
) -> tuple[int, int] | None:
    """romfs §5 and §8.8: a DATA_POINTER is exactly two vints, size then offset."""
    buf = walk.buf
    if end == start + 2 and buf[start] < 0x80 and buf[start + 1] < 0x80:  # one-byte vints
        size, relative, pos = buf[start], buf[start + 1], end
    else:
        try:
            size, pos, _ = read_vint(buf, start, end)
            relative, pos, _ = read_vint(buf, pos, end)
        except Overrun:
            pos = -1
            size = relative = 0
    if pos != end or size >= VINT_LIMIT or relative >= VINT_LIMIT:
        walk.add(*BAD_POINTER, entry, offset)
        return None
    header = walk.header
    target = header.payload_start + relative
    if target + size > header.total_size:
        walk.add(
            "ROMFS_POINTER_OUT_OF_BOUNDS",
            Severity.ERROR,
            f"points at 0x{target:x}+{size}, outside the filesystem payload "
            f"(ends at 0x{header.total_size:x})",
            entry,
            offset,
        )
        return None
    return size, target
