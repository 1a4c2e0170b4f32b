"""MicroPython ROMFS images: parse and validate, extract, build.

Everything here follows romfs-format.md ("romfs §N" below). The parser walks record
headers and names only; file content is never read, so listing a 24 MiB image costs
what its directory structure costs. Hashing (`file_digests`) is the one full pass.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ae3tools.board import Partition
from ae3tools.findings import Ae3Error, Finding, error, errors_in, info, warning

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


@dataclass(frozen=True)
class RomfsEntry:
    """A file or directory as the reader lists it (romfs §4)."""

    path: str  # absolute, "/" separated: "/lib/mod.py"
    type: str  # "file" or "dir"
    record_offset: int  # image offset of the record's kind byte
    size: int  # file: data length; dir: payload bytes after the name, as ilistdir says
    data_offset: int | None = None  # file: image offset of its first data byte
    data_kind: str | None = None  # file: "verbatim" or "pointer"

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def alignment(self) -> int | None:
        """The largest power of two that divides the data offset (romfs §8.14)."""
        if self.data_offset is None:
            return None
        if self.data_offset == 0:
            return 1 << 16
        return min(self.data_offset & -self.data_offset, 1 << 16)


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
    entries: tuple[RomfsEntry, ...]
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


@dataclass
class _Frame:
    pos: int
    end: int
    path: str
    seen: set[bytes] = field(default_factory=set)


@dataclass
class _Walk:
    buf: memoryview
    header: RomfsHeader
    findings: list[Finding] = field(default_factory=list)
    entries: list[RomfsEntry] = field(default_factory=list)
    # DATA_VERBATIM and PADDING payloads: where DATA_POINTER targets may legitimately point.
    blobs: list[tuple[int, int]] = field(default_factory=list)
    pointers: list[tuple[str, int, int, int]] = field(default_factory=list)
    padded_records: int = 0
    record_header_sizes: set[int] = field(default_factory=set)
    has_directories: bool = False


def is_romfs(data: bytes | memoryview) -> bool:
    """Whether the data starts like a ROMFS image (the reader's first check)."""
    return bytes(data[: len(MAGIC)]) == MAGIC


def parse_romfs(
    image: bytes | memoryview,
    *,
    partition: Partition | None = None,
    alignment: Sequence[AlignmentRule] = REQUIRED_ALIGNMENT,
) -> RomfsImage:
    """Parse and validate a ROMFS image against every invariant of romfs §8.

    Never raises for bad content: problems come back as findings. `partition`, when
    given, adds the fit check; `alignment` says which file data must be aligned.
    """
    buf = memoryview(image).cast("B") if not isinstance(image, memoryview) else image
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

    walk = _Walk(buf, header, findings)
    _walk_records(walk)
    _check_pointers(walk)
    _check_alignment(walk, alignment)
    _check_conventions(walk, partition)
    return RomfsImage(len(buf), header, tuple(walk.entries), tuple(walk.findings), _guess(walk))


def _parse_header(buf: memoryview) -> tuple[RomfsHeader | None, list[Finding]]:
    """romfs §8.A: the mount-level checks; any failure means 'not a ROMFS'."""
    size = len(buf)
    if size < MIN_IMAGE_SIZE:
        return None, [error("ROMFS_TOO_SHORT", f"{size} bytes; a ROMFS image has at least 4")]
    head = bytes(buf[:3])
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
    if payload_start + length > size:
        return None, [
            error(
                "ROMFS_TRUNCATED",
                f"the FILESYSTEM record needs {payload_start + length} bytes; the image has {size}",
                "offset 3",
            )
        ]
    return RomfsHeader(length, pads, payload_start), []


def _where(path: str, offset: int) -> str:
    return f"{path or '/'} @ 0x{offset:x}"


def _read_record(walk: _Walk, frame: _Frame, context: str) -> tuple[int, int, int, int] | None:
    """Read the record at frame.pos and step the frame past it.

    Returns (kind, record offset, payload start, payload end), or None (after adding
    a finding and abandoning the rest of the region) when it does not fit its parent.
    """
    offset = frame.pos

    def abandon(code: str, message: str) -> None:
        walk.findings.append(error(code, message, _where(frame.path, offset)))
        frame.pos = frame.end  # nothing after a broken record can be located

    try:
        kind, pos, kind_pads = read_vint(walk.buf, offset, frame.end)
        length, pos, length_pads = read_vint(walk.buf, pos, frame.end)
    except _Overrun:
        abandon(
            "ROMFS_RECORD_OVERRUN",
            f"record header runs past the end of its {context} at 0x{frame.end:x}",
        )
        return None
    if kind >= VINT_LIMIT or length >= VINT_LIMIT:
        abandon("ROMFS_VINT_TOO_LARGE", "a vint does not fit 32 bits")
        return None
    if pos + length > frame.end:
        abandon(
            "ROMFS_RECORD_OVERRUN",
            f"record of {length} bytes runs past the end of its {context} at 0x{frame.end:x}",
        )
        return None
    if kind_pads or length_pads:
        walk.padded_records += 1
    if kind in (KIND_FILE, KIND_DIRECTORY):
        walk.record_header_sizes.add(pos - offset)
    frame.pos = pos + length
    return kind, offset, pos, pos + length


def _walk_records(walk: _Walk) -> None:
    """Depth-first over the tree with an explicit stack (images may nest deeply)."""
    header = walk.header
    stack = [_Frame(header.payload_start, header.total_size, "")]
    while stack:
        frame = stack[-1]
        if frame.pos >= frame.end:
            stack.pop()
            continue
        record = _read_record(walk, frame, "directory")
        if record is None:
            continue
        kind, offset, start, end = record
        where = _where(frame.path, offset)
        if kind == KIND_UNUSED:
            walk.findings.append(
                error(
                    "ROMFS_KIND_ZERO",
                    "kind-0 record: the reader stops listing here and hides what follows",
                    where,
                )
            )
        elif kind in (KIND_PADDING, KIND_DATA_VERBATIM):
            walk.blobs.append((start, end))
        elif kind in (KIND_DIRECTORY, KIND_FILE):
            named = _read_name(walk, frame, offset, start, end)
            if named is None:
                continue
            path, children_start = named
            if kind == KIND_DIRECTORY:
                walk.has_directories = True
                walk.entries.append(RomfsEntry(path, "dir", offset, end - children_start))
                stack.append(_Frame(children_start, end, path))
            else:
                _read_file(walk, path, offset, children_start, end)
        elif kind != KIND_DATA_POINTER:
            walk.findings.append(
                info("ROMFS_UNKNOWN_KIND", f"record of unknown kind {kind} skipped", where)
            )


def _read_name(
    walk: _Walk, parent: _Frame, offset: int, start: int, end: int
) -> tuple[str, int] | None:
    """romfs §8.6 and §8.10: the name at the start of a FILE or DIRECTORY payload."""
    where = _where(parent.path, offset)
    try:
        name_len, pos, _ = read_vint(walk.buf, start, end)
    except _Overrun:
        name_len, pos = VINT_LIMIT, end
    if pos + name_len > end:
        walk.findings.append(error("ROMFS_BAD_NAME", "the name runs past its record", where))
        return None
    raw = bytes(walk.buf[pos : pos + name_len])
    shown = raw.decode("utf-8", "backslashreplace")
    path = f"{parent.path}/{shown}"
    here = _where(path, offset)
    if not raw:
        walk.findings.append(error("ROMFS_NAME_EMPTY", "empty name: no path can reach it", here))
    elif b"/" in raw or b"\0" in raw or raw in (b".", b".."):
        walk.findings.append(
            error("ROMFS_NAME_INVALID", f"name {shown!r} is '.', '..' or holds '/' or NUL", here)
        )
    elif not raw.isascii():
        walk.findings.append(warning("ROMFS_NAME_NOT_ASCII", f"name {shown!r} is not ASCII", here))
    if raw in parent.seen:
        walk.findings.append(
            error(
                "ROMFS_NAME_DUPLICATE",
                f"second entry named {shown!r} here: opening it returns the first",
                here,
            )
        )
    parent.seen.add(raw)
    return path, pos + name_len


def _read_file(walk: _Walk, path: str, offset: int, start: int, end: int) -> None:
    """romfs §5 and §8.7: the first data record among a FILE's children is its content."""
    frame = _Frame(start, end, path)
    data: RomfsEntry | None = None
    data_records = 0
    while frame.pos < frame.end:
        record = _read_record(walk, frame, "file")
        if record is None:
            break
        kind, child_offset, child_start, child_end = record
        where = _where(path, child_offset)
        if kind == KIND_UNUSED:
            walk.findings.append(error("ROMFS_KIND_ZERO", "kind-0 record inside a file", where))
        elif kind == KIND_DATA_VERBATIM:
            data_records += 1
            walk.blobs.append((child_start, child_end))
            if data is None:
                data = RomfsEntry(
                    path, "file", offset, child_end - child_start, child_start, "verbatim"
                )
        elif kind == KIND_DATA_POINTER:
            data_records += 1
            pointer = _read_pointer(walk, path, child_offset, child_start, child_end)
            if data is None and pointer is not None:
                size, target = pointer
                data = RomfsEntry(path, "file", offset, size, target, "pointer")
        elif kind in (KIND_FILE, KIND_DIRECTORY):
            walk.findings.append(
                warning(
                    "ROMFS_NESTED_IN_FILE", "a file or directory inside a file is ignored", where
                )
            )
        elif kind not in (KIND_PADDING,):
            walk.findings.append(
                info("ROMFS_UNKNOWN_KIND", f"record of unknown kind {kind} skipped", where)
            )
    if data is None:
        walk.findings.append(
            error(
                "ROMFS_FILE_NO_DATA",
                "file has no data record: it cannot be opened and hides later siblings",
                _where(path, offset),
            )
        )
        return
    if data_records > 1:
        walk.findings.append(
            warning(
                "ROMFS_FILE_MULTIPLE_DATA",
                f"{data_records} data records; only the first is used",
                _where(path, offset),
            )
        )
    walk.entries.append(data)


def _read_pointer(
    walk: _Walk, path: str, offset: int, start: int, end: int
) -> tuple[int, int] | None:
    """romfs §5 and §8.8: a DATA_POINTER is exactly two vints, size then offset."""
    where = _where(path, offset)
    try:
        size, pos, _ = read_vint(walk.buf, start, end)
        relative, pos, _ = read_vint(walk.buf, pos, end)
    except _Overrun:
        pos = -1
        size = relative = 0
    if pos != end or size >= VINT_LIMIT or relative >= VINT_LIMIT:
        walk.findings.append(
            error("ROMFS_BAD_POINTER", "DATA_POINTER is not exactly two vints", where)
        )
        return None
    header = walk.header
    target = header.payload_start + relative
    if target + size > header.total_size:
        walk.findings.append(
            error(
                "ROMFS_POINTER_OUT_OF_BOUNDS",
                f"points at 0x{target:x}+{size}, outside the filesystem payload "
                f"(ends at 0x{header.total_size:x})",
                where,
            )
        )
        return None
    walk.pointers.append((path, offset, target, size))
    return size, target


def _check_pointers(walk: _Walk) -> None:
    """romfs §8.8: pointer targets should lie in data or padding, not across headers."""
    if not walk.pointers:
        return
    blobs = sorted(walk.blobs)
    for path, offset, target, size in walk.pointers:
        inside = any(start <= target and target + size <= end for start, end in blobs)
        if not inside and size:
            walk.findings.append(
                warning(
                    "ROMFS_POINTER_OVERLAP",
                    f"data at 0x{target:x}+{size} overlaps record headers",
                    _where(path, offset),
                )
            )


def _check_alignment(walk: _Walk, rules: Sequence[AlignmentRule]) -> None:
    for entry in walk.entries:
        if entry.data_offset is None or not entry.size:
            continue
        wanted = alignment_for(entry.name, rules)
        if entry.data_offset % wanted:
            walk.findings.append(
                warning(
                    "ROMFS_MISALIGNED",
                    f"data at 0x{entry.data_offset:x} is not {wanted}-byte aligned",
                    entry.path,
                )
            )


def _check_conventions(walk: _Walk, partition: Partition | None) -> None:
    """romfs §8.C: conventions that the reader does not need."""
    total = walk.header.total_size
    if total % 2:
        walk.findings.append(
            warning("ROMFS_ODD_SIZE", f"FILESYSTEM record is {total} bytes, not even")
        )
    slack = len(walk.buf) - total
    if slack:
        where = f" of {partition.size} in {partition.name}" if partition else ""
        walk.findings.append(
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


def file_digests(image: bytes | memoryview, entries: Sequence[RomfsEntry]) -> dict[str, str]:
    """sha256 of each file's content: the one pass over file data."""
    buf = memoryview(image)
    digests = {}
    for entry in entries:
        if entry.type == "file" and entry.data_offset is not None:
            digests[entry.path] = hashlib.sha256(
                buf[entry.data_offset : entry.data_offset + entry.size]
            ).hexdigest()
    return digests


# ---------------------------------------------------------------------------- extract


def extract(image: bytes, parsed: RomfsImage, dest: Path, *, force: bool = False) -> list[Path]:
    """Write the image's files and directories under `dest`, never outside it.

    Names the validator rejected (empty, '.', '..', '/', NUL) and unreachable
    duplicates are skipped. Existing files are kept unless `force`.
    """
    if parsed.header is None:
        raise Ae3Error("not a mountable ROMFS image")
    root = dest.resolve()
    buf = memoryview(image)
    written: list[Path] = []
    done: set[str] = set()
    for entry in parsed.entries:
        parts = entry.path.split("/")[1:]
        if entry.path in done or any(p in ("", ".", "..") or "\0" in p for p in parts):
            continue
        done.add(entry.path)
        target = root.joinpath(*parts)
        if root not in target.resolve().parents:
            continue
        if entry.type == "dir":
            target.mkdir(parents=True, exist_ok=True)
            continue
        if target.exists() and not force:
            raise Ae3Error(f"{target}: already exists (use --force to overwrite)")
        target.parent.mkdir(parents=True, exist_ok=True)
        assert entry.data_offset is not None
        target.write_bytes(buf[entry.data_offset : entry.data_offset + entry.size])
        written.append(target)
    return written


# ---------------------------------------------------------------------------- build


@dataclass(frozen=True)
class _SourceFile:
    name: bytes
    path: Path


@dataclass(frozen=True)
class _SourceDir:
    name: bytes
    children: tuple[_SourceFile | _SourceDir, ...]


def _scan(directory: Path) -> tuple[_SourceFile | _SourceDir, ...]:
    """The tree under `directory`, sorted by name as mpremote sorts it (romfs §9)."""
    children: list[_SourceFile | _SourceDir] = []
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        raise Ae3Error(f"{directory}: cannot list: {exc.strerror or exc}") from None
    for name in names:
        path = directory / name
        if not name.isascii():
            raise Ae3Error(f"{path}: ROMFS names must be ASCII")
        mode = path.lstat().st_mode
        if stat.S_ISDIR(mode):
            children.append(_SourceDir(name.encode(), _scan(path)))
        elif stat.S_ISREG(mode) or (stat.S_ISLNK(mode) and path.is_file()):
            children.append(_SourceFile(name.encode(), path))
        else:
            raise Ae3Error(f"{path}: not a regular file or directory")
    return tuple(children)


def _record_header(kind: int, length: int) -> bytes:
    """Kind byte plus a length vint padded so the header is 8 bytes (romfs §9, OpenMV)."""
    return bytes([kind]) + encode_vint(length, OPENMV_RECORD_HEADER_SIZE - 1)


def _layout(
    nodes: Sequence[_SourceFile | _SourceDir], pos: int, rules: Sequence[AlignmentRule]
) -> Iterator[bytes]:
    """Yield the records for `nodes`, the first starting at image offset `pos`."""
    for node in nodes:
        name_field = encode_vint(len(node.name)) + node.name
        body_start = pos + OPENMV_RECORD_HEADER_SIZE + len(name_field)
        if isinstance(node, _SourceDir):
            body = b"".join(_layout(node.children, body_start, rules))
            kind = KIND_DIRECTORY
        else:
            data = node.path.read_bytes()
            length = encode_vint(len(data))
            wanted = alignment_for(node.name.decode(), rules)
            pads = -(body_start + 1 + len(length)) % wanted
            body = bytes([KIND_DATA_VERBATIM]) + bytes([VINT_PAD]) * pads + length + data
            kind = KIND_FILE
        record = _record_header(kind, len(name_field) + len(body)) + name_field + body
        pos += len(record)
        yield record


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
    if not source.is_dir():
        raise Ae3Error(f"{source}: not a directory")
    payload = b"".join(_layout(_scan(source), OPENMV_HEADER_SIZE, alignment))
    if (OPENMV_HEADER_SIZE + len(payload)) % 2:
        payload += _PARITY_PAD
    image = MAGIC + encode_vint(len(payload), OPENMV_HEADER_SIZE - len(MAGIC)) + payload
    if partition is not None and len(image) > partition.size:
        raise Ae3Error(
            f"{source}: image would be {len(image)} bytes; "
            f"partition {partition.name} holds {partition.size}"
        )
    return image
