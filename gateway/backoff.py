"""Waiting longer after each failure in a row: the one way the gateway backs off.

The n-th failure in a row waits ``first * factor**(n-1)``, at most ``ceiling``. Jitter
spreads out retries of things that failed together (AWS Architecture Blog, "Exponential
Backoff And Jitter", names the two kinds):

- ``"full"``: anywhere in ``[0, d]``: the least load, but a retry may come at once;
- ``"equal"``: half fixed, half random, ``[d/2, d]``: never hammering, never in lockstep;
- ``"none"``: exactly ``d``, where nothing else retries at the same moment.

The clock and the random source are injected, so that a test checks exact waits without
waiting them out.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Literal

Jitter = Literal["none", "full", "equal"]

_MAX_EXPONENT = 1000  # 2.0**1024 overflows; any real ceiling is reached long before


class Backoff:
    def __init__(
        self,
        first: float,
        ceiling: float,
        *,
        factor: float = 2.0,
        jitter: Jitter = "none",
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.first = first
        self.ceiling = ceiling  # may change between failures (a reloaded config)
        self.factor = factor
        self.jitter = jitter
        self.clock = clock
        self.rng = rng
        self.failures = 0  # in a row, since the last reset()
        self.not_before: float | None = None  # the clock's time the last wait ends

    def delay(self, failures: int) -> float:
        """The wait after ``failures`` failures in a row, before jitter (0 for none)."""
        if failures <= 0:
            return 0.0
        exponent = min(failures - 1, _MAX_EXPONENT)
        return float(min(self.first * self.factor**exponent, self.ceiling))

    def jittered(self, delay: float) -> float:
        if self.jitter == "full":
            return delay * self.rng()
        if self.jitter == "equal":
            return delay * (0.5 + 0.5 * self.rng())
        return delay

    def wait(self, failures: int) -> float:
        """The jittered wait after ``failures`` failures in a row (state kept by the caller)."""
        return self.jittered(self.delay(failures))

    @property
    def upcoming(self) -> float:
        """What the next failure would wait, before jitter."""
        return self.delay(self.failures + 1)

    def failure(self) -> float:
        """Count one more failure; return how long to wait before the next try."""
        self.failures += 1
        wait = self.wait(self.failures)
        self.not_before = self.clock() + wait
        return wait

    def reset(self) -> None:
        """It worked: the next failure waits ``first`` again."""
        self.failures = 0
        self.not_before = None

    def remaining(self) -> float:
        """Seconds until the last failure's wait is over (0 if it is, or none is running)."""
        if self.not_before is None:
            return 0.0
        return max(0.0, self.not_before - self.clock())
