"""Flash plans: verified bundle images onto a camera, read back, reset; recovery; FS wipe.

This layer decides which images, in which order (the blocks within an image are the
builder's); `DfuSession` does the USB. It reports through an observer and returns
results: it never prints.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Iterable, Sequence

from ae3tools.board import (
    BOOTLOADER_PID,
    DFU_BLOCK_SIZE,
    RWFS_ERASE_PAYLOAD_SIZE,
    USB_VID,
    Partition,
    Role,
    partition_by_name,
    partition_for_role,
)
from ae3tools.dfu.builder import (
    FlashObserver,
    ImageComparison,
    ImageResult,
    Silent,
    compare_image,
    write_image,
)
from ae3tools.dfu.host import DfuSession
from ae3tools.dfu.protocol import RECOVERY_TIMEOUT_MS
from ae3tools.findings import DeviceError, UsageError, errors_in
from ae3tools.formats.key import check_key
from ae3tools.formats.ota_layout import OtaLayout, find_ota_layout, image_ota_layout
from ae3tools.formats.romfs import is_romfs, romfs_extent
from ae3tools.release.bundle import BundleImage


class OtaLayoutOnCamera(DeviceError):
    """Flashing would replace openmv-ota's layout with a plain ROMFS (refused by default)."""


class FlashFailed(DeviceError):
    """A flash stopped. Carries what completed and which roles a re-run must still write."""

    def __init__(
        self, cause: DeviceError, completed: Sequence[ImageResult], remaining: Sequence[Role]
    ) -> None:
        super().__init__(
            str(cause), hint=cause.hint, vanished=cause.vanished, timed_out=cause.timed_out
        )
        self.cause = cause
        self.completed = list(completed)
        self.remaining = list(remaining)


def parse_only(text: str | None) -> set[Role] | None:
    """--only hp,he,romfs0,romfs1 (also the alt names)."""
    if not text:
        return None
    roles = set()
    for item in text.split(","):
        name = item.strip().lower()
        try:
            roles.add(Role(name))
        except ValueError:
            try:
                role = partition_by_name(name).role
            except KeyError:
                role = None
            if role is None or role is Role.KEY:
                raise UsageError(f"--only {item}: expected hp, he, romfs1 or romfs0") from None
            roles.add(role)
    return roles


def select_images(images: Sequence[BundleImage], only: set[Role] | None) -> list[BundleImage]:
    if only is None:
        return list(images)
    missing = only - {image.role for image in images}
    if missing:
        raise UsageError(
            f"--only names {', '.join(sorted(r.value for r in missing))}, "
            "which the bundle does not hold"
        )
    return [image for image in images if image.role in only]


def dfu_util_commands(images: Sequence[BundleImage], *, reset: bool) -> list[str]:
    """The dfu-util calls people run today for the same plan (files as unzipped)."""
    commands = []
    for index, image in enumerate(images):
        args = [
            "dfu-util",
            "-w",
            "-d",
            f",{USB_VID:04x}:{BOOTLOADER_PID:04x}",
            "-a",
            str(image.partition.alt),
            "-D",
            image.entry.file,
        ]
        if reset and index == len(images) - 1:
            args.append("--reset")
        commands.append(shlex.join(args))
    return commands


def camera_ota_layout(session: DfuSession, partition: Partition) -> OtaLayout | None:
    """openmv-ota's layout in the camera's `partition`, from the few blocks where its
    slots start and its trailers sit (a handful of reads, whatever the partition)."""
    session.begin(partition)
    blocks: dict[int, bytes] = {}

    def read(offset: int, length: int) -> bytes:
        block, start = divmod(offset, DFU_BLOCK_SIZE)
        if block not in blocks:
            blocks[block] = session.read_block(partition, block)
        return blocks[block][start : start + length]

    return find_ota_layout(read, partition.size)


