"""MicroPython ROMFS images: parse and validate, extract, build.

Everything here follows romfs-format.md ("romfs §N" below). The parser walks record
headers and names only; file content is never read, so listing a 24 MiB image costs
what its directory structure costs. Hashing (`file_digests`) is the one full pass.
"""

from __future__ import annotations

import fnmatch
import hashlib
import itertools
import os
import re
import stat
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from ae3tools.board import PARTITIONS, ROMFS_ROLES, Partition
from ae3tools.collector import collector_paused
from ae3tools.fileio import require_directory
from ae3tools.findings import (
    Ae3Error,
    Finding,
    FindingLog,
    Severity,
    error,
    errors_in,
    info,
    warning,
)

# romfs §2: record kinds.
KIND_UNUSED = 0
KIND_PADDING = 1
KIND_DATA_VERBATIM = 2
KIND_DATA_POINTER = 3
KIND_DIRECTORY = 4
KIND_FILE = 5
KIND_FILESYSTEM = 0x14A6B1

# romfs §3: the canonical vint of KIND_FILESYSTEM; the reader compares these raw bytes.
MAGIC = b"\xd2\xcd\x31"
MIN_IMAGE_SIZE = 4  # romfs §3, ENODEV below this
VINT_LIMIT = 1 << 32  # romfs §1 / §8.9: mp_uint_t is 32 bits on the MCU
VINT_PAD = 0x80  # romfs §1: a leading 0x80 adds nothing to a vint

# romfs §9: OpenMV's builder puts the root payload at 16 and gives FILE records 8-byte headers.
OPENMV_HEADER_SIZE = 16
OPENMV_RECORD_HEADER_SIZE = 8

# The largest image any ROMFS partition holds (ROMFS0, romfs §6); a build stops there.
MAX_ROMFS_SIZE = max(p.size for p in PARTITIONS if p.role in ROMFS_ROLES)

# A crafted 24 MiB image can hold millions of records, and the reader spends
# microseconds of Python on each record it reads one by one (runs of short records are
# read in C and not counted). Past this many, the walk stops with an error, so listing
# or verifying any input costs seconds at most. A real image has two records per file
# and one per directory; `romfs build` refuses a tree that would need more.
MAX_RECORDS = 250_000

_NOT_PAD = re.compile(b"[^\x80]")


class _Overrun(Exception):
    """A vint ran past the end of its region (the reader's only bounds check)."""


def read_vint(buf: memoryview | bytes, pos: int, end: int) -> tuple[int, int, int]:
    """Decode one vint at `pos` that must end before `end` (romfs §1).

    Returns (value, position after it, number of leading 0x80 pad bytes). Decoding
    stops early once the value cannot fit 32 bits, so an erased (all 0xFF) region
    costs a few bytes, not the whole region.
    """
    start = pos
    if pos < end and buf[pos] == VINT_PAD:
        match = _NOT_PAD.search(buf, pos, end)
        if match is None:
            raise _Overrun
        pos = match.start()
    pads = pos - start
    value = 0
    while True:
        if pos >= end:
            raise _Overrun
        byte = buf[pos]
        pos += 1
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            return value, pos, pads
        if value >= VINT_LIMIT:
            return value, pos, pads


def encode_vint(value: int, width: int = 0) -> bytes:
    """Big-endian base-128, padded with leading 0x80 bytes to `width` if given."""
    if value < 0:
        raise ValueError("vint values are unsigned")
    groups = [value & 0x7F]
    value >>= 7
    while value:
        groups.append(0x80 | (value & 0x7F))
        value >>= 7
    raw = bytes(reversed(groups))
    if width:
        if len(raw) > width:
            raise ValueError(f"value needs {len(raw)} vint bytes, more than {width}")
        raw = bytes([VINT_PAD]) * (width - len(raw)) + raw
    return raw


@dataclass(frozen=True)
class AlignmentRule:
    """File data whose base name matches `pattern` must start at a multiple of `alignment`."""

    pattern: str
    alignment: int

    @classmethod
    def parse(cls, text: str) -> AlignmentRule:
        """Parse "PATTERN=N", for example "*.tflite=16"."""
        pattern, sep, number = text.rpartition("=")
        try:
            alignment = int(number, 0)
        except ValueError:
            alignment = 0
        if not sep or not pattern or alignment < 1 or alignment & (alignment - 1):
            raise ValueError(f"alignment rule {text!r}: expected PATTERN=N with N a power of two")
        return cls(pattern, alignment)


# An entry's alignment is reported up to this (offset 0 is aligned to anything).
MAX_SHOWN_ALIGNMENT = 1 << 16

# romfs §8.14: OpenMV asks for 16 for .tflite (zero-copy model use) and defaults to 4.
OPENMV_ALIGNMENT: tuple[AlignmentRule, ...] = (
    AlignmentRule("*.tflite", 16),
    AlignmentRule("*", 4),
)
# What a validator insists on by default: only the rule whose breach breaks a device.
REQUIRED_ALIGNMENT: tuple[AlignmentRule, ...] = (AlignmentRule("*.tflite", 16),)


