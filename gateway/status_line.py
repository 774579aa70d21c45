"""The one way the gateway's state is put into words.

``summary`` is the line ``systemctl status`` shows (sd_notify STATUS=), the first line of
``colab-gateway status`` and the daemon line of the tmux waiting screen; ``session_facts``
is what each of them says about one session, so the three never disagree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.durations import format_duration
from gateway.vocabulary import Health, SessionState

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
    return facts


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
        if runtime.screenshot:
            lines.append(f"    latest screenshot {runtime.screenshot}")
    return "\n".join(lines)
