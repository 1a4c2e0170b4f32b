"""The virtual AE3 against ae3-bootloader.md, section by section (§N = the spec's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ae3tools.board import PARTITIONS, RECOVERY_KEY, partition_by_name
from ae3tools.dfu.protocol import DfuStatus, Request, State, Status
from ae3tools.virtual.bootloader import Setup, VirtualAE3
from ae3tools.virtual.faults import DeviceTimeout, Fault, FaultKind, NoDevice, Stall
from ae3tools.virtual.memory import DeviceMemory
from ae3tools.virtual.timing import Timing

BLOCK = 4096
HP, HE, ROMFS1, RWFS, ROMFS0 = (
    partition_by_name(n) for n in ("HP", "HE", "ROMFS1", "RWFS", "ROMFS0")
)


class Clock:
    """A fake clock whose sleep advances it: timing tests without waiting."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def device(timing: Timing | None = None, clock: Clock | None = None, **kwargs) -> VirtualAE3:
    clock = clock or Clock()
    return VirtualAE3(DeviceMemory(), timing, clock=clock, sleep=clock.sleep, **kwargs)


# Requests as a host sends them.
def out(
    dev: VirtualAE3,
    request: int,
    value: int = 0,
    data: bytes = b"",
    index: int = 0,
    request_type: int = 0x21,
) -> bytes:
    return dev.control(Setup(request_type, request, value, index, len(data)), data)


def inn(
    dev: VirtualAE3,
    request: int,
    value: int = 0,
    length: int = 0,
    index: int = 0,
    request_type: int = 0xA1,
) -> bytes:
    return dev.control(Setup(request_type, request, value, index, length))


def set_alt(dev: VirtualAE3, alt: int) -> None:
    dev.control(Setup(0x01, 11, alt, 0, 0))


def status(dev: VirtualAE3) -> DfuStatus:
    return DfuStatus.unpack(inn(dev, Request.GETSTATUS, length=6))


def dnload(dev: VirtualAE3, block: int, data: bytes) -> None:
    out(dev, Request.DNLOAD, block, data)


def write_block(dev: VirtualAE3, block: int, data: bytes) -> tuple[DfuStatus, DfuStatus]:
    dnload(dev, block, data)
    return status(dev), status(dev)


def upload(dev: VirtualAE3, block: int, length: int = BLOCK) -> bytes:
    return inn(dev, Request.UPLOAD, block, length)


def manifest(dev: VirtualAE3) -> tuple[DfuStatus, DfuStatus]:
    dnload(dev, 0, b"")
    return status(dev), status(dev)


def descriptor(dev: VirtualAE3, kind: int, index: int = 0, length: int = 255) -> bytes:
    return dev.control(Setup(0x80, 6, (kind << 8) | index, 0x0409, length))


# ------------------------------------------------------------------ §1 descriptors


def test_device_and_configuration_descriptors() -> None:
    dev = device()
    assert descriptor(dev, 1).hex(" ") == "12 01 00 02 00 00 00 40 c5 37 e3 96 03 01 01 02 03 01"
    config = descriptor(dev, 2)
    assert len(config) == 0x5A and config[:9].hex(" ") == "09 02 5a 00 01 01 00 80 fa"
    assert config[-9:].hex(" ") == "09 21 07 e8 03 00 10 01 01"
    for alt in range(8):
        assert config[9 + 9 * alt : 18 + 9 * alt] == bytes([9, 4, 0, alt, 0, 0xFE, 1, 2, 4 + alt])
    assert descriptor(dev, 2, index=5) == config  # §1.2: any index
    assert descriptor(dev, 6).hex(" ") == "0a 06 00 02 00 00 00 40 01 00"
    assert descriptor(dev, 1, length=8) == descriptor(dev, 1)[:8]


@pytest.mark.parametrize(
    ("index", "text", "length"),
    [
        (1, "OpenMV", 14),
        (2, "OpenMV Camera (DFU Mode)", 50),
        (3, "AE30000000000000DEADBEEF", 50),
        (4, "BOOT", 10),
        (5, "HP", 6),
        (6, "HE", 6),
        (7, "ROMFS1", 14),
        (8, "TOC", 8),
        (9, "RWFS", 10),
        (10, "ROMFS0", 14),
        (11, "RECOVERY", 18),
    ],
)
def test_string_descriptors(index: int, text: str, length: int) -> None:
    raw = descriptor(device(), 3, index)
    assert raw[0] == length and raw[1] == 3 and raw[2:].decode("utf-16-le") == text