def alignment_for(name: str, rules: Sequence[AlignmentRule]) -> int:
    for rule in rules:
        if fnmatch.fnmatchcase(name, rule.pattern):
            return rule.alignment
    return 1


# Names are shown escaped: printable ASCII as is (a backslash doubled), every other byte
# as \xNN, and so is a space that ends a name (at the end of a line it would vanish:
# "a" and "a " would list alike). Two different names never look alike, and no name can
# drive a terminal.
_PLAIN_BYTES = bytes(range(0x20, 0x5C)) + bytes(range(0x5D, 0x7F))
_ESCAPES = {b: f"\\x{b:02x}" for b in range(256) if bytes([b]) not in _PLAIN_BYTES}
_ESCAPES[0x5C] = "\\\\"

# A name may be megabytes long, and is shown in the path of every entry below it: a
# name longer than this (raw, or escaped) is shown by its first bytes, its length and
# its record's offset, which no other entry shares. 255 is what host file systems take.
_LONG_NAME = 255
_LONG_NAME_KEPT = 48


def escape_name(raw: bytes) -> str:
    """A name's bytes as text that is unambiguous and free of control characters."""
    if not raw.translate(None, _PLAIN_BYTES) and not raw.endswith(b" "):
        return raw.decode("ascii")
    shown = raw.decode("latin-1").translate(_ESCAPES)
    return shown[:-1] + "\\x20" if shown.endswith(" ") else shown


def show_name(raw: bytes, record_offset: int) -> str:
    """A ROMFS name as ae3tools prints it: escaped, and short (see _LONG_NAME)."""
    if len(raw) <= _LONG_NAME:
        shown = escape_name(raw)
        if len(shown) <= _LONG_NAME:
            return shown
    kept = escape_name(raw[:_LONG_NAME_KEPT])
    return f"{kept}\u2026[{len(raw)}-byte name @ 0x{record_offset:x}]"


# A crafted image can nest directories a hundred thousand levels deep, under names of
# hundreds of bytes: every full path kept or printed would cost time and memory
# quadratic in the input. A path is shown by its first and last few levels, each side
# at most _PATH_SIDE_LEVELS names and (past its first name) _PATH_SIDE_CHARS characters,
# the middle elided. Nothing path-like is stored per entry.
_PATH_SIDE_LEVELS = 8
_PATH_SIDE_CHARS = 256


def _side(names: Sequence[str], limit: int) -> int:
    """How many of `names` (from one end of a path, `limit` at most) fit one side: at
    least one."""
    names = names[: min(limit, _PATH_SIDE_LEVELS)]
    if sum(map(len, names)) + len(names) <= _PATH_SIDE_CHARS:
        return len(names)  # the usual case, decided in C
    count, chars = 0, 0
    for name in names:
        chars += len(name) + 1
        if count and chars > _PATH_SIDE_CHARS:
            break
        count += 1
    return count


def _path_head(head: Sequence[str], depth: int) -> tuple[int, str]:
    """The levels a shown path starts with, and their text, from the first names."""
    first = _side(head, depth)
    return first, "/" + "/".join(head[:first])


def _path_rest(head: tuple[int, str], tail: Sequence[str], depth: int) -> str:
    """A shown path from its head and the shown names of its last levels, root first."""
    first, text = head
    names = tail[max(0, len(tail) - (depth - first)) :]  # the levels the head leaves
    shown = "/".join(names)
    if len(shown) >= _PATH_SIDE_CHARS:  # long names: those that fit, nearest first
        names = names[len(names) - _side(names[::-1], len(names)) :]
        shown = "/".join(names)
    hidden = depth - first - len(names)
    middle = f"/\u2026[{hidden} levels]\u2026" if hidden else ""
    return text + middle + ("/" + shown if names else "")


def elided_path(head: Sequence[str], tail: Sequence[str], depth: int) -> str:
    """The shown path of an entry `depth` levels deep, from the shown names of its first
    levels and of its last, each list root first and holding _PATH_SIDE_LEVELS names,
    or all of them when the path is shallower."""
    return _path_rest(_path_head(head, depth), tail, depth)


