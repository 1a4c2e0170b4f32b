"""The state of one walk over an image's records, shared by the reader and its checks."""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field

from ae3tools.findings import FindingLog, Severity
from ae3tools.formats.ota_layout import OtaLayout
from ae3tools.formats.romfs import records
from ae3tools.formats.romfs.model import RomfsEntry, RomfsHeader


class Frame:
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
class Walk:
    buf: bytes
    header: RomfsHeader
    log: FindingLog
    entries: list[RomfsEntry] = field(default_factory=list)
    # DATA_VERBATIM and PADDING payloads, in image order (the walk goes forward), as two
    # flat arrays: where DATA_POINTER targets may legitimately point.
    blob_starts: array[int] = field(default_factory=lambda: array("q"))
    blob_ends: array[int] = field(default_factory=lambda: array("q"))
    # Runs of short records holding such payloads (see short_run), in image order.
    run_starts: array[int] = field(default_factory=lambda: array("q"))
    run_ends: array[int] = field(default_factory=lambda: array("q"))
    padded_records: int = 0
    file_header_sizes: set[int] = field(default_factory=set)  # romfs §9: OpenMV's are 8
    records: int = 0  # read one by one, against MAX_RECORDS
    ota_layout: OtaLayout | None = None  # found in the slack by check_conventions
    stopped_at: int | None = None  # where the walk gave up at MAX_RECORDS

    def stop(self, pos: int, parent: RomfsEntry | None) -> None:
        """Give up at the record at `pos`, one too many (the finding is made once)."""
        if self.stopped_at is None:
            self.stopped_at = pos
            self.add(
                "ROMFS_TOO_MANY_RECORDS",
                Severity.ERROR,
                f"more than {records.MAX_RECORDS} records: ae3tools stops reading here, and "
                "lists or checks nothing after this point (its bound on crafted images)",
                parent,
                pos,
            )

    def add(
        self, code: str, severity: Severity, message: str, where: RomfsEntry | None, offset: int
    ) -> None:
        self.log.report(code, severity, message, lambda: location(where, offset))

    def add_blob(self, start: int, end: int) -> None:
        if end > start:
            self.blob_starts.append(start)
            self.blob_ends.append(end)

    def add_short_run(self, start: int, end: int) -> None:
        self.run_starts.append(start)
        self.run_ends.append(end)


def location(entry: RomfsEntry | None, offset: int) -> str:
    return f"{entry.shown_path if entry else '/'} @ 0x{offset:x}"
