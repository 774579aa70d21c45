"""What a check finds, and how the findings are printed and turned into an exit code."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum


class Status(str, Enum):
    OK = "ok"
    WARN = "warn"  # works, or may work, but deserves a look
    FAIL = "fail"  # something the gateway needs is broken
    SKIP = "skip"  # not applicable here, or depends on something that failed


@dataclass(frozen=True)
class Finding:
    status: Status
    message: str
    fix: str = ""


def ok(message: str) -> Finding:
    return Finding(Status.OK, message)


def warn(message: str, fix: str = "") -> Finding:
    return Finding(Status.WARN, message, fix)


def fail(message: str, fix: str = "") -> Finding:
    return Finding(Status.FAIL, message, fix)


def skip(message: str) -> Finding:
    return Finding(Status.SKIP, message)


@dataclass(frozen=True)
class Result:
    check: str
    finding: Finding

    @property
    def status(self) -> Status:
        return self.finding.status


def render(results: Iterable[Result], width: int = 0) -> list[str]:
    """One line per check: status and name in aligned columns, then what was seen and the fix."""
    rows = list(results)
    width = max([width, *(len(r.check) for r in rows)])
    lines = []
    for result in rows:
        finding = result.finding
        text = finding.message
        if finding.fix:
            text += f" -> fix: {finding.fix}"
        lines.append(f"{finding.status.value:<4}  {result.check:<{width}}  {text}")
    return lines


def exit_code(results: Iterable[Result]) -> int:
    """0 when nothing failed (warnings and skips included), else 1."""
    return 1 if any(r.status is Status.FAIL for r in results) else 0
