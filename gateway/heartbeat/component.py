"""The ``heartbeat`` component: pings ``healthcheck.url`` (healthchecks.io or an Uptime
Kuma push URL) with ``/start`` at startup, then every ``healthcheck.every`` a success
while every other component is healthy, or ``/fail`` with a one-line reason when not.

A flip between healthy and not is pinged at once; the reason is redacted like the logs.
"""

from __future__ import annotations

import logging
import time

from gateway.component import Context
from gateway.durations import format_duration
from gateway.heartbeat.pinger import Ping, Pinger
from gateway.secrets import redact, register_secret
from gateway.snapshot import Snapshot
from gateway.untrusted import untrusted
from gateway.vocabulary import Health

log = logging.getLogger("gateway.heartbeat")

REASON_MAX = 500  # characters: healthchecks.io shows the body, one line is enough


def verdict(snapshot: Snapshot, own_name: str) -> Ping:
    """Success, or a fail naming each component that is not ok and why, in one line."""
    unwell = [
        f"{name} {c.health}: {c.message}"
        for name, c in snapshot.components.items()
        if name != own_name and c.health != Health.OK
    ]
    if not unwell:
        return Ping("success")
    # Messages quote providers, the VM and the page: the monitor's web page and its
    # e-mails show the reason, so it is escaped (untrusted) and bounded, and redacted
    # before the cut, which could otherwise leave the head of a secret.
    return Ping("fail", untrusted(redact("; ".join(unwell)), REASON_MAX))


class HeartbeatComponent:
    def __init__(self) -> None:
        self._last_problem: str | None = None
        # Set when the component stops: a ping still in flight then reports to nobody,
        # instead of bringing a removed component back into the State.
        self._stopped = False

    async def run(self, ctx: Context) -> None:
        config = ctx.config.healthcheck
        register_secret(config.url)  # whoever has the URL can ping: keep it out of logs

        def reported(ping: Ping, problem: str | None) -> None:  # the pinger's thread
            if self._stopped:
                return
            if problem and problem != self._last_problem:
                log.warning("heartbeat %s ping: %s", ping.kind, problem)
            self._last_problem = problem
            if problem:
                ctx.state.set_health(ctx.name, Health.DEGRADED, f"last ping failed: {problem}")
            else:
                ctx.state.set_health(ctx.name, Health.OK, every_text, brief="")

        pinger = Pinger(config.url, config.timeout, reported)
        every_text = f"pinging {pinger.host} every {format_duration(config.every)}"
        ctx.health(Health.OK, every_text, brief="")
        pinger.send(Ping("start"))
        try:
            version = -1
            last: Ping | None = None
            next_at = time.monotonic() + config.every
            while True:
                now = time.monotonic()
                current = verdict(ctx.state.view(), ctx.name)
                flipped = last is not None and (last.kind == "success") != (
                    current.kind == "success"
                )
                if now >= next_at or flipped:
                    pinger.send(current)
                    next_at = now + config.every
                    last = current
                elif last is None:
                    last = current  # the start ping stands for it until the first beat
                ctx.progress()
                wait = min(max(0.05, next_at - time.monotonic()), 20.0)
                version = await ctx.state.wait_changed(version, timeout=wait)
        finally:
            self._stopped = True
            pinger.close()
