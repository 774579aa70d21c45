"""Who may even start an SSH handshake: what OpenSSH's MaxStartups and PerSourcePenalties do.

asyncssh accepts every TCP connection and lets it take as long as ``login_timeout`` to
authenticate, with no cap on how many do so at once. The endpoint faces the internet, so:

- at most ``max_unauthenticated`` connections of strangers may be unauthenticated at once;
  from ``random_drop_start`` on, a new one is dropped at random, with the probability
  rising from ``random_drop_rate`` % to 100 % at the cap (OpenSSH's MaxStartups
  start:rate:full, same formula as sshd.c's should_drop_connection());
- ``reserved_for_known`` more places are kept for sources that logged in before
  (known_sources.py, remembered across restarts): strangers holding every place cannot
  keep Colab from re-dialling after a drop;
- at most ``max_unauthenticated_per_source`` from one source;
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
import random
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from gateway.backoff import Backoff
from gateway.config import TunnelConfig
from gateway.durations import format_duration
from gateway.tunnel.known_sources import KnownSources

log = logging.getLogger("gateway.tunnel")

MAX_TRACKED_SOURCES = 65536  # bounds the penalty table's memory under a spoofed-source flood
EXPIRE_PER_FAILURE = 8  # forgotten penalties dropped per failure: bounded work per call


@dataclass(slots=True)
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
    def __init__(
        self,
        config: TunnelConfig,
        clock: Callable[[], float] = time.monotonic,
        *,
        known: KnownSources | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        # penalty_min for the first failed login, doubling per repeat up to penalty_max;
        # no jitter: a penalty is a sentence, not a retry.
        self.penalty = Backoff(config.penalty_min, config.penalty_max, clock=clock)
        self.known = known if known is not None else KnownSources(None, config.known_sources_max)
        # The OS's generator, as sshd uses arc4random: a stranger cannot predict the drops.
        self.rng = rng if rng is not None else random.SystemRandom()
        self.exempt = [ipaddress.ip_network(n, strict=False) for n in config.exempt_networks]
        self.unauthenticated = 0  # in total, reserved places included
        self.reserved = 0  # of which in the places reserved for known sources
        self.by_source: Counter[str] = Counter()
        self.reserved_by_source: Counter[str] = Counter()
        # Ordered by last strike, oldest first: evicting and expiring take the front, O(1).
        self.penalties: OrderedDict[str, _Penalty] = OrderedDict()
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
        if self.by_source[key] >= self.config.max_unauthenticated_per_source:
            return (
                f"{self.by_source[key]} connections from this source are already waiting to "
                "authenticate (tunnel.max_unauthenticated_per_source="
                f"{self.config.max_unauthenticated_per_source})"
            )
        if key in self.known and self.reserved < self.config.reserved_for_known:
            self.reserved += 1
            self.reserved_by_source[key] += 1
        else:
            reason = self._should_drop(self.unauthenticated - self.reserved)
            if reason is not None:
                return reason
        self.unauthenticated += 1
        self.by_source[key] += 1
        return None

    def _should_drop(self, waiting: int) -> str | None:
        """sshd.c's should_drop_connection() with ``waiting`` strangers unauthenticated."""
        full, start, rate = (
            self.config.max_unauthenticated,
            self.config.drop_start,
            self.config.random_drop_rate,
        )
        if waiting < start:
            return None
        if waiting >= full:
            return (
                f"{waiting} connections are already waiting to authenticate "
                f"(tunnel.max_unauthenticated={full})"
            )
        percent = rate + (100 - rate) * (waiting - start) // (full - start)
        if self.rng.randrange(100) >= percent:
            return None
        return (
            f"dropped at random ({percent} % now): {waiting} connections are waiting to "
            f"authenticate (tunnel.random_drop_start={start}, "
            f"tunnel.max_unauthenticated={full})"
        )

    def authenticated(self, address: str) -> None:
        """An admitted connection logged in: it no longer counts against the caps, and its
        source is known from now on."""
        key = source_key(address)
        self._release(key)
        self.penalties.pop(key, None)
        self.known.remember(key)

    def failed(self, address: str, why: str) -> None:
        """An admitted connection ended without logging in: release it, penalise its source."""
        key = source_key(address)
        self._release(key)
        if self.is_exempt(address) or self.config.penalty_min <= 0:
            return
        now = self.clock()
        previous = self.penalties.pop(key, None)
        strikes = 1
        if previous and now - max(previous.until, previous.last_strike) < self.config.penalty_max:
            strikes = previous.strikes + 1
        duration = self.penalty.delay(strikes)
        self.penalties[key] = _Penalty(strikes=strikes, until=now + duration, last_strike=now)
        self.refusals.log(
            f"{address}: {why}; refusing this source for {format_duration(duration)}"
            + (f" (repeat {strikes})" if strikes > 1 else "")
        )
        self._expire(now)

    def _release(self, key: str) -> None:
        if self.by_source[key] > 0:
            self.unauthenticated = max(0, self.unauthenticated - 1)
            self.by_source[key] -= 1
            if self.by_source[key] == 0:
                del self.by_source[key]
            if self.reserved_by_source[key] > 0:
                self.reserved = max(0, self.reserved - 1)
                self.reserved_by_source[key] -= 1
            if self.reserved_by_source[key] == 0:
                del self.reserved_by_source[key]

    def _expire(self, now: float) -> None:
        """Forget a few penalties served long ago, then evict the oldest beyond the cap.

        Both look at the front of the table only: O(1) per failure, whatever its size
        (sorting the whole table here cost 57 ms per failure at the cap)."""
        forget_after = self.config.penalty_max
        for _ in range(EXPIRE_PER_FAILURE):
            key, oldest = next(iter(self.penalties.items()))
            if now - max(oldest.until, oldest.last_strike) < forget_after:
                break
            del self.penalties[key]
        # Still too many (a flood of distinct sources): the least recently failed go first.
        while len(self.penalties) > MAX_TRACKED_SOURCES:
            self.penalties.popitem(last=False)


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