class RomfsEntry(NamedTuple):
    """A file or directory as the reader lists it (romfs §4).

    A named tuple, not a dataclass: a crafted image holds millions of entries, and a
    tuple is the cheapest object Python builds. The path is not stored: `parent` links
    to the directory, and `top` to the ancestor where a shown path's head ends.
    """

    raw_name: bytes  # the name's bytes in the image
    type: str  # "file" or "dir"
    record_offset: int  # image offset of the record's kind byte
    size: int  # file: data length; dir: payload bytes after the name, as ilistdir says
    data_offset: int | None = None  # file: image offset of its first data byte
    data_kind: str | None = None  # file: "verbatim" or "pointer"
    parent: RomfsEntry | None = None
    depth: int = 1  # 1 for an entry of the root directory
    top: RomfsEntry | None = None  # the ancestor _PATH_SIDE_LEVELS deep; None above that

    @classmethod
    def child(
        cls,
        parent: RomfsEntry | None,
        raw_name: bytes,
        type: str,
        record_offset: int,
        size: int,
    ) -> RomfsEntry:
        if parent is None:
            return cls(raw_name, type, record_offset, size)
        depth = parent.depth + 1
        top = None if depth <= _PATH_SIDE_LEVELS else parent.top or parent
        return cls(raw_name, type, record_offset, size, None, None, parent, depth, top)

    @property
    def name(self) -> str:
        return show_name(self.raw_name, self.record_offset)

    def lineage(self) -> Iterator[RomfsEntry]:
        """This entry, then each directory above it up to the root."""
        entry: RomfsEntry | None = self
        while entry is not None:
            yield entry
            entry = entry.parent

    def _names_up(self, count: int) -> list[str]:
        """The shown names of this entry and the levels above it, `count` at most."""
        return [entry.name for entry in itertools.islice(self.lineage(), count)]

    @property
    def shown_path(self) -> str:
        """The path as printed: exact when short, its middle elided when deep or long."""
        head = (self.top or self)._names_up(_PATH_SIDE_LEVELS)[::-1]
        return elided_path(head, self._names_up(_PATH_SIDE_LEVELS)[::-1], self.depth)

    @property
    def path(self) -> str:
        """The full path ("/lib/mod.py"), names shown; costs the depth for deep ones."""
        return "/" + "/".join(self._names_up(self.depth)[::-1])

    def parts(self) -> list[bytes]:
        """The raw names from the root down to this entry."""
        return [entry.raw_name for entry in self.lineage()][::-1]

    @property
    def alignment(self) -> int | None:
        """The largest power of two that divides the data offset (romfs §8.14)."""
        if self.data_offset is None:
            return None
        if self.data_offset == 0:
            return MAX_SHOWN_ALIGNMENT
        return min(self.data_offset & -self.data_offset, MAX_SHOWN_ALIGNMENT)


def shown_paths(entries: Iterable[RomfsEntry]) -> Iterator[str]:
    """Each entry's shown_path, for a listing of many: entries in image order (each
    directory just before its subtree, as parse_romfs lists them) reuse the names of
    the levels above, so each costs its own name, whatever the depth."""
    names: list[str] = []  # the shown names of the last entry's levels, root first
    chain: list[RomfsEntry] = []  # the entries of those levels
    top: RomfsEntry | None = None  # deep entries share their head with their `top`:
    head = (0, "")  # the head of the last deep entry's top
    for entry in entries:
        depth = entry.depth
        if depth > len(chain) + 1 or (depth > 1 and chain[depth - 2] is not entry.parent):
            yield entry.shown_path  # not in image order: the entry alone says its path
            continue
        del names[depth - 1 :], chain[depth - 1 :]
        names.append(show_name(entry.raw_name, entry.record_offset))
        chain.append(entry)
        if depth <= _PATH_SIDE_LEVELS:
            path = "/" + "/".join(names)
            # Short enough, it is what elided_path gives: nothing to elide.
            yield path if len(path) <= _PATH_SIDE_CHARS + 1 else elided_path(names, names, depth)
            continue
        if entry.top is not top:  # the first entry under a new top: its head, once
            top, head = entry.top, _path_head(names[:_PATH_SIDE_LEVELS], depth)
        yield _path_rest(head, names[-_PATH_SIDE_LEVELS:], depth)


@dataclass(frozen=True)
class RomfsHeader:
    """The FILESYSTEM record (romfs §3)."""

    length: int  # payload length
    length_pads: int  # 0x80 pads before the length vint
    payload_start: int  # image offset of the root directory's first child

    @property
    def total_size(self) -> int:
        return self.payload_start + self.length


@dataclass(frozen=True)
class RomfsImage:
    image_size: int
    header: RomfsHeader | None  # None: the reader would refuse to mount (ENODEV)
    entries: tuple[RomfsEntry, ...]  # in image order, each directory before its children
    findings: tuple[Finding, ...]
    builder: str  # "mpremote-style", "openmv-style" or "other" (romfs §11)

    @property
    def ok(self) -> bool:
        return not errors_in(self.findings)

    @property
    def files(self) -> list[RomfsEntry]:
        return [e for e in self.entries if e.type == "file"]

    @property
    def slack(self) -> int:
        return self.image_size - self.header.total_size if self.header else 0


