"""The flasher against the virtual AE3, through the real pyusb stack and the CLI."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import usb.core

from ae3tools.board import Role, partition_by_name
from ae3tools.device.discovery import Selector
from ae3tools.device.reach import find_camera, reach_bootloader
from ae3tools.dfu.host import (
    DfuSession,
    describe_usb_error,
    find_bootloaders,
    libusb_backend,
)
from ae3tools.findings import Ae3Error, DeviceError, UsageError
from ae3tools.formats.key import make_key_file
from ae3tools.release.bundle import (
    BundleImage,
    ReleaseInfo,
    inputs_from_directory,
    read_bundle,
    write_bundle,
)
from ae3tools.virtual.backend import VirtualBackend
from ae3tools.virtual.bootloader import VirtualAE3, virtual_serial
from ae3tools.virtual.memory import DeviceMemory, partition_image
from tests.conftest import FIXTURES
from tests.fault_matrix import MATRIX, MATRIX_TIMEOUT, assert_failed_cleanly, fault_spec

BLOCK = 4096


@pytest.fixture(autouse=True)
def zero_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests run the virtual AE3 at zero device cost (the CLI default is realistic)."""
    monkeypatch.setenv("AE3TOOLS_VIRTUAL_TIMING", "zero")
    monkeypatch.delenv("AE3TOOLS_VIRTUAL_FAULTS", raising=False)


def assert_memory_holds(camera: Path, images: list[BundleImage]) -> None:
    for image in images:
        stored = partition_image(camera, image.role).read_bytes()
        assert stored[: len(image.data)] == image.data, image.role


# ------------------------------------------------------------------ the happy path


