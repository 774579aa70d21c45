"""Outcomes are values: what detection found, and what a provider did with an address."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Family = Literal["ipv4", "ipv6"]
FAMILIES: tuple[Family, ...] = ("ipv4", "ipv6")
LABEL: dict[Family, str] = {"ipv4": "IPv4", "ipv6": "IPv6"}
RECORD_TYPE: dict[Family, str] = {"ipv4": "A", "ipv6": "AAAA"}


@dataclass(frozen=True)
class Detected:
    address: str
    sources: tuple[str, ...]  # the sources that reported it (more than one with agree > 1)


@dataclass(frozen=True)
class DetectFailed:
    """Nothing trustworthy was found: the records are left alone."""

    reason: str


@dataclass(frozen=True)
class Published:
    """The provider now holds ``address`` for the record."""

    address: str
    changed: bool  # False: it already had it (nochg, NOCHANGE, the record read back)
    note: str = ""


@dataclass(frozen=True)
class WouldPublish:
    """Dry run: what would have been sent."""

    address: str
    action: str


# retry: network errors, 5xx, refusals: exponential backoff with jitter.
# wait:  the provider said how long (429 Retry-After; dyndns2 dnserr/911: 30 minutes).
# fatal: the provider must not hear from us again until the configuration changes.
FailureKind = Literal["retry", "wait", "fatal"]


@dataclass(frozen=True)
class Failed:
    message: str  # a sentence a person can act on
    kind: FailureKind = "retry"
    wait: float | None = None
    code: str | None = None


Outcome = Published | WouldPublish | Failed