class _Frame:
    """A directory being walked: where its next child is, where it ends, which names it
    has had. The set is made only at the second child: a chain of a million nested
    directories has a million frames alive at once."""

    __slots__ = ("end", "entry", "first", "pos", "seen")

    def __init__(self, pos: int, end: int, entry: RomfsEntry | None) -> None:
        self.pos, self.end, self.entry = pos, end, entry
        self.first: bytes | None = None
        self.seen: set[bytes] | None = None

    def has(self, name: bytes) -> bool:
        return name in self.seen if self.seen is not None else name == self.first

    def remember(self, name: bytes) -> None:
        if self.seen is not None:
            self.seen.add(name)
        elif self.first is None:
            self.first = name
        else:
            self.seen = {self.first, name}


@dataclass
class _Walk:
    buf: bytes
    header: RomfsHeader
    log: FindingLog
    entries: list[RomfsEntry] = field(default_factory=list)
    # DATA_VERBATIM and PADDING payloads, in image order (the walk goes forward), as two
    # flat arrays: where DATA_POINTER targets may legitimately point.
    blob_starts: array[int] = field(default_factory=lambda: array("q"))
    blob_ends: array[int] = field(default_factory=lambda: array("q"))
    # Runs of short records holding such payloads (see _short_run), in image order.
    run_starts: array[int] = field(default_factory=lambda: array("q"))
    run_ends: array[int] = field(default_factory=lambda: array("q"))
    padded_records: int = 0
    record_header_sizes: set[int] = field(default_factory=set)
    records: int = 0  # read one by one, against MAX_RECORDS
    stopped_at: int | None = None  # where the walk gave up at MAX_RECORDS

    def stop(self, pos: int, parent: RomfsEntry | None) -> None:
        """Give up at the record at `pos`, one too many (the finding is made once)."""
        if self.stopped_at is None:
            self.stopped_at = pos
            self.add(
                "ROMFS_TOO_MANY_RECORDS",
                Severity.ERROR,
                f"more than {MAX_RECORDS} records: ae3tools stops reading here, and lists or "
                "checks nothing after this point (its bound on crafted images)",
                parent,
                pos,
            )

    def add(
        self, code: str, severity: Severity, message: str, where: RomfsEntry | None, offset: int
    ) -> None:
        self.log.report(code, severity, message, lambda: _where(where, offset))

    def add_blob(self, start: int, end: int) -> None:
        if end > start:
            self.blob_starts.append(start)
            self.blob_ends.append(end)

    def add_short_run(self, start: int, end: int) -> None:
        self.run_starts.append(start)
        self.run_ends.append(end)


def is_romfs(data: bytes | memoryview) -> bool:
    """Whether the data starts like a ROMFS image (the reader's first check)."""
    return bytes(data[: len(MAGIC)]) == MAGIC


def romfs_extent(head: bytes | memoryview) -> int | None:
    """How many bytes the image says it spans (romfs §3: header plus FILESYSTEM payload),
    from its first bytes alone; None when they do not say (no ROMFS magic, or a length
    that runs past `head`). For reading just the image off a partition, without the
    erased space after it."""
    buf = bytes(head)
    if not is_romfs(buf):
        return None
    try:
        length, payload_start, _ = read_vint(buf, len(MAGIC), len(buf))
    except _Overrun:
        return None
    return payload_start + length if length < VINT_LIMIT else None


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

    walk = _Walk(buf, header, FindingLog(kept=findings))
    with collector_paused():
        _walk_records(walk)
    _check_pointers(walk)
    _check_alignment(walk, alignment)
    _check_conventions(walk, partition)
    return RomfsImage(len(buf), header, tuple(walk.entries), tuple(walk.log.result()), _guess(walk))


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
    except _Overrun:
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


def _where(entry: RomfsEntry | None, offset: int) -> str:
    return f"{entry.shown_path if entry else '/'} @ 0x{offset:x}"


def _read_record(
    walk: _Walk, pos: int, end: int, parent: RomfsEntry | None, context: str
) -> tuple[int, int, int] | None:
    """Read the record header at `pos` inside a region ending at `end`.

    Returns (kind, payload start, payload end), or None after a finding when it does
    not fit its parent (nothing after a broken record can be located) or is one record
    too many.
    """
    walk.records += 1
    if walk.records > MAX_RECORDS:
        walk.stop(pos, parent)
        return None
    buf = walk.buf  # callers read while pos < end
    kind, body, kind_pads = buf[pos], pos + 1, 0
    if kind < 0x80 and body < end and buf[body] < 0x80 and body + 1 + buf[body] <= end:
        # One-byte kind and length, the usual case.
        if kind in (KIND_FILE, KIND_DIRECTORY):
            walk.record_header_sizes.add(2)
        return kind, body + 1, body + 1 + buf[body]
    try:
        if kind >= 0x80:
            kind, body, kind_pads = read_vint(buf, pos, end)
        length, body, length_pads = read_vint(buf, body, end)
    except _Overrun:
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
    if kind in (KIND_FILE, KIND_DIRECTORY):
        walk.record_header_sizes.add(body - pos)
    return kind, body, body + length


