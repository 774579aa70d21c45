"""The one place where components publish what they know, and where everybody reads it.

Components never call each other: the tunnel says "session colab: tunnel up", the browser
says "runtime connected", the healer reads both and posts a command. Updates may come from
any thread (Selenium runs in its own); waiters on the event loop are woken safely.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from gateway.durations import format_duration

_MISSING = object()


class Health(str, Enum):
    STARTING = "starting"
    OK = "ok"
    DEGRADED = "degraded"  # running, but can't do all of its job; the message says why
    FAILED = "failed"  # crashed or wedged; the supervisor restarts it
    STOPPED = "stopped"


@dataclass
class ComponentStatus:
    name: str
    health: Health = Health.STARTING
    message: str = "starting"
    since: float = field(default_factory=time.time)  # wall clock of the last health change
    progress_at: float = field(default_factory=time.monotonic)
    brief: str = ""  # a few words for the STATUS line when all is well
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class TunnelFacts:
    """Published by the tunnel endpoint for one session."""

    up: bool = False
    since: float | None = None  # wall clock of the last up/down change
    peer: str | None = None
    forwards: list[int] = field(default_factory=list)  # local ports bound on 127.0.0.1
    hostkey_fingerprint: str | None = None  # of the Colab VM's sshd, as registered
    connections: int = 0


@dataclass
class RuntimeFacts:
    """Published by the browser keep-alive for one session."""

    # unknown | loading | signed_out | connecting | connected | disconnected | dialog |
    # gpu_limit | too_many_sessions | recaptcha | needs_human | load_failed | paused
    state: str = "unknown"
    gpu: bool | None = None
    since: float | None = None
    vm_id: str | None = None  # changes when Colab hands out a fresh VM
    message: str = ""
    screenshot: str | None = None
    last_rerun: float | None = None


@dataclass
class SessionState:
    name: str
    tunnel: TunnelFacts = field(default_factory=TunnelFacts)
    runtime: RuntimeFacts = field(default_factory=RuntimeFacts)


@dataclass(frozen=True)
class Command:
    """A request from the healer (or the CLI) to one component."""

    name: str
    session: str | None = None
    args: dict[str, Any] = field(default_factory=dict)


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

    # -- wiring --------------------------------------------------------------------------------

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to the event loop whose coroutines wait for changes."""
        self._loop = loop
        self._changed = asyncio.Event()

    def _bump(self) -> None:
        self.version += 1
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake()
        else:
            loop.call_soon_threadsafe(self._wake)

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
        # every cycle must not keep the daemon busy.
        with self._lock:
            status = self.component(name)
            changed = status.health != health or status.message != message
            if changed:
                status.since = time.time()
                status.health = health
                status.message = message
            if brief is not None and brief != status.brief:
                status.brief = brief
                changed = True
            if any(status.details.get(k, _MISSING) != v for k, v in details.items()):
                status.details.update(details)
                changed = True
            if changed:
                self._bump()

    def set_details(self, name: str, **details: Any) -> None:
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
            if "state" in facts and facts["state"] != runtime.state:
                runtime.since = time.time()
            if _assign(runtime, facts):
                self._bump()

    def drop_sessions_except(self, names: set[str]) -> None:
        with self._mutating():
            for name in list(self.sessions):
                if name not in names:
                    del self.sessions[name]

    # -- commands ------------------------------------------------------------------------------

    def queue(self, target: str) -> asyncio.Queue[Command]:
        with self._lock:
            if target not in self._queues:
                self._queues[target] = asyncio.Queue()
            return self._queues[target]

    def post(self, target: str, command: Command) -> None:
        """Ask component ``target`` to do something; safe from any thread."""
        queue = self.queue(target)
        loop = self._loop
        if loop is None:
            queue.put_nowait(command)
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            queue.put_nowait(command)
        else:
            loop.call_soon_threadsafe(queue.put_nowait, command)

    # -- reading -------------------------------------------------------------------------------

    def overall(self) -> Health:
        with self._lock:
            healths = {c.health for c in self.components.values()}
        for worst in (Health.FAILED, Health.DEGRADED, Health.STARTING):
            if worst in healths:
                return worst
        return Health.OK

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "health": self.overall().value,
                "summary": self.summary(),
                "started_at": self.started_at,
                "now": time.time(),
                "components": {
                    name: {
                        "health": c.health.value,
                        "message": c.message,
                        "since": c.since,
                        "brief": c.brief,
                        "details": _jsonable(c.details),
                    }
                    for name, c in sorted(self.components.items())
                },
                "sessions": {
                    name: _jsonable(dataclasses.asdict(s)) for name, s in self.sessions.items()
                },
            }

    def summary(self, now: float | None = None) -> str:
        """The one line ``systemctl status`` shows: what works, and what to do if not."""
        now = time.time() if now is None else now
        with self._lock:
            parts = [self._session_line(s, now) for s in self.sessions.values()]
            for status in sorted(self.components.values(), key=lambda c: c.name):
                if status.health in (Health.OK, Health.STOPPED):
                    if status.brief:
                        parts.append(status.brief)
                elif status.health == Health.STARTING:
                    parts.append(f"{status.name} starting")
                else:
                    parts.append(f"{status.name} {status.health.value}: {status.message}")
        return " · ".join(p for p in parts if p) or "no components enabled"

    def _session_line(self, session: SessionState, now: float) -> str:
        tunnel = session.tunnel
        bits = []
        if "tunnel" in self.components:
            if tunnel.up and tunnel.since:
                bits.append(f"tunnel up {format_duration(now - tunnel.since)}")
            elif tunnel.since:
                bits.append(f"tunnel down {format_duration(now - tunnel.since)}")
            else:
                bits.append("tunnel waiting for Colab")
        if "browser" in self.components:
            runtime = session.runtime
            gpu = " (GPU)" if runtime.gpu else ""
            bits.append(f"runtime {runtime.state.replace('_', ' ')}{gpu}")
        if not bits:
            return ""
        return f"{session.name}: " + " · ".join(bits)


def _assign(target: Any, facts: dict[str, Any]) -> bool:
    """Set the fields in ``facts`` on ``target``; True if any value changed."""
    changed = False
    for key, value in facts.items():
        if not hasattr(target, key):
            raise AttributeError(f"{type(target).__name__} has no field {key!r}")
        if getattr(target, key) != value:
            setattr(target, key, value)
            changed = True
    return changed


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
