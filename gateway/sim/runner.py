"""Runs the real ``browser`` component (Chromium + chromedriver) against a SimColab page.

Used by the tests, the benchmark and the demo: the component runs exactly as under the
daemon (its own event loop in a background thread, a State, a Context), only the config
is built directly, so that tests may use values below the loader's limits (a 6 s reload).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from gateway.browser.component import BrowserKeeper
from gateway.browser.keepalive import Worker
from gateway.component import Context
from gateway.config import BrowserConfig, Config, SessionConfig
from gateway.paths import Paths
from gateway.sim import SimColab
from gateway.state import State
from gateway.vocabulary import Command, RuntimeFacts


class BrowserRunner:
    def __init__(
        self,
        tmp: Path,
        sim: SimColab,
        *,
        more_sessions: dict[str, SimColab] | None = None,
        **browser: Any,
    ) -> None:
        """Session ``colab`` shows ``sim``; ``more_sessions`` adds sessions (name → page)."""
        self.sim = sim
        pages = {"colab": sim, **(more_sessions or {})}
        self.config = Config(
            sessions=[SessionConfig(name=n, notebook_url=p.url) for n, p in pages.items()],
            browser=BrowserConfig(**browser),
        )
        self.paths = Paths(
            config=tmp / "config.yaml", state_dir=tmp / "state", runtime_dir=tmp / "run"
        )
        self.paths.ensure()
        self.state = State()
        self.loop = asyncio.new_event_loop()
        self.state.attach(self.loop)
        self.ctx = Context("browser", self.config, self.paths, self.state)
        self.keeper = BrowserKeeper()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.task: Future[None] = asyncio.run_coroutine_threadsafe(
            self.keeper.run(self.ctx), self.loop
        )

    @property
    def runtime(self) -> RuntimeFacts:
        return self.state.session("colab").runtime

    def runtime_of(self, session: str) -> RuntimeFacts:
        return self.state.session(session).runtime

    def health(self) -> tuple[str, str]:
        status = self.state.component("browser")
        return status.health.value, status.message

    def wait(
        self, predicate: Callable[[BrowserRunner], Any], timeout: float = 15, what: str = ""
    ) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.task.done():
                self.task.result()  # raises the component's crash
                raise AssertionError("the browser component stopped")
            value = predicate(self)
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(
            f"{what or 'condition'} not met in {timeout}s: runtime={self.runtime} "
            f"health={self.health()}"
        )

    def wait_state(self, state: str, timeout: float = 15) -> RuntimeFacts:
        self.wait(lambda h: h.runtime.state == state, timeout, f"runtime state {state!r}")
        return self.runtime

    def post(self, command: Command) -> None:
        self.state.post(command)

    def browser_pids(self) -> list[int]:
        worker_browser = self.worker().browser
        return worker_browser.pids() if worker_browser else []

    def worker(self) -> Worker:
        worker = self.keeper.worker
        if worker is None:
            raise AssertionError("the browser component has not started")
        return worker

    def stop(self) -> None:
        async def drain() -> list[str]:
            """Cancel every task; the ones still running after 30 s, with where they wait."""
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            done, pending = await asyncio.wait(tasks, timeout=30) if tasks else (set(), set())
            for task in done:  # retrieved, as gather(return_exceptions=True) did
                if not task.cancelled():
                    task.exception()
            return [f"{t.get_name()} at {t.get_stack(limit=3)}" for t in pending]

        stuck = asyncio.run_coroutine_threadsafe(drain(), self.loop).result(timeout=40)
        # A component that does not end within the daemon's budget on cancellation is a bug
        # worth its own message, not a bare TimeoutError from the fixture's teardown.
        assert not stuck, f"tasks still running 30 s after cancellation: {stuck}"
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        self.loop.close()