# What a record of each kind means where it stands, when it is not a file or directory
# with a name: (code, severity, message) or None for nothing to report. `None` keys
# stand for every unknown kind.
_Meaning = tuple[str, Severity, str] | None
_KIND_ZERO_DIR = (
    "ROMFS_KIND_ZERO",
    Severity.ERROR,
    "kind-0 record: the reader stops listing here and hides what follows",
)
_KIND_ZERO_FILE = ("ROMFS_KIND_ZERO", Severity.ERROR, "kind-0 record inside a file")
_NESTED = ("ROMFS_NESTED_IN_FILE", Severity.WARNING, "a file or directory inside a file is ignored")
_NO_NAME = ("ROMFS_BAD_NAME", Severity.ERROR, "the name runs past its record")
_BAD_POINTER = ("ROMFS_BAD_POINTER", Severity.ERROR, "DATA_POINTER is not exactly two vints")


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


class _Run(NamedTuple):
    end: int  # the position after the run
    first_data: tuple[int, int] | None  # (size, offset) of its first DATA_VERBATIM
    data_records: int  # DATA_VERBATIM records, and in a file empty DATA_POINTERs


def _short_run(
    walk: _Walk, pos: int, end: int, parent: RomfsEntry | None, in_file: bool
) -> _Run | None:
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
        meaning = _meaning(key, in_file, empty=True)
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
    return _Run(run_end, first_data, data_records)


def short_run_blobs(buf: bytes, start: int, end: int) -> list[tuple[int, int]]:
    """The non-empty PADDING and DATA_VERBATIM payloads of a run, as (start, end)."""
    return [
        (m.start() + 2, m.end())
        for m in _SHORT_RECORD.finditer(buf, start, end)
        if buf[m.start()] in _BLOB_KINDS and m.end() > m.start() + 2
    ]


def _meaning(kind: int, in_file: bool, *, empty: bool) -> _Meaning:
    """What a record that is not a readable FILE or DIRECTORY means where it stands."""
    if kind == KIND_UNUSED:
        return _KIND_ZERO_FILE if in_file else _KIND_ZERO_DIR
    if kind in (KIND_PADDING, KIND_DATA_VERBATIM):
        return None
    if kind == KIND_DATA_POINTER:
        return _BAD_POINTER if in_file and empty else None
    if kind in (KIND_DIRECTORY, KIND_FILE):
        return _NESTED if in_file else _NO_NAME if empty else None
    return _unknown(kind)


# The meanings of the one-byte kinds, looked up rather than built per record.
_IN_DIRECTORY = [_meaning(kind, False, empty=False) for kind in range(0x80)]
_IN_FILE = [_meaning(kind, True, empty=False) for kind in range(0x80)]


def _walk_records(walk: _Walk) -> None:
    """Depth-first over the tree with an explicit stack (images may nest to any depth)."""
    buf = walk.buf
    header = walk.header
    stack = [_Frame(header.payload_start, header.total_size, None)]
    while stack:
        frame = stack[-1]
        pos, end, parent = frame.pos, frame.end, frame.entry
        descend: _Frame | None = None
        while pos < end and descend is None:
            if walk.stopped_at is not None:
                return
            if pos + 1 < end and buf[pos + 1] <= 3:
                run = _short_run(walk, pos, end, parent, in_file=False)
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
                        descend = _Frame(children, record_end, entry)
                else:
                    _read_file(walk, parent, raw, record_start, children, record_end)
            else:
                meaning = _IN_DIRECTORY[kind] if kind < 0x80 else _meaning(kind, False, empty=False)
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
    walk: _Walk, parent: _Frame, offset: int, start: int, end: int
) -> tuple[bytes, int] | None:
    """romfs §8.6 and §8.10: the name at the start of a FILE or DIRECTORY payload."""
    if start < end and walk.buf[start] < 0x80:  # a one-byte vint, the usual case
        name_len, pos = walk.buf[start], start + 1
    else:
        try:
            name_len, pos, _ = read_vint(walk.buf, start, end)
        except _Overrun:
            name_len, pos = VINT_LIMIT, end
    if pos + name_len > end:
        walk.add(*_NO_NAME, parent.entry, offset)
        return None
    raw = walk.buf[pos : pos + name_len]
    duplicate = parent.has(raw)
    if duplicate or not raw or raw.translate(None, _ORDINARY_BYTES) or raw in (b".", b".."):
        _check_name(walk, parent, raw, offset, duplicate)
    parent.remember(raw)
    return raw, pos + name_len


