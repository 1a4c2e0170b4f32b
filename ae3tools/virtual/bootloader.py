"""The virtual AE3: the `openmv_dfu` bootloader as a USB device model, from the spec.

`VirtualAE3.control()` takes a SETUP packet (and OUT data) and answers as the real
bootloader would: descriptors (spec §1), the DFU state machine with TinyUSB's and
OpenMV's quirks (§4-§7), the listen window and the ways a session ends (§8). Two
adapters reach it: a pyusb backend (`ae3tools.virtual.backend`) and, for real
libusb programs, a umockdev ioctl handler. Section numbers below are the spec's.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from ae3tools.board import (
    ALT_NAMES,
    BOOT,
    DFU_BLOCK_SIZE,
    MRAM_WRITE_UNIT,
    PARTITIONS,
    RECOVERY_KEY,
    Memory,
    Partition,
)
from ae3tools.dfu.protocol import (
    DEVICE_REMOTE_WAKEUP,
    LATEST_BOOTLOADER,
    BootloaderRelease,
    DescriptorType,
    DfuStatus,
    Request,
    State,
    Status,
    StdRequest,
)
from ae3tools.virtual.descriptors import (
    CONFIGURATION_DESCRIPTOR,
    DEVICE_QUALIFIER,
    MAX_TRANSFER,
    device_descriptor,
    string_descriptor,
)
from ae3tools.virtual.faults import DeviceTimeout, Fault, FaultKind, NoDevice, Stall
from ae3tools.virtual.memory import NOR_ERASED, NOR_PAGE, DeviceMemory, boot_image
from ae3tools.virtual.timing import Timing, precise_sleep

# ----------------------------------------------------------------------------- the device


@dataclass(frozen=True)
class Setup:
    """A control transfer's SETUP packet."""

    request_type: int
    request: int
    value: int
    index: int
    length: int

    @property
    def is_in(self) -> bool:
        return bool(self.request_type & 0x80)

    @property
    def kind(self) -> int:
        return (self.request_type >> 5) & 3  # 0 standard, 1 class, 2 vendor

    @property
    def recipient(self) -> int:
        return self.request_type & 0x1F  # 0 device, 1 interface


class BootMode(Enum):
    """§8: OpenMV's own session flag."""

    DETACHED = "detached"
    ATTACHED = "attached"
    RESET = "reset"


@dataclass
class DeviceStats:
    """What the device did, for tests and benchmarks."""

    device_time: float = 0.0  # seconds of modelled device work
    blocks_written: int = 0
    blocks_read: int = 0
    control_transfers: int = 0
    recoveries: int = 0
    notes: list[str] = field(default_factory=list)  # undefined behaviour the host triggered


DEFAULT_SERIAL = "AE30000000000000DEADBEEF"  # §1.3: 24 upper-case hex digits
VIRTUAL_BUS = 1  # the bus number virtual cameras sit on

# The bits of MfgData[0..5] the application's serial is made of (openmv-protocol.md §1.4:
# x, y, wafer, year and fab, week, lot); the others are dropped by the mapping.
_MFG_MASKS = (0x7F, 0x7F, 0x1F, 0x7F, 0x3F, 0xFF)


def virtual_serial(directory: Path) -> str:
    """The bootloader serial of the virtual camera kept in `directory`: stable for the
    directory, and different cameras map to different application serials (§1.4)."""
    digest = hashlib.sha256(os.fsencode(directory.resolve())).digest()
    mfg = bytes(b & mask for b, mask in zip(digest, _MFG_MASKS, strict=False))
    return (mfg + digest[6:12]).hex().upper()


