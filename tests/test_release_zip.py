"""OpenMV release zips as input: both layouts, made the way OpenMV's CI makes them
(Info-ZIP `zip -r` of a folder per board, `zip -r -j` for a development build), another
board's zip, and the hostile-archive defences of the one archive reader."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import warnings
import zipfile
from pathlib import Path

import pytest

from ae3tools.board import Role, partition_for_role
from ae3tools.release.bundle import read_bundle
from ae3tools.virtual.memory import partition_image
from tests.conftest import FIXTURES

GOOD = FIXTURES / "good"
IMAGES = ["firmware_M55_HP.bin", "firmware_M55_HE.bin", "romfs1.img", "romfs0.img"]
ZIP = shutil.which("zip")


@pytest.fixture(autouse=True)
def zero_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AE3TOOLS_VIRTUAL_TIMING", "zero")
    monkeypatch.delenv("AE3TOOLS_VIRTUAL_FAULTS", raising=False)


def board_folder(root: Path, name: str = "OPENMV_AE3") -> Path:
    """The build's bin directory as CI moves it (openmv-releases.md §1, §2)."""
    folder = root / name
    folder.mkdir(parents=True)
    for image in IMAGES:
        shutil.copy(GOOD / image, folder / image)
    (folder / "bootloader.bin").write_bytes(bytes(range(256)) * 64)
    (folder / "bootloader.elf").write_bytes(b"\x7fELF")
    (folder / "firmware_M55_HP.elf").write_bytes(b"\x7fELF")
    (folder / "firmware.toc").write_bytes(b"TOC" * 10)
    (folder / "firmware_pad.toc").write_bytes(bytes(8192 - 30) + b"TOC" * 10)
    (folder / "romfs0.stamp").touch()
    return folder


def make_zip(source: Path, out: Path, *, flat: bool) -> Path:
    """`zip -r ../firmware_vX.zip *` or `zip -r -j firmware_T.zip T` (§1)."""
    if ZIP is not None:
        if flat:
            subprocess.run([ZIP, "-q", "-r", "-j", str(out), str(source)], check=True)
        else:
            names = sorted(p.name for p in source.iterdir())
            subprocess.run([ZIP, "-q", "-r", str(out), *names], check=True, cwd=source)
        return out
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(source.rglob("*")):
            arcname = path.name if flat else str(path.relative_to(source))
            if path.is_dir() and not flat:
                archive.write(path, arcname + "/")
            elif path.is_file():
                archive.write(path, arcname)
    return out


@pytest.fixture
def tagged(tmp_path: Path) -> Path:
    firmware = tmp_path / "firmware"
    board_folder(firmware)
    (firmware / "OPENMV4").mkdir()
    (firmware / "OPENMV4" / "firmware.bin").write_bytes(b"another board")
    (firmware / "CYW4343").mkdir()
    (firmware / "CYW4343" / "cyw4343_7_45_98_102.bin").write_bytes(b"wifi")
    return make_zip(firmware, tmp_path / "firmware_v5.0.0.zip", flat=False)


@pytest.fixture
def flat(tmp_path: Path) -> Path:
    folder = board_folder(tmp_path / "dev")
    return make_zip(folder, tmp_path / "firmware_OPENMV_AE3.zip", flat=True)


def assert_camera_holds_the_fixtures(camera: Path) -> None:
    for name in IMAGES:
        role = next(r for r in Role if partition_for_role(r).image_name == name)
        data = (GOOD / name).read_bytes()
        assert partition_image(camera, role).read_bytes()[: len(data)] == data


