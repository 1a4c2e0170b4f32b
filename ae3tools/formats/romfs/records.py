"""The ROMFS record layer (romfs-format.md, "romfs §N" below): kinds, vints, the magic,
and the bounds every reader and builder here keeps."""

from __future__ import annotations

import re

from ae3tools.board import PARTITIONS, ROMFS_ROLES

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


class Overrun(Exception):
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
            raise Overrun
        pos = match.start()
    pads = pos - start
    value = 0
    while True:
        if pos >= end:
            raise Overrun
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
    except Overrun:
        return None
    return payload_start + length if length < VINT_LIMIT else None