def test_missing_descriptors_stall() -> None:
    dev = device()
    assert descriptor(dev, 3, 0) == bytes([4, 3, 9, 4])
    for kind, index in ((3, 12), (3, 200), (15, 0), (7, 0)):  # string >= 12, BOS, other-speed
        with pytest.raises(Stall):
            descriptor(dev, kind, index)
    assert dev.state is State.IDLE  # a stall changes nothing (§4.2)


# ------------------------------------------------------------------ §3 request validation


@pytest.mark.parametrize(
    ("request_type", "code", "index"),
    [
        (0x20, Request.GETSTATE, 0),
        (0xA0, Request.GETSTATUS, 0),
        (0xA1, Request.GETSTATUS, 1),
        (0x21, 7, 0),
        (0x41, 1, 0),
    ],
)
def test_misaddressed_requests_stall(request_type: int, code: int, index: int) -> None:
    dev = device()
    with pytest.raises(Stall):
        dev.control(Setup(request_type, code, 0, index, 6 if request_type & 0x80 else 0))
    assert (dev.state, dev.status) == (State.IDLE, Status.OK)


def test_direction_bit_is_not_validated() -> None:
    dev = device()
    assert dev.control(Setup(0x21, Request.GETSTATE, 0, 0, 1)) == bytes([State.IDLE])


# ------------------------------------------------------------------ §4.2 request x state


# How to bring a fresh device (alt 1, HP) into each state of the table.
def into(state: State) -> VirtualAE3:
    dev = device()
    set_alt(dev, 1)
    if state is State.DNLOAD_SYNC:
        dnload(dev, 0, b"\x11" * 16)
    elif state is State.DNLOAD_IDLE:
        write_block(dev, 0, b"\x11" * 16)
    elif state is State.MANIFEST_SYNC:
        dnload(dev, 0, b"")
    elif state is State.ERROR:
        write_block(dev, HP.blocks, b"x")  # past the end: errADDRESS
    assert dev.state is state, (state, dev.state)
    return dev


STATES = [State.IDLE, State.DNLOAD_SYNC, State.DNLOAD_IDLE, State.MANIFEST_SYNC, State.ERROR]


@pytest.mark.parametrize("state", STATES)
def test_dnload_with_data(state: State) -> None:
    dev = into(state)
    if state in (State.IDLE, State.DNLOAD_IDLE):
        dnload(dev, 3, b"abc")
        assert dev.state is State.DNLOAD_SYNC and dev.pending and (dev.block, dev.length) == (3, 3)
    else:
        before = (dev.state, dev.status)
        with pytest.raises(Stall):
            dnload(dev, 3, b"abc")
        assert (dev.state, dev.status) == before


@pytest.mark.parametrize("state", STATES)
def test_dnload_zero_length(state: State) -> None:
    dev = into(state)
    if state in (State.IDLE, State.DNLOAD_IDLE):
        dnload(dev, 0, b"")  # DFU 1.1 says stall in IDLE; TinyUSB accepts
        assert dev.state is State.MANIFEST_SYNC and dev.pending
    else:
        with pytest.raises(Stall):
            dnload(dev, 0, b"")
        assert dev.state is state


@pytest.mark.parametrize("state", STATES)
def test_oversize_transfers_stall_everywhere(state: State) -> None:
    dev = into(state)
    with pytest.raises(Stall):
        dnload(dev, 0, bytes(BLOCK + 1))
    with pytest.raises(Stall):
        upload(dev, 0, BLOCK + 1)
    assert dev.state is state