def _check_name(walk: _Walk, parent: _Frame, raw: bytes, offset: int, duplicate: bool) -> None:
    """The findings a name can earn (the common, plain name earns none). Texts are
    built only for the findings kept: a crafted image has millions of odd names."""
    found = []
    if not raw:
        found.append(_NAME_EMPTY)
    elif b"/" in raw or b"\0" in raw or raw in (b".", b".."):
        found.append(_NAME_INVALID)
    elif raw.translate(None, _NOT_CONTROL_BYTES):
        found.append(_NAME_CONTROL)
    elif not raw.isascii():
        found.append(_NAME_NOT_ASCII)
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
_NAME_NOT_ASCII = ("ROMFS_NAME_NOT_ASCII", Severity.WARNING, "name '{}' is not ASCII")
_NAME_DUPLICATE = (
    "ROMFS_NAME_DUPLICATE",
    Severity.ERROR,
    "second entry named '{}' here: opening it returns the first",
)
# Deleting these from a name leaves its control characters (C0 and DEL), if any.
_NOT_CONTROL_BYTES = bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))
# The bytes of a name that earns no finding by its bytes alone: printable ASCII, no '/'.
_ORDINARY_BYTES = bytes(range(0x20, 0x2F)) + bytes(range(0x30, 0x7F))


def _read_file(
    walk: _Walk, parent: RomfsEntry | None, raw: bytes, offset: int, start: int, end: int
) -> None:
    """romfs §5 and §8.7: the first data record among a FILE's children is its content."""
    buf = walk.buf
    entry = RomfsEntry.child(parent, raw, "file", offset, 0)
    content: tuple[int, int, str] | None = None  # (size, data offset, data kind)
    data_records = 0
    pos = start
    while pos < end:
        if pos + 1 < end and buf[pos + 1] <= 3:
            run = _short_run(walk, pos, end, entry, in_file=True)
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
            meaning = _IN_FILE[kind] if kind < 0x80 else _meaning(kind, True, empty=False)
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
    walk: _Walk, entry: RomfsEntry, offset: int, start: int, end: int
) -> tuple[int, int] | None:
    """romfs §5 and §8.8: a DATA_POINTER is exactly two vints, size then offset."""
    buf = walk.buf
    if end == start + 2 and buf[start] < 0x80 and buf[start + 1] < 0x80:  # one-byte vints
        size, relative, pos = buf[start], buf[start + 1], end
    else:
        try:
            size, pos, _ = read_vint(buf, start, end)
            relative, pos, _ = read_vint(buf, pos, end)
        except _Overrun:
            pos = -1
            size = relative = 0
    if pos != end or size >= VINT_LIMIT or relative >= VINT_LIMIT:
        walk.add(*_BAD_POINTER, entry, offset)
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


def _check_pointers(walk: _Walk) -> None:
    """romfs §8.8: a file's content through a pointer should lie inside one data or
    padding payload, not across record headers. The payloads are disjoint and in
    image order, so one binary search per file decides; the pointers landing in runs of
    short records are decided run by run, each run's payloads read once."""
    starts, ends = walk.blob_starts, walk.blob_ends
    run_starts, run_ends = walk.run_starts, walk.run_ends
    outside: list[int] = []  # indices into walk.entries
    in_runs: list[tuple[int, int, int, int]] = []  # (run, target, size, index)
    for index, entry in enumerate(walk.entries):
        if entry.data_kind != "pointer" or not entry.size:
            continue
        assert entry.data_offset is not None
        target, size = entry.data_offset, entry.size
        blob = bisect_right(starts, target) - 1
        if blob >= 0 and target + size <= ends[blob]:
            continue
        if walk.stopped_at is not None and target + size > walk.stopped_at:
            continue  # into what the walk did not reach: not known either way
        run = bisect_right(run_starts, target) - 1
        if run >= 0 and target < run_ends[run]:
            in_runs.append((run, target, size, index))
        else:
            outside.append(index)
    in_runs.sort()
    read = -1
    blob_starts: list[int] = []
    blob_ends: list[int] = []
    for run, target, size, index in in_runs:
        if run != read:
            blobs = short_run_blobs(walk.buf, run_starts[run], run_ends[run])
            blob_starts, blob_ends = [a for a, _ in blobs], [b for _, b in blobs]
            read = run
        blob = bisect_right(blob_starts, target) - 1
        if blob < 0 or target + size > blob_ends[blob]:
            outside.append(index)
    for index in sorted(outside):
        entry = walk.entries[index]
        walk.add(
            "ROMFS_POINTER_OVERLAP",
            Severity.WARNING,
            f"data at 0x{entry.data_offset:x}+{entry.size} overlaps record headers",
            entry,
            entry.record_offset,
        )


def _check_alignment(walk: _Walk, rules: Sequence[AlignmentRule]) -> None:
    for entry in walk.entries:
        if entry.data_offset is None or not entry.size:
            continue
        wanted = alignment_for(escape_name(entry.raw_name), rules)
        if entry.data_offset % wanted:
            walk.add(
                "ROMFS_MISALIGNED",
                Severity.WARNING,
                f"data at 0x{entry.data_offset:x} is not {wanted}-byte aligned",
                entry,
                entry.record_offset,
            )


