"""Which file data must start at which multiple (romfs §8.14)."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class AlignmentRule:
    """File data whose base name matches `pattern` must start at a multiple of `alignment`."""

    pattern: str
    alignment: int

    @classmethod
    def parse(cls, text: str) -> AlignmentRule:
        """Parse "PATTERN=N", for example "*.tflite=16"."""
        pattern, sep, number = text.rpartition("=")
        try:
            alignment = int(number, 0)
        except ValueError:
            alignment = 0
        if not sep or not pattern or alignment < 1 or alignment & (alignment - 1):
            raise ValueError(f"alignment rule {text!r}: expected PATTERN=N with N a power of two")
        return cls(pattern, alignment)


# An entry's alignment is reported up to this (offset 0 is aligned to anything).
MAX_SHOWN_ALIGNMENT = 1 << 16

# romfs §8.14: OpenMV asks for 16 for .tflite (zero-copy model use) and defaults to 4.
OPENMV_ALIGNMENT: tuple[AlignmentRule, ...] = (
    AlignmentRule("*.tflite", 16),
    AlignmentRule("*", 4),
)
# What a validator insists on by default: only the rule whose breach breaks a device.
REQUIRED_ALIGNMENT: tuple[AlignmentRule, ...] = (AlignmentRule("*.tflite", 16),)


def alignment_for(name: str, rules: Sequence[AlignmentRule]) -> int:
    for rule in rules:
        if fnmatch.fnmatchcase(name, rule.pattern):
            return rule.alignment
    return 1


# Names are shown escaped: printable ASCII as is (a backslash doubled), every other byte
# as \xNN, and so is a space that ends a name (at the end of a line it would vanish:
