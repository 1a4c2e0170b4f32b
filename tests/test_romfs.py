"""ROMFS parser, validator, extractor and builder against romfs-format.md and mpremote."""

from __future__ import annotations

import contextlib
import hashlib
import os
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mpremote.romfs import VfsRomWriter

from ae3tools.board import Role, partition_for_role
from ae3tools.findings import Ae3Error, Severity
from ae3tools.formats.romfs import (
    OPENMV_ALIGNMENT,
    AlignmentRule,
    BuildOptions,
    RomfsImage,
    build_romfs,
    encode_vint,
    extract,
    file_digests,
    parse_romfs,
    read_vint,
    reader,
)
from tests.conftest import FIXTURES, mpremote_build

SPEC = FIXTURES / "romfs"


def codes(image: bytes, **kwargs: object) -> set[str]:
    return {f.code for f in parse_romfs(image, **kwargs).findings}  # type: ignore[arg-type]


# A tiny independent encoder for hand-made images (minimal vints, like mpremote).
def rec(kind: int, payload: bytes) -> bytes:
    return encode_vint(kind) + encode_vint(len(payload)) + payload


def named(kind: int, name: bytes, *children: bytes) -> bytes:
    return rec(kind, encode_vint(len(name)) + name + b"".join(children))


def fs(*records: bytes) -> bytes:
    payload = b"".join(records)
    return b"\xd2\xcd\x31" + encode_vint(len(payload)) + payload


def file(name: bytes, data: bytes) -> bytes:
    return named(5, name, rec(2, data))


# ------------------------------------------------------------------ vints (romfs §1)


@pytest.mark.parametrize(
    ("value", "encoded"),
    [(0, "00"), (127, "7f"), (128, "8100"), (256, "8200"), (0x14A6B1, "d2cd31")],
)
def test_vint_canonical_examples(value: int, encoded: str) -> None:
    assert encode_vint(value).hex() == encoded
    raw = bytes.fromhex(encoded)
    assert read_vint(raw, 0, len(raw))[:2] == (value, len(raw))


def test_vint_padding_adds_nothing() -> None:
    raw = b"\x80" * 40 + b"\x81\x00"
    assert read_vint(raw, 0, len(raw)) == (128, 42, 40)


# ------------------------------------------------------------------ spec hexdumps (§10)


def test_spec_flat_image() -> None:
    parsed = parse_romfs((SPEC / "mpremote-flat.img").read_bytes())
    assert [(e.path, e.size, e.data_offset) for e in parsed.entries] == [
        ("/a.txt", 6, 0x0E),
        ("/main.py", 12, 0x20),
    ]
    assert parsed.findings == () and parsed.builder == "mpremote-style"


def test_spec_nested_image_matches_the_readers_listing() -> None:
    data = (SPEC / "mpremote-nested.img").read_bytes()
    parsed = parse_romfs(data)
    assert [(e.path, e.type, e.size) for e in parsed.entries] == [
        ("/empty", "dir", 0),
        ("/lib", "dir", 39),  # romfs §10.2: listdir reports 39 for lib
        ("/lib/mod.py", "file", 6),
        ("/lib/sub", "dir", 16),  # 0x14 payload minus 4 name bytes
        ("/lib/sub/data.bin", "file", 3),
        ("/readme.txt", "file", 4),
        ("/zero.bin", "file", 0),
    ]
    assert parsed.ok and parsed.header is not None and parsed.header.length_pads == 1
    digests = dict(
        zip((e.path for e in parsed.entries), file_digests(data, parsed.entries), strict=True)
    )
    assert digests["/lib/sub/data.bin"] == hashlib.sha256(b"ABC").hexdigest()
    assert digests["/lib"] is None


def test_spec_openmv_image() -> None:
    parsed = parse_romfs((SPEC / "openmv-spec.img").read_bytes())
    offsets = {e.path: e.data_offset for e in parsed.files}
    assert offsets == {
        "/model_a.tflite": 0x30,
        "/model_a.txt": 0xAC,
        "/notes.txt": 0xD4,
        "/model_b.tflite": 0xF0,
    }
    assert parsed.builder == "openmv-style"
    # romfs §6: 273 bytes is odd, which the reader accepts: a warning, not an error.
    assert {f.code for f in parsed.findings} == {"ROMFS_ODD_SIZE"}
    assert parsed.ok