def _check_conventions(walk: _Walk, partition: Partition | None) -> None:
    """romfs §8.C: conventions that the reader does not need."""
    total = walk.header.total_size
    if total % 2:
        walk.log.add(warning("ROMFS_ODD_SIZE", f"FILESYSTEM record is {total} bytes, not even"))
    slack = len(walk.buf) - total
    if slack:
        where = f" of {partition.size} in {partition.name}" if partition else ""
        walk.log.add(
            info("ROMFS_SLACK", f"{slack} bytes after the FILESYSTEM record{where} are ignored")
        )


def _guess(walk: _Walk) -> str:
    """romfs §9/§11: which builder's layout this looks like."""
    header = walk.header
    if header.payload_start == OPENMV_HEADER_SIZE and walk.record_header_sizes <= {
        OPENMV_RECORD_HEADER_SIZE
    }:
        return "openmv-style"
    if header.length_pads <= 1 and not walk.padded_records:
        return "mpremote-style"
    return "other"


def file_digests(image: bytes | memoryview, entries: Sequence[RomfsEntry]) -> list[str | None]:
    """sha256 of each entry's content (None for directories), in the order given: the
    one pass over file data. Keyed by position, not by path: paths are for people."""
    buf = memoryview(image)
    return [
        hashlib.sha256(buf[e.data_offset : e.data_offset + e.size]).hexdigest()
        if e.type == "file" and e.data_offset is not None
        else None
        for e in entries
    ]


# ---------------------------------------------------------------------------- extract


# Deeper trees are listed and validated, but not written out: no file system takes
# paths that long (Linux: 4096 bytes), and building each path costs its depth.
MAX_EXTRACT_DEPTH = 256


@dataclass(frozen=True)
class Extraction:
    written: tuple[Path, ...]  # files written
    skipped: tuple[Finding, ...]  # every entry not written, and why


def extract(image: bytes, parsed: RomfsImage, dest: Path, *, force: bool = False) -> Extraction:
    """Write the image's files and directories under `dest`, never outside it.

    Names are written byte for byte (no two entries can land on one file by looking
    alike). Nothing is merged or dropped silently: an entry that cannot be written
    (an invalid name, a duplicate the reader cannot reach, a name the file system
    folds onto an earlier one, too deep) is reported in `skipped`. Existing files are
    kept unless `force`.
    """
    if parsed.header is None:
        raise Ae3Error("not a mountable ROMFS image")
    root = dest.resolve()
    root.mkdir(parents=True, exist_ok=True)
    buf = memoryview(image)
    written: list[Path] = []
    written_ids: set[tuple[int, int]] = set()
    done: set[tuple[int, bytes]] = set()  # (id() of the parent, name) of entries seen
    refused: set[int] = set()  # id() of directories not written: their children follow
    log = FindingLog()

    def skip(entry: RomfsEntry, reason: str) -> None:
        if entry.type == "dir":
            refused.add(id(entry))
        log.report(
            "ROMFS_NOT_EXTRACTED",
            Severity.ERROR,
            f"not extracted: {reason}",
            lambda: _where(entry, entry.record_offset),
        )

    # The directories above the current entry, (entry, its target), root first: entries
    # come in image order, so each costs its own name whatever its depth.
    chain: list[tuple[RomfsEntry | None, Path]] = [(None, root)]
    for entry in parsed.entries:
        if entry.parent is not None and id(entry.parent) in refused:
            skip(entry, "inside a directory that was not extracted")
            continue
        if entry.depth > MAX_EXTRACT_DEPTH:
            skip(entry, f"nested {entry.depth} levels deep, more than {MAX_EXTRACT_DEPTH}")
            continue
        raw = entry.raw_name
        if raw in (b"", b".", b"..") or b"/" in raw or b"\0" in raw:
            skip(entry, "its name is empty, '.', '..' or holds '/' or NUL")
            continue
        if (id(entry.parent), raw) in done:
            skip(entry, "a second entry of that name; the reader only ever opens the first")
            continue
        done.add((id(entry.parent), raw))
        del chain[entry.depth :]
        above, folder = chain[-1]
        if above is not entry.parent:  # not in image order: the entry alone says where
            folder = root.joinpath(*(os.fsdecode(p) for p in entry.parts()[:-1]))
        target = folder / os.fsdecode(raw)
        # Messages do not spell the target: the location names the entry, and its path
        # on disk holds every name above it, each up to the image's size.
        try:
            if target.is_symlink():
                skip(entry, "a symbolic link is in its place, and extract does not follow links")
                continue
            if entry.type == "dir":
                target.mkdir(exist_ok=True)
                chain.append((entry, target))
                continue
            if target.exists():
                identity = (target.stat().st_dev, target.stat().st_ino)
                if identity in written_ids:
                    skip(entry, "the file system folds its name onto a file written already")
                    continue
                if not force:
                    raise Ae3Error(f"{target}: already exists (use --force to overwrite)")
            assert entry.data_offset is not None
            target.write_bytes(buf[entry.data_offset : entry.data_offset + entry.size])
        except OSError as exc:
            skip(entry, f"cannot write it: {exc.strerror or exc}")
            continue
        stat_result = target.stat()
        written_ids.add((stat_result.st_dev, stat_result.st_ino))
        written.append(target)
    return Extraction(tuple(written), tuple(log.result()))


