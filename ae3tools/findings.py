"""Findings (what a validator reports) and the one error type ae3tools raises."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Severity(str, Enum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True)
class Finding:
    """One result of a check: a stable short code, a severity, where, and what."""

    code: str
    severity: Severity
    message: str
    location: str = ""

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        return f"{self.severity.value} {self.code}: {where}{self.message}"

    def as_dict(self) -> dict[str, str]:
        return {
            "code": self.code,
            "severity": self.severity.value,
            "location": self.location,
            "message": self.message,
        }


def error(code: str, message: str, location: str = "") -> Finding:
    return Finding(code, Severity.ERROR, message, location)


def warning(code: str, message: str, location: str = "") -> Finding:
    return Finding(code, Severity.WARNING, message, location)


def info(code: str, message: str, location: str = "") -> Finding:
    return Finding(code, Severity.INFO, message, location)


def errors_in(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity is Severity.ERROR]


def warnings_in(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity is Severity.WARNING]


# Findings of one code beyond this many are counted, not kept: a crafted input can
# otherwise produce millions of identical findings (and gigabytes of report).
FINDINGS_PER_CODE = 20


@dataclass
class FindingLog:
    """Collects findings, keeping the first FINDINGS_PER_CODE of each code.

    `result()` adds one finding per code that overflowed, with the same severity,
    saying how many more there were, so the verdict and the count survive the cap.
    """

    cap: int = FINDINGS_PER_CODE
    kept: list[Finding] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    severities: dict[str, Severity] = field(default_factory=dict)

    def add(self, finding: Finding) -> None:
        self.note(finding.code, finding.severity, 1)
        if self.counts[finding.code] <= self.cap:
            self.kept.append(finding)

    def report(
        self, code: str, severity: Severity, message: str, location: str | Callable[[], str]
    ) -> None:
        """Add a finding, building its location only if it is kept (past the cap a
        callable is not called: a location can cost the depth of a path)."""
        if self.full(code):
            self.note(code, severity, 1)
        else:
            where = location if isinstance(location, str) else location()
            self.add(Finding(code, severity, message, where))

    def full(self, code: str) -> bool:
        """Whether findings of `code` are only counted from now on."""
        return self.counts[code] >= self.cap

    def note(self, code: str, severity: Severity, count: int) -> None:
        """Count `count` findings of `code` without building them."""
        self.counts[code] += count
        self.severities[code] = severity

    def result(self) -> list[Finding]:
        summaries = [
            Finding(
                code,
                self.severities[code],
                f"{count - self.cap} more {code} finding{'s' if count - self.cap > 1 else ''} "
                f"not shown ({count} in all)",
            )
            for code, count in self.counts.items()
            if count > self.cap
        ]
        return [*self.kept, *summaries]


class Ae3Error(Exception):
    """A problem the user can fix: bad input, a failed check, a device refusing.

    The message is one line and names the file or device it is about. The CLI prints
    it as is and exits with `exit_code` (1: a failed check, 2: a usage error).
    """

    exit_code = 1

    def __init__(
        self, message: str, *, hint: str = "", details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.hint = hint
        self.details = details  # extra fields for the --json error object


class UsageError(Ae3Error):
    exit_code = 2


class DeviceError(Ae3Error):
    """Talking to the camera failed: the message says which image and block, when known."""

    def __init__(
        self,
        message: str,
        *,
        hint: str = "",
        vanished: bool = False,
        timed_out: bool = False,
        transient: bool = False,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, hint=hint, details=details)
        self.vanished = vanished  # the camera left the bus
        self.timed_out = timed_out  # the camera stopped answering
        self.transient = transient  # a refusal that may pass (a stall, busy, an I/O error)

    @property
    def session_lost(self) -> bool:
        """Whether the bootloader session is over: a re-run needs the camera replugged."""
        return self.vanished or self.timed_out