def test_flash_writes_verifies_and_resets(cli, bundle: Path, tmp_path: Path) -> None:
    camera = tmp_path / "cam"
    result = cli("flash", bundle, "--virtual", camera, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["ok"] and report["reset"] and report["device"]["bootloader_version"] == "1.0.3"
    assert [i["role"] for i in report["images"]] == ["hp", "he", "romfs1", "romfs0"]
    assert all(i["verified"] for i in report["images"])
    assert_memory_holds(camera, read_bundle(bundle))


def test_memory_survives_between_runs_and_only_flashes_a_subset(
    cli, bundle: Path, tmp_path: Path
) -> None:
    camera = tmp_path / "cam"
    assert cli("flash", bundle, "--virtual", camera).code == 0
    he_file = partition_image(camera, Role.HE)
    he_file.write_bytes(b"\x00" * he_file.stat().st_size)  # scribble over HE
    hp_before = partition_image(camera, Role.HP).read_bytes()
    result = cli("flash", bundle, "--virtual", camera, "--only", "he")
    assert result.code == 0 and "1 image flashed and verified" in result.out
    assert_memory_holds(camera, read_bundle(bundle))
    assert partition_image(camera, Role.HP).read_bytes() == hp_before


def test_no_verify_and_no_reset(cli, bundle: Path, tmp_path: Path) -> None:
    result = cli(
        "flash", bundle, "--virtual", tmp_path / "cam", "--no-verify", "--no-reset", "--json"
    )
    report = json.loads(result.out)
    assert result.code == 0 and not report["reset"]
    assert not any(i["verified"] for i in report["images"])


def test_dry_run_touches_no_usb(cli, bundle: Path, tmp_path: Path) -> None:
    camera = tmp_path / "cam"
    result = cli("flash", bundle, "--virtual", camera, "--dry-run")
    assert result.code == 0 and not camera.exists()
    lines = [line.strip() for line in result.out.splitlines() if "dfu-util" in line]
    assert lines[1:] == [
        "dfu-util -w -d ,37c5:96e3 -a 1 -D firmware_M55_HP.bin",
        "dfu-util -w -d ,37c5:96e3 -a 2 -D firmware_M55_HE.bin",
        "dfu-util -w -d ,37c5:96e3 -a 3 -D romfs1.img",
        "dfu-util -w -d ,37c5:96e3 -a 6 -D romfs0.img --reset",
    ]
    plan = json.loads(cli("flash", bundle, "--dry-run", "--json", "--only", "romfs0").out)
    assert plan["plan"] == [{"role": "romfs0", "alt": 6, "bytes": 4446}]


def test_bad_bundle_never_reaches_usb(cli, tmp_path: Path) -> None:
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 nonsense")
    camera = tmp_path / "cam"
    result = cli("flash", broken, "--virtual", camera)
    assert result.code == 1 and "not a readable zip" in result.err and not camera.exists()
    assert cli("flash", tmp_path / "missing.zip", "--virtual", camera).code == 2
    assert not camera.exists()


def test_only_rejects_unknown_or_absent_roles(cli, bundle: Path, tmp_path: Path) -> None:
    assert cli("flash", bundle, "--only", "toc", "--dry-run").code == 2
    hp_only = tmp_path / "hp.zip"
    write_bundle(
        hp_only, {Role.HP: FIXTURES / "good" / "firmware_M55_HP.bin"}, ReleaseInfo(), partial=True
    )
    result = cli("flash", hp_only, "--only", "romfs0", "--dry-run")
    assert result.code == 2 and "does not hold" in result.err


def test_waits_for_the_camera_to_be_plugged_in(cli, bundle: Path, tmp_path: Path) -> None:
    result = cli("flash", bundle, "--virtual", tmp_path / "cam", "--virtual-plug-delay", "0.3")
    assert result.code == 0 and "waiting for an AE3" in result.err


def test_no_camera_is_a_clear_error(cli, bundle: Path, tmp_path: Path) -> None:
    result = cli(
        "flash",
        bundle,
        "--virtual",
        tmp_path / "cam",
        "--virtual-plug-delay",
        "60",
        "--wait-timeout",
        "0.2",
    )
    assert result.code == 1
    assert "no AE3 (37c5:96e3 bootloader or 37c5:16e3 running camera) found within 0.2 s" in (
        result.err
    )
    assert "Plug the camera in" in result.err


def test_bad_virtual_options_are_usage_errors(cli, bundle: Path, tmp_path: Path) -> None:
    result = cli("flash", bundle, "--virtual", tmp_path / "cam", "--fault", "boom")
    assert result.code == 2 and "fault 'boom'" in result.err
    result = cli("flash", bundle, "--virtual", tmp_path / "cam", "--virtual-timing", "warp")
    assert result.code == 2 and "timing 'warp'" in result.err


def test_realistic_listen_window_is_latched_in_time(cli, bundle: Path, tmp_path: Path) -> None:
    result = cli("flash", bundle, "--virtual", tmp_path / "cam", "--virtual-timing", "realistic")
    assert result.code == 0, result.err


# ------------------------------------------------------------------ device selection


def two_cameras() -> VirtualBackend:
    return VirtualBackend(
        [VirtualAE3(DeviceMemory()), VirtualAE3(DeviceMemory(), serial="0123456789ABCDEF01234567")]
    )


def test_several_devices_need_a_selector() -> None:
    backend = two_cameras()
    no_ports: list = []
    with pytest.raises(UsageError, match=r"2 AE3s found.*--serial, --path"):
        find_camera(backend, lambda: no_ports, Selector())
    chosen = find_camera(backend, lambda: no_ports, Selector(serial="0123456789ABCDEF01234567"))
    assert chosen is not None and chosen.device.port_numbers == (2,) and chosen.where == "1-2"
    by_path = find_camera(backend, lambda: no_ports, Selector(path="1-1"))
    assert by_path is not None and by_path.device.port_numbers == (1,)
    assert find_camera(backend, lambda: no_ports, Selector(serial="NOPE")) is None
    with pytest.raises(DeviceError, match="with serial NOPE"):
        reach_bootloader(backend, lambda: no_ports, Selector(serial="NOPE"))


def test_devices_command(cli, tmp_path: Path) -> None:
    result = cli("devices", "--virtual", tmp_path / "cam", "--json")
    (device,) = json.loads(result.out)["devices"]
    assert device == {
        "state": "bootloader",
        "serial": virtual_serial(tmp_path / "cam"),
        "path": "1-1",
        "bootloader_version": "1.0.3",
        "boot_header_version": None,  # listing reads descriptors only: no UPLOAD latches it
        "shipped_in": "v5.0.0 and later",
        "alt_names": ["BOOT", "HP", "HE", "ROMFS1", "TOC", "RWFS", "ROMFS0", "RECOVERY"],
    }
    shown = cli("devices", "--virtual", tmp_path / "cam").out
    # the AE3's own alt settings go without saying in the table (--json lists them)
    assert virtual_serial(tmp_path / "cam") in shown and "ROMFS0" not in shown


def test_a_device_with_another_layout_is_refused() -> None:
    class OtherBoard(VirtualAE3):
        def _descriptor(self, kind: int, index: int) -> bytes:
            if kind == 3 and index == 5:
                return bytes([8, 3]) + "APP".encode("utf-16-le")
            return super()._descriptor(kind, index)

    backend = VirtualBackend([OtherBoard(DeviceMemory())])
    session = DfuSession(find_bootloaders(backend)[0])
    info = session.open()
    with pytest.raises(DeviceError, match="not the AE3's"):
        session.check_layout(info.alt_names)


# ------------------------------------------------------------------ host error sentences


def test_usb_errors_become_sentences() -> None:
    denied = describe_usb_error(usb.core.USBError("Access denied", -3, errno.EACCES), "open", 5000)
    assert "permission denied" in str(denied) and 'ATTRS{idVendor}=="37c5"' in denied.hint
    gone = describe_usb_error(usb.core.USBError("No such device", -4, errno.ENODEV), "x", 5000)
    assert gone.vanished and "disconnected" in str(gone)
    late = describe_usb_error(usb.core.USBTimeoutError("timed out", -7, errno.ETIMEDOUT), "x", 50)
    assert "within 50 ms" in str(late)


def test_missing_libusb_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import libusb_package
    import usb.backend.libusb1

    monkeypatch.setattr(usb.backend.libusb1, "get_backend", lambda *a, **k: None)
    monkeypatch.setattr(libusb_package, "get_libusb1_backend", lambda *a, **k: None)
    with pytest.raises(Ae3Error, match="no libusb backend found"):
        libusb_backend()


def test_real_usb_with_no_camera(cli, bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real libusb path (libusb-package's library): no camera here, so a clean error."""
    monkeypatch.delenv("AE3TOOLS_VIRTUAL", raising=False)
    result = cli("flash", bundle, "--no-wait")
    assert result.code == 1 and "no AE3 (37c5:96e3 bootloader" in result.err


# ------------------------------------------------------------------ recover and erase-fs


def test_recover_needs_yes(cli, tmp_path: Path) -> None:
    result = cli("recover", "--virtual", tmp_path / "cam")
    assert result.code == 2 and "--yes" in result.err and not (tmp_path / "cam").exists()
    assert cli("erase-fs", "--virtual", tmp_path / "cam").code == 2


def test_recover_blanks_and_reflashes_romfs0(cli, bundle: Path, tmp_path: Path) -> None:
    camera = tmp_path / "cam"
    assert cli("flash", bundle, "--virtual", camera).code == 0
    rwfs = camera / "5-RWFS.bin"
    result = cli("recover", "--yes", "--virtual", camera, "--json")
    assert result.code == 0, result.err
    assert rwfs.read_bytes() == b"\xff" * partition_by_name("RWFS").size
    assert set(partition_image(camera, Role.ROMFS0).read_bytes()) == {0xFF}
    assert cli("recover", "--yes", "--virtual", camera, "--bundle", bundle).code == 0
    assert_memory_holds(camera, [i for i in read_bundle(bundle) if i.role is Role.ROMFS0])


def test_recover_refuses_a_wrong_key_file(cli, tmp_path: Path) -> None:
    result = cli(
        "recover",
        "--yes",
        "--key",
        FIXTURES / "bad" / "wrong-key.bin",
        "--virtual",
        tmp_path / "cam",
    )
    assert result.code == 2 and "not the AE3 recovery key" in result.err
    key = tmp_path / "key.bin"
    key.write_bytes(make_key_file())
    assert cli("recover", "--yes", "--key", key, "--virtual", tmp_path / "cam").code == 0


def test_erase_fs_writes_a_zero_block(cli, tmp_path: Path) -> None:
    camera = tmp_path / "cam"
    assert cli("erase-fs", "--yes", "--virtual", camera).code == 0
    rwfs = (camera / "5-RWFS.bin").read_bytes()
    assert rwfs[:BLOCK] == bytes(BLOCK) and set(rwfs[BLOCK:]) == {0xFF}


# ------------------------------------------------------------------ the fault matrix


@pytest.fixture(scope="module")
def matrix_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("matrix") / "bundle.zip"
    write_bundle(path, inputs_from_directory(FIXTURES / "good"), ReleaseInfo())
    return path


@pytest.mark.parametrize(("role", "fault", "block"), MATRIX)
def test_fault_matrix(
    cli, matrix_bundle: Path, tmp_path: Path, role: str, fault: str, block: int
) -> None:
    camera = tmp_path / "cam"
    spec = fault_spec(role, fault, block)
    result = cli(
        "flash",
        matrix_bundle,
        "--virtual",
        camera,
        "--fault",
        spec,
        "--timeout",
        MATRIX_TIMEOUT,
        "--json",
    )
    assert_failed_cleanly(result.code, result.out, result.err, role, fault, block)
    # The fault clears (a new power-on); the same command then finishes and verifies.
    again = cli("flash", matrix_bundle, "--virtual", camera)
    assert again.code == 0, again.err
    assert_memory_holds(camera, read_bundle(matrix_bundle))


def test_a_bootloader_still_settling_is_opened_on_a_retry(
    cli, bundle: Path, tmp_path: Path
) -> None:
    """The settling fault stalls the first SET_INTERFACE requests after enumeration, as
    openmv-ota saw OpenMV's bootloader do: the open is retried three times, briefly; a
    device that keeps refusing is an error after the fourth try."""
    camera = tmp_path / "cam"
    result = cli("flash", bundle, "--virtual", camera, "--fault", "settling:count=3", "--json")
    assert result.code == 0, result.err
    assert_memory_holds(camera, read_bundle(bundle))
    result = cli("check", bundle, "--virtual", camera, "--fault", "settling:count=4")
    assert result.code == 1 and "select alt 0" in result.err
