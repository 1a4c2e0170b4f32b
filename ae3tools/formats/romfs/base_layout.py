"""Lay a tree out over a base image, so that what did not change does not move.

A plain build places every file after the ones before it in name order: one script
grown by 100 bytes moves every file after it, and a flash rewrites half of ROMFS0. Here
the new image starts as a copy of the base, and each file whose bytes the base already
holds (any path: matched by content) is reached where it is, through a DATA_POINTER
record (romfs §5). Only what is new is written: the header, the tree of records (the
directories, and each file's name and pointer), and the data of changed or new files,
each placed in space that no kept file uses (first fit, aligned by the rules), else at
the end. The payload is then three top-level records: a PADDING over everything before
the tree, the tree, a PADDING over everything after it; the reader skips both paddings,
and every pointer lands inside one of them.

The price: the space of replaced data stays in the image until it is reused (reported
as `wasted`), and pointers instead of inline data. A build without a base starts again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from ae3tools.findings import Ae3Error
from ae3tools.formats.romfs.alignment import alignment_for
from ae3tools.formats.romfs.build import BuildOptions, Reuse, TreeNode, read_node
from ae3tools.formats.romfs.model import RomfsImage
from ae3tools.formats.romfs.reader import parse_romfs
from ae3tools.formats.romfs.records import (
    KIND_DATA_POINTER,
    KIND_DIRECTORY,
    KIND_FILE,
    KIND_PADDING,
    MAGIC,
    OPENMV_HEADER_SIZE,
    OPENMV_RECORD_HEADER_SIZE,
    encode_vint,
)

HEADER = OPENMV_RECORD_HEADER_SIZE  # every FILE, DIRECTORY and PADDING header here
FIRST = OPENMV_HEADER_SIZE + HEADER  # where PADDING A's payload starts
POINTER_VINT = 5  # size and offset vints padded to a fixed width: 2**35, past any image
POINTER_RECORD = 2 + 2 * POINTER_VINT  # kind, length, the two vints


@dataclass
class _Space:
    """The image's free space as sorted, disjoint [start, end) intervals, the last open
    to the end of the partition."""

    free: list[tuple[int, int]]

    def take(self, size: int, alignment: int = 1) -> int:
        """The first aligned place for `size` bytes; removed from the free space."""
        for index, (start, end) in enumerate(self.free):
            at = start + -start % alignment
            if at + size <= end:
                pieces = [(start, at), (at + size, end)]
                self.free[index : index + 1] = [(a, b) for a, b in pieces if b > a]
                return at
        raise AssertionError("the last interval is open-ended")  # pragma: no cover


def _free_space(kept: Sequence[tuple[int, int]], limit: int) -> _Space:
    free, position = [], FIRST
    for start, end in sorted(kept):
        if start > position:
            free.append((position, start))
        position = max(position, end)
    free.append((position, limit + 1))  # past the limit: the size check says so
    return _Space(free)


def _tree_length(nodes: Sequence[TreeNode]) -> int:
    """The tree's records: directories, and files with a pointer each (no data)."""
    total = 0
    stack = list(nodes)
    while stack:
        node = stack.pop()
        total += HEADER + len(node.name_field)
        if node.children is None:
            total += POINTER_RECORD
        else:
            stack.extend(node.children)
    return total


def _base_files(base: bytes, parsed: RomfsImage) -> dict[tuple[int, bytes], int]:
    """Each content the base holds, (size, sha256) -> its data's image offset."""
    held: dict[tuple[int, bytes], int] = {}
    for entry in parsed.files:
        if entry.data_offset is None or entry.data_offset < FIRST or not entry.size:
            continue  # before FIRST: where the new headers go
        data = base[entry.data_offset : entry.data_offset + entry.size]
        held.setdefault((entry.size, hashlib.sha256(data).digest()), entry.data_offset)
    return held