class VirtualAE3:
    """The bootloader's state machine (§4), memory semantics (§5-§7) and session (§8)."""

    def __init__(
        self,
        memory: DeviceMemory | None = None,
        timing: Timing | None = None,
        faults: Iterable[Fault] = (),
        *,
        serial: str = DEFAULT_SERIAL,
        forced: bool = False,
        plug_delay: float = 0.0,
        release: BootloaderRelease = LATEST_BOOTLOADER,
        stats: DeviceStats | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = precise_sleep,
    ) -> None:
        self.memory = memory or DeviceMemory()
        self.release = release  # which bootloader this camera shipped with (§13)
        self.device_descriptor = device_descriptor(release)
        self.configuration_descriptor = CONFIGURATION_DESCRIPTOR
        self.boot_image = boot_image(release)
        self.timing = timing or Timing.zero()
        self.faults = [f for f in faults if f.kind is not FaultKind.SETTLING]
        # SET_INTERFACE requests still to stall after enumeration (the settling fault).
        self.unsettled = sum(f.count for f in faults if f.kind is FaultKind.SETTLING)
        self.serial = serial
        self.forced = forced  # §8.1: the application asked for the bootloader (magic word)
        self.clock = clock
        self.sleep = sleep
        self.stats = stats or DeviceStats()  # shared by a camera's successive sessions
        self.lock = threading.RLock()
        self.exit_reason: str | None = None  # why the bootloader left, once it has
        self.hung = False
        self.configuration = 1  # §8.1 phase A: the OS configures it at once
        self.remote_wakeup = False  # §13.3: SET_FEATURE(DEVICE_REMOTE_WAKEUP) sets it
        self.boot_mode = BootMode.DETACHED
        self.detach_received = False  # a DETACH a pre-1.0.2 bootloader did not leave on
        # Plugged in (and enumerated: §8.1 phase A) `plug_delay` seconds from now.
        self.configured_at = clock() + plug_delay
        self._armed_fault: Fault | None = None
        self.busy_until = 0.0
        # §4.1: the DFU driver's variables.
        self.state = State.IDLE
        self.status = Status.OK
        self.alt = 0
        self.pending = False
        self.block = 0
        self.length = 0
        self.xfer = bytearray(MAX_TRANSFER)
        # §4.1 and §5.1: one MPU region per MRAM partition, read-only at boot.
        self.mpu_rw = {p.alt: False for p in PARTITIONS if p.memory is Memory.MRAM}
        self.recovered = False

    # ------------------------------------------------------------------ session (§8)

    def attached(self) -> VirtualAE3 | None:
        """As a port of the virtual bus: the bootloader, while it is on the bus."""
        return self if self.present else None

    @property
    def present(self) -> bool:
        """On the bus as the bootloader (it may leave by itself: §8.3)."""
        with self.lock:
            self._check_listen_window()
            return self.exit_reason is None and self.clock() >= self.configured_at

    def _check_listen_window(self, *, detached: bool = False) -> None:
        """§8.1 phase B: leave when not forced, DETACHED, and the window has passed.

        `detached`: a DETACH on a pre-1.0.2 bootloader (§13.1) just re-armed the flag;
        its elapsed time runs from SET_CONFIGURATION and is never restarted.
        """
        window = self.timing.listen_window
        if (
            self.exit_reason is None
            and window is not None
            and not self.forced
            and self.boot_mode is BootMode.DETACHED
            and self.clock() - self.configured_at > window
        ):
            if detached or self.detach_received:
                self.leave(f"DETACH, {window} s after enumeration (bootloader before 1.0.2)")
            else:
                self.leave(f"no DFU activity within {window} s of enumeration")

    def leave(self, reason: str) -> None:
        """§8.1 step 5: disconnect and jump to HP (no validity check)."""
        if self.exit_reason is None:
            self.exit_reason = reason
            self.memory.flush()

    def bus_reset(self) -> None:
        """§8.3: a USB reset unconfigures the device and the bootloader leaves."""
        with self.lock:
            self._require_present()
            self.leave("USB reset")

    def unplug(self) -> None:
        with self.lock:
            self.leave("unplugged")

    def _require_present(self) -> None:
        self._check_listen_window()
        if self.exit_reason is not None:
            raise NoDevice(self.exit_reason)
        if self.clock() < self.configured_at:
            raise NoDevice("not plugged in yet")

    def _busy(self, seconds: float) -> None:
        """The device is occupied: the next request waits until the work is done (§11)."""
        if seconds > 0:
            self.busy_until = max(self.busy_until, self.clock()) + seconds
            self.stats.device_time += seconds

    def _wait_until_free(self, timeout: float) -> None:
        remaining = self.busy_until - self.clock()
        if remaining > timeout:
            self.sleep(timeout)
            raise DeviceTimeout("device busy past the host's timeout")
        if remaining > 0:
            self.sleep(remaining)

    # ------------------------------------------------------------------ control transfers

    def control(self, setup: Setup, data: bytes = b"", timeout: float = 5.0) -> bytes:
        """One control transfer. Returns the IN data (b"" for OUT).

        Raises Stall, NoDevice or DeviceTimeout as the bus would report them.
        """
        with self.lock:
            self._require_present()
            if self.hung:
                self.sleep(timeout)
                raise DeviceTimeout("the device stopped responding")
            self._wait_until_free(timeout)
            self.stats.control_transfers += 1
            self._busy(self.timing.control_transfer + setup.length * self.timing.control_byte)
            if setup.kind == 0:
                return self._standard(setup, data)
            if setup.kind == 1:
                return self._dfu(setup, data, timeout)
            raise Stall("vendor request")

    def _standard(self, setup: Setup, data: bytes) -> bytes:
        request = setup.request
        if request == StdRequest.GET_DESCRIPTOR and setup.recipient == 0:
            return self._descriptor(setup.value >> 8, setup.value & 0xFF)[: setup.length]
        if request == StdRequest.GET_STATUS:
            if setup.recipient == 1:
                raise Stall("GET_STATUS to the interface")  # §13.3: the class driver stalls
            wakeup = 2 if self.remote_wakeup and setup.recipient == 0 else 0
            return bytes([wakeup, 0])[: setup.length]
        if request in (StdRequest.SET_FEATURE, StdRequest.CLEAR_FEATURE) and setup.recipient == 0:
            # §13.3: remote wakeup is set or cleared although bmAttributes does not
            # advertise it; every other device feature (TEST_MODE included) stalls.
            if setup.value != DEVICE_REMOTE_WAKEUP:
                raise Stall("unsupported device feature")
            self.remote_wakeup = request == StdRequest.SET_FEATURE
            return b""
        if request == StdRequest.SET_CONFIGURATION and setup.recipient == 0:
            value = setup.value & 0xFF
            if value == self.configuration:
                return b""  # a SET_CONFIGURATION that changes nothing is ignored (§9 step 5)
            if value == 0:
                self.configuration = 0
                self.leave("SET_CONFIGURATION(0)")  # §8.3
                return b""
            # §13.3: any value 1-255 is taken; OpenMV's descriptor callback ignores the
            # index, so the same configuration opens, after every class driver was reset.
            self.configuration = value
            self.alt = 0
            self._reset_dfu()
            return b""
        if request == StdRequest.GET_CONFIGURATION and setup.recipient == 0:
            return bytes([self.configuration])[: setup.length]
        if setup.recipient == 1 and setup.index == 0:
            if request == StdRequest.SET_INTERFACE:
                self._set_interface(setup.value & 0xFF)
                return b""
            if request == StdRequest.GET_INTERFACE:
                return bytes([self.alt])[: setup.length]
        raise Stall("unsupported standard request")

    def _descriptor(self, kind: int, index: int) -> bytes:
        if kind == DescriptorType.DEVICE:
            return self.device_descriptor
        if kind == DescriptorType.CONFIGURATION:
            return CONFIGURATION_DESCRIPTOR  # §1.2: any index returns it
        if kind == DescriptorType.DEVICE_QUALIFIER:
            return DEVICE_QUALIFIER
        if kind == DescriptorType.STRING:
            strings = ["", "OpenMV", "OpenMV Camera (DFU Mode)", self.serial, *ALT_NAMES]
            if index == 0:
                return bytes([4, DescriptorType.STRING, 0x09, 0x04])  # LANGID 0x0409
            if index < len(strings):
                return string_descriptor(strings[index])
        raise Stall("no such descriptor")  # §1.3: index >= 12 stalls; no BOS, no other-speed

    def _set_interface(self, alt: int) -> None:
        """§3: any alt 0-255 is stored without a range check; the DFU state resets."""
        if self.unsettled > 0:
            self.unsettled -= 1
            raise Stall("SET_INTERFACE before the device settled (fault)")
        if alt >= len(PARTITIONS):
            self.stats.notes.append(f"SET_INTERFACE({alt}): undefined in firmware (§12.8)")
        self.alt = alt
        self._reset_dfu()

    def _reset_dfu(self) -> None:
        self.state, self.status, self.pending = State.IDLE, Status.OK, False

    # ------------------------------------------------------------------ DFU class requests

    def _dfu(self, setup: Setup, data: bytes, timeout: float) -> bytes:
        # §3: interface recipient and wIndex 0 only; bRequest > 6 stalls.
        if setup.recipient != 1 or setup.index != 0 or setup.request > Request.ABORT:
            raise Stall("not a DFU request for interface 0")
        request = Request(setup.request)
        if request is Request.DNLOAD:
            return self._dnload(setup, data)
        if request is Request.UPLOAD:
            return self._upload(setup)
        if request is Request.GETSTATUS:
            return self._getstatus(setup.length, timeout)
        if request is Request.GETSTATE:
            return bytes([self.state])[: setup.length]
        if request in (Request.CLRSTATUS, Request.ABORT):
            self._reset_dfu()  # §4.2: both accepted in every state, ERROR included
            return b""
        # DETACH: acknowledged, then the bootloader leaves from any state (§8.3) on 1.0.2+.
        # Before 1.0.2 it only sets `tud_dfu_detached` again: the loop leaves once 1.5 s
        # have passed since SET_CONFIGURATION, and never in forced mode (§13.1).
        if self.release.detach_leaves:
            self.boot_mode = BootMode.RESET
            self.leave("DETACH")
        else:
            self.boot_mode = BootMode.DETACHED
            self.detach_received = True
            self._check_listen_window(detached=True)
        return b""

    def _take_fault(self, op: str, block: int) -> Fault | None:
        for fault in self.faults:
            if fault.op == op and fault.alt == self.alt and fault.block == block:
                self.faults.remove(fault)
                return fault
        return None

    def _dnload(self, setup: Setup, data: bytes) -> bytes:
        length = setup.length
        if length > MAX_TRANSFER or self.state not in (State.IDLE, State.DNLOAD_IDLE):
            raise Stall(f"DNLOAD in {self.state.name}")  # §4.2
        fault = self._take_fault("dnload", setup.value) if length else None
        if fault is not None:
            self._inject(fault)
        self.pending = True
        if length:
            self.xfer[:length] = data[:length]
            self.block, self.length = setup.value, length
            self.state = State.DNLOAD_SYNC
        else:
            self.state = State.MANIFEST_SYNC
        self._armed_fault = fault
        return b""

    def _inject(self, fault: Fault) -> None:
        """Faults that act on the request itself; STATUS and SLOW act on the flash work."""
        if fault.kind is FaultKind.VANISH:
            self.leave(f"unplugged (injected at alt {fault.alt} block {fault.block})")
            raise NoDevice(self.exit_reason)
        if fault.kind is FaultKind.STALL:
            raise Stall("injected stall")
        if fault.kind is FaultKind.HANG:
            self.hung = True
            raise DeviceTimeout("injected hang")

    def _getstatus(self, length: int, timeout: float) -> bytes:
        """§4.3: the reply is built first; the flash work runs when its status stage ends.

        In a SYNC state with an operation pending, the reply says DNBUSY or MANIFEST and
        the work follows (latching the session, §8.2); with none pending, the reply and
        the new state are DNLOAD_IDLE or IDLE.
        """
        handshake = {
            State.DNLOAD_SYNC: (State.DNBUSY, self._finish_download, State.DNLOAD_IDLE),
            State.MANIFEST_SYNC: (State.MANIFEST, self._finish_manifest, State.IDLE),
        }.get(self.state)
        work = None
        if handshake is None:
            reply_state = self.state
        elif self.pending:
            self.boot_mode = BootMode.ATTACHED
            reply_state, work, _ = handshake
        else:
            reply_state = self.state = handshake[2]
        reply = DfuStatus(self.status, 0, reply_state).pack()[:length]  # bwPollTimeout is 0
        if work is not None:
            work()
        return reply

    def _finish(self, result: Status, ok_state: State) -> None:
        """tud_dfu_finish_flashing (§4.3)."""
        self.pending = False
        if result is Status.OK:
            self.state = ok_state
        else:
            self.state, self.status = State.ERROR, result

    def _finish_download(self) -> None:
        self.state = State.DNBUSY
        fault, self._armed_fault = self._armed_fault, None
        if fault is not None and fault.kind is FaultKind.SLOW:
            self._busy(fault.seconds)
        if fault is not None and fault.kind is FaultKind.STATUS:
            result = fault.status
        else:
            result = self._download(self.alt, self.block, self.length)
        self._finish(result, State.DNLOAD_SYNC)

    def _finish_manifest(self) -> None:
        self.state = State.MANIFEST
        if self.alt == BOOT.alt:
            # §5.1 hazard (inferred): BOOT's region made execute-never under the running code.
            self.hung = True
            self.stats.notes.append("manifest on BOOT: MemManage fault, device hung (§5.1)")
            return
        if self.alt in self.mpu_rw:
            self.mpu_rw[self.alt] = False  # re-locked read-only, execute-never
        self._finish(Status.OK, State.MANIFEST_SYNC)

    # ------------------------------------------------------------------ download (§5)

    def _partition(self, alt: int) -> Partition | None:
        if alt >= len(PARTITIONS):
            self.hung = True  # §12.8: an out-of-bounds table read; model it as a hang
            self.stats.notes.append(f"alt {alt} used: undefined partition, device hung")
            return None
        return PARTITIONS[alt]

    def _download(self, alt: int, block: int, length: int) -> Status:
        partition = self._partition(alt)
        if partition is None:
            return Status.OK
        if partition.read_only:
            return Status.errWRITE  # §5 check 1, before anything else
        if block == 0 and alt in self.mpu_rw:
            self.mpu_rw[alt] = True  # §5 check 2
        offset = block * DFU_BLOCK_SIZE
        if partition.start + offset + length > partition.limit:
            return Status.errADDRESS  # §5 check 3
        if partition.memory is Memory.MRAM:
            return self._write_mram(partition, offset, length)
        if partition.memory is Memory.NOR:
            return self._write_nor(partition, offset, length)
        return self._recover(length)

    def _write_mram(self, partition: Partition, offset: int, length: int) -> Status:
        if not self.mpu_rw[partition.alt]:
            # §5 (inferred): a store into a read-only MPU region faults the CPU.
            self.hung = True
            self.stats.notes.append(
                f"write to locked MRAM alt {partition.alt}: MemManage fault, device hung (§5)"
            )
            return Status.OK
        rounded = -(-length // MRAM_WRITE_UNIT) * MRAM_WRITE_UNIT  # §5.1: stale tail bytes
        self.memory.write(partition, offset, memoryview(self.xfer)[:rounded])
        self.stats.blocks_written += 1
        self._busy(self.timing.mram_write_16 * (rounded // MRAM_WRITE_UNIT))
        return Status.OK

    def _write_nor(self, partition: Partition, offset: int, length: int) -> Status:
        # §5.2: erase the whole 4 KiB sector, then program n bytes: the rest reads 0xFF.
        sector = bytes(self.xfer[:length]) + bytes([NOR_ERASED]) * (DFU_BLOCK_SIZE - length)
        self.memory.write(partition, offset, sector)
        self.stats.blocks_written += 1
        pages = -(-length // NOR_PAGE)
        self._busy(self.timing.nor_sector_erase + pages * self.timing.nor_page_program)
        return Status.OK

    def _recover(self, length: int) -> Status:
        """§7: the 16-byte key at block 0 re-initialises the external chip, once."""
        if length < len(RECOVERY_KEY) or self.recovered:
            return Status.errWRITE
        if bytes(self.xfer[: len(RECOVERY_KEY)]) != RECOVERY_KEY:
            return Status.errWRITE
        for partition in PARTITIONS:
            if partition.memory is Memory.NOR:
                self.memory.erase(partition)
        self.recovered = True
        self.stats.recoveries += 1
        self._busy(self.timing.recovery)
        return Status.OK

    # ------------------------------------------------------------------ upload (§6)

    def _upload(self, setup: Setup) -> bytes:
        length = setup.length
        if length > MAX_TRANSFER:
            raise Stall("UPLOAD longer than wTransferSize")
        self.boot_mode = BootMode.ATTACHED  # §8.2: any UPLOAD latches the session
        if self.state in (State.DNLOAD_SYNC, State.MANIFEST_SYNC):
            self.pending = False  # §4.2 pitfall: the pending block is never written
        partition = self._partition(self.alt)
        if partition is None:
            return b""
        offset = setup.value * DFU_BLOCK_SIZE
        if partition.start + offset + length > partition.limit:
            self.xfer[:4] = bytes(4)  # §6: the end-of-upload marker
            return bytes(min(4, length))
        fault = self._take_fault("upload", setup.value)
        if fault is not None:
            self._inject(fault)
        if partition.memory is Memory.RECOVERY or (
            fault is not None and fault.kind is FaultKind.STATUS
        ):
            self.state, self.status = State.ERROR, Status.errFILE  # §6: flash_read failed
            return b""
        if partition.read_only:
            data = self.boot_image[offset : offset + length]
        else:
            data = self.memory.read(partition, offset, length)
        self.xfer[:length] = data
        self.stats.blocks_read += 1
        if partition.memory is Memory.NOR:
            self._busy(self.timing.nor_read_block * length / DFU_BLOCK_SIZE)
        return data
