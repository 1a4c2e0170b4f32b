"""Issue 8: hostile shapes stay bounded, text from inputs prints literally, one owner per
camera, exit statuses and --json errors, outputs never over inputs."""

from __future__ import annotations

import gc
import json
import os
import random
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ae3tools.board import RAM_REGIONS, Role, partition_for_role
from ae3tools.cli.artifacts import _entry_json, _Listed
from ae3tools.cli.common import print_columns
from ae3tools.collector import collector_paused
from ae3tools.fileio import write_atomic
from ae3tools.findings import FINDINGS_PER_CODE, Ae3Error, DeviceError, Severity
from ae3tools.formats import romfs
from ae3tools.formats.dfu_suffix import SIGNATURE
from ae3tools.formats.intel_hex import parse_hex
from ae3tools.formats.romfs import (
    build_romfs,
    encode_vint,
    extract,
    names,
    parse_romfs,
    records,
    shown_paths,
)
from ae3tools.virtual.bootloader import VirtualAE3
from ae3tools.virtual.memory import CameraInUse, DeviceMemory
from tests.conftest import FIXTURES, ROOT
from tests.test_romfs import directory_children, file, fs, named, rec

GOOD = FIXTURES / "good"
ESC = "\x1b"


# ------------------------------------------------------------------ CI: no SIGPIPE pipelines


def test_no_script_pipes_into_an_early_exiting_reader() -> None:
    """`cmd | grep -q` (or head) kills cmd with SIGPIPE; under pipefail that reads as
    failure about one run in ten: the flake issue 8 began with."""
    shape = re.compile(r"\|\s*(grep\b[^|\n]*\s-[a-zA-Z]*q|head\b)")
    for script in (ROOT / "scripts").iterdir():
        text = script.read_text(errors="replace")
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        assert not shape.search(code), script


# ------------------------------------------------------------------ bounded shapes


def test_deep_nesting_is_linear_and_shown_elided() -> None:
    depth = 50_000
    record = file(b"leaf", b"x")
    for _ in range(depth):
        record = named(4, b"d", record)
    parsed = parse_romfs(fs(record))
    leaf = parsed.files[0]
    assert parsed.ok and leaf.depth == depth + 1
    assert leaf.shown_path.startswith("/d/d/d/d/d/d/d/d/\u2026[49985 levels]\u2026/d/")
    assert leaf.shown_path.endswith("/d/leaf") and len(leaf.shown_path) < 80
    assert leaf.path.count("/") == depth + 1  # the full path is still there when asked


def test_findings_of_one_kind_are_capped_with_a_count() -> None:
    image = fs(b"\x00\x00" * 100_000)
    parsed = parse_romfs(image)
    findings = [f for f in parsed.findings if f.code == "ROMFS_KIND_ZERO"]
    assert len(findings) == FINDINGS_PER_CODE + 1
    assert "99980 more ROMFS_KIND_ZERO findings not shown (100000 in all)" in findings[-1].message
    assert parsed.header is not None
    assert findings[1].location == f"/ @ 0x{parsed.header.payload_start + 2:x}"


@pytest.mark.parametrize(
    "unit",
    [b"\x01\x00", b"\x01\x01\x00", b"\x07\x00\x01\x00\x09\x01\x00", b"\x05\x00"],
    ids=["2-byte padding", "3-byte padding", "unknown kinds", "nameless files"],
)
def test_floods_of_tiny_records_report_once_per_kind(unit: bytes) -> None:
    parsed = parse_romfs(fs(unit * 50_000))
    for code in {f.code for f in parsed.findings}:
        assert sum(f.code == code for f in parsed.findings) <= FINDINGS_PER_CODE + 1


def test_pointer_overlap_check_handles_many_pointers() -> None:
    shared = rec(2, bytes(64))
    files = [
        named(5, f"f{i}".encode(), rec(3, bytes([8, 4 if i % 2 else 0]))) for i in range(20_000)
    ]
    parsed = parse_romfs(fs(shared, *files))
    overlaps = [f for f in parsed.findings if f.code == "ROMFS_POINTER_OVERLAP"]
    assert len(parsed.files) == 20_000
    assert overlaps and "9980 more" in overlaps[-1].message  # half point across headers


def test_header_length_past_32_bits_says_so() -> None:
    image = b"\xd2\xcd\x31" + bytes([0x90, 0x80, 0x80, 0x80, 0x00]) + bytes(8)
    (finding,) = parse_romfs(image).findings
    assert finding.code == "ROMFS_VINT_TOO_LARGE" and "32 bits" in finding.message


