"""openmv-ota's layout of a ROMFS partition: A/B slots, each a ROMFS with a signed trailer.

OpenMV's openmv-ota (PyPI 1.0.7, MIT; `ota/geometry.py`, `ota/trailer.py`) provisions the
AE3's ROMFS0 as two equal slots of half the partition (rounded down to 4 KiB), or on a
partition too small for two, one slot. Each slot holds the ROMFS body, 0xFF padding, a
4 KiB status sector and a 4 KiB trailer at its very end; the camera's boot code mounts the
newest slot whose trailer matches and boots the other when one does not. A plain ROMFS
written over slot A leaves slot A's old trailer in place, so the camera keeps booting
the old application: that is what this module lets the tools notice.

Only what recognising the layout needs is read: the trailer's fixed header.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from ae3tools.formats.romfs.records import MAGIC, is_romfs

CONTROL_BLOCK = 4096  # geometry.control_block(): each control sector, whatever the flash
CONTROL_SECTORS = 2  # the status sector, then the trailer, at the end of each slot
TRAILER_MAGIC = b"OMVR"  # trailer.MAGIC_ROMFS_APP: a ROMFS application image
TRAILER_HEADER_VERSION = 3  # trailer.HEADER_VERSION, checked for equality by the camera
# trailer.HEADER_STRUCT: magic, header_version, body_size, pad_size, meta_size, sig_size,
# product_id, publish_seq, reserved0, min_platform_version, payload_version, key_id,
# sig_alg, body_sha256.
TRAILER_HEADER = struct.Struct("<4sIIIIIQQQIIIi32s")


@dataclass(frozen=True)
class OtaSlot:
    offset: int  # where the slot starts in the partition
    size: int
    body_size: int  # the ROMFS body's length, as the trailer says
    payload_version: int  # the application's version, as the trailer says
    product_id: int

    @property
    def trailer_offset(self) -> int:
        return self.offset + self.size - CONTROL_BLOCK

    def as_dict(self) -> dict[str, int]:
        return {
            "offset": self.offset,
            "size": self.size,
            "body_size": self.body_size,
            "payload_version": self.payload_version,
            "product_id": self.product_id,
        }


@dataclass(frozen=True)
class OtaLayout:
    mode: str  # "A/B" or "single"
    slots: tuple[OtaSlot, ...]  # the slots that carry a trailer

    def describe(self) -> str:
        versions = ", ".join(str(s.payload_version) for s in self.slots)
        return (
            f"openmv-ota's {self.mode} layout: {len(self.slots)} slot(s) with a signed "
            f"trailer (application version {versions})"
        )

    def as_dict(self) -> dict[str, object]:
        return {"mode": self.mode, "slots": [slot.as_dict() for slot in self.slots]}


def slot_geometries(partition_size: int) -> list[tuple[str, list[tuple[int, int]]]]:
    """The layouts openmv-ota may have laid down in a partition of this size, as (mode,
    [(slot offset, slot size)]): A/B first, where two slots have room for a body."""
    overhead = CONTROL_SECTORS * CONTROL_BLOCK
    half = (partition_size // 2) & ~(CONTROL_BLOCK - 1)  # geometry.front_size
    found = []
    if half > overhead:
        found.append(("A/B", [(0, half), (half, half)]))
    if partition_size > overhead:
        found.append(("single", [(0, partition_size)]))
    return found


def trailer_offsets(partition_size: int) -> list[int]:
    """Every place a trailer may sit: what a camera's partition is read at to tell."""
    return sorted(
        {offset + size - CONTROL_BLOCK for _, slots in slot_geometries(partition_size)
         for offset, size in slots}
    )  # fmt: skip


def _slot(read: Callable[[int, int], bytes], offset: int, size: int) -> OtaSlot | None:
    header = read(offset + size - CONTROL_BLOCK, TRAILER_HEADER.size)
    if len(header) < TRAILER_HEADER.size or not header.startswith(TRAILER_MAGIC):
        return None
    fields = TRAILER_HEADER.unpack(header)
    version, body_size, product_id, payload_version = fields[1], fields[2], fields[6], fields[10]
    if version != TRAILER_HEADER_VERSION or body_size > size - CONTROL_SECTORS * CONTROL_BLOCK:
        return None
    if not is_romfs(read(offset, len(MAGIC))):  # the body starts the slot: one layout's
        return None  # slot B trailer is where the other's single slot has its own
    return OtaSlot(offset, size, body_size, payload_version, product_id)


def find_ota_layout(read: Callable[[int, int], bytes], partition_size: int) -> OtaLayout | None:
    """openmv-ota's layout in a partition of `partition_size` bytes, read through
    `read(offset, length)` (an image's bytes, or a camera's blocks); None if none."""
    for mode, geometry in slot_geometries(partition_size):
        slots = [_slot(read, offset, size) for offset, size in geometry]
        present = tuple(slot for slot in slots if slot is not None)
        if present:
            return OtaLayout(mode, present)
    return None


def image_ota_layout(image: bytes, partition_size: int) -> OtaLayout | None:
    """The layout in an image file laid out for the whole partition (openmv-ota's
    factory image); None for a plain ROMFS image."""
    if len(image) < partition_size // 2:
        return None
    return find_ota_layout(lambda offset, length: image[offset : offset + length], partition_size)
