"""The daemon component ``alerts``: tells a person, through apprise, what needs them.

It only reads the State: on every change it hands a Snapshot to the ``Watcher``
(events.py), which decides from the facts; what is to be sent goes to the ``Sender``
(sender.py), whose thread does the network work. Its own status says whether sending works.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable

from gateway.alerts import run_marker, vm_outbox
from gateway.alerts.events import Watcher
from gateway.alerts.sender import Sender
from gateway.component import Context
from gateway.durations import format_duration
from gateway.untrusted import untrusted
from gateway.vm_ssh import VM_LOGIN, over_kept_connection, ssh_options
from gateway.vocabulary import Health

log = logging.getLogger("gateway.alerts")

IDLE_WAKE = 20.0  # at least this often: progress for the watchdog, and time-based events
# Failed collections in a row (with the tunnel up) before the status says so: a tunnel
# that drops between the check and the login costs one, and that is no news.
COLLECT_FAILURES_SHOWN = 3


class AlertsComponent:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock  # tests move it; the daemon uses the wall clock
        self.sender: Sender | None = None  # for tests, which look at its queues
        # Session -> why its VM's messages cannot be collected (escaped), once shown.
        # Replaced, never changed in place: the Sender's thread reads it in _publish.
        self.collect_problems: dict[str, str] = {}

    async def run(self, ctx: Context) -> None:
        config = ctx.config
        state = ctx.state
        marker = ctx.paths.run_marker
        sender = self.sender = await asyncio.to_thread(
            Sender, config.notify.all_urls(), on_change=lambda: self._publish(ctx)
        )
        watcher = Watcher(
            config, host=socket.gethostname(), view_command=lambda s: f"colab-gateway view {s}"
        )
        sender.start()
        started_at = state.started_at
        # Held here: a task nobody references may be collected mid-run.
        collecting = (
            asyncio.create_task(self._collect_vm_messages(ctx, sender))
            if vm_outbox.EVENT in config.notify.events
            else None
        )
        try:
            previous = await asyncio.to_thread(run_marker.unclean_predecessor, marker, started_at)
            await asyncio.to_thread(run_marker.write, marker, started_at, clean=False)
            if previous is not None:
                now = self.clock()
                lived = format_duration(max(0.0, started_at - previous.started_at))
                for alert in watcher.happened(
                    "daemon_restarted",
                    "colab-gateway restarted: its previous run did not stop cleanly (a "
                    "crash, a watchdog kill or a power cut)",
                    f"read why in journalctl -u colab-gateway (the previous run started "
                    f"{lived} before this one)",
                    previous.started_at,
                    now,
                ):
                    sender.put(alert)
            version = -1
            while True:
                now = self.clock()
                for alert in watcher.evaluate(state.view(now), now):
                    log.info("notifying: %s", alert.title)
                    sender.put(alert)
                self._publish(ctx)
                wait = IDLE_WAKE
                if watcher.next_due is not None:
                    wait = min(wait, max(0.05, watcher.next_due - now))
                version = await state.wait_changed(version, timeout=wait)
                ctx.progress()
                if collecting is not None and collecting.done():
                    # An unexpected error ended the collection: crash, so that the
                    # component is restarted with backoff instead of going deaf.
                    collecting.result()
                    raise RuntimeError("the collection of the VMs' messages ended")
        except asyncio.CancelledError:
            # Stopped on purpose (shutdown or reload): the next start is no "restart".
            run_marker.write(marker, started_at, clean=True)
            raise
        finally:
            if collecting is not None:
                collecting.cancel()
                await asyncio.gather(collecting, return_exceptions=True)
            await asyncio.to_thread(sender.stop)

    async def _collect_vm_messages(self, ctx: Context, sender: Sender) -> None:
        """Every ``notify.vm_messages_every``, each session's VM outbox (gw-notify, gw-run)
        while its tunnel is up: the only way the VM can reach the phone."""
        config = ctx.config
        host = socket.gethostname()
        collectors = {
            s.name: vm_outbox.Collector(
                s.name,
                [
                    "ssh",
                    *ssh_options(config, s.name, ctx.paths),
                    # The VM facts' kept connection when it is up: no login per collection.
                    *over_kept_connection(ctx.paths.runtime_dir, s.name),
                    VM_LOGIN,
                ],
                ctx.paths.state_dir / "vm-messages" / f"{s.name}.json",
                host=host,
            )
            for s in config.sessions
        }
        failures: dict[str, int] = {}  # failed collections in a row, per session
        while True:
            await asyncio.sleep(float(config.notify.vm_messages_every))
            snap = ctx.state.view(self.clock())
            for name, collector in collectors.items():
                session = snap.sessions.get(name)
                if session is None or not session.tunnel.up:
                    continue
                try:
                    await collector.collect(sender.put, sender.has_left)
                except (vm_outbox.SSHFailed, OSError) as exc:
                    # Tunnels drop; the messages wait on the VM. Said once per failing run.
                    failures[name] = failures.get(name, 0) + 1
                    if failures[name] == 1:
                        log.warning("session %s: the VM's messages could not be collected "
                                    "(%s); trying again", name, exc)  # fmt: skip
                    if failures[name] >= COLLECT_FAILURES_SHOWN:
                        self._collect_problem(ctx, name, untrusted(str(exc)))
                    continue
                if failures.pop(name, 0):
                    log.info("session %s: the VM's messages are collected again", name)
                    self._collect_problem(ctx, name, None)

    def _collect_problem(self, ctx: Context, session: str, reason: str | None) -> None:
        problems = {k: v for k, v in self.collect_problems.items() if k != session}
        if reason is not None:
            problems[session] = reason
        if problems != self.collect_problems:
            self.collect_problems = problems
            self._publish(ctx)

    def _publish(self, ctx: Context) -> None:
        sender = self.sender
        if sender is None:
            return
        ok, message, details = sender.status()
        problems = self.collect_problems
        if problems:
            # The VM's messages wait there (nothing is lost), but nobody hears of them.
            said = [
                f"VM messages: cannot collect from session {n}: {r}" for n, r in problems.items()
            ]
            message = "; ".join([*([] if ok else [message]), *said])
            ok = False
        details["vm_messages"] = {"failing": dict(problems)}
        ctx.state.set_health(
            ctx.name, Health.OK if ok else Health.DEGRADED, message, brief="", **details
        )
        ctx.progress()