def test_build_of_a_very_deep_tree_does_not_recurse(tmp_path: Path) -> None:
    top = here = tmp_path / "tree"
    top.mkdir()
    for _ in range(1100):  # deeper than Python's default recursion limit
        here = here / "d"
        here.mkdir()
    (here / "leaf.txt").write_bytes(b"deep")
    try:
        parsed = parse_romfs(build_romfs(top).image)
        assert parsed.ok and parsed.files[0].depth == 1101
    finally:  # shutil.rmtree (pytest's clean-up) recurses per level: unwind by hand
        (here / "leaf.txt").unlink()
        while here != tmp_path:
            here.rmdir()
            here = here.parent


def _few_records(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    """Lower the record cap so a small image shows what a crafted 24 MiB one does."""
    monkeypatch.setattr(records, "MAX_RECORDS", count)


@pytest.mark.parametrize(
    ("cap", "where", "into"),
    [(50, "/", 0), (51, "/f24", len(b"\x05\x07\x03f24"))],  # f24's FILE record, its data
    ids=["at a file", "inside a file"],
)
def test_the_walk_stops_at_the_record_cap_with_one_error(
    monkeypatch: pytest.MonkeyPatch, cap: int, where: str, into: int
) -> None:
    """Records past the cap are not read: a file cut short is neither listed nor said to
    have no data, and a pointer to data the walk never reached is not judged."""
    _few_records(monkeypatch, cap)

    def pointer_to(target: int) -> bytes:
        return named(5, b"p", rec(3, encode_vint(4) + encode_vint(target)))

    files = [file(f"f{i}".encode(), b"x") for i in range(60)]
    # late data's payload, from the FILESYSTEM payload's start (two-byte vints either way)
    target = len(pointer_to(1000)) + len(b"".join(files)) + 2
    pointer = pointer_to(target)
    parsed = parse_romfs(fs(pointer, *files, rec(2, b"late data")))
    (stop,) = [f for f in parsed.findings if f.code == "ROMFS_TOO_MANY_RECORDS"]
    assert stop.severity is Severity.ERROR and not parsed.ok
    assert len(parsed.files) == 25  # the pointer file and f0 to f23: two records each
    assert parsed.header is not None
    f24 = parsed.header.payload_start + len(pointer) + sum(map(len, files[:24]))
    assert stop.location == f"{where} @ 0x{f24 + into:x}"
    assert {f.code for f in parsed.findings} == {"ROMFS_TOO_MANY_RECORDS", "ROMFS_ODD_SIZE"}


@pytest.mark.parametrize(
    "unit",
    [b"\x80\x01\x00", b"\x81\x00\x00", b"\x01\x04abcd", b"\x04\x02\x01d"],
    ids=["padded kind", "two-byte kind", "4-byte padding", "empty directories"],
)
def test_every_record_read_one_by_one_counts(monkeypatch: pytest.MonkeyPatch, unit: bytes) -> None:
    """Records the run fast path does not take are the ones the cap is for: a 24 MiB
    image of them took 23 to 37 s before it (scripts/bench_hostile.py)."""
    _few_records(monkeypatch, 100)
    for count, stopped in ((100, False), (101, True)):
        codes = {f.code for f in parse_romfs(fs(unit * count)).findings}
        assert ("ROMFS_TOO_MANY_RECORDS" in codes) is stopped


def test_the_collector_is_paused_only_inside(tmp_path: Path, cli) -> None:
    """Listings pause Python's cycle collector; it comes back as it was, even after an
    exception, and a pause inside a pause leaves it off."""
    states = []
    with collector_paused():
        states.append(gc.isenabled())
        with collector_paused():
            states.append(gc.isenabled())
        states.append(gc.isenabled())
    states.append(gc.isenabled())
    with pytest.raises(KeyError), collector_paused():
        raise KeyError
    assert states == [False, False, False, True] and gc.isenabled()
    path = tmp_path / "bad.img"
    path.write_bytes(fs(file(b"", b"x")))
    assert cli("romfs", "ls", path).code == 1 and gc.isenabled()


def test_build_refuses_a_tree_past_the_record_cap(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _few_records(monkeypatch, 10)
    for index in range(5):  # 10 records: what the reader reads
        (tmp_path / f"f{index}").write_bytes(b"x")
    assert parse_romfs(build_romfs(tmp_path).image).ok
    (tmp_path / "f5").write_bytes(b"x")
    with pytest.raises(Ae3Error, match=r"more than 10 records at .*f5; ae3tools reads no more"):
        build_romfs(tmp_path)


def test_long_names_are_shown_short_and_stay_apart(tmp_path: Path, cli) -> None:
    """A 200 KB name above 2000 files cost 2 GB and 12 s when every path spelled it."""
    files = [file(f"{i:04}".encode(), b"") for i in range(2000)]
    middle_a, middle_b = b"a" * 150 + b"1" + b"a" * 150, b"a" * 150 + b"2" + b"a" * 150
    image = fs(named(4, b"n" * 200_000, *files), file(middle_a, b"a"), file(middle_b, b"b"))
    path = tmp_path / "long.img"
    path.write_bytes(image)
    listing = json.loads(cli("romfs", "ls", "--json", path).out)["entries"]
    assert len(listing) == 2003
    shown = "/" + "n" * 48 + "\u2026[200000-byte name @ 0x6]"  # after a 3-byte length
    # Past EXACT_PATH_LIMIT a path is not spelled out: the name and the parent say it.
    assert listing[0]["path"] is None and listing[0]["shown_path"] == shown
    assert listing[0]["name"] == "n" * 200_000
    assert listing[1]["path"] is None and listing[1]["shown_path"] == shown + "/0000"
    assert listing[1]["name"] == "0000" and listing[1]["parent"] == 0
    assert listing[-2]["path"] == "/" + middle_a.decode()  # exact under the limit
    assert listing[-1]["path"] == "/" + middle_b.decode()
    assert max(len(e["path"] or e["shown_path"]) for e in listing) < 400


# Trees deep enough to elide by levels, with names long enough to elide by characters.
_names = st.one_of(st.binary(min_size=1, max_size=4), st.binary(min_size=60, max_size=300))
_chains = st.lists(st.tuples(_names, st.lists(_names, max_size=2)), min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(_chains)
def test_a_listing_shows_each_entry_as_the_entry_shows_itself(
    chain: list[tuple[bytes, list[bytes]]],
) -> None:
    """shown_paths (each name shown once, for listings) and RomfsEntry.shown_path (each
    entry alone) agree, in image order or not, and no shown path grows with the input."""
    record = b""
    for directory, files in reversed(chain):
        record = named(4, directory, *(file(name, b"") for name in files), record)
    entries = parse_romfs(fs(record)).entries
    alone = [entry.shown_path for entry in entries]
    assert list(shown_paths(entries)) == alone
    assert list(shown_paths(entries[::-1])) == alone[::-1]
    assert max(map(len, alone)) < 2 * (names.PATH_SIDE_CHARS + 4 * names.LONG_NAME) + 40
    for entry, shown in zip(entries, alone, strict=True):
        if "levels]" not in shown:
            assert shown == entry.path


# Checks made after the walk (pointer overlap, alignment) see only the entries read.
_AFTER_THE_WALK = {"ROMFS_TOO_MANY_RECORDS", "ROMFS_POINTER_OVERLAP", "ROMFS_MISALIGNED"}


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(directory_children(3), st.integers(1, 60))
def test_a_walk_cut_at_the_cap_is_the_start_of_the_whole_walk(
    monkeypatch: pytest.MonkeyPatch, children: list[bytes], cap: int
) -> None:
    """Stopping at the cap drops what follows and half-judges nothing: the entries are
    the whole walk's first ones, and each finding the walk makes, the whole walk makes."""
    image = fs(*children)
    whole = parse_romfs(image)
    with monkeypatch.context() as patched:  # one fixture for every example
        patched.setattr(records, "MAX_RECORDS", cap)
        cut = parse_romfs(image)
    assert cut.entries == whole.entries[: len(cut.entries)]
    if "ROMFS_TOO_MANY_RECORDS" not in {f.code for f in cut.findings}:
        assert cut == whole
        return
    made = set(whole.findings)
    for finding in cut.findings:
        counted = finding.message.endswith("in all)")  # a capped code's count
        assert finding.code in _AFTER_THE_WALK or counted or finding in made, finding


def test_extract_is_linear_and_does_not_follow_symlinks(tmp_path: Path) -> None:
    """Deep trees cost each entry its own name; a symlink in the destination is not
    followed; a name the file system refuses (longer than 255 bytes) is reported, and
    the rest is still written."""
    record = file(b"bottom", b"deep")
    for level in range(200):
        record = named(4, b"d", file(f"f{level}".encode(), b"x"), record)
    image = fs(
        record,
        named(4, b"lib", file(b"passwd", b"owned")),
        named(4, b"n" * 300, file(b"inside", b"x")),
        file(b"last", b"written"),
    )
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "lib").symlink_to(elsewhere)
    result = extract(image, parse_romfs(image), out)
    assert len(result.written) == 202
    assert (out / Path(*["d"] * 200) / "bottom").read_bytes() == b"deep"
    assert (out / "last").read_bytes() == b"written"
    assert list(elsewhere.iterdir()) == []
    assert [f.message for f in result.skipped] == [
        "not extracted: a symbolic link is in its place, and extract does not follow links",
        "not extracted: inside a directory that was not extracted",
        "not extracted: cannot write it: File name too long",
        "not extracted: inside a directory that was not extracted",
    ]


# ------------------------------------------------------------------ names shown and extracted


def test_names_that_display_alike_stay_apart(tmp_path: Path, cli) -> None:
    image = fs(file(b"\xff", b"raw byte"), file(b"\\xff", b"four characters"))
    path = tmp_path / "names.img"
    path.write_bytes(image)
    listing = json.loads(cli("romfs", "ls", "--json", path).out)["entries"]
    # JSON holds the text exactly: the backslash is one, and the byte that is not UTF-8
    # is U+FFFD in the text, its bytes in name_hex.
    assert [e["path"] for e in listing] == ["/\ufffd", "/\\xff"]
    assert [e.get("name_hex") for e in listing] == ["ff", None]
    assert listing[0]["sha256"] != listing[1]["sha256"]
    result = extract(image, parse_romfs(image), tmp_path / "out")
    assert sorted(p.read_bytes() for p in result.written) == [b"four characters", b"raw byte"]
    assert os.fsencode(sorted(os.listdir(tmp_path / "out"))[1]) == b"\xff"


def test_control_characters_in_names_are_flagged_and_escaped(tmp_path: Path, cli) -> None:
    image = fs(file(b"\x1b[2Jverified", b"x"))
    path = tmp_path / "esc.img"
    path.write_bytes(image)
    assert "ROMFS_NAME_CONTROL" in {f.code for f in parse_romfs(image).findings}
    result = cli("romfs", "ls", path)
    assert ESC not in result.out and "\\x1b[2Jverified" in result.out


def test_names_that_end_in_a_space_stay_apart(tmp_path: Path, cli) -> None:
    """At the end of a table line a trailing space vanished: 'a' and 'a ' listed alike."""
    image = fs(file(b"a", b"one"), file(b"a ", b"two"), file(b"a\\x20", b"three"))
    path = tmp_path / "spaces.img"
    path.write_bytes(image)
    table = cli("romfs", "ls", path).out.splitlines()
    shown = [line.rsplit("  ", 1)[1] for line in table[2:5]]  # the path column, last
    assert shown == ["/a", "/a\\x20", "/a\\\\x20"]
    listing = json.loads(cli("romfs", "ls", "--json", path).out)["entries"]
    assert [e["path"] for e in listing] == ["/a", "/a ", "/a\\x20"]  # exact, in JSON
    assert len({e["sha256"] for e in listing}) == 3


def _unescape(shown: str) -> bytes:
    """The inverse of romfs.escape_name: '\\\\' is a backslash, '\\xNN' the byte NN."""
    return re.sub(
        r"\\\\|\\x([0-9a-f]{2})", lambda m: chr(int(m[1], 16)) if m[1] else "\\", shown
    ).encode("latin-1")


@given(st.binary(max_size=64))
def test_a_shown_name_is_its_bytes_and_inert(raw: bytes) -> None:
    """Shown names decode back to their bytes (so no two look alike), and hold nothing a
    terminal acts on or a line end hides."""
    shown = romfs.escape_name(raw)
    assert _unescape(shown) == raw
    assert shown.isascii() and shown.isprintable() and not shown.endswith(" ")


_json_paths = st.text(st.characters(codec="utf-8") | st.sampled_from('"\\\x00\x1f\u2026'))


@given(
    st.sampled_from(["file", "dir"]),
    st.binary(max_size=12),
    st.none() | _json_paths,
    _json_paths,
    st.none() | st.integers(0, 250_000),
    st.integers(0, 2**32),
    st.integers(0, 2**32),
    st.none() | st.integers(0, 2**32),
    st.none() | st.text("0123456789abcdef", min_size=64, max_size=64),
)
def test_a_json_listing_entry_is_what_json_dumps_gives(
    kind: str,
    raw: bytes,
    path: str | None,
    shown: str,
    parent: int | None,
    size: int,
    record: int,
    data: int | None,
    digest: str | None,
) -> None:
    """romfs ls --json formats its entries instead of encoding them: the text must be
    json.dumps of the entry's object, byte for byte, its optional keys included."""
    entry = romfs.RomfsEntry(raw, kind, record, size, data, None if data is None else "verbatim")
    expected: dict[str, object] = {
        "path": path,
        "name": raw.decode("utf-8", "replace"),
        "parent": parent,
        "type": kind,
        "size": size,
        "record_offset": record,
    }
    if kind == "file":
        expected.update(offset=data, alignment=entry.alignment, sha256=digest)
    if raw.decode("utf-8", "replace").encode() != raw:
        expected["name_hex"] = raw.hex()
    if path is None:
        expected["shown_path"] = shown
    listed = _Listed(entry, shown, path, parent, digest)
    assert _entry_json(listed) == json.dumps(expected)


def test_extract_reports_what_it_cannot_write(tmp_path: Path, cli) -> None:
    image = fs(file(b"same", b"first"), file(b"same", b"second"), file(b"..", b"up"))
    path = tmp_path / "dup.img"
    path.write_bytes(image)
    result = cli("romfs", "extract", path, tmp_path / "out")
    assert result.code == 1
    assert result.out.count("ROMFS_NOT_EXTRACTED") == 2
    assert (tmp_path / "out" / "same").read_bytes() == b"first"


# ------------------------------------------------------------------ literal text, JSON errors


def test_a_table_escapes_control_characters_in_any_cell(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """print_columns looks for control characters in a block of lines at once; a row
    that has one is escaped cell by cell (then padded), the other rows are unchanged."""
    rows = [["1", f"n{index}"] for index in range(5000)]
    rows[4500] = ["\x1b[2J", "\x07bell"]
    print_columns([("size", 4), ("name", 0)], rows)
    lines = capsys.readouterr().out.splitlines()
    assert ESC not in "".join(lines) and "\x07" not in "".join(lines)
    assert lines[4501] == "\\x1b[2J  \\x07bell"
    assert lines[4500] == "1     n4499" and lines[-1] == "1     n4999"
    assert lines[0] == "size  name" and len(lines) == 5001


def test_markup_in_inputs_is_printed_literally(tmp_path: Path, cli) -> None:
    odd = tmp_path / "[oops].zip"
    result = cli("bundle", "--from", GOOD, "--release", "[/x] [red]v1", "-o", odd)
    assert result.code == 0, result.err
    assert "[oops].zip" in result.out and "[/x] [red]v1" in result.out
    assert "[oops].zip: verified" in cli("verify", odd).out


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["verify", "gone.zip"], 2),
        (["inspect", "gone.bin"], 2),
        (["romfs", "ls", "gone.img"], 2),
        (["flash", "--bogus-option", "x.zip"], 2),
        (["bundle", "--hp", "gone.bin", "-o", "x.zip", "--partial"], 2),
        (["recover", "--virtual", "cam"], 2),
    ],
)
def test_json_errors_are_one_object(args: list[str], code: int, tmp_path: Path, cli) -> None:
    os.chdir(tmp_path)
    result = cli(*args, "--json")
    assert result.code == code
    report = json.loads(result.out)
    assert report["ok"] is False and report["exit_code"] == code and report["error"]


