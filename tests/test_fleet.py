"""Many cameras at once: `flash --all`, picked cameras, the station, and their reports.

Every camera here is a virtual AE3 with its memory in a directory of its own, all on one
virtual bus, driven through the real pyusb stack; the running ones serve their CDC
ports on real pseudo-terminals. The station runs as a real process, stopped by a real
SIGINT, with cameras plugged and unplugged by `ae3tools virtual` from outside.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ae3tools.board import Role
from ae3tools.device.discovery import AttachedCamera, SerialCache
from ae3tools.device.fleet import FlashJob, PlugTracker, Worker, cameras_for, flash_cameras
from ae3tools.dfu.protocol import LATEST_BOOTLOADER
from ae3tools.formats.identity import application_serial
from ae3tools.release.bundle import BundleImage, read_bundle
from ae3tools.virtual.application import FIRMWARES
from ae3tools.virtual.backend import VirtualBackend
from ae3tools.virtual.bootloader import virtual_serial
from ae3tools.virtual.camera import VirtualCamera, virtual_ports
from ae3tools.virtual.faults import Fault
from ae3tools.virtual.memory import DeviceMemory, partition_image
from ae3tools.virtual.timing import Timing
from tests.conftest import eventually, interruptible

ZERO = ("--virtual-timing", "zero")


def holds(camera: Path, images: list[BundleImage]) -> bool:
    stored = [partition_image(camera, i.role) for i in images]
    return all(
        path.exists() and path.read_bytes()[: len(i.data)] == i.data
        for path, i in zip(stored, images, strict=True)
    )


def virtual(*cameras: Path) -> list[str]:
    return [part for camera in cameras for part in ("--virtual", str(camera))]


# ------------------------------------------------------------------ the virtual cameras


def test_each_virtual_camera_has_its_own_stable_serial(tmp_path: Path) -> None:
    serials = [virtual_serial(tmp_path / name) for name in ("a", "b", "c", "d")]
    assert len(set(serials)) == 4
    assert virtual_serial(tmp_path / "a") == serials[0]
    assert (
        virtual_serial(tmp_path / "x" / ".." / "a") == serials[0]
    )  # the directory, not its spelling
    mapped = [application_serial(s) for s in serials]
    assert len(set(mapped)) == 4 and None not in mapped


def test_one_virtual_bus_holds_every_camera(cli, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    result = cli("devices", *virtual(a, b), "--virtual-mode", "app", "--json")
    rows = json.loads(result.out)["devices"]
    assert sorted(r["serial"] for r in rows) == sorted(
        application_serial(virtual_serial(d)) for d in (a, b)
    )
    assert len({r["port"] for r in rows}) == 2


def test_the_environment_names_several_cameras(cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("AE3TOOLS_VIRTUAL", f"{tmp_path / 'a'}{os.pathsep}{tmp_path / 'b'}")
    rows = json.loads(cli("devices", "--json").out)["devices"]
    assert sorted(r["serial"] for r in rows) == sorted(
        virtual_serial(tmp_path / name) for name in ("a", "b")
    )


def test_the_same_directory_twice_is_a_usage_error(cli, tmp_path: Path, bundle: Path) -> None:
    result = cli("flash", bundle, *virtual(tmp_path / "a", tmp_path / "." / "a"), "--all", *ZERO)
    assert result.code == 2 and "given twice" in result.err


def test_plug_and_unplug_need_a_camera_directory(cli, tmp_path: Path) -> None:
    result = cli("virtual", "unplug", tmp_path / "nowhere")
    assert result.code == 2 and "nowhere" in result.err


# ------------------------------------------------------------------ flash --all


def test_all_flashes_every_camera_at_once(cli, tmp_path: Path, bundle: Path) -> None:
    cameras = [tmp_path / name for name in ("a", "b", "c")]
    result = cli("flash", bundle, "--all", *virtual(*cameras), "--virtual-mode", "app",
                 *ZERO, "--json")  # fmt: skip
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["ok"] and report["flashed"] == 3 and report["failed"] == 0
    assert sorted(c["serial"] for c in report["cameras"]) == sorted(map(virtual_serial, cameras))
    assert {c["state"] for c in report["cameras"]} == {"application"}  # all were running
    assert all(
        c["after"] == "camera reset: running its application again" for c in report["cameras"]
    )
    images = read_bundle(bundle)
    assert all(holds(camera, images) for camera in cameras)


def test_all_shows_a_table_of_cameras(cli, tmp_path: Path, bundle: Path) -> None:
    cameras = [tmp_path / "a", tmp_path / "b"]
    result = cli("flash", bundle, "--all", *virtual(*cameras), *ZERO)
    assert result.code == 0, result.err
    for camera in cameras:
        key = application_serial(virtual_serial(camera))
        assert f"{key}: flashed and verified" in result.err  # a line as each one finishes
        assert key in result.out  # and a row of the final table
    assert "2 of 2 cameras flashed and verified" in result.out


def test_repeated_serials_pick_cameras(cli, tmp_path: Path, bundle: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    picked = ["--serial", virtual_serial(a), "--serial", application_serial(virtual_serial(b))]
    result = cli("flash", bundle, *picked, *virtual(a, b, c), "--virtual-mode", "app", *ZERO,
                 "--json")  # fmt: skip
    assert result.code == 0, result.err
    assert len(json.loads(result.out)["cameras"]) == 2
    images = read_bundle(bundle)
    assert holds(a, images) and holds(b, images) and not holds(c, images)


def test_a_picked_camera_that_is_missing_fails_the_run(cli, tmp_path: Path, bundle: Path) -> None:
    a = tmp_path / "a"
    result = cli("flash", bundle, "--serial", virtual_serial(a), "--serial", "0" * 23 + "1",
                 *virtual(a), *ZERO, "--wait-timeout", "0.2", "--json")  # fmt: skip
    assert result.code == 1
    assert "no AE3 found for serial " + "0" * 23 + "1" in json.loads(result.out)["error"]


def test_several_cameras_without_all_are_ambiguous(cli, tmp_path: Path, bundle: Path) -> None:
    result = cli("flash", bundle, "--json-progress", *virtual(tmp_path / "a", tmp_path / "b"),
                 *ZERO)  # fmt: skip
    assert result.code == 2 and "2 AE3s found" in result.err and "--all" in result.err


def test_one_failing_camera_does_not_stop_the_others(tmp_path: Path, bundle: Path) -> None:
    timing = Timing.zero()
    fault = Fault.parse_many(["status:alt=HE:block=1:status=errWRITE"])
    cameras = [
        VirtualCamera(
            DeviceMemory(tmp_path / name),
            FIRMWARES["app"],
            LATEST_BOOTLOADER,
            timing=timing,
            faults=fault if name == "bad" else (),
            serial=virtual_serial(tmp_path / name),
            port=port,
        )
        for port, name in enumerate(("good", "bad", "fine"), 1)
    ]
    backend = VirtualBackend(cameras)
    try:
        ports = lambda: virtual_ports(backend)  # noqa: E731
        found = cameras_for(backend, ports)
        images = read_bundle(bundle)
        results = flash_cameras(Worker(backend, ports, FlashJob(tuple(images))), found)
    finally:
        backend.shutdown()
    outcome = {r.serial: r for r in results}
    bad = outcome[virtual_serial(tmp_path / "bad")]
    assert not bad.ok and "errWRITE" in (bad.error or "")
    assert [r.role.value for r in bad.images] == ["hp"]  # what was done before the fault
    assert [role.value for role in bad.remaining] == ["he", "romfs1", "romfs0"]
    assert all(outcome[virtual_serial(tmp_path / n)].ok for n in ("good", "fine"))
    assert holds(tmp_path / "good", images) and holds(tmp_path / "fine", images)


def test_json_progress_streams_events(cli, tmp_path: Path, bundle: Path) -> None:
    cameras = [tmp_path / "a", tmp_path / "b"]
    result = cli("flash", bundle, "--all", "--json-progress", *virtual(*cameras), *ZERO)
    assert result.code == 0, result.err
    events = [json.loads(line) for line in result.out.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds.count("start") == 2 and kinds.count("result") == 2 and kinds[-1] == "report"
    progress = [e for e in events if e["event"] == "progress"]
    keys = {application_serial(virtual_serial(c)) for c in cameras}
    assert {e["camera"] for e in progress} == keys
    for key in keys:
        steps = [e for e in progress if e["camera"] == key and e["step"] == "update HP"]
        assert steps[0]["done"] == 0 and steps[-1]["done"] == steps[-1]["total"] > 0
    assert events[-1]["ok"] and len(events[-1]["cameras"]) == 2
    assert "flashed and verified" not in result.err  # no lines for people: the stream says it


def test_json_and_json_progress_exclude_each_other(cli, tmp_path: Path, bundle: Path) -> None:
    result = cli("flash", bundle, "--json", "--json-progress", *virtual(tmp_path / "a"))
    assert result.code == 2 and json.loads(result.out)["ok"] is False


# ------------------------------------------------------------------ the station


def _station(bundle: Path, log: Path, *args: object) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "ae3tools", "flash", str(bundle), "--station"]
    return subprocess.Popen(
        [*command, "--log", str(log), *ZERO, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=interruptible,
    )


def _lines(log: Path) -> list[dict[str, object]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def _ae3tools(*args: object) -> None:
    subprocess.run([sys.executable, "-m", "ae3tools", *map(str, args)], check=True,
                   capture_output=True)  # fmt: skip


def test_station_flashes_each_camera_once_per_plug(tmp_path: Path, bundle: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    b.mkdir()
    _ae3tools("virtual", "unplug", b)  # b waits on the bench
    log = tmp_path / "line.jsonl"
    station = _station(bundle, log, *virtual(a, b), "--virtual-mode", "app")
    try:
        assert eventually(lambda: len(_lines(log)) == 1), station.stderr
        _ae3tools("virtual", "plug", b)  # powers up into its bootloader's listen window
        assert eventually(lambda: len(_lines(log)) == 2)
        time.sleep(1.0)  # ten looks at the bus: both cameras are back, running, not re-plugged
        assert len(_lines(log)) == 2
        _ae3tools("virtual", "unplug", a)
        time.sleep(2.0)  # a human's replug: the station (a look every 0.1 s) sees it gone
        _ae3tools("virtual", "plug", a)
        assert eventually(lambda: len(_lines(log)) == 3)
    finally:
        station.send_signal(signal.SIGINT)
        out, err = station.communicate(timeout=30)
    assert station.returncode == 0, err
    assert "3 of 3 cameras flashed and verified" in out
    first, second, third = _lines(log)
    assert [r["serial"] for r in (first, second, third)] == [
        virtual_serial(a),
        virtual_serial(b),
        virtual_serial(a),
    ]
    assert (first["state"], second["state"]) == ("application", "bootloader")
    assert third["images"] and all(i["blocks_written"] == 0 for i in third["images"])  # type: ignore[attr-defined,index]
    assert all(r["bundle_sha256"] == _sha256(bundle) and r["ok"] for r in (first, second, third))
    assert first["bootloader_version"] == "1.0.3" and first["error"] is None


def test_station_count_stops_by_itself_and_logs_failures(tmp_path: Path, bundle: Path) -> None:
    log = tmp_path / "line.jsonl"
    station = _station(bundle, log, *virtual(tmp_path / "a", tmp_path / "b"), "--count", "2",
                       "--fault", "status:alt=HP:block=0:status=errWRITE")  # fmt: skip
    out, err = station.communicate(timeout=60)
    assert station.returncode == 1, err
    records = _lines(log)
    assert len(records) == 2 and not any(r["ok"] for r in records)
    assert all("errWRITE" in str(r["error"]) for r in records)
    assert "0 of 2 cameras flashed and verified" in out and "2 failed" in out


def _hp_started(camera: Path, images: list[BundleImage]) -> bool:
    """The camera's first HP block holds the bundle's: its flash is under way."""
    hp = next(i for i in images if i.role is Role.HP)
    path = partition_image(camera, Role.HP)
    return path.exists() and path.read_bytes()[:4096] == hp.data[:4096]


def test_ctrl_c_lets_cameras_in_progress_finish_and_tells_the_truth(
    tmp_path: Path, bundle: Path
) -> None:
    """SIGINT with two cameras in progress: both finish (and here fail, by an injected
    write error after the interrupt), the summary counts them, the exit status says they
    failed, and the log has a line for each. (Python 3.11's Thread.join, interrupted,
    left the station's thread marked finished: it reported 0 of 0 and exit 0.)"""
    a, b = tmp_path / "a", tmp_path / "b"
    log = tmp_path / "line.jsonl"
    images = read_bundle(bundle)
    faults = "slow:alt=HP:block=1:seconds=2,status:alt=HE:block=0:status=errWRITE"
    station = _station(bundle, log, *virtual(a, b), "--fault", faults)
    try:
        assert eventually(lambda: _hp_started(a, images) and _hp_started(b, images))
        station.send_signal(signal.SIGINT)
        out, err = station.communicate(timeout=60)
    finally:
        station.kill()
    assert station.returncode == 1, err
    assert "waiting for the 2 cameras in progress" in err
    assert "0 of 2 cameras flashed and verified" in out and "2 failed" in out
    records = _lines(log)
    assert len(records) == 2 and all("errWRITE" in str(r["error"]) for r in records)


def test_a_second_ctrl_c_gives_up_on_cameras_in_progress(tmp_path: Path, bundle: Path) -> None:
    """A second SIGINT does not wait: each camera in progress is reported failed, in the
    summary and the log, and the station exits 130 at once."""
    a, b = tmp_path / "a", tmp_path / "b"
    log = tmp_path / "line.jsonl"
    images = read_bundle(bundle)
    station = _station(bundle, log, *virtual(a, b), "--fault", "slow:alt=HP:block=1:seconds=30",
                       "--timeout", "60")  # the slow block must not time out first  # fmt: skip
    try:
        assert eventually(lambda: _hp_started(a, images) and _hp_started(b, images))
        station.send_signal(signal.SIGINT)
        time.sleep(0.5)
        station.send_signal(signal.SIGINT)
        started = time.monotonic()
        out, err = station.communicate(timeout=20)
    finally:
        station.kill()
    assert time.monotonic() - started < 10  # not the 30 s the slow blocks take
    assert station.returncode == 130, err
    assert "0 of 2 cameras flashed" in out and "2 failed" in out
    records = _lines(log)
    assert len(records) == 2
    assert all("interrupted while it was being flashed" in str(r["error"]) for r in records), [
        r["error"] for r in records
    ]


def test_a_camera_lost_mid_step_fails_alone(tmp_path: Path, bundle: Path, monkeypatch) -> None:
    """A camera whose port fails under pyserial (as one unplugged while it is identified
    does: "device reports readiness to read but returned no data") is a failed result;
    the other cameras are flashed. (pyserial's SerialException escaped and ended the
    station.)"""
    import serial

    from ae3tools.device import fleet

    real_open = fleet.open_session
    calls: list[object] = []

    def open_session(backend, ports, selector, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(selector)
        if len(calls) == 1:  # the first camera reached is lost
            raise serial.SerialException(
                "device reports readiness to read but returned no data (device disconnected "
                "or multiple access on port?)"
            )
        return real_open(backend, ports, selector, **kwargs)

    monkeypatch.setattr(fleet, "open_session", open_session)
    cameras = [
        VirtualCamera(
            DeviceMemory(tmp_path / name), FIRMWARES["app"], LATEST_BOOTLOADER,
            timing=Timing.zero(), serial=virtual_serial(tmp_path / name), port=port,
        )
        for port, name in enumerate(("lost", "kept"), 1)
    ]  # fmt: skip
    backend = VirtualBackend(cameras)
    try:
        ports = lambda: virtual_ports(backend)  # noqa: E731
        results = flash_cameras(
            Worker(backend, ports, FlashJob(tuple(read_bundle(bundle)))),
            cameras_for(backend, ports),
        )
    finally:
        backend.shutdown()
    failed = [r for r in results if not r.ok]
    assert len(results) == 2 and len(failed) == 1
    assert "lost the camera: device reports readiness" in str(failed[0].error)


def test_station_log_refuses_what_is_not_a_file(cli, tmp_path: Path, bundle: Path) -> None:
    """A FIFO would block with no reader, a tty refuses fsync, /dev/full loses every line:
    the log of a production run is a regular file. Nor is it the --key file."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for target in (fifo, Path("/dev/full")):
        result = cli("flash", bundle, "--station", "--log", target, *virtual(tmp_path / "a"),
                     *ZERO)  # fmt: skip
        assert result.code == 2 and "not a regular file" in result.err, target
    key = tmp_path / "key.pem"
    key.write_bytes(b"not really a key")
    result = cli("flash", bundle, "--all", "--log", key, "--key", key, *virtual(tmp_path / "a"),
                 *ZERO)  # fmt: skip
    assert result.code == 2 and key.read_bytes() == b"not really a key"


def test_station_log_must_be_writable(cli, tmp_path: Path, bundle: Path) -> None:
    result = cli("flash", bundle, "--station", "--log", tmp_path / "no" / "log.jsonl",
                 *virtual(tmp_path / "a"), *ZERO)  # fmt: skip
    assert result.code == 2 and "does not exist" in result.err
    assert not (tmp_path / "a").exists()  # refused before any camera was touched
    before = bundle.read_bytes()
    result = cli("flash", bundle, "--station", "--log", bundle, *virtual(tmp_path / "a"), *ZERO)
    assert result.code == 2 and "also an input" in result.err
    assert bundle.read_bytes() == before


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------ once per plug-in


def test_a_flashed_camera_is_due_again_only_after_a_replug() -> None:
    boot = AttachedCamera("bootloader", "1-1", "F5D1E63B4A00" + "0" * 12)
    running = AttachedCamera("application", "/dev/ttyACM0", application_serial(boot.serial or ""))
    assert boot.handle == running.handle == "eb44ceca00000000"  # one camera, two states
    plugs = PlugTracker()
    assert plugs.due([boot], busy=()) == [boot]
    assert plugs.due([boot], busy=[boot.handle]) == []  # being flashed
    plugs.finished(boot.handle)
    assert plugs.due([], busy=()) == []  # its reset: gone for a moment...
    assert plugs.due([running], busy=()) == []  # ...and back running: not a plug
    assert plugs.due([], busy=()) == []  # one look without it: maybe a serial misread
    assert plugs.due([boot], busy=()) == []  # so not yet a re-plug
    assert plugs.due([], busy=()) == []
    assert plugs.due([], busy=()) == []  # two looks: unplugged
    assert plugs.due([running], busy=()) == []  # back running (the window missed): left alone
    assert plugs.due([], busy=()) == [] and plugs.due([], busy=()) == []
    assert plugs.due([boot], busy=()) == [boot]  # back in its bootloader: re-plugged


def test_a_failed_camera_left_in_its_bootloader_waits_for_a_replug() -> None:
    boot = AttachedCamera("bootloader", "1-2", "3509015325F265E40748690F")
    plugs = PlugTracker()
    assert plugs.due([boot], busy=()) == [boot]
    plugs.finished(boot.handle)
    for _ in range(5):
        assert plugs.due([boot], busy=()) == []
    plugs.due([], busy=())
    plugs.due([], busy=())
    assert plugs.due([boot], busy=()) == [boot]


def test_the_station_asks_each_enumeration_for_its_serial_once(tmp_path: Path) -> None:
    camera = VirtualCamera(
        DeviceMemory(tmp_path / "a"), None, LATEST_BOOTLOADER, serial=virtual_serial(tmp_path / "a")
    )
    backend = VirtualBackend([camera])
    try:
        cache = SerialCache()
        first = cameras_for(backend, list, cache=cache)
        asked = camera.stats.control_transfers
        assert asked > 0 and [c.serial for c in first] == [virtual_serial(tmp_path / "a")]
        for _ in range(10):
            assert cameras_for(backend, list, cache=cache) == first
        assert camera.stats.control_transfers == asked  # ten looks, no transfer
        cameras_for(backend, list)  # without the cache: asked again
        assert camera.stats.control_transfers > asked
    finally:
        backend.shutdown()


def test_a_camera_stays_this_process_between_sessions(tmp_path: Path, bundle: Path) -> None:
    """A station ends one session after another on the same camera: in between, no
    other process may take it (a real camera stays on this host's bus)."""
    from ae3tools.virtual.camera import virtual_bus
    from ae3tools.virtual.memory import CameraInUse

    backend = virtual_bus([tmp_path / "a"], timing=Timing.zero())
    try:
        (camera,) = cameras_for(backend, list)
        (result,) = flash_cameras(
            Worker(backend, list, FlashJob(tuple(read_bundle(bundle)))), [camera]
        )
        assert result.ok
        with pytest.raises(CameraInUse):
            DeviceMemory(tmp_path / "a").claim()
    finally:
        backend.shutdown()
    other = DeviceMemory(tmp_path / "a")
    other.claim()  # free once the process lets it go
    other.release()


def test_many_camera_options_that_contradict_are_usage_errors(
    cli, tmp_path: Path, bundle: Path
) -> None:
    cam = virtual(tmp_path / "a")
    for args, says in (
        (("--all", "--station"), "give one"),
        (("--count", "2"), "--count goes with --station"),
        (("--station", "--log", tmp_path), "not a regular file"),
    ):
        result = cli("flash", bundle, *args, *cam, *ZERO, "--json")
        assert result.code == 2 and says in json.loads(result.out)["error"], args


def test_json_progress_ends_an_error_with_a_one_line_report(
    cli, tmp_path: Path, bundle: Path
) -> None:
    """The stream stays one JSON object per line, errors included: a failure is its last
    event, a report (it was a six-line object, and no report followed)."""
    result = cli("flash", bundle, "--json-progress", *virtual(tmp_path / "no" / "cam"), *ZERO)
    assert result.code == 2
    (line,) = result.out.splitlines()
    event = json.loads(line)
    assert event["event"] == "report" and event["ok"] is False and event["exit_code"] == 2


def test_a_downgrade_is_refused_unless_allowed(cli, tmp_path: Path) -> None:
    """A running v5.0.0 camera and a bundle whose HP says OpenMV v4.8.1: refused before
    anything is written (one camera, and each camera of --all, the log saying why), and
    flashed with --allow-downgrade."""
    good = Path(__file__).resolve().parent.parent / "fixtures" / "good"
    hp = bytearray((good / "firmware_M55_HP.bin").read_bytes())
    banner = b"OpenMV v4.8.1; MicroPython v1.25.0; OpenMV-AE3 with AE302F80F55D5AE"
    hp[0x400 : 0x400 + len(banner)] = banner
    (tmp_path / "hp.bin").write_bytes(bytes(hp))
    older = tmp_path / "older.zip"
    images = ("--he", good / "firmware_M55_HE.bin", "--romfs1", good / "romfs1.img",
              "--romfs0", good / "romfs0.img")  # fmt: skip
    made = cli("bundle", "--hp", tmp_path / "hp.bin", *images, "-o", older)
    assert made.code == 0, made.err
    camera = tmp_path / "cam"
    running = ("--virtual-mode", "app", *ZERO)
    refused = cli("flash", older, *virtual(camera), *running)
    assert refused.code == 1 and "older than the v5.0.0 the camera was running" in refused.err
    assert "--allow-downgrade" in refused.err
    assert not holds(camera, read_bundle(older)[:1])
    log = tmp_path / "line.jsonl"
    many = cli("flash", older, "--all", "--log", log, *virtual(tmp_path / "c2"), *running)
    assert many.code == 1 and "refused" in str(_lines(log)[0]["error"])
    assert cli("flash", older, "--allow-downgrade", *virtual(camera), *running).code == 0
    assert holds(camera, read_bundle(older))