def layout_on_base(
    root: list[TreeNode], base: bytes, options: BuildOptions, limit: int, holder: str
) -> tuple[bytes, Reuse]:
    """The image of the tree `root`, laid out over `base` (a ROMFS image)."""
    parsed = parse_romfs(base)
    if parsed.header is None or not parsed.ok:
        raise Ae3Error("the base image is not a valid ROMFS image: build without --base")
    base = base[: parsed.header.total_size]  # its extent: a partition dump's tail is not
    held = _base_files(base, parsed)

    # Where each file's data is: kept where the base has it, or new, in a blob.
    files: list[tuple[TreeNode, bytes]] = []
    stack = list(root)
    while stack:
        node = stack.pop()
        if node.children is None:
            files.append((node, read_node(node)))
        else:
            stack.extend(node.children)
    offsets: dict[int, int] = {}  # id(node) -> data offset
    kept_ranges: dict[int, tuple[int, int]] = {}
    new_blobs: dict[tuple[int, bytes], list[TreeNode]] = {}
    blob_data: dict[tuple[int, bytes], bytes] = {}
    for node, data in files:
        key = (len(data), hashlib.sha256(data).digest())
        wanted = alignment_for(node.name.decode(), options.alignment)
        at = held.get(key)
        if data and at is not None and at % wanted == 0:
            offsets[id(node)] = at
            kept_ranges[at] = (at, at + len(data))
        elif data:
            new_blobs.setdefault(key, []).append(node)
            blob_data[key] = data
        else:
            offsets[id(node)] = OPENMV_HEADER_SIZE  # empty: any place will do
    space = _free_space(list(kept_ranges.values()), limit)
    tree_length = _tree_length(root)
    tree_at = space.take(tree_length + HEADER)  # and PADDING B's header after it
    blob_at: dict[tuple[int, bytes], int] = {}
    for key, nodes in sorted(new_blobs.items(), key=lambda item: -item[0][0]):  # big first
        wanted = max(alignment_for(n.name.decode(), options.alignment) for n in nodes)
        blob_at[key] = space.take(key[0], wanted)
        for node in nodes:
            offsets[id(node)] = blob_at[key]
    ends = [tree_at + tree_length + HEADER, *(at + k[0] for k, at in blob_at.items())]
    ends += [end for _, end in kept_ranges.values()]
    total = max(ends)
    if total > limit:
        raise Ae3Error(
            f"laid out over the base, the image would be {total} bytes; {holder} holds "
            f"{limit}: build without --base"
        )

    image = bytearray(base[:total]) + bytes(max(0, total - len(base)))
    image[:OPENMV_HEADER_SIZE] = MAGIC + encode_vint(
        total - OPENMV_HEADER_SIZE, OPENMV_HEADER_SIZE - len(MAGIC)
    )
    image[OPENMV_HEADER_SIZE:FIRST] = _padding_header(tree_at - FIRST)
    tree = _tree(root, offsets)
    assert len(tree) == tree_length
    image[tree_at : tree_at + tree_length] = tree
    after = tree_at + tree_length
    image[after : after + HEADER] = _padding_header(total - after - HEADER)
    for key, at in blob_at.items():
        image[at : at + key[0]] = blob_data[key]
    used = FIRST + tree_length + HEADER + sum(k[0] for k in blob_at)
    used += sum(end - start for start, end in kept_ranges.values())
    placed = sum(len(nodes) for nodes in new_blobs.values())
    return bytes(image), Reuse(len(files) - placed, placed, total - used)


def _padding_header(length: int) -> bytes:
    return bytes([KIND_PADDING]) + encode_vint(length, HEADER - 1)


def _tree(root: Sequence[TreeNode], offsets: dict[int, int]) -> bytes:
    """The records of the tree; a directory's written once its children are (with an
    explicit stack: a tree may be deeper than Python's)."""
    done: list[list[bytes]] = [[]]  # the finished records of each open directory
    stack: list[tuple[TreeNode | None, int]] = [(None, 0)]  # (directory, next child)
    children: list[Sequence[TreeNode]] = [root]
    while stack:
        directory, index = stack[-1]
        if index < len(children[-1]):
            stack[-1] = (directory, index + 1)
            node = children[-1][index]
            if node.children is None:
                done[-1].append(_file_record(node, offsets[id(node)]))
            else:
                stack.append((node, 0))
                children.append(node.children)
                done.append([])
            continue
        stack.pop()
        children.pop()
        inner = b"".join(done.pop())
        if directory is None:
            return inner
        body = directory.name_field + inner
        done[-1].append(bytes([KIND_DIRECTORY]) + encode_vint(len(body), HEADER - 1) + body)
    raise AssertionError("the root closes the walk")  # pragma: no cover


def _file_record(node: TreeNode, offset: int) -> bytes:
    size = node.size if node.data is None else len(node.data)
    relative = offset - OPENMV_HEADER_SIZE  # romfs §5: pointers count from the payload
    pointer = encode_vint(size, POINTER_VINT) + encode_vint(relative, POINTER_VINT)
    body = node.name_field + bytes([KIND_DATA_POINTER, len(pointer)]) + pointer
    return bytes([KIND_FILE]) + encode_vint(len(body), HEADER - 1) + body
