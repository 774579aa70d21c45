"""The selector canary's rules and the re-run's messages, with plain dictionaries."""

from __future__ import annotations

from typing import Any

from gateway.browser.canary import Canary, load_names, message
from gateway.browser.rerun import RerunOutcome, describe

ALL_FOUND = {
    "page_marker": True,
    "connect_host": True,
    "connect_button": True,
    "connect_tooltip_attr": True,
    "run_button": True,
    "first_cell_editor": True,
    "notebook_focus": True,
}


def probe(dialogs: list[dict[str, Any]] | None = None, **found: Any) -> dict[str, Any]:
    return {"found": {**ALL_FOUND, **found}, "dialogs": dialogs or [], "stray_dialogs": []}


def fresh(rerun: str = "bootstrap") -> Canary:
    canary = Canary(load_names(rerun))
    canary.page_loaded(100.0)
    return canary


def test_everything_found_is_a_verdict_at_once() -> None:
    canary = fresh()
    canary.look(probe(), "connected", 100.5)
    assert canary.checked and canary.missing == [] and canary.warning == ""


def test_missing_structures_count_only_after_the_grace() -> None:
    canary = fresh()
    canary.look(probe(first_cell_editor=False), "connected", 101.0)
    assert not canary.checked and canary.missing == []  # Colab may still be rendering
    canary.look(probe(first_cell_editor=False), "connected", 100.0 + canary.grace)
    assert canary.missing == ["first_cell_editor"]
    assert canary.warning == (
        "Colab's page changed: first_cell_editor match nothing; see docs/browser.md"
    )
    canary.look(probe(), "connected", 120.0)  # rendered late after all: the warning goes
    assert canary.missing == []


def test_a_reload_keeps_the_verdict_until_the_new_page_has_one() -> None:
    canary = fresh()
    canary.look(probe(connect_host=False), "loading", 130.0)
    canary.page_loaded(200.0)
    canary.look(probe(page_marker=False, connect_host=False), "loading", 201.0)
    assert not canary.checked and canary.missing == ["connect_host"]
    canary.look(probe(), "connected", 203.0)
    assert canary.checked and canary.missing == []


def test_a_button_that_cannot_be_checked_is_not_named() -> None:
    canary = fresh()
    canary.look(
        probe(connect_host=False, connect_button=None, connect_tooltip_attr=None),
        "loading",
        130.0,
    )
    assert canary.missing == ["connect_host"]


def test_no_verdict_on_pages_that_are_not_the_notebook() -> None:
    canary = fresh()
    canary.look(probe(page_marker=False, connect_host=False), "loading", 130.0)
    canary.look(probe(connect_host=False), "signed_out", 131.0)
    canary.look(probe(connect_host=False), "load_failed", 132.0)
    assert not canary.checked and canary.missing == []


def test_cell_selectors_matter_only_to_the_rerun_mode_that_uses_them() -> None:
    assert "first_cell_editor" in load_names("bootstrap")
    assert "first_cell_editor" not in load_names("all")
    assert "run_button" not in load_names("never")
    canary = fresh("never")
    canary.look(probe(first_cell_editor=False, run_button=False), "connected", 130.0)
    assert canary.checked and canary.missing == []


def test_dialog_shapes_are_judged_while_shown_and_stay_until_the_next_load() -> None:
    canary = fresh()
    buttonless = {"title": "Are you still there?", "buttons": []}
    canary.look(probe([buttonless]), "still_there", 101.0)
    assert canary.missing == []  # being built, perhaps
    canary.look(probe([buttonless]), "still_there", 102.5)
    assert canary.missing == ["dialog_buttons"]
    canary.look(probe(), "connected", 103.0)  # gone (a reload will clear it), still known
    assert canary.missing == ["dialog_buttons"]
    canary.page_loaded(200.0)
    assert canary.missing == [] and not canary.shapes_checked


def test_a_dialog_without_primary_and_a_stray_dialog_are_named() -> None:
    canary = fresh()
    no_primary = {"title": "x", "buttons": [{"text": "OK", "primary": False}]}
    stray = {**probe([no_primary]), "stray_dialogs": ["colab-dialog"]}
    canary.look(stray, "unknown_dialog", 101.0)
    canary.look(stray, "unknown_dialog", 103.0)
    assert canary.missing == ["dialog", "dialog_primary"] and canary.shapes_checked


def test_a_well_formed_dialog_is_judged_and_fine() -> None:
    canary = fresh()
    good = {"title": "x", "buttons": [{"text": "OK", "primary": True}]}
    canary.look(probe([good]), "unknown_dialog", 101.0)
    canary.look(probe([good]), "unknown_dialog", 103.0)
    assert canary.shapes_checked and canary.missing == []


def test_message_names_every_selector() -> None:
    assert message(["connect_host", "dialog"]) == (
        "Colab's page changed: connect_host, dialog match nothing; see docs/browser.md"
    )


def test_rerun_messages_name_the_selector_and_its_override() -> None:
    by_button = describe("run_button", ["first_cell_editor"], False, False)
    assert "first_cell_editor matched nothing" in by_button
    assert "override browser.selectors.first_cell_editor" in by_button
    assert "run button instead" in by_button
    nothing = describe("", ["first_cell_editor", "run_button"], False, False)
    assert nothing.startswith("could not re-run the bootstrap")
    assert "browser.selectors.run_button" in nothing
    assert "browser.rerun_fallback_all: false" in nothing
    focus = describe("run_all", ["notebook_focus"], False, False)
    assert "notebook_focus matched nothing" in focus and "Run all) anyway" in focus
    container = describe("run_button", ["first_cell_editor"], True, False)
    assert "does not take the keyboard focus" in container
    assert RerunOutcome("editor").healthy
    assert not RerunOutcome("run_button", ["first_cell_editor"]).healthy
    assert not RerunOutcome("").healthy