@pytest.mark.parametrize("state", STATES)
def test_getstatus_and_getstate(state: State) -> None:
    dev = into(state)
    assert inn(dev, Request.GETSTATE, length=1) == bytes([state])
    reply = status(dev)
    assert reply.poll_timeout_ms == 0  # always 0 on the AE3
    expected = {
        State.IDLE: State.IDLE,
        State.DNLOAD_SYNC: State.DNBUSY,
        State.DNLOAD_IDLE: State.DNLOAD_IDLE,
        State.MANIFEST_SYNC: State.MANIFEST,
        State.ERROR: State.ERROR,
    }[state]
    assert reply.state is expected
    if state is State.ERROR:
        assert reply.status is Status.errADDRESS and status(dev).state is State.ERROR  # persists


@pytest.mark.parametrize("state", STATES)
def test_upload_in_every_state(state: State) -> None:
    dev = into(state)
    data = upload(dev, 0, 16)
    assert len(data) == 16
    assert dev.state is state  # never UPLOAD_IDLE, ERROR persists
    if state in (State.DNLOAD_SYNC, State.MANIFEST_SYNC):
        assert not dev.pending  # the pitfall: the pending operation is dropped


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("clear", [Request.CLRSTATUS, Request.ABORT])
def test_clrstatus_and_abort_return_to_idle(state: State, clear: Request) -> None:
    dev = into(state)
    out(dev, clear)
    assert (dev.state, dev.status, dev.pending) == (State.IDLE, Status.OK, False)


@pytest.mark.parametrize("state", STATES)
def test_detach_ends_the_session_in_any_state(state: State) -> None:
    dev = into(state)
    out(dev, Request.DETACH)
    assert not dev.present and dev.exit_reason == "DETACH"
    with pytest.raises(NoDevice):
        status(dev)


@pytest.mark.parametrize("state", STATES)
def test_set_interface_resets_to_idle(state: State) -> None:
    dev = into(state)
    set_alt(dev, 2)
    assert (dev.alt, dev.state, dev.status, dev.pending) == (2, State.IDLE, Status.OK, False)
    assert dev.control(Setup(0x81, 10, 0, 0, 1)) == bytes([2])  # GET_INTERFACE


# ------------------------------------------------------------------ §4.3 handshakes


def test_download_handshake_and_late_failure() -> None:
    dev = device()
    set_alt(dev, 1)
    first, second = write_block(dev, 0, b"\x42" * BLOCK)
    assert (first.status, first.state) == (Status.OK, State.DNBUSY)
    assert (second.status, second.state) == (Status.OK, State.DNLOAD_IDLE)
    # A write that will fail still reports OK/DNBUSY first; the error shows in #2.
    first, second = write_block(dev, HP.blocks, b"x")
    assert (first.status, first.state) == (Status.OK, State.DNBUSY)
    assert (second.status, second.state) == (Status.errADDRESS, State.ERROR)


def test_manifest_handshake() -> None:
    dev = device()
    set_alt(dev, 1)
    write_block(dev, 0, b"x" * 16)
    first, second = manifest(dev)
    assert first.state is State.MANIFEST and second.state is State.IDLE
    assert dev.state is State.IDLE and not dev.mpu_rw[1]  # re-locked


def test_upload_between_dnload_and_getstatus_drops_the_block() -> None:
    dev = device()
    set_alt(dev, 1)
    dnload(dev, 0, b"\x99" * BLOCK)
    upload(dev, 0, BLOCK)
    assert status(dev).state is State.DNLOAD_IDLE
    assert dev.memory.read(HP, 0, BLOCK) != b"\x99" * BLOCK  # silently never written


# ------------------------------------------------------------------ §5 download semantics


def test_block_address_is_block_times_4096_whatever_the_length() -> None:
    dev = device()
    set_alt(dev, 1)
    write_block(dev, 0, b"\x01" * 1024)
    write_block(dev, 1, b"\x02" * 1024)
    memory = dev.memory.read(HP, 0, 2 * BLOCK)
    assert memory[:1024] == b"\x01" * 1024 and memory[BLOCK : BLOCK + 1024] == b"\x02" * 1024
    assert memory[1024:BLOCK] == bytes(BLOCK - 1024)  # a 3 KiB gap


def test_blocks_in_any_order_and_repeated() -> None:
    dev = device()
    set_alt(dev, 1)
    for block, byte in ((0, 1), (5, 2), (2, 3), (5, 4)):
        assert write_block(dev, block, bytes([byte]) * BLOCK)[1].state is State.DNLOAD_IDLE
    assert dev.memory.read(HP, 5 * BLOCK, 1) == b"\x04"


