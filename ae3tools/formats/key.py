"""The MRAM recovery key file written to alt 7 (spec §7)."""

from __future__ import annotations

from ae3tools.board import RECOVERY_KEY, RECOVERY_KEY_FILE_SIZE, Role, partition_for_role
from ae3tools.findings import Finding, error, warning


def make_key_file() -> bytes:
    """Byte-identical to what OpenMV's tools/flash_recovery_key.py writes."""
    return RECOVERY_KEY + bytes(RECOVERY_KEY_FILE_SIZE - len(RECOVERY_KEY))


def looks_like_key(data: bytes) -> bool:
    """Whether the file starts with the AE3 recovery key itself.

    Shape alone (4096 bytes, mostly zeros) is not enough: a small firmware image can
    look like that. A file with another key is recognised only when offered as a key.
    """
    return data[: len(RECOVERY_KEY)] == RECOVERY_KEY


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
    elif any(data[len(RECOVERY_KEY) :]):
        findings.append(
            warning(
                "KEY_TRAILING_DATA",
                "bytes after the 16-byte key are not zero; OpenMV's key.bin is zeros there "
                "(the bootloader reads only the key)",
            )
        )
    if not findings and len(data) != RECOVERY_KEY_FILE_SIZE:
        findings.append(
            warning(
                "KEY_SIZE",
                f"{len(data)} bytes; OpenMV's key.bin is {RECOVERY_KEY_FILE_SIZE} "
                "(only the first 16 bytes matter)",
            )
        )
    return findings
