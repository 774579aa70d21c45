"""The supervisor restarts what crashes, with growing waits, and never goes down itself."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from pathlib import Path

from helpers import MINIMAL_CONFIG

from gateway import supervisor as supervisor_module
from gateway.component import ComponentSpec, Context
from gateway.config import load_config_text
from gateway.paths import Paths
from gateway.state import Health, State


async def _until(predicate: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Poll ``predicate`` on the event loop until it holds; fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"{what}: not within {timeout}s"
        await asyncio.sleep(0.01)


class _FakeTime:
    """The supervisor's clock and wait: a wait is recorded and passes at once, up to
    ``limit`` waits; the next one lasts until the task is cancelled."""

    def __init__(self, limit: int) -> None:
        self.now = 1000.0
        self.waits: list[float] = []
        self.limit = limit

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        if len(self.waits) > self.limit:
            await asyncio.Event().wait()
        self.now += seconds
        await asyncio.sleep(0)  # still a real await: other tasks run meanwhile


def test_crash_is_restarted_with_capped_exponential_backoff_and_equal_jitter(
    tmp_path: Path,
) -> None:
    fake = _FakeTime(limit=8)
    # The random source alternates between its two ends: equal jitter waits between half
    # the delay (0.0) and all of it (1.0).
    draws = itertools.cycle([0.0, 1.0])
    starts: list[float] = []

    class _Crasher:
        async def run(self, ctx: Context) -> None:
            starts.append(fake.now)
            ctx.health(Health.OK, "up")
            if len(starts) == 6:
                fake.now += supervisor_module.HEALTHY_RUN  # ran long enough to count as healthy
            raise RuntimeError("boom")

    class _Steady:
        async def run(self, ctx: Context) -> None:
            ctx.health(Health.OK, "steady")
            while True:
                await ctx.sleep(0.05)

    config = load_config_text(MINIMAL_CONFIG + "daemon: {restart_backoff_max: 4s}\n").config
    state = State()
    specs = [
        ComponentSpec("crasher", lambda c: True, lambda c: None, _Crasher),
        ComponentSpec("steady", lambda c: True, lambda c: None, _Steady),
    ]

    async def scenario() -> None:
        state.attach(asyncio.get_running_loop())
        sup = supervisor_module.Supervisor(
            state,
            Paths(tmp_path, tmp_path, tmp_path),
            specs,
            monotonic=fake.monotonic,
            rng=lambda: next(draws),
            sleep=fake.sleep,
        )
        sup.apply(config)
        await _until(lambda: len(fake.waits) > 8, "eight restarts, then a wait")
        await _until(lambda: state.components["steady"].health == Health.OK, "steady ok")
        crasher = state.components["crasher"]
        assert crasher.health == Health.FAILED
        assert crasher.message.startswith("RuntimeError: boom; restarting in")
        assert sup.running["crasher"].restarts == 9
        assert await sup.stop_all(2) == []

    asyncio.run(scenario())
    first = supervisor_module.BACKOFF_FIRST
    # Delays 1, 2, 4 (capped by restart_backoff_max: 4 s), 4, 4; times 0.5 or 1.0 by turns.
    # The sixth run lasted HEALTHY_RUN: the delay starts again from the first.
    assert fake.waits[:8] == [
        0.5 * first,
        1.0 * 2 * first,
        0.5 * 4.0,
        1.0 * 4.0,
        0.5 * 4.0,
        1.0 * first,
        0.5 * 2 * first,
        1.0 * 4.0,
    ]
    assert len(starts) == 9


def test_reload_starts_stops_and_restarts_only_what_changed(tmp_path: Path) -> None:
    runs: list[str] = []

    class _Recorder:
        def __init__(self, name: str) -> None:
            self.name = name

        async def run(self, ctx: Context) -> None:
            runs.append(self.name)
            while True:
                await ctx.sleep(1)

    specs = [
        ComponentSpec("a", lambda c: True, lambda c: c.daemon.log_level, lambda: _Recorder("a")),
        ComponentSpec("b", lambda c: c.tunnel.enabled, lambda c: None, lambda: _Recorder("b")),
        ComponentSpec("c", lambda c: True, lambda c: None, lambda: _Recorder("c")),
    ]
    first = load_config_text(MINIMAL_CONFIG).config
    second = load_config_text(
        MINIMAL_CONFIG.replace("tunnel: {enabled: false}", "tunnel: {enabled: true}")
        + "daemon: {log_level: debug}\n"
    ).config
    state = State()

    async def scenario() -> None:
        state.attach(asyncio.get_running_loop())
        sup = supervisor_module.Supervisor(state, Paths(tmp_path, tmp_path, tmp_path), specs)
        sup.apply(first)
        await _until(lambda: sorted(runs) == ["a", "c"], "a and c started")
        old_a, old_c = sup.running["a"].task, sup.running["c"].task

        sup.apply(second)
        # The tasks one apply() creates all take their first step in the same loop pass:
        # once b runs, a restarted c would have run too.
        await _until(lambda: "b" in runs and runs.count("a") == 2, "a restarted, b started")
        assert sorted(runs) == ["a", "a", "b", "c"], "c untouched"
        assert sup.running["c"].task is old_c
        await _until(old_a.done, "the old a to end")
        assert old_a.cancelled()

        old_b = sup.running["b"].task
        sup.apply(first)
        assert "b" not in sup.running and "b" not in state.components
        await _until(old_b.done, "b to stop")
        assert old_b.cancelled()
        assert sup.running["c"].task is old_c
        assert await sup.stop_all(2) == []

    asyncio.run(scenario())
