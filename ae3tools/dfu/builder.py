"""Which blocks of an image to read, write and read back: the incremental flash planner.

This is pyOCD's FlashBuilder role: the plan is decided here, block by block, and a
`BlockDevice` (the DFU session) does the USB. The rules come from ae3-bootloader.md:

- the bootloader takes blocks in any order and checks no sequence (§5), so a block the
  camera already holds is skipped;
- an MRAM partition's MPU region is unlocked only by a DNLOAD of block 0 (§5 check 2,
  §5.1), and a write to a locked region hangs the device: whenever anything of an MRAM
  image must be written, block 0 is written first;
- a NOR block write erases its own 4 KiB sector and nothing else (§5.2), so skipping a
  block never disturbs a neighbour;
- a shorter image leaves the old one's tail in place (§5.1, §5.2), as a full rewrite
  does: both firmware and ROMFS readers stop at their own end.

Nothing counts as flashed unless it was read equal: before writing (skipped), or after
(read back).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from ae3tools.board import DFU_BLOCK_SIZE, Memory, Partition, Role
from ae3tools.findings import DeviceError
from ae3tools.release.bundle import BundleImage


class BlockDevice(Protocol):
    """What the planner needs of a camera: the DFU session implements it."""

    def begin(self, partition: Partition) -> None: ...

    def read_block(self, partition: Partition, block: int) -> bytes: ...

    def write_block(self, partition: Partition, block: int, data: bytes | memoryview) -> None: ...

    def manifest(self, partition: Partition, block: int) -> None: ...


class FlashObserver(Protocol):
    """Progress of one transfer at a time: begin, advance (bytes done), end."""

    def begin(self, label: str, total: int) -> None: ...

    def advance(self, done: int) -> None: ...

    def end(self) -> None: ...


class Silent:
    def begin(self, label: str, total: int) -> None:
        pass

    def advance(self, done: int) -> None:
        pass

    def end(self) -> None:
        pass


class VerifyError(DeviceError):
    """A block read back (or read for comparison) differs from the image."""


@dataclass(frozen=True)
class ProbePolicy:
    """When the pre-read stops paying, and how often to look again.

    `stop_after` differing blocks in a row stop the pre-read; the next `first_gap`
    blocks are then written unread and the one after is read (a probe). A probe that
    finds an equal block resumes the pre-read; one that differs doubles the gap, up to
    `max_gap`.
    """

    stop_after: int
    first_gap: int
    max_gap: int


# A NOR block write (a sector erase and 32 page programs, §5.2, §11) costs some 25
# block reads; an MRAM write (256 16-byte stores, no erase) about two. The pre-read pays
# while blocks tend to be equal; on a blank or fully new camera the probes are spread so
# that they cost a fraction of a percent of the writes.
PROBE_POLICIES = {
    Memory.MRAM: ProbePolicy(stop_after=2, first_gap=32, max_gap=256),
    Memory.NOR: ProbePolicy(stop_after=8, first_gap=8, max_gap=64),
}


class Prober:
    """Decides, block by block, whether to read the camera before writing."""

    def __init__(self, policy: ProbePolicy) -> None:
        self.policy = policy
        self.streak = 0  # differing blocks in a row while pre-reading
        self.gap = 0  # 0: pre-reading every block; else blocks between probes
        self.countdown = 0

    def wants_read(self) -> bool:
        if not self.gap:
            return True
        self.countdown -= 1
        return self.countdown <= 0

    def saw(self, differs: bool) -> None:
        if not differs:
            self.streak = self.gap = 0
            return
        if self.gap:
            self.gap = min(2 * self.gap, self.policy.max_gap)
        else:
            self.streak += 1
            if self.streak < self.policy.stop_after:
                return
            self.gap = self.policy.first_gap
        self.countdown = self.gap


def _image_fields(partition: Partition, length: int, blocks: int) -> dict[str, Any]:
    """What every per-image report starts with."""
    role = partition.role.value if partition.role else None
    return {
        "role": role,
        "alt": partition.alt,
        "alt_name": partition.name,
        "bytes": length,
        "blocks": blocks,
    }


@dataclass(frozen=True)
class ImageResult:
    """What happened to one image: blocks read, written, skipped and read back, and when."""

    role: Role
    partition: Partition
    length: int
    blocks: int
    read: int  # blocks read before deciding (incremental)
    written: int
    skipped: int  # found equal on the camera, not written
    read_back: int  # written blocks read back and compared
    read_seconds: float
    write_seconds: float
    verify_seconds: float

    @property
    def verified(self) -> bool:
        """Every block is known equal: read equal before, or read back equal after."""
        return self.read_back == self.written

    @property
    def seconds(self) -> float:
        return self.read_seconds + self.write_seconds + self.verify_seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            **_image_fields(self.partition, self.length, self.blocks),
            "blocks_read": self.read,
            "blocks_written": self.written,
            "blocks_skipped": self.skipped,
            "blocks_read_back": self.read_back,
            "read_seconds": round(self.read_seconds, 4),
            "write_seconds": round(self.write_seconds, 4),
            "verify_seconds": round(self.verify_seconds, 4),
            "seconds": round(self.seconds, 4),
            "verified": self.verified,
        }


def image_blocks(data: bytes) -> list[memoryview]:
    """The image in DFU blocks of 4096 bytes (§5), the last one shorter."""
    view = memoryview(data)
    offsets = range(0, len(data), DFU_BLOCK_SIZE)
    return [view[offset : offset + DFU_BLOCK_SIZE] for offset in offsets]


def _differs(camera: bytes, chunk: memoryview) -> bool:
    # Only the image's own bytes count: past its end the camera may keep an old tail.
    # As bytes: memoryview == bytes compares item by item in Python (4.3 us a block
    # against 0.23 us for the copy and a memcmp).
    return camera[: len(chunk)] != chunk.tobytes()


def _first_difference(camera: bytes, chunk: memoryview) -> int:
    return next(i for i, (a, b) in enumerate(zip(camera, chunk, strict=False)) if a != b)


class _Clock:
    """Seconds spent per phase of one image."""

    def __init__(self) -> None:
        self.seconds = {"read": 0.0, "write": 0.0, "verify": 0.0}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - started


def write_image(
    device: BlockDevice,
    image: BundleImage,
    *,
    incremental: bool = True,
    verify: bool = True,
    observer: FlashObserver | None = None,
) -> ImageResult:
    """Bring one partition to hold `image`; returns what was read, written and skipped.

    Incremental: each block is read first while that pays (see `Prober`) and written only
    if it differs. Full (`incremental=False`): every block is written. Then every
    written block is read back and compared (unless `verify` is off). Raises the
    device's DeviceError, or VerifyError naming the first differing byte.
    """
    observer = observer or Silent()
    partition = image.partition
    label = f"{partition.name} (alt {partition.alt})"
    blocks = image_blocks(image.data)
    clock = _Clock()
    prober = Prober(PROBE_POLICIES[partition.memory]) if incremental else None
    unlock_first = partition.memory is Memory.MRAM  # §5 check 2: block 0 unlocks
    written: list[int] = []
    read = 0

    def write(index: int) -> None:
        with clock.phase("write"):
            device.write_block(partition, index, blocks[index])
        written.append(index)

    device.begin(partition)
    observer.begin(f"{'update' if incremental else 'write'} {partition.name}", len(image.data))
    try:
        for index, chunk in enumerate(blocks):
            if prober is not None and prober.wants_read():
                with clock.phase("read"):
                    camera = device.read_block(partition, index)
                read += 1
                differs = _differs(camera, chunk)
                prober.saw(differs)
                if not differs:
                    observer.advance(index * DFU_BLOCK_SIZE + len(chunk))
                    continue
            if unlock_first and index and 0 not in written:
                write(0)  # equal, but the region stays locked without it (§5.1)
            write(index)
            observer.advance(index * DFU_BLOCK_SIZE + len(chunk))
        if written:
            with clock.phase("write"):
                device.manifest(partition, len(blocks))
    finally:
        observer.end()
    read_back = 0
    if verify and written:
        observer.begin(f"verify {partition.name}", sum(len(blocks[i]) for i in written))
        done = 0
        try:
            for index in written:
                with clock.phase("verify"):
                    camera = device.read_block(partition, index)
                if _differs(camera, blocks[index]):
                    offset = index * DFU_BLOCK_SIZE + _first_difference(camera, blocks[index])
                    raise VerifyError(
                        f"{label}: read-back differs from the image at byte {offset} "
                        f"(block {index})"
                    )
                read_back += 1
                done += len(blocks[index])
                observer.advance(done)
        finally:
            observer.end()
    return ImageResult(
        image.role,
        partition,
        len(image.data),
        len(blocks),
        read,
        len(written),
        len(blocks) - len(written),
        read_back,
        clock.seconds["read"],
        clock.seconds["write"],
        clock.seconds["verify"],
    )


# ----------------------------------------------------------------------------- comparing


@dataclass(frozen=True)
class ImageComparison:
    """One image against the camera: which blocks differ (first, last: inclusive)."""

    role: Role
    partition: Partition
    length: int
    blocks: int
    differing: tuple[tuple[int, int], ...]
    seconds: float

    @property
    def equal(self) -> bool:
        return not self.differing

    @property
    def differing_blocks(self) -> int:
        return sum(last - first + 1 for first, last in self.differing)

    def as_dict(self) -> dict[str, Any]:
        return {
            **_image_fields(self.partition, self.length, self.blocks),
            "equal": self.equal,
            "differing_blocks": self.differing_blocks,
            "differing_ranges": [list(pair) for pair in self.differing],
            "seconds": round(self.seconds, 4),
        }


def block_ranges(indices: Sequence[int]) -> Iterator[tuple[int, int]]:
    """Sorted block numbers as (first, last) runs: 1, 2, 3, 7 -> (1, 3), (7, 7)."""
    run: list[int] = []
    for index in indices:
        if run and index != run[-1] + 1:
            yield run[0], run[-1]
            run = []
        run.append(index)
    if run:
        yield run[0], run[-1]


def compare_image(
    device: BlockDevice, image: BundleImage, *, observer: FlashObserver | None = None
) -> ImageComparison:
    """Read every block the image covers and list those that differ; writes nothing."""
    observer = observer or Silent()
    partition = image.partition
    blocks = image_blocks(image.data)
    started = time.perf_counter()
    device.begin(partition)
    differing = []
    observer.begin(f"check {partition.name}", len(image.data))
    try:
        for index, chunk in enumerate(blocks):
            if _differs(device.read_block(partition, index), chunk):
                differing.append(index)
            observer.advance(index * DFU_BLOCK_SIZE + len(chunk))
    finally:
        observer.end()
    return ImageComparison(
        image.role,
        partition,
        len(image.data),
        len(blocks),
        tuple(block_ranges(differing)),
        time.perf_counter() - started,
    )
