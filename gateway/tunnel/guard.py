"""Who may even start an SSH handshake: what OpenSSH's MaxStartups and PerSourcePenalties do.

asyncssh accepts every TCP connection and lets it take as long as ``login_timeout`` to
authenticate, with no cap on how many do so at once. The endpoint faces the internet, so:

- at most ``max_unauthenticated`` connections may be unauthenticated at once, and at most
  ``max_unauthenticated_per_source`` from one source;
- a source whose connection ends without a successful login (a failed login, a scanner,
  a login timeout) is refused for a penalty that starts at ``penalty_min`` and doubles on
  every repeat up to ``penalty_max``; it is forgotten after ``penalty_max`` of good
  behaviour. Sources in ``exempt_networks`` are never penalised (the caps still apply).

IPv6 sources are grouped by /64, as one host usually owns a whole /64.
Refusals are logged through a rate limiter, so a scan cannot flood the journal.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from gateway.config import TunnelConfig
from gateway.durations import format_duration

log = logging.getLogger("gateway.tunnel")

MAX_TRACKED_SOURCES = 65536  # bounds the penalty table's memory under a spoofed-source flood


@dataclass
class _Penalty:
    strikes: int
    until: float  # monotonic
    last_strike: float


def source_key(address: str) -> str:
    """The unit a penalty applies to: the IPv4 address, or the IPv6 /64."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class Guard:
    def __init__(self, config: TunnelConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.exempt = [ipaddress.ip_network(n, strict=False) for n in config.exempt_networks]
        self.unauthenticated = 0
        self.by_source: Counter[str] = Counter()
        self.penalties: dict[str, _Penalty] = {}
        self.refusals = RateLimitedLog(log)

    def is_exempt(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.exempt)

    def admit(self, address: str) -> str | None:
        """Count a new connection from ``address``; the reason to refuse it, or None."""
        key = source_key(address)
        now = self.clock()
        penalty = self.penalties.get(key)
        if penalty and penalty.until > now:
            return f"penalised for {format_duration(penalty.until - now)} more (failed logins)"
        if self.unauthenticated >= self.config.max_unauthenticated:
            return (
                f"{self.unauthenticated} connections are already waiting to authenticate "
                f"(tunnel.max_unauthenticated={self.config.max_unauthenticated})"
            )
        if self.by_source[key] >= self.config.max_unauthenticated_per_source:
            return (
                f"{self.by_source[key]} connections from this source are already waiting to "
                "authenticate (tunnel.max_unauthenticated_per_source="
                f"{self.config.max_unauthenticated_per_source})"
            )
        self.unauthenticated += 1
        self.by_source[key] += 1
        return None

    def authenticated(self, address: str) -> None:
        """An admitted connection logged in: it no longer counts against the caps."""
        self._release(source_key(address))
        self.penalties.pop(source_key(address), None)

    def failed(self, address: str, why: str) -> None:
        """An admitted connection ended without logging in: release it, penalise its source."""
        key = source_key(address)
        self._release(key)
        if self.is_exempt(address) or self.config.penalty_min <= 0:
            return
        now = self.clock()
        previous = self.penalties.get(key)
        strikes = 1
        if previous and now - max(previous.until, previous.last_strike) < self.config.penalty_max:
            strikes = previous.strikes + 1
        duration = min(self.config.penalty_min * 2 ** min(strikes - 1, 30), self.config.penalty_max)
        self.penalties[key] = _Penalty(strikes=strikes, until=now + duration, last_strike=now)
        self.refusals.log(
            f"{address}: {why}; refusing this source for {format_duration(duration)}"
            + (f" (repeat {strikes})" if strikes > 1 else "")
        )
        if len(self.penalties) > MAX_TRACKED_SOURCES:
            self._prune(now)

    def _release(self, key: str) -> None:
        if self.by_source[key] > 0:
            self.unauthenticated = max(0, self.unauthenticated - 1)
            self.by_source[key] -= 1
            if self.by_source[key] == 0:
                del self.by_source[key]

    def _prune(self, now: float) -> None:
        forget_after = self.config.penalty_max
        for key, penalty in list(self.penalties.items()):
            if now - max(penalty.until, penalty.last_strike) >= forget_after:
                del self.penalties[key]
        # Still too many (a flood of distinct sources): drop those expiring soonest.
        excess = len(self.penalties) - MAX_TRACKED_SOURCES
        if excess > 0:
            for key, _ in sorted(self.penalties.items(), key=lambda kv: kv[1].until)[:excess]:
                del self.penalties[key]


class RateLimitedLog:
    """At most ``burst`` lines per ``period`` seconds, then one line counting the rest."""

    def __init__(
        self,
        logger: logging.Logger,
        burst: int = 10,
        period: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.burst = burst
        self.period = period
        self.clock = clock
        self.window_start = -float("inf")
        self.count = 0
        self.suppressed = 0

    def log(self, message: str, level: int = logging.WARNING) -> bool:
        now = self.clock()
        if now - self.window_start >= self.period:
            if self.suppressed:
                self.logger.log(
                    level,
                    "%d more refusals were not logged in the last %s",
                    self.suppressed,
                    format_duration(now - self.window_start),
                )
            self.window_start, self.count, self.suppressed = now, 0, 0
        if self.count >= self.burst:
            self.suppressed += 1
            return False
        self.count += 1
        self.logger.log(level, "%s", message)
        return True
