"""The checks made once the walk is over: pointers, alignment, conventions (romfs §8)."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

from ae3tools.board import Partition
from ae3tools.findings import Severity, info
from ae3tools.formats.ota_layout import image_ota_layout
from ae3tools.formats.romfs.alignment import AlignmentRule, alignment_for
from ae3tools.formats.romfs.records import OPENMV_HEADER_SIZE, OPENMV_RECORD_HEADER_SIZE
from ae3tools.formats.romfs.runs import short_run_blobs
from ae3tools.formats.romfs.walk import Walk


def check_pointers(walk: Walk) -> None:
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


def check_alignment(walk: Walk, rules: Sequence[AlignmentRule]) -> None:
    for entry in walk.entries:
        if entry.data_offset is None or not entry.size:
            continue
        wanted = alignment_for(entry.raw_name.decode("utf-8", "replace"), rules)
        if entry.data_offset % wanted:
            walk.add(
                "ROMFS_MISALIGNED",
                Severity.WARNING,
                f"data at 0x{entry.data_offset:x} is not {wanted}-byte aligned",
                entry,
                entry.record_offset,
            )


def check_conventions(walk: Walk, partition: Partition | None) -> None:
    """romfs §8.C: conventions that the reader does not need."""
    total = walk.header.total_size
    if total % 2:
        # romfs §6: upstream's convention; OpenMV's builders never pad, so a note.
        walk.log.add(info("ROMFS_ODD_SIZE", f"FILESYSTEM record is {total} bytes, not even"))
    slack = len(walk.buf) - total
    layout = image_ota_layout(walk.buf, partition.size if partition else len(walk.buf))
    if slack and layout is not None:  # the slack is slot B and the trailers: not ignored
        walk.ota_layout = layout
        walk.log.add(info("ROMFS_OTA_LAYOUT", f"{layout.describe()}; listed: slot A's ROMFS"))
    elif slack:
        where = f" of {partition.size} in {partition.name}" if partition else ""
        walk.log.add(
            info("ROMFS_SLACK", f"{slack} bytes after the FILESYSTEM record{where} are ignored")
        )


def guess_builder(walk: Walk) -> str:
    """romfs §9/§11: which builder's layout this looks like."""
    header = walk.header
    if header.payload_start == OPENMV_HEADER_SIZE and walk.file_header_sizes <= {
        OPENMV_RECORD_HEADER_SIZE
    }:
        return "openmv-style"
    if header.length_pads <= 1 and not walk.padded_records:
        return "mpremote-style"
    return "other"
