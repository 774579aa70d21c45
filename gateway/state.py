"""The one place where components publish what they know, and where everybody reads it.

Components never call each other: the tunnel says "session colab: tunnel up", the browser
says "runtime connected", the healer reads both and posts a command. Updates may come from
any thread (Selenium runs in its own); waiters on the event loop are woken safely.
"""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from gateway.snapshot import ComponentView, Snapshot
from gateway.vocabulary import (
    BRIEF_LIMIT,
    MESSAGE_LIMIT,
    Command,
    ComponentStatus,
    Health,
    Measure,
    RerunBootstrap,
    RuntimeFacts,
    RuntimeState,
    SessionState,
    SyncFacts,
    TunnelFacts,
    VmFacts,
    outside_details,
    outside_text,
)

_MISSING = object()

__all__ = [
    "Command",
    "ComponentStatus",
    "Health",
    "RerunBootstrap",
    "RuntimeFacts",
    "RuntimeState",
    "SessionState",
    "State",
    "SyncFacts",
    "TunnelFacts",
    "VmFacts",
]


class State:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.components: dict[str, ComponentStatus] = {}
        self.sessions: dict[str, SessionState] = {}
        self.started_at = time.time()
        self.version = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self._queues: dict[str, asyncio.Queue[Command]] = {}
        self._measures: dict[Measure, dict[tuple[str, ...], float]] = {}

    # -- wiring --------------------------------------------------------------------------------

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to the event loop whose coroutines wait for changes."""
        self._loop = loop
        self._changed = asyncio.Event()

    def _on_loop(self, call: Callable[..., object], *args: object) -> bool:
        """Run ``call(*args)`` on the attached loop, from any thread; False if there is none."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return False
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            call(*args)
        else:
            loop.call_soon_threadsafe(call, *args)
        return True

    def _bump(self) -> None:
        self.version += 1
        self._on_loop(self._wake)

    def wake(self) -> None:
        """Wake every waiter of ``wait_changed`` (a signal handler's way in); any thread."""
        with self._lock:
            self._bump()

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()

    async def wait_changed(self, since_version: int, timeout: float | None = None) -> int:
        """Return once ``version`` differs from ``since_version`` (or on timeout)."""
        assert self._changed is not None, "State.attach() first"
        if self.version != since_version:
            return self.version
        self._changed.clear()
        if self.version != since_version:
            return self.version
        with suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)
        return self.version

    @contextmanager
    def _mutating(self) -> Iterator[None]:
        with self._lock:
            yield
            self._bump()

    # -- components ----------------------------------------------------------------------------

    def component(self, name: str) -> ComponentStatus:
        with self._lock:
            if name not in self.components:
                self.components[name] = ComponentStatus(name)
            return self.components[name]

    def set_health(
        self,
        name: str,
        health: Health,
        message: str,
        *,
        brief: str | None = None,
        **details: Any,
    ) -> None:
        # Only a real change wakes the waiters: a component that re-states its health on
        # every cycle must not keep the daemon busy. Messages quote what the outside said,
        # so they are compared as the State keeps them (escaped, bounded), not as given.
        message = outside_text(message, MESSAGE_LIMIT)
        details = outside_details(details)
        with self._lock:
            status = self.component(name)
            changed = status.health != health or status.message != message
            if changed:
                status.since = time.time()
                status.health = health
                status.message = message
            if brief is not None and outside_text(brief, BRIEF_LIMIT) != status.brief:
                status.brief = brief
                changed = True
            if any(status.details.get(k, _MISSING) != v for k, v in details.items()):
                status.details.update(details)
                changed = True
            if changed:
                self._bump()

    def set_details(self, name: str, **details: Any) -> None:
        details = outside_details(details)
        with self._lock:
            status = self.component(name)
            if any(status.details.get(k, _MISSING) != v for k, v in details.items()):
                status.details.update(details)
                self._bump()

    def progress(self, name: str) -> None:
        """Proof of life for the watchdog; cheap, and no change notification."""
        with self._lock:
            self.component(name).progress_at = time.monotonic()

    def remove_component(self, name: str) -> None:
        with self._mutating():
            self.components.pop(name, None)

    # -- sessions ------------------------------------------------------------------------------

    def session(self, name: str) -> SessionState:
        with self._lock:
            if name not in self.sessions:
                self.sessions[name] = SessionState(name)
            return self.sessions[name]

    def update_tunnel(self, session: str, **facts: Any) -> None:
        with self._lock:
            tunnel = self.session(session).tunnel
            if "up" in facts and facts["up"] != tunnel.up:
                tunnel.since = time.time()
            if _assign(tunnel, facts):
                self._bump()

    def update_runtime(self, session: str, **facts: Any) -> None:
        with self._lock:
            runtime = self.session(session).runtime
            if "state" in facts:
                facts["state"] = RuntimeState(facts["state"])  # ValueError for a made-up one
            if "state" in facts and facts["state"] != runtime.state:
                runtime.since = time.time()
                if facts["state"] == RuntimeState.DIALOG:
                    runtime.dialog_at = runtime.since
            if _assign(runtime, facts):
                self._bump()

    def update_sync(self, session: str, **facts: Any) -> None:
        with self._lock:
            if _assign(self.session(session).sync, facts):
                self._bump()

    def update_vm(self, session: str, **facts: Any) -> None:
        with self._lock:
            if _assign(self.session(session).vm, facts):
                self._bump()

    def drop_sessions_except(self, names: set[str]) -> None:
        with self._mutating():
            for name in list(self.sessions):
                if name not in names:
                    del self.sessions[name]

    # -- counters and gauges (gateway.vocabulary.Counters) --------------------------------------

    def count(self, measure: Measure, n: float = 1, /, **labels: str) -> None:
        """Add ``n`` to a counter; any thread. Wakes nobody: the readers poll."""
        if measure.kind != "counter":
            raise ValueError(f"{measure.name} is a {measure.kind}: use State.gauge")
        key = measure.key(labels)
        with self._lock:
            values = self._measures.setdefault(measure, {})
            values[key] = values.get(key, 0.0) + n

    def gauge(self, measure: Measure, value: float, /, **labels: str) -> None:
        """Set a gauge; any thread. Wakes nobody: the readers poll."""
        if measure.kind != "gauge":
            raise ValueError(f"{measure.name} is a {measure.kind}: use State.count")
        key = measure.key(labels)
        with self._lock:
            self._measures.setdefault(measure, {})[key] = float(value)

    # -- commands ------------------------------------------------------------------------------

    def queue(self, target: str) -> asyncio.Queue[Command]:
        with self._lock:
            if target not in self._queues:
                self._queues[target] = asyncio.Queue()
            return self._queues[target]

    def post(self, command: Command) -> None:
        """Ask the component the command is for (``command.target``); safe from any thread."""
        queue = self.queue(command.target)
        if not self._on_loop(queue.put_nowait, command):
            queue.put_nowait(command)  # no loop yet: nobody can be waiting on the queue

    # -- reading -------------------------------------------------------------------------------

    def view(self, now: float | None = None) -> Snapshot:
        """A typed copy of everything, taken under the lock: safe to read from any thread."""
        with self._lock:
            return Snapshot(
                started_at=self.started_at,
                now=time.time() if now is None else now,
                components={
                    name: ComponentView(
                        name=name,
                        health=c.health,
                        message=c.message,
                        since=c.since,
                        brief=c.brief,
                        details=copy.deepcopy(c.details),
                    )
                    for name, c in sorted(self.components.items())
                },
                sessions={name: copy.deepcopy(s) for name, s in self.sessions.items()},
                measures={m: dict(values) for m, values in self._measures.items()},
            )

    def overall(self) -> Health:
        return self.view().health

    def snapshot(self) -> dict[str, Any]:
        """The JSON form of ``view()``, as the status socket sends it."""
        return self.view().to_json()

    def summary(self, now: float | None = None) -> str:
        """The one line ``systemctl status`` shows: what works, and what to do if not."""
        return self.view(now).summary


def _assign(target: Any, facts: dict[str, Any]) -> bool:
    """Set the fields in ``facts`` on ``target``; True if any value changed.

    Compared after setting: the facts escape and bound outside text as it is set
    (``OutsideTextFields``), so a page that shows the same hostile title on every look is
    no change, and wakes nobody.
    """
    changed = False
    for key, value in facts.items():
        if not hasattr(target, key):
            raise AttributeError(f"{type(target).__name__} has no field {key!r}")
        before = getattr(target, key)
        setattr(target, key, value)
        if getattr(target, key) != before:
            changed = True
    return changed
