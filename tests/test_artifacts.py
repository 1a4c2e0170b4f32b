"""Firmware checks, containers (Intel HEX, DFU suffix), the key, and recognition."""

from __future__ import annotations

import contextlib
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ae3tools.board import RECOVERY_KEY, Role, partition_for_role
from ae3tools.findings import Ae3Error, UsageError
from ae3tools.formats.artifact import examine, load_artifact
from ae3tools.formats.dfu_suffix import has_suffix, split_suffix
from ae3tools.formats.firmware import check_firmware, core_of
from ae3tools.formats.intel_hex import parse_hex
from ae3tools.formats.key import check_key, make_key_file
from tests.conftest import FIXTURES

GOOD = FIXTURES / "good"
HP = (GOOD / "firmware_M55_HP.bin").read_bytes()
HE = (GOOD / "firmware_M55_HE.bin").read_bytes()


def codes(findings: object) -> set[str]:
    return {f.code for f in findings}  # type: ignore[attr-defined]


def vectors(sp: int, reset: int, size: int = 1024) -> bytes:
    return struct.pack("<II", sp, reset) + bytes(size - 8)


# ------------------------------------------------------------------ firmware


def test_good_firmware_passes_and_knows_its_core() -> None:
    assert check_firmware(HP, Role.HP) == [] and core_of(HP) is Role.HP
    assert check_firmware(HE, Role.HE) == [] and core_of(HE) is Role.HE


def test_wrong_core_says_so() -> None:
    (finding,) = check_firmware(HE, Role.HP)
    assert finding.code == "FW_WRONG_CORE"
    assert "HE firmware" in finding.message and "alt 2" in finding.message
    assert codes(check_firmware(HP, Role.HE)) == {"FW_WRONG_CORE"}


@pytest.mark.parametrize(
    ("image", "code"),
    [
        (b"", "FW_EMPTY"),
        (b"\x00" * 4, "FW_NO_VECTORS"),
        (b"\xff" * 64, "FW_ERASED"),
        (vectors(0x20001000, 0x80020400), "FW_NOT_THUMB"),
        (vectors(0x20001000, 0x10000001), "FW_BAD_RESET_VECTOR"),
        (vectors(0x20001000, 0x802F0001), "FW_RESET_PAST_END"),
        (vectors(0x90000000, 0x80020101), "FW_BAD_STACK"),
        (vectors(0x20001000, 0x80020101, 3 * 1024 * 1024 + 16), "FW_TOO_BIG"),
    ],
)
def test_firmware_errors(image: bytes, code: str) -> None:
    assert code in codes(check_firmware(image, Role.HP))


def test_firmware_warnings() -> None:
    assert codes(check_firmware(vectors(0x20001000, 0x80020101, 1000), Role.HP)) == {
        "FW_NOT_PADDED"
    }
    assert codes(check_firmware(vectors(0x20001004, 0x80020101), Role.HP)) == {"FW_STACK_ALIGNMENT"}


def test_he_partition_limit_is_0x15e000() -> None:
    he = partition_for_role(Role.HE)
    exact = vectors(0x20001000, he.start | 1, he.size)
    assert check_firmware(exact, Role.HE) == []
    assert "FW_TOO_BIG" in codes(check_firmware(exact + bytes(16), Role.HE))


# ------------------------------------------------------------------ containers


def test_objcopy_hex_equals_the_binary() -> None:
    image = parse_hex((FIXTURES / "containers" / "firmware_M55_HP.hex").read_bytes())
    assert image.partition.name == "HP" and image.data == HP
    romfs1 = parse_hex((FIXTURES / "containers" / "romfs1.hex").read_bytes())
    assert romfs1.partition.name == "ROMFS1"
    assert romfs1.data == (GOOD / "romfs1.img").read_bytes()


def objcopy_hex(source: Path, address: int, output: Path) -> bytes:
    """Intel HEX of `source` placed at `address`, written by binutils (a peer tool)."""
    subprocess.run(
        [
            "objcopy",
            "-I",
            "binary",
            "-O",
            "ihex",
            "--change-addresses",
            hex(address),
            str(source),
            str(output),
        ],
        check=True,
    )
    return output.read_bytes()


def test_hex_outside_one_partition_is_refused(tmp_path: Path) -> None:
    straddle = objcopy_hex(GOOD / "firmware_M55_HE.bin", 0x8031FF00, tmp_path / "x.hex")
    with pytest.raises(Ae3Error, match="not inside one AE3 partition"):
        parse_hex(straddle)


def test_hex_gap_is_zero_filled_from_the_partition_base(tmp_path: Path) -> None:
    # objcopy places the image 256 bytes into HP: the bytes before it are zeros.
    shifted = objcopy_hex(GOOD / "firmware_M55_HP.bin", 0x80020100, tmp_path / "shifted.hex")
    assert parse_hex(shifted).data == bytes(256) + HP


def test_dfu_suffix_from_dfu_util() -> None:
    raw = (FIXTURES / "containers" / "firmware_M55_HE.dfu").read_bytes()
    assert has_suffix(raw)
    payload, suffix, findings = split_suffix(raw)
    assert payload == HE and findings == []
    assert (suffix.id_vendor, suffix.id_product) == (0x37C5, 0x96E3)


