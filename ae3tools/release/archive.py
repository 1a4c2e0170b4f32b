"""The one zip reader for untrusted archives: bundles and OpenMV release zips.

Every member is vetted before anything is read: names that could escape a directory or
collide, duplicates, links and other non-regular files, unknown compression, encryption.
Members are read bomb-safe: never more than the caller's limit plus one byte, whatever
the headers claim.
"""

from __future__ import annotations

import stat
import struct
import zipfile
import zlib
from pathlib import Path, PurePosixPath

# What reading a damaged zip can raise, from zipfile and the layers under it.
ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    EOFError,
    OSError,
    ValueError,
    KeyError,
    NotImplementedError,
    RuntimeError,
    struct.error,
    zlib.error,
)


class ArchiveRefused(Exception):
    """The archive cannot be trusted at all (the message says why)."""


# A bundle holds a handful of members and an OpenMV release zip a few hundred (every
# board's files). A crafted 24 MiB zip holds half a million, and zipfile builds an
# object for each before anything can be checked (34 s and 359 MB): the count in the end
# record is read first, and an archive past this is refused unread.
MAX_MEMBERS = 10_000
_END = struct.Struct("<4s4xHH")  # end of central directory: signature, entries, total
_END_SIGNATURE = b"PK\x05\x06"
_ZIP64_LOCATOR = struct.Struct("<4s4xQ4x")  # signature, offset of the zip64 end record
_ZIP64_END = struct.Struct("<4s28xQ")  # signature, total entries (at +32)


def member_count(path: Path) -> int | None:
    """How many members the archive's end record declares; None when it has none (not
    a zip: zipfile says so)."""
    with path.open("rb") as stream:
        size = stream.seek(0, 2)
        tail_start = max(0, size - (65535 + 22))  # the end record and its longest comment
        stream.seek(tail_start)
        tail = stream.read()
        at = tail.rfind(_END_SIGNATURE)
        if at < 0 or at + _END.size > len(tail):
            return None
        _, _, total = _END.unpack_from(tail, at)
        if total != 0xFFFF or at < _ZIP64_LOCATOR.size:
            return int(total)
        signature, offset = _ZIP64_LOCATOR.unpack_from(tail, at - _ZIP64_LOCATOR.size)
        if signature != b"PK\x06\x07":
            return int(total)
        stream.seek(offset)
        record = stream.read(_ZIP64_END.size)
        if len(record) < _ZIP64_END.size or record[:4] != b"PK\x06\x06":
            return None
        return int(_ZIP64_END.unpack(record)[1])


def open_archive(path: Path) -> zipfile.ZipFile:
    """An untrusted zip, opened only once its member count is known to be bounded.
    Raises ArchiveRefused, or what zipfile raises for a file that is not a zip."""
    if not path.is_file():  # a zip is read by seeking; a FIFO would also block the open
        raise ArchiveRefused("not a regular file")
    count = member_count(path)
    if count is not None and count > MAX_MEMBERS:
        raise ArchiveRefused(
            f"{count} members, more than the {MAX_MEMBERS} ae3tools reads in one archive"
        )
    return zipfile.ZipFile(path)


def safe_name(name: str, depth: int = 1) -> bool:
    """A relative name of at most `depth` parts: no '..', no absolute path, no drive or
    backslash, no NUL."""
    posix = PurePosixPath(name)
    return (
        bool(name)
        and "\\" not in name
        and "\0" not in name
        and not posix.is_absolute()
        and ".." not in posix.parts
        and ":" not in name
        and len(posix.parts) <= depth
    )


def safe_members(archive: zipfile.ZipFile, *, depth: int) -> dict[str, zipfile.ZipInfo]:
    """The archive's regular files by name, after vetting every entry.

    `depth`: how many path parts a name may have (1: plain names, as in a bundle; 2: one
    folder, as in a tagged OpenMV release). Directory entries are skipped where folders
    are allowed and refused where they are not. Raises ArchiveRefused.
    """
    found: dict[str, zipfile.ZipInfo] = {}
    seen: set[str] = set()
    for info in archive.infolist():
        name = info.orig_filename  # as stored: zipfile's filename is cut at a NUL
        if not safe_name(name.rstrip("/") if depth > 1 else name, depth):
            raise ArchiveRefused(
                f"unsafe member name {name!r} (paths, '..' and absolute names are refused)"
            )
        if name in seen:
            raise ArchiveRefused(f"member {name!r} appears twice")
        seen.add(name)
        if info.is_dir() and depth > 1:
            continue
        # Unix file type from the mode bits; zero where the writer recorded none.
        file_type = stat.S_IFMT(info.external_attr >> 16)
        if info.is_dir() or file_type not in (0, stat.S_IFREG):
            raise ArchiveRefused(f"member {name!r} is not a regular file")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ArchiveRefused(
                f"member {name!r} uses unsupported compression {info.compress_type}"
            )
        if info.flag_bits & 0x1:
            raise ArchiveRefused(f"member {name!r} is encrypted")
        found[name] = info
    return found


def read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """Read at most limit + 1 bytes, whatever the headers claim (zip bombs)."""
    if info.file_size > limit:
        raise ArchiveRefused(
            f"member {info.filename} declares {info.file_size} bytes, more than {limit}"
        )
    with archive.open(info) as stream:
        data = stream.read(limit + 1)
    if len(data) > limit:
        raise ArchiveRefused(f"member {info.filename} holds more than {limit} bytes")
    return data
