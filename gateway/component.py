"""What a component is, and what it gets from the daemon."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.config import Config
from gateway.paths import Paths
from gateway.state import Command, Health, State


@dataclass
class Context:
    """A component's view of the daemon: its config, its directories, and the State."""

    name: str
    config: Config
    paths: Paths
    state: State

    def progress(self) -> None:
        """Prove to the watchdog that this component is not wedged; thread-safe."""
        self.state.progress(self.name)

    def health(self, health: Health, message: str, **details: Any) -> None:
        self.state.set_health(self.name, health, message, **details)
        self.progress()

    async def sleep(self, seconds: float) -> None:
        """Sleep, counting as progress on both sides of the nap."""
        self.progress()
        await asyncio.sleep(seconds)
        self.progress()

    async def next_command(self, timeout: float | None = None) -> Command | None:
        """The next command posted to this component, or None after ``timeout``."""
        queue = self.state.queue(self.name)
        self.progress()
        try:
            return await asyncio.wait_for(queue.get(), timeout)
        except asyncio.TimeoutError:
            return None
        finally:
            self.progress()


class Component(Protocol):
    """Runs until cancelled. Raising means "crashed": the supervisor restarts it."""

    async def run(self, ctx: Context) -> None: ...


@dataclass(frozen=True)
class ComponentSpec:
    """How the daemon builds one component from the config.

    ``relevant`` picks the part of the config the component depends on: a reload restarts
    the component only when that part changed.
    """

    name: str
    enabled: Callable[[Config], bool]
    relevant: Callable[[Config], object]
    factory: Callable[[], Component]