def test_refused_bundle_with_json_is_one_object(tmp_path: Path, cli) -> None:
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"PK\x03\x04" + bytes(64))
    result = cli("flash", junk, "--virtual", tmp_path / "cam", "--json")
    assert result.code == 1 and json.loads(result.out)["ok"] is False


def test_help_reads_like_a_mature_cli(cli) -> None:
    text = cli("flash", "-h").out
    assert "<bool>" not in text and "<list" not in text and "Example:" in text
    assert "SECONDS" in text


# ------------------------------------------------------------------ inputs and outputs


def test_force_never_overwrites_an_input(tmp_path: Path, cli) -> None:
    hp = tmp_path / "hp.bin"
    hp.write_bytes((GOOD / "firmware_M55_HP.bin").read_bytes())
    before = hp.read_bytes()
    result = cli("bundle", "--hp", hp, "-o", hp, "--force", "--partial")
    assert result.code == 2 and "also an input" in result.err
    assert hp.read_bytes() == before
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.txt").write_bytes(b"a")
    result = cli("romfs", "build", tree, "-o", tree / "x.img", "--force")
    assert result.code == 2 and "inside the input directory" in result.err
    assert sorted(os.listdir(tree)) == ["a.txt"]


def test_stale_temporaries_of_dead_runs_are_removed(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = tmp_path / f".out.bin.ae3tools-{dead.stdout.strip()}-abcd.tmp"
    stale.write_bytes(bytes(1000))
    unrelated = tmp_path / ".out.bin.other.tmp"
    unrelated.write_bytes(b"")
    write_atomic(target, b"new")
    assert not stale.exists() and unrelated.exists() and target.read_bytes() == b"new"


def test_output_directory_errors_name_the_file(tmp_path: Path, cli) -> None:
    (tmp_path / "plain").write_bytes(b"")
    result = cli("romfs", "extract", GOOD / "romfs1.img", tmp_path / "plain")
    assert result.code == 2 and "plain: exists and is not a directory" in result.err
    assert "Errno" not in result.err


def test_dfu_suffix_with_another_length_is_refused(tmp_path: Path, cli) -> None:
    data = (GOOD / "firmware_M55_HE.bin").read_bytes()
    suffix = bytes(6) + SIGNATURE + bytes([12]) + bytes(4)
    path = tmp_path / "he.dfu"
    path.write_bytes(data + suffix)
    result = json.loads(cli("inspect", "--json", path).out)["files"][0]
    assert result["status"] == "error"
    assert "DFU_SUFFIX_LENGTH" in {e["code"] for e in result["errors"]}


def test_small_zero_heavy_firmware_is_not_a_key(tmp_path: Path, cli) -> None:
    firmware = bytearray(4096)
    he = partition_for_role(Role.HE)
    dtcm = next(r for r in RAM_REGIONS if r.name == "DTCM")
    firmware[:4] = (dtcm.start + dtcm.size).to_bytes(4, "little")  # initial SP
    firmware[4:8] = (he.start + 0x401).to_bytes(4, "little")  # Thumb reset handler
    path = tmp_path / "he.bin"
    path.write_bytes(bytes(firmware))
    row = json.loads(cli("inspect", "--json", path).out)["files"][0]
    assert row["kind"] == "firmware"


def test_key_with_bytes_after_it_is_warned(tmp_path: Path, cli) -> None:
    key = bytearray((GOOD / "key.bin").read_bytes())
    key[100] = 1
    path = tmp_path / "key.bin"
    path.write_bytes(bytes(key))
    row = json.loads(cli("inspect", "--json", path).out)["files"][0]
    assert {w["code"] for w in row["warnings"]} == {"KEY_TRAILING_DATA"}


# ------------------------------------------------------------------ the virtual camera


def test_mistyped_virtual_directory_is_not_created(tmp_path: Path, cli) -> None:
    result = cli("devices", "--virtual", tmp_path / "no" / "such" / "cam")
    assert result.code == 2 and not (tmp_path / "no").exists()
    result = cli("devices", "--virtual", tmp_path / "cam", "--virtual-timing", "zero")
    assert result.code == 0 and "created a new virtual AE3" in result.err


HOLDER = """
import sys, time
from pathlib import Path
from ae3tools.virtual.memory import DeviceMemory
memory = DeviceMemory(Path(sys.argv[1]))
memory.claim()
print("held", flush=True)
time.sleep(60)
"""


def test_one_camera_has_one_owner(tmp_path: Path, cli, good_bundle_path: Path) -> None:
    camera = tmp_path / "cam"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(camera)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        result = cli("flash", good_bundle_path, "--virtual", camera, "--virtual-timing", "zero")
        assert result.code == 1 and "is in use by another process" in result.err
    finally:
        holder.kill()
        holder.wait()
    result = cli("flash", good_bundle_path, "--virtual", camera, "--virtual-timing", "zero")
    assert result.code == 0, result.err


def test_a_claimed_interface_is_named_in_use(tmp_path: Path) -> None:
    """The libusb path: the interface claim fails with BUSY, as on a real camera."""
    from ae3tools.dfu.host import DfuSession, find_bootloaders
    from ae3tools.virtual.backend import VirtualBackend

    holder = DeviceMemory(tmp_path / "cam")
    holder.claim()
    backend = VirtualBackend([VirtualAE3(DeviceMemory(tmp_path / "cam"))])
    (device,) = find_bootloaders(backend)
    with pytest.raises(DeviceError, match="in use by another program"):
        DfuSession(device).open()
    holder.release()


def test_claim_is_exclusive_between_owners(tmp_path: Path) -> None:
    first, second = DeviceMemory(tmp_path / "cam"), DeviceMemory(tmp_path / "cam")
    first.claim()
    with pytest.raises(CameraInUse, match="in use"):
        second.claim()
    first.release()
    second.claim()
    second.release()


def test_resume_hint_keeps_the_virtual_camera(tmp_path: Path, cli, good_bundle_path: Path) -> None:
    camera = tmp_path / "cam"
    result = cli(
        "flash", good_bundle_path, "--virtual", camera, "--virtual-timing", "zero",
        "--fault", "status:alt=HE:block=1:status=errWRITE",
    )  # fmt: skip
    assert result.code == 1
    assert f"--only he,romfs1,romfs0 --virtual {camera} --virtual-timing zero" in result.err


def test_windows_without_a_driver_gets_one_message(
    tmp_path: Path, cli, good_bundle_path: Path, monkeypatch
) -> None:
    from ae3tools.virtual import backend as virtual_backend

    def not_supported(self, handle, interface):  # pyusb's LIBUSB_ERROR_NOT_SUPPORTED
        raise NotImplementedError("Operation not supported or unimplemented on this platform")

    monkeypatch.setattr(virtual_backend.VirtualBackend, "claim_interface", not_supported)
    result = cli(
        "flash", good_bundle_path, "--virtual", tmp_path / "cam", "--virtual-timing", "zero"
    )
    assert result.code == 1 and "WinUSB" in result.err and "Zadig" in result.err


@pytest.fixture
def good_bundle_path(tmp_path: Path, cli) -> Path:
    path = tmp_path / "bundle.zip"
    assert cli("bundle", "--from", GOOD, "-o", path).code == 0
    assert zipfile.is_zipfile(path)
    return path


# ------------------------------------------------------------------ Intel HEX reader


def _hex_line(address: int, kind: int, payload: bytes) -> bytes:
    raw = bytes([len(payload)]) + address.to_bytes(2, "big") + bytes([kind]) + payload
    return b":" + (raw + bytes([-sum(raw) & 0xFF])).hex().upper().encode() + b"\n"


@pytest.mark.parametrize(
    ("lines", "words"),
    [
        ([(0, 0, b"\x01\x02"), (1, 0, b"\x03")], "overlap"),
        ([(0, 1, b""), (0, 0, b"\x01")], "after the end-of-file record"),
        ([(0, 9, b"\x01")], "record type 9"),
    ],
    ids=["overlap", "data after EOF", "unknown type"],
)
def test_intel_hex_reader_refusals(lines: list[tuple[int, int, bytes]], words: str) -> None:
    upper = partition_for_role(Role.HE).start >> 16
    text = _hex_line(0, 4, upper.to_bytes(2, "big")) + b"".join(_hex_line(*x) for x in lines)
    with pytest.raises(Ae3Error, match=words):
        parse_hex(text)


def _hex_data_records(address: int, data: bytes, width: int) -> list[tuple[int, bytes]]:
    """`data` at `address` as records of `width` bytes at most, none crossing a 64 KiB
    boundary (a record's address is 16 bits under its extended linear address)."""
    records = []
    while data:
        size = min(width, len(data), 0x10000 - (address & 0xFFFF))
        records.append((address, data[:size]))
        address, data = address + size, data[size:]
    return records


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(st.tuples(st.integers(0, 0x9000), st.binary(min_size=1, max_size=300)), max_size=8),
    st.integers(1, 40),
    st.booleans(),
    st.randoms(use_true_random=False),
)
def test_intel_hex_reader_agrees_with_objcopy(
    tmp_path: Path,
    pieces: list[tuple[int, bytes]],
    width: int,
    shuffled: bool,
    rng: random.Random,
) -> None:
    """binutils (a peer tool) and the reader make the same bytes of any file: records of
    any width, in any order, across 64 KiB boundaries, with empty ones among them."""
    start = partition_for_role(Role.HE).cpu_address
    assert start is not None
    records, address = [], start + 0xFF00  # just below a 64 KiB boundary
    for gap, payload in pieces:
        address += gap
        records += _hex_data_records(address, payload, width)
        address += len(payload)
    records.append((start + rng.randrange(0x40000), b""))  # empty: holds nothing
    if shuffled:
        rng.shuffle(records)
    text = b"".join(
        _hex_line(0, 4, (at >> 16).to_bytes(2, "big")) + _hex_line(at & 0xFFFF, 0, data)
        for at, data in records
    )
    path = tmp_path / "pieces.hex"
    path.write_bytes(text + _hex_line(0, 1, b""))
    if not pieces:
        with pytest.raises(Ae3Error, match="holds no data records"):
            parse_hex(path.read_bytes())
        return
    binary = tmp_path / "pieces.bin"
    subprocess.run(["objcopy", "-I", "ihex", "-O", "binary", path, binary], check=True)
    image = parse_hex(path.read_bytes())
    low = image.segments[0][0]
    assert image.data[: low - start] == bytes(low - start)
    assert image.data[low - start :] == binary.read_bytes()
    assert sum(end - begin for begin, end in image.segments) == sum(len(p) for _, p in pieces)


