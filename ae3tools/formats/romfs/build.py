"""Build a ROMFS image from a directory tree, laid out as OpenMV's builder does (romfs §9)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

from ae3tools.board import Partition
from ae3tools.fileio import require_directory
from ae3tools.findings import Ae3Error
from ae3tools.formats.romfs import records
from ae3tools.formats.romfs.alignment import OPENMV_ALIGNMENT, AlignmentRule, alignment_for
from ae3tools.formats.romfs.records import (
    KIND_DATA_VERBATIM,
    KIND_DIRECTORY,
    KIND_FILE,
    KIND_PADDING,
    MAGIC,
    MAX_ROMFS_SIZE,
    OPENMV_HEADER_SIZE,
    OPENMV_RECORD_HEADER_SIZE,
    VINT_PAD,
    encode_vint,
)


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
    count = 0
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
        count += 1 if is_dir else 2  # a directory; a file and its data
        if count >= records.MAX_RECORDS:  # and the parity pad: what parse_romfs reads
            raise Ae3Error(
                f"{source}: more than {records.MAX_RECORDS} records at {path}; ae3tools reads "
                "no more than that in one image"
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