# ------------------------------------------------------------------ mpremote as the peer


def tree_contents(root: Path) -> dict[str, bytes]:
    found = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            found["/" + path.relative_to(root).as_posix()] = path.read_bytes()
    return found


def image_contents(image: bytes) -> dict[str, bytes]:
    parsed = parse_romfs(image)
    assert parsed.ok, parsed.findings
    return {
        e.path: image[e.data_offset : e.data_offset + e.size]  # type: ignore[operator]
        for e in parsed.files
    }


def test_parses_what_the_mpremote_cli_builds(tmp_path: Path) -> None:
    source = FIXTURES / "trees" / "romfs0"
    image = mpremote_build(source, tmp_path / "out.img")
    assert image_contents(image) == tree_contents(source)
    assert parse_romfs(image).builder == "mpremote-style"


def test_committed_mpremote_fixture_still_matches_mpremote(tmp_path: Path) -> None:
    fresh = mpremote_build(FIXTURES / "trees" / "romfs0", tmp_path / "fresh.img")
    assert fresh == (FIXTURES / "good" / "romfs0.img").read_bytes()


names = st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=12)
trees = st.recursive(
    st.binary(max_size=300),
    lambda children: st.dictionaries(names, children, min_size=0, max_size=5),
    max_leaves=12,
)


def write_tree(root: Path, tree: dict[str, object]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, value in tree.items():
        if isinstance(value, dict):
            write_tree(root / name, value)
        else:
            (root / name).write_bytes(value)  # type: ignore[arg-type]


def mpremote_image(tree: dict[str, object]) -> bytes:
    """mpremote's VfsRomWriter (the library behind `mpremote romfs build`)."""
    writer = VfsRomWriter()

    def add(node: dict[str, object]) -> None:
        for name in sorted(node):
            value = node[name]
            if isinstance(value, dict):
                writer.opendir(name)
                add(value)
                writer.closedir()
            else:
                writer.mkfile(name, value)

    add(tree)
    return writer.finalise()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(tree=st.dictionaries(names, trees, max_size=6))
def test_mpremote_and_our_builder_agree_on_content(tmp_path: Path, tree: dict[str, object]) -> None:
    theirs = mpremote_image(tree)
    source = tmp_path / os.urandom(4).hex()
    write_tree(source, tree)
    ours = build_romfs(source, options=BuildOptions(excludes=())).image  # mpremote packs all
    assert image_contents(ours) == image_contents(theirs) == tree_contents(source)
    ours_parsed, theirs_parsed = parse_romfs(ours), parse_romfs(theirs)
    assert [(e.path, e.type) for e in ours_parsed.entries] == [
        (e.path, e.type) for e in theirs_parsed.entries
    ]
    # romfs §6: no parity pad (OpenMV's builders have none), so an odd size is a note.
    assert not {f.code for f in ours_parsed.findings} - {"ROMFS_SLACK", "ROMFS_ODD_SIZE"}
    for entry in ours_parsed.files:
        wanted = 16 if entry.name.lower().endswith((".tflite", ".lite", ".bin")) else 4
        assert entry.data_offset is not None and entry.data_offset % wanted == 0


def test_builder_aligns_models_to_16_in_any_case_and_others_to_4(tmp_path: Path) -> None:
    (tmp_path / "m.tflite").write_bytes(b"\x01" * 33)
    (tmp_path / "a.txt").write_bytes(b"abc")
    (tmp_path / "b.lite").write_bytes(b"\x03" * 7)
    (tmp_path / "Weights.BIN").write_bytes(b"\x04" * 9)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "z.int8.TFLITE").write_bytes(b"\x02" * 5)
    image = build_romfs(tmp_path).image
    parsed = parse_romfs(image)
    offsets = {e.path: e.data_offset or 0 for e in parsed.files}
    assert all(offsets[p] % 16 == 0 for p in ("/m.tflite", "/b.lite", "/Weights.BIN"))
    assert offsets["/sub/z.int8.TFLITE"] % 16 == 0  # the last suffix decides (romfs §8.14)
    assert offsets["/a.txt"] % 4 == 0
    assert parsed.header is not None and parsed.header.payload_start == 16
    rules = [AlignmentRule("*.txt", 64), *OPENMV_ALIGNMENT]
    custom = build_romfs(tmp_path, options=BuildOptions(alignment=rules)).image
    assert {e.path: e.data_offset for e in parse_romfs(custom).files}["/a.txt"] % 64 == 0


