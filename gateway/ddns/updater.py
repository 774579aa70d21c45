"""The DDNS cycle (the daemon component ``ddns``, gateway/ddns/component.py, runs it).

One cycle: detect each due family's address; for providers that are not read back,
compare with the address they last accepted (forcing a refresh every 25 days, as accounts
expire without updates); publish what changed; schedule the next check from the outcome.
A failed detection publishes nothing. ``Updater`` is synchronous and gets its clocks,
randomness and HTTP session injected; the component runs it in a thread.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gateway.backoff import Backoff
from gateway.config import DdnsConfig
from gateway.ddns.addresses import same_address
from gateway.ddns.detect import IF_INET6, Detector
from gateway.ddns.http import Http, user_agent
from gateway.ddns.outcomes import (
    FAMILIES,
    LABEL,
    DetectFailed,
    Failed,
    Family,
    Outcome,
    Published,
    WouldPublish,
)
from gateway.ddns.providers import Provider, make_provider
from gateway.ddns.store import Accepted, Stop, Store, clock_is_synchronised, key
from gateway.durations import format_duration
from gateway.state import Health
from gateway.vocabulary import DDNS_ERRORS, DDNS_PUBLISHED, NO_COUNTERS, Counters

log = logging.getLogger("gateway.ddns")

FORCED_REFRESH = 25 * 86400.0  # No-IP-style accounts expire after 30 days without updates
RETRY_FIRST = 30.0
CLOCK_SKEW = 300.0  # a stored time this far in the future was written by a wrong clock
CYCLE_LIMIT = 600.0  # a cycle is a few requests with timeouts; longer means wedged


@dataclass
class RecordStatus:
    hostname: str
    family: Family
    published: str | None = None
    last_change: float | None = None
    last_check: float | None = None
    next_check: float = 0.0
    last_error: str | None = None
    failures: int = 0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("failures")
        return data


def config_hash(config: DdnsConfig) -> str:
    """What a fatal answer is about: a change to any of it lifts the stop."""
    section: dict[str, Any] = {
        "cloudflare": config.cloudflare,
        "duckdns": config.duckdns,
        "dyndns2": config.dyndns2,
    }
    fields: dict[str, Any] = {
        "provider": config.provider,
        "hostname": config.hostname.lower(),
        "ipv4": config.ipv4,
        "ipv6": config.ipv6,
        "agent": user_agent(config.contact),
    }
    chosen = section.get(config.provider)
    if chosen is not None:
        for name in chosen.__dataclass_fields__:
            value = getattr(chosen, name)
            fields[name] = value.reveal() if hasattr(value, "reveal") else value
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:32]


class Updater:
    def __init__(
        self,
        config: DdnsConfig,
        store: Store,
        *,
        http: Http | None = None,
        detector: Detector | None = None,
        provider: Provider | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        clock_synced: Callable[[], bool] = clock_is_synchronised,
        rng: Callable[[], float] = random.random,
        if_inet6: Path = IF_INET6,
        counters: Counters = NO_COUNTERS,
    ) -> None:
        self.config = config
        self.store = store
        self.counters = counters
        self.http = http or Http(user_agent(config.contact), config.timeout)
        self.detector = detector or Detector.from_config(config.detect, self.http, if_inet6)
        self.provider = provider or make_provider(config, self.http)
        self.clock = clock
        self.monotonic = monotonic
        self.clock_synced = clock_synced
        self.rng = rng
        # Network errors and 5xx: 30 s, doubling per failure in a row up to retry_max.
        self.retry = Backoff(
            RETRY_FIRST,
            config.retry_max,
            jitter="equal",
            clock=monotonic,
            rng=lambda: self.rng(),  # read late: a test may swap the random source
        )
        self.hash = config_hash(config)
        self.target = self.provider.target()
        self.families: tuple[Family, ...] = tuple(
            f for f in FAMILIES if (config.ipv4 if f == "ipv4" else config.ipv6)
        )
        self.records = {f: RecordStatus(config.hostname, f) for f in self.families}
        self._sent_mono: dict[Family, float] = {}
        self._started_mono = monotonic()
        for family, status in self.records.items():
            last = store.last(key(config.hostname, family), self.target)
            if last is not None:
                status.published = last.address
                status.last_change = last.changed_at
                counters.gauge(DDNS_PUBLISHED, last.sent_at, family=family)
        for stop in store.lift_stops_except(self.hash):
            log.info(
                "the configuration changed: updates of %s resume (stopped by %r)",
                stop.host,
                stop.code,
            )

    # -- the cycle -------------------------------------------------------------------------

    def cycle(self, *, force: bool = False, dry_run: bool = False) -> list[str]:
        """Check the families that are due; return what was done, one line each."""
        now = self.clock()
        due = [f for f in self.families if force or self.records[f].next_check <= now]
        if not due:
            return []
        stop = self.store.stop_for(self.hash)
        if stop is not None:
            for family in due:
                status = self.records[family]
                status.last_check, status.last_error = now, stop.message
                status.next_check = now + self.config.check_every
            return [f"stopped: {stop.message}"]
        lines: list[str] = []
        detected: dict[Family, str] = {}
        for family in due:
            status = self.records[family]
            status.last_check = now
            result = self.detector.detect(family)
            if isinstance(result, DetectFailed):
                message = (
                    f"could not detect the public {LABEL[family]} address, so the record is "
                    f"left alone: {result.reason}"
                )
                _log_once(status.last_error, message, logging.WARNING)
                status.last_error = message
                status.next_check = now + self.config.check_every
                self.counters.count(DDNS_ERRORS, kind="detect")
                lines.append(f"{LABEL[family]}: {message}")
                continue
            detected[family] = result.address
            via = " and ".join(result.sources)
            lines.append(f"{LABEL[family]}: detected {result.address} (from {via})")
        if self.provider.reads_back:
            wanted = dict(detected)
        else:
            wanted = {f: a for f, a in detected.items() if self._needs_sending(f, a, now)}
            for family in detected.keys() - wanted.keys():
                status = self.records[family]
                status.last_error, status.failures = None, 0
                status.next_check = now + self.config.check_every
                lines.append(
                    f"{LABEL[family]}: {self.config.hostname} already holds {detected[family]}; "
                    f"nothing sent to {self.provider.name}"
                )
        if not wanted:
            return lines
        known = self._known(detected)
        outcomes = self.provider.publish(wanted, known, dry_run)
        for family, outcome in outcomes.items():
            if family in wanted:
                lines.append(self._apply(family, outcome, now, dry_run))
            elif isinstance(outcome, Published) and not dry_run:
                # Sent along with the other family (dyndns2 myip_list/myipv6, DuckDNS): the
                # provider confirmed it, which counts as a refresh; its status stays as is.
                record_key = key(self.config.hostname, family)
                last = self.store.last(record_key, self.target)
                if last is not None and same_address(last.address, outcome.address):
                    synced = self.clock_synced()
                    refreshed = Accepted(last.address, now, last.changed_at, synced, self.target)
                    self.store.remember(record_key, refreshed)
                    self._sent_mono[family] = self.monotonic()
                    self.counters.gauge(DDNS_PUBLISHED, now, family=family)
        return lines

    def _known(self, detected: dict[Family, str]) -> dict[Family, str]:
        known: dict[Family, str] = {}
        for family in self.families:
            last = self.store.last(key(self.config.hostname, family), self.target)
            address = detected.get(family) or (last.address if last else None)
            if address:
                known[family] = address
        return known

    def _needs_sending(self, family: Family, address: str, now: float) -> bool:
        last = self.store.last(key(self.config.hostname, family), self.target)
        if last is None or not same_address(last.address, address):
            return True
        return self._refresh_due(family, last, now)

    def _refresh_due(self, family: Family, last: Accepted, now: float) -> bool:
        # The monotonic clock is right even when the wall clock is not.
        since = self._sent_mono.get(family, self._started_mono)
        if self.monotonic() - since >= FORCED_REFRESH:
            return True
        if not self.clock_synced():
            return False  # "now" may be 1970 or last shutdown's time: judge later
        if not last.clock_synced or last.sent_at > now + CLOCK_SKEW:
            return True  # its age can't be known: refreshing once sets a trusted time
        return now - last.sent_at >= FORCED_REFRESH

    def _apply(self, family: Family, outcome: Outcome, now: float, dry_run: bool) -> str:
        status = self.records[family]
        label = LABEL[family]
        if isinstance(outcome, WouldPublish):
            status.next_check = now + self.config.check_every
            return f"{label}: {outcome.action} (dry run: nothing sent)"
        if isinstance(outcome, Published):
            record_key = key(self.config.hostname, family)
            last = self.store.last(record_key, self.target)
            if last is not None and same_address(last.address, outcome.address):
                status.last_change = last.changed_at
            elif outcome.changed:
                status.last_change = now
            elif not same_address(status.published, outcome.address):
                status.last_change = None  # it held this before we looked: when is unknown
            status.published = outcome.address
            status.last_error, status.failures = None, 0
            status.next_check = now + self.config.check_every
            self._sent_mono[family] = self.monotonic()
            if not dry_run:
                self.counters.gauge(DDNS_PUBLISHED, now, family=family)
            # A read-back record that held the address already needs no write: the file
            # lives on an SD card, and Cloudflare's records need no refresh.
            held_already = (
                self.provider.reads_back
                and not outcome.changed
                and last is not None
                and same_address(last.address, outcome.address)
            )
            if not dry_run and not held_already:
                synced = self.clock_synced()
                self.store.remember(
                    record_key,
                    Accepted(outcome.address, now, status.last_change, synced, self.target),
                )
            verb = "published" if outcome.changed else "confirmed"
            line = f"{label}: {verb} {self.config.hostname} = {outcome.address} ({outcome.note})"
            log.log(logging.INFO if outcome.changed else logging.DEBUG, "%s", line)
            return line
        return self._failed(status, outcome, now)

    def _failed(self, status: RecordStatus, failed: Failed, now: float) -> str:
        level = logging.ERROR if failed.kind == "fatal" else logging.WARNING
        _log_once(status.last_error, failed.message, level)
        status.last_error = failed.message
        status.failures += 1
        self.counters.count(DDNS_ERRORS, kind=failed.kind)
        if failed.kind == "fatal":
            self.store.add_stop(
                self.hash, Stop(self.config.hostname, failed.code or "fatal", failed.message, now)
            )
            status.next_check = now + self.config.check_every
        elif failed.kind == "wait":
            # At least what the provider asked for, plus up to 10% so retries spread out.
            wait = (failed.wait or RETRY_FIRST) * (1 + 0.1 * self.rng())
            status.next_check = now + wait
        else:
            # Equal jitter: never hammering, never in lockstep.
            status.next_check = now + self.retry.wait(status.failures)
        wait_for = format_duration(status.next_check - now)
        return f"{LABEL[status.family]}: failed: {failed.message} (next try in {wait_for})"

    # -- what the status shows -------------------------------------------------------------

    def next_wake(self) -> float:
        return min((s.next_check for s in self.records.values()), default=self.clock() + 60)

    def health(self) -> tuple[Health, str, str]:
        """Health, a message a person can act on, and the brief for the STATUS line."""
        errors = [s.last_error for s in self.records.values() if s.last_error]
        if errors:
            unique = list(dict.fromkeys(errors))
            return Health.DEGRADED, "; ".join(unique), ""
        if all(s.last_check is None for s in self.records.values()):
            return Health.STARTING, "checking the public address", ""
        addresses = ",".join(s.published or "?" for s in self.records.values())
        brief = f"ddns {self.config.hostname}={addresses}"
        return Health.OK, f"{self.config.hostname} points at {addresses}", brief

    def record_details(self) -> list[dict[str, Any]]:
        return [s.as_dict() for s in self.records.values()]

    def close(self) -> None:
        self.http.close()


def _log_once(previous: str | None, message: str, level: int) -> None:
    """A problem is worth a warning when it starts, not on every retry."""
    log.log(level if message != previous else logging.DEBUG, "%s", message)
