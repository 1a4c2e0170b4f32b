"""Cortex-M55 firmware images for the HP and HE cores: size and identity checks."""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from ae3tools.board import (
    FIRMWARE_ROLES,
    MRAM_WRITE_UNIT,
    RAM_REGIONS,
    Partition,
    Role,
    partition_for_role,
)
from ae3tools.findings import Finding, error, warning

VECTOR_TABLE_HEAD = struct.Struct("<II")  # initial SP, reset handler (ARMv8-M ARM, B3.30)
STACK_ALIGNMENT = 8  # AAPCS: the stack is 8-byte aligned at public interfaces


@dataclass(frozen=True)
class VectorTable:
    initial_sp: int
    reset: int

    @property
    def reset_address(self) -> int:
        return self.reset & ~1  # bit 0 is the Thumb bit, not part of the address


def read_vector_table(data: bytes) -> VectorTable | None:
    if len(data) < VECTOR_TABLE_HEAD.size:
        return None
    return VectorTable(*VECTOR_TABLE_HEAD.unpack_from(data))


def core_of(data: bytes) -> Role | None:
    """Which core's firmware this is, judged by where its reset handler lives."""
    table = read_vector_table(data)
    if table is None:
        return None
    for role in FIRMWARE_ROLES:
        if partition_for_role(role).maps(table.reset_address):
            return role
    return None


def check_firmware(data: bytes, role: Role) -> list[Finding]:
    """Check an image offered as `role` (HP or HE) against that core's partition."""
    partition = partition_for_role(role)
    findings: list[Finding] = []
    if not data:
        return [error("FW_EMPTY", "file is empty")]
    if len(data) > partition.size:
        findings.append(
            error(
                "FW_TOO_BIG",
                f"{len(data)} bytes; partition {partition.name} (alt {partition.alt}) "
                f"holds {partition.size}",
            )
        )
    if len(data) % MRAM_WRITE_UNIT:
        findings.append(
            warning(
                "FW_NOT_PADDED",
                f"{len(data)} bytes is not a multiple of {MRAM_WRITE_UNIT}; "
                "OpenMV builds pad firmware to 16",
            )
        )
    table = read_vector_table(data)
    if table is None:
        findings.append(error("FW_NO_VECTORS", "too short to hold a vector table"))
        return findings
    findings.extend(_check_vectors(table, len(data), partition, role))
    return findings


def _check_vectors(
    table: VectorTable, size: int, partition: Partition, role: Role
) -> list[Finding]:
    if table.initial_sp == table.reset == 0xFFFFFFFF:
        return [error("FW_ERASED", "starts with erased flash (FF), not a vector table")]
    findings: list[Finding] = []
    actual = core_of(VECTOR_TABLE_HEAD.pack(table.initial_sp, table.reset))
    if actual is not None and actual is not role:
        other = partition_for_role(actual)
        findings.append(
            error(
                "FW_WRONG_CORE",
                f"this is {actual.name} firmware (reset handler 0x{table.reset:08x} is in "
                f"{other.name}), offered as {role.name}: it belongs at alt {other.alt}",
            )
        )
    elif actual is None:
        findings.append(
            error(
                "FW_BAD_RESET_VECTOR",
                f"reset handler 0x{table.reset:08x} is outside partition {partition.name} "
                f"(0x{partition.start:08x}-0x{partition.limit:08x}): not {role.name} firmware",
            )
        )
    elif table.reset_address >= partition.start + size:
        findings.append(
            error(
                "FW_RESET_PAST_END",
                f"reset handler 0x{table.reset:08x} lies past the end of the image",
            )
        )
    if not table.reset & 1:
        findings.append(
            error("FW_NOT_THUMB", f"reset handler 0x{table.reset:08x} lacks the Thumb bit")
        )
    if not any(region.holds_stack_top(table.initial_sp) for region in RAM_REGIONS):
        findings.append(
            error("FW_BAD_STACK", f"initial stack pointer 0x{table.initial_sp:08x} is not in RAM")
        )
    elif table.initial_sp % STACK_ALIGNMENT:
        findings.append(
            warning(
                "FW_STACK_ALIGNMENT",
                f"initial stack pointer 0x{table.initial_sp:08x} is not 8-byte aligned",
            )
        )
    return findings


# openmv-protocol.md §6.1: the REPL banner is compiled in as string literals:
# MICROPY_BANNER_NAME_AND_VERSION, "OpenMV <git tag>; MicroPython <git tag>", and
# MICROPY_BANNER_MACHINE, "<board name> with <MCU name>" ("OpenMV-AE3 with AE302F80F55D5AE").
# Each part is bounded, so a crafted image costs one linear scan.
_BANNER = re.compile(rb"OpenMV (v?[0-9][!-~]{0,40}?); MicroPython (v?[0-9][!-:<-~]{0,40})")
_MACHINE = re.compile(rb"(OpenMV-[A-Za-z0-9_-]{1,32}) with ([A-Z0-9]{4,32})")


@dataclass(frozen=True)
class FirmwareIdentity:
    """What a firmware image says it is, from the version strings the build embeds."""

    openmv: str | None
    micropython: str | None
    board: str | None

    def describe(self) -> str:
        parts = [
            f"OpenMV {self.openmv}" if self.openmv else "",
            f"MicroPython {self.micropython}" if self.micropython else "",
            f"board {self.board}" if self.board else "",
        ]
        return ", ".join(part for part in parts if part)

    def as_dict(self) -> dict[str, str | None]:
        return {"openmv": self.openmv, "micropython": self.micropython, "board": self.board}

    @property
    def openmv_version(self) -> tuple[int, ...] | None:
        """The OpenMV release as numbers ("v4.8.1" is (4, 8, 1)), for ordering."""
        numbers = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?", self.openmv or "")
        return tuple(int(n or 0) for n in numbers.groups()) if numbers else None


def firmware_identity(data: bytes) -> FirmwareIdentity | None:
    """The OpenMV and MicroPython versions and the board name in a firmware image, where
    the build embedded them; None when none of them is there."""
    banner = _BANNER.search(data)
    machine = _MACHINE.search(data)
    if banner is None and machine is None:
        return None
    return FirmwareIdentity(
        banner.group(1).decode() if banner else None,
        banner.group(2).decode() if banner else None,
        machine.group(1).decode() if machine else None,
    )


def identities(images: Mapping[Role, bytes]) -> dict[Role, FirmwareIdentity]:
    """The identity of each firmware image that has one, by role."""
    found = {}
    for role in FIRMWARE_ROLES:
        data = images.get(role)
        identity = firmware_identity(data) if data is not None else None
        if identity is not None:
            found[role] = identity
    return found


def build_mismatch(images: Mapping[Role, bytes]) -> list[Finding]:
    """A warning when the HP and HE images say they come from different builds."""
    found = identities(images)
    hp_id, he_id = (found.get(role) for role in FIRMWARE_ROLES)
    if hp_id is None or he_id is None:
        return []
    if (hp_id.openmv, hp_id.micropython) == (he_id.openmv, he_id.micropython):
        return []
    return [
        warning(
            "FW_BUILD_MISMATCH",
            f"HP and HE come from different builds (HP: {hp_id.describe()}; HE: "
            f"{he_id.describe()}); the cores expect one build",
        )
    ]
