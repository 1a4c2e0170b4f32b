"""The board layout against the brief's partition table and the spec's invariants."""

import itertools

from ae3tools.board import (
    ALT_NAMES,
    DFU_BLOCK_SIZE,
    FLASH_ORDER,
    PARTITIONS,
    Memory,
    Role,
    partition_by_name,
    partition_for_role,
    partition_mapping,
)

KIB, MIB = 1024, 1024 * 1024


def test_alt_table_matches_the_brief():
    assert ALT_NAMES == ("BOOT", "HP", "HE", "ROMFS1", "TOC", "RWFS", "ROMFS0", "RECOVERY")
    sizes = [p.size for p in PARTITIONS]
    assert sizes == [128 * KIB, 3 * MIB, 0x15E000, 1 * MIB, 8 * KIB, 8 * MIB, 24 * MIB, 4 * KIB]
    assert [p.alt for p in PARTITIONS] == list(range(8))
    assert [p.read_only for p in PARTITIONS] == [True] + [False] * 7


def test_every_partition_is_whole_blocks_and_mram_is_contiguous():
    for p in PARTITIONS:
        assert p.start % DFU_BLOCK_SIZE == 0 and p.size % DFU_BLOCK_SIZE == 0
    mram = [p for p in PARTITIONS if p.memory is Memory.MRAM]
    for before, after in itertools.pairwise(mram):
        assert before.limit == after.start
    assert mram[-1].limit == 0x80580000  # spec §2: the XIP region's end


def test_roles_and_lookups():
    assert [partition_for_role(r).alt for r in FLASH_ORDER] == [1, 2, 3, 6]
    assert partition_by_name("romfs0").alt == 6
    assert partition_mapping(0x80020000).role is Role.HP
    assert partition_mapping(0xA0800000).role is Role.ROMFS0  # romfs §6: XIP mapping
    assert partition_mapping(0x8031FFFF, 2) is None  # straddles HP and HE
