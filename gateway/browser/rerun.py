"""Re-running the bootstrap cell, with fallbacks when Colab's markup has moved.

``rerun: bootstrap`` tries, in order:

1. focus the first cell's editor (``first_cell_editor``) and press Ctrl+Enter;
2. click the first cell's run button (``run_button``);
3. press Run all (Ctrl+F9; its "Run anyway" confirmation is answered by the page state
   machine) - only with ``browser.rerun_fallback_all: true``, because it runs every cell.

A selector that matches nothing is a fact about the page: the outcome names it and the
``browser.selectors`` key that overrides it. Only Selenium errors escape from here, and the
caller decides whether the browser died (restart) or the page refused (report).
"""

from __future__ import annotations

import logging
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

    @property
    def healthy(self) -> bool:
        return bool(self.ran) and not self.missing


def _override_hint(missing: list[str]) -> str:
    keys = " / ".join(f"browser.selectors.{name}" for name in missing)
    return f"override {keys}; see {DOC}"


def describe(ran: str, missing: list[str], unfocusable: bool, fallback_all: bool) -> str:
    """What a person reads in the status after a re-run that needed a fallback."""
    if not missing:
        return ""
    what = []
    for name in missing:
        if name == "first_cell_editor" and unfocusable:
            what.append(f"{name} matched an element that does not take the keyboard focus")
        else:
            what.append(f"{name} matched nothing")
    found = "; ".join(what) + f" ({_override_hint(missing)})"
    if ran == "run_button":
        return f"re-run: {found}; ran the first cell with its run button instead"
    if ran == "run_all" and "first_cell_editor" in missing:
        return f"re-run: {found}; pressed Run all instead (browser.rerun_fallback_all)"
    if ran == "run_all":  # rerun: all, without a place to click for the focus
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


def run_bootstrap(driver: Any, sel: dict[str, str], fallback_all: bool) -> RerunOutcome:
    from selenium.webdriver.common.keys import Keys

    missing: list[str] = []
    focus = driver.execute_script(colab_dom.FOCUS_EDITOR_JS, sel)
    if focus == "ok":
        _press(driver, Keys.ENTER)
        return RerunOutcome("editor")
    unfocusable = focus == "unfocusable"
    missing.append("first_cell_editor")
    ran = ""
    if driver.execute_script(colab_dom.CLICK_RUN_BUTTON_JS, sel):
        ran = "run_button"
    else:
        missing.append("run_button")
        if fallback_all:
            run_all(driver, sel)
            ran = "run_all"
    return RerunOutcome(ran, missing, describe(ran, missing, unfocusable, fallback_all))


def run_all(driver: Any, sel: dict[str, str]) -> RerunOutcome:
    """Escape, a click into the notebook for the focus, Ctrl+F9."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    ActionChains(driver).send_keys(Keys.ESCAPE).perform()
    missing = []
    targets = driver.find_elements(By.CSS_SELECTOR, sel["notebook_focus"])
    if targets:
        try:
            targets[0].click()
        except WebDriverException as exc:  # focus helps, but Ctrl+F9 may work without
            log.debug("clicking into the notebook failed: %s", type(exc).__name__)
    else:
        missing.append("notebook_focus")
    _press(driver, Keys.F9)
    return RerunOutcome("run_all", missing, describe("run_all", missing, False, True))
