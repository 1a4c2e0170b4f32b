"""ROMFS0 updates with and without `romfs build --base`: blocks written and modelled time.

A 2,000-file tree filling most of ROMFS0 is built and flashed to a virtual AE3 (zero
cost); then the tree changes, is rebuilt plain and over the first image (`--base`), and
each rebuild is flashed, as a bundle, onto a camera holding the first: the flasher
writes only the blocks that differ. Device time is the realistic model's on a simulated
clock. Cases: one script grown by 100 bytes; a 2 MB model replaced by a 2.3 MB one. Not
a test: it prints a table.

    .venv/bin/python scripts/bench_romfs_base.py
"""

from __future__ import annotations

import random
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import flash_once

from ae3tools.board import DFU_BLOCK_SIZE, Role
from ae3tools.formats.romfs import build_romfs
from ae3tools.release.bundle import ReleaseInfo, read_bundle, write_bundle
from ae3tools.virtual.memory import DeviceMemory
from ae3tools.virtual.timing import Timing

FILES = 2000
MODEL = "models/person_detect.tflite"


def make_tree(root: Path) -> None:
    """2,000 files of 2 to 18 KB in 20 folders, and a 2 MB model: about 22 MB."""
    rng = random.Random(23)
    for index in range(FILES):
        folder = root / f"lib{index % 20:02}"
        folder.mkdir(parents=True, exist_ok=True)
        suffix = rng.choice(["py", "py", "txt", "bin"])
        (folder / f"m{index:04}.{suffix}").write_bytes(rng.randbytes(rng.randint(2000, 18000)))
    (root / MODEL).parent.mkdir()
    (root / MODEL).write_bytes(rng.randbytes(2 * 1024 * 1024))


def grow_one_script(root: Path) -> None:
    script = root / "lib07" / "m0007.py"
    if not script.exists():
        script = next(iter(sorted((root / "lib07").glob("*.py"))))
    script.write_bytes(script.read_bytes() + b"#" * 100)


def replace_model(root: Path) -> None:
    (root / MODEL).write_bytes(random.Random(5).randbytes(2_300_000))


def as_bundle_image(image: bytes, work: Path, name: str):  # type: ignore[no-untyped-def]
    path = work / f"{name}.img"
    path.write_bytes(image)
    bundle = work / f"{name}.zip"
    write_bundle(bundle, {Role.ROMFS0: path}, ReleaseInfo(), force=True, partial=True)
    return read_bundle(bundle)


def main() -> None:
    cases: dict[str, Callable[[Path], None]] = {
        "one script grown by 100 bytes": grow_one_script,
        "2 MB model replaced by 2.3 MB": replace_model,
    }
    print(f"{'case':<32} {'build':<8} {'written':>12} {'of ROMFS0':>10} {'device s':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tree = work / "tree"
        make_tree(tree)
        first = build_romfs(tree).image
        blocks = -(-len(first) // DFU_BLOCK_SIZE)
        full = flash_once(as_bundle_image(first, work, "full"), Timing.realistic(),
                          incremental=False)[2].stats.device_time  # fmt: skip
        print(f"{'first image, full flash':<32} {'plain':<8} {blocks:>12} {1:>10.3f} {full:9.1f}")
        for label, change in cases.items():
            changed = work / "changed"
            shutil.rmtree(changed, ignore_errors=True)
            shutil.copytree(tree, changed)
            change(changed)
            builds = {
                "plain": build_romfs(changed).image,
                "--base": build_romfs(changed, base=first).image,
            }
            for how, image in builds.items():
                memory = DeviceMemory()
                flash_once(as_bundle_image(first, work, "first"), Timing.zero(), memory=memory)
                _, results, device = flash_once(
                    as_bundle_image(image, work, "new"), Timing.realistic(), memory=memory
                )
                written = sum(r.written for r in results)
                seconds = device.stats.device_time
                print(
                    f"{label:<32} {how:<8} {written:>12} {written / blocks:>10.3f} "
                    f"{seconds:9.1f}"
                )


if __name__ == "__main__":
    main()
