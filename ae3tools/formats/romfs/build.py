"""Build a ROMFS image from a directory tree, laid out byte for byte as OpenMV IDE and
openmv-ota lay it out (romfs §9).

The layout: a 16-byte header, FILE records with 8-byte headers, each file's data at the
multiple its alignment rule asks for (measured from image byte 0), and each directory's
contents starting at a multiple of the largest alignment, so the rules hold inside it
wherever it lands. No parity padding: OpenMV's builders never pad (an odd total is a
note, romfs §6).

Two passes over the tree: the first lists it and sizes every directory (its contents do
not depend on where it lands, only on that alignment), the second writes each record
once, in order. Time and memory are linear in the image, however deep the tree.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ae3tools.board import Partition
from ae3tools.fileio import require_directory
from ae3tools.findings import Ae3Error
from ae3tools.formats.romfs import records
from ae3tools.formats.romfs.alignment import (
    OPENMV_ALIGNMENT,
    AlignmentRule,
    alignment_for,
    largest_alignment,
)
from ae3tools.formats.romfs.records import (
    KIND_DATA_VERBATIM,
    KIND_DIRECTORY,
    KIND_FILE,
    MAGIC,
    MAX_ROMFS_SIZE,
    OPENMV_HEADER_SIZE,
    OPENMV_RECORD_HEADER_SIZE,
    VINT_PAD,
    encode_vint,
)

# openmv-ota's defaults (romfs/builder.py), matched against each entry's name: build, VCS
# and editor leftovers that should never reach a camera. A matching directory is left
# out whole.
DEFAULT_EXCLUDES = (
    "__pycache__",
    "*.pyc",
    "*.pyo",
    ".git",
    ".gitkeep",
    ".svn",
    ".hg",
    ".DS_Store",
    "Thumbs.db",
    "*.swp",
)


@dataclass(frozen=True)
class LeftOut:
    """An entry of the tree that is not in the image, and why."""

    path: str  # relative to the tree, '/'-separated
    reason: str


@dataclass(frozen=True)
class Reuse:
    """How a build over a base image used it (see base_layout.py)."""

    kept: int  # files whose data stayed where the base image had it
    placed: int  # files whose data was written anew
    wasted: int  # bytes of the image that nothing reaches: the price of staying in place

    def as_dict(self) -> dict[str, int]:
        return {"kept": self.kept, "placed": self.placed, "wasted_bytes": self.wasted}


@dataclass(frozen=True)
class BuiltImage:
    image: bytes
    files: int
    directories: int
    left_out: tuple[LeftOut, ...]
    reuse: Reuse | None = None  # with a base image


@dataclass(frozen=True)
class BuildOptions:
    alignment: Sequence[AlignmentRule] = OPENMV_ALIGNMENT
    excludes: Sequence[str] = DEFAULT_EXCLUDES
    follow_symlinks: bool = False
    # Compiles a script to .mpy (formats/mpy.py). Every .py becomes NAME.mpy, as mpremote
    # and openmv-ota do, except where NAME.mpy is there already and the top-level main.py,
    # which the firmware runs by that name.
    compile_py: Callable[[Path], bytes] | None = None


@dataclass
class TreeNode:
    """One entry to pack: a file with its size, or a directory with its children and
    the length of its contents (known after the first pass)."""

    name: bytes
    path: Path
    size: int = 0  # a file's data length
    children: list[TreeNode] | None = None  # None for a file
    data: bytes | None = None  # a file's data when made here (a compiled script)
    content_length: int = 0  # a directory's: its children's records

    @property
    def name_field(self) -> bytes:
        return encode_vint(len(self.name)) + self.name


def _pads(position: int, alignment: int) -> int:
    return -position % alignment


def _data_pads(record_at: int, node: TreeNode, rules: Sequence[AlignmentRule]) -> int:
    """The 0x80 pads in a file's DATA_VERBATIM header that put its data on its multiple."""
    data_header = OPENMV_RECORD_HEADER_SIZE + len(node.name_field) + 1
    wanted = alignment_for(node.name.decode(), rules)
    return _pads(record_at + data_header + len(encode_vint(node.size)), wanted)


def _file_length(record_at: int, node: TreeNode, rules: Sequence[AlignmentRule]) -> int:
    pads = _data_pads(record_at, node, rules)
    body = len(node.name_field) + 1 + pads + len(encode_vint(node.size)) + node.size
    return OPENMV_RECORD_HEADER_SIZE + body


