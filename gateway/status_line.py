"""The one way the gateway's state is put into words.

``summary`` is the line ``systemctl status`` shows (sd_notify STATUS=), the first line of
``colab-gateway status`` and the daemon line of the tmux waiting screen; ``session_facts``
is what each of them says about one session, so the three never disagree.

Texts here quote what came from outside (a provider's answer, the VM's stderr, a page's
dialog): the State keeps them escaped already, and every renderer here passes what it shows
through ``untrusted()`` once more, with the bound of its medium. A newline in STATUS= would
be a second sd_notify assignment (``WATCHDOG=1``, ``READY=1``); an escape code in the status
or the waiting screen repaints a person's terminal.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from gateway.durations import format_duration
from gateway.secrets import redact
from gateway.sizes import format_size
from gateway.untrusted import untrusted
from gateway.vocabulary import Health, RestoreState, SessionState, SyncFacts, VmFacts

if TYPE_CHECKING:  # a Snapshot renders itself with summary(): no import at run time
    from gateway.snapshot import Snapshot

NOTHING_ENABLED = "no components enabled"
# One component's or one session's words in the summary: long enough for a sentence that
# quotes a provider, short enough that the others still fit on the line.
PART_LIMIT = 300
# The whole STATUS= line (``systemctl status`` shows one line; the status socket says the
# same in "summary").
SUMMARY_LIMIT = 1000
# One line of ``colab-gateway status``: the summary plus a few words of its own.
REPORT_LINE_LIMIT = SUMMARY_LIMIT + 100


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
    vm = vm_words(session.vm)
    if vm:
        facts.append(vm)
    return facts


GIB = 1024**3
_VENDORS = ("NVIDIA ", "Tesla ")


def _gib(used: int | None, total: int | None) -> str:
    """``11.2/15 GB`` (binary GB, as Colab's own resource panel counts them)."""
    if used is None or total is None:
        return ""
    whole = total / GIB
    shown = f"{whole:.0f}" if abs(whole - round(whole)) < 0.05 else f"{whole:.1f}"
    return f"{used / GIB:.1f}/{shown} GB"


def accelerator_short(name: str | None) -> str:
    """``T4`` for "Tesla T4", ``A100-SXM4-40GB`` for "NVIDIA A100-SXM4-40GB"."""
    short = name or ""
    for vendor in _VENDORS:
        short = short.removeprefix(vendor)
    return untrusted(short, 40)


def vm_words(vm: VmFacts) -> str:
    """``T4 87 % · 11.2/15 GB`` (the GPU: utilisation, memory), or ``VM RAM 3.1/12 GB`` on a
    runtime without one; empty before the first sample said anything."""
    if vm.sampled_at is None:
        return ""
    if vm.accelerator or vm.gpu_utilization is not None:
        parts = [accelerator_short(vm.accelerator) or "GPU"]
        if vm.gpu_utilization is not None:
            parts[0] += f" {vm.gpu_utilization * 100:.0f} %"
        memory = _gib(vm.gpu_memory_used, vm.gpu_memory_total)
        return " · ".join([*parts, memory] if memory else parts)
    memory = _gib(vm.memory_used, vm.memory_total)
    return f"VM RAM {memory}" if memory else ""


def vm_details(vm: VmFacts, now: float) -> str:
    """The long form for ``colab-gateway status``: everything the last sample said."""
    if vm.sampled_at is None:
        return f"VM facts: none yet{f' ({vm.problem})' if vm.problem else ''}"
    parts = []
    if vm.accelerator or vm.gpu_utilization is not None:
        gpu = accelerator_short(vm.accelerator) or "GPU"
        if vm.gpus > 1:
            gpu = f"{vm.gpus}× {gpu}"
        if vm.gpu_utilization is not None:
            gpu += f" {vm.gpu_utilization * 100:.0f} %"
        memory = _gib(vm.gpu_memory_used, vm.gpu_memory_total)
        parts.append(f"{gpu}, VRAM {memory}" if memory else gpu)
    else:
        parts.append("no GPU")
    memory = _gib(vm.memory_used, vm.memory_total)
    if memory:
        parts.append(f"RAM {memory}")
    disk = _gib(vm.disk_used, vm.disk_total)
    if disk:
        parts.append(f"/content {disk}")
    if vm.uptime_seconds is not None:
        parts.append(f"up {format_duration(vm.uptime_seconds)}")
    line = f"VM {' · '.join(parts)} (sampled {format_duration(max(0.0, now - vm.sampled_at))} ago)"
    if vm.problem:
        line += f"; {vm.problem}"
    return line


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
        return f"restore failed: {untrusted(sync.restore_message, PART_LIMIT)}"
    return f"restore {sync.restore.value}"


def sync_words(sync: SyncFacts) -> str:
    """``sync 3 snapshots 2.4 GB, last 14:02 1.2 GB in 4s``, or why it does not work."""
    if sync.restore in (RestoreState.RESTORING, RestoreState.RESUMING, RestoreState.FAILED):
        return restore_words(sync)
    if sync.problem:
        return f"sync refused: {untrusted(sync.problem, PART_LIMIT)}"
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
    line = " · ".join(untrusted(p, PART_LIMIT) for p in parts if p) or NOTHING_ENABLED
    # Redacted before the cut, so that the cut never leaves the head of a secret.
    return untrusted(redact(line), SUMMARY_LIMIT)


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
        if snapshot.runs("vm_stats"):
            lines.append(f"    {vm_details(session.vm, now)}")
        if runtime.screenshot:
            lines.append(f"    latest screenshot {runtime.screenshot}")
    # Each line one line, escaped and bounded, whatever a fact quotes.
    return "\n".join(untrusted(line, REPORT_LINE_LIMIT) for line in lines)
