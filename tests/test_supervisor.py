"""The supervisor restarts what crashes, with growing waits, and never goes down itself."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import ClassVar

import pytest
from support import MINIMAL_CONFIG

from gateway import supervisor as supervisor_module
from gateway.component import ComponentSpec, Context
from gateway.config import load_config_text
from gateway.paths import Paths
from gateway.state import Health, State


class _Crasher:
    starts: ClassVar[list[float]] = []

    async def run(self, ctx: Context) -> None:
        _Crasher.starts.append(time.monotonic())
        ctx.health(Health.OK, "up")
        raise RuntimeError("boom")


class _Steady:
    async def run(self, ctx: Context) -> None:
        ctx.health(Health.OK, "steady")
        while True:
            await ctx.sleep(0.05)


def test_crash_is_restarted_with_capped_exponential_backoff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervisor_module, "BACKOFF_FIRST", 0.1)
    _Crasher.starts = []
    config = load_config_text(MINIMAL_CONFIG + "daemon: {restart_backoff_max: 1s}\n").config
    state = State()
    specs = [
        ComponentSpec("crasher", lambda c: True, lambda c: None, _Crasher),
        ComponentSpec("steady", lambda c: True, lambda c: None, _Steady),
    ]

    async def scenario() -> None:
        state.attach(asyncio.get_running_loop())
        sup = supervisor_module.Supervisor(state, Paths(tmp_path, tmp_path, tmp_path), specs)
        sup.apply(config)
        await asyncio.sleep(4.0)
        assert state.components["steady"].health == Health.OK, "a crash elsewhere is contained"
        crasher = state.components["crasher"]
        assert crasher.health == Health.FAILED
        assert crasher.message.startswith("RuntimeError: boom; restarting in")
        assert await sup.stop_all(2) == []

    asyncio.run(scenario())
    gaps = [b - a for a, b in zip(_Crasher.starts, _Crasher.starts[1:], strict=False)]
    # Waits of 0.1, 0.2, 0.4, 0.8, 1, 1 … each with jitter in [50 %, 100 %].
    assert 5 <= len(_Crasher.starts) <= 12, gaps
    assert gaps[0] < 0.3
    assert max(gaps) <= 1.3, "capped at restart_backoff_max"
    assert gaps[3] > gaps[0], "waits grow"


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
        await asyncio.sleep(0.1)
        assert sorted(runs) == ["a", "c"]
        sup.apply(second)
        await asyncio.sleep(0.1)
        assert sorted(runs) == ["a", "a", "b", "c"], "a restarted, b started, c untouched"
        sup.apply(first)
        await asyncio.sleep(0.1)
        assert "b" not in sup.running and "b" not in state.components
        await sup.stop_all(2)

    asyncio.run(scenario())
