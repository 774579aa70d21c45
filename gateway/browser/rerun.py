"""Re-running the bootstrap cell, with fallbacks when Colab's markup has moved.

Everything is scoped to the FIRST code cell (``code_cell``): Colab builds a cell's editor
lazily, so the document's first editor may belong to another cell, which would run instead.
``rerun: bootstrap`` tries, in order:

1. focus that cell's editor (``first_cell_editor``; a lazy editor's placeholder,
   ``lazy_editor``, is clicked first so that Colab builds it) and press Ctrl+Enter;
2. click that cell's run button (``run_button``) - never while the cell runs
   (``running_marker``): the same click interrupts a running cell;
3. press Run all (Ctrl+F9 with the focus inside the notebook, not on ``<body>`` nor in an
   output frame) - only with ``browser.rerun_fallback_all: true``, because it runs every
   cell.

"Run anyway", which Colab asks on the first run of any cell after a load, is answered by
the page state machine whichever way the run started. A selector that matches nothing is a
fact about the page: the outcome names it and the ``browser.selectors`` key that overrides
it. Only Selenium errors escape from here, and the caller decides whether the browser died
(restart) or the page refused (report).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.browser import colab_dom

log = logging.getLogger(__name__)

DOC = "docs/browser.md"


@dataclass(frozen=True)
class RerunOutcome:
    ran: str  # "editor" | "run_button" | "run_all" | "" (nothing ran)
    missing: list[str] = field(default_factory=list)  # selector names that matched nothing
    message: str = ""
    unfocusable: bool = False  # run_all: notebook_focus matched, but took no focus

    @property
    def healthy(self) -> bool:
        return bool(self.ran) and not self.missing


def _override_hint(missing: list[str]) -> str:
    keys = " / ".join(f"browser.selectors.{name}" for name in missing)
    return f"override {keys}; see {DOC}"


def describe(
    ran: str,
    missing: list[str],
    unfocusable: bool,
    fallback_all: bool,
    *,
    running: bool = False,
    notebook_unfocusable: bool = False,
) -> str:
    """What a person reads in the status after a re-run that needed a fallback.
    ``unfocusable``: first_cell_editor matched but took no focus; ``notebook_unfocusable``:
    the same for notebook_focus; ``running``: the first cell runs, so it was not clicked."""
    if not missing:
        return ""
    what = []
    for name in missing:
        if (name == "first_cell_editor" and unfocusable) or (
            name == "notebook_focus" and notebook_unfocusable
        ):
            what.append(f"{name} matched an element that does not take the keyboard focus")
        else:
            what.append(f"{name} matched nothing")
    found = "; ".join(what) + f" ({_override_hint(missing)})"
    if ran == "run_button":
        return f"re-run: {found}; ran the first cell with its run button instead"
    if running:
        return (
            f"re-run: {found}; the first cell is still running, and its run button would "
            "interrupt it: not clicked, the next request tries again"
        )
    if ran == "run_all" and "notebook_focus" not in missing:
        return f"re-run: {found}; pressed Run all instead (browser.rerun_fallback_all)"
    if ran == "run_all":  # no place inside the notebook took the focus
        return f"re-run: {found}; pressed Ctrl+F9 (Run all) anyway"
    off = "" if fallback_all else "; Run all is off (browser.rerun_fallback_all: false)"
    return f"could not re-run the bootstrap: {found}{off}"


def _press(driver: Any, *keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    chain = ActionChains(driver).key_down(Keys.CONTROL)
    for key in keys:
        chain = chain.send_keys(key)
    chain.key_up(Keys.CONTROL).perform()


LAZY_EDITOR_WAIT = 3.0  # how long Colab may take to build an editor after the click
LAZY_EDITOR_POLL = 0.1


def focus_first_editor(
    driver: Any, sel: dict[str, str], meanwhile: Callable[[], None] | None = None
) -> str:
    """ "ok", "no_cell", "missing" or "unfocusable" (``FOCUS_EDITOR_JS``); a lazy editor is
    clicked (a real click, in the editor's place: never the run button nor an output) and
    looked for again until it is built, within ``LAZY_EDITOR_WAIT``; ``meanwhile`` is called
    while waiting (the keep-alive looks at its other windows, then selects this one again)."""
    from selenium.common.exceptions import WebDriverException

    result = driver.execute_script(colab_dom.FOCUS_EDITOR_JS, sel)
    if isinstance(result, str):
        return result
    try:
        result.click()
    except WebDriverException as exc:  # covered by a dialog, say: the editor stays lazy
        log.debug("clicking the first cell's lazy editor failed: %s", type(exc).__name__)
        return "missing"
    deadline = time.monotonic() + LAZY_EDITOR_WAIT
    while True:
        result = driver.execute_script(colab_dom.FOCUS_EDITOR_JS, sel)
        if isinstance(result, str):
            return result
        if time.monotonic() >= deadline:
            return "missing"  # still a placeholder
        if meanwhile is not None:
            meanwhile()
        time.sleep(LAZY_EDITOR_POLL)


def run_bootstrap(
    driver: Any,
    sel: dict[str, str],
    fallback_all: bool,
    meanwhile: Callable[[], None] | None = None,
) -> RerunOutcome:
    from selenium.webdriver.common.keys import Keys

    focus = focus_first_editor(driver, sel, meanwhile)
    if focus == "ok":
        _press(driver, Keys.ENTER)
        return RerunOutcome("editor")
    if focus == "no_cell":
        missing = ["code_cell"]  # the run button is looked for in the cell: no cell, no button
        clicked = "no_cell"
    else:
        missing = ["first_cell_editor"]
        clicked = driver.execute_script(colab_dom.CLICK_RUN_BUTTON_JS, sel)
    unfocusable = focus == "unfocusable"
    if clicked == "clicked":
        return RerunOutcome(
            "run_button", missing, describe("run_button", missing, unfocusable, fallback_all)
        )
    if clicked == "running":
        message = describe("", missing, unfocusable, fallback_all, running=True)
        return RerunOutcome("", missing, message)
    if clicked == "missing":
        missing.append("run_button")
    ran = ""
    notebook_unfocusable = False
    if fallback_all:
        outcome = run_all(driver, sel)
        missing += outcome.missing
        notebook_unfocusable = outcome.unfocusable
        ran = "run_all"
    message = describe(
        ran, missing, unfocusable, fallback_all, notebook_unfocusable=notebook_unfocusable
    )
    return RerunOutcome(ran, missing, message)


def run_all(driver: Any, sel: dict[str, str]) -> RerunOutcome:
    """Escape, the focus inside the notebook, Ctrl+F9."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    ActionChains(driver).send_keys(Keys.ESCAPE).perform()
    alternatives = selector_alternatives(sel["notebook_focus"])
    focus = driver.execute_script(colab_dom.FOCUS_NOTEBOOK_JS, sel, alternatives)
    missing = [] if focus == "ok" else ["notebook_focus"]
    unfocusable = focus == "unfocusable"
    _press(driver, Keys.F9)  # the focus helps, but Ctrl+F9 may work without
    message = describe("run_all", missing, False, True, notebook_unfocusable=unfocusable)
    return RerunOutcome("run_all", missing, message, unfocusable)


def selector_alternatives(selector: str) -> list[str]:
    """The parts of a CSS selector list, in the order written (commas inside brackets,
    parentheses or quotes belong to their part)."""
    parts: list[str] = []
    current: list[str] = []
    depth, quote = 0, ""
    for char in selector:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "([":
            depth += 1
        elif char in ")]" and depth:
            depth -= 1
        elif char == "," and not depth:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    parts.append("".join(current).strip())
    return [part for part in parts if part]
