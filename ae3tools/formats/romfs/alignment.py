"""Which file data must start at which multiple (romfs §8.14)."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class AlignmentRule:
    """File data whose name matches `pattern` must start at a multiple of `alignment`.

    The pattern is a glob matched against the whole name in any case, so `*.bin` is the
    last suffix: `Weights.BIN` and `model.int8.bin` match it.
    """

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

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name.lower(), self.pattern.lower())


# An entry's alignment is reported up to this (offset 0 is aligned to anything).
MAX_SHOWN_ALIGNMENT = 1 << 16

# romfs §8.14: the AE3's rules in OpenMV IDE's board settings and in openmv-ota's
# boards.json (both ROMFS partitions): models and weights at 16, so `ml.Model` can use
# them in place; everything else at 4. openmv-ota matches Qt's "complete suffix" (all
# after the first dot), which leaves `model.int8.tflite` at 4; the last suffix, as here,
# aligns it, and 16 is also a multiple of 4, so openmv-ota's verify accepts it.
OPENMV_ALIGNMENT: tuple[AlignmentRule, ...] = (
    AlignmentRule("*.tflite", 16),
    AlignmentRule("*.lite", 16),
    AlignmentRule("*.bin", 16),
    AlignmentRule("*", 4),
)
# What a validator insists on by default: the rules whose breach breaks a device.
REQUIRED_ALIGNMENT: tuple[AlignmentRule, ...] = OPENMV_ALIGNMENT[:-1]


def alignment_for(name: str, rules: Sequence[AlignmentRule]) -> int:
    """The first matching rule's alignment; 1 when none matches."""
    for rule in rules:
        if rule.matches(name):
            return rule.alignment
    return 1


def largest_alignment(rules: Sequence[AlignmentRule]) -> int:
    """What directory contents are aligned to, so that every rule holds inside them
    whatever the directory's place (openmv-ota's and OpenMV IDE's layout)."""
    return max((rule.alignment for rule in rules), default=1)