def ota_layouts_replaced(
    session: DfuSession, images: Sequence[BundleImage]
) -> list[tuple[BundleImage, OtaLayout]]:
    """The images that would write a plain ROMFS0 over openmv-ota's layout on the camera:
    its boot code would keep mounting the old slot (see formats/ota_layout.py)."""
    replaced = []
    for image in images:
        if image.role is not Role.ROMFS0:  # openmv-ota lays out ROMFS0 only
            continue
        if image_ota_layout(image.data, image.partition.size) is not None:
            continue  # the bundle brings a layout of its own
        layout = camera_ota_layout(session, image.partition)
        if layout is not None:
            replaced.append((image, layout))
    return replaced


def flash_images(
    session: DfuSession,
    images: Sequence[BundleImage],
    *,
    incremental: bool = True,
    verify: bool = True,
    replace_ota_layout: bool = False,
    observer: FlashObserver | None = None,
) -> list[ImageResult]:
    """Bring each image onto the camera in one session, in order (see `write_image`).

    Before anything is written, a plain ROMFS0 that would replace openmv-ota's layout on
    the camera is refused (OtaLayoutOnCamera) unless `replace_ota_layout`. Raises
    FlashFailed at the first failure; nothing after it is attempted and the camera is not
    reset, so it stays in the bootloader for a re-run.
    """
    if not replace_ota_layout:
        for image, layout in ota_layouts_replaced(session, images):
            raise OtaLayoutOnCamera(
                f"{image.partition.name} on the camera holds {layout.describe()}; a plain "
                f"{image.entry.file} written over it leaves the camera booting the old "
                "application. Nothing was written",
                hint="To replace the layout anyway, flash again with --replace-ota-layout",
            )
    results: list[ImageResult] = []
    for index, image in enumerate(images):
        try:
            result = write_image(
                session, image, incremental=incremental, verify=verify, observer=observer
            )
        except DeviceError as exc:
            raise FlashFailed(exc, results, [i.role for i in images[index:]]) from None
        results.append(result)
    return results


def check_images(
    session: DfuSession, images: Sequence[BundleImage], *, observer: FlashObserver | None = None
) -> list[ImageComparison]:
    """Compare each image with the camera, writing nothing."""
    return [compare_image(session, image, observer=observer) for image in images]


def read_romfs_image(
    session: DfuSession, partition: Partition, *, observer: FlashObserver | None = None
) -> bytes:
    """The ROMFS image in `partition`, and no more: its header says how long it is, so
    a small image in the 24 MiB ROMFS0 costs a few blocks, not the whole partition."""
    observer = observer or Silent()
    blocks = session.read_blocks(partition, partition.size)  # read only as far as needed
    first = next(blocks)
    extent = romfs_extent(first)
    if extent is None:  # not a ROMFS (one block tells the parser so), or a huge header
        length = partition.size if is_romfs(first) else len(first)
    else:
        length = min(extent, partition.size)
    data = bytearray(first)
    observer.begin(f"read {partition.name}", length)
    try:
        while len(data) < length:
            data += next(blocks)
            observer.advance(min(len(data), length))
    finally:
        observer.end()
    return bytes(data[:length])


def load_recovery_key(data: bytes, source: str) -> bytes:
    problems = errors_in(check_key(data))
    if problems:
        raise UsageError(f"{source}: {problems[0].message}")
    return data


def recover(
    session: DfuSession,
    key: bytes,
    *,
    timeout_ms: int = RECOVERY_TIMEOUT_MS,
    observer: FlashObserver | None = None,
) -> float:
    """§7: the key to RECOVERY block 0, then the manifest. Returns the seconds it took."""
    observer = observer or Silent()
    partition = partition_for_role(Role.KEY)
    started = time.perf_counter()
    observer.begin("recovery (chip erase)", len(key))
    try:
        session.download(partition, key, timeout_ms=timeout_ms, progress=observer.advance)
    finally:
        observer.end()
    return time.perf_counter() - started


def erase_filesystem(session: DfuSession) -> None:
    """Wipe the internal FAT filesystem as OpenMV IDE does: one zero block to RWFS."""
    session.download(partition_by_name("RWFS"), bytes(RWFS_ERASE_PAYLOAD_SIZE))


def roles_text(roles: Iterable[Role]) -> str:
    return ",".join(role.value for role in roles)
