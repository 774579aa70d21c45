"""The metrics component's parts, in-process: the State's counters, the exposition of
every metric with its labels (read back with prometheus-client's parser), the textfile."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path

import pytest
from helpers import free_port, wait_until
from helpers.metrics import EXPECTED, family_names, samples, scrape, value
from prometheus_client import CollectorRegistry, generate_latest

from gateway.component import Context
from gateway.config import load_config_text
from gateway.metrics.collector import StateCollector
from gateway.metrics.component import MetricsComponent, textfile_problem
from gateway.paths import Paths
from gateway.state import State
from gateway.vocabulary import (
    BROWSER_PSS,
    BROWSER_RESTARTS,
    COMPONENT_RESTARTS,
    DDNS_ERRORS,
    DDNS_PUBLISHED,
    DIALOGS,
    RECONNECTS,
    RERUNS,
    TUNNEL_BYTES,
    TUNNEL_PENALISED,
    TUNNEL_REFUSED,
    VM_RESETS,
    Health,
    RuntimeState,
)


def exposition(state: State) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(state.view))
    return generate_latest(registry).decode()


def busy_state() -> State:
    """A State in which every measure has seen an event."""
    state = State()
    state.set_health("tunnel", Health.OK, "up")
    state.set_health(
        "browser",
        Health.DEGRADED,
        "restarting",
        chromium_version="120.0.1",
        chromium_engine="headless-shell",
    )
    state.update_runtime("colab", state=RuntimeState.CONNECTED, gpu=True)
    state.update_tunnel("colab", up=True)
    state.count(COMPONENT_RESTARTS, component="tunnel")
    state.count(RECONNECTS, session="colab", reason="disconnected")
    state.count(DIALOGS, session="colab", kind="still_there")
    state.count(RERUNS, session="colab")
    state.count(VM_RESETS, session="colab")
    state.count(TUNNEL_BYTES, 100, session="colab", direction="in")
    state.count(TUNNEL_REFUSED, reason="penalised")
    state.gauge(TUNNEL_PENALISED, 2)
    state.gauge(BROWSER_PSS, 300e6)
    state.count(BROWSER_RESTARTS, reason="memory")
    state.gauge(DDNS_PUBLISHED, 1700000000.0, family="ipv4")
    state.count(DDNS_ERRORS, kind="retry")
    state.update_vm(
        "colab", sampled_at=1700000000.0, accelerator="Tesla T4", gpus=1,
        gpu_utilization=0.87, gpu_memory_used=12 << 30, gpu_memory_total=15 << 30,
        memory_used=3 << 30, memory_total=12 << 30, disk_used=30 << 30,
        disk_total=100 << 30, uptime_seconds=3600.0,
    )  # fmt: skip
    return state


def test_every_metric_is_exported_with_its_labels() -> None:
    got = samples(exposition(busy_state()))
    for name, labels in EXPECTED.items():
        assert name in got, f"{name} missing"
        for key in got[name]:
            assert tuple(sorted(k for k, _ in key)) == tuple(sorted(labels)), (name, key)
    assert value(got, "colab_gateway_runtime_connected", session="colab") == 1
    assert value(got, "colab_gateway_runtime_gpu", session="colab") == 1
    assert value(got, "colab_gateway_tunnel_up", session="colab") == 1
    assert value(got, "colab_gateway_component_health", component="browser") == 1
    assert value(got, "colab_gateway_tunnel_bytes_total", session="colab", direction="in") == 100
    assert value(got, "colab_gateway_tunnel_bytes_total", session="colab", direction="out") == 0
    assert value(got, "colab_gateway_browser_pss_bytes") == 300e6
    (build,) = got["colab_gateway_build_info"]
    assert dict(build)["chromium"] == "120.0.1"
    assert dict(build)["chromium_engine"] == "headless-shell"


def test_a_quiet_state_still_declares_every_metric() -> None:
    """Before any event each metric is declared, so dashboards and alerts find it."""
    state = State()
    state.session("colab")
    text = exposition(state)
    assert family_names(text) >= set(EXPECTED)
    assert value(text, "colab_gateway_reruns_total", session="colab") == 0


def test_needs_human_follows_the_runtime_state() -> None:
    state = State()
    state.update_runtime("colab", state=RuntimeState.SIGNED_OUT)
    assert value(exposition(state), "colab_gateway_runtime_needs_human", session="colab") == 1
    state.update_runtime("colab", state=RuntimeState.CONNECTED)
    assert value(exposition(state), "colab_gateway_runtime_needs_human", session="colab") == 0


def test_counters_add_up_and_refuse_wrong_labels() -> None:
    state = State()
    state.count(DDNS_ERRORS, kind="retry")
    state.count(DDNS_ERRORS, 2, kind="retry")
    assert state.view().measures[DDNS_ERRORS] == {("retry",): 3.0}
    with pytest.raises(ValueError, match=r"ddns_errors_total takes the labels \['kind'\]"):
        state.count(DDNS_ERRORS, family="ipv4")
    with pytest.raises(ValueError, match=r"is a gauge: use State\.gauge"):
        state.count(BROWSER_PSS)
    with pytest.raises(ValueError, match=r"is a counter: use State\.count"):
        state.gauge(DDNS_ERRORS, 1, kind="retry")


def test_counting_does_not_wake_waiters() -> None:
    """Bytes are counted per chunk: that must not make every waiter of the State spin."""
    state = State()
    before = state.version
    state.count(TUNNEL_BYTES, 10, session="colab", direction="out")
    assert state.version == before


def test_the_component_serves_http_and_writes_the_textfile(tmp_path: Path) -> None:
    port = free_port()
    textfile = tmp_path / "textfile" / "colab_gateway.prom"
    textfile.parent.mkdir()
    loaded = load_config_text(
        "tunnel: {enabled: false}\nbrowser: {enabled: false}\ntmux: {enabled: false}\n"
        f"metrics: {{listen: '127.0.0.1:{port}', textfile: '{textfile}', textfile_every: 1s}}\n"
    )
    state = State()
    paths = Paths(config=tmp_path / "c.yaml", state_dir=tmp_path, runtime_dir=tmp_path)
    ctx = Context("metrics", loaded.config, paths, state)

    async def main() -> None:
        state.attach(asyncio.get_running_loop())
        component = MetricsComponent()
        task = asyncio.create_task(component.run(ctx))
        try:
            await asyncio.to_thread(
                wait_until, lambda: state.component("metrics").health == Health.OK, 10, "ok"
            )
            text = await asyncio.to_thread(scrape, f"http://127.0.0.1:{port}/metrics")
            assert family_names(text) >= set(EXPECTED)
            assert value(text, "colab_gateway_component_health", component="metrics") == 0
            await asyncio.to_thread(wait_until, textfile.exists, 10, "the textfile")
            assert family_names(textfile.read_text()) >= set(EXPECTED)
            assert textfile.stat().st_mode & 0o777 == 0o644  # node_exporter reads it
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert component.server is None  # stopped with the component: the port is free

    asyncio.run(main())


def test_a_read_only_textfile_directory_says_how_to_allow_it() -> None:
    """Under systemd, ProtectSystem=strict makes node_exporter's directory read-only."""
    path = "/var/lib/prometheus/node-exporter/colab_gateway.prom"
    problem = textfile_problem(path, OSError(errno.EROFS, "Read-only file system"))
    assert problem == (
        f"cannot write metrics.textfile={path}: Read-only file system; let the service write "
        "there with a drop-in (systemctl edit colab-gateway): "
        "[Service] ReadWritePaths=/var/lib/prometheus/node-exporter"
    )
    other = textfile_problem(path, OSError(errno.ENOSPC, "No space left on device"))
    assert other.endswith(": No space left on device")
