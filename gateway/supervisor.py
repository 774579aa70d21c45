"""Starts components, restarts the ones that crash (with backoff), stops them all.

The clock, the random source and the wait are injected (as in gateway/ddns/updater.py), so
that a test can check the backoff's exact waits without waiting them out.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from gateway.backoff import Backoff
from gateway.component import ComponentSpec, Context
from gateway.config import Config
from gateway.paths import Paths
from gateway.state import Health, State
from gateway.vocabulary import COMPONENT_RESTARTS

log = logging.getLogger(__name__)

BACKOFF_FIRST = 1.0
HEALTHY_RUN = 60.0  # a run this long resets the backoff: the crash was not a crash loop


@dataclass
class _Running:
    spec: ComponentSpec
    ctx: Context
    task: asyncio.Task[None]
    relevant: object
    restarts: int = 0
    waiting_since: float | None = field(default=None)  # monotonic, while in backoff


class Supervisor:
    def __init__(
        self,
        state: State,
        paths: Paths,
        specs: list[ComponentSpec],
        *,
        monotonic: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.state = state
        self.paths = paths
        self.specs = specs
        self.monotonic = monotonic
        self.rng = rng
        self.sleep = sleep
        # Hard references to the component tasks: asyncio keeps only weak ones.
        self.running: dict[str, _Running] = {}
        self.backoff_max = 300.0

    def apply(self, config: Config) -> None:
        """Start, stop or restart components so that they match ``config``."""
        self.backoff_max = config.daemon.restart_backoff_max
        for spec in self.specs:
            enabled = spec.enabled(config)
            current = self.running.get(spec.name)
            if current and not enabled:
                log.info("%s: disabled in the config, stopping", spec.name)
                self._stop_nowait(current)
            elif current and spec.relevant(config) != current.relevant:
                log.info("%s: its settings changed, restarting", spec.name)
                self._stop_nowait(current)
                self._start(spec, config)
            elif current:
                current.ctx.config = config
            elif enabled:
                self._start(spec, config)

    def _start(self, spec: ComponentSpec, config: Config) -> None:
        ctx = Context(spec.name, config, self.paths, self.state)
        self.state.set_health(spec.name, Health.STARTING, "starting")
        task = asyncio.create_task(self._keep_running(spec, ctx), name=f"component:{spec.name}")
        self.running[spec.name] = _Running(spec, ctx, task, spec.relevant(config))

    def _stop_nowait(self, entry: _Running) -> None:
        entry.task.cancel()
        self.running.pop(entry.spec.name, None)
        self.state.remove_component(entry.spec.name)

    async def _keep_running(self, spec: ComponentSpec, ctx: Context) -> None:
        # 1 s after the first crash, doubling up to daemon.restart_backoff_max. Equal jitter
        # (half fixed, half random) keeps components that fail together from retrying in
        # lockstep.
        backoff = Backoff(
            BACKOFF_FIRST,
            self.backoff_max,
            jitter="equal",
            clock=self.monotonic,
            rng=lambda: self.rng(),
        )
        while True:
            started = self.monotonic()
            entry = self.running.get(spec.name)
            if entry:
                entry.waiting_since = None
            try:
                await spec.factory().run(ctx)
                reason = "stopped by itself"
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any crash of a component is survivable by design
                reason = f"{type(exc).__name__}: {exc}"
                log.error("%s crashed: %s", spec.name, reason, exc_info=exc)
            if self.monotonic() - started >= HEALTHY_RUN:
                backoff.reset()
            backoff.ceiling = self.backoff_max  # a reload may have changed it
            wait = backoff.failure()
            self.state.set_health(spec.name, Health.FAILED, f"{reason}; restarting in {wait:.0f}s")
            self.state.count(COMPONENT_RESTARTS, component=spec.name)
            if entry := self.running.get(spec.name):
                entry.restarts += 1
                entry.waiting_since = self.monotonic()
            log.info("%s: restarting in %.1fs", spec.name, wait)
            await self.sleep(wait)

    def stalled(self, limit: float) -> list[str]:
        """Components running but showing no progress for ``limit`` seconds."""
        now = time.monotonic()  # the State's clock, which stamps progress_at
        out = []
        for name, entry in self.running.items():
            if entry.waiting_since is not None:
                continue  # in backoff: the supervisor itself is the one making progress
            progress_at = self.state.component(name).progress_at
            if now - progress_at > limit:
                out.append(name)
        return out

    async def stop_all(self, timeout: float) -> list[str]:
        """Cancel every component; return the names that did not finish within ``timeout``."""
        entries = list(self.running.values())
        self.running.clear()
        for entry in entries:
            entry.task.cancel()
        if not entries:
            return []
        done, pending = await asyncio.wait([e.task for e in entries], timeout=timeout)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.warning("%s raised while stopping: %s", task.get_name(), task.exception())
        return [t.get_name().removeprefix("component:") for t in pending]
