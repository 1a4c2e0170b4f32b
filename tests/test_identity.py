"""Firmware identity: the banner strings a build embeds (openmv-protocol.md §6.1), shown
by inspect, and an HP/HE pair from different builds warned about in a bundle."""

from __future__ import annotations

import json
from pathlib import Path

from ae3tools.board import Role, partition_for_role
from ae3tools.firmware import firmware_identity
from tests.conftest import FIXTURES

GOOD = FIXTURES / "good"


def with_banner(role: Role, openmv: str, micropython: str = "v1.25.0-r1") -> bytes:
    """A fixture firmware image with the banner strings placed in its body, as a
    build's .rodata holds them."""
    image = bytearray((GOOD / str(partition_for_role(role).image_name)).read_bytes())
    banner = f"OpenMV {openmv}; MicroPython {micropython}\0OpenMV-AE3 with AE302F80F55D5AE\0"
    image[0x2000 : 0x2000 + len(banner)] = banner.encode()
    return bytes(image)


def test_identity_from_the_banner() -> None:
    identity = firmware_identity(with_banner(Role.HP, "v4.7.0"))
    assert identity is not None
    assert (identity.openmv, identity.micropython, identity.board) == (
        "v4.7.0",
        "v1.25.0-r1",
        "OpenMV-AE3",
    )
    assert firmware_identity((GOOD / "firmware_M55_HP.bin").read_bytes()) is None


def test_a_crafted_image_costs_one_linear_scan() -> None:
    # Megabytes of near-misses: every attempt is bounded, nothing matches.
    assert firmware_identity(b"OpenMV v1" * 300_000) is None
    assert firmware_identity(b"OpenMV-" * 300_000) is None


def test_inspect_shows_the_identity(cli, tmp_path: Path) -> None:
    hp = tmp_path / "firmware_M55_HP.bin"
    hp.write_bytes(with_banner(Role.HP, "v5.0.0"))
    result = cli("inspect", hp, "--json")
    (row,) = json.loads(result.out)["files"]
    assert row["identity"] == {
        "openmv": "v5.0.0",
        "micropython": "v1.25.0-r1",
        "board": "OpenMV-AE3",
    }
    assert "HP firmware (OpenMV v5.0.0, MicroPython v1.25.0-r1" in cli("inspect", hp).out


def test_hp_and_he_from_different_builds_are_warned_about(cli, tmp_path: Path) -> None:
    hp, he = tmp_path / "firmware_M55_HP.bin", tmp_path / "firmware_M55_HE.bin"
    hp.write_bytes(with_banner(Role.HP, "v5.0.0"))
    he.write_bytes(with_banner(Role.HE, "v4.8.1"))
    out = tmp_path / "mixed.zip"
    result = cli("bundle", "--hp", hp, "--he", he, "--partial", "-o", out, "--json")
    assert result.code == 0, result.err  # a warning, not an error
    warnings = [w["code"] for w in json.loads(result.out)["warnings"]]
    assert warnings == ["FW_BUILD_MISMATCH"]
    he.write_bytes(with_banner(Role.HE, "v5.0.0"))
    same = cli("verify", out.with_name("same.zip"))
    assert (
        cli("bundle", "--hp", hp, "--he", he, "--partial", "-o", out.with_name("same.zip")).code
        == 0
    )
    same = cli("verify", out.with_name("same.zip"), "--json")
    assert json.loads(same.out)["warnings"] == []
