"""Failures the virtual bootloader can be told to inject, and how a control transfer fails."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import Enum

from ae3tools.board import (
    partition_by_name,
)
from ae3tools.dfu.protocol import (
    Status,
)


class FaultKind(str, Enum):
    STATUS = "status"  # the block's write (or read) fails with a DFU status
    VANISH = "vanish"  # the device disappears, as an unplug does
    STALL = "stall"  # the request is stalled
    HANG = "hang"  # the device stops answering
    SLOW = "slow"  # the block's flash work takes `seconds` longer
    # Just enumerated, the device stalls its first `count` SET_INTERFACE requests: what
    # openmv-ota saw opening OpenMV's bootloader at once ("Cannot set alternate interface").
    SETTLING = "settling"


@dataclass(frozen=True)
class Fault:
    """A failure to inject when the host sends `op` for (alt, block). Fires once."""

    kind: FaultKind
    alt: int
    block: int
    op: str = "dnload"  # or "upload"
    status: Status = Status.errWRITE
    seconds: float = 1.0
    count: int = 3  # settling: how many SET_INTERFACE requests are stalled

    @classmethod
    def parse(cls, text: str) -> Fault:
        """KIND:alt=ALT:block=N[:op=upload][:status=errWRITE][:seconds=S], or
        settling[:count=N].

        ALT is a number or an alt name: "status:alt=HP:block=3:status=errWRITE".
        """
        kind_text, *pairs = text.strip().split(":")
        try:
            kind = FaultKind(kind_text)
            values = dict(pair.split("=", 1) for pair in pairs)
            if kind is FaultKind.SETTLING:
                fault = cls(kind, alt=-1, block=-1, count=int(values.pop("count", 3)))
                if values:
                    raise ValueError(f"unknown field(s) {', '.join(values)}")
                return fault
            alt_text = values.pop("alt")
            alt = int(alt_text) if alt_text.isdigit() else partition_by_name(alt_text).alt
            fault = cls(kind, alt, int(values.pop("block")))
            if "op" in values:
                fault = replace(fault, op=values.pop("op"))
            if "status" in values:
                fault = replace(fault, status=Status.parse(values.pop("status")))
            if "seconds" in values:
                fault = replace(fault, seconds=float(values.pop("seconds")))
        except (KeyError, ValueError) as exc:
            raise ValueError(
                f"fault {text!r}: expected KIND:alt=ALT:block=N[:op=dnload|upload]"
                f"[:status=CODE][:seconds=S] or settling[:count=N], KIND one of "
                f"{', '.join(k.value for k in FaultKind)} ({exc})"
            ) from None
        if values or fault.op not in ("dnload", "upload"):
            raise ValueError(f"fault {text!r}: unknown field(s) {', '.join(values) or fault.op}")
        return fault

    @classmethod
    def parse_many(cls, texts: Iterable[str]) -> list[Fault]:
        return [cls.parse(part) for text in texts for part in text.split(",") if part.strip()]


# ----------------------------------------------------------------------------- errors


class Stall(Exception):
    """The device stalls this control transfer (§4.2); the state does not change."""


class NoDevice(Exception):
    """The device is not on the bus (it left the bootloader, or was unplugged)."""


class DeviceTimeout(Exception):
    """The device did not complete the transfer within the host's timeout."""
