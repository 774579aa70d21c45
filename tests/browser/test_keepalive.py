"""The browser component with real headless Chromium against the simulated Colab page.

One browser serves most of the module, like a day in the life of the keep-alive; each
test starts from a connected runtime and leaves one, so any order works. What needs a
fresh start (the very first connect, the reCAPTCHA counts per window) gets its own browser.
Every test asserts what the PAGE recorded, not only what the component believes. Timings
are only asserted where the issue demands a bound (react within 2 s).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import wait_for_looks

from gateway.browser.launch import is_running, processes_with_arg
from gateway.sim import SimColab
from gateway.sim.runner import BrowserRunner as Harness
from gateway.vocabulary import RerunBootstrap

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sim() -> Iterator[SimColab]:
    with SimColab(gpu=True) as sim:
        yield sim


@pytest.fixture(scope="module")
def keeper(sim: SimColab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    harness = Harness(tmp_path_factory.mktemp("browser"), sim, recaptcha_max=3)
    yield harness
    harness.stop()


@pytest.fixture
def own_sim() -> Iterator[SimColab]:
    with SimColab(gpu=True) as sim:
        yield sim


@pytest.fixture
def own_keeper(own_sim: SimColab, tmp_path: Path) -> Iterator[Harness]:
    """A browser of the test's own, on a page of its own: a first start, fresh counts."""
    harness = Harness(tmp_path, own_sim, recaptcha_max=3)
    yield harness
    harness.stop()


def test_first_connect_clicks_connect_once(own_keeper: Harness, own_sim: SimColab) -> None:
    keeper, sim = own_keeper, own_sim
    facts = keeper.wait_state("connected", timeout=60)
    assert facts.gpu is True
    assert facts.vm_id == sim.vm_id == "sim-vm-1"
    clicks = sim.events("click", target="connect")
    assert len(clicks) == 1 and clicks[0]["state"] == "fresh"
    load = sim.events("load")[0]
    assert "HeadlessChrome" not in load["ua"] and "Chrome/" in load["ua"]
    # A connected runtime is left alone: no click opens the resources panel.
    wait_for_looks(keeper)
    assert sim.count("click", target="connect") == 1
    assert not sim.events("action", action="connect_while_connected")


def test_idle_disconnect_dialog_is_answered_within_2s(keeper: Harness, sim: SimColab) -> None:
    keeper.wait_state("connected", timeout=60)
    old_vm = sim.vm_id
    sim.disconnect(dialog=True)
    sim.wait_for(lambda s: s.runtime == "connected" and s.vm_id != old_vm, 10, "reconnect")
    new_vm = sim.vm_id
    shown = sim.events("shown", what="dialog", value="runtime_disconnected")[-1]
    click = sim.wait_for(
        lambda s: s.events("click", target="dialog", dialog="runtime_disconnected"),
        10,
        "the page's record of the click",
    )[-1]
    assert click["button"] == "Reconnect"
    assert 0 <= click["t"] - shown["t"] <= 2000, "reaction beyond 2 s"
    # the component saw the new VM, and kept evidence of the anomaly
    facts = keeper.wait(lambda h: h.runtime.vm_id == new_vm and h.runtime, 10, "vm id")
    assert facts.state == "connected"
    assert facts.screenshot and Path(facts.screenshot).exists()
    assert "runtime_disconnected" in facts.screenshot


def test_still_there_prompt_is_answered(keeper: Harness, sim: SimColab) -> None:
    keeper.wait_state("connected", timeout=60)
    connects = sim.count("click", target="connect")
    sim.show_dialog("still_there")
    sim.wait_for(lambda s: s.events("click", dialog="still_there"), 5, "still-there click")
    click = sim.wait_for(
        lambda s: s.events("click", dialog="still_there"), 10, "the page's record of the click"
    )[-1]
    assert click["button"] == "Yes, I'm here"
    sim.wait_for(lambda s: s.dialog is None, 5)
    assert sim.runtime == "connected" and sim.count("click", target="connect") == connects


def test_recaptcha_once_is_dismissed(own_keeper: Harness, own_sim: SimColab) -> None:
    keeper, sim = own_keeper, own_sim
    keeper.wait_state("connected", timeout=60)
    sim.show_recaptcha(times=1)
    sim.wait_for(lambda s: s.count("click", target="recaptcha") == 1, 5, "one dismissal")
    keeper.wait_state("connected", timeout=5)
    wait_for_looks(keeper)
    assert sim.count("click", target="recaptcha") == 1


