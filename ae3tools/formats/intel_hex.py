"""Intel HEX inputs, turned into the bytes of one partition from its base.

A streaming reader rather than the intelhex package: intelhex keeps a dict entry per
byte, which for a ROMFS0-sized file (24 MiB, 66 MB of text) costs tens of seconds and
gigabytes. Records are checked (syntax, length, checksum) and gathered into
contiguous runs, so time and memory are linear in the file with small constants.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass
from itertools import pairwise

from ae3tools.board import Partition, partition_mapping
from ae3tools.findings import Ae3Error

# objcopy -O binary fills gaps with zeros; matching it makes a .hex and its .bin agree.
GAP_FILL = 0x00

# Record types (Intel HEX-86 specification).
DATA, END_OF_FILE, EXTENDED_SEGMENT, START_SEGMENT, EXTENDED_LINEAR, START_LINEAR = range(6)


@dataclass(frozen=True)
class HexImage:
    partition: Partition
    data: bytes  # from the partition's base to the last byte the records hold
    segments: tuple[tuple[int, int], ...]  # (start, end) CPU address ranges the file holds


def looks_like_hex(data: bytes) -> bool:
    return data[:1] == b":" and all(c in b"0123456789ABCDEFabcdef:\r\n" for c in data[:64])


def _records(data: bytes) -> list[tuple[int, bytearray]]:
    """Contiguous runs (start address, bytes) of the data records, in file order.

    A ROMFS0-sized file has 1.5 million records: the loop does the least per record
    (hex decoded from bytes in C, the address from two bytes, a run extended in place).
    """
    runs: list[tuple[int, bytearray]] = []
    run = bytearray()  # the last run, which a record at `run_end` extends
    run_end = -1
    base = 0
    ended = False
    for number, line in enumerate(data.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        if ended:
            raise Ae3Error(
                f"unreadable Intel HEX: line {number}: data after the end-of-file record"
            )
        if line[:1] != b":":
            raise Ae3Error(f"unreadable Intel HEX: line {number}: does not start with ':'")
        try:
            raw = binascii.a2b_hex(line[1:])
        except binascii.Error:
            raise Ae3Error(f"unreadable Intel HEX: line {number}: not hexadecimal digits") from None
        if len(raw) < 5 or len(raw) != raw[0] + 5:
            raise Ae3Error(
                f"unreadable Intel HEX: line {number}: record length does not match its count"
            )
        if sum(raw) & 0xFF:
            raise Ae3Error(f"unreadable Intel HEX: line {number}: checksum mismatch")
        kind = raw[3]
        if kind == DATA:
            address = base + (raw[1] << 8 | raw[2])
            if address == run_end:
                run += raw[4:-1]
                run_end += raw[0]
            elif raw[0]:
                run = bytearray(raw[4:-1])
                runs.append((address, run))
                run_end = address + raw[0]
        elif kind == END_OF_FILE:
            ended = True
        elif kind in (EXTENDED_SEGMENT, EXTENDED_LINEAR) and raw[0] == 2:
            value = raw[4] << 8 | raw[5]
            base = value << 4 if kind == EXTENDED_SEGMENT else value << 16
        elif kind in (START_SEGMENT, START_LINEAR) and raw[0] == 4:
            pass  # an entry point: nothing to place in memory
        else:
            raise Ae3Error(
                f"unreadable Intel HEX: line {number}: record type {kind} of {raw[0]} bytes"
            )
    return runs


def parse_hex(data: bytes) -> HexImage:
    """Parse Intel HEX; every record must lie in one partition (by its CPU address)."""
    runs = sorted(_records(data), key=lambda run: run[0])
    if not runs:
        raise Ae3Error("Intel HEX file holds no data records")
    for (start, body), (next_start, _) in pairwise(runs):
        if start + len(body) > next_start:
            raise Ae3Error(f"Intel HEX records overlap at 0x{next_start:08x}")
    low, high = runs[0][0], runs[-1][0] + len(runs[-1][1])
    partition = partition_mapping(low, high - low)
    if partition is None or partition.cpu_address is None:
        raise Ae3Error(
            f"Intel HEX data spans 0x{low:08x}-0x{high:08x}, which is not inside one AE3 partition"
        )
    base = partition.cpu_address
    image = bytearray([GAP_FILL]) * (high - base)
    segments: list[tuple[int, int]] = []
    for start, body in runs:
        image[start - base : start - base + len(body)] = body
        if segments and segments[-1][1] == start:
            segments[-1] = (segments[-1][0], start + len(body))
        else:
            segments.append((start, start + len(body)))
    return HexImage(partition, bytes(image), tuple(segments))
