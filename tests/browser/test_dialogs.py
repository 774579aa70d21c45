"""Dialogs the keep-alive does not answer, and Colab's refusals, with real headless Chromium
against the simulated page's mwc-dialogs (issue 23): an unknown dialog never stalls it,
the GPU-idle notice is closed and never switches the runtime to CPU, disallowed code stops
the session (across a restart, until `colab-gateway runtime clear`), "Failed to assign a
backend" waits with a growing backoff, the signed-out dialog is signed out, and a page in
another language is said to be one.

Every test asserts what the PAGE recorded (clicks, the buttons clicked, what the server
did with them), not only what the component believes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import wait_for_looks

from gateway.backoff import Backoff
from gateway.browser import stop_flag
from gateway.config import Duration
from gateway.sim import SimColab
from gateway.sim.runner import BrowserRunner
from gateway.vocabulary import COLAB_REFUSALS, RerunBootstrap

pytestmark = pytest.mark.slow


@pytest.fixture
def sim() -> Iterator[SimColab]:
    with SimColab(gpu=True) as sim:
        yield sim


def _runner(tmp_path: Path, sim: SimColab, **browser: object) -> BrowserRunner:
    browser.setdefault("unknown_dialog_grace", Duration(600))  # tests close it on purpose
    return BrowserRunner(tmp_path, sim, **browser)


@pytest.fixture
def runner(sim: SimColab, tmp_path: Path) -> Iterator[BrowserRunner]:
    harness = _runner(tmp_path, sim)
    yield harness
    harness.stop()


def _answered(sim: SimColab, kind: str) -> list[dict[str, object]]:
    return sim.events("click", target="dialog", dialog=kind)


def test_a_disconnect_above_an_unknown_notice_is_answered_within_2s(
    runner: BrowserRunner, sim: SimColab
) -> None:
    runner.wait_state("connected", timeout=60)
    sim.show_dialog("notice")  # an upsell that stays open
    runner.wait(lambda r: "unknown dialog" in r.runtime.message, 10, "the notice recorded")
    old_vm = sim.vm_id
    sim.disconnect(dialog=True)  # "Runtime disconnected" opens above the notice
    sim.wait_for(lambda s: s.runtime == "connected" and s.vm_id != old_vm, 10, "reconnect")
    shown = sim.events("shown", what="dialog", value="runtime_disconnected")[-1]
    click = _answered(sim, "runtime_disconnected")[-1]
    assert click["button"] == "Reconnect"
    assert 0 <= int(click["t"]) - int(shown["t"]) <= 2000, "reaction beyond 2 s"
    # the notice was left alone (its grace is 10 min here): never its primary "OK"
    assert not _answered(sim, "notice") and sim.dialogs_open() == ["notice"]


def test_a_notice_over_the_connect_button_is_closed_never_its_primary(
    runner: BrowserRunner, sim: SimColab
) -> None:
    runner.wait_state("connected", timeout=60)
    sim.show_dialog("notice")
    runner.wait(lambda r: "unknown dialog" in r.runtime.message, 10, "the notice recorded")
    connects = sim.count("click", target="connect")
    sim.disconnect(dialog=False)  # the button says Reconnect, behind the notice
    sim.wait_for(lambda s: s.runtime == "connected", 10, "connected again")
    assert sim.count("click", target="connect") == connects + 1
    (closed,) = _answered(sim, "notice")
    assert closed["button"] == "Later"  # the secondary action, not "OK"
    assert sim.dialogs_open() == []


def test_an_unknown_dialog_is_recorded_then_closed_after_its_grace(
    sim: SimColab, tmp_path: Path
) -> None:
    runner = _runner(tmp_path, sim, unknown_dialog_grace=Duration(2))
    try:
        runner.wait_state("connected", timeout=60)
        sim.show_dialog("notice")
        facts = runner.wait(
            lambda r: "unknown dialog" in r.runtime.message and r.runtime, 10, "recorded"
        )
        assert "'Colab has a new feature' [Later | OK]" in facts.message
        assert facts.state == "connected"  # the runtime is, and the healer may re-run it
        assert facts.screenshot and "unknown_dialog" in facts.screenshot
        assert Path(facts.screenshot).exists() and facts.dialog_at
        health, message = runner.health()
        assert health == "degraded" and "Colab has a new feature" in message
        details = runner.state.component("browser").details["last_dialog"]
        assert details["title"] == "Colab has a new feature"
        assert details["buttons"] == ["Later", "OK"] and details["kind"] == "unknown"
        sim.wait_for(lambda s: _answered(s, "notice"), 15, "the notice closed after its grace")
        assert [c["button"] for c in _answered(sim, "notice")] == ["Later"]
        runner.wait(lambda r: r.health()[0] == "ok", 10, "healthy again")
    finally:
        runner.stop()


def test_the_gpu_idle_notice_is_closed_and_the_runtime_stays_on_gpu(
    runner: BrowserRunner, sim: SimColab
) -> None:
    runner.wait_state("connected", timeout=60)
    for shown in (1, 2):  # it comes back every 15 minutes on an idle GPU runtime
        sim.show_dialog("gpu_idle")
        sim.wait_for(lambda s: s.dialogs_open() == [], 10, "the GPU-idle notice closed")
        # The page posts the click and the closing separately: wait for the click too.
        sim.wait_for(
            lambda s, n=shown: len(_answered(s, "gpu_idle")) == n, 10, "its click recorded"
        )
    assert [c["button"] for c in _answered(sim, "gpu_idle")] == ["Close", "Close"]
    assert not sim.events("action", action="switched_to_cpu")
    assert sim.gpu is True and sim.runtime == "connected"
    facts = runner.wait(lambda r: r.runtime.state == "connected" and r.runtime, 10)
    assert facts.gpu is True


def test_the_signed_out_dialog_is_signed_out(runner: BrowserRunner, sim: SimColab) -> None:
    runner.wait_state("connected", timeout=60)
    sim.show_dialog("signed_out")
    facts = runner.wait_state("signed_out", timeout=10)
    assert "colab-gateway login" in facts.message
    wait_for_looks(runner, 2)
    assert not _answered(sim, "signed_out") and sim.dialogs_open() == ["signed_out"]


def test_disallowed_code_stops_across_a_restart_until_cleared(
    sim: SimColab, tmp_path: Path
) -> None:
    runner = _runner(tmp_path, sim)
    try:
        runner.wait_state("connected", timeout=60)
        connects = sim.count("click", target="connect")
        sim.disconnect(kind="disallowed")
        facts = runner.wait_state("disallowed", timeout=10)
        assert "colab-gateway runtime clear colab" in facts.message
        assert "paid" in facts.message and "free of charge tier" in facts.message
        assert facts.screenshot and "disallowed" in facts.screenshot
        health, message = runner.health()
        assert health == "degraded" and "runtime clear colab" in message
        measures = runner.state.view().measures[COLAB_REFUSALS]
        assert measures == {("colab", "disallowed"): 1.0}
        runner.post(RerunBootstrap("colab", "test: the healer asks"))
        wait_for_looks(runner, 3)
        assert not _answered(sim, "disallowed"), "Reconnect clicked on a disallowed runtime"
        assert sim.count("click", target="connect") == connects and sim.runs == []
        flag = stop_flag.flag_path(runner.paths.state_dir, "colab")
        assert "free of charge tier" in json.loads(flag.read_text())["detail"]
    finally:
        runner.stop()
    # A restart of the daemon does not resume the loop: its page shows Connect, unclicked.
    sim.close_dialog()
    loads = sim.count("load")
    runner = _runner(tmp_path, sim)
    try:
        sim.wait_for(lambda s: s.count("load") > loads, 60, "the new browser's page")
        runner.wait_state("disallowed", timeout=30)
        wait_for_looks(runner, 3)
        assert sim.count("click", target="connect") == connects and sim.runtime == "disconnected"
        # a person clears it: the keep-alive connects again
        assert stop_flag.clear(runner.paths.state_dir, "colab") is not None
        sim.wait_for(lambda s: s.runtime == "connected", 15, "connected after the clear")
        runner.wait_state("connected", timeout=10)
    finally:
        runner.stop()


def test_a_cleared_stop_closes_colabs_dialog_never_its_reconnect(
    sim: SimColab, tmp_path: Path
) -> None:
    runner = _runner(tmp_path, sim)
    try:
        runner.wait_state("connected", timeout=60)
        sim.disconnect(kind="disallowed")
        runner.wait_state("disallowed", timeout=10)
        stop_flag.clear(runner.paths.state_dir, "colab")
        sim.wait_for(lambda s: s.runtime == "connected", 15, "connected after the clear")
        assert [c["button"] for c in _answered(sim, "disallowed")] == ["Close"]
        sim.disconnect(kind="disallowed")  # the same code again: stopped again
        runner.wait_state("disallowed", timeout=10)
        assert stop_flag.present(runner.paths.state_dir, "colab")
    finally:
        runner.stop()


def test_no_backend_waits_longer_after_each_refusal(sim: SimColab, tmp_path: Path) -> None:
    runner = _runner(tmp_path, sim)
    try:
        runner.wait_state("connected", timeout=60)
        machine = runner.worker().sessions[0].machine
        machine.no_backend_backoff = Backoff(2.0, 60.0)  # 2 s, 4 s, 8 s… instead of 30 s
        sim.set_no_backend(True)
        connects = sim.count("click", target="connect")
        sim.disconnect(dialog=False)
        for refusals in (1, 2, 3):
            facts = runner.wait(
                lambda r, n=refusals: (
                    (r.runtime.state == "no_backend" and r.runtime.no_backend_failures == n)
                    and r.runtime
                ),
                30,
                f"refusal {refusals}",
            )
            assert facts.state == "no_backend" and "Failed to assign a backend" in facts.message
            # one Connect click per refusal, not one per look
            assert sim.count("click", target="connect") == connects + refusals
            assert sim.count("action", action="no_backend") == refusals
        assert "3rd refusal in a row" in facts.message and "in 8s" in facts.message
        # each refusal's dialog was closed with its Close button, never "OK"
        assert {c["button"] for c in _answered(sim, "no_backend")} == {"Close"}
        measures = runner.state.view().measures[COLAB_REFUSALS]
        assert measures[("colab", "no_backend")] >= 3
        sim.set_no_backend(False)
        runner.wait(lambda r: r.runtime.state == "connected", 30, "connected at last")
        assert runner.runtime.no_backend_failures == 0
    finally:
        runner.stop()


def test_a_page_in_another_language_is_said_so(tmp_path: Path) -> None:
    # The keep-alive asks for English (hl=en); this account's language wins anyway.
    with SimColab(gpu=True, language="pt", language_over_hl=True) as sim:
        runner = _runner(tmp_path, sim)
        try:
            facts = runner.wait_state("wrong_language", timeout=60)
            assert "another language" in facts.message and "English" in facts.message
            wait_for_looks(runner, 2)
            assert sim.count("click") == 0  # nothing read, nothing clicked
        finally:
            runner.stop()


def test_an_unknown_dialog_without_buttons_it_can_read_is_closed_with_escape(
    tmp_path: Path,
) -> None:
    # dialog buttons the `dialog_buttons` selector does not match (gm-text-button): the
    # keep-alive sees no button it could take for a secondary action
    with SimColab(gpu=True, variant="dialog_buttons") as sim:
        runner = _runner(tmp_path, sim, unknown_dialog_grace=Duration(2))
        try:
            runner.wait_state("connected", timeout=60)
            sim.show_dialog("notice")
            sim.wait_for(lambda s: s.dialogs_open() == [], 15, "the notice closed")
            assert sim.events("action", action="dialog_notice_escape")
            # The page posts the key and the closing separately: wait for the key too.
            sim.wait_for(
                lambda s: any(e["key"] == "Escape" for e in s.events("key")), 10, "Escape seen"
            )
            assert not _answered(sim, "notice")  # no button of it was clicked
            escape = [e for e in sim.events("key") if e["key"] == "Escape"][-1]
            assert escape["trusted"]  # a real key, as a person's
        finally:
            runner.stop()
