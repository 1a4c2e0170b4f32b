"""The virtual camera's storage: one buffer or file per partition, owned by one process."""

from __future__ import annotations

import errno
import importlib
import mmap
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from ae3tools.board import (
    BOOT,
    BOOT_HEADER_OFFSET,
    BOOT_HEADER_SIZE,
    BOOT_MAGIC,
    Memory,
    Partition,
    Role,
    partition_for_role,
)
from ae3tools.dfu.protocol import (
    BootloaderRelease,
)

NOR_PAGE = 128  # §5.2: page-program commands of 128 bytes
NOR_ERASED = 0xFF  # §5.2 (inferred erase value)
MRAM_FRESH = 0x00


def partition_file_name(partition: Partition) -> str:
    return f"{partition.alt}-{partition.name}.bin"


def _fresh_contents(partition: Partition) -> bytes:
    """What an untouched partition holds: erased NOR, zeroed MRAM."""
    if partition.memory is Memory.NOR:
        return bytes([NOR_ERASED]) * partition.size
    return bytes(partition.size)


def boot_image(release: BootloaderRelease) -> bytes:
    """BOOT's contents (read-only over DFU, §5): a stand-in bootloader of this release.

    From 1.0.1 on it carries the real boot header at +0x1000 (§10); 1.0.0 has ordinary
    code there (§13.1), modelled as Thumb NOPs.
    """
    image = bytearray(BOOT.size)
    if release.boot_header:
        header = BOOT_MAGIC.to_bytes(4, "little") + bytes(release.version)
        image[BOOT_HEADER_OFFSET : BOOT_HEADER_OFFSET + len(header)] = header
    else:
        image[BOOT_HEADER_OFFSET : BOOT_HEADER_OFFSET + BOOT_HEADER_SIZE] = THUMB_NOP * (
            BOOT_HEADER_SIZE // len(THUMB_NOP)
        )
    return bytes(image)


THUMB_NOP = bytes.fromhex("00bf")


class CameraInUse(Exception):
    """Another process holds this virtual camera, as a claimed USB interface would be."""


class DeviceMemory:
    """The camera's storage, one buffer per partition; file-backed when given a directory.

    A directory keeps one file per partition (`1-HP.bin`, ...), created on first use,
    so a flash survives across runs as a real camera's memory does. Only the last
    component of the directory is created (a mistyped path is not silently made into a
    new camera); `created` says whether this call made it.

    One camera has one owner: `claim()` takes an exclusive lock on the directory, as
    claiming a real camera's USB interface does, and a second process gets CameraInUse.
    """

    LOCK_NAME = ".lock"

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        self._buffers: dict[int, bytearray | mmap.mmap] = {}
        self._lock = threading.Lock()
        self._owner: int | None = None  # the locked file descriptor, while claimed
        self.created = False
        if directory is not None and not directory.is_dir():
            if directory.exists():
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(directory))
            if not directory.parent.is_dir():
                raise FileNotFoundError(
                    errno.ENOENT,
                    f"cannot create a virtual camera there: {directory.parent} does not exist",
                    str(directory),
                )
            directory.mkdir()
            self.created = True

    def claim(self) -> None:
        """Become this camera's one owner (idempotent); CameraInUse if another process is."""
        if self.directory is None or self._owner is not None:
            return
        fd = os.open(self.directory / self.LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock_exclusive(fd)
        except OSError:
            os.close(fd)
            raise CameraInUse(
                f"the virtual camera in {self.directory} is in use by another process"
            ) from None
        self._owner = fd

    def release(self) -> None:
        if self._owner is not None:
            self.flush()
            os.close(self._owner)  # closing the descriptor drops the lock
            self._owner = None

    def buffer(self, partition: Partition) -> bytearray | mmap.mmap:
        if partition.memory is Memory.RECOVERY or partition.read_only:
            # BOOT is the bootloader itself, which the device model supplies.
            raise ValueError(f"the {partition.name} partition has no storage")
        with self._lock:
            existing = self._buffers.get(partition.alt)
            if existing is not None:
                return existing
            created = self._open(partition)
            self._buffers[partition.alt] = created
            return created

    def _open(self, partition: Partition) -> bytearray | mmap.mmap:
        if self.directory is None:
            return bytearray(_fresh_contents(partition))
        path = self.directory / partition_file_name(partition)
        if not path.exists() or path.stat().st_size != partition.size:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=self.directory)
            with os.fdopen(fd, "wb") as stream:
                stream.write(_fresh_contents(partition))
            os.replace(tmp, path)
        with path.open("r+b") as stream:
            return mmap.mmap(stream.fileno(), partition.size)

    def read(self, partition: Partition, offset: int, length: int) -> bytes:
        return bytes(self.buffer(partition)[offset : offset + length])

    def write(self, partition: Partition, offset: int, data: bytes | memoryview) -> None:
        self.buffer(partition)[offset : offset + len(data)] = data

    def erase(self, partition: Partition) -> None:
        buffer = self.buffer(partition)
        buffer[:] = bytes([NOR_ERASED]) * partition.size

    def flush(self) -> None:
        for buffer in self._buffers.values():
            if isinstance(buffer, mmap.mmap):
                buffer.flush()

    def close(self) -> None:
        self.flush()
        for buffer in self._buffers.values():
            if isinstance(buffer, mmap.mmap):
                buffer.close()
        self._buffers.clear()
        self.release()


def _lock_exclusive(fd: int) -> None:
    """A non-blocking exclusive lock on an open file; OSError when another holds it. By
    what the platform has: flock on POSIX, msvcrt's byte lock on Windows."""
    try:
        import fcntl
    except ImportError:
        msvcrt: Any = importlib.import_module("msvcrt")  # Windows; its stubs are Windows-only
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    else:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def partition_image(memory_dir: Path, role: Role) -> Path:
    """Where a virtual camera kept in `memory_dir` stores the partition for `role`."""
    return memory_dir / partition_file_name(partition_for_role(role))
