"""Incremental flashing, check, read and `romfs ls --device`, on the virtual AE3 through
the real pyusb stack and the CLI (the bridge runs of the same are in test_bridge.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from ae3tools.board import DFU_BLOCK_SIZE, Memory, Role, partition_by_name, partition_for_role
from ae3tools.dfu.builder import (
    PROBE_POLICIES,
    ProbePolicy,
    Prober,
    block_ranges,
    compare_image,
    write_image,
)
from ae3tools.dfu.flash import read_romfs_image
from ae3tools.dfu.host import DfuSession, find_bootloaders
from ae3tools.release.bundle import BundleImage, ReleaseInfo, read_bundle, write_bundle
from ae3tools.virtual.backend import VirtualBackend
from ae3tools.virtual.bootloader import VirtualAE3
from ae3tools.virtual.memory import DeviceMemory, partition_image
from ae3tools.virtual.timing import SimulatedClock, Timing
from tests.conftest import FIXTURES, ROOT
from tests.fullsize import firmware

GOOD = FIXTURES / "good"


@pytest.fixture(autouse=True)
def zero_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AE3TOOLS_VIRTUAL_TIMING", "zero")
    monkeypatch.delenv("AE3TOOLS_VIRTUAL_FAULTS", raising=False)


def _inputs(directory: Path, **changes: bytes) -> dict[Role, Path]:
    """The fixture release, with some images replaced by `changes` (role name -> bytes)."""
    directory.mkdir(parents=True, exist_ok=True)
    inputs = {}
    for role in (Role.HP, Role.HE, Role.ROMFS1, Role.ROMFS0):
        name = str(partition_for_role(role).image_name)
        path = directory / name
        path.write_bytes(changes.get(role.value, (GOOD / name).read_bytes()))
        inputs[role] = path
    return inputs


def make_bundle(directory: Path, **changes: bytes) -> Path:
    out = directory / "bundle.zip"
    write_bundle(out, _inputs(directory / "in", **changes), ReleaseInfo(version="t"))
    return out


def flipped(data: bytes, *offsets: int) -> bytes:
    copy = bytearray(data)
    for offset in offsets:
        copy[offset] ^= 0xFF
    return bytes(copy)


def images_of(report: dict) -> dict[str, dict]:
    return {image["role"]: image for image in report["images"]}


def flash_json(cli, *args: object) -> dict:
    result = cli("flash", *args, "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)


def assert_camera_holds(camera: Path, bundle: Path) -> None:
    for image in read_bundle(bundle):
        assert partition_image(camera, image.role).read_bytes()[: len(image.data)] == image.data


# ------------------------------------------------------------------ the planner alone


def test_prober_stops_reading_on_a_streak_and_probes_with_a_growing_gap() -> None:
    policy = ProbePolicy(stop_after=2, first_gap=4, max_gap=8)
    prober = Prober(policy)
    reads = []
    for block in range(40):
        wants = prober.wants_read()
        reads.append(wants)
        if wants:
            prober.saw(differs=block < 30)  # blocks 30+ are equal again
    read_at = [i for i, r in enumerate(reads) if r]
    # two pre-reads, then probes after 4, 8 and 8 blocks, then pre-reading resumes once
    # a probe finds an equal block (30 was unread, 34 is the probe, from there all read).
    assert read_at[:5] == [0, 1, 5, 13, 21]
    assert read_at[5:7] == [29, 37] and all(reads[37:])


def test_probe_policies_follow_the_memories_costs() -> None:
    # A NOR write erases a sector (§5.2): reading pays longer there than on MRAM.
    nor, mram = PROBE_POLICIES[Memory.NOR], PROBE_POLICIES[Memory.MRAM]
    assert nor.stop_after > mram.stop_after and nor.max_gap < mram.max_gap


def test_block_ranges() -> None:
    assert list(block_ranges([1, 2, 3, 7, 9, 10])) == [(1, 3), (7, 7), (9, 10)]
    assert list(block_ranges([])) == []


# ------------------------------------------------------------------ in process


def _session(device: VirtualAE3) -> DfuSession:
    session = DfuSession(find_bootloaders(VirtualBackend([device]))[0])
    session.check_layout(session.open().alt_names)
    return session


def _hp_image(tmp_path: Path, data: bytes) -> BundleImage:
    bundle = make_bundle(tmp_path, hp=data)
    return next(i for i in read_bundle(bundle) if i.role is Role.HP)


def test_an_mram_change_writes_block_0_first_and_the_changed_block(tmp_path: Path) -> None:
    device = VirtualAE3(DeviceMemory())
    session = _session(device)
    original = _hp_image(tmp_path / "a", (GOOD / "firmware_M55_HP.bin").read_bytes())
    write_image(session, original)
    changed = replace(original, data=flipped(original.data, 5 * DFU_BLOCK_SIZE + 3))
    written_before = device.stats.blocks_written
    result = write_image(session, changed)
    # A write to block 5 of a locked MRAM region would hang the model (§5, inferred):
    # finishing proves block 0 went first.
    assert not device.hung and not device.stats.notes
    assert (result.written, result.skipped, result.read_back) == (2, result.blocks - 2, 2)
    assert device.stats.blocks_written - written_before == 2
    assert result.verified and not device.mpu_rw[1]  # the manifest locked it again


def test_an_unchanged_image_is_read_once_and_never_written(tmp_path: Path) -> None:
    device = VirtualAE3(DeviceMemory())
    session = _session(device)
    image = _hp_image(tmp_path, (GOOD / "firmware_M55_HP.bin").read_bytes())
    write_image(session, image)
    written, read = device.stats.blocks_written, device.stats.blocks_read
    result = write_image(session, image)
    assert (result.written, result.read, result.read_back) == (0, result.blocks, 0)
    assert result.verified
    assert device.stats.blocks_written == written
    assert device.stats.blocks_read - read == result.blocks


def test_a_blank_camera_costs_at_most_one_percent_more_than_a_full_rewrite(
    tmp_path: Path,
) -> None:
    hp = partition_for_role(Role.HP)
    image = _hp_image(tmp_path, firmware(Role.HP, hp.size))
    seconds = {}
    for incremental in (False, True):
        clock = SimulatedClock()
        device = VirtualAE3(DeviceMemory(), Timing.realistic(), clock=clock, sleep=clock.sleep)
        write_image(_session(device), image, incremental=incremental)
        seconds[incremental] = device.stats.device_time
    assert seconds[True] <= 1.01 * seconds[False]


def test_the_simulated_clock_adds_up_device_time_without_sleeping(tmp_path: Path) -> None:
    clock = SimulatedClock()
    device = VirtualAE3(DeviceMemory(), Timing.realistic(), clock=clock, sleep=clock.sleep)
    image = _hp_image(tmp_path, (GOOD / "firmware_M55_HP.bin").read_bytes())
    write_image(_session(device), image)
    assert device.stats.device_time > 0
    assert clock.now == pytest.approx(device.stats.device_time, abs=0.01)


def test_compare_writes_nothing_and_names_the_differing_blocks(tmp_path: Path) -> None:
    device = VirtualAE3(DeviceMemory())
    session = _session(device)
    image = _hp_image(tmp_path, (GOOD / "firmware_M55_HP.bin").read_bytes())
    write_image(session, image)
    other = replace(image, data=flipped(image.data, 0, 2 * DFU_BLOCK_SIZE, 3 * DFU_BLOCK_SIZE))
    written = device.stats.blocks_written
    comparison = compare_image(session, other)
    assert comparison.differing == ((0, 0), (2, 3)) and comparison.differing_blocks == 3
    assert device.stats.blocks_written == written


def test_romfs_from_the_camera_reads_only_the_blocks_it_spans(tmp_path: Path) -> None:
    device = VirtualAE3(DeviceMemory())
    session = _session(device)
    romfs0 = (GOOD / "romfs0.img").read_bytes()
    session.download(partition_by_name("ROMFS0"), romfs0)
    read = device.stats.blocks_read
    assert read_romfs_image(session, partition_by_name("ROMFS0")) == romfs0
    assert device.stats.blocks_read - read == -(-len(romfs0) // DFU_BLOCK_SIZE)
    # An erased partition is one block: enough for the parser to say what it is.
    erased = read_romfs_image(session, partition_by_name("RWFS"))
    assert erased == b"\xff" * DFU_BLOCK_SIZE


# ------------------------------------------------------------------ the CLI


def test_reflash_writes_only_what_changed(cli, tmp_path: Path) -> None:
    camera = tmp_path / "cam"
    first = make_bundle(tmp_path / "v1")
    report = flash_json(cli, first, "--virtual", camera)
    assert report["incremental"] and all(i["verified"] for i in report["images"])

    hp = flipped((GOOD / "firmware_M55_HP.bin").read_bytes(), 3 * DFU_BLOCK_SIZE + 8)
    romfs0 = flipped((GOOD / "romfs0.img").read_bytes(), DFU_BLOCK_SIZE + 1)
    second = make_bundle(tmp_path / "v2", hp=hp, romfs0=romfs0)
    images = images_of(flash_json(cli, second, "--virtual", camera))
    assert images["hp"]["blocks_written"] == 2  # block 0 unlocks MRAM (§5), then block 3
    assert images["romfs0"]["blocks_written"] == 1  # NOR needs no unlock
    assert images["he"]["blocks_written"] == images["romfs1"]["blocks_written"] == 0
    for image in images.values():
        assert image["blocks_skipped"] == image["blocks"] - image["blocks_written"]
        assert image["blocks_read_back"] == image["blocks_written"] and image["verified"]
        for key in ("read_seconds", "write_seconds", "verify_seconds", "seconds"):
            assert image[key] >= 0
    assert_camera_holds(camera, second)

    text = cli("flash", second, "--virtual", camera)
    assert text.code == 0 and "0 of 21 blocks written" in text.out


def test_full_rewrites_every_block(cli, tmp_path: Path) -> None:
    camera = tmp_path / "cam"
    bundle = make_bundle(tmp_path)
    flash_json(cli, bundle, "--virtual", camera)
    report = flash_json(cli, bundle, "--virtual", camera, "--full")
    assert not report["incremental"]
    for image in report["images"]:
        assert image["blocks_written"] == image["blocks_read_back"] == image["blocks"]
        assert image["blocks_read"] == 0


def test_no_verify_still_reports_skipped_blocks_as_equal(cli, tmp_path: Path) -> None:
    camera = tmp_path / "cam"
    bundle = make_bundle(tmp_path)
    flash_json(cli, bundle, "--virtual", camera)
    changed = make_bundle(
        tmp_path / "c", hp=flipped((GOOD / "firmware_M55_HP.bin").read_bytes(), 9)
    )
    images = images_of(flash_json(cli, changed, "--virtual", camera, "--no-verify"))
    assert not images["hp"]["verified"] and images["hp"]["blocks_read_back"] == 0
    assert images["he"]["verified"]  # read equal before writing: nothing unverified


def test_a_shorter_image_leaves_the_old_tail_and_checks_equal(cli, tmp_path: Path) -> None:
    camera = tmp_path / "cam"
    long_hp = (GOOD / "firmware_M55_HP.bin").read_bytes()
    flash_json(cli, make_bundle(tmp_path / "long"), "--virtual", camera)
    short = make_bundle(tmp_path / "short", hp=long_hp[: 4 * DFU_BLOCK_SIZE])
    images = images_of(flash_json(cli, short, "--virtual", camera))
    assert images["hp"]["blocks_written"] == 0  # its blocks are the long image's first four
    stored = partition_image(camera, Role.HP).read_bytes()
    assert stored[: len(long_hp)] == long_hp  # the tail stays, as with a full rewrite
    assert cli("check", short, "--virtual", camera).code == 0


def test_a_rerun_after_a_fault_writes_only_what_is_still_wrong(cli, tmp_path: Path) -> None:
    camera = tmp_path / "cam"
    bundle = make_bundle(tmp_path)
    failed = cli("flash", bundle, "--virtual", camera, "--fault", "vanish:alt=HE:block=3", "--json")
    assert failed.code == 1 and "disconnected" in failed.err
    assert [i["role"] for i in json.loads(failed.out)["images"]] == ["hp"]
    images = images_of(flash_json(cli, bundle, "--virtual", camera))
    assert images["hp"]["blocks_written"] == 0
    # HE blocks 0-2 were written before the unplug: only the rest is written now, plus
    # block 0 again to unlock the region (§5).
    assert images["he"]["blocks_written"] == images["he"]["blocks"] - 2
    assert images["romfs0"]["blocks_written"] == images["romfs0"]["blocks"]
    assert_camera_holds(camera, bundle)


def test_check_compares_without_writing(cli, tmp_path: Path) -> None:
    camera = tmp_path / "cam"
    bundle = make_bundle(tmp_path)
    flash_json(cli, bundle, "--virtual", camera)
    result = cli("check", bundle, "--virtual", camera, "--json")
    assert result.code == 0
    report = json.loads(result.out)
    assert report["ok"] and all(i["equal"] for i in report["images"])

    hp_file = partition_image(camera, Role.HP)
    memory = bytearray(hp_file.read_bytes())
    for block in (1, 2, 7):
        memory[block * DFU_BLOCK_SIZE] ^= 0x01
    hp_file.write_bytes(bytes(memory))
    snapshot = {p.name: p.read_bytes() for p in camera.glob("*.bin")}
    result = cli("check", bundle, "--virtual", camera, "--json")
    assert result.code == 1
    images = images_of(json.loads(result.out))
    assert images["hp"]["differing_ranges"] == [[1, 2], [7, 7]]
    assert images["hp"]["differing_blocks"] == 3 and images["he"]["equal"]
    assert {p.name: p.read_bytes() for p in camera.glob("*.bin")} == snapshot
    text = cli("check", bundle, "--virtual", camera, "--only", "hp")
    assert text.code == 1 and "3 blocks differ: 1-2, 7" in text.out


def test_read_dumps_a_partition_exactly(cli, tmp_path: Path) -> None:
    camera = tmp_path / "cam"
    bundle = make_bundle(tmp_path)
    flash_json(cli, bundle, "--virtual", camera)
    dump = tmp_path / "romfs0.img"
    result = cli("read", "romfs0", "-o", dump, "--virtual", camera, "--json")
    assert result.code == 0, result.err
    assert dump.read_bytes() == partition_image(camera, Role.ROMFS0).read_bytes()
    assert json.loads(result.out)["bytes"] == partition_by_name("ROMFS0").size

    head = tmp_path / "hp-head.bin"
    assert cli("read", "HP", "-o", head, "--length", "0x1800", "--virtual", camera).code == 0
    assert head.read_bytes() == (GOOD / "firmware_M55_HP.bin").read_bytes()[:0x1800]
    boot = tmp_path / "boot.bin"
    assert cli("read", "boot", "-o", boot, "-l", "8K", "--virtual", camera).code == 0
    assert boot.read_bytes()[0x1000:0x1004] == bytes.fromhex("ad1007b0")  # §10


def test_read_refuses_bad_requests_before_touching_the_camera(cli, tmp_path: Path) -> None:
    camera = tmp_path / "cam"
    existing = tmp_path / "exists.bin"
    existing.write_bytes(b"keep")
    cases = [
        (("read", "recovery", "-o", tmp_path / "k.bin"), "expected one of"),
        (("read", "hp", "-o", existing), "already exists"),
        (("read", "hp", "-o", tmp_path / "x.bin", "--length", "4M"), "holds 1 to"),
        (("read", "hp", "-o", tmp_path / "x.bin", "--length", "lots"), "byte count"),
        (("read", "hp", "-o", tmp_path / "no" / "x.bin"), "does not exist"),
    ]
    for args, words in cases:
        result = cli(*args, "--virtual", camera, "--json")
        assert result.code == 2 and words in result.err, args
        assert json.loads(result.out)["ok"] is False
    assert existing.read_bytes() == b"keep" and not camera.exists()


def test_a_failed_read_leaves_no_file(cli, tmp_path: Path) -> None:
    dump = tmp_path / "rwfs.img"
    result = cli(
        "read", "rwfs", "-o", dump, "--virtual", tmp_path / "cam",
        "--fault", "status:alt=RWFS:block=5:op=upload",
    )  # fmt: skip
    assert result.code == 1 and "errFILE" in result.err and "block 5" in result.err
    assert not dump.exists() and not list(tmp_path.glob(".rwfs.img*"))


def test_romfs_ls_from_the_camera(cli, tmp_path: Path) -> None:
    camera = tmp_path / "cam"
    flash_json(cli, make_bundle(tmp_path), "--virtual", camera)
    from_file = json.loads(cli("romfs", "ls", GOOD / "romfs0.img", "--json").out)
    result = cli("romfs", "ls", "--device", "romfs0", "--virtual", camera, "--json")
    assert result.code == 0, result.err
    from_camera = json.loads(result.out)
    assert from_camera["entries"] == from_file["entries"]
    assert from_camera["image"] == "camera romfs0"
    both = cli("romfs", "ls", GOOD / "romfs0.img", "--device", "romfs0", "--virtual", camera)
    assert both.code == 2 and "not both" in both.err
    assert cli("romfs", "ls").code == 2
    assert cli("romfs", "ls", "--device", "hp", "--virtual", camera).code == 2


# ------------------------------------------------------------------ start-up


def test_commands_import_the_device_stack_only_when_they_use_it() -> None:
    probe = (
        "import sys; from ae3tools.cli import main\n"
        # (rich.table is left out: older typer imports it for its own help.)
        "heavy = ('usb', 'ae3tools.dfu.host', 'ae3tools.virtual.bootloader',"
        " 'ae3tools.release.bundle', 'jsonschema', 'rich.progress', 'serial', 'cryptography',"
        " 'ae3tools.virtual.camera')\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == "[]"