def test_builder_stores_utf8_names_and_refuses_others_and_oversize(tmp_path: Path) -> None:
    (tmp_path / "caf\u00e9.py").write_bytes(b"x")
    image = build_romfs(tmp_path).image
    assert [e.raw_name for e in parse_romfs(image).files] == ["caf\u00e9.py".encode()]
    assert not parse_romfs(image).findings or {f.code for f in parse_romfs(image).findings} <= {
        "ROMFS_ODD_SIZE"
    }
    (tmp_path / "caf\u00e9.py").unlink()
    if os.name == "posix":  # POSIX names are bytes: one that is not UTF-8 is refused, by path
        os.close(os.open(os.path.join(os.fsencode(tmp_path), b"caf\xe9.py"), os.O_CREAT))
        with pytest.raises(Ae3Error, match="caf\udce9\\.py: the name is not valid UTF-8"):
            build_romfs(tmp_path)
        os.unlink(os.path.join(os.fsencode(tmp_path), b"caf\xe9.py"))
    (tmp_path / "big.bin").write_bytes(bytes(partition_for_role(Role.ROMFS1).size))
    with pytest.raises(Ae3Error, match="ROMFS1"):
        build_romfs(tmp_path, partition=partition_for_role(Role.ROMFS1))  # before reading it


# ------------------------------------------------------------------ DATA_POINTER (§5)


def test_data_pointer_written_by_mpremote_api() -> None:
    writer = VfsRomWriter()
    offset = writer.mkdata(b"shared-bytes")
    writer.mkfile("p.txt", (12, offset))
    image = writer.finalise()
    parsed = parse_romfs(image)
    assert parsed.ok and not parsed.findings
    (entry,) = parsed.files
    assert entry.data_kind == "pointer"
    assert image[entry.data_offset : entry.data_offset + entry.size] == b"shared-bytes"


def test_data_pointer_out_of_bounds_and_overlap() -> None:
    pointer = rec(3, encode_vint(4) + encode_vint(100000))
    assert "ROMFS_POINTER_OUT_OF_BOUNDS" in codes(fs(named(5, b"p", pointer)))
    into_header = rec(3, encode_vint(2) + encode_vint(0))
    found = codes(fs(named(5, b"p", into_header)))
    assert "ROMFS_POINTER_OVERLAP" in found and "ROMFS_POINTER_OUT_OF_BOUNDS" not in found
    assert "ROMFS_BAD_POINTER" in codes(fs(named(5, b"p", rec(3, encode_vint(1)))))


# ------------------------------------------------------------------ §7 table, row by row

GOOD = fs(file(b"a", b"xy"))


