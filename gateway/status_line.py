"""The one way the gateway's state is put into words.

``summary`` is the line ``systemctl status`` shows (sd_notify STATUS=), the first line of
``colab-gateway status`` and the daemon line of the tmux waiting screen; ``session_facts``
is what each of them says about one session, so the three never disagree.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from gateway.durations import format_duration
from gateway.sizes import format_size
from gateway.vocabulary import Health, RestoreState, SessionState, SyncFacts

if TYPE_CHECKING:  # a Snapshot renders itself with summary(): no import at run time
    from gateway.snapshot import Snapshot

NOTHING_ENABLED = "no components enabled"


def session_facts(
    snapshot: Snapshot, session: SessionState, *, always_tunnel: bool = False
) -> list[str]:
    """``["tunnel up 2h13m", "runtime connected (GPU)"]``: what the running components know.

    ``always_tunnel``: say how the tunnel is also when no tunnel component runs (the tmux
    pane waits for it whatever publishes it).
    """
    now = snapshot.now
    facts = []
    if always_tunnel or snapshot.runs("tunnel"):
        tunnel = session.tunnel
        if tunnel.up and tunnel.since:
            facts.append(f"tunnel up {format_duration(now - tunnel.since)}")
        elif tunnel.since:
            facts.append(f"tunnel down {format_duration(now - tunnel.since)}")
        else:
            # No clock in it: the STATUS line is sent when the text changes, and must then
            # still equal what the status socket says.
            facts.append("tunnel not up yet")
    if snapshot.runs("browser"):
        runtime = session.runtime
        gpu = " (GPU)" if runtime.gpu else ""
        facts.append(f"runtime {runtime.state.words}{gpu}")
    if session.sync.enabled:
        facts.append(sync_words(session.sync))
    return facts


def restore_words(sync: SyncFacts) -> str:
    """``restoring 1.2 GB from 14:02 snapshot…``: what the tmux pane shows while it waits."""
    taken = (
        time.strftime("%H:%M", time.localtime(sync.restore_snapshot_at))
        if sync.restore_snapshot_at
        else "the newest"
    )
    if sync.restore == RestoreState.RESTORING:
        return f"restoring {format_size(sync.restore_bytes)} from {taken} snapshot…"
    if sync.restore == RestoreState.RESUMING:
        return f"restored {format_size(sync.restore_bytes)} from {taken} snapshot; resuming…"
    if sync.restore == RestoreState.FAILED:
        return f"restore failed: {sync.restore_message}"
    return f"restore {sync.restore.value}"


def sync_words(sync: SyncFacts) -> str:
    """``sync 3 snapshots 2.4 GB, last 14:02 1.2 GB in 4s``, or why it does not work."""
    if sync.restore in (RestoreState.RESTORING, RestoreState.RESUMING, RestoreState.FAILED):
        return restore_words(sync)
    if sync.problem:
        return f"sync refused: {sync.problem}"
    words = f"sync {sync.snapshots} snapshots {format_size(sync.disk_bytes)}"
    if sync.last_pull_at:
        at = time.strftime("%H:%M", time.localtime(sync.last_pull_at))
        took = format_duration(sync.last_pull_seconds)
        words += f", last {at} {format_size(sync.last_pull_bytes)} in {took}"
    if sync.pulling:
        words += ", pulling"
    return words


def session_line(snapshot: Snapshot, session: SessionState) -> str:
    """``colab: tunnel up 2h13m · runtime connected (GPU)``; empty if nothing watches it."""
    facts = session_facts(snapshot, session)
    return f"{session.name}: " + " · ".join(facts) if facts else ""


def summary(snapshot: Snapshot) -> str:
    """What works, and for what does not, what is wrong: one line."""
    parts = [session_line(snapshot, s) for s in snapshot.sessions.values()]
    for status in sorted(snapshot.components.values(), key=lambda c: c.name):
        if status.health in (Health.OK, Health.STOPPED):
            parts.append(status.brief)
        elif status.health == Health.STARTING:
            parts.append(f"{status.name} starting")
        else:
            parts.append(f"{status.name} {status.health.value}: {status.message}")
    return " · ".join(p for p in parts if p) or NOTHING_ENABLED


def report(snapshot: Snapshot) -> str:
    """``colab-gateway status``: the summary, then each component and session on its own."""
    now = snapshot.now
    lines = [f"colab-gateway: {snapshot.health.value} — {snapshot.summary}"]
    for name, comp in snapshot.components.items():
        since = format_duration(now - (comp.since if comp.since is not None else now))
        lines.append(f"  {name:<8} {comp.health.value:<9} {comp.message} (for {since})")
    for name, session in snapshot.sessions.items():
        facts = " · ".join(session_facts(snapshot, session)) or "no component watches it"
        lines.append(f"  session {name}: {facts}")
        tunnel, runtime = session.tunnel, session.runtime
        if snapshot.runs("tunnel") and tunnel.up and tunnel.peer:
            lines.append(f"    Colab dialed in from {tunnel.peer}")
        if tunnel.hostkey_fingerprint:
            lines.append(f"    Colab host key {tunnel.hostkey_fingerprint}")
        if session.sync.enabled:
            sync = session.sync
            lines.append(f"    {sync_words(sync)}; restore {sync.restore.value}")
            if sync.restore_message and sync.restore != RestoreState.FAILED:
                lines.append(f"    restore: {sync.restore_message}")
        if runtime.screenshot:
            lines.append(f"    latest screenshot {runtime.screenshot}")
    return "\n".join(lines)
