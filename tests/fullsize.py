"""A full-size release set (HP 3 MiB, HE 1.4 MiB, ROMFS1 1 MiB, ROMFS0 24 MiB), made on demand.

Shared by the tests and scripts/bench. The images are valid for their roles and fill
their partitions to within a block, which is what a worst-case flash looks like.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from ae3tools.board import Role, partition_for_role
from ae3tools.formats.romfs import build_romfs

_HEADROOM = 256  # ROMFS bytes around the data: header, names, alignment


def _filler(seed: bytes, size: int) -> bytes:
    block = hashlib.sha256(seed).digest() * 2048  # 64 KiB of non-trivial bytes
    return (block * (size // len(block) + 1))[:size]


def firmware(role: Role, size: int, seed: bytes = b"") -> bytes:
    """A valid `role` firmware image of `size` bytes; another `seed` gives another build."""
    partition = partition_for_role(role)
    vectors = struct.pack("<II", 0x20040000, (partition.start + 0x400) | 1)
    return vectors + _filler(role.value.encode() + seed, size - len(vectors))


def make_full_size_set(directory: Path, romfs0_size: int | None = None) -> dict[Role, Path]:
    """Write the four images with OpenMV's file names; returns role -> path.

    `romfs0_size` shrinks ROMFS0 (the one image that takes minutes on NOR) for quick runs.
    """
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for role in (Role.HP, Role.HE):
        partition = partition_for_role(role)
        path = directory / str(partition.image_name)
        path.write_bytes(firmware(role, partition.size))
        paths[role] = path
    for role in (Role.ROMFS1, Role.ROMFS0):
        partition = partition_for_role(role)
        tree = directory / f"{role.value}-tree"
        tree.mkdir(exist_ok=True)
        size = romfs0_size if role is Role.ROMFS0 and romfs0_size else partition.size
        (tree / "model.tflite").write_bytes(_filler(b"model", size - _HEADROOM))
        path = directory / str(partition.image_name)
        path.write_bytes(build_romfs(tree, partition=partition).image)
        paths[role] = path
    return paths
