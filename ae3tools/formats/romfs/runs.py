"""What a record that is not a named FILE or DIRECTORY means where it stands, and runs
of short records read at once (a crafted image holds millions of them)."""

from __future__ import annotations

import itertools
import re
from typing import NamedTuple

from ae3tools.findings import Severity
from ae3tools.formats.romfs.model import RomfsEntry
from ae3tools.formats.romfs.records import (
    KIND_DATA_POINTER,
    KIND_DATA_VERBATIM,
    KIND_DIRECTORY,
    KIND_FILE,
    KIND_PADDING,
    KIND_UNUSED,
)
from ae3tools.formats.romfs.walk import Walk

Meaning = tuple[str, Severity, str] | None
_KIND_ZERO_DIR = (
    "ROMFS_KIND_ZERO",
    Severity.ERROR,
    "kind-0 record: the reader stops listing here and hides what follows",
)
_KIND_ZERO_FILE = ("ROMFS_KIND_ZERO", Severity.ERROR, "kind-0 record inside a file")
_NESTED = ("ROMFS_NESTED_IN_FILE", Severity.WARNING, "a file or directory inside a file is ignored")
NO_NAME = ("ROMFS_BAD_NAME", Severity.ERROR, "the name runs past its record")
BAD_POINTER = ("ROMFS_BAD_POINTER", Severity.ERROR, "DATA_POINTER is not exactly two vints")


def _unknown(kind: int) -> tuple[str, Severity, str]:
    return ("ROMFS_UNKNOWN_KIND", Severity.INFO, f"record of unknown kind {kind} skipped")


# A run of short records (one-byte kind and length, payload of at most 3 bytes): a
# crafted image can hold millions of them. A run is handled in C, not record by record,
# in matches of at most 4096 records (the regex engine keeps state per repetition: one
# match over 24 MiB held 800 MB): its kinds are counted, the first few findings placed,
# and its PADDING and DATA_VERBATIM payloads kept as one region that the pointer check
# reads again only if a pointer lands in it. Any record may be empty; a non-empty one
# is never a FILE or DIRECTORY (a name to read), nor in a file a DATA_POINTER (its
# content), which the record-by-record path handles.
_SHORT = rb"(?:\x00|\x01.|\x02..|\x03...)"
_SHORT_RUN = {
    in_file: re.compile(
        rb"(?:[\x00-\x7f]\x00|[" + others + rb"](?:\x01.|\x02..|\x03...)){8,4096}", re.DOTALL
    )
    for in_file, others in ((False, rb"\x00-\x03\x06-\x7f"), (True, rb"\x00-\x02\x06-\x7f"))
}
_SHORT_RECORD = re.compile(rb"([\x00-\x7f])" + _SHORT, re.DOTALL)  # one record of a run
# Kinds that mean the same in such a run, keyed by the first: (the kinds, a pattern).
_KIND_CLASSES = {
    first: (members, re.compile(b"[" + re.escape(members) + b"]"))
    for first, members in (
        (KIND_UNUSED, bytes([KIND_UNUSED])),
        (KIND_PADDING, bytes([KIND_PADDING])),
        (KIND_DATA_VERBATIM, bytes([KIND_DATA_VERBATIM])),
        (KIND_DATA_POINTER, bytes([KIND_DATA_POINTER])),
        (KIND_DIRECTORY, bytes([KIND_DIRECTORY, KIND_FILE])),
        (6, bytes(range(6, 0x80))),
    )
}
_BLOB_KINDS = bytes([KIND_PADDING, KIND_DATA_VERBATIM])


class Run(NamedTuple):
    end: int  # the position after the run
    first_data: tuple[int, int] | None  # (size, offset) of its first DATA_VERBATIM
    data_records: int  # DATA_VERBATIM records, and in a file empty DATA_POINTERs


def short_run(
    walk: Walk, pos: int, end: int, parent: RomfsEntry | None, in_file: bool
) -> Run | None:
    """Account at once for a run of short records starting at `pos`, if there is one;
    None when no run is there."""
    run = _SHORT_RUN[in_file].match(walk.buf, pos, end)
    if run is None:
        return None
    run_start, run_end = run.span()
    if (run_end - run_start) % 2 == 0 and not walk.buf[run_start + 1 : run_end : 2].strip(b"\0"):
        kinds = walk.buf[run_start:run_end:2]  # empty records only: a kind every two bytes
    else:
        kinds = b"".join(_SHORT_RECORD.findall(walk.buf, run_start, run_end))
    first_data, data_records = None, 0
    records: list[tuple[int, int, int]] | None = None  # (kind, offset, size), when needed

    def placed() -> list[tuple[int, int, int]]:
        nonlocal records
        if records is None:
            records = [
                (walk.buf[m.start()], m.start(), m.end() - m.start() - 2)
                for m in _SHORT_RECORD.finditer(walk.buf, run_start, run_end)
            ]
        return records

    for key, (members, pattern) in _KIND_CLASSES.items():
        count = len(kinds) - len(kinds.translate(None, members))
        if not count:
            continue
        if key == KIND_DATA_VERBATIM or (key == KIND_DATA_POINTER and in_file):
            data_records += count
        if key == KIND_DATA_VERBATIM:
            index = kinds.index(members)
            _, offset, size = placed()[index]
            first_data = (size, offset + 2)
        meaning = meaning_of(key, in_file, empty=True)
        if meaning is None:
            continue
        code, severity, message = meaning
        shown = min(count, max(0, walk.log.cap - walk.log.counts[code]))
        for found in itertools.islice(pattern.finditer(kinds), shown):
            kind, offset, size = placed()[found.start()]
            if key == 6:
                code, severity, message = _unknown(kind)
            walk.add(code, severity, message, parent, offset)
        if count > shown:
            walk.log.note(code, severity, count - shown)
    if kinds.translate(None, _BLOB_KINDS) != kinds:
        walk.add_short_run(run_start, run_end)
    return Run(run_end, first_data, data_records)


def short_run_blobs(buf: bytes, start: int, end: int) -> list[tuple[int, int]]:
    """The non-empty PADDING and DATA_VERBATIM payloads of a run, as (start, end)."""
    return [
        (m.start() + 2, m.end())
        for m in _SHORT_RECORD.finditer(buf, start, end)
        if buf[m.start()] in _BLOB_KINDS and m.end() > m.start() + 2
    ]


def meaning_of(kind: int, in_file: bool, *, empty: bool) -> Meaning:
    """What a record that is not a readable FILE or DIRECTORY means where it stands."""
    if kind == KIND_UNUSED:
        return _KIND_ZERO_FILE if in_file else _KIND_ZERO_DIR
    if kind in (KIND_PADDING, KIND_DATA_VERBATIM):
        return None
    if kind == KIND_DATA_POINTER:
        return BAD_POINTER if in_file and empty else None
    if kind in (KIND_DIRECTORY, KIND_FILE):
        return _NESTED if in_file else NO_NAME if empty else None
    return _unknown(kind)


# The meanings of the one-byte kinds, looked up rather than built per record.
IN_DIRECTORY = [meaning_of(kind, False, empty=False) for kind in range(0x80)]
IN_FILE = [meaning_of(kind, True, empty=False) for kind in range(0x80)]
