"""Real dfu-util 0.11 and real libusb drive the virtual AE3 through the umockdev bridge.

These check the simulator and the flasher against software nobody here wrote. They
need Debian's umockdev, its GI bindings and dfu-util (scripts/setup installs them);
where those cannot be had, the tests skip and say why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ae3tools.board import RECOVERY_KEY, Role, partition_for_role
from ae3tools.formats.identity import application_serial
from ae3tools.release.bundle import ReleaseInfo, inputs_from_directory, read_bundle, write_bundle
from ae3tools.virtual.memory import partition_image
from tests.conftest import FIXTURES, ROOT
from tests.fault_matrix import MATRIX, MATRIX_TIMEOUT, assert_failed_cleanly, fault_spec

BRIDGE = ROOT / "scripts" / "with-virtual-ae3"
AE3TOOLS = Path(sys.executable).with_name("ae3tools")
GOOD = FIXTURES / "good"
DFU = ["dfu-util", "-w", "-d", ",37C5:96E3"]


def _bridge_unavailable() -> str | None:
    setup = subprocess.run(
        [str(ROOT / "scripts" / "setup-umockdev")], capture_output=True, text=True
    )
    if setup.returncode != 0:
        return (setup.stderr.strip() or "umockdev bridge unavailable").splitlines()[-1]
    return None


_REASON = _bridge_unavailable()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"umockdev bridge: {_REASON}")


def bridge(
    memory: Path,
    *command: object,
    options: tuple[str, ...] = (),
    timeout: float = 120,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AE3TOOLS_VIRTUAL")}
    return subprocess.run(
        [str(BRIDGE), "--memory", str(memory), *options, "--", *map(str, command)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
    )


def shell(memory: Path, script: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return bridge(memory, "sh", "-c", script, **kwargs)  # type: ignore[arg-type]


def memory_holds(memory: Path, role: Role, data: bytes) -> bool:
    return partition_image(memory, role).read_bytes()[: len(data)] == data


def test_dfu_util_lists_the_eight_alt_settings(tmp_path: Path) -> None:
    result = bridge(tmp_path / "cam", "dfu-util", "-l")
    assert result.returncode == 0, result.stderr
    found = [line for line in result.stdout.splitlines() if line.startswith("Found DFU")]
    names = [line.split('name="')[1].split('"')[0] for line in found]
    assert sorted(names) == sorted(
        ["BOOT", "HP", "HE", "ROMFS1", "TOC", "RWFS", "ROMFS0", "RECOVERY"]
    )
    assert all(
        "[37c5:96e3] ver=0103" in line and 'serial="AE30000000000000DEADBEEF"' in line
        for line in found
    )


def test_the_seed_four_dfu_util_calls(tmp_path: Path) -> None:
    memory = tmp_path / "cam"
    calls = [
        [*DFU, "-a", "1", "-D", GOOD / "firmware_M55_HP.bin"],
        [*DFU, "-a", "2", "-D", GOOD / "firmware_M55_HE.bin"],
        [*DFU, "-a", "3", "-D", GOOD / "romfs1.img"],
        [*DFU, "-a", "6", "-D", GOOD / "romfs0.img", "--reset"],
    ]
    script = "; ".join(
        " ".join(map(str, call)) + ' > /dev/null 2>&1; echo "rc=$?"' for call in calls
    )
    result = shell(memory, script)
    # dfu-util 0.11 exits with libusb's NOT_FOUND (-5, so 251) when the reset after
    # DETACH finds the device gone, which the AE3 always is (spec §8.3): the flash
    # itself succeeded. The first three calls exit 0.
    assert result.stdout.split() == ["rc=0", "rc=0", "rc=0", "rc=251"], result.stdout
    for role in (Role.HP, Role.HE, Role.ROMFS1, Role.ROMFS0):
        data = (GOOD / str(partition_for_role(role).image_name)).read_bytes()
        assert memory_holds(memory, role, data), role


def test_dfu_util_alt_by_name_and_upload(tmp_path: Path) -> None:
    memory = tmp_path / "cam"
    hp = GOOD / "firmware_M55_HP.bin"
    result = shell(
        memory, f"dfu-util -a HP -D {hp} && dfu-util -a 1 -U {tmp_path}/out.bin", cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    dump = (tmp_path / "out.bin").read_bytes()
    partition = partition_for_role(Role.HP)
    assert len(dump) == partition.size + 4 and dump[-4:] == bytes(4)  # as on hardware (§6)
    assert dump[: hp.stat().st_size] == hp.read_bytes()
    assert dump[: partition.size] == partition_image(memory, Role.HP).read_bytes()


def test_recovery_runs_once_per_session(tmp_path: Path) -> None:
    key = tmp_path / "key.bin"
    key.write_bytes(RECOVERY_KEY + bytes(4080))
    result = shell(
        tmp_path / "cam", f"dfu-util -a 7 -D {key}; echo rc=$?; dfu-util -a 7 -D {key}; echo rc=$?"
    )
    codes = [line for line in result.stdout.splitlines() if line.startswith("rc=")]
    assert codes == ["rc=0", "rc=74"], result.stdout
    assert "status(3)" in result.stdout  # errWRITE: already used this session
    rwfs = tmp_path / "cam" / "5-RWFS.bin"
    assert set(rwfs.read_bytes()) == {0xFF}


def test_boot_is_refused_and_oversize_is_errADDRESS(tmp_path: Path) -> None:
    memory = tmp_path / "cam"
    image = tmp_path / "big.bin"
    partition = partition_for_role(Role.ROMFS1)
    image.write_bytes(bytes([0x5A]) * (partition.size + 1))
    boot = shell(memory, f"dfu-util -a 0 -D {GOOD / 'key.bin'}")
    assert boot.returncode != 0 and "status(3)" in boot.stdout  # errWRITE
    big = shell(memory, f"dfu-util -a 3 -D {image}")
    assert big.returncode != 0 and "status(8)" in big.stdout  # errADDRESS
    assert partition_image(memory, Role.ROMFS1).read_bytes() == image.read_bytes()[:-1]


def test_ae3tools_flash_through_real_libusb(tmp_path: Path) -> None:
    memory = tmp_path / "cam"
    bundle = tmp_path / "bundle.zip"
    write_bundle(bundle, inputs_from_directory(GOOD), ReleaseInfo())
    report = tmp_path / "report.json"
    result = bridge(memory, AE3TOOLS, "flash", bundle, "--json", options=("--report", str(report)))
    assert result.returncode == 0, result.stderr
    flashed = json.loads(result.stdout)
    assert flashed["ok"] and all(i["verified"] for i in flashed["images"])
    assert flashed["device"]["alt_names"][6] == "ROMFS0"
    for image in read_bundle(bundle):
        assert memory_holds(memory, image.role, image.data)
    device = json.loads(report.read_text())
    assert device["exit_reason"] == "DETACH" and device["blocks_written"] == 21


def test_incremental_flash_check_and_read_through_real_libusb(tmp_path: Path) -> None:
    memory = tmp_path / "cam"
    bundle = tmp_path / "bundle.zip"
    write_bundle(bundle, inputs_from_directory(GOOD), ReleaseInfo())
    assert bridge(memory, AE3TOOLS, "flash", bundle).returncode == 0
    same = bridge(memory, AE3TOOLS, "check", bundle, "--json")
    assert same.returncode == 0 and json.loads(same.stdout)["ok"], same.stderr

    dump = tmp_path / "romfs0.img"
    romfs0 = (GOOD / "romfs0.img").read_bytes()
    read = bridge(memory, AE3TOOLS, "read", "romfs0", "-o", dump, "--length", len(romfs0))
    assert read.returncode == 0 and dump.read_bytes() == romfs0, read.stderr

    changed_dir = tmp_path / "changed"
    changed_dir.mkdir()
    for source in GOOD.iterdir():
        (changed_dir / source.name).write_bytes(source.read_bytes())
    hp = bytearray((GOOD / "firmware_M55_HP.bin").read_bytes())
    hp[2 * 4096 + 5] ^= 0xFF
    (changed_dir / "firmware_M55_HP.bin").write_bytes(bytes(hp))
    changed = tmp_path / "changed.zip"
    write_bundle(changed, inputs_from_directory(changed_dir), ReleaseInfo())
    differs = bridge(memory, AE3TOOLS, "check", changed, "--json")
    assert differs.returncode == 1
    hp_check = json.loads(differs.stdout)["images"][0]
    assert hp_check["role"] == "hp" and hp_check["differing_ranges"] == [[2, 2]]
    flashed = bridge(memory, AE3TOOLS, "flash", changed, "--json")
    assert flashed.returncode == 0, flashed.stderr
    written = {i["role"]: i["blocks_written"] for i in json.loads(flashed.stdout)["images"]}
    assert written == {"hp": 2, "he": 0, "romfs1": 0, "romfs0": 0}
    assert memory_holds(memory, Role.HP, bytes(hp))


def test_realistic_timing_through_the_bridge(tmp_path: Path) -> None:
    """Flash work takes time (NOR erase per block): transfers wait for it, none fail."""
    bundle = tmp_path / "bundle.zip"
    write_bundle(bundle, inputs_from_directory(GOOD), ReleaseInfo())
    report = tmp_path / "report.json"
    result = bridge(
        tmp_path / "cam",
        AE3TOOLS,
        "flash",
        bundle,
        options=("--timing", "realistic", "--report", str(report)),
    )
    assert result.returncode == 0, result.stderr
    device = json.loads(report.read_text())
    assert device["device_seconds"] > 0.04  # two NOR blocks at 20 ms erase each, and more
    assert device["seconds"] >= device["device_seconds"]


def test_plug_in_listen_window(tmp_path: Path) -> None:
    """--listen-window: a freshly plugged camera leaves after 1.5 s without DFU activity."""
    late = shell(tmp_path / "cam", "sleep 2.5; dfu-util -l", options=("--listen-window",))
    assert "Found DFU" not in late.stdout
    bundle = tmp_path / "bundle.zip"
    write_bundle(bundle, {Role.HP: GOOD / "firmware_M55_HP.bin"}, ReleaseInfo(), partial=True)
    prompt = bridge(tmp_path / "cam", AE3TOOLS, "flash", bundle, options=("--listen-window",))
    assert prompt.returncode == 0, prompt.stderr


def test_faults_through_libusb(tmp_path: Path) -> None:
    """A hung device (URB never completed) and a stall, as libusb and pyusb report them."""
    bundle = tmp_path / "bundle.zip"
    write_bundle(bundle, inputs_from_directory(GOOD), ReleaseInfo())
    hung = bridge(
        tmp_path / "cam",
        AE3TOOLS,
        "flash",
        bundle,
        "--timeout",
        "0.3",
        options=("--fault", "hang:alt=HE:block=2"),
    )
    assert hung.returncode == 1 and "HE (alt 2) block 2" in hung.stderr
    assert "did not answer within 300 ms" in hung.stderr
    stalled = bridge(
        tmp_path / "cam", AE3TOOLS, "flash", bundle, options=("--fault", "stall:alt=ROMFS0:block=1")
    )
    assert stalled.returncode == 1 and "stalled" in stalled.stderr
    again = bridge(tmp_path / "cam", AE3TOOLS, "flash", bundle)
    assert again.returncode == 0, again.stderr


@pytest.fixture(scope="module")
def matrix_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bridge-matrix") / "bundle.zip"
    write_bundle(path, inputs_from_directory(GOOD), ReleaseInfo())
    return path


@pytest.mark.parametrize(("role", "fault", "block"), MATRIX)
def test_fault_matrix_through_libusb(
    matrix_bundle: Path, tmp_path: Path, role: str, fault: str, block: int
) -> None:
    """The same matrix as test_flash, through real libusb: same sentences, no false success."""
    memory = tmp_path / "cam"
    failed = bridge(
        memory,
        AE3TOOLS,
        "flash",
        matrix_bundle,
        "--json",
        "--timeout",
        MATRIX_TIMEOUT,
        options=("--fault", fault_spec(role, fault, block)),
    )
    assert_failed_cleanly(failed.returncode, failed.stdout, failed.stderr, role, fault, block)
    again = bridge(memory, AE3TOOLS, "flash", matrix_bundle)
    assert again.returncode == 0, again.stderr
    for image in read_bundle(matrix_bundle):
        assert memory_holds(memory, image.role, image.data)


# ------------------------------------------------------------------ running cameras


def test_pyserial_discovery_finds_the_running_camera(tmp_path: Path) -> None:
    """umockdev shows the tty with the sysfs links pyserial reads: VID:PID and serial."""
    probe = (
        "from serial.tools import list_ports\n"
        "for p in list_ports.comports():\n"
        "    print(p.device, hex(p.vid or 0), hex(p.pid or 0), p.serial_number)"
    )
    result = bridge(tmp_path / "cam", sys.executable, "-c", probe, options=("--mode", "app"))
    assert result.returncode == 0, result.stderr
    serial = application_serial("AE30000000000000DEADBEEF")
    assert f"/dev/ttyACM0 0x37c5 0x16e3 {serial}" in result.stdout.splitlines()


@pytest.mark.parametrize("bootloader", ["1.0.3", "1.0.2", "1.0.1", "1.0.0"])
@pytest.mark.parametrize("mode", ["app", "app-legacy", "app-4.7"])
def test_reboot_and_flash_through_pyserial_and_libusb(
    tmp_path: Path, mode: str, bootloader: str
) -> None:
    memory = tmp_path / "cam"
    bundle = tmp_path / "bundle.zip"
    write_bundle(bundle, inputs_from_directory(GOOD), ReleaseInfo())
    report = tmp_path / "report.json"
    options = ("--mode", mode, "--bootloader", bootloader, "--report", str(report))
    result = bridge(memory, AE3TOOLS, "flash", bundle, "--json", options=options)
    assert result.returncode == 0, result.stderr
    flashed = json.loads(result.stdout)
    assert flashed["was_running"]["port"] == "/dev/ttyACM0"
    assert flashed["device"]["bootloader_version"] == bootloader
    assert flashed["after"] == "camera reset: running its application again"
    for image in read_bundle(bundle):
        assert memory_holds(memory, image.role, image.data)
    device = json.loads(report.read_text())
    leaves_on_detach = bootloader in ("1.0.2", "1.0.3")
    assert device["exit_reason"] == ("DETACH" if leaves_on_detach else "USB reset")
    assert device["history"][-1].startswith("application")  # it boots again


def test_dfu_util_users_no_longer_replug(tmp_path: Path) -> None:
    """`ae3tools bootloader`, then dfu-util finds the camera: no listen window to catch."""
    script = (
        f"dfu-util -l | grep -c 'Found DFU' || true; {AE3TOOLS} bootloader >/dev/null && "
        "dfu-util -l | grep -c 'Found DFU'"
    )
    result = shell(tmp_path / "cam", script, options=("--mode", "app-legacy"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "8"]  # none while running; then eight alt settings


def test_many_camera_flash_on_real_libusb_and_pyserial(tmp_path: Path, bundle: Path) -> None:
    """The many-camera path (a worker thread per camera, the log, the event stream) on
    real libusb and pyserial's discovery. One camera: umockdev's preload library is not
    safe for USB from two threads at once (the process's heap is corrupted), so the
    station, which looks at the bus while workers flash, is rehearsed in process."""
    memory, log = tmp_path / "cam", tmp_path / "line.jsonl"
    result = bridge(
        memory, AE3TOOLS, "flash", bundle, "--all", "--log", log, "--json-progress",
        options=("--mode", "app"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (record,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert record["ok"] and record["state"] == "application" and record["where"] == "/dev/ttyACM0"
    assert record["after"] == "camera reset: running its application again"
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events[-1]["event"] == "report" and events[-1]["flashed"] == 1
    assert any(e["event"] == "progress" and e["step"] == "update HP" for e in events)
    for image in read_bundle(bundle):
        assert memory_holds(memory, image.role, image.data)


def test_a_bootloader_opened_as_it_enumerates(tmp_path: Path) -> None:
    """openmv-ota saw OpenMV's bootloader refuse SET_INTERFACE right after enumeration
    ("Cannot set alternate interface", 3 times in 3). With that race modelled (the
    settling fault), real dfu-util, which opens once, fails as openmv-ota reports; ae3tools
    retries the open within the listen window and flashes."""
    raced = ("--fault", "settling:count=3")
    once = bridge(
        tmp_path / "cam", *DFU, "-a", "1", "-D", GOOD / "firmware_M55_HP.bin", options=raced
    )
    assert once.returncode != 0 and "Cannot set alternate interface" in once.stderr, once.stderr
    bundle = tmp_path / "bundle.zip"
    write_bundle(bundle, inputs_from_directory(GOOD), ReleaseInfo())
    flashed = bridge(tmp_path / "cam", AE3TOOLS, "flash", bundle, options=raced)
    assert flashed.returncode == 0, flashed.stderr