def test_intel_hex_digits_split_by_a_space_are_refused(tmp_path: Path) -> None:
    """bytes.fromhex skipped spaces inside a record; objcopy refuses them, and so do we."""
    line = _hex_line(0, 0, b"\x01\x02")
    path = tmp_path / "space.hex"
    path.write_bytes(_hex_line(0, 4, b"\x80\x00") + line[:9] + b" " + line[9:])
    objcopy = subprocess.run(
        ["objcopy", "-I", "ihex", "-O", "binary", path, tmp_path / "x"], capture_output=True
    )
    assert objcopy.returncode != 0
    with pytest.raises(Ae3Error, match="line 2: not hexadecimal digits"):
        parse_hex(path.read_bytes())


def test_intel_hex_checksum_is_checked() -> None:
    line = bytearray(_hex_line(0, 0, b"\x01\x02"))
    line[-3:-1] = b"00"
    with pytest.raises(Ae3Error, match="checksum"):
        parse_hex(bytes(line))


# ------------------------------------------------------------------ bundles, red team


def _rewritten(source: Path, target: Path, change) -> Path:  # type: ignore[no-untyped-def]
    """`source` copied member by member, `change(name, data)` giving the new data (or
    None to drop the member)."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for name in old.namelist():
            data = change(name, old.read(name))
            if data is not None:
                new.writestr(name, data)
    return target


def test_a_signed_bundle_without_its_manifest_is_refused(cli, tmp_path: Path) -> None:
    """Delete manifest.json and alter HP: it was taken as a flat release zip and flashed;
    a zip holding manifest.sig is a bundle, refused without its manifest."""
    key = tmp_path / "release.pem"
    assert cli("keypair", "-o", key).code == 0
    signed = tmp_path / "signed.zip"
    assert cli("bundle", "--from", GOOD, "--sign", key, "-o", signed).code == 0
    gutted = _rewritten(
        signed, tmp_path / "gutted.zip",
        lambda name, data: None if name == "manifest.json"
        else data[:-1] + b"\x00" if name == "firmware_M55_HP.bin" else data,
    )  # fmt: skip
    for command in (("verify",), ("flash", "--dry-run")):
        result = cli(*command, gutted)
        assert result.code == 1 and "no manifest.json" in result.out + result.err, command


def test_an_upper_case_sha256_is_named_as_such(cli, tmp_path: Path, good_bundle_path) -> None:
    def shout(name: str, data: bytes) -> bytes:
        if name != "manifest.json":
            return data
        manifest = json.loads(data)
        manifest["images"][0]["sha256"] = manifest["images"][0]["sha256"].upper()
        return json.dumps(manifest).encode()

    upper = _rewritten(good_bundle_path, tmp_path / "upper.zip", shout)
    result = cli("verify", upper)
    assert result.code == 1 and "is in upper case; a bundle holds it in lower case" in result.out


def test_a_member_name_with_a_nul_byte_is_refused(cli, tmp_path: Path, good_bundle_path) -> None:
    """zipfile cuts a name at its NUL: 'romfs0.img\\0evil' read as romfs0.img verified."""
    nul = tmp_path / "nul.zip"
    with zipfile.ZipFile(good_bundle_path) as source, zipfile.ZipFile(nul, "w") as out:
        for name in source.namelist():
            out.writestr(name.replace("romfs0.img", "romfs0.imgXevil"), source.read(name))
    nul.write_bytes(nul.read_bytes().replace(b"romfs0.imgXevil", b"romfs0.img\x00evil"))
    result = cli("verify", nul)
    assert result.code == 1 and "unsafe member name" in result.out + result.err


def test_inputs_that_are_not_regular_files(cli, tmp_path: Path, good_bundle_path) -> None:
    """A pipe is read once and whole (the format sniff took its first bytes, and the image
    was 'unrecognised'); a FIFO as a bundle or a key, or a device as a key, is refused at
    once (it waited for a writer forever, or read /dev/zero as a key)."""
    firmware = GOOD / "firmware_M55_HP.bin"
    shell = f"{sys.executable} -m ae3tools inspect --json <(cat {firmware})"
    piped = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=60,
                           cwd=ROOT, check=False)  # fmt: skip
    assert piped.returncode == 0, piped.stderr
    (row,) = json.loads(piped.stdout)["files"]
    assert row["kind"] == "firmware" and row["size"] == firmware.stat().st_size
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for args in (("verify", fifo), ("flash", "--dry-run", fifo),
                 ("verify", good_bundle_path, "--key", fifo),
                 ("verify", good_bundle_path, "--key", "/dev/zero")):  # fmt: skip
        result = cli(*args)
        assert result.code == 2 and "not a regular file" in result.err + result.out, args


def test_outputs_are_published_safely(cli, tmp_path: Path, monkeypatch) -> None:
    """Two writers of one output: the second, finding it there when it publishes, is told
    (both said 'wrote'); a device node is never replaced, --force or not; a dump never
    lands in the virtual camera's own memory."""
    from ae3tools import fileio

    target = tmp_path / "same.img"
    real_publish = fileio._publish

    def racing(tmp_name: str, path: Path, *, force: bool) -> None:
        path.write_bytes(b"the other run's")  # it finished first
        real_publish(tmp_name, path, force=force)

    monkeypatch.setattr(fileio, "_publish", racing)
    with pytest.raises(fileio.UsageError, match="already exists"):
        write_atomic(target, b"mine")
    assert target.read_bytes() == b"the other run's"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()

    result = cli("keygen", "-o", "/dev/null", "--force")
    assert result.code == 2 and "not a regular file" in result.err
    assert Path("/dev/null").is_char_device()
    camera = tmp_path / "cam"
    assert cli("devices", "--virtual", camera, "--virtual-timing", "zero").code == 0
    memory = camera / "2-HE.bin"
    result = cli("read", "he", "-o", memory, "--force", "--virtual", camera,
                 "--virtual-timing", "zero")  # fmt: skip
    assert result.code == 2 and "lies inside the input directory" in result.err


def test_small_usage_errors_are_usage_errors(cli, tmp_path: Path) -> None:
    """`--length 010` (an internal error), a missing or empty --port (exit 1), `virtual
    unplug` on any directory (it wrote its marker there)."""
    camera = tmp_path / "cam"
    boot = ("--virtual", camera, "--virtual-mode", "bootloader", "--virtual-timing", "zero")
    result = cli("read", "hp", "-o", tmp_path / "ten.bin", "--length", "010", *boot)
    assert result.code == 0 and (tmp_path / "ten.bin").stat().st_size == 10
    for port in (str(tmp_path / "ttyNONE"), ""):
        result = cli("bootloader", "--port", port)
        assert result.code == 2 and "no such serial port" in result.err
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("x")
    result = cli("virtual", "unplug", other)
    assert result.code == 2 and "not a virtual camera's directory" in result.err
    assert sorted(p.name for p in other.iterdir()) == ["todo.txt"]
