"""Which components the daemon runs, and which part of the config each one depends on.

This is the one place that wires components to the daemon; they never import each other.
"""

from __future__ import annotations

from gateway.browser.keepalive import BrowserKeeper
from gateway.component import ComponentSpec
from gateway.healer import Healer


def all_specs() -> list[ComponentSpec]:
    return [
        ComponentSpec(
            name="healer",
            enabled=lambda c: True,
            relevant=lambda c: (c.sessions, c.browser.rerun, c.browser.rerun_after),
            factory=Healer,
        ),
        ComponentSpec(
            name="browser",
            enabled=lambda c: c.browser.enabled and bool(c.sessions),
            relevant=lambda c: (c.sessions, c.browser),
            factory=BrowserKeeper,
        ),
    ]
