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
from gateway.vocabulary import Health, RerunBootstrap, RuntimeState

CHECK_EVERY = 5.0


class Healer:
    def __init__(self) -> None:
        # Per session: when the last re-run was asked for, and for which VM.
        self._asked: dict[str, tuple[float, str | None]] = {}
        # Per session: the last VM that dialed in (its tunnel came up).
        self._vm_dialed: dict[str, str | None] = {}
        self._next_due: float | None = None  # wall clock of the next time-based decision

    async def run(self, ctx: Context) -> None:
        version = -1
        while True:
            now = time.time()
            self.check(ctx, now)
            ctx.progress()
            wait = CHECK_EVERY
            if self._next_due is not None:
                wait = min(wait, max(0.05, self._next_due - now))
            version = await ctx.state.wait_changed(version, timeout=wait)

    def check(self, ctx: Context, now: float) -> None:
        config = ctx.config
        self._next_due = None
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
        if runtime.state != RuntimeState.CONNECTED:
            return
        if tunnel.up:
            self._vm_dialed[name] = runtime.vm_id
            return
        rerun_after = ctx.config.browser.rerun_after
        asked_at, asked_vm = self._asked.get(name, (float("-inf"), None))
        reason = None
        if runtime.vm_id and runtime.vm_id not in (self._vm_dialed.get(name), asked_vm):
            # A VM that has neither dialed in nor been bootstrapped yet: nothing on it runs
            # the tunnel, so waiting helps nobody. (Real Colab pages may not reveal a VM id;
            # then the rule below covers it.)
            known = self._vm_dialed.get(name) or asked_vm
            reason = "Colab assigned a new VM" if known else "the runtime has no tunnel yet"
        else:
            # Down since the later of: the tunnel dropped, the runtime (re)connected; and
            # never again before the last request had a chance to bring the tunnel back.
            down_since = max(tunnel.since or 0.0, runtime.since or now)
            due = max(down_since, asked_at) + rerun_after
            if now < due:
                self._next_due = due if self._next_due is None else min(self._next_due, due)
                return
            reason = (
                f"tunnel down for {format_duration(now - down_since)} while the runtime is "
                "connected"
            )
        self._asked[name] = (now, runtime.vm_id)
        ctx.state.post(RerunBootstrap(session=name, reason=reason))