def test_one_byte_too_big_fails_at_the_last_block_without_rollback() -> None:
    dev = device()
    set_alt(dev, 3)
    image = b"\x5a" * (ROMFS1.size + 1)
    for block in range(ROMFS1.blocks):
        assert (
            write_block(dev, block, image[block * BLOCK : (block + 1) * BLOCK])[1].status
            is Status.OK
        )
    assert write_block(dev, ROMFS1.blocks, image[-1:])[1].status is Status.errADDRESS
    assert dev.memory.read(ROMFS1, 0, ROMFS1.size) == image[:-1]


def test_boot_is_read_only_before_any_other_check() -> None:
    dev = device()
    set_alt(dev, 0)
    assert write_block(dev, 0, b"x")[1].status is Status.errWRITE
    assert not dev.mpu_rw[0]  # no MPU change
    set_alt(dev, 0)
    assert write_block(dev, 9999, b"x")[1].status is Status.errWRITE  # not errADDRESS


def test_mram_tail_rounds_up_with_stale_buffer_bytes() -> None:
    dev = device()
    set_alt(dev, 3)
    write_block(dev, 0, b"\xaa" * BLOCK)
    write_block(dev, 1, b"\x01" * 5)
    assert dev.memory.read(ROMFS1, BLOCK, 16) == b"\x01" * 5 + b"\xaa" * 11
    assert dev.memory.read(ROMFS1, BLOCK + 16, 16) == bytes(16)  # untouched past the unit
    # An UPLOAD leaves its data in the shared buffer too.
    set_alt(dev, 0)
    header = upload(dev, 1, 32)
    set_alt(dev, 2)
    write_block(dev, 0, b"\x02" * 3)
    assert dev.memory.read(HE, 0, 16) == b"\x02" * 3 + header[3:16]


def test_nor_block_erases_its_sector() -> None:
    dev = device()
    set_alt(dev, 6)
    write_block(dev, 0, b"\x00" * BLOCK)
    write_block(dev, 1, b"\x00" * BLOCK)
    write_block(dev, 0, b"\x11" * 10)
    assert dev.memory.read(ROMFS0, 0, BLOCK) == b"\x11" * 10 + b"\xff" * (BLOCK - 10)
    assert dev.memory.read(ROMFS0, BLOCK, BLOCK) == bytes(BLOCK)  # other sectors kept


def test_first_mram_write_past_block_zero_hangs_the_device() -> None:
    dev = device()
    set_alt(dev, 1)
    dnload(dev, 1, b"x" * 16)
    status(dev)  # GETSTATUS #1 is answered; the store then faults
    with pytest.raises(DeviceTimeout):
        status(dev)
    assert dev.hung and any("MemManage" in n for n in dev.stats.notes)


def test_manifest_relocks_so_a_later_partial_rewrite_hangs() -> None:
    dev = device()
    set_alt(dev, 1)
    write_block(dev, 0, b"x" * 16)
    manifest(dev)
    set_alt(dev, 1)
    dnload(dev, 1, b"y" * 16)
    status(dev)
    with pytest.raises(DeviceTimeout):
        status(dev)


def test_manifest_on_boot_hangs() -> None:
    dev = device()
    set_alt(dev, 0)
    dnload(dev, 0, b"")
    assert status(dev).state is State.MANIFEST
    with pytest.raises(DeviceTimeout):
        status(dev)


def test_alts_beyond_the_table_are_flagged() -> None:
    dev = device()
    set_alt(dev, 200)  # accepted without a range check (§3)
    assert dev.alt == 200 and any("undefined" in n for n in dev.stats.notes)
    upload(dev, 0, 16)
    with pytest.raises(DeviceTimeout):
        status(dev)


# ------------------------------------------------------------------ §6 upload semantics


def test_upload_past_the_end_is_four_zero_bytes() -> None:
    dev = device()
    set_alt(dev, 3)
    dev.xfer[:8] = b"\xee" * 8
    assert upload(dev, ROMFS1.blocks) == bytes(4)
    assert upload(dev, ROMFS1.blocks + 7, 2) == bytes(2)
    assert dev.xfer[:8] == bytes(4) + b"\xee" * 4
    assert dev.state is State.IDLE


