"""The fault matrix: every fault the virtual AE3 can inject, at the first, a middle and
the last block of each fixture image. Shared by the in-process and the libusb runs."""

from __future__ import annotations

import json

from ae3tools.board import FLASH_ORDER, Role, partition_for_role
from tests.conftest import FIXTURES

BLOCK = 4096
MATRIX_TIMEOUT = 0.3  # the flasher's control timeout in seconds, so hangs end quickly

# Fault (without its place) -> words the one-line error must contain.
FAULTS = {
    "status:status=errWRITE": "errWRITE",
    "status:status=errADDRESS": "errADDRESS: the image does not fit",
    "vanish": "disconnected",
    "stall": "stalled",
    "hang": "did not answer",
    "slow:seconds=3": "did not answer",  # busy past the host's timeout
    "status:op=upload:status=errFILE": "errFILE",  # the read-back fails
}


def _matrix() -> list[tuple[str, str, int]]:
    cases = []
    for role in FLASH_ORDER:
        size = (FIXTURES / "good" / str(partition_for_role(role).image_name)).stat().st_size
        blocks = -(-size // BLOCK)
        for block in sorted({0, blocks // 2, blocks - 1}):
            cases.extend((role.value, fault, block) for fault in FAULTS)
    return cases


MATRIX = _matrix()


def fault_spec(role: str, fault: str, block: int) -> str:
    kind, *options = fault.split(":")
    alt = partition_for_role(Role(role)).alt
    return ":".join([kind, f"alt={alt}", f"block={block}", *options])


def assert_failed_cleanly(
    code: int, stdout: str, stderr: str, role: str, fault: str, block: int
) -> None:
    """Non-zero, the right sentence, the image and block named, nothing claimed."""
    where = (fault_spec(role, fault, block), stdout, stderr)
    assert code == 1, where
    report = json.loads(stdout)
    assert report["ok"] is False and role in report["remaining"], where
    assert all(i["role"] != role for i in report["images"]), where  # not claimed as flashed
    assert FAULTS[fault] in stderr, where
    assert f"block {block}" in stderr, where
    assert f"--only {','.join(report['remaining'])}" in stderr, where
