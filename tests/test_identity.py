"""Firmware identity: the banner strings a build embeds (openmv-protocol.md §6.1), shown
by inspect, and an HP/HE pair from different builds warned about in a bundle."""

from __future__ import annotations

import json
from pathlib import Path

from ae3tools.board import Role, partition_for_role
from ae3tools.formats.firmware import firmware_identity
from tests.conftest import FIXTURES
from tests.test_bundle import manifest_of, rezip, with_manifest

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


def _bundle_with_banners(cli, tmp_path: Path) -> Path:
    good = tmp_path / "good"
    good.mkdir()
    for name in ("romfs0.img", "romfs1.img"):
        (good / name).write_bytes((GOOD / name).read_bytes())
    (good / "firmware_M55_HP.bin").write_bytes(with_banner(Role.HP, "v5.0.0"))
    (good / "firmware_M55_HE.bin").write_bytes(with_banner(Role.HE, "v5.0.0"))
    out = tmp_path / "release.zip"
    assert cli("bundle", "--from", good, "-o", out).code == 0
    return out


SAID = {"openmv": "v5.0.0", "micropython": "v1.25.0-r1", "board": "OpenMV-AE3"}


def test_the_manifest_records_what_the_firmware_says(cli, tmp_path: Path) -> None:
    bundle = _bundle_with_banners(cli, tmp_path)
    assert manifest_of(bundle)["firmware"] == {"hp": SAID, "he": SAID}
    assert cli("verify", bundle).code == 0
    plain = tmp_path / "plain.zip"
    assert cli("bundle", "--from", GOOD, "-o", plain).code == 0
    assert "firmware" not in manifest_of(plain)  # nothing to say: the manifest is as before


def test_a_manifest_lying_about_the_firmware_fails(cli, tmp_path: Path) -> None:
    bundle = _bundle_with_banners(cli, tmp_path)

    def claim_another_build(manifest: dict) -> None:  # type: ignore[type-arg]
        manifest["firmware"]["hp"]["openmv"] = "v9.9.9"

    forged = rezip(tmp_path / "forged.zip", with_manifest(bundle, claim_another_build))
    result = cli("verify", forged, "--json")
    assert result.code == 1
    assert "BUNDLE_FIRMWARE" in [e["code"] for e in json.loads(result.out)["errors"]]


def test_the_flash_report_says_what_was_flashed(cli, tmp_path: Path) -> None:
    bundle = _bundle_with_banners(cli, tmp_path)
    camera = tmp_path / "cam"
    result = cli("flash", bundle, "--virtual", camera, "--virtual-timing", "zero", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["firmware"] == {"hp": SAID, "he": SAID}
    table = cli("flash", bundle, "--virtual", camera, "--virtual-timing", "zero")
    assert "HP firmware: openmv v5.0.0, micropython v1.25.0-r1, board OpenMV-AE3" in table.out
