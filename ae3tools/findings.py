"""Findings (what a validator reports) and the one error type ae3tools raises."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum


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


class Ae3Error(Exception):
    """A problem the user can fix: bad input, a failed check, a device refusing.

    The message is one line and names the file or device it is about. The CLI prints
    it as is and exits with `exit_code` (1: a failed check, 2: a usage error).
    """

    exit_code = 1

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


class UsageError(Ae3Error):
    exit_code = 2
