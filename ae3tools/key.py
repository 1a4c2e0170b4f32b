"""The MRAM recovery key file written to alt 7 (spec §7)."""

from __future__ import annotations

from ae3tools.board import RECOVERY_KEY, RECOVERY_KEY_FILE_SIZE, Role, partition_for_role
from ae3tools.findings import Finding, error, warning


def make_key_file() -> bytes:
    """Byte-identical to what OpenMV's tools/flash_recovery_key.py writes."""
    return RECOVERY_KEY + bytes(RECOVERY_KEY_FILE_SIZE - len(RECOVERY_KEY))


def looks_like_key(data: bytes) -> bool:
    """A key file's shape: 16 key bytes then zeros, 4096 bytes in all."""
    return (
        len(data) == RECOVERY_KEY_FILE_SIZE
        and any(data[: len(RECOVERY_KEY)])
        and not any(data[len(RECOVERY_KEY) :])
    ) or data[: len(RECOVERY_KEY)] == RECOVERY_KEY


def check_key(data: bytes) -> list[Finding]:
    """The bootloader checks only the first 16 bytes and needs wLength 16..4096 (spec §7)."""
    partition = partition_for_role(Role.KEY)
    findings = []
    if len(data) < len(RECOVERY_KEY):
        return [error("KEY_TOO_SHORT", f"{len(data)} bytes; the key is {len(RECOVERY_KEY)}")]
    if len(data) > partition.size:
        findings.append(
            error("KEY_TOO_BIG", f"{len(data)} bytes; alt {partition.alt} takes at most 4096")
        )
    if data[: len(RECOVERY_KEY)] != RECOVERY_KEY:
        findings.append(
            error(
                "KEY_WRONG",
                f"key {data[: len(RECOVERY_KEY)].hex()} is not the AE3 recovery key "
                f"{RECOVERY_KEY.hex()}",
            )
        )
    elif len(data) != RECOVERY_KEY_FILE_SIZE:
        findings.append(
            warning(
                "KEY_SIZE",
                f"{len(data)} bytes; OpenMV's key.bin is {RECOVERY_KEY_FILE_SIZE} "
                "(only the first 16 bytes matter)",
            )
        )
    return findings
