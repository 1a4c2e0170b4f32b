"""ae3tools benchmarks: prints figures; asserts nothing (targets are in the README).

1. bundle: write and verify a full-size bundle (HP 3 MiB, HE 1.4 MiB, ROMFS1 1 MiB,
   ROMFS0 24 MiB): wall time and the part spent hashing.
2. host cost: flash it into the virtual AE3 at zero device cost: host CPU per MiB
   written, and per MiB read back.
3. incremental flashing: under the realistic timing model on a simulated clock (device
   time added up, not slept: exact and repeatable), each re-flash case against a full
   rewrite of the same set: modelled device time, ratio, blocks written, host CPU.
4. start-up: CPU of `ae3tools inspect` on a small file and of `ae3tools --help`, each a
   fresh process (minimum and median of several runs: the machine's noise is large).
5. many cameras: N = 1, 2, 4, 8 virtual AE3s on one bus, realistic model in real time
   (the device's work is slept, as a real camera's takes time), each re-flashed after
   its HP was rebuilt, all at once through `ae3tools.device.fleet`: wall time against one
   camera's (the ratio), and the host CPU.
6. --bridge: on one umockdev bridge and the realistic model (wall clock), the seed's four
   real dfu-util calls against `ae3tools flash` through real libusb: a fresh flash with
   and without read-back, and the re-flash after a small HP change.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ae3tools.board import DFU_BLOCK_SIZE, FLASH_ORDER, Role, partition_for_role
from ae3tools.dfu.builder import ImageResult
from ae3tools.dfu.flash import flash_images
from ae3tools.dfu.host import DfuSession, find_bootloaders
from ae3tools.release.bundle import BundleImage, ReleaseInfo, read_bundle, write_bundle
from ae3tools.virtual.backend import VirtualBackend
from ae3tools.virtual.bootloader import VirtualAE3, virtual_serial
from ae3tools.virtual.memory import DeviceMemory
from ae3tools.virtual.timing import SimulatedClock, Timing
from tests.fullsize import firmware, make_full_size_set

MIB = 1024 * 1024
ROOT = Path(__file__).resolve().parent.parent
BRIDGE = ROOT / "scripts" / "with-virtual-ae3"
AE3TOOLS = Path(sys.executable).with_name("ae3tools")


def flash_once(
    images: Sequence[BundleImage],
    timing: Timing,
    *,
    memory: DeviceMemory | None = None,
    incremental: bool = True,
    verify: bool = True,
) -> tuple[float, list[ImageResult], VirtualAE3]:
    """One flash into a virtual AE3 on a simulated clock; returns the host's CPU seconds."""
    clock = SimulatedClock()
    device = VirtualAE3(memory or DeviceMemory(), timing, clock=clock, sleep=clock.sleep)
    started = time.process_time()
    session = DfuSession(find_bootloaders(VirtualBackend([device]))[0])
    session.check_layout(session.open().alt_names)
    results = flash_images(session, images, incremental=incremental, verify=verify)
    session.detach_and_reset()
    return time.process_time() - started, results, device


def changed(image: BundleImage, offsets: Sequence[int]) -> BundleImage:
    data = bytearray(image.data)
    for offset in offsets:
        data[offset] ^= 0x5A
    return replace(image, data=bytes(data))


