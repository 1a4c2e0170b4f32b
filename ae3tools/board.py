"""The OpenMV AE3 board layout, written down once as data.

Every address, size, alt number and USB identity used anywhere in ae3tools comes
from this module. Sources: ae3-bootloader.md (cited per constant as "spec §N") and
romfs-format.md for the ROMFS partitions (docs/sources.md lists their sections).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

BOARD_NAME = "OPENMV_AE3"

# spec §1.1: the bootloader's identity; the running application uses PID 0x16E3.
USB_VID = 0x37C5
BOOTLOADER_PID = 0x96E3
APPLICATION_PID = 0x16E3

# romfs §6: ROMFS0 (NOR offset 0x800000) is memory-mapped at 0xA0800000 on the HP core,
# so the OSPI XIP window starts at 0xA0000000.
OSPI_XIP_BASE = 0xA0000000

# spec §1.2: wTransferSize, and the constant the bootloader multiplies block numbers by (§5).
DFU_BLOCK_SIZE = 4096

# spec §5.1: MRAM is programmed in 16-byte units; builds pad binaries to 16 (§10).
MRAM_WRITE_UNIT = 16

# spec §10: the boot header lives at BOOT + 0x1000 and starts with this magic.
BOOT_HEADER_OFFSET = 0x1000
BOOT_HEADER_SIZE = 32
BOOT_MAGIC = 0xB00710AD


class Memory(str, Enum):
    """Where a partition lives (spec §2)."""

    MRAM = "mram"  # on-chip MRAM, memory-mapped ("AXI")
    NOR = "nor"  # external OSPI flash, addressed by flash offset ("SPI")
    RECOVERY = "recovery"  # the recovery pseudo-partition ("REC")


class Role(str, Enum):
    """What an image is, independent of the file it came in."""

    HP = "hp"
    HE = "he"
    ROMFS0 = "romfs0"
    ROMFS1 = "romfs1"
    KEY = "key"


@dataclass(frozen=True)
class Partition:
    """One DFU alternate setting of the bootloader (spec §2)."""

    alt: int
    name: str  # the alt's string descriptor, exactly as the bootloader reports it
    memory: Memory
    start: int
    size: int
    read_only: bool
    role: Role | None  # the image role that belongs here, if any
    image_name: str | None  # OpenMV's usual file name for that image

    @property
    def limit(self) -> int:
        """First address past the partition (limit-exclusive, spec §2)."""
        return self.start + self.size

    @property
    def blocks(self) -> int:
        return self.size // DFU_BLOCK_SIZE

    @property
    def cpu_address(self) -> int | None:
        """Where the HP core sees this partition (MRAM as itself, NOR through XIP)."""
        if self.memory is Memory.MRAM:
            return self.start
        if self.memory is Memory.NOR:
            return OSPI_XIP_BASE + self.start
        return None

    def maps(self, address: int, length: int = 1) -> bool:
        """Whether CPU addresses [address, address+length) lie in this partition."""
        base = self.cpu_address
        return base is not None and base <= address and address + length <= base + self.size


# spec §2, OMV_BOOT_DFU_PARTITIONS: index = alt setting.
PARTITIONS: tuple[Partition, ...] = (
    Partition(0, "BOOT", Memory.MRAM, 0x80000000, 0x20000, True, None, None),
    Partition(1, "HP", Memory.MRAM, 0x80020000, 0x300000, False, Role.HP, "firmware_M55_HP.bin"),
    Partition(2, "HE", Memory.MRAM, 0x80320000, 0x15E000, False, Role.HE, "firmware_M55_HE.bin"),
    Partition(3, "ROMFS1", Memory.MRAM, 0x8047E000, 0x100000, False, Role.ROMFS1, "romfs1.img"),
    Partition(4, "TOC", Memory.MRAM, 0x8057E000, 0x2000, False, None, "firmware_pad.toc"),
    Partition(5, "RWFS", Memory.NOR, 0x00000000, 0x800000, False, None, None),
    Partition(6, "ROMFS0", Memory.NOR, 0x00800000, 0x1800000, False, Role.ROMFS0, "romfs0.img"),
    Partition(7, "RECOVERY", Memory.RECOVERY, 0x00000000, 0x1000, False, Role.KEY, "key.bin"),
)

ALT_NAMES: tuple[str, ...] = tuple(p.name for p in PARTITIONS)

# The bootloader's own partition: read-only, and where it executes from (spec §2, §5.1).
BOOT = PARTITIONS[0]

# spec §9: the natural order of a full flash; the bootloader jumps to HP after the last.
FLASH_ORDER: tuple[Role, ...] = (Role.HP, Role.HE, Role.ROMFS1, Role.ROMFS0)

# The cores' firmware roles; their images start with a Cortex-M vector table.
FIRMWARE_ROLES: tuple[Role, ...] = (Role.HP, Role.HE)
ROMFS_ROLES: tuple[Role, ...] = (Role.ROMFS0, Role.ROMFS1)


def partition_by_name(name: str) -> Partition:
    for partition in PARTITIONS:
        if partition.name.lower() == name.lower():
            return partition
    raise KeyError(name)


def partition_for_role(role: Role) -> Partition:
    for partition in PARTITIONS:
        if partition.role is role:
            return partition
    raise KeyError(role)


def partition_mapping(address: int, length: int = 1) -> Partition | None:
    """The partition whose CPU-visible range holds [address, address+length), if any."""
    for partition in PARTITIONS:
        if partition.maps(address, length):
            return partition
    return None


# OpenMV IDE wipes the internal filesystem by writing one block of zeros to RWFS block 0.
RWFS_ERASE_PAYLOAD_SIZE = DFU_BLOCK_SIZE

# spec §7: tools/flash_recovery_key.py: the 16-byte key, then zeros to 4096 bytes.
RECOVERY_KEY = bytes.fromhex("159e7d42961a71eb73a326292b08090e")
RECOVERY_KEY_FILE_SIZE = 4096


@dataclass(frozen=True)
class RamRegion:
    """RAM that a core's initial stack pointer may point into.

    Not in the bootloader spec: from Alif's Ensemble memory map (core-local TCMs,
    their global aliases, and the shared SRAM0/SRAM1). The magic word at
    0x200FFFFC (spec §8.1) sits in the HP core's DTCM, which is consistent.
    """

    name: str
    start: int
    size: int

    def holds_stack_top(self, sp: int) -> bool:
        # A full-descending stack starts at the region's end, so the end is valid.
        return self.start < sp <= self.start + self.size


RAM_REGIONS: tuple[RamRegion, ...] = (
    RamRegion("ITCM", 0x00000000, 0x100000),
    RamRegion("DTCM", 0x20000000, 0x100000),
    RamRegion("SRAM0", 0x02000000, 0x400000),
    RamRegion("SRAM1", 0x08000000, 0x280000),
    RamRegion("HP TCM (global)", 0x50000000, 0x1000000),
    RamRegion("HE TCM (global)", 0x58000000, 0x1000000),
)
