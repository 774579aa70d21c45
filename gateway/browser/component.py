"""The ``browser`` component: owns the keep-alive thread (gateway/browser/keepalive.py),
hands it the healer's commands and restarts what hangs."""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.browser.keepalive import HTTP_GRACE, Worker
from gateway.browser.launch import configured_profile, free_profile_of_leftovers
from gateway.browser.profile_holders import ProfileInUse
from gateway.component import Context

log = logging.getLogger("gateway.browser.keepalive")  # one logger name in the journal, as before


class BrowserKeeper:
    """The component. Its coroutine relays commands and watches the worker thread."""

    worker: Worker | None = None  # for tests and the demo, which look at the browser

    async def run(self, ctx: Context) -> None:
        worker = self.worker = Worker(ctx)
        worker.start()
        # Every Selenium call is bounded by page_timeout (a page load, a script): a thread
        # silent for longer is stuck; killing Chromium frees it, else we crash and the
        # supervisor starts the component afresh.
        hang_limit = float(ctx.config.browser.page_timeout) + 2 * HTTP_GRACE
        killed = False
        try:
            while True:
                command = await ctx.next_command(timeout=1.0)
                if command is not None:
                    worker.commands.put(command)
                if not worker.thread.is_alive():
                    raise RuntimeError(f"browser thread ended: {worker.crash!r}")
                stale = time.monotonic() - worker.beat_at
                if stale > 2 * hang_limit:
                    # killing Chromium did not free the thread: let the supervisor restart us
                    raise RuntimeError(f"browser thread wedged for {stale:.0f}s")
                if stale > hang_limit and not killed:
                    # Selenium is stuck (a hung page or driver): killing Chromium makes its
                    # call fail, and the thread restarts the browser.
                    log.warning("browser thread silent for %.0fs: killing Chromium", stale)
                    worker.kill_browser()
                    killed = True
                elif stale <= hang_limit:
                    killed = False
        finally:
            # Within the daemon's shutdown_timeout (8 s by default): a polite quit first,
            # then the kill; launch.py's exit hook is the last resort.
            worker.stopping.set()
            await asyncio.to_thread(worker.thread.join, 3.0)
            if worker.thread.is_alive():
                worker.kill_browser()
                await asyncio.to_thread(worker.thread.join, 3.0)
            await asyncio.to_thread(_free_profile, ctx)


def _free_profile(ctx: Context) -> None:
    """After our own browser is closed: nothing of ours may keep holding the profile (a
    Chromium left over from before, a chromedriver that lost its browser), or the next
    start, this daemon's or the login's, finds it locked."""
    profile = configured_profile(ctx.config.browser, ctx.paths.state_dir)
    if profile is None or not profile.exists():
        return
    try:
        free_profile_of_leftovers(profile, ctx.paths.runtime_dir)
    except ProfileInUse as exc:
        log.warning("on stop: %s", exc)
    except Exception:  # the stop goes on whatever the scan met
        log.exception("on stop: could not look for processes holding %s", profile)
