"""ae3tools benchmarks: prints figures; asserts nothing (targets are in the README).

1. bundle: write and verify a full-size bundle (HP 3 MiB, HE 1.4 MiB, ROMFS1 1 MiB,
   ROMFS0 24 MiB): wall time and the part spent hashing.
2. host cost: flash it into the virtual AE3 at zero device cost: host seconds per MiB
   written, and per MiB read back.
3. realistic: the same flash under the realistic timing model: total time next to the
   model's own device time; host overhead = total - device time.
4. against dfu-util's flow: four `dfu-util -D` calls each sleep 1 s after the manifest
   and wait for the device anew; their lower bound is the device's write time + 4 s.
5. --bridge: on one umockdev bridge and the realistic model, the seed's four real
   dfu-util calls against one `ae3tools flash` through real libusb, with and without
   read-back: times, the model's device time, ratios and host overhead.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ae3tools.bundle import ReleaseInfo, read_bundle, write_bundle
from ae3tools.dfu.flash import flash_images
from ae3tools.dfu.host import DfuSession, wait_for_bootloader
from ae3tools.dfu.virtual import DeviceMemory, Timing, VirtualAE3
from ae3tools.dfu.virtual_backend import VirtualBackend
from tests.fullsize import make_full_size_set

MIB = 1024 * 1024
ROOT = Path(__file__).resolve().parent.parent
BRIDGE = ROOT / "scripts" / "with-virtual-ae3"
DFU_UTIL_MANIFEST_SLEEP = 1.0  # dfu-util sleeps 1 s after it sees dfuMANIFEST (spec §9)


def flash_once(images: list, timing: Timing, verify: bool) -> tuple[float, float, VirtualAE3]:
    device = VirtualAE3(DeviceMemory(), timing)
    backend = VirtualBackend([device])
    started = time.perf_counter()
    session = DfuSession(wait_for_bootloader(backend))
    session.check_layout(session.open().alt_names)
    results = flash_images(session, images, verify=verify)
    session.detach_and_reset()
    total = time.perf_counter() - started
    verify_time = sum(r.verify_seconds or 0 for r in results)
    return total, verify_time, device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--skip-realistic",
        action="store_true",
        help="skip the in-process realistic-timing runs (minutes: ROMFS0 is NOR)",
    )
    parser.add_argument(
        "--bridge",
        action="store_true",
        help="also compare real dfu-util with ae3tools through the umockdev bridge",
    )
    parser.add_argument(
        "--romfs0-mib",
        type=float,
        default=None,
        help="shrink ROMFS0 to this many MiB for a quicker run (default: 24)",
    )
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
        if args.bridge:
            bridge_comparison(inputs, out, Path(tmp))

    print(f"full-size set: {total_bytes / MIB:.1f} MiB in {len(images)} images")
    print(
        f"bundle write (validate + hash + zip): {write_time:.3f} s; "
        f"verify/read: {read_time:.3f} s; sha256 of all images: {hash_time:.3f} s"
    )

    total, verify_time, device = flash_once(images, Timing.zero(), verify=True)
    write_time = total - verify_time
    mib = total_bytes / MIB
    print(
        f"\nzero device cost, with read-back: {total:.2f} s "
        f"({device.stats.control_transfers} control transfers)"
    )
    print(
        f"  host time per MiB written: {1000 * write_time / mib:.1f} ms; "
        f"per MiB read back: {1000 * verify_time / mib:.1f} ms"
    )
    host_write, host_verify = write_time, verify_time

    if args.skip_realistic:
        return
    timing = Timing.realistic()
    for verify in (True, False):
        total, _, device = flash_once(images, timing, verify=verify)
        device_time = device.stats.device_time
        overhead = total - device_time
        label = "with read-back" if verify else "without read-back"
        print(
            f"\nrealistic timing, {label}: total {total:.1f} s, model device time "
            f"{device_time:.1f} s, host overhead {overhead:.2f} s "
            f"({100 * overhead / device_time:.2f}% of device time)"
        )
        if not verify:
            write_device_time = device_time
    # dfu-util's flow: the same device write time, a 1 s manifest sleep per image, and
    # process start and device wait per call (not counted: this is a lower bound).
    dfu_util_bound = write_device_time + len(images) * DFU_UTIL_MANIFEST_SLEEP
    print(
        f"\ndfu-util four-call flow, lower bound (device write time + "
        f"{len(images)} x {DFU_UTIL_MANIFEST_SLEEP:.0f} s manifest sleeps): "
        f"{dfu_util_bound:.1f} s"
    )
    print(
        f"host cost of a zero-cost flash for reference: write {host_write:.2f} s, "
        f"read-back {host_verify:.2f} s"
    )


def bridged(memory: Path, command: list[str], report: Path) -> dict:
    """Run `command` against a realistic virtual AE3 on the umockdev bridge."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AE3TOOLS_VIRTUAL")}
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


def bridge_comparison(inputs: dict, bundle: Path, tmp: Path) -> None:
    from ae3tools.board import FLASH_ORDER, partition_for_role

    calls = []
    for index, role in enumerate(FLASH_ORDER):
        call = [
            "dfu-util",
            "-w",
            "-d",
            ",37C5:96E3",
            "-a",
            str(partition_for_role(role).alt),
            "-D",
            str(inputs[role]),
        ]
        calls.append(" ".join(call + (["--reset"] if index == len(FLASH_ORDER) - 1 else [])))
    ae3tools = str(Path(sys.executable).with_name("ae3tools"))
    runs = {
        "dfu-util x4 (no read-back)": [
            "sh",
            "-c",
            "; ".join(f"{c} >/dev/null 2>&1" for c in calls),
        ],
        "ae3tools flash (read-back)": [ae3tools, "flash", str(bundle), "--json"],
        "ae3tools flash --no-verify": [ae3tools, "flash", str(bundle), "--no-verify", "--json"],
    }
    print("\nthrough the umockdev bridge, realistic timing, same images:")
    results = {}
    for label, command in runs.items():
        results[label] = report = bridged(tmp / "bridge-cam", command, tmp / "report.json")
        overhead = report["seconds"] - report["device_seconds"]
        print(
            f"  {label:<28} {report['seconds']:8.1f} s   device {report['device_seconds']:7.1f} s"
            f"   host overhead {overhead:6.2f} s ({100 * overhead / report['device_seconds']:.2f}%)"
            f"   {report['control_transfers']} transfers, exit {report['exit_status']}"
        )
    base = results["dfu-util x4 (no read-back)"]["seconds"]
    for label in list(runs)[1:]:
        print(f"  {label} / dfu-util x4: {results[label]['seconds'] / base:.3f}")


if __name__ == "__main__":
    main()
