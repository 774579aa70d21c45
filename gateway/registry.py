"""Which components the daemon runs, and which part of the config each one depends on.

This is the one place that wires components to the daemon; they never import each other.
"""

from __future__ import annotations

from dataclasses import replace

from gateway.alerts.component import AlertsComponent
from gateway.browser.component import BrowserKeeper
from gateway.component import ComponentSpec
from gateway.config import Config, SessionConfig, SyncConfig
from gateway.ddns.component import DdnsComponent
from gateway.healer.component import Healer
from gateway.heartbeat.component import HeartbeatComponent
from gateway.metrics.component import MetricsComponent
from gateway.sync.component import SyncComponent
from gateway.tmux.component import TmuxKeeper
from gateway.tunnel.component import TunnelComponent
from gateway.vm_stats.component import VmStatsComponent


def _sessions_but_sync(c: Config) -> tuple[SessionConfig, ...]:
    """The sessions as the components other than sync see them: a change of
    ``sessions[].sync`` must not restart the tunnel (dropping the VM's connection) nor
    the browser."""
    return tuple(replace(s, sync=SyncConfig()) for s in c.sessions)


def all_specs() -> list[ComponentSpec]:
    return [
        ComponentSpec(
            name="healer",
            enabled=lambda c: True,
            relevant=lambda c: (_sessions_but_sync(c), c.browser.rerun, c.browser.rerun_after),
            factory=Healer,
        ),
        ComponentSpec(
            name="tunnel",
            enabled=lambda c: c.tunnel.enabled,
            relevant=lambda c: (c.tunnel, _sessions_but_sync(c)),
            factory=TunnelComponent,
        ),
        ComponentSpec(
            name="ddns",
            enabled=lambda c: c.ddns.provider != "none",
            relevant=lambda c: c.ddns,
            factory=DdnsComponent,
        ),
        ComponentSpec(
            name="tmux",
            enabled=lambda c: c.tmux.enabled and bool(c.sessions),
            # Its windows run `colab-gateway shell`, which reads ssh settings itself.
            relevant=lambda c: (c.tmux, tuple(s.name for s in c.sessions)),
            factory=TmuxKeeper,
        ),
        ComponentSpec(
            name="sync",
            enabled=lambda c: c.tunnel.enabled and any(s.sync.enabled for s in c.sessions),
            # It logs into the VMs as ssh.identity through the sessions' forwards.
            relevant=lambda c: (c.sessions, c.sync, c.ssh),
            factory=SyncComponent,
        ),
        ComponentSpec(
            name="vm_stats",
            enabled=lambda c: c.tunnel.enabled and c.vm_stats.enabled and bool(c.sessions),
            # It logs into the VMs as ssh.identity through the sessions' forwards.
            relevant=lambda c: (_sessions_but_sync(c), c.vm_stats, c.ssh),
            factory=VmStatsComponent,
        ),
        ComponentSpec(
            name="browser",
            enabled=lambda c: c.browser.enabled and bool(c.sessions),
            relevant=lambda c: (_sessions_but_sync(c), c.browser),
            factory=BrowserKeeper,
        ),
        ComponentSpec(
            name="metrics",
            enabled=lambda c: c.metrics.enabled,
            relevant=lambda c: c.metrics,
            factory=MetricsComponent,
        ),
        ComponentSpec(
            name="heartbeat",
            enabled=lambda c: bool(c.healthcheck.url),
            relevant=lambda c: c.healthcheck,
            factory=HeartbeatComponent,
        ),
        ComponentSpec(
            name="alerts",
            enabled=lambda c: c.notify.enabled,
            # What the Watcher reads besides the State (on_gpu_limit: wait is a human's job).
            relevant=lambda c: (c.notify, c.browser.on_gpu_limit),
            factory=AlertsComponent,
        ),
    ]
