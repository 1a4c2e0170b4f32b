"""Time and peak memory of the ROMFS, Intel HEX and zip readers on hostile inputs.

Each shape is built at the size of the largest partition (ROMFS0, 24 MiB, less a few
bytes so that every shape fits it), then read in a fresh process by `romfs ls` (a
table, and JSON), and by `verify` as the ROMFS0 of a crafted bundle (the fixtures'
good bundle with that image put in, its manifest's length and sha256 made to match),
so the peak RSS is that of one run. Not a test: it prints a table of figures.

    .venv/bin/python scripts/bench_hostile.py [--mib N] [--only NAME] [--repeat N]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from ae3tools.formats.romfs import MAX_ROMFS_SIZE, encode_vint

MAGIC = b"\xd2\xcd\x31"
GOOD = Path(__file__).resolve().parent.parent / "fixtures" / "good"
AE3TOOLS = str(Path(sys.executable).with_name("ae3tools"))
CRAFTED = "crafted.zip"
# Shapes overshoot their size by a few bytes (a last record, a length grown a byte).
SLACK = 64


def filesystem(payload: bytes) -> bytes:
    return MAGIC + encode_vint(len(payload)) + payload


def record(kind: int, payload: bytes) -> bytes:
    return encode_vint(kind) + encode_vint(len(payload)) + payload


def deep_directories(size: int) -> bytes:
    """Directories nested as deep as the size allows: /d/d/d/.../leaf."""
    leaf = record(5, b"\x04leaf" + record(2, b"x"))
    lengths, inner = [], len(leaf)
    while inner < size:
        lengths.append(inner)
        inner += len(encode_vint(4)) + len(encode_vint(inner + 2)) + 2
    heads = [encode_vint(4) + encode_vint(n + 2) + b"\x01d" for n in reversed(lengths)]
    return filesystem(b"".join(heads) + leaf)


def names(count: int) -> list[bytes]:
    alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789"
    width, total = 1, len(alphabet)
    while total < count:
        width, total = width + 1, total * len(alphabet)
    out = []
    for i in range(count):
        digits = bytearray()
        for _ in range(width):
            i, r = divmod(i, len(alphabet))
            digits.append(alphabet[r])
        out.append(bytes(digits))
    return out


def pointer_files(size: int) -> bytes:
    """Files whose content is a DATA_POINTER into shared data: the overlap check."""
    shared = record(2, bytes(64))
    files = []
    total = len(shared)
    for name in names(size // 14):
        entry = record(5, bytes([len(name)]) + name + record(3, encode_vint(8) + encode_vint(4)))
        total += len(entry)
        if total > size:
            break
        files.append(entry)
    return filesystem(shared + b"".join(files))


def repeated(unit: bytes) -> Callable[[int], bytes]:
    def make(size: int) -> bytes:
        return filesystem(unit * (size // len(unit)))

    return make


def empty_directories(size: int) -> bytes:
    """Empty directories with 3-byte binary names: an entry and a name finding per 6 bytes."""
    count = size // 6
    return filesystem(b"".join(b"\x04\x04\x03" + i.to_bytes(3, "big") for i in range(count)))


def long_name(size: int) -> bytes:
    """One directory with a name of half the image, holding files that fill the rest:
    each file's path spelled the name in full."""
    name = b"n" * (size // 2)
    files = b"".join(
        record(5, bytes([len(n)]) + n + record(2, b"")) for n in names((size // 2) // 12)
    )
    return filesystem(record(4, encode_vint(len(name)) + name + files))


def many_files(size: int) -> bytes:
    """A legitimate image: 100,000 files of about 220 bytes, in a few directories."""
    count = 100_000
    body = size // count - 24
    dirs = []
    for d in range(count // 10_000):
        files = b"".join(
            record(5, bytes([len(n)]) + n + record(2, bytes([d]) * body)) for n in names(10_000)
        )
        name = f"dir{d}".encode()
        dirs.append(record(4, bytes([len(name)]) + name + files))
    return filesystem(b"".join(dirs))


def intel_hex(size: int) -> bytes:
    """A ROMFS0-sized image as Intel HEX at its XIP address (0xA0800000)."""
    from ae3tools.board import Role, partition_for_role

    base = partition_for_role(Role.ROMFS0).cpu_address
    assert base is not None
    data = repeated(b"\x01\x00")(size - 16)  # the header too must fit the partition
    lines = []
    for offset in range(0, len(data), 16):
        address = base + offset
        if offset % 0x10000 == 0:
            upper = (address >> 16).to_bytes(2, "big")
            lines.append(_hex_record(0, 4, upper))
        lines.append(_hex_record(address & 0xFFFF, 0, data[offset : offset + 16]))
    lines.append(b":00000001FF")
    return b"\n".join(lines) + b"\n"


def member_flood(manifest: bool) -> Callable[[int], bytes]:
    """A zip of `size` bytes of one-byte members (half a million at 24 MiB): an OpenMV
    release zip, or with `manifest` a bundle whose members the manifest does not list."""

    def make(size: int) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
            if manifest:
                archive.writestr("manifest.json", b"{}")
            index = 0
            while buffer.tell() * 9 // 4 < size:  # its central directory entry, written
                archive.writestr(f"{index:x}", b"x")  # at the close, is as long again and more
                index += 1
        return buffer.getvalue()

    return make


def _hex_record(address: int, kind: int, payload: bytes) -> bytes:
    raw = bytes([len(payload)]) + address.to_bytes(2, "big") + bytes([kind]) + payload
    return b":" + (raw + bytes([-sum(raw) & 0xFF])).hex().upper().encode()


SHAPES: dict[str, tuple[Callable[[int], bytes], str]] = {
    "deep directories": (deep_directories, "img"),
    "DATA_POINTER files": (pointer_files, "img"),
    "2-byte padding": (repeated(b"\x01\x00"), "img"),
    "3-byte padding": (repeated(b"\x01\x01\x00"), "img"),
    "unknown kinds": (repeated(b"\x07\x00\x01\x00\x09\x01\x00"), "img"),
    "kind-0 records": (repeated(b"\x00\x00"), "img"),
    "padded kinds": (repeated(b"\x80\x01\x00"), "img"),
    "two-byte kinds": (repeated(b"\x81\x00\x00"), "img"),
    "4-byte padding": (repeated(b"\x01\x04abcd"), "img"),
    "empty directories": (empty_directories, "img"),
    "long name": (long_name, "img"),
    "100,000 files": (many_files, "img"),
    "Intel HEX ROMFS0": (intel_hex, "hex"),
    "release zip, 1-byte members": (member_flood(manifest=False), "zip"),
    "bundle, unlisted members": (member_flood(manifest=True), "zip"),
}


def measure(command: list[str]) -> tuple[float, float, int]:
    """Wall seconds, peak RSS in MB of that one child, and its exit status."""
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    return seconds, usage.ru_maxrss / 1024, child.returncode


def make_input(name: str, size: int, path: Path) -> None:
    """Write one shape to `path`, and beside it a crafted bundle holding it when it
    fits ROMFS0; in a child process: a process's peak RSS is inherited by the children
    it starts, so the measuring process must stay small."""
    make, _ = SHAPES[name]
    path.write_bytes(make(size))
    path.with_name(CRAFTED).unlink(missing_ok=True)
    if path.suffix == ".img" and path.stat().st_size <= MAX_ROMFS_SIZE:
        crafted_bundle(path, path.with_name(CRAFTED))


def crafted_bundle(image: Path, bundle: Path) -> None:
    """The fixtures' good bundle with `image` as its ROMFS0, the manifest made to agree:
    what an attacker hands `verify`."""
    from ae3tools.release.bundle import MANIFEST_NAME  # here, in the child: see make_input

    good = bundle.with_name("good.zip")
    if not good.exists():
        command = [AE3TOOLS, "bundle", "--from", str(GOOD), "-o", str(good)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    data = image.read_bytes()
    crafted = zipfile.ZipFile(bundle, "w", zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(good) as source, crafted:
        manifest = json.loads(source.read(MANIFEST_NAME))
        (entry,) = [e for e in manifest["images"] if e["role"] == "romfs0"]
        entry.update(length=len(data), sha256=hashlib.sha256(data).hexdigest())
        members = {MANIFEST_NAME: json.dumps(manifest, indent=2).encode(), entry["file"]: data}
        for member in source.namelist():
            crafted.writestr(member, members.get(member) or source.read(member))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=float, default=24.0, help="input size (default 24)")
    parser.add_argument("--only", help="run only the shape whose name contains this")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each command N times and report the fastest, with the slowest beside it "
        "(a shared machine's timings vary by a third from run to run)",
    )
    parser.add_argument("--make", help=argparse.SUPPRESS)  # internal: NAME:SIZE:PATH
    args = parser.parse_args()
    if args.make:
        name, size, path = args.make.rsplit(":", 2)
        make_input(name, int(size), Path(path))
        return
    size = int(args.mib * (1 << 20)) - SLACK
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (_, suffix) in SHAPES.items():
            if args.only and args.only.lower() not in name.lower():
                continue
            path = Path(tmp) / f"shape.{suffix}"
            subprocess.run(
                [sys.executable, __file__, "--make", f"{name}:{size}:{path}"], check=True
            )
            if suffix == "img":
                commands = {
                    "romfs ls": [AE3TOOLS, "romfs", "ls", str(path)],
                    "ls --json": [AE3TOOLS, "romfs", "ls", "--json", str(path)],
                }
                bundle = path.with_name(CRAFTED)
                if bundle.exists():
                    commands["verify"] = [AE3TOOLS, "verify", str(bundle)]
            elif suffix == "zip":
                commands = {
                    "verify": [AE3TOOLS, "verify", str(path)],
                    "flash --dry-run": [AE3TOOLS, "flash", "--dry-run", str(path)],
                }
            else:
                commands = {"inspect": [AE3TOOLS, "inspect", "--json", str(path)]}
            for label, command in commands.items():
                runs = [measure(command) for _ in range(max(1, args.repeat))]
                seconds = min(run[0] for run in runs)
                slowest = max(run[0] for run in runs)
                peak = max(run[1] for run in runs)
                status = runs[0][2]
                rows.append((name, path.stat().st_size, label, seconds, peak, status))
                spread = f" (slowest {slowest:5.2f})" if len(runs) > 1 else ""
                print(
                    f"{name:<20} {path.stat().st_size / (1 << 20):6.1f} MiB  {label:<10}"
                    f" {seconds:6.2f} s{spread}  peak {peak:6.0f} MB  exit {status}",
                    flush=True,
                )
    worst_time = max(r[3] for r in rows)
    worst_memory = max(r[4] for r in rows)
    print(json.dumps({"worst_seconds": round(worst_time, 2), "worst_peak_mb": round(worst_memory)}))


if __name__ == "__main__":
    main()
