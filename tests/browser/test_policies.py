"""Config-driven behaviour with real Chromium against the simulated page: Run all, the
re-run limit, waiting out the GPU limit, too many sessions, and `colab-gateway login`
pausing the service's browser."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from helpers import free_port, wait_for_looks

from gateway.browser.launch import is_running
from gateway.config import Duration
from gateway.sim import SimColab
from gateway.sim.runner import BrowserRunner
from gateway.vocabulary import RerunBootstrap

pytestmark = pytest.mark.slow


@pytest.fixture
def sim() -> Iterator[SimColab]:
    with SimColab(gpu=True) as sim:
        yield sim


def test_run_all_limit_and_gpu_wait(sim: SimColab, tmp_path: Path) -> None:
    runner = BrowserRunner(
        tmp_path,
        sim,
        rerun="all",
        max_reruns_per_hour=1,
        on_gpu_limit="wait",
        limit_wait=Duration(600),
    )
    try:
        runner.wait(lambda r: r.runtime.state == "connected", 60, "connected")
        runner.post(RerunBootstrap("colab", "test"))
        sim.wait_for(lambda s: s.runs == ["all"], 10, "Run all")
        sim.wait_for(lambda s: s.events("key", key="F9"), 5, "the page saw Ctrl+F9")
        keys = [(e["key"], e["ctrl"]) for e in sim.events("key")]
        assert ("Escape", False) in keys and ("F9", True) in keys
        assert keys.index(("Escape", False)) < keys.index(("F9", True))
        # a second request within the hour is refused: max_reruns_per_hour is 1
        runner.post(RerunBootstrap("colab", "again"))
        runner.wait(lambda r: "this hour" in r.runtime.message, 10, "limit reported")
        assert sim.runs == ["all"]

        sim.set_gpu_limit(True)
        sim.disconnect(dialog=False)
        facts = runner.wait(lambda r: r.runtime.state == "gpu_limit" and r.runtime, 10)
        sim.wait_for(lambda s: s.events("click", dialog="gpu_limit"), 5, "dialog closed")
        assert sim.events("click", dialog="gpu_limit")[-1]["button"] == "Close"
        connects = sim.count("click", target="connect")
        wait_for_looks(runner)
        assert sim.count("click", target="connect") == connects, "connect clicked while waiting"
        assert sim.runtime == "disconnected"
        assert "GPU usage limit" in facts.message and "10 min" in facts.message
        assert runner.health()[0] == "degraded"
    finally:
        runner.stop()


def test_too_many_sessions_is_reported_and_not_retried(sim: SimColab, tmp_path: Path) -> None:
    sim.set_too_many_sessions(True)
    runner = BrowserRunner(tmp_path, sim, limit_wait=Duration(600))
    try:
        facts = runner.wait(lambda r: r.runtime.state == "too_many_sessions" and r.runtime, 60)
        assert "Manage sessions" in facts.message
        sim.wait_for(lambda s: s.events("click", dialog="too_many_sessions"), 5, "closed")
        wait_for_looks(runner)
        assert sim.count("click", target="connect") == 1
        assert facts.screenshot and Path(facts.screenshot).exists()
    finally:
        runner.stop()


def test_login_pauses_the_service_browser(sim: SimColab, tmp_path: Path) -> None:
    runner = BrowserRunner(tmp_path, sim)
    login = None
    try:
        runner.wait(lambda r: r.runtime.state == "connected", 60, "connected")
        old = runner.worker().browser
        assert old is not None
        config = tmp_path / "config.yaml"
        config.write_text(
            f"sessions: [{{name: colab, notebook_url: '{sim.url}'}}]\n"
            "tunnel: {enabled: false}\ntmux: {enabled: false}\n"
        )
        port = free_port()
        login = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "login",
                "-c",
                str(config),
                "--state-dir",
                str(runner.paths.state_dir),
                "--runtime-dir",
                str(runner.paths.runtime_dir),
                "--xvfb",
                "--devtools-port",
                str(port),
                "--timeout",
                "8",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        runner.wait(lambda r: r.runtime.state == "paused", 20, "service browser paused")
        assert not [p for p in old.pids() if is_running(p)], "the service's Chromium still runs"
        # the login browser: DevTools on loopback only, on the service's profile
        deadline = time.monotonic() + 20
        version = None
        while version is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/json/version", timeout=2
                ) as r:
                    version = json.load(r)
            except OSError:
                time.sleep(0.3)
        assert version and "Browser" in version
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
            pages = json.load(r)
        assert any(p.get("url", "").startswith(sim.url) for p in pages)
        out, err = login.communicate(timeout=40)
        assert login.returncode == 1 and "Timed out" in err  # nobody signed in
        assert f"ssh -N -L {port}:127.0.0.1:{port}" in out and "chrome://inspect" in out
        assert not (runner.paths.runtime_dir / "browser-paused").exists()
        # the service takes its browser back
        runner.wait(lambda r: r.runtime.state == "connected", 60, "resumed")
        assert runner.worker().browser is not old
    finally:
        if login is not None and login.poll() is None:
            login.kill()
            login.wait()
        runner.stop()


def test_two_sessions_each_in_its_own_window(sim: SimColab, tmp_path: Path) -> None:
    with SimColab() as other:
        runner = BrowserRunner(tmp_path, sim, more_sessions={"second": other})
        try:
            runner.wait(
                lambda r: r.runtime.state == r.runtime_of("second").state == "connected",
                60,
                "both connected",
            )
            other.disconnect(dialog=True)
            other.wait_for(lambda s: s.runtime == "connected" and s.vm_id == "sim-vm-2", 10)
            shown = other.events("shown", what="dialog")[-1]
            click = other.events("click", target="dialog")[-1]
            assert click["t"] - shown["t"] <= 2000
            assert sim.count("click", target="connect") == 1
            assert other.count("click", target="connect") == 1
            runner.wait(lambda r: r.runtime_of("second").vm_id == "sim-vm-2", 10)
            assert runner.runtime.vm_id == "sim-vm-1"
        finally:
            runner.stop()


def test_headed_under_xvfb(sim: SimColab, tmp_path: Path) -> None:
    runner = BrowserRunner(tmp_path, sim, headless=False, display="xvfb")
    try:
        runner.wait(lambda r: r.runtime.state == "connected", 60, "connected")
        browser = runner.worker().browser
        assert browser is not None and browser.display and browser.xvfb is not None
        xvfb = browser.xvfb
        assert "HeadlessChrome" not in sim.events("load")[0]["ua"]
        assert browser.chromium_pid is not None
        cmdline = psutil.Process(browser.chromium_pid).cmdline()
        assert not any(arg.startswith("--headless") for arg in cmdline)
    finally:
        runner.stop()
    assert xvfb.poll() is not None, "Xvfb outlived the browser"


def test_rerun_asked_while_connecting_runs_once_connected(tmp_path: Path) -> None:
    with SimColab(connect_delay=3.0) as slow:
        runner = BrowserRunner(tmp_path, slow)
        try:
            runner.wait(lambda r: r.runtime.state == "connecting", 60, "connecting")
            runner.post(RerunBootstrap("colab", "test"))
            slow.wait_for(lambda s: s.runs == ["first"], 10, "the bootstrap ran after connect")
            first_run = slow.events("action", action="run")[0]["server_t"]
            connected = slow.events("action", action="connected")[0]["server_t"]
            assert first_run > connected, "ran while connecting"
            wait_for_looks(runner)
            assert slow.runs == ["first"], "ran more than once"
        finally:
            runner.stop()
