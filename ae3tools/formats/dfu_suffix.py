"""The DFU 1.1 file suffix (DFU 1.1 spec, appendix B), as dfu-util's dfu-suffix writes it."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from ae3tools.board import BOOTLOADER_PID, USB_VID
from ae3tools.findings import Finding, error

SUFFIX_LENGTH = 16
SIGNATURE = b"UFD"  # "DFU" stored little-endian
ANY_ID = 0xFFFF  # the suffix's "matches any device" value


def _jamcrc(data: bytes) -> int:
    """dfu-util's crc32: the reflected CRC-32 without its final xor (JAMCRC), which is
    zlib's CRC-32 inverted."""
    return zlib.crc32(data) ^ 0xFFFFFFFF


# bcdDevice, idProduct, idVendor, bcdDFU, signature, bLength, dwCRC: all little-endian.
_LAYOUT = struct.Struct("<HHHH3sBI")


@dataclass(frozen=True)
class DfuSuffix:
    bcd_device: int
    id_product: int
    id_vendor: int
    bcd_dfu: int
    crc: int


def has_suffix(data: bytes) -> bool:
    """Whether the file ends like a DFU suffix: the "UFD" signature at its place.

    The length byte is checked by split_suffix, not here: a file with the signature and
    another length is refused, never flashed with its suffix bytes as data.
    """
    return len(data) >= SUFFIX_LENGTH and data[-8:-5] == SIGNATURE


def split_suffix(data: bytes) -> tuple[bytes, DfuSuffix, list[Finding]]:
    """Strip a DFU suffix, checking its CRC and that its IDs allow the AE3 bootloader."""
    bcd_device, pid, vid, bcd_dfu, _, length, crc = _LAYOUT.unpack(data[-SUFFIX_LENGTH:])
    suffix = DfuSuffix(bcd_device, pid, vid, bcd_dfu, crc)
    findings = []
    if length != SUFFIX_LENGTH:
        # dfu-util refuses such a file too ("Unsupported DFU suffix length").
        findings.append(
            error(
                "DFU_SUFFIX_LENGTH",
                f"DFU suffix length byte is {length}, not {SUFFIX_LENGTH}: "
                "not a suffix dfu-util or ae3tools can read",
            )
        )
    computed = _jamcrc(data[:-4])
    if computed != crc:
        findings.append(
            error(
                "DFU_SUFFIX_CRC",
                f"DFU suffix CRC is 0x{crc:08x}, the content gives 0x{computed:08x}: file corrupt",
            )
        )
    if vid not in (USB_VID, ANY_ID) or pid not in (BOOTLOADER_PID, ANY_ID):
        findings.append(
            error(
                "DFU_SUFFIX_DEVICE",
                f"DFU suffix is for {vid:04x}:{pid:04x}, not the AE3 bootloader "
                f"{USB_VID:04x}:{BOOTLOADER_PID:04x}",
            )
        )
    return data[:-SUFFIX_LENGTH], suffix, findings