def test_recaptcha_repeatedly_needs_a_human(own_keeper: Harness, own_sim: SimColab) -> None:
    keeper, sim = own_keeper, own_sim
    keeper.wait_state("connected", timeout=60)
    sim.show_recaptcha(times=None)  # recaptcha_max is 3 per window
    facts = keeper.wait_state("needs_human", timeout=15)
    assert sim.count("click", target="recaptcha") == 3
    wait_for_looks(keeper)  # and it really stopped clicking
    assert sim.count("click", target="recaptcha") == 3
    assert "a person needs to" in facts.message
    health, message = keeper.health()
    assert health == "degraded" and "reCAPTCHA" in message
    assert facts.screenshot and "needs_human" in facts.screenshot
    sim.hide_recaptcha()  # a person answered it: the keep-alive carries on
    keeper.wait_state("connected", timeout=10)


def test_gpu_limit_connects_without_gpu(keeper: Harness, sim: SimColab) -> None:
    keeper.wait_state("connected", timeout=60)
    sim.set_gpu_limit(True)
    try:
        sim.disconnect(dialog=False)
        sim.wait_for(lambda s: s.runtime == "connected", 10, "connected without GPU")
        click = sim.wait_for(
            lambda s: s.events("click", target="dialog", dialog="gpu_limit"),
            10,
            "the page's record of the click",
        )[-1]
        assert click["button"] == "Connect without GPU"
        assert sim.gpu is False
        facts = keeper.wait(lambda h: h.runtime.state == "connected" and h.runtime, 10)
        assert facts.gpu is False
    finally:
        sim.set_gpu_limit(False)


def test_runtime_reset_then_posted_rerun_runs_the_first_cell(
    keeper: Harness, sim: SimColab
) -> None:
    keeper.wait_state("connected", timeout=60)
    ran: list[str] = []
    sim.on_run_cell = ran.append
    sim.set_run_anyway(True)
    try:
        sim.reset_vm()
        keeper.wait(lambda h: h.runtime.vm_id == sim.vm_id, 5, "new vm id published")
        keeper.post(RerunBootstrap("colab", "test: new VM"))
        sim.wait_for(lambda s: s.runs, 10, "the bootstrap ran")
        sim.wait_for(lambda s: s.events("key", key="Enter"), 5, "the page saw Ctrl+Enter")
        keys = [e for e in sim.events("key") if e["key"] == "Enter" and e["ctrl"]]
        assert keys and keys[-1]["cell"] == 0 and keys[-1]["trusted"]
        # the page posts a click's record and its action separately: either may arrive first
        sim.wait_for(lambda s: s.events("click", dialog="run_anyway"), 5, "the Run anyway click")
        assert sim.events("click", dialog="run_anyway")[-1]["button"] == "Run anyway"
        assert sim.runs == ["first"] and ran == ["first"]
        keeper.wait(lambda h: h.runtime.last_rerun is not None, 5, "last_rerun published")
    finally:
        sim.on_run_cell = None
        sim.set_run_anyway(False)


def test_chromium_killed_is_restarted_without_orphans(keeper: Harness, sim: SimColab) -> None:
    keeper.wait_state("connected", timeout=10)
    worker = keeper.worker()
    old = worker.browser
    old_pids = old.pids()
    loads = sim.count("load")
    os.kill(old.chromium_pid, signal.SIGKILL)
    sim.wait_for(lambda s: s.count("load") > loads, 30, "a new page load")
    keeper.wait(lambda h: h.worker().browser not in (None, old), 30, "a new browser")
    keeper.wait_state("connected", timeout=30)
    survivors = [p for p in old_pids if is_running(p)]
    assert not survivors, f"orphans of the killed browser: {survivors}"
    # the runtime stayed connected server-side: the new page needed no click
    assert not sim.events("action", action="connect_while_connected")
    # every process on the profile belongs to the new browser's session
    on_profile = processes_with_arg(str(old.profile))
    stray = {p for p in on_profile - set(worker.browser.pids()) if is_running(p)}
    assert not stray, f"processes outside the new browser's session: {stray}"