# ---------------------------------------------------------------------------- build


def _record_header(kind: int, length: int) -> bytes:
    """Kind byte plus a length vint padded so the header is 8 bytes (romfs §9, OpenMV)."""
    return bytes([kind]) + encode_vint(length, OPENMV_RECORD_HEADER_SIZE - 1)


def _sorted_children(directory: Path) -> list[tuple[bytes, Path, bool]]:
    """(name, path, is_dir) under `directory`, sorted by name as mpremote sorts (romfs §9)."""
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        raise Ae3Error(f"{directory}: cannot list: {exc.strerror or exc}") from None
    children = []
    for name in names:
        path = directory / name
        if not name.isascii() or not name.isprintable():
            raise Ae3Error(f"{path!r}: ROMFS names must be printable ASCII")
        mode = path.lstat().st_mode
        if stat.S_ISDIR(mode):
            children.append((name.encode(), path, True))
        elif stat.S_ISREG(mode) or (stat.S_ISLNK(mode) and path.is_file()):
            children.append((name.encode(), path, False))
        else:
            raise Ae3Error(f"{path}: not a regular file or directory")
    return children


def _layout(
    source: Path, image: bytearray, rules: Sequence[AlignmentRule], limit: int, holder: str
) -> None:
    """Append the records of the tree under `source` to `image`, depth first.

    Iterative (a tree may be deeper than Python's stack): a directory's 8-byte header
    is reserved when it opens and filled in when its last child is written.
    """
    # Each open directory: its remaining children, and where its header was reserved.
    stack: list[tuple[Iterator[tuple[bytes, Path, bool]], int]] = [
        (iter(_sorted_children(source)), -1)
    ]
    records = 0
    while stack:
        children, header_at = stack[-1]
        child = next(children, None)
        if child is None:
            stack.pop()
            if header_at >= 0:
                body_length = len(image) - header_at - OPENMV_RECORD_HEADER_SIZE
                image[header_at : header_at + OPENMV_RECORD_HEADER_SIZE] = _record_header(
                    KIND_DIRECTORY, body_length
                )
            continue
        name, path, is_dir = child
        records += 1 if is_dir else 2  # a directory; a file and its data
        if records >= MAX_RECORDS:  # and the parity pad: what parse_romfs reads
            raise Ae3Error(
                f"{source}: more than {MAX_RECORDS} records at {path}; ae3tools reads no more "
                "than that in one image"
            )
        name_field = encode_vint(len(name)) + name
        record_at = len(image)
        if is_dir:
            image += bytes(OPENMV_RECORD_HEADER_SIZE) + name_field
            stack.append((iter(_sorted_children(path)), record_at))
        else:
            data = path.read_bytes()
            size_vint = encode_vint(len(data))
            body_start = record_at + OPENMV_RECORD_HEADER_SIZE + len(name_field)
            pads = -(body_start + 1 + len(size_vint)) % alignment_for(name.decode(), rules)
            body = bytes([KIND_DATA_VERBATIM]) + bytes([VINT_PAD]) * pads + size_vint
            image += _record_header(KIND_FILE, len(name_field) + len(body) + len(data))
            image += name_field + body + data
        if len(image) > limit:
            raise Ae3Error(
                f"{source}: the image grows past {limit} bytes at {path}, more than {holder} holds"
            )


# romfs §6 even-size rule: a 3-byte PADDING record (kind 1, length 1) flips the parity.
_PARITY_PAD = bytes([KIND_PADDING, 1, 0])


def build_romfs(
    source: Path,
    *,
    alignment: Sequence[AlignmentRule] = OPENMV_ALIGNMENT,
    partition: Partition | None = None,
) -> bytes:
    """Build an image from a directory tree, OpenMV-style (romfs §9), directories kept.

    The root payload starts at 16 and every FILE/DIRECTORY header is 8 bytes, so each
    data record's position is known before it is written and alignment is measured
    from image byte 0. The total is kept even (romfs §6) with a PADDING record.
    """
    require_directory(source)
    limit = partition.size if partition is not None else MAX_ROMFS_SIZE
    holder = f"partition {partition.name}" if partition else "any ROMFS partition"
    image = bytearray(OPENMV_HEADER_SIZE)
    _layout(source, image, alignment, limit, holder)
    if len(image) % 2:
        image += _PARITY_PAD
    payload = len(image) - OPENMV_HEADER_SIZE
    image[:OPENMV_HEADER_SIZE] = MAGIC + encode_vint(payload, OPENMV_HEADER_SIZE - len(MAGIC))
    if len(image) > limit:
        raise Ae3Error(f"{source}: image would be {len(image)} bytes; {holder} holds {limit}")
    return bytes(image)