@pytest.mark.parametrize("layout", ["tagged", "flat"])
def test_flash_a_release_zip_directly(cli, request, tmp_path: Path, layout: str) -> None:
    release: Path = request.getfixturevalue(layout)
    camera = tmp_path / "cam"
    result = cli("flash", release, "--virtual", camera, "--virtual-mode", "app", "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    source = report["source"]
    assert source["kind"] == "openmv-release" and source["layout"] == layout
    assert "unknown" in source["provenance"]
    left = {item["member"].split("/")[-1] or item["member"] for item in source["left_alone"]}
    assert {"bootloader.bin", "firmware_pad.toc", "bootloader.elf", "romfs0.stamp"} <= left
    assert [i["role"] for i in report["images"]] == ["hp", "he", "romfs1", "romfs0"]
    assert_camera_holds_the_fixtures(camera)


def test_the_text_output_says_what_was_and_was_not_verified(cli, tagged: Path, tmp_path) -> None:
    result = cli("flash", tagged, "--virtual", tmp_path / "cam")
    assert result.code == 0, result.err
    assert "provenance unknown" in result.err and f"bundle --from {tagged}" in result.err
    assert "left alone: OPENMV_AE3/bootloader.bin: the bootloader: never written" in result.err
    plan = cli("flash", tagged, "--dry-run").out
    assert "-a 0" not in plan and "-a 4" not in plan  # neither BOOT nor the TOC


def test_verify_and_bundle_from_a_release_zip(cli, tagged: Path, tmp_path: Path) -> None:
    checked = cli("verify", tagged, "--json")
    assert checked.code == 0, checked.err
    assert json.loads(checked.out)["source"]["folder"] == "OPENMV_AE3"
    bundle = tmp_path / "bundle.zip"
    made = cli("bundle", "--from", tagged, "-o", bundle, "--release", "v5.0.0")
    assert made.code == 0, made.err
    images = {image.role: image.data for image in read_bundle(bundle)}
    assert images[Role.HP] == (GOOD / "firmware_M55_HP.bin").read_bytes()
    assert set(images) == {Role.HP, Role.HE, Role.ROMFS1, Role.ROMFS0}


def test_a_release_zip_is_never_the_bundle_it_makes(cli, tagged: Path, tmp_path: Path) -> None:
    """`bundle --from rel.zip -o rel.zip --force` replaced the release (its bootloader and
    other boards lost): an input is never an output, --force or not; nor is the key."""
    before = tagged.read_bytes()
    result = cli("bundle", "--from", tagged, "-o", tagged, "--force")
    assert result.code == 2 and "also an input" in result.err
    assert tagged.read_bytes() == before
    key = tmp_path / "release.pem"
    assert cli("keypair", "-o", key).code == 0
    signed = key.read_bytes()
    result = cli("bundle", "--from", tagged, "--sign", key, "-o", key, "--force")
    assert result.code == 2 and key.read_bytes() == signed


def test_inspect_a_release_zip(cli, flat: Path) -> None:
    result = cli("inspect", flat, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["source"]["layout"] == "flat" and len(report["images"]) == 4


def test_a_release_for_another_board_is_refused(cli, tmp_path: Path) -> None:
    firmware = tmp_path / "firmware"
    (firmware / "OPENMV4").mkdir(parents=True)
    (firmware / "OPENMV4" / "firmware.bin").write_bytes(b"x")
    (firmware / "WINC1500").mkdir()
    (firmware / "WINC1500" / "winc.bin").write_bytes(b"y")
    other = make_zip(firmware, tmp_path / "firmware_v4.8.1.zip", flat=False)
    camera = tmp_path / "cam"
    result = cli("flash", other, "--virtual", camera)
    assert result.code == 1 and "a release for OPENMV4, with no OPENMV_AE3 folder" in result.err
    dev = make_zip(firmware / "OPENMV4", tmp_path / "firmware_OPENMV4.zip", flat=True)
    result = cli("flash", dev, "--virtual", camera)
    assert result.code == 1 and "holds none of the AE3 images" in result.err
    assert not camera.exists()


def test_an_image_with_an_error_stops_everything(cli, tmp_path: Path) -> None:
    folder = board_folder(tmp_path / "dev")
    shutil.copy(GOOD / "firmware_M55_HE.bin", folder / "firmware_M55_HP.bin")  # HE as HP
    release = make_zip(folder, tmp_path / "firmware_OPENMV_AE3.zip", flat=True)
    camera = tmp_path / "cam"
    result = cli("flash", release, "--virtual", camera)
    assert result.code == 1 and "firmware_M55_HP.bin" in result.err and not camera.exists()
    assert cli("verify", release).code == 1


def test_key_refuses_a_release_zip(cli, tagged: Path, tmp_path: Path) -> None:
    assert cli("keypair", "-o", tmp_path / "k.pem").code == 0
    result = cli("flash", tagged, "--key", tmp_path / "k.pub.pem", "--dry-run")
    assert result.code == 1 and "not signed" in result.err and "--sign" in result.err


def _hostile(tmp_path: Path, name: str, build) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as archive:
        build(archive)
    return path


def _symlink(archive: zipfile.ZipFile) -> None:
    info = zipfile.ZipInfo("OPENMV_AE3/firmware_M55_HP.bin")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive.writestr(info, "/etc/passwd")


def _duplicate(archive: zipfile.ZipFile) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns, and writes it all the same
        archive.writestr("OPENMV_AE3/romfs1.img", b"x")
        archive.writestr("OPENMV_AE3/romfs1.img", b"y")


def _bomb(archive: zipfile.ZipFile) -> None:
    archive.writestr(
        zipfile.ZipInfo("OPENMV_AE3/romfs1.img"), b"\0" * (2 << 20), zipfile.ZIP_DEFLATED
    )


HOSTILE = {
    "traversal": (
        lambda a: a.writestr("OPENMV_AE3/../../evil.bin", b"x"),
        "unsafe member name",
    ),
    "absolute": (lambda a: a.writestr("/OPENMV_AE3/romfs0.img", b"x"), "unsafe member name"),
    "deep": (lambda a: a.writestr("OPENMV_AE3/sub/romfs0.img", b"x"), "unsafe member name"),
    "symlink": (_symlink, "is not a regular file"),
    "duplicate": (_duplicate, "appears twice"),
    "bomb": (_bomb, "more than 1048577"),  # ROMFS1's partition plus one byte
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_release_zips_are_refused(cli, tmp_path: Path, case: str) -> None:
    build, words = HOSTILE[case]
    path = _hostile(tmp_path, "firmware_v9.9.9.zip", build)
    camera = tmp_path / "cam"
    for command in (("flash", path, "--virtual", camera), ("verify", path)):
        result = cli(*command)
        assert result.code == 1 and words in result.err, (case, result.err)
    assert not camera.exists()
    assert not (tmp_path / "evil.bin").exists()


def test_member_floods_are_refused_unread(cli, tmp_path: Path, monkeypatch) -> None:
    """Half a million members cost zipfile 34 s and 359 MB before any check: the count in
    the end record is read first (here the cap is lowered to keep the test small), and
    what is under it is reported within the finding cap and the line cap."""
    from ae3tools.findings import FINDINGS_PER_CODE
    from ae3tools.release import archive

    monkeypatch.setattr(archive, "MAX_MEMBERS", 300)
    flood = tmp_path / "firmware_OPENMV_AE3.zip"
    with zipfile.ZipFile(flood, "w") as out:
        for index in range(301):
            out.writestr(f"m{index}", b"x")
    for command in (("verify",), ("flash", "--dry-run")):
        result = cli(*command, flood)
        said = result.out + result.err
        assert result.code == 1 and "301 members, more than the 300 ae3tools reads" in said

    good = tmp_path / "good.zip"
    assert cli("bundle", "--from", FIXTURES / "good", "-o", good).code == 0
    unlisted = tmp_path / "unlisted.zip"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(unlisted, "w") as out:
        for member in source.namelist():
            out.writestr(member, source.read(member))
        for index in range(250):
            out.writestr(f"extra{index}", b"x")
    report = json.loads(cli("verify", "--json", unlisted).out)
    codes = [e["code"] for e in report["errors"]]
    assert codes.count("BUNDLE_UNLISTED") <= FINDINGS_PER_CODE + 1  # the kept, and a count

    release = tmp_path / "rel" / "firmware_OPENMV_AE3.zip"
    release.parent.mkdir()
    with zipfile.ZipFile(release, "w") as out:
        for name in ("firmware_M55_HP.bin", "firmware_M55_HE.bin", "romfs0.img", "romfs1.img"):
            out.write(FIXTURES / "good" / name, name)
        for index in range(100):
            out.writestr(f"notes{index}.txt", b"x")
    text = cli("flash", "--dry-run", release).err
    assert text.count("left alone:") == 20 and "and 80 members more left alone" in text


def test_member_count_reads_zip64_end_records(tmp_path: Path) -> None:
    """Past 65,535 members the count is in the zip64 end record."""
    from ae3tools.release.archive import member_count

    big = tmp_path / "big.zip"
    with zipfile.ZipFile(big, "w") as out:
        for index in range(70_000):
            out.writestr(f"{index:x}", b"")
    assert member_count(big) == 70_000
    small = tmp_path / "small.zip"
    with zipfile.ZipFile(small, "w") as out:
        out.writestr("a", b"x")
    assert member_count(small) == 1
    (tmp_path / "not.zip").write_bytes(b"no end record here")
    assert member_count(tmp_path / "not.zip") is None


def test_release_zips_as_people_have_them(cli, tmp_path: Path) -> None:
    """§5: a release wrapped in one folder, a macOS re-zip (__MACOSX/), a flat one under
    any name, image names in any case (the IDE's): all read; AE3 images beside the board
    folders of a tagged zip are named as left alone, not silently ignored; `check` and
    `recover --bundle` take what `flash` takes."""
    root = tmp_path / "download" / "firmware_v5.0.0"
    board_folder(root)
    (root / "CYW4343").mkdir()
    (root / "romfs0.img").write_bytes((GOOD / "romfs0.img").read_bytes())  # at the top
    macos = tmp_path / "download" / "__MACOSX" / "firmware_v5.0.0"
    macos.mkdir(parents=True)
    (macos / "._romfs0.img").write_bytes(b"\x00\x05\x16\x07")
    wrapped = tmp_path / "wrapped.zip"
    with zipfile.ZipFile(wrapped, "w") as archive:
        for path in sorted((tmp_path / "download").rglob("*")):
            if path.is_file():
                archive.write(path, str(path.relative_to(tmp_path / "download")))
    report = json.loads(cli("verify", wrapped, "--json").out)
    assert report["source"]["folder"] == "firmware_v5.0.0/OPENMV_AE3"
    left = {item["member"]: item["why"] for item in report["source"]["left_alone"]}
    assert "outside the OPENMV_AE3 folder" in left["firmware_v5.0.0/romfs0.img"]
    assert "macOS metadata" in left["__MACOSX/firmware_v5.0.0/._romfs0.img"]
    assert len(report["images"]) == 4

    shouting = tmp_path / "my-ae3-build.zip"
    with zipfile.ZipFile(shouting, "w") as archive:
        for image in IMAGES:
            archive.write(GOOD / image, image.upper())
    assert len(json.loads(cli("verify", shouting, "--json").out)["images"]) == 4

    camera = tmp_path / "cam"
    assert cli("flash", shouting, "--virtual", camera).code == 0
    assert json.loads(cli("check", shouting, "--virtual", camera, "--json").out)["ok"]
    recovered = cli("recover", "--yes", "--bundle", shouting, "--virtual", camera)
    assert recovered.code == 0, recovered.err