@pytest.mark.parametrize(
    ("row", "image", "code"),
    [
        ("01", b"\xd2\xcd\x31", "ROMFS_TOO_SHORT"),
        ("02", b"\xd2\xcd\x32\x00", "ROMFS_BAD_MAGIC"),
        ("03", b"\xd2\xcd\x80\x31\x00", "ROMFS_PADDED_KIND"),
        ("04", GOOD[:-1], "ROMFS_TRUNCATED"),
        ("18", b"\xd2\xcd\x31\x80\x80", "ROMFS_BAD_HEADER"),
        ("06", b"\xff" * 4096, "ROMFS_ERASED"),
        ("08", fs(file(b"a", b"1"), rec(0, b""), file(b"b", b"2")), "ROMFS_KIND_ZERO"),
        ("09", fs(named(5, b"a"), file(b"b", b"2")), "ROMFS_FILE_NO_DATA"),
        (
            "11",
            fs(named(5, b"p", rec(3, encode_vint(4) + encode_vint(99999)))),
            "ROMFS_POINTER_OUT_OF_BOUNDS",
        ),
        (
            "13",
            fs(named(5, b"a", b"\x02\x0a" + b"xy"), file(b"b", b"12345678")),
            "ROMFS_RECORD_OVERRUN",
        ),
        ("12", fs(file(b"a", b"1"), file(b"a", b"2")), "ROMFS_NAME_DUPLICATE"),
        ("16", fs(file(b"x/y", b"1")), "ROMFS_NAME_INVALID"),
        ("8.10", fs(file(b"..", b"1")), "ROMFS_NAME_INVALID"),
        ("8.10", fs(file(b"", b"1")), "ROMFS_NAME_EMPTY"),
        ("8.6", fs(rec(5, b"\x09ab")), "ROMFS_BAD_NAME"),
        ("8.9", fs(rec(1, b""), b"\x05\x90\x80\x80\x80\x00"), "ROMFS_VINT_TOO_LARGE"),
    ],
)
def test_invalid_images_are_errors(row: str, image: bytes, code: str) -> None:
    parsed = parse_romfs(image)
    assert code in {f.code for f in parsed.findings}, (row, parsed.findings)
    assert not parsed.ok
    assert all(f.message for f in parsed.findings)


def test_tolerated_properties_are_not_errors() -> None:
    trailing = GOOD + b"\xff" * 100  # row 05
    parsed = parse_romfs(trailing)
    assert parsed.ok and parsed.slack == 100 and "ROMFS_SLACK" in codes(trailing)
    odd = fs(file(b"a", b"x"))  # row 14
    assert len(odd) % 2 == 1 and parsed.ok
    # An odd size is a note: OpenMV's builders never pad (romfs §6).
    assert [(f.code, f.severity) for f in parse_romfs(odd).findings] == [
        ("ROMFS_ODD_SIZE", Severity.INFO)
    ]
    padded = b"\xd2\xcd\x31" + b"\x80" * 30 + GOOD[3:]  # row 17
    assert image_contents(padded) == {"/a": b"xy"}
    skipped = fs(
        rec(1, b"pad"), rec(9, b"meta"), named(5, b"f", rec(7, b""), rec(1, b""), rec(2, b"data"))
    )  # row 07
    parsed = parse_romfs(skipped)
    assert parsed.ok and image_contents(skipped) == {"/f": b"data"}
    assert "ROMFS_UNKNOWN_KIND" in codes(skipped)
    two = fs(named(5, b"f", rec(2, b"first"), rec(2, b"second")))
    assert image_contents(two) == {"/f": b"first"} and "ROMFS_FILE_MULTIPLE_DATA" in codes(two)


def test_partition_fit_and_required_alignment() -> None:
    romfs1 = partition_for_role(Role.ROMFS1)
    big = GOOD + bytes(romfs1.size)
    assert "ROMFS_TOO_BIG" in codes(big, partition=romfs1)
    assert "ROMFS_TOO_BIG" not in codes(big, partition=partition_for_role(Role.ROMFS0))
    misaligned = fs(file(b"m.tflite", b"12345678"))
    assert "ROMFS_MISALIGNED" in codes(misaligned)
    assert "ROMFS_MISALIGNED" not in codes(misaligned, alignment=())


def test_deep_nesting_does_not_recurse() -> None:
    record = file(b"leaf", b"x")
    for _ in range(5000):
        record = named(4, b"d", record)
    parsed = parse_romfs(fs(record))
    assert parsed.ok and parsed.files[0].path.count("/") == 5001


# ------------------------------------------------------------------ extract


def test_extract_writes_the_tree(tmp_path: Path) -> None:
    data = (SPEC / "mpremote-nested.img").read_bytes()
    extract(data, parse_romfs(data), tmp_path / "out")
    assert tree_contents(tmp_path / "out") == image_contents(data)
    assert (tmp_path / "out" / "empty").is_dir()
    with pytest.raises(Ae3Error, match="already exists"):
        extract(data, parse_romfs(data), tmp_path / "out")


