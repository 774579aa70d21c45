"""Turns a Snapshot of the State into Prometheus metric families.

Everything comes from ``State.view()``, a copy taken under the State's lock: a scrape
never waits on a component, and a component never waits on a scrape.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from importlib import metadata

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from gateway import __version__
from gateway.snapshot import Snapshot
from gateway.untrusted import untrusted
from gateway.vocabulary import (
    COLAB_REFUSALS,
    COMPONENT_RESTARTS,
    MEASURES,
    REFUSAL_REASONS,
    RERUNS,
    TUNNEL_BYTES,
    TUNNEL_PENALISED,
    VM_RESETS,
    Health,
    Measure,
    RuntimeState,
    VmFacts,
)

PREFIX = "colab_gateway_"

# 0 ok, 1 degraded, 2 failed (issue 17); starting counts as degraded, stopped as failed.
HEALTH_VALUE = {
    Health.OK: 0,
    Health.STARTING: 1,
    Health.DEGRADED: 1,
    Health.FAILED: 2,
    Health.STOPPED: 2,
}
# Runtime states only a person can get out of.
NEEDS_HUMAN = {
    RuntimeState.SIGNED_OUT,
    RuntimeState.NEEDS_HUMAN,
    RuntimeState.RECAPTCHA,
    RuntimeState.DISALLOWED,
    RuntimeState.WRONG_LANGUAGE,
}


@cache
def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return ""


def build_labels(snapshot: Snapshot) -> dict[str, str]:
    browser = snapshot.components.get("browser")
    details = browser.details if browser else {}
    chromium = details.get("chromium_version")
    return {
        "version": __version__,
        "python": platform.python_version(),
        "asyncssh": _package_version("asyncssh"),
        "selenium": _package_version("selenium"),
        "chromium": str(chromium or ""),  # known once the browser has started
        "chromium_engine": str(details.get("chromium_engine") or ""),  # headless-shell / chromium
    }


def _zeros(snapshot: Snapshot) -> dict[Measure, list[tuple[str, ...]]]:
    """Series that exist before their first event, so that rate() and alerts see a 0."""
    sessions = sorted(snapshot.sessions)
    return {
        COMPONENT_RESTARTS: [(name,) for name in snapshot.components],
        RERUNS: [(s,) for s in sessions],
        VM_RESETS: [(s,) for s in sessions],
        COLAB_REFUSALS: [(s, r) for s in sessions for r in REFUSAL_REASONS],
        TUNNEL_BYTES: [(s, d) for s in sessions for d in ("in", "out")],
        TUNNEL_PENALISED: [()] if snapshot.runs("tunnel") else [],
    }


def families(snapshot: Snapshot) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
    """Every metric of issue 17 (``sync`` ones once sync exists)."""
    health = GaugeMetricFamily(
        PREFIX + "component_health",
        "Health of each component: 0 ok, 1 degraded or starting, 2 failed",
        labels=["component"],
    )
    for name, component in snapshot.components.items():
        health.add_metric([name], HEALTH_VALUE[component.health])
    yield health

    sessions = sorted(snapshot.sessions.items())

    def per_session(name: str, doc: str, value: Callable[[str], float]) -> GaugeMetricFamily:
        family = GaugeMetricFamily(PREFIX + name, doc, labels=["session"])
        for session, _ in sessions:
            family.add_metric([session], value(session))
        return family

    runtime = {name: s.runtime for name, s in sessions}
    tunnel = {name: s.tunnel for name, s in sessions}
    yield per_session(
        "runtime_connected",
        "1 while the Colab runtime is connected",
        lambda s: float(runtime[s].state == RuntimeState.CONNECTED),
    )
    yield per_session(
        "runtime_gpu", "1 while the runtime has a GPU", lambda s: float(bool(runtime[s].gpu))
    )
    yield per_session(
        "runtime_needs_human",
        "1 while only a person can help (signed out, reCAPTCHA, gave up, stopped for "
        "disallowed code, a page not in English)",
        lambda s: float(runtime[s].state in NEEDS_HUMAN),
    )
    yield per_session(
        "tunnel_up", "1 while the session's tunnel is up", lambda s: float(tunnel[s].up)
    )

    yield from vm_families(snapshot)

    zeros = _zeros(snapshot)
    for measure in MEASURES:
        values = dict.fromkeys(zeros.get(measure, ()), 0.0)
        values.update(snapshot.measures.get(measure, {}))
        kind = CounterMetricFamily if measure.kind == "counter" else GaugeMetricFamily
        family = kind(PREFIX + measure.name, measure.help, labels=list(measure.labels))
        for key, value in sorted(values.items()):
            family.add_metric(list(key), value)
        yield family

    yield GaugeMetricFamily(
        PREFIX + "up_seconds",
        "Seconds since the daemon started",
        value=max(0.0, snapshot.now - snapshot.started_at),
    )


# The VM's facts (issue 27): (name, help, how to read it from VmFacts). A value the VM
# did not give has no sample at all: absent, never 0.
VM_GAUGES: tuple[tuple[str, str, Callable[[VmFacts], float | None]], ...] = (
    (
        "vm_gpu_utilization_ratio",
        "The Colab VM's GPU utilisation (0-1, mean over its GPUs) at the last sample",
        lambda vm: vm.gpu_utilization,
    ),
    (
        "vm_gpu_memory_used_bytes",
        "GPU memory in use on the Colab VM (all its GPUs)",
        lambda vm: vm.gpu_memory_used,
    ),
    (
        "vm_gpu_memory_total_bytes",
        "GPU memory of the Colab VM (all its GPUs)",
        lambda vm: vm.gpu_memory_total,
    ),
    ("vm_memory_used_bytes", "The Colab VM's RAM in use", lambda vm: vm.memory_used),
    ("vm_memory_total_bytes", "The Colab VM's RAM", lambda vm: vm.memory_total),
    ("vm_disk_used_bytes", "Disk used on the Colab VM's /content", lambda vm: vm.disk_used),
    ("vm_disk_total_bytes", "Size of the Colab VM's /content", lambda vm: vm.disk_total),
    ("vm_uptime_seconds", "Seconds since the Colab VM booted", lambda vm: vm.uptime_seconds),
)


def vm_families(snapshot: Snapshot) -> Iterator[GaugeMetricFamily]:
    """The VM facts, labelled by session and accelerator ("none" on a runtime without a
    GPU); a session whose VM has not been sampled has no series."""
    sampled = [
        (name, s.vm, untrusted(s.vm.accelerator, 60) if s.vm.accelerator else "none")
        for name, s in sorted(snapshot.sessions.items())
        if s.vm.sampled_at is not None
    ]
    for name, doc, read in VM_GAUGES:
        family = GaugeMetricFamily(PREFIX + name, doc, labels=["session", "accelerator"])
        for session, vm, accelerator in sampled:
            value = read(vm)
            if value is not None:
                family.add_metric([session, accelerator], float(value))
        yield family


class StateCollector(Collector):
    """What prometheus_client's registry asks at every scrape."""

    def __init__(self, view: Callable[[], Snapshot]) -> None:
        self.view = view

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily | InfoMetricFamily]:
        snapshot = self.view()
        yield InfoMetricFamily(
            PREFIX + "build", "Versions of the gateway and what it runs", build_labels(snapshot)
        )
        yield from families(snapshot)