def test_whole_partition_read_gives_size_plus_four_zeros() -> None:
    dev = device()
    set_alt(dev, 4)  # TOC, 8 KiB
    chunks, block = [], 0
    while True:
        chunk = upload(dev, block)
        chunks.append(chunk)
        block += 1
        if len(chunk) < BLOCK:
            break
    dump = b"".join(chunks)
    assert len(dump) == partition_by_name("TOC").size + 4 and dump.endswith(bytes(4))


def test_recovery_cannot_be_read() -> None:
    dev = device()
    set_alt(dev, 7)
    assert upload(dev, 0) == b""
    assert (dev.state, dev.status) == (State.ERROR, Status.errFILE)
    assert upload(dev, 1) == bytes(4)
    assert dev.state is State.ERROR


def test_boot_upload_returns_the_header() -> None:
    dev = device()
    set_alt(dev, 0)
    header = upload(dev, 1, 32)
    assert header[:7] == bytes([0xAD, 0x10, 0x07, 0xB0, 1, 0, 3]) and not any(header[7:])


# ------------------------------------------------------------------ §7 recovery


def test_recovery_erases_the_external_flash_once_per_session() -> None:
    dev = device()
    set_alt(dev, 6)
    write_block(dev, 0, bytes(BLOCK))
    set_alt(dev, 5)
    write_block(dev, 0, bytes(BLOCK))
    set_alt(dev, 7)
    assert write_block(dev, 0, RECOVERY_KEY + bytes(4080))[1].status is Status.OK
    assert dev.memory.read(ROMFS0, 0, BLOCK) == b"\xff" * BLOCK
    assert dev.memory.read(RWFS, 0, BLOCK) == b"\xff" * BLOCK
    assert manifest(dev)[1].state is State.IDLE
    for clear in (
        lambda: set_alt(dev, 7),
        lambda: out(dev, Request.CLRSTATUS),
        lambda: out(dev, Request.ABORT),
    ):
        clear()
        set_alt(dev, 7)
        assert write_block(dev, 0, RECOVERY_KEY)[1].status is Status.errWRITE


def test_recovery_key_rules() -> None:
    dev = device()
    set_alt(dev, 7)
    assert write_block(dev, 0, bytes(16))[1].status is Status.errWRITE  # wrong key
    set_alt(dev, 7)
    assert write_block(dev, 0, RECOVERY_KEY[:15])[1].status is Status.errWRITE  # < 16 bytes
    set_alt(dev, 7)
    assert write_block(dev, 1, RECOVERY_KEY)[1].status is Status.errADDRESS  # not block 0
    set_alt(dev, 7)
    assert write_block(dev, 0, RECOVERY_KEY)[1].status is Status.OK  # 16 bytes suffice
    assert dev.stats.recoveries == 1


# ------------------------------------------------------------------ §8 session


def test_listen_window_expires_without_activity() -> None:
    clock = Clock()
    dev = device(Timing(listen_window=1.5), clock)
    set_alt(dev, 1)  # selecting an alt does not latch
    status(dev)  # nor does GETSTATUS in IDLE, or GETSTATE
    inn(dev, Request.GETSTATE, length=1)
    clock.now += 1.5
    assert dev.present  # the check is a strict '>'
    clock.now += 0.001
    assert not dev.present and "1.5 s" in (dev.exit_reason or "")
    with pytest.raises(NoDevice):
        status(dev)


@pytest.mark.parametrize("latch", ["upload", "dnload+getstatus", "zero-length upload"])
def test_activity_latches_the_session(latch: str) -> None:
    clock = Clock()
    dev = device(Timing(listen_window=1.5), clock)
    set_alt(dev, 1)
    if latch == "upload":
        upload(dev, 0, 16)
    elif latch == "zero-length upload":
        upload(dev, 0, 0)
    else:
        dnload(dev, 0, b"x" * 16)
        clock.now += 1.0
        assert dev.present and dev.boot_mode.value == "detached"  # DNLOAD alone does not
        status(dev)
    clock.now += 3600
    assert dev.present