def test_extract_never_writes_outside_dest(tmp_path: Path) -> None:
    hostile = fs(
        named(4, b"..", named(4, b"..", file(b"escaped", b"!"))),
        file(b"../escaped2", b"!"),
        file(b"ok", b"fine"),
    )
    dest = tmp_path / "a" / "b"
    dest.mkdir(parents=True)
    extract(hostile, parse_romfs(hostile), dest)
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert written == {"a/b/ok"}


# ------------------------------------------------------------------ fuzz: never crash

SEEDS = [p.read_bytes() for p in sorted(SPEC.glob("*.img"))] + [
    (FIXTURES / "good" / "romfs0.img").read_bytes()
]


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=600), with_magic=st.booleans())
def test_random_bytes_only_produce_findings(data: bytes, with_magic: bool) -> None:
    image = (b"\xd2\xcd\x31" + data) if with_magic else data
    parsed = parse_romfs(image)
    file_digests(image, parsed.entries)
    for entry in parsed.files:
        assert entry.data_offset is not None
        assert entry.data_offset >= 0 and entry.data_offset + entry.size <= len(image)


@settings(
    max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.sampled_from(SEEDS),
    edits=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.integers(0, 1 << 20),
)
def test_mutated_images_only_produce_findings(
    tmp_path: Path, seed: bytes, edits: list[tuple[int, int]], cut: int
) -> None:
    image = bytearray(seed)
    for position, value in edits:
        image[position % len(image)] = value
    image = image[: max(1, cut % (len(image) + 1))]
    parsed = parse_romfs(bytes(image))
    if parsed.header is not None:
        dest = tmp_path / os.urandom(4).hex()
        dest.mkdir()
        with contextlib.suppress(Ae3Error):
            extract(bytes(image), parsed, dest)
        for path in dest.rglob("*"):
            assert dest.resolve() in path.resolve().parents


# ------------------------------------------------------------------ runs of short records

# Records a crafted image repeats by the million: any one-byte kind, up to 3 payload bytes.
short_records = st.builds(rec, st.integers(0, 0x7F), st.binary(max_size=3))
file_children = st.lists(
    st.one_of(
        short_records,
        st.builds(lambda data: rec(2, data), st.binary(max_size=6)),
        st.builds(lambda size, offset: rec(3, encode_vint(size) + encode_vint(offset)),
                  st.integers(0, 40), st.integers(0, 600)),
    ),
    max_size=30,
)  # fmt: skip


def directory_children(depth: int) -> st.SearchStrategy[list[bytes]]:
    item = st.one_of(
        short_records,
        st.builds(lambda name, kids: named(5, name, *kids), st.binary(min_size=1, max_size=3),
                  file_children),
        *( [st.builds(lambda name, kids: named(4, name, *kids), st.binary(min_size=1, max_size=3),
                      directory_children(depth - 1))] if depth else [] ),
    )  # fmt: skip
    return st.lists(item, max_size=30)


def _record_by_record(monkeypatch: pytest.MonkeyPatch, image: bytes) -> RomfsImage:
    with monkeypatch.context() as patched:
        patched.setattr(reader, "short_run", lambda *args, **kwargs: None)
        return parse_romfs(image)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(directory_children(2), st.integers(8, 40))
def test_runs_of_short_records_read_as_record_by_record(
    monkeypatch: pytest.MonkeyPatch, children: list[bytes], repeat: int
) -> None:
    """The run fast path (regex, in C) and the plain walk agree on every entry and every
    finding, wherever runs start and end, inside files and directories, with pointers
    landing in their payloads."""
    run = b"".join(children[:3]) * repeat  # long enough to make runs
    image = fs(*children, run, named(5, b"f", run, rec(3, b"\x02\x05")), *children)
    fast, slow = parse_romfs(image), _record_by_record(monkeypatch, image)
    assert fast.entries == slow.entries
    # The same findings; a run reports its kinds one after the other, so only the order
    # of different codes may differ (each code's first few, and its count, are the same).
    assert sorted(fast.findings, key=repr) == sorted(slow.findings, key=repr)
    for code in {f.code for f in fast.findings}:
        assert [f for f in fast.findings if f.code == code] == [
            f for f in slow.findings if f.code == code
        ]
