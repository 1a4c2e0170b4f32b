"""Recognise and validate any AE3 artifact: content decides what it is, names only hint.

`examine` is the one place that turns a file's bytes into the exact bytes a
partition receives (stripping a DFU suffix, converting Intel HEX) and runs the
checks for what those bytes turn out to be.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from ae3tools.board import (
    FIRMWARE_ROLES,
    PARTITIONS,
    ROMFS_ROLES,
    Partition,
    Role,
    partition_for_role,
)
from ae3tools.fileio import read_input
from ae3tools.findings import Ae3Error, Finding, error, errors_in, warning, warnings_in
from ae3tools.formats.dfu_suffix import has_suffix, split_suffix
from ae3tools.formats.firmware import FirmwareIdentity, check_firmware, core_of, firmware_identity
from ae3tools.formats.intel_hex import looks_like_hex, parse_hex
from ae3tools.formats.key import check_key, looks_like_key
from ae3tools.formats.romfs import RomfsImage, is_romfs, parse_romfs

# No AE3 image exceeds its partition; a HEX text of the largest is about 2.8x bigger.
MAX_INPUT_SIZE = 3 * max(p.size for p in PARTITIONS)

_NAME_HINTS: tuple[tuple[re.Pattern[str], Role], ...] = (
    (re.compile(r"romfs0"), Role.ROMFS0),
    (re.compile(r"romfs1|coprocessor-romfs"), Role.ROMFS1),  # openmv-ota: HE's ROMFS
    (re.compile(r"(?:^|[^a-z0-9])romfs\.img$"), Role.ROMFS0),  # openmv-ota: <BOARD>-romfs.img
    (re.compile(r"(?:^|[^a-z])hp(?:[^a-z]|$)"), Role.HP),
    (re.compile(r"(?:^|[^a-z])he(?:[^a-z]|$)"), Role.HE),
    (re.compile(r"(?:^|[^a-z])key(?:[^a-z]|$)"), Role.KEY),
)


def role_from_name(name: str) -> Role | None:
    lowered = name.lower()
    for pattern, role in _NAME_HINTS:
        if pattern.search(lowered):
            return role
    return None


@dataclass(frozen=True)
class Artifact:
    """A file as ae3tools understands it."""

    source: str  # the path as the user gave it
    kind: str  # "firmware", "romfs", "key" or "unknown"
    role: Role | None  # None when content cannot settle it (a small ROMFS with no hint)
    container: str  # "bin", "ihex" or "dfu-suffix"
    data: bytes = field(repr=False)  # exactly what the partition receives
    findings: tuple[Finding, ...]
    romfs: RomfsImage | None = field(default=None, repr=False)

    @property
    def partition(self) -> Partition | None:
        return partition_for_role(self.role) if self.role else None

    @property
    def ok(self) -> bool:
        return not errors_in(self.findings)

    @property
    def status(self) -> str:
        if not self.ok:
            return "error"
        return "warning" if warnings_in(self.findings) else "ok"

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @cached_property
    def identity(self) -> FirmwareIdentity | None:
        """A firmware image's embedded OpenMV, MicroPython and board names, if any."""
        return firmware_identity(self.data) if self.kind == "firmware" else None

    @property
    def description(self) -> str:
        if self.kind == "firmware" and self.role:
            shown = f" ({self.identity.describe()})" if self.identity else ""
            return f"{self.role.name} firmware{shown}"
        if self.kind == "romfs":
            layout = ", openmv-ota A/B" if self.romfs and self.romfs.ota_layout else ""
            where = self.role.name if self.role else "ROMFS0 or ROMFS1"
            return f"ROMFS{layout} ({where})"
        if self.kind == "key":
            return "recovery key"
        return "unknown"


def load_artifact(path: Path, role: Role | None = None) -> Artifact:
    """Read and examine one file. Raises Ae3Error only when the file cannot be read."""
    return examine(read_input(path, limit=MAX_INPUT_SIZE), source=str(path), role=role)


def examine(raw: bytes, *, source: str, role: Role | None = None) -> Artifact:
    """Recognise `raw` and validate it. `role`, when given, is what the user says it is."""
    name = Path(source).name
    if not raw:
        return Artifact(source, "unknown", role, "bin", b"", (error("EMPTY", "file is empty"),))

    container, data, findings, placed = "bin", raw, [], None
    if looks_like_hex(raw) or name.lower().endswith(".hex"):
        container = "ihex"
        try:
            hex_image = parse_hex(raw)
        except Ae3Error as exc:
            return Artifact(source, "unknown", role, container, b"", (error("HEX_BAD", str(exc)),))
        data, placed = hex_image.data, hex_image.partition
    elif has_suffix(raw):
        container = "dfu-suffix"
        data, _, suffix_findings = split_suffix(raw)
        findings.extend(suffix_findings)

    # What the user (or the HEX addresses) says this file is; the name is a weaker hint.
    offered = role or (placed.role if placed else None)
    if placed is not None and role is not None and placed.role is not role:
        findings.append(
            error(
                "HEX_WRONG_PARTITION",
                f"HEX addresses are in {placed.name}, but the file is offered as {role.name}",
            )
        )
    hint = role_from_name(name)
    kind, actual = _recognise(data, offered or hint)
    findings.extend(_validate(kind, actual, offered, hint, data))
    romfs = None
    if kind == "romfs":
        romfs = parse_romfs(data, partition=partition_for_role(actual) if actual else None)
        findings.extend(romfs.findings)
    return Artifact(source, kind, actual, container, data, tuple(findings), romfs)


def _recognise(data: bytes, expected: Role | None) -> tuple[str, Role | None]:
    """The artifact kind by content, and its role where content (or a hint) settles it."""
    if is_romfs(data):
        if expected in ROMFS_ROLES:
            return "romfs", expected
        if len(data) > partition_for_role(Role.ROMFS1).size:
            return "romfs", Role.ROMFS0
        return "romfs", None
    if looks_like_key(data):
        return "key", Role.KEY
    core = core_of(data)
    if core is not None:
        return "firmware", core
    if expected in FIRMWARE_ROLES:
        return "firmware", expected
    if expected is Role.KEY:
        return "key", Role.KEY
    return "unknown", None


def _validate(
    kind: str, actual: Role | None, offered: Role | None, hint: Role | None, data: bytes
) -> list[Finding]:
    if kind == "unknown":
        return [
            error(
                "UNRECOGNISED",
                "not an AE3 firmware image, ROMFS image or recovery key "
                f"(starts with {data[:8].hex(' ')})",
            )
        ]
    what = {"firmware": "firmware", "romfs": "a ROMFS image", "key": "a recovery key"}[kind]
    shown = f"{what} ({actual.name})" if actual else what
    if (
        offered is not None
        and offered is not actual
        and not (kind == "firmware" and offered in FIRMWARE_ROLES)
    ):
        return [error("WRONG_ROLE", f"this is {shown}, offered as {offered.name}")]
    findings = []
    if kind == "firmware":
        # An HP/HE mix-up, even one only the file name shows, is the mistake that bricks
        # a flash: check_firmware reports it in the terms of the core it was offered as.
        core = offered or (hint if hint in FIRMWARE_ROLES else actual)
        assert core is not None
        return check_firmware(data, core)
    if hint is not None and actual is not None and hint is not actual:
        findings.append(
            warning("NAME_MISMATCH", f"the name suggests {hint.name}, the content is {shown}")
        )
    if kind == "key":
        findings.extend(check_key(data))
    return findings