def cases(images: list[BundleImage]) -> dict[str, list[BundleImage]]:
    """The re-flash cases of issue 9, each applied to a camera holding `images`."""
    by_role = {image.role: image for image in images}
    hp, romfs0 = by_role[Role.HP], by_role[Role.ROMFS0]
    rng = random.Random(9)
    romfs0_blocks = -(-len(romfs0.data) // DFU_BLOCK_SIZE)
    tenth = rng.sample(range(romfs0_blocks), romfs0_blocks // 10)
    rebuilt = firmware(Role.HP, len(hp.data), seed=b"rebuilt")

    def swap(new: BundleImage) -> list[BundleImage]:
        return [new if image.role is new.role else image for image in images]

    return {
        "same bundle again": images,
        "HP changed in 4 bytes": swap(changed(hp, [0x1234, 0x1235, 0x1236, 0x1237])),
        "HP fully rebuilt": swap(replace(hp, data=rebuilt)),
        "10% of ROMFS0's blocks changed": swap(
            changed(romfs0, [b * DFU_BLOCK_SIZE + 7 for b in tenth])
        ),
    }


def incremental_table(images: list[BundleImage]) -> None:
    timing = Timing.realistic()
    print("\nincremental flashing, realistic model on a simulated clock (modelled device time):")
    print(f"  {'case':<34} {'device s':>9} {'ratio':>7} {'written':>13} {'host CPU s':>11}")
    _, _, full = flash_once(images, timing, incremental=False)
    full_time = full.stats.device_time

    def row(label: str, device: VirtualAE3, results: list[ImageResult], cpu: float) -> None:
        written = sum(r.written for r in results)
        blocks = sum(r.blocks for r in results)
        seconds = device.stats.device_time
        print(
            f"  {label:<34} {seconds:9.2f} {seconds / full_time:7.3f} "
            f"{f'{written}/{blocks}':>13} {cpu:11.2f}"
        )

    cpu, results, device = flash_once(images, timing, incremental=False)
    row("blank camera, --full", device, results, cpu)
    cpu, results, device = flash_once(images, timing)
    row("blank camera, incremental", device, results, cpu)
    for label, new_images in cases(images).items():
        memory = DeviceMemory()
        flash_once(images, Timing.zero(), memory=memory)  # the camera holds the release
        cpu, results, device = flash_once(new_images, timing, memory=memory)
        row(label, device, results, cpu)


def host_cost(images: list[BundleImage]) -> None:
    mib = sum(len(image.data) for image in images) / MIB
    cpu_write, _, _ = flash_once(images, Timing.zero(), incremental=False, verify=False)
    cpu_both, _, device = flash_once(images, Timing.zero(), incremental=False)
    print(
        f"\nzero device cost, --full: host CPU {1000 * cpu_write / mib:.1f} ms per MiB written, "
        f"{1000 * (cpu_both - cpu_write) / mib:.1f} ms per MiB read back "
        f"({device.stats.control_transfers} control transfers with read-back)"
    )


def many_cameras(images: list[BundleImage], counts: Sequence[int] = (1, 2, 4, 8)) -> None:
    from ae3tools.device.fleet import FlashJob, Worker, cameras_for, flash_cameras
    from ae3tools.dfu.protocol import LATEST_BOOTLOADER
    from ae3tools.virtual.camera import VirtualCamera

    new_images = cases(images)["HP fully rebuilt"]
    print("\nmany cameras at once, realistic model in real time (HP rebuilt on each camera):")
    print(f"  {'cameras':>7} {'wall s':>8} {'ratio':>7} {'per camera s':>13} {'host CPU s':>11}")
    single = 0.0
    for count in counts:
        memories = []
        for _ in range(count):
            memory = DeviceMemory()
            flash_once(images, Timing.zero(), memory=memory)  # each camera holds the release
            memories.append(memory)
        cameras = [
            VirtualCamera(memory, None, LATEST_BOOTLOADER, timing=Timing.realistic(),
                          serial=virtual_serial(Path(f"camera-{index}")), port=index + 1,
                          sleep=time.sleep)
            for index, memory in enumerate(memories)
        ]  # fmt: skip
        backend = VirtualBackend(cameras)
        found = cameras_for(backend, list)
        started, cpu = time.perf_counter(), time.process_time()
        results = flash_cameras(Worker(backend, list, FlashJob(tuple(new_images))), found)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        backend.shutdown()
        assert len(results) == count and all(r.ok for r in results), results
        single = single or wall
        mean = sum(r.seconds for r in results) / count
        print(f"  {count:>7} {wall:8.2f} {wall / single:7.3f} {mean:13.2f} {cpu:11.2f}")


def child_cpu(args: list[str], runs: int = 15) -> tuple[float, float]:
    samples = []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        samples.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    samples.sort()
    return samples[0], samples[len(samples) // 2]


def startup() -> None:
    print("\nstart-up CPU (fresh process each, bytecode cached): min / median")
    small = ROOT / "fixtures" / "good" / "key.bin"
    for label, args in (
        ("ae3tools inspect key.bin", [str(AE3TOOLS), "inspect", str(small)]),
        ("ae3tools --help", [str(AE3TOOLS), "--help"]),
        ("python -c pass", [sys.executable, "-c", "pass"]),
    ):
        low, median = child_cpu(args)
        print(f"  {label:<26} {low:.3f} s / {median:.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--bridge",
        action="store_true",
        help="also compare real dfu-util with ae3tools through the umockdev bridge "
        "(wall clock: minutes at full size)",
    )
    parser.add_argument(
        "--romfs0-mib",
        type=float,
        default=None,
        help="shrink ROMFS0 to this many MiB for a quicker run (default: 24)",
    )
    parser.add_argument("--cameras-only", action="store_true", help="only the many-cameras section")
    args = parser.parse_args()
    romfs0_size = int(args.romfs0_mib * MIB) if args.romfs0_mib else None

    with tempfile.TemporaryDirectory() as tmp:
        inputs = make_full_size_set(Path(tmp) / "set", romfs0_size)
        total_bytes = sum(p.stat().st_size for p in inputs.values())
        out = Path(tmp) / "full.zip"
        started = time.perf_counter()
        write_bundle(out, inputs, ReleaseInfo())
        write_time = time.perf_counter() - started
        started = time.perf_counter()
        images = read_bundle(out)
        read_time = time.perf_counter() - started
        started = time.perf_counter()
        for image in images:
            hashlib.sha256(image.data).hexdigest()
        hash_time = time.perf_counter() - started
        print(f"full-size set: {total_bytes / MIB:.1f} MiB in {len(images)} images")
        print(
            f"bundle write (validate + hash + zip): {write_time:.3f} s; "
            f"verify/read: {read_time:.3f} s; sha256 of all images: {hash_time:.3f} s"
        )
        if args.cameras_only:
            many_cameras(images)
            return
        host_cost(images)
        incremental_table(images)
        startup()
        many_cameras(images)
        if args.bridge:
            bridge_comparison(inputs, out, Path(tmp))


def bridged(memory: Path, command: list[str], report: Path) -> dict:
    """Run `command` against a realistic virtual AE3 on the umockdev bridge."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AE3TOOLS_VIRTUAL")}
    report.unlink(missing_ok=True)  # a run that writes none must not show the last one
    subprocess.run(
        [
            str(BRIDGE),
            "--memory",
            str(memory),
            "--timing",
            "realistic",
            "--report",
            str(report),
            "--",
            *command,
        ],
        check=False,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    result: dict = json.loads(report.read_text())
    return result


def dfu_util_calls(files: dict[Role, Path]) -> list[str]:
    """The seed's four `dfu-util -w -D` calls, --reset on the last."""
    calls = []
    for index, role in enumerate(FLASH_ORDER):
        call = ["dfu-util", "-w", "-d", ",37C5:96E3", "-a", str(partition_for_role(role).alt)]
        call += ["-D", str(files[role])]
        calls.append(" ".join(call + (["--reset"] if index == len(FLASH_ORDER) - 1 else [])))
    return ["sh", "-c", "; ".join(f"{c} >/dev/null 2>&1" for c in calls)]


def bridge_comparison(inputs: dict[Role, Path], bundle: Path, tmp: Path) -> None:
    # The re-flash case: the camera holds the bundle, then HP changes in 4 bytes.
    hp = bytearray(inputs[Role.HP].read_bytes())
    hp[0x1234:0x1238] = bytes(b ^ 0x5A for b in hp[0x1234:0x1238])
    changed_dir = tmp / "changed"
    changed_dir.mkdir()
    changed_inputs = dict(inputs)
    changed_inputs[Role.HP] = changed_dir / inputs[Role.HP].name
    changed_inputs[Role.HP].write_bytes(bytes(hp))
    changed_bundle = tmp / "changed.zip"
    write_bundle(changed_bundle, changed_inputs, ReleaseInfo())

    ae3 = str(AE3TOOLS)
    fresh = {
        "dfu-util x4 (no read-back)": dfu_util_calls(inputs),
        "ae3tools flash --full": [ae3, "flash", str(bundle), "--full", "--json"],
        "ae3tools flash --full --no-verify": [
            ae3, "flash", str(bundle), "--full", "--no-verify", "--json"
        ],
    }  # fmt: skip
    reflash = {
        "dfu-util x4, HP changed": dfu_util_calls(changed_inputs),
        "ae3tools flash, HP changed": [ae3, "flash", str(changed_bundle), "--json"],
    }
    print("\nthrough the umockdev bridge, realistic timing, wall clock:")
    results = {}
    for label, command in fresh.items():
        camera = tmp / f"cam-{len(results)}"
        results[label] = bridged(camera, command, tmp / "report.json")
    for label, command in reflash.items():
        camera = tmp / f"cam-{len(results)}"
        bridged(camera, [ae3, "flash", str(bundle), "--json"], tmp / "report.json")
        results[label] = bridged(camera, command, tmp / "report.json")
    for label, report in results.items():
        overhead = report["seconds"] - report["device_seconds"]
        print(
            f"  {label:<34} {report['seconds']:8.1f} s   device {report['device_seconds']:7.1f} s"
            f"   host overhead {overhead:6.2f} s   {report['control_transfers']} transfers, "
            f"exit {report['exit_status']}"
        )
    base = results["dfu-util x4 (no read-back)"]["seconds"]
    for label in list(fresh)[1:]:
        print(f"  {label} / dfu-util x4: {results[label]['seconds'] / base:.3f}")
    ratio = results["ae3tools flash, HP changed"]["seconds"]
    ratio /= results["dfu-util x4, HP changed"]["seconds"]
    print(f"  re-flash after an HP change, ae3tools / dfu-util x4: {ratio:.3f}")


if __name__ == "__main__":
    main()