def test_forced_entry_never_times_out() -> None:
    clock = Clock()
    dev = device(Timing(listen_window=1.5), clock, forced=True)
    clock.now += 60
    assert dev.present


@pytest.mark.parametrize("ending", ["reset", "set_configuration_0", "unplug"])
def test_other_ways_the_session_ends(ending: str) -> None:
    dev = device()
    upload(dev, 0, 16)  # ATTACHED: still ends
    if ending == "reset":
        dev.bus_reset()
    elif ending == "unplug":
        dev.unplug()
    else:
        dev.control(Setup(0x00, 9, 0, 0, 0))
    assert not dev.present


def test_same_configuration_again_is_ignored() -> None:
    dev = device()
    dev.control(Setup(0x00, 9, 1, 0, 0))
    assert dev.present and dev.control(Setup(0x80, 8, 0, 0, 1)) == b"\x01"


# ------------------------------------------------------------------ §13.3 standard requests


def test_get_status_to_the_interface_stalls() -> None:
    dev = device()
    with pytest.raises(Stall):
        dev.control(Setup(0x81, 0, 0, 0, 2))  # SETUP 81 00 00 00 00 00 02 00
    assert dev.control(Setup(0x80, 0, 0, 0, 2)) == b"\x00\x00"  # the device still answers
    assert dev.present


def test_remote_wakeup_feature_is_accepted_and_reported() -> None:
    dev = device()
    dev.control(Setup(0x00, 3, 1, 0, 0))  # SET_FEATURE(DEVICE_REMOTE_WAKEUP)
    assert dev.control(Setup(0x80, 0, 0, 0, 2)) == b"\x02\x00"
    dev.control(Setup(0x00, 1, 1, 0, 0))  # CLEAR_FEATURE(DEVICE_REMOTE_WAKEUP)
    assert dev.control(Setup(0x80, 0, 0, 0, 2)) == b"\x00\x00"
    with pytest.raises(Stall):
        dev.control(Setup(0x00, 3, 2, 0, 0))  # TEST_MODE: CFG_TUD_TEST_MODE is not set


@pytest.mark.parametrize("value", [2, 7, 255])
def test_another_configuration_value_is_taken_and_resets_dfu(value: int) -> None:
    dev = device()
    set_alt(dev, 3)
    dnload(dev, 0, bytes(16))  # DNLOAD_SYNC with a block pending
    dev.control(Setup(0x00, 9, value, 0, 0))
    assert dev.present  # tud_mounted() stays true: the bootloader does not leave
    assert dev.control(Setup(0x80, 8, 0, 0, 1)) == bytes([value])
    assert dev.control(Setup(0x81, 10, 0, 0, 1)) == b"\x00"  # back to alt 0
    assert status(dev).state is State.IDLE
    assert descriptor(dev, 2)[5] == 1  # the same descriptor, whatever index is asked


# ------------------------------------------------------------------ §11 timing model


def test_flash_work_makes_the_next_request_wait() -> None:
    clock = Clock()
    timing = Timing(nor_sector_erase=0.02, nor_page_program=0.001)
    dev = device(timing, clock)
    set_alt(dev, 6)
    dnload(dev, 0, bytes(BLOCK))
    status(dev)
    before = clock.now
    status(dev)  # waits for the erase and 32 page programs
    assert clock.now - before == pytest.approx(0.02 + 32 * 0.001)
    assert dev.stats.device_time == pytest.approx(0.052)


def test_a_request_during_long_work_times_out() -> None:
    clock = Clock()
    dev = device(Timing(recovery=30.0), clock)
    set_alt(dev, 7)
    dnload(dev, 0, RECOVERY_KEY)
    status(dev)
    with pytest.raises(DeviceTimeout):
        dev.control(Setup(0xA1, Request.GETSTATUS, 0, 0, 6), timeout=5.0)
    assert (
        dev.control(Setup(0xA1, Request.GETSTATUS, 0, 0, 6), timeout=60.0)[4] == State.DNLOAD_IDLE
    )


# ------------------------------------------------------------------ memory and faults


