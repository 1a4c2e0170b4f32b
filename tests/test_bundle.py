"""Bundles: writing, reproducibility, verification, and hostile archives."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import stat
import zipfile
from pathlib import Path

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ae3tools.board import FLASH_ORDER, Role
from ae3tools.findings import Ae3Error
from ae3tools.release.bundle import (
    MANIFEST_NAME,
    ReleaseInfo,
    inputs_from_directory,
    read_bundle,
    write_bundle,
)
from tests.conftest import FIXTURES, ROOT
from tests.fullsize import make_full_size_set

GOOD = FIXTURES / "good"
SCHEMA = json.loads((ROOT / "ae3tools" / "release" / "bundle-manifest.schema.json").read_text())


@pytest.fixture(scope="module")
def good_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bundle") / "bundle.zip"
    write_bundle(path, inputs_from_directory(GOOD), ReleaseInfo(version="v4.7.0"))
    return path


def members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def rezip(path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return path


def manifest_of(path: Path) -> dict:
    return json.loads(members(path)[MANIFEST_NAME])


# ------------------------------------------------------------------ writing


def test_bundle_holds_the_images_in_flash_order(good_bundle: Path) -> None:
    images = read_bundle(good_bundle)
    assert [i.role for i in images] == list(FLASH_ORDER)
    for image in images:
        assert image.data == (GOOD / str(image.partition.image_name)).read_bytes()
    assert list(members(good_bundle)) == [
        "manifest.json",
        "firmware_M55_HP.bin",
        "firmware_M55_HE.bin",
        "romfs1.img",
        "romfs0.img",
    ]


def test_manifest_matches_the_documented_schema(good_bundle: Path) -> None:
    manifest = manifest_of(good_bundle)
    jsonschema.validate(manifest, SCHEMA)
    assert manifest["release"] == {"version": "v4.7.0"}
    assert manifest["flash_order"] == ["hp", "he", "romfs1", "romfs0"]
    assert [(i["alt"], i["alt_name"]) for i in manifest["images"]] == [
        (1, "HP"),
        (2, "HE"),
        (3, "ROMFS1"),
        (6, "ROMFS0"),
    ]
    assert any("ROMFS_MISALIGNED" in w for i in manifest["images"] for w in i["warnings"])


def test_same_inputs_give_a_byte_identical_zip(tmp_path: Path, good_bundle: Path) -> None:
    # Copies with other timestamps and modes: nothing of the input files' metadata leaks.
    copies = tmp_path / "copies"
    shutil.copytree(GOOD, copies)
    for path in copies.iterdir():
        path.chmod(0o600)
    again = tmp_path / "again.zip"
    write_bundle(again, inputs_from_directory(copies), ReleaseInfo(version="v4.7.0"))
    assert again.read_bytes() == good_bundle.read_bytes()
    with zipfile.ZipFile(again) as archive:
        for info in archive.infolist():
            assert info.date_time == (1980, 1, 1, 0, 0, 0)
            assert stat.S_IMODE(info.external_attr >> 16) == 0o644


def test_containers_are_normalised_to_partition_bytes(tmp_path: Path) -> None:
    out = tmp_path / "b.zip"
    write_bundle(
        out,
        {
            Role.HP: FIXTURES / "containers" / "firmware_M55_HP.hex",
            Role.HE: FIXTURES / "containers" / "firmware_M55_HE.dfu",
        },
        ReleaseInfo(),
        partial=True,
    )
    stored = members(out)
    assert stored["firmware_M55_HP.bin"] == (GOOD / "firmware_M55_HP.bin").read_bytes()
    assert stored["firmware_M55_HE.bin"] == (GOOD / "firmware_M55_HE.bin").read_bytes()
    assert [i["container"] for i in manifest_of(out)["images"]] == ["ihex", "dfu-suffix"]


def test_an_error_means_no_bundle(tmp_path: Path) -> None:
    out = tmp_path / "b.zip"
    with pytest.raises(Ae3Error, match=r"HE firmware.*no bundle written"):
        write_bundle(out, {Role.HP: GOOD / "firmware_M55_HE.bin"}, ReleaseInfo(), partial=True)
    with pytest.raises(Ae3Error, match="ROMFS image"):
        write_bundle(out, {Role.HE: GOOD / "romfs1.img"}, ReleaseInfo(), partial=True)
    assert list(tmp_path.iterdir()) == []


def test_full_size_set_bundles_and_verifies(tmp_path: Path) -> None:
    inputs = make_full_size_set(tmp_path / "set")
    out = tmp_path / "full.zip"
    write_bundle(out, inputs, ReleaseInfo())
    images = read_bundle(out)
    assert [len(i.data) for i in images] == [inputs[i.role].stat().st_size for i in images]
    assert max(len(i.data) for i in images) > 24 * 1024 * 1024 - 4096


# ------------------------------------------------------------------ hostile archives


def entries_of(path: Path) -> list[tuple[str | zipfile.ZipInfo, bytes]]:
    return list(members(path).items())


def with_manifest(path: Path, change) -> list[tuple[str | zipfile.ZipInfo, bytes]]:
    manifest = manifest_of(path)
    change(manifest)
    rest = [(n, d) for n, d in entries_of(path) if n != MANIFEST_NAME]
    return [(MANIFEST_NAME, json.dumps(manifest).encode()), *rest]


def symlink_member(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


HOSTILE = {
    "traversal": (lambda b: [*entries_of(b), ("../evil.bin", b"x")], "unsafe member name"),
    "absolute": (lambda b: [*entries_of(b), ("/etc/evil", b"x")], "unsafe member name"),
    "nested": (lambda b: [*entries_of(b), ("dir/evil", b"x")], "unsafe member name"),
    "duplicate": (lambda b: [*entries_of(b), ("romfs1.img", b"x")], "appears twice"),
    "symlink": (
        lambda b: [*entries_of(b), (symlink_member("link"), b"/etc/passwd")],
        "not a regular file",
    ),
    "corrupt manifest": (
        lambda b: [(MANIFEST_NAME, b"{not json"), *entries_of(b)[1:]],
        "not valid JSON",
    ),
    "unknown version": (
        lambda b: with_manifest(b, lambda m: m.update(format_version=2)),
        "format_version 2",
    ),
    "other format": (lambda b: with_manifest(b, lambda m: m.update(format="zip")), "format"),
    "wrong alt": (
        lambda b: with_manifest(b, lambda m: m["images"][0].update(alt=0)),
        "goes to alt 0",
    ),
    "unlisted": (lambda b: [*entries_of(b), ("extra.bin", b"x")], "not in the manifest"),
    "missing": (lambda b: [e for e in entries_of(b) if e[0] != "romfs0.img"], "member missing"),
    "hash": (
        lambda b: [
            (n, (d[:-1] + bytes([d[-1] ^ 1])) if n == "romfs0.img" else d) for n, d in entries_of(b)
        ],
        "sha256 does not match",
    ),
    "size": (
        lambda b: [(n, d + b"\0" if n == "romfs0.img" else d) for n, d in entries_of(b)],
        "manifest says",
    ),
    # The manifest against its schema: type errors are reported as such (issue 8).
    "wrong type": (
        lambda b: with_manifest(b, lambda m: m["images"][0].update(warnings=5)),
        "images[0].warnings: 5 is not of type 'array'",
    ),
    "deep JSON": (
        lambda b: [(MANIFEST_NAME, b"[" * 100_000 + b"]" * 100_000), *entries_of(b)[1:]],
        "not valid JSON",
    ),
    "huge number": (
        lambda b: [
            (MANIFEST_NAME, b'{"format_version": ' + b"9" * 5000 + b"}"),
            *entries_of(b)[1:],
        ],
        "not valid JSON",
    ),
    "upper-case sha256": (
        lambda b: with_manifest(
            b, lambda m: m["images"][0].update(sha256=m["images"][0]["sha256"].upper())
        ),
        "images[0].sha256",
    ),
    "float version": (
        lambda b: with_manifest(b, lambda m: m.update(format_version=1.0)),
        "format_version 1.0",
    ),
    "missing key": (
        lambda b: with_manifest(b, lambda m: m.pop("flash_order")),
        "'flash_order' is a required property",
    ),
    "no reset": (
        lambda b: with_manifest(b, lambda m: m.update(reset_after_last=False)),
        "reset_after_last",
    ),
    "dot-slash name": (
        lambda b: with_manifest(
            b, lambda m: m["images"][0].update(file="./" + m["images"][0]["file"])
        ),
        "images[0].file",
    ),
    "NUL in name": (
        lambda b: with_manifest(b, lambda m: m["images"][0].update(file="hp\u0000.bin")),
        "images[0].file",
    ),
    "order contradicts flash_order": (
        lambda b: with_manifest(b, lambda m: m.update(flash_order=m["flash_order"][::-1])),
        "contradicts",
    ),
}


@pytest.mark.filterwarnings("ignore:Duplicate name")  # the duplicate case is built on purpose
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archives_are_refused(case: str, good_bundle: Path, tmp_path: Path, cli) -> None:
    make, words = HOSTILE[case]
    hostile = rezip(tmp_path / "hostile.zip", make(good_bundle))
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(Ae3Error, match=re.escape(words)):
        read_bundle(hostile)
    result = cli("verify", hostile)
    assert result.code == 1 and words.split()[0] in result.out
    report = json.loads(cli("verify", "--json", hostile).out)
    assert report["ok"] is False
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


def test_a_bundle_without_its_manifest_is_only_a_release_zip(
    good_bundle: Path, tmp_path: Path, cli
) -> None:
    """With no manifest.json, the zip reads as an OpenMV flat release zip: the library's
    bundle reader refuses it, and the CLI checks its images but says their provenance is
    unknown; --key refuses it (it cannot be signed)."""
    stripped = rezip(tmp_path / "stripped.zip", entries_of(good_bundle)[1:])
    with pytest.raises(Ae3Error, match=re.escape("no manifest.json")):
        read_bundle(stripped)
    result = cli("verify", stripped)
    assert result.code == 0 and "provenance unknown" in result.out
    assert cli("keypair", "-o", tmp_path / "k.pem").code == 0
    assert cli("verify", stripped, "--key", tmp_path / "k.pub.pem").code == 1


def test_zip_bomb_is_refused_without_inflating(good_bundle: Path, tmp_path: Path) -> None:
    # 64 MiB of zeros deflate to ~64 KiB; the member claims to be ROMFS1 (1 MiB).
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries_of(good_bundle):
            archive.writestr(name, data if name != "romfs1.img" else bytes(64 << 20))
    with pytest.raises(Ae3Error, match="declares 67108864 bytes"):
        read_bundle(bomb)


def test_lying_size_header_reads_at_most_limit_plus_one(good_bundle: Path, tmp_path: Path) -> None:
    bomb = tmp_path / "liar.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries_of(good_bundle):
            archive.writestr(name, data if name != "romfs1.img" else bytes(8 << 20))
    raw = bytearray(bomb.read_bytes())
    # Shrink romfs1.img's declared size in its central directory entry (size at +24).
    entry = raw.find(b"PK\x01\x02")
    while raw[entry + 46 : entry + 56] != b"romfs1.img":
        entry = raw.find(b"PK\x01\x02", entry + 4)
    raw[entry + 24 : entry + 28] = (1000).to_bytes(4, "little")
    bomb.write_bytes(bytes(raw))
    with pytest.raises(Ae3Error):
        read_bundle(bomb)


def test_not_a_zip_and_missing_file(tmp_path: Path, cli) -> None:
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(Ae3Error, match="not a readable zip"):
        read_bundle(junk)
    assert cli("verify", junk).code == 1
    result = cli("verify", tmp_path / "gone.zip")
    assert result.code == 2 and "gone.zip: no such file" in result.err


@settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    flips=st.lists(st.tuples(st.integers(0, 1 << 24), st.integers(1, 255)), min_size=1, max_size=3)
)
def test_byte_flips_are_caught_or_harmless(
    good_bundle: Path, tmp_path: Path, flips: list[tuple[int, int]]
) -> None:
    original = {i.role: i.data for i in read_bundle(good_bundle)}
    raw = bytearray(good_bundle.read_bytes())
    for position, mask in flips:
        raw[position % len(raw)] ^= mask
    mutated = tmp_path / "flipped.zip"
    mutated.write_bytes(bytes(raw))
    try:
        images = read_bundle(mutated)
    except Ae3Error:
        return
    # Accepted: then every image is exactly what was bundled (the flip hit zip slack).
    assert {i.role: i.data for i in images} == original


# ------------------------------------------------------------------ CLI


def test_bundle_and_verify_commands(cli, tmp_path: Path) -> None:
    out = tmp_path / "b.zip"
    result = cli(
        "bundle", "--from", GOOD, "--release", "v4.7.0", "--git-revision", "abc123", "-o", out
    )
    assert result.code == 0 and "verified" in result.out
    assert cli("bundle", "--from", GOOD, "-o", out).code == 2  # exists
    verify = cli("verify", "--json", out)
    data = json.loads(verify.out)
    assert verify.code == 0 and data["ok"] and data["release"]["git_revision"] == "abc123"
    assert [i["role"] for i in data["images"]] == ["hp", "he", "romfs1", "romfs0"]
    assert all(0 < i["use_percent"] < 100 for i in data["images"])
    inspect = cli("inspect", "--json", out)
    assert json.loads(inspect.out)["bundles"] == [data]


def test_bundle_json_reports_the_archive_digest(cli, tmp_path: Path) -> None:
    out = tmp_path / "b.zip"
    result = json.loads(cli("bundle", "--from", GOOD, "-o", out, "--json").out)
    assert result["bundle_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert result["size"] == out.stat().st_size and result["ok"]


def test_bundle_subset_and_explicit_override(cli, tmp_path: Path) -> None:
    out = tmp_path / "hp.zip"
    assert (
        cli(
            "bundle",
            "--hp",
            FIXTURES / "containers" / "firmware_M55_HP.hex",
            "-o",
            out,
            "--partial",
        ).code
        == 0
    )
    assert [i.role for i in read_bundle(out)] == [Role.HP]
    assert manifest_of(out)["partial"] is True


def test_bundle_of_fewer_than_four_images_must_be_asked_for(cli, tmp_path: Path) -> None:
    out = tmp_path / "hp.zip"
    result = cli("bundle", "--hp", GOOD / "firmware_M55_HP.bin", "-o", out)
    assert (
        result.code == 2 and "--he, --romfs1, --romfs0" in result.err and "--partial" in result.err
    )
    assert not out.exists()
    full = tmp_path / "full.zip"
    assert cli("bundle", "--from", GOOD, "-o", full).code == 0
    assert "partial" not in manifest_of(full)


def test_bundle_refusals_are_one_line(cli, tmp_path: Path) -> None:
    result = cli(
        "bundle", "--hp", GOOD / "firmware_M55_HE.bin", "-o", tmp_path / "x.zip", "--partial"
    )
    assert result.code == 1 and "firmware_M55_HE.bin" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert not (tmp_path / "x.zip").exists()
    assert cli("bundle", "-o", tmp_path / "x.zip", "--partial").code == 2
    assert cli("bundle", "--from", tmp_path, "-o", tmp_path / "x.zip").code == 2
    assert cli("bundle", "--hp", tmp_path / "nope.bin", "--partial").code == 2


def test_build_date_now_honours_source_date_epoch(cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    out = tmp_path / "b.zip"
    assert cli("bundle", "--from", GOOD, "--build-date", "now", "-o", out).code == 0
    assert manifest_of(out)["release"]["build_date"] == "2023-11-14T22:13:20+00:00"


def test_bundle_help_has_example(cli) -> None:
    for command in ("bundle", "verify"):
        assert "Example:" in cli(command, "--help").out
