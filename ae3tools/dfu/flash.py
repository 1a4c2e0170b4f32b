"""Flash plans: verified bundle images onto a camera, read back, reset; recovery; FS wipe.

This layer decides what to write and in which order; `DfuSession` does the USB. It
reports through an observer and returns results: it never prints.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ae3tools.board import (
    BOOTLOADER_PID,
    RWFS_ERASE_PAYLOAD_SIZE,
    USB_VID,
    Partition,
    Role,
    partition_by_name,
    partition_for_role,
)
from ae3tools.bundle import BundleImage
from ae3tools.dfu.host import DeviceError, DfuSession
from ae3tools.findings import UsageError, errors_in
from ae3tools.key import check_key

# spec §7: recovery runs four chip erases inside one GETSTATUS; give it minutes, not 5 s.
RECOVERY_TIMEOUT_MS = 300_000


class FlashObserver(Protocol):
    def begin(self, label: str, total: int) -> None: ...

    def advance(self, done: int) -> None: ...

    def end(self) -> None: ...


class _Silent:
    def begin(self, label: str, total: int) -> None:
        pass

    def advance(self, done: int) -> None:
        pass

    def end(self) -> None:
        pass


@dataclass(frozen=True)
class ImageResult:
    role: Role
    partition: Partition
    length: int
    write_seconds: float
    verify_seconds: float | None  # None: read-back skipped (--no-verify)

    @property
    def verified(self) -> bool:
        return self.verify_seconds is not None

    def as_dict(self) -> dict[str, Any]:
        return {
            "role": self.role.value,
            "alt": self.partition.alt,
            "alt_name": self.partition.name,
            "bytes": self.length,
            "write_seconds": round(self.write_seconds, 4),
            "verify_seconds": None
            if self.verify_seconds is None
            else round(self.verify_seconds, 4),
            "seconds": round(self.write_seconds + (self.verify_seconds or 0), 4),
            "verified": self.verified,
        }


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


def flash_images(
    session: DfuSession,
    images: Sequence[BundleImage],
    *,
    verify: bool = True,
    observer: FlashObserver | None = None,
) -> list[ImageResult]:
    """Write each image (then read it back) in one session, in order.

    Raises FlashFailed at the first failure; nothing after it is attempted and the
    camera is not reset, so it stays in the bootloader for a re-run.
    """
    observer = observer or _Silent()
    results: list[ImageResult] = []
    for index, image in enumerate(images):
        partition = image.partition
        try:
            started = time.perf_counter()
            observer.begin(f"write {partition.name}", len(image.data))
            session.download(partition, image.data, progress=observer.advance)
            observer.end()
            written = time.perf_counter()
            checked: float | None = None
            if verify:
                observer.begin(f"verify {partition.name}", len(image.data))
                session.verify(partition, image.data, progress=observer.advance)
                observer.end()
                checked = time.perf_counter() - written
        except DeviceError as exc:
            observer.end()
            raise FlashFailed(exc, results, [i.role for i in images[index:]]) from None
        results.append(
            ImageResult(image.role, partition, len(image.data), written - started, checked)
        )
    return results


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
    observer = observer or _Silent()
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
