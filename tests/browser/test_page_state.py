"""The page-state rules, with plain dictionaries in place of a browser."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.browser import colab_dom
from gateway.browser.page_state import PageView, SessionMachine, Settings, Stopped, classify
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
        # an unknown dialog does not decide: the connect button behind it does
        (probe(dialogs=[dialog("Something new", "OK")]), "disconnected"),
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
    view = classify(facts, SEL)
    assert view.kind == "disconnected" and [d.kind for d in view.others] == ["unknown"]


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


# -- several dialogs at once, dialogs the keep-alive closes, refusals, language (issue 23) ----


def mwc(title: str, *buttons: str, text: str = "", classes: str = "") -> dict[str, Any]:
    """A dialog as PROBE_JS reports an ``mwc-dialog``: the first button secondary, the last
    one primary (``slot=primaryAction``)."""
    return {
        "title": title,
        "text": f"{title}\n{text}",
        "tag": "mwc-dialog",
        "classes": classes,
        "buttons": [
            {
                "text": b,
                "slot": "primaryAction" if i == len(buttons) - 1 else "secondaryAction",
                "primary": i == len(buttons) - 1,
            }
            for i, b in enumerate(buttons)
        ],
    }


UPSELL = mwc("Upgrade to Colab Pro", "No thanks", "Upgrade", text="Get more compute units.")
DISCONNECTED = mwc("Runtime disconnected", "Close", "Reconnect")
GPU_IDLE = mwc(
    "Warning",
    "Close",
    "Switch to standard runtime",
    text="You are connected to a GPU runtime, but not utilizing the GPU.",
)
DISALLOWED = mwc(
    "Runtime disconnected",
    "Close",
    "Reconnect",
    text="Your runtime has been disconnected due to executing code that is disallowed in "
    "our free of charge tier.",
)
NO_BACKEND = mwc(
    "Cannot connect to GPU backend",
    "Close",
    "Connect without GPU",
    text="Failed to assign a backend. This may be due to a restriction in your location.",
)


def test_a_disconnect_behind_an_unknown_dialog_decides() -> None:
    view = classify(probe(dialogs=[DISCONNECTED, UPSELL]), SEL)
    assert view.kind == "runtime_disconnected" and view.dialog_index == 0
    (other,) = view.others
    assert (other.index, other.kind, other.buttons) == (1, "unknown", ("No thanks", "Upgrade"))
    # whatever the order in the document
    view = classify(probe(dialogs=[UPSELL, DISCONNECTED]), SEL)
    assert view.kind == "runtime_disconnected" and view.dialog_index == 1


def test_the_connect_button_decides_behind_an_unknown_dialog() -> None:
    view = classify(probe(dialogs=[UPSELL], connect=connected()), SEL)
    assert view.kind == "connected" and view.gpu is True and len(view.others) == 1


def test_an_unknown_dialog_on_top_of_a_disconnect_is_closed_first_never_its_primary() -> None:
    m = machine()
    view = classify(probe(dialogs=[DISCONNECTED, UPSELL]), SEL)
    decision = m.step(view, 1.0)
    close, reconnect = decision.actions
    assert close.name == "close_dialog" and close.dialog_index == 1
    assert close.title == "Upgrade to Colab Pro" and close.button == SEL["text_close"]
    assert reconnect.name == "click_dialog" and reconnect.dialog_index == 0
    assert decision.anomaly == "runtime_disconnected" and decision.new_dialogs
    # a disconnect without a dialog, the button behind the unknown one
    m = machine()
    decision = m.step(classify(probe(dialogs=[UPSELL]), SEL), 1.0)
    assert names(decision) == ["close_dialog", "click_connect"]


def test_an_unknown_dialog_behind_the_one_answered_waits_for_its_grace() -> None:
    m = machine(unknown_dialog_grace=60.0)
    decision = m.step(classify(probe(dialogs=[UPSELL, DISCONNECTED]), SEL), 1.0)
    # closing index 0 first would move the dialog the click is for
    assert names(decision) == ["click_dialog"]


def test_an_unknown_dialog_over_a_connected_runtime_is_recorded_then_closed_after_grace() -> None:
    m = machine(unknown_dialog_grace=60.0)
    view = classify(probe(dialogs=[UPSELL], connect=connected()), SEL)
    first = m.step(view, 10.0)
    assert first.state == "connected" and not first.actions and not first.healthy
    assert first.anomaly == "unknown_dialog"
    assert "dialog 'Upgrade to Colab Pro' [No thanks | Upgrade] is open" in first.message
    assert "closing it in 60s" in first.message
    later = m.step(view, 40.0)
    assert not later.actions and later.anomaly is None and "closing it in 30s" in later.message
    (close,) = m.step(view, 70.0).actions
    assert close.name == "close_dialog" and close.dialog_kind == "unknown"
    # gone: healthy again, and a new dialog of the same words is a new record
    assert m.step(classify(probe(connect=connected()), SEL), 71.0).healthy
    assert m.step(view, 72.0).anomaly == "unknown_dialog"


def test_the_gpu_idle_notice_is_recognised_and_closed_at_once() -> None:
    view = classify(probe(dialogs=[GPU_IDLE], connect=connected()), SEL)
    assert view.kind == "connected" and [d.kind for d in view.others] == ["gpu_idle"]
    decision = machine().step(view, 1.0)
    (close,) = decision.actions
    assert close.name == "close_dialog" and close.dialog_kind == "gpu_idle"
    assert decision.healthy and decision.state == "connected"
    assert "never its switch to CPU" in decision.message


def test_the_signed_out_dialog_is_signed_out() -> None:
    signed_out = mwc(
        "Signed out",
        "Sign in to continue",
        text="You are signed out of your Google account.",
        classes="signed-out-dialog",
    )
    assert classify(probe(dialogs=[signed_out], connect=connected()), SEL).kind == "signed_out"
    by_class = mwc("", "OK", classes="colab-signed-out")
    assert classify(probe(dialogs=[by_class]), SEL).kind == "signed_out"


def test_disallowed_code_stops_and_stays_stopped_until_cleared() -> None:
    view = classify(probe(dialogs=[DISALLOWED]), SEL)
    assert view.kind == "disallowed" and "free of charge tier" in view.detail
    m = machine()
    m.session = "gpu"
    decision = m.step(view, 1.0)
    assert decision.state == "disallowed" and not decision.actions and not decision.healthy
    assert decision.refusal == "disallowed" and decision.anomaly == "disallowed"
    assert "colab-gateway runtime clear gpu" in decision.message
    assert "paid" in decision.message and "remove that code" in decision.message
    assert m.step(view, 5.0).refusal is None  # counted once
    # the dialog gone (a person closed it, or a reload): still no Connect click, nor any
    # closing of other dialogs
    for t, facts in enumerate(
        (probe(), probe(connect=connected()), probe(dialogs=[UPSELL], connect=connected())), 10
    ):
        decision = m.step(classify(facts, SEL), float(t))
        assert decision.state == "disallowed" and not decision.actions
    # a person clears it while Colab's dialog is still open: it is closed, then connected
    m.step(view, 20.0)
    m.clear_stop()
    decision = m.step(view, 21.0)
    (close,) = decision.actions
    assert close.name == "close_dialog" and decision.state == "disconnected"
    assert names(m.step(classify(probe(), SEL), 22.0)) == ["click_connect"]
    # and a new refusal later stops it again
    m.step(classify(probe(connect=connected()), SEL), 30.0)
    assert m.step(view, 40.0).state == "disallowed"


def test_a_restart_reads_the_stop_back() -> None:
    m = machine()
    m.stop(Stopped(5.0, "disallowed in our free of charge tier"))
    decision = m.step(classify(probe(), SEL), 6.0)
    assert decision.state == "disallowed" and not decision.actions


def test_no_backend_waits_with_a_growing_backoff_not_a_click_per_look() -> None:
    view = classify(probe(dialogs=[NO_BACKEND]), SEL)
    assert view.kind == "no_backend"  # not the GPU limit its title names
    m = machine()
    decision = m.step(view, 0.0)
    assert decision.state == "no_backend" and decision.refusal == "no_backend"
    assert names(decision) == ["close_dialog"] and decision.no_backend_failures == 1
    assert "Failed to assign a backend" in decision.message and "in 30s" in decision.message
    disconnected = classify(probe(), SEL)
    for t in (1.0, 5.0, 29.0):
        decision = m.step(disconnected, t)
        assert decision.state == "no_backend" and not decision.actions
    assert names(m.step(disconnected, 30.5)) == ["click_connect"]
    connecting = {"tooltip": "", "text": "Connecting", "disabled": True}
    m.step(classify(probe(connect=connecting), SEL), 31.0)
    decision = m.step(view, 32.0)
    assert decision.no_backend_failures == 2 and "in 60s" in decision.message
    assert "2nd refusal in a row" in decision.message
    assert not m.step(disconnected, 80.0).actions
    assert names(m.step(disconnected, 92.5)) == ["click_connect"]
    # connected: the next refusal waits 30 s again
    assert m.step(classify(probe(connect=connected()), SEL), 100.0).no_backend_failures == 0
    assert "in 30s" in m.step(view, 200.0).message


def test_a_page_in_another_language_is_said_so() -> None:
    pt = probe(lang="pt", connect={"tooltip": "Conectar a um novo ambiente", "text": "Conectar"})
    view = classify(pt, SEL)
    assert view.kind == "wrong_language" and view.language == "pt"
    decision = machine().step(view, 1.0)
    assert decision.state == "wrong_language" and not decision.actions
    assert "'pt'" in decision.message and "English" in decision.message
    # lang says English, the words do not
    en = probe(lang="en", connect={"tooltip": "?", "text": "Conectar T4"})
    assert classify(en, SEL).kind == "wrong_language"
    # an English page with a button of unknown words stays unknown (markup drift)
    assert classify(probe(lang="en-US", connect={"tooltip": "?", "text": "???"}), SEL).kind == (
        "unknown"
    )
    # texts overridden into the page's language are read, and the language is noted
    sel = colab_dom.merged({"text_connected": "Conectado a"})
    tip = {"tooltip": "Conectado a\nPython 3", "text": "RAM", "disabled": False}
    view = classify(probe(lang="pt-BR", connect=tip), sel)
    assert view.kind == "connected"
    assert "not English" in machine().step(view, 1.0).message


def test_unknown_dialogs_are_escaped_and_bounded() -> None:
    hostile = mwc("\x1b[2J" + "x" * 500, "\u202eevil\n", "OK")
    (other,) = classify(probe(dialogs=[hostile], connect=connected()), SEL).others
    assert "\x1b" not in other.title and len(other.title) <= 120
    assert other.buttons[0] == "\\u202eevil\\n"
    assert len(other.raw_title) <= 200


def test_wake_in_names_the_next_thing_due_without_a_page_change() -> None:
    m = machine(unknown_dialog_grace=60.0)
    assert m.wake_in(0.0) is None
    m.step(classify(probe(dialogs=[UPSELL], connect=connected()), SEL), 10.0)
    assert m.wake_in(10.0) == 60.0
    m.step(classify(probe(dialogs=[NO_BACKEND]), SEL), 20.0)
    assert m.wake_in(20.0) == 30.0  # the hold on Connect ends first
