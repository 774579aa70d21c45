"""The guard on its own: MaxStartups-style random early drop, the places reserved for
sources that logged in before (and their file), and the penalty table's cost at its cap."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
from helpers import FakeClock
from helpers.tunnel import tunnel_config

from gateway.config import ConfigError
from gateway.tunnel.guard import MAX_TRACKED_SOURCES, Guard
from gateway.tunnel.known_sources import KnownSources


def _hold(guard: Guard, count: int, first: int = 1) -> None:
    """``count`` unauthenticated connections from distinct strangers, all admitted."""
    for i in range(first, first + count):
        assert guard.admit(f"198.51.100.{i}") is None


# -- random early drop -----------------------------------------------------------------------


class _Never(random.Random):
    """Never drops at random (its draw is never below a percentage under 100)."""

    def randrange(self, *args: object, **kwargs: object) -> int:  # type: ignore[override]
        return 99


def _drop_fraction(n_waiting: int, tries: int = 4000) -> float:
    """How often a new stranger is dropped while ``n_waiting`` strangers wait (10:30:20)."""
    config = tunnel_config(
        "max_unauthenticated: 20\nrandom_drop_start: 10\nrandom_drop_rate: 30\n"
        "exempt_networks: [203.0.113.0/24]"
    )
    guard = Guard(config, rng=_Never())
    _hold(guard, n_waiting)
    guard.rng = random.Random(1)
    dropped = 0
    for _ in range(tries):
        if guard.admit("203.0.113.1") is None:
            guard.failed("203.0.113.1", "test")  # back to n_waiting, and exempt: no penalty
        else:
            dropped += 1
    return dropped / tries


def test_random_early_drop_follows_openssh_max_startups() -> None:
    # sshd.c should_drop_connection(): below start never, at full always, in between
    # rate% at start rising linearly: p = rate + (100 - rate) * (n - start) / (full - start).
    assert _drop_fraction(0) == 0
    assert _drop_fraction(9) == 0
    assert _drop_fraction(10) == pytest.approx(0.30, abs=0.04)
    assert _drop_fraction(15) == pytest.approx(0.65, abs=0.04)
    assert _drop_fraction(19) == pytest.approx(0.93, abs=0.03)
    assert _drop_fraction(20) == 1.0


def test_random_drop_refusals_name_the_settings() -> None:
    guard = Guard(tunnel_config("max_unauthenticated: 4\nrandom_drop_start: 2"), rng=_Never())
    _hold(guard, 4)
    assert "tunnel.max_unauthenticated=4" in (guard.admit("203.0.113.1") or "")
    guard = Guard(
        tunnel_config("max_unauthenticated: 4\nrandom_drop_start: 2\nrandom_drop_rate: 100")
    )
    _hold(guard, 2)
    assert "tunnel.random_drop_start=2" in (guard.admit("203.0.113.1") or "")


def test_random_drop_settings_are_validated() -> None:
    with pytest.raises(ConfigError) as err:
        tunnel_config("max_unauthenticated: 5\nrandom_drop_start: 8")
    assert "random_drop_start" in str(err.value) and "8" in str(err.value)
    with pytest.raises(ConfigError) as err:
        tunnel_config("random_drop_rate: 0")
    assert "random_drop_rate" in str(err.value)
    # The default start is half the cap, whatever the cap.
    assert tunnel_config("max_unauthenticated: 3").drop_start == 1
    assert tunnel_config().drop_start == 5


# -- places reserved for sources that logged in before ---------------------------------------


def test_a_source_that_logged_in_before_gets_a_reserved_place_when_strangers_hold_the_cap(
    tmp_path: Path,
) -> None:
    config = tunnel_config(
        "max_unauthenticated: 4\nreserved_for_known: 2\nmax_unauthenticated_per_source: 3\n"
        "exempt_networks: [192.0.2.0/24]"
    )
    known = KnownSources(tmp_path / "sources.json", limit=8)
    guard = Guard(config, known=known, rng=_Never())
    assert guard.admit("192.0.2.7") is None
    guard.authenticated("192.0.2.7")
    _hold(guard, 4)
    assert guard.admit("203.0.113.1") is not None  # strangers: the cap is held
    assert guard.admit("192.0.2.7") is None  # the known source: a reserved place
    assert guard.admit("192.0.2.7") is None
    # The reserve is used up; the known source is now a stranger like the others.
    assert "max_unauthenticated=4" in (guard.admit("192.0.2.7") or "")
    # Releasing a reserved place gives it back to the known source, not to strangers.
    guard.failed("192.0.2.7", "test")
    assert guard.admit("203.0.113.1") is not None
    assert guard.admit("192.0.2.7") is None


def test_known_sources_survive_a_restart_bounded_and_written_atomically(tmp_path: Path) -> None:
    path = tmp_path / "sources.json"
    known = KnownSources(path, limit=3)
    for source in ("192.0.2.1", "192.0.2.2", "2001:db8:1:2::/64", "192.0.2.4"):
        known.remember(source)
    assert path.stat().st_mode & 0o777 == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    again = KnownSources(path, limit=3)
    assert "192.0.2.1" not in again  # the least recently seen went first
    assert all(s in again for s in ("192.0.2.2", "2001:db8:1:2::/64", "192.0.2.4"))
    # Seeing an old one again makes it the newest: it outlives the others now.
    again.remember("192.0.2.2")
    again.remember("192.0.2.5")
    assert "2001:db8:1:2::/64" not in KnownSources(path, limit=3)
    assert "192.0.2.2" in KnownSources(path, limit=3)
    # A lower limit after a restart keeps the newest.
    assert list(KnownSources(path, limit=1).sources) == ["192.0.2.5"]


def test_a_corrupt_or_hostile_known_sources_file_is_ignored_not_fatal(
    tmp_path: Path, caplog
) -> None:
    path = tmp_path / "sources.json"
    path.write_bytes(b"\xff\xfe{not json")
    known = KnownSources(path, limit=8)
    assert len(known.sources) == 0
    assert str(path) in caplog.text and "ignoring it" in caplog.text
    path.write_text(json.dumps({"version": 1, "sources": [{"source": "x" * 500}, 7, "192.0.2.1"]}))
    assert list(KnownSources(path, limit=8).sources) == ["192.0.2.1"]
    known.remember("192.0.2.9")  # and it is replaced by a good file
    assert "192.0.2.9" in KnownSources(path, limit=8)


# -- the penalty table at its cap ----------------------------------------------------------------

BATCH = 300  # failures measured at the cap; bounded so the old O(n log n) code ends (~10 s)


def test_penalty_table_costs_under_1ms_per_failure_at_65536_sources_and_stays_bounded() -> None:
    clock = FakeClock()
    guard = Guard(tunnel_config("exempt_networks: []\nmax_unauthenticated: 1000"), clock)
    guard.refusals.burst = 0  # the benchmark measures the table, not the journal
    for i in range(MAX_TRACKED_SOURCES):
        guard.failed(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", "flood")
        clock.now += 0.0001  # all still penalised: nothing can simply expire
    assert len(guard.penalties) == MAX_TRACKED_SOURCES
    start = time.perf_counter()
    for i in range(BATCH):
        source = f"11.0.{i >> 8 & 255}.{i & 255}"
        assert guard.admit(source) is None
        guard.failed(source, "flood")
        clock.now += 0.0001
    per_failure = (time.perf_counter() - start) / BATCH
    print(f"penalty table at {MAX_TRACKED_SOURCES} sources: {per_failure * 1e6:.1f} µs/failure")
    assert per_failure < 1e-3, f"{per_failure * 1e3:.2f} ms per failure at the cap"
    assert len(guard.penalties) == MAX_TRACKED_SOURCES  # memory bounded
    # The newest failures are the ones kept: the last source is still refused.
    assert "penalised" in (guard.admit(f"11.0.{(BATCH - 1) >> 8}.{(BATCH - 1) & 255}") or "")