def _directory_pads(record_at: int, node: TreeNode, largest: int) -> int:
    """Pads between a DIRECTORY's kind and length so its contents start on `largest`."""
    length = len(node.name_field) + node.content_length
    return _pads(record_at + 1 + len(encode_vint(length)) + len(node.name_field), largest)


def _directory_length(record_at: int, node: TreeNode, largest: int) -> int:
    length = len(node.name_field) + node.content_length
    return 1 + _directory_pads(record_at, node, largest) + len(encode_vint(length)) + length


def _record_length(record_at: int, node: TreeNode, options: BuildOptions, largest: int) -> int:
    if node.children is None:
        return _file_length(record_at, node, options.alignment)
    return _directory_length(record_at, node, largest)


@dataclass
class _Scan:
    source: Path
    options: BuildOptions
    limit: int
    holder: str
    left_out: list[LeftOut] = field(default_factory=list)
    files: int = 0
    directories: int = 0
    records: int = 0

    def relative(self, path: Path) -> str:
        return path.relative_to(self.source).as_posix()

    def children(self, directory: Path) -> list[TreeNode]:
        """The entries of `directory` to pack, sorted by name as OpenMV's builders sort."""
        try:
            names = sorted(os.listdir(directory))
        except OSError as exc:
            raise Ae3Error(f"{directory}: cannot list: {exc.strerror or exc}") from None
        nodes = []
        for name in names:
            path = directory / name
            excluded = _matching(name, self.options.excludes)
            if excluded is not None:
                self.left_out.append(LeftOut(self.relative(path), f"excluded by {excluded!r}"))
                continue
            node = self._node(path, name)
            if node is not None:
                nodes.append(self._compiled(node, names) if self._compiles(node) else node)
        return sorted(nodes, key=lambda node: node.name)  # a compiled name sorts anew

    def _compiles(self, node: TreeNode) -> bool:
        return (
            self.options.compile_py is not None
            and node.children is None
            and node.name.endswith(b".py")
            and node.path != self.source / "main.py"
        )

    def _compiled(self, node: TreeNode, siblings: Sequence[str]) -> TreeNode:
        mpy_name = node.name[:-3] + b".mpy"
        if mpy_name.decode() in siblings:
            return node  # a .mpy of that name is in the tree: both go in, as mpremote does
        assert self.options.compile_py is not None
        data = self.options.compile_py(node.path)
        return TreeNode(mpy_name, node.path, size=len(data), data=data)

    def _node(self, path: Path, name: str) -> TreeNode | None:
        try:
            raw = name.encode("utf-8")
        except UnicodeEncodeError:  # undecodable bytes in a POSIX name
            raise Ae3Error(f"{path}: the name is not valid UTF-8; rename it") from None
        try:
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode) and not self.options.follow_symlinks:
                self.left_out.append(LeftOut(self.relative(path), "a symbolic link"))
                return None
            info = path.stat()
        except OSError as exc:
            raise Ae3Error(f"{path}: {exc.strerror or exc}") from None
        if stat.S_ISDIR(info.st_mode):
            self.directories += 1
            return self._count(TreeNode(raw, path, children=[]), path)
        if stat.S_ISREG(info.st_mode):
            self.files += 1
            return self._count(TreeNode(raw, path, size=info.st_size), path)
        self.left_out.append(LeftOut(self.relative(path), "not a regular file or directory"))
        return None

    def _count(self, node: TreeNode, path: Path) -> TreeNode:
        self.records += 1 if node.children is not None else 2  # a directory; a file and data
        if self.records > records.MAX_RECORDS:
            raise Ae3Error(
                f"{self.source}: more than {records.MAX_RECORDS} records at {path}; ae3tools "
                "reads no more than that in one image"
            )
        if node.size > self.limit:
            raise Ae3Error(f"{path}: {node.size} bytes, more than {self.holder} holds")
        return node


def _matching(name: str, patterns: Sequence[str]) -> str | None:
    return next((p for p in patterns if fnmatch.fnmatchcase(name, p)), None)


