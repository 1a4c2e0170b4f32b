"""A parsed ROMFS image as data: its header, its entries, and what was found."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from ae3tools.findings import Finding, errors_in
from ae3tools.formats.ota_layout import OtaLayout
from ae3tools.formats.romfs.alignment import MAX_SHOWN_ALIGNMENT
from ae3tools.formats.romfs.names import (
    PATH_SIDE_CHARS,
    PATH_SIDE_LEVELS,
    elided_path,
    path_head,
    path_rest,
    show_name,
)


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
    top: RomfsEntry | None = None  # the ancestor PATH_SIDE_LEVELS deep; None above that

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
        top = None if depth <= PATH_SIDE_LEVELS else parent.top or parent
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
        head = (self.top or self)._names_up(PATH_SIDE_LEVELS)[::-1]
        return elided_path(head, self._names_up(PATH_SIDE_LEVELS)[::-1], self.depth)

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
        if depth <= PATH_SIDE_LEVELS:
            path = "/" + "/".join(names)
            # Short enough, it is what elided_path gives: nothing to elide.
            yield path if len(path) <= PATH_SIDE_CHARS + 1 else elided_path(names, names, depth)
            continue
        if entry.top is not top:  # the first entry under a new top: its head, once
            top, head = entry.top, path_head(names[:PATH_SIDE_LEVELS], depth)
        yield path_rest(head, names[-PATH_SIDE_LEVELS:], depth)


# A path is given exactly (`exact_paths`) up to this many characters, far past any a
# camera's script would use. Past it the path is not spelled out: its text would grow
# with the depth of every entry below, and a crafted image nests 100,000 levels.
EXACT_PATH_LIMIT = 1024


def text_name(raw: bytes) -> str:
    """A name as MicroPython's os.listdir gives it: its UTF-8 text (U+FFFD for bytes that
    are not UTF-8, where MicroPython raises UnicodeError)."""
    return raw.decode("utf-8", "replace")


def exact_paths(entries: Iterable[RomfsEntry]) -> Iterator[str | None]:
    """Each entry's path as text, exactly ("/lib/caf\u00e9.py"), or None past
    EXACT_PATH_LIMIT characters; in image order each costs its own name, as in
    shown_paths."""
    names: list[str] = []  # the names of the last entry's levels, root first
    lengths: list[int] = []  # the length of the path to each of those levels
    chain: list[RomfsEntry] = []  # the entries of those levels
    for entry in entries:
        depth = entry.depth
        if depth > len(chain) + 1 or (depth > 1 and chain[depth - 2] is not entry.parent):
            path = "/" + "/".join(map(text_name, entry.parts()))  # not in image order
            yield path if len(path) <= EXACT_PATH_LIMIT else None
            continue
        del names[depth - 1 :], lengths[depth - 1 :], chain[depth - 1 :]
        names.append(text_name(entry.raw_name))
        lengths.append((lengths[-1] if lengths else 0) + 1 + len(names[-1]))
        chain.append(entry)
        yield "/" + "/".join(names) if lengths[-1] <= EXACT_PATH_LIMIT else None


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
    ota_layout: OtaLayout | None = None  # openmv-ota's slots, when the image is laid out so

    @property
    def ok(self) -> bool:
        return not errors_in(self.findings)

    @property
    def files(self) -> list[RomfsEntry]:
        return [e for e in self.entries if e.type == "file"]

    @property
    def slack(self) -> int:
        return self.image_size - self.header.total_size if self.header else 0


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
