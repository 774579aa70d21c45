"""The daemon component ``ddns``: runs the DDNS cycle (gateway/ddns/updater.py) in a thread
and publishes its outcome into the State."""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.component import Context
from gateway.ddns.outcomes import LABEL
from gateway.ddns.store import Store
from gateway.ddns.updater import CYCLE_LIMIT, Updater

log = logging.getLogger("gateway.ddns")


class DdnsComponent:
    """Runs ``Updater.cycle`` in a thread and publishes its outcome into the State."""

    async def run(self, ctx: Context) -> None:
        config = ctx.config.ddns
        store = Store(ctx.paths.ddns_state)
        updater = await asyncio.to_thread(lambda: Updater(config, store, counters=ctx.state))
        log.info(
            "updating %s via %s (%s), User-Agent %r",
            config.hostname,
            config.provider,
            " and ".join(LABEL[f] for f in updater.families),
            updater.http.agent,
        )
        try:
            while True:
                await self._cycle(ctx, updater)
                self._publish(ctx, updater)
                delay = max(1.0, updater.next_wake() - time.time())
                # Sleep in slices: ctx.sleep counts as progress for the watchdog.
                while delay > 0:
                    step = min(delay, 20.0)
                    await ctx.sleep(step)
                    delay -= step
        finally:
            updater.close()

    async def _cycle(self, ctx: Context, updater: Updater) -> None:
        task = asyncio.ensure_future(asyncio.to_thread(updater.cycle))
        # If we are cancelled mid-cycle the thread still ends (every request has a
        # timeout); its result, or error, is then nobody's business.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        started = time.monotonic()
        while not task.done():
            await asyncio.wait({task}, timeout=10)
            # Requests have timeouts, so a cycle ends; one that does not is wedged, and the
            # watchdog should see it.
            if time.monotonic() - started < CYCLE_LIMIT:
                ctx.progress()
        task.result()

    def _publish(self, ctx: Context, updater: Updater) -> None:
        health, message, brief = updater.health()
        ctx.state.set_health(
            ctx.name, health, message, brief=brief, records=updater.record_details()
        )