@pytest.mark.skipif(shutil.which("dfu-suffix") is None, reason="dfu-util not installed")
def test_dfu_suffix_crc_agrees_with_dfu_util_check(tmp_path: Path) -> None:
    # dfu-suffix -c verifies a suffix; we agree with it on a good and a corrupt file.
    good = FIXTURES / "containers" / "firmware_M55_HE.dfu"
    bad = FIXTURES / "bad" / "corrupt-crc.dfu"
    ok = subprocess.run(["dfu-suffix", "-c", str(good)], capture_output=True, text=True)
    broken = subprocess.run(["dfu-suffix", "-c", str(bad)], capture_output=True, text=True)
    assert ok.returncode == 0 and broken.returncode != 0
    assert split_suffix(good.read_bytes())[2] == []
    assert codes(split_suffix(bad.read_bytes())[2]) == {"DFU_SUFFIX_CRC"}


def test_foreign_suffix_is_refused() -> None:
    raw = (FIXTURES / "containers" / "foreign-device.dfu").read_bytes()
    assert codes(split_suffix(raw)[2]) == {"DFU_SUFFIX_DEVICE"}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_hex_loader_fuzz_raises_only_our_error(data: bytes) -> None:
    text = b":" + data
    with contextlib.suppress(Ae3Error):
        parse_hex(text)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted((FIXTURES / "containers").glob("*.hex"))),
    st.lists(
        st.tuples(st.integers(0, 1 << 20), st.sampled_from(b"0123456789ABCDEF:\nZ")), max_size=4
    ),
)
def test_hex_loader_mutation_fuzz(path: Path, edits: list[tuple[int, int]]) -> None:
    raw = bytearray(path.read_bytes()[:2000])
    for position, value in edits:
        raw[position % len(raw)] = value
    with contextlib.suppress(Ae3Error):
        parse_hex(bytes(raw))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.binary(min_size=8, max_size=8))
def test_suffix_and_examine_fuzz(body: bytes, tail: bytes) -> None:
    raw = body + tail + b"UFD\x10" + tail[:4]
    assert has_suffix(raw)
    split_suffix(raw)
    examine(raw, source="fuzz.dfu")
    examine(body, source="fuzz.bin")


# ------------------------------------------------------------------ key


def test_key_file_matches_openmv_tool() -> None:
    key = make_key_file()
    assert len(key) == 4096 and key[:16] == RECOVERY_KEY and not any(key[16:])
    assert key == (GOOD / "key.bin").read_bytes()
    assert check_key(key) == []
    assert codes(check_key(bytes(range(16)) + bytes(4080))) == {"KEY_WRONG"}
    assert codes(check_key(RECOVERY_KEY)) == {"KEY_SIZE"}
    assert codes(check_key(RECOVERY_KEY[:8])) == {"KEY_TOO_SHORT"}


# ------------------------------------------------------------------ recognition


@pytest.mark.parametrize(
    ("name", "description", "alt", "container"),
    [
        ("good/firmware_M55_HP.bin", "HP firmware", 1, "bin"),
        ("good/firmware_M55_HE.bin", "HE firmware", 2, "bin"),
        ("good/romfs0.img", "ROMFS (ROMFS0)", 6, "bin"),
        ("good/romfs1.img", "ROMFS (ROMFS1)", 3, "bin"),
        ("good/key.bin", "recovery key", 7, "bin"),
        ("containers/firmware_M55_HP.hex", "HP firmware", 1, "ihex"),
        ("containers/romfs1.hex", "ROMFS (ROMFS1)", 3, "ihex"),
        ("containers/firmware_M55_HE.dfu", "HE firmware", 2, "dfu-suffix"),
    ],
)
def test_recognises_good_artifacts(name: str, description: str, alt: int, container: str) -> None:
    artifact = load_artifact(FIXTURES / name)
    assert artifact.ok, artifact.findings
    assert (artifact.description, artifact.partition.alt, artifact.container) == (  # type: ignore[union-attr]
        description,
        alt,
        container,
    )


def test_content_decides_not_the_name(tmp_path: Path) -> None:
    disguised = tmp_path / "firmware.bin"
    shutil.copy(GOOD / "romfs1.img", disguised)
    artifact = load_artifact(disguised)
    assert artifact.kind == "romfs" and artifact.role is None and artifact.ok
    offered = examine(HE, source="x.bin", role=Role.HP)
    assert codes(offered.findings) == {"FW_WRONG_CORE"}
    romfs_as_hp = examine((GOOD / "romfs1.img").read_bytes(), source="x.bin", role=Role.HP)
    assert "WRONG_ROLE" in codes(romfs_as_hp.findings) and not romfs_as_hp.ok
    key_named_romfs0 = examine(make_key_file(), source="romfs0.img")
    assert key_named_romfs0.kind == "key" and codes(key_named_romfs0.findings) == {"NAME_MISMATCH"}


def test_unreadable_input_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        load_artifact(tmp_path / "missing.bin")
    with pytest.raises(UsageError, match="is a directory"):
        load_artifact(tmp_path)
