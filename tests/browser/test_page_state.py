"""The page-state rules, with plain dictionaries in place of a browser."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.browser import colab_dom
from gateway.browser.page_state import PageView, SessionMachine, Settings, classify
from gateway.config import BrowserConfig

SEL = colab_dom.merged()


def probe(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "url": "https://colab.research.google.com/drive/abc",
        "error_page": False,
        "page_marker": True,
        "connect": {"tooltip": "Connect to a new runtime", "text": "Connect", "disabled": False},
        "dialogs": [],
        "recaptcha": False,
        "running": False,
        "vm_id": None,
        "signed_out_element": False,
        "body_excerpt": "",
    }
    base.update(overrides)
    return base


def connected(gpu: bool = True) -> dict[str, Any]:
    backend = "Python 3 Google Compute Engine backend" + (" (GPU)" if gpu else "")
    tip = f"Connected to\n{backend}\nRAM: 0.94 GB/12.67 GB\nDisk: 26 GB/107 GB"
    return {"tooltip": tip, "text": "RAM Disk", "disabled": False}


def dialog(title: str, *buttons: str, text: str = "") -> dict[str, Any]:
    return {
        "title": title,
        "text": f"{title}\n{text}",
        "buttons": [
            {"text": b, "slot": "", "primary": i == len(buttons) - 1} for i, b in enumerate(buttons)
        ],
    }


@pytest.mark.parametrize(
    ("facts", "kind"),
    [
        (probe(), "disconnected"),
        (probe(connect={"tooltip": "Click to connect", "text": "Reconnect"}), "disconnected"),
        (probe(connect=connected()), "connected"),
        (
            probe(connect={"tooltip": "Waiting to finish the current execution.", "text": "Busy"}),
            "connected",
        ),
        (probe(connect={"tooltip": "", "text": "Connecting", "disabled": True}), "connecting"),
        (
            probe(url="https://accounts.google.com/ServiceLogin?continue=x", connect=None),
            "signed_out",
        ),
        (probe(connect=None, body_excerpt="Sign in to continue to Colaboratory"), "signed_out"),
        (probe(error_page=True, url="chrome-error://chromewebdata/"), "load_failed"),
        (probe(connect=None), "loading"),
        (probe(recaptcha=True, connect=connected()), "recaptcha"),
        (
            probe(dialogs=[dialog("Runtime disconnected", "Close", "Reconnect")]),
            "runtime_disconnected",
        ),
        (probe(dialogs=[dialog("Are you still there?", "Yes")]), "still_there"),
        (
            probe(
                dialogs=[
                    dialog(
                        "Cannot connect to GPU backend",
                        "Close",
                        "Connect without GPU",
                        text="due to usage limits",
                    )
                ]
            ),
            "gpu_limit",
        ),
        (
            probe(
                dialogs=[
                    dialog(
                        "Too many sessions",
                        "Cancel",
                        "Manage sessions",
                        text="You have too many active sessions.",
                    )
                ]
            ),
            "too_many_sessions",
        ),
        (
            probe(dialogs=[dialog("Warning: not authored by Google", "Cancel", "Run anyway")]),
            "run_anyway",
        ),
        (probe(dialogs=[dialog("Something new", "OK")]), "unknown_dialog"),
        (probe(connect={"tooltip": "??", "text": "???"}), "unknown"),
    ],
)
def test_classify(facts: dict[str, Any], kind: str) -> None:
    assert classify(facts, SEL).kind == kind


def test_classify_reads_gpu_and_busy() -> None:
    assert classify(probe(connect=connected(gpu=True)), SEL).gpu is True
    view = classify(probe(connect=connected(gpu=False), running=True), SEL)
    assert view.gpu is False and view.busy is True


def test_overridden_texts_are_used() -> None:
    sel = colab_dom.merged({"text_still_there": "Noch da?"})
    facts = probe(dialogs=[dialog("Noch da?", "Ja")])
    assert classify(facts, sel).kind == "still_there"
    assert classify(facts, SEL).kind == "unknown_dialog"


def test_unknown_selector_name_is_an_error() -> None:
    with pytest.raises(colab_dom.UnknownSelector, match="connect_hots"):
        colab_dom.merged({"connect_hots": "x"})


def machine(**settings: Any) -> SessionMachine:
    """A machine with these settings: the page machine's own timings, or BrowserConfig's."""
    own = {key: settings.pop(key) for key in ("click_retry", "settle") if key in settings}
    own.setdefault("settle", 0.0)
    m = SessionMachine(SEL, Settings(BrowserConfig(**settings), **own))
    m.page_loaded(0.0)
    return m


def names(decision: Any) -> list[str]:
    return [a.name for a in decision.actions]


def test_connect_clicked_only_when_not_connected() -> None:
    m = machine()
    assert names(m.step(PageView("disconnected"), 1.0)) == ["click_connect"]
    # the page did not react: no second click within click_retry
    assert names(m.step(PageView("disconnected"), 2.0)) == []
    assert names(m.step(PageView("disconnected"), 4.5)) == ["click_connect"]
    assert names(m.step(PageView("connecting"), 5.0)) == []
    decision = m.step(PageView("connected", gpu=True), 6.0)
    assert names(decision) == [] and decision.state == "connected" and decision.gpu is True
    # the page moved on: an immediate disconnect is answered at once
    assert names(m.step(PageView("disconnected"), 6.1)) == ["click_connect"]


def test_vm_id_heuristic_changes_only_after_our_reconnect() -> None:
    m = machine()
    m.step(PageView("connected"), 1.0)  # a page that comes up connected
    first = m.vm_id
    assert first
    m.page_loaded(2.0)  # a reload: the same VM
    m.step(PageView("connected"), 3.0)
    assert m.vm_id == first
    m.step(PageView("runtime_disconnected"), 4.0)
    m.step(PageView("connected"), 5.0)
    assert m.vm_id != first
    # a vm id shown by the page wins
    m.step(PageView("connected", vm_id="vm-x"), 6.0)
    assert m.vm_id == "vm-x"


def test_recaptcha_dismissed_up_to_max_then_needs_human() -> None:
    m = machine(recaptcha_max=2, recaptcha_window=100.0)
    t = 1.0
    clicks = 0
    decision = None
    for _ in range(6):
        decision = m.step(PageView("recaptcha"), t)
        clicks += names(decision).count("dismiss_recaptcha")
        m.step(PageView("connected"), t + 0.5)
        t += 1.0
    decision = m.step(PageView("recaptcha"), t)
    assert clicks == 2
    assert decision.state == "needs_human" and not decision.actions
    # after the window, the count starts again
    assert names(m.step(PageView("recaptcha"), t + 200)) == ["dismiss_recaptcha"]


def test_needs_human_is_an_anomaly_once() -> None:
    m = machine(recaptcha_max=1)
    assert m.step(PageView("recaptcha"), 1.0).anomaly == "recaptcha"
    assert m.step(PageView("recaptcha"), 5.0).anomaly == "needs_human"
    assert m.step(PageView("recaptcha"), 9.0).anomaly is None


def test_gpu_limit_connect_without_gpu() -> None:
    m = machine()
    decision = m.step(PageView("gpu_limit", dialog_index=0), 1.0)
    (action,) = decision.actions
    assert action.name == "click_dialog" and "Connect without GPU" in action.button


def test_gpu_limit_wait_holds_connect_clicks() -> None:
    m = machine(on_gpu_limit="wait", limit_wait=600.0)
    (action,) = m.step(PageView("gpu_limit"), 1.0).actions
    assert action.button == SEL["text_close"]
    decision = m.step(PageView("disconnected"), 2.0)
    assert decision.state == "gpu_limit" and not decision.actions
    assert "10 min" in decision.message
    assert names(m.step(PageView("disconnected"), 602.0)) == ["click_connect"]


def test_too_many_sessions_closes_and_waits() -> None:
    m = machine(limit_wait=300.0)
    decision = m.step(PageView("too_many_sessions"), 1.0)
    assert decision.state == "too_many_sessions" and "Manage sessions" in decision.message
    assert m.step(PageView("disconnected"), 2.0).actions == ()


def test_signed_out_reports_login_and_clicks_nothing() -> None:
    decision = machine().step(PageView("signed_out"), 1.0)
    assert decision.message == "Google sign-in needed: run colab-gateway login"
    assert not decision.actions and not decision.healthy and decision.anomaly == "signed_out"


def test_loading_too_long_reloads_with_backoff() -> None:
    m = machine(page_timeout=10.0)
    assert m.step(PageView("loading"), 5.0).state == "loading"
    decision = m.step(PageView("loading"), 40.0)
    assert decision.state == "load_failed" and names(decision) == ["reload"]
    m.page_loaded(40.0)
    assert names(m.step(PageView("load_failed"), 41.0)) == []  # backoff: 10 s after 1 failure
    assert names(m.step(PageView("load_failed"), 50.0)) == ["reload"]
    m.page_loaded(50.0)
    assert names(m.step(PageView("load_failed"), 65.0)) == []  # then 20 s
    assert names(m.step(PageView("load_failed"), 70.0)) == ["reload"]


def test_stuck_connecting_reloads() -> None:
    m = machine(connect_timeout=30.0)
    m.step(PageView("connecting"), 1.0)
    assert names(m.step(PageView("connecting"), 40.0)) == ["reload"]


def test_reload_due() -> None:
    m = machine(reload_every=100.0)
    assert not m.reload_due(50.0) and m.reload_due(100.0)


def test_no_connect_click_while_a_fresh_page_settles() -> None:
    m = machine(settle=2.0)
    decision = m.step(PageView("disconnected"), 1.0)
    assert not decision.actions and decision.state == "loading"
    assert m.settling(1.0) and not m.settling(2.5)
    assert names(m.step(PageView("disconnected"), 2.5)) == ["click_connect"]
    # a dialog is answered at once, settling or not
    m.page_loaded(10.0)
    assert names(m.step(PageView("runtime_disconnected"), 10.1)) == ["click_dialog"]
    # once the reloaded page showed its runtime, a disconnect is answered at once
    m.page_loaded(20.0)
    m.step(PageView("connected"), 20.2)
    assert names(m.step(PageView("disconnected"), 20.4)) == ["click_connect"]