def _scan(scan: _Scan, largest: int) -> list[TreeNode]:
    """The tree's nodes, each directory's content_length filled in: depth first with an
    explicit stack (a tree may be deeper than Python's), a directory sized when its last
    child has been. Followed links are checked against the directories above them: a
    link back up would never end."""
    on_path = {_identity(scan.source)}
    root = scan.children(scan.source)
    stack: list[tuple[TreeNode | None, list[TreeNode], int]] = [(None, root, 0)]
    while stack:
        directory, children, index = stack[-1]
        if index < len(children):
            stack[-1] = (directory, children, index + 1)
            child = children[index]
            if child.children is not None:
                identity = _identity(child.path)
                if identity in on_path:
                    raise Ae3Error(
                        f"{child.path}: a symbolic link loop (it leads back to a directory above)"
                    )
                on_path.add(identity)
                child.children.extend(scan.children(child.path))
                stack.append((child, child.children, 0))
            continue
        stack.pop()
        if directory is None:
            continue
        on_path.discard(_identity(directory.path))
        position = 0  # its contents start on `largest`: lay them out from 0
        for child in children:
            position += _record_length(position, child, scan.options, largest)
        directory.content_length = position
        if position > scan.limit:
            raise Ae3Error(
                f"{directory.path}: its contents alone are {position} bytes, more than "
                f"{scan.holder} holds"
            )
    return root


def _identity(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_dev, info.st_ino


def _write(image: bytearray, root: list[TreeNode], options: BuildOptions, largest: int) -> None:
    """Append every record, depth first, each written once where it lands."""
    stack = [iter(root)]
    while stack:
        node = next(stack[-1], None)
        if node is None:
            stack.pop()
            continue
        record_at = len(image)
        if node.children is not None:
            pads = _directory_pads(record_at, node, largest)
            length = len(node.name_field) + node.content_length
            image += bytes([KIND_DIRECTORY]) + bytes([VINT_PAD]) * pads + encode_vint(length)
            image += node.name_field
            stack.append(iter(node.children))
            continue
        data = read_node(node)
        pads = _data_pads(record_at, node, options.alignment)
        body = bytes([KIND_DATA_VERBATIM]) + bytes([VINT_PAD]) * pads + encode_vint(len(data))
        length = len(node.name_field) + len(body) + len(data)
        image += bytes([KIND_FILE]) + encode_vint(length, OPENMV_RECORD_HEADER_SIZE - 1)
        image += node.name_field + body + data


def read_node(node: TreeNode) -> bytes:
    if node.data is not None:
        return node.data
    try:
        data = node.path.read_bytes()
    except OSError as exc:
        raise Ae3Error(f"{node.path}: cannot read: {exc.strerror or exc}") from None
    if len(data) != node.size:
        raise Ae3Error(f"{node.path}: changed while the image was being built; build again")
    return data


def scan_tree(
    source: Path, options: BuildOptions, partition: Partition | None
) -> tuple[list[TreeNode], _Scan]:
    """The tree under `source` as nodes, directories sized for OpenMV's layout."""
    require_directory(source)
    limit = partition.size if partition is not None else MAX_ROMFS_SIZE
    holder = f"partition {partition.name}" if partition else "any ROMFS partition"
    scan = _Scan(source, options, limit, holder)
    return _scan(scan, largest_alignment(options.alignment)), scan


def build_romfs(
    source: Path,
    *,
    options: BuildOptions | None = None,
    partition: Partition | None = None,
    base: bytes | None = None,
) -> BuiltImage:
    """Build an image from a directory tree, directories kept, OpenMV's layout; with
    `base`, laid out over that image instead (see base_layout.py).

    Names are stored as their UTF-8 bytes. Excluded entries, symbolic links (unless
    followed) and special files are left out and listed in the result.
    """
    options = options or BuildOptions()
    root, scan = scan_tree(source, options, partition)
    if base is not None:
        from ae3tools.formats.romfs.base_layout import layout_on_base

        laid_out, reuse = layout_on_base(root, base, options, scan.limit, scan.holder)
        return BuiltImage(laid_out, scan.files, scan.directories, tuple(scan.left_out), reuse)
    largest = largest_alignment(options.alignment)
    total = OPENMV_HEADER_SIZE
    for node in root:
        total += _record_length(total, node, options, largest)
    if total > scan.limit:
        raise Ae3Error(f"{source}: image would be {total} bytes; {scan.holder} holds {scan.limit}")
    image = bytearray(OPENMV_HEADER_SIZE)
    _write(image, root, options, largest)
    payload = len(image) - OPENMV_HEADER_SIZE
    image[:OPENMV_HEADER_SIZE] = MAGIC + encode_vint(payload, OPENMV_HEADER_SIZE - len(MAGIC))
    return BuiltImage(bytes(image), scan.files, scan.directories, tuple(scan.left_out))
