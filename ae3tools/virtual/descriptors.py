"""The virtual bootloader's USB descriptors (ae3-bootloader.md §1), byte for byte."""

from __future__ import annotations

from ae3tools.board import (
    BOOTLOADER_PID,
    DFU_BLOCK_SIZE,
    PARTITIONS,
    USB_VID,
)
from ae3tools.dfu.protocol import (
    LATEST_BOOTLOADER,
    BootloaderRelease,
    DescriptorType,
)

MAX_TRANSFER = DFU_BLOCK_SIZE  # §1.2 wTransferSize


def device_descriptor(release: BootloaderRelease = LATEST_BOOTLOADER) -> bytes:
    """§1.1: 12 01 00 02 00 00 00 40 C5 37 E3 96 03 01 01 02 03 01 (bcdDevice by release,
    §13.1: 0x0200 on the header-less 1.0.0)."""
    return (
        bytes([0x12, 0x01, 0x00, 0x02, 0, 0, 0, 0x40])
        + USB_VID.to_bytes(2, "little")
        + BOOTLOADER_PID.to_bytes(2, "little")
        + release.bcd_device.to_bytes(2, "little")
        + bytes([1, 2, 3, 1])
    )


DFU_FUNCTIONAL = bytes([0x09, 0x21, 0x07, 0xE8, 0x03, 0x00, 0x10, 0x01, 0x01])  # §1.2


def _interface_descriptor(alt: int) -> bytes:
    return bytes([0x09, 0x04, 0, alt, 0, 0xFE, 0x01, 0x02, 4 + alt])


def _configuration_descriptor() -> bytes:
    """§1.2: one interface, eight alt settings, then the DFU functional descriptor."""
    body = b"".join(_interface_descriptor(alt) for alt in range(len(PARTITIONS)))
    body += DFU_FUNCTIONAL
    total = 9 + len(body)
    return bytes([0x09, 0x02, *total.to_bytes(2, "little"), 1, 1, 0, 0x80, 0xFA]) + body


CONFIGURATION_DESCRIPTOR = _configuration_descriptor()
DEVICE_QUALIFIER = bytes([0x0A, 0x06, 0x00, 0x02, 0, 0, 0, 0x40, 0x01, 0x00])  # §1.1
MAX_STRING_CHARS = 32  # §1.3


def string_descriptor(text: str) -> bytes:
    """§1.3: truncated to 32 characters, ASCII zero-extended to UTF-16LE."""
    encoded = text[:MAX_STRING_CHARS].encode("utf-16-le")
    return bytes([2 + len(encoded), DescriptorType.STRING]) + encoded
