"""What the virtual device's work costs in time, and the clocks it is measured on."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Timing:
    """What the device costs, in seconds (§11: not derivable from the source).

    `zero()` is for tests. `realistic()` is a stated assumption, not a measurement:
    MRAM stores at about 8 MB/s, a NOR 4 KiB sector erase of 20 ms, 128-byte page
    programs of 0.3 ms, a 4 KiB NOR read of 0.7 ms (single-lane SPI at 50 MHz, §11),
    bus time of one 125 us microframe per control transfer (SETUP and status stages)
    plus 8 MB/s for the data stage (64-byte EP0 packets, §10), 2 s for the recovery
    sequence, and the 1.5 s listen window of §8.1. A running camera takes 0.5 s from its
    reset to the next enumeration (openmv-protocol.md §5.2: "well under a second").
    """

    listen_window: float | None = None  # None: no timeout, like forced entry (§8.1)
    control_transfer: float = 0.0  # per control transfer
    control_byte: float = 0.0  # per byte of a data stage
    mram_write_16: float = 0.0
    nor_sector_erase: float = 0.0
    nor_page_program: float = 0.0
    nor_read_block: float = 0.0
    recovery: float = 0.0
    reboot: float = 0.0  # a running camera's reset until the next enumeration (its own)

    @classmethod
    def zero(cls) -> Timing:
        return cls()

    @classmethod
    def realistic(cls) -> Timing:
        return cls(
            listen_window=1.5,
            control_transfer=0.000125,
            control_byte=0.000000125,
            mram_write_16=0.000002,
            nor_sector_erase=0.020,
            nor_page_program=0.0003,
            nor_read_block=0.0007,
            recovery=2.0,
            reboot=0.5,
        )

    @classmethod
    def parse(cls, text: str) -> Timing:
        """PRESET[:field=seconds...], e.g. "realistic:nor_sector_erase=0.045:listen_window=none".

        PRESET is zero or realistic; each field of this class may be overridden.
        """
        name, *overrides = text.split(":")
        presets = {"zero": cls.zero, "realistic": cls.realistic}
        if name not in presets:
            raise ValueError(f"timing {text!r}: expected zero or realistic, then :field=seconds")
        timing = presets[name]()
        fields = set(cls.__dataclass_fields__)
        for override in overrides:
            key, _, value = override.partition("=")
            if key not in fields:
                raise ValueError(
                    f"timing {text!r}: unknown field {key!r} (one of {', '.join(sorted(fields))})"
                )
            try:
                number = None if value == "none" else float(value)
            except ValueError:
                raise ValueError(f"timing {text!r}: {key}={value} is not a number") from None
            if number is None and key != "listen_window":
                raise ValueError(f"timing {text!r}: only listen_window may be none")
            timing = replace(timing, **{key: number})  # type: ignore[arg-type]
        return timing


def precise_sleep(seconds: float) -> None:
    """Sleep, then spin the last fraction of a millisecond: the OS wakes a sleeper late
    (tens to hundreds of microseconds), which over thousands of short device waits would
    count as host overhead in a benchmark."""
    deadline = time.perf_counter() + seconds
    if seconds > _SPIN:
        time.sleep(seconds - _SPIN)
    while time.perf_counter() < deadline:
        pass


_SPIN = 0.0005


class SimulatedClock:
    """Device time for benchmarks: waits are added up, not slept.

    A virtual AE3 on this clock answers at once, and its modelled device time is exact
    and repeatable however busy the host is; the host's own cost is then measured apart
    (process CPU time). Wall-clock runs (the bridge against dfu-util) keep the real clock.
    """

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
