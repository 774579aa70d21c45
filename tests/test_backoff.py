"""Backoff: the waits after failures in a row, with each kind of jitter, on a fake clock."""

from __future__ import annotations

import pytest
from helpers import FakeClock

from gateway.backoff import Backoff


def test_doubles_from_first_up_to_the_ceiling_and_reset_starts_over() -> None:
    backoff = Backoff(2.0, 20.0)
    assert [backoff.failure() for _ in range(6)] == [2.0, 4.0, 8.0, 16.0, 20.0, 20.0]
    assert backoff.failures == 6
    backoff.reset()
    assert backoff.upcoming == 2.0
    assert backoff.failure() == 2.0


def test_delay_is_pure_and_never_overflows() -> None:
    backoff = Backoff(30.0, 3600.0, factor=2.0)
    assert [backoff.delay(n) for n in (0, 1, 2, 3)] == [0.0, 30.0, 60.0, 120.0]
    assert backoff.delay(10_000) == 3600.0
    assert backoff.failures == 0, "delay() counts nothing"


@pytest.mark.parametrize(
    ("jitter", "random_value", "expected"),
    [
        ("none", 0.0, 8.0),
        ("none", 0.99, 8.0),
        # full jitter: anywhere in [0, d]
        ("full", 0.0, 0.0),
        ("full", 0.5, 4.0),
        # equal jitter: half fixed, half random, [d/2, d]
        ("equal", 0.0, 4.0),
        ("equal", 0.5, 6.0),
        ("equal", 1.0, 8.0),
    ],
)
def test_jitter_kinds(jitter: str, random_value: float, expected: float) -> None:
    backoff = Backoff(8.0, 100.0, jitter=jitter, rng=lambda: random_value)  # type: ignore[arg-type]
    assert backoff.failure() == expected


def test_remaining_follows_the_injected_clock() -> None:
    clock = FakeClock()
    backoff = Backoff(5.0, 60.0, clock=clock)
    assert backoff.remaining() == 0.0
    backoff.failure()
    assert backoff.remaining() == 5.0
    clock.now += 3.0
    assert backoff.remaining() == 2.0
    clock.now += 10.0
    assert backoff.remaining() == 0.0


def test_a_lowered_ceiling_applies_to_the_next_failure() -> None:
    backoff = Backoff(1.0, 300.0)
    for _ in range(5):
        backoff.failure()
    backoff.ceiling = 10.0
    assert backoff.failure() == 10.0