def test_memory_directory_persists_across_power_cycles(tmp_path: Path) -> None:
    first = VirtualAE3(DeviceMemory(tmp_path))
    set_alt(first, 2)
    write_block(first, 0, b"\x77" * BLOCK)
    first.memory.close()
    second = VirtualAE3(DeviceMemory(tmp_path))
    assert second.memory.read(HE, 0, BLOCK) == b"\x77" * BLOCK
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2-HE.bin"]
    assert (tmp_path / "2-HE.bin").stat().st_size == HE.size


def test_fault_specs_parse() -> None:
    fault = Fault.parse("status:alt=HP:block=3:status=errADDRESS")
    assert (fault.kind, fault.alt, fault.block, fault.status) == (
        FaultKind.STATUS,
        1,
        3,
        Status.errADDRESS,
    )
    assert Fault.parse("slow:alt=6:block=0:seconds=2.5").seconds == 2.5
    assert Fault.parse("status:alt=1:block=0:op=upload").op == "upload"
    assert len(Fault.parse_many(["vanish:alt=1:block=1,stall:alt=2:block=0"])) == 2
    for bad in (
        "boom:alt=1:block=1",
        "status:alt=1",
        "status:alt=NOPE:block=1",
        "status:alt=1:block=1:colour=red",
        "status:alt=1:block=x",
    ):
        with pytest.raises(ValueError, match="fault"):
            Fault.parse(bad)


def test_each_fault_kind() -> None:
    dev = device(faults=[Fault(FaultKind.STATUS, 1, 1, status=Status.errWRITE)])
    set_alt(dev, 1)
    assert write_block(dev, 0, bytes(16))[1].status is Status.OK
    assert write_block(dev, 1, bytes(16))[1].status is Status.errWRITE
    out(dev, Request.CLRSTATUS)
    assert write_block(dev, 1, bytes(16))[1].status is Status.OK  # fires once

    dev = device(faults=[Fault(FaultKind.STALL, 1, 0)])
    set_alt(dev, 1)
    with pytest.raises(Stall):
        dnload(dev, 0, bytes(16))
    assert dev.state is State.IDLE

    dev = device(faults=[Fault(FaultKind.VANISH, 1, 0)])
    set_alt(dev, 1)
    with pytest.raises(NoDevice):
        dnload(dev, 0, bytes(16))
    assert not dev.present

    dev = device(faults=[Fault(FaultKind.HANG, 1, 0)])
    set_alt(dev, 1)
    with pytest.raises(DeviceTimeout):
        dnload(dev, 0, bytes(16))
    with pytest.raises(DeviceTimeout):
        status(dev)

    clock = Clock()
    dev = device(clock=clock, faults=[Fault(FaultKind.SLOW, 1, 0, seconds=3)])
    set_alt(dev, 1)
    dnload(dev, 0, bytes(16))
    status(dev)
    with pytest.raises(DeviceTimeout):
        dev.control(Setup(0xA1, Request.GETSTATUS, 0, 0, 6), timeout=1.0)

    dev = device(faults=[Fault(FaultKind.STATUS, 2, 0, op="upload")])
    set_alt(dev, 2)
    assert upload(dev, 0) == b"" and dev.status is Status.errFILE


def test_timing_presets_and_overrides() -> None:
    assert Timing.parse("zero") == Timing()
    realistic = Timing.parse("realistic:nor_sector_erase=0.045:listen_window=none")
    assert realistic.nor_sector_erase == 0.045 and realistic.listen_window is None
    assert realistic.mram_write_16 == Timing.realistic().mram_write_16
    for bad in ("fast", "zero:warp=1", "zero:recovery=soon", "zero:recovery=none"):
        with pytest.raises(ValueError, match="timing"):
            Timing.parse(bad)


def test_plug_delay() -> None:
    clock = Clock()
    dev = device(clock=clock, plug_delay=0.5)
    assert not dev.present
    clock.now += 0.5
    assert dev.present


def test_every_partition_has_a_fresh_state() -> None:
    dev = device()
    assert len(dev.boot_image) == PARTITIONS[0].size  # BOOT is the model's own bootloader
    for partition in PARTITIONS[1:-1]:
        buffer = dev.memory.buffer(partition)
        assert len(buffer) == partition.size
