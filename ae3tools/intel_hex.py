"""Intel HEX inputs, turned into the bytes of one partition from its base."""

from __future__ import annotations

import io
from dataclasses import dataclass

from intelhex import IntelHex

from ae3tools.board import Partition, partition_mapping
from ae3tools.findings import Ae3Error

# objcopy -O binary fills gaps with zeros; matching it makes a .hex and its .bin agree.
GAP_FILL = 0x00


@dataclass(frozen=True)
class HexImage:
    partition: Partition
    data: bytes  # from the partition's base to the last byte the records hold
    segments: tuple[tuple[int, int], ...]  # (start, end) CPU address ranges the file holds


def looks_like_hex(data: bytes) -> bool:
    return data[:1] == b":" and all(c in b"0123456789ABCDEFabcdef:\r\n" for c in data[:64])


def parse_hex(data: bytes) -> HexImage:
    """Parse Intel HEX; every record must lie in one partition (by its CPU address)."""
    try:
        text = data.decode("ascii")
        hexfile = IntelHex()
        hexfile.loadhex(io.StringIO(text))
    except Exception as exc:  # intelhex raises a variety of types for bad records
        raise Ae3Error(f"unreadable Intel HEX: {_first_line(exc)}") from None
    segments = tuple(hexfile.segments())
    if not segments:
        raise Ae3Error("Intel HEX file holds no data records")
    low, high = segments[0][0], segments[-1][1]
    partition = partition_mapping(low, high - low)
    if partition is None or partition.cpu_address is None:
        raise Ae3Error(
            f"Intel HEX data spans 0x{low:08x}-0x{high:08x}, which is not inside one AE3 partition"
        )
    hexfile.padding = GAP_FILL
    body = hexfile.tobinstr(start=partition.cpu_address, end=high - 1)
    return HexImage(partition, bytes(body), segments)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
