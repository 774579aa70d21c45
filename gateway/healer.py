"""The one place that decides what to do when the facts in the State go wrong.

Other components only report; the healer reads their facts and posts commands. Today it
asks the browser to re-run the bootstrap cell when the runtime is connected but the
session's tunnel has been down for ``browser.rerun_after``, or when Colab handed out a
new VM; and it reports sessions whose config still holds the example's placeholders.
"""

from __future__ import annotations

import time

from gateway.component import Context
from gateway.durations import format_duration
from gateway.state import Command, Health

CHECK_EVERY = 5.0


class Healer:
    def __init__(self) -> None:
        self._asked_at: dict[str, float] = {}
        self._vm_seen: dict[str, str | None] = {}

    async def run(self, ctx: Context) -> None:
        version = -1
        while True:
            self.check(ctx, time.time())
            ctx.progress()
            version = await ctx.state.wait_changed(version, timeout=CHECK_EVERY)

    def check(self, ctx: Context, now: float) -> None:
        config = ctx.config
        problems = [
            f"session {s.name}: notebook_url is still the example's placeholder; paste your "
            "notebook's address into the config"
            for s in config.sessions
            if s.is_placeholder
        ]
        if config.browser.enabled and config.browser.rerun != "never":
            for session in config.sessions:
                self._maybe_rerun(ctx, session.name, now)
        if problems:
            ctx.health(Health.DEGRADED, "; ".join(problems))
        else:
            ctx.health(Health.OK, "watching", brief="")

    def _maybe_rerun(self, ctx: Context, name: str, now: float) -> None:
        facts = ctx.state.session(name)
        runtime, tunnel = facts.runtime, facts.tunnel
        if runtime.state != "connected":
            self._vm_seen[name] = runtime.vm_id
            return
        reason = None
        previous_vm = self._vm_seen.get(name)
        if runtime.vm_id and runtime.vm_id != previous_vm and not tunnel.up:
            # A VM we have not seen dial in: nothing on it runs the tunnel yet. (Real Colab
            # pages may not reveal a VM id; then the rerun_after rule below covers it.)
            reason = "Colab assigned a new VM" if previous_vm else "the runtime has no tunnel yet"
        self._vm_seen[name] = runtime.vm_id
        # Down since the later of: the tunnel dropped, the runtime (re)connected.
        down_for = now - max(tunnel.since or 0.0, runtime.since or now)
        if reason is None and not tunnel.up and down_for >= ctx.config.browser.rerun_after:
            reason = f"tunnel down for {format_duration(down_for)} while the runtime is connected"
        if reason is None:
            return
        # Don't ask again before the last request had a chance to bring the tunnel back.
        last = self._asked_at.get(name, 0.0)
        if now - last < ctx.config.browser.rerun_after:
            return
        self._asked_at[name] = now
        ctx.state.post("browser", Command("rerun", session=name, args={"reason": reason}))
