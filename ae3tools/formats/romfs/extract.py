"""Write a ROMFS image's files out to a directory, never outside it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ae3tools.findings import Ae3Error, Finding, FindingLog, Severity
from ae3tools.formats.romfs.model import RomfsEntry, RomfsImage
from ae3tools.formats.romfs.walk import location

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
            lambda: location(entry, entry.record_offset),
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
