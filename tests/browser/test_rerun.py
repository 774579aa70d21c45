"""Re-running the first cell, and only it: real Chromium against the simulated page's lazy
editors, running cells, output frames, Run all and "Run anyway" (the pure parts are in
test_rerun_units.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_until
from selenium.webdriver.common.by import By

from gateway.browser import colab_dom, launch, rerun
from gateway.config import BrowserConfig
from gateway.sim import SimColab
from gateway.sim.runner import BrowserRunner
from gateway.vocabulary import RerunBootstrap

# -- real Chromium against the simulated page -------------------------------------------------
#
# The page (gateway/sim) draws Colab's cells as the evidence shows them: the first code
# cell's editor is lazy (a placeholder until the cell is clicked) while the second cell's is
# already built, so the document's first editor is the second cell's; the run button
# interrupts a running cell; outputs are iframes that swallow keys; Ctrl+F9 runs all only
# with the focus inside .notebook-cell-list; "Run anyway" comes on the first run of any
# cell after a load.


def runs_of(sim: SimColab) -> list[dict[str, Any]]:
    return sim.events("action", action="run")


def ctrl_keys(sim: SimColab, key: str) -> list[dict[str, Any]]:
    return [e for e in sim.events("key", key=key) if e["ctrl"]]


@pytest.fixture
def runners() -> Iterator[list[BrowserRunner]]:
    started: list[BrowserRunner] = []
    yield started
    for runner in started:
        runner.stop()


def keeper(
    tmp_path: Path, sim: SimColab, runners: list[BrowserRunner], **browser: Any
) -> BrowserRunner:
    runner = BrowserRunner(tmp_path, sim, **browser)
    runners.append(runner)
    runner.wait_state("connected", timeout=60)
    return runner


@pytest.mark.slow
def test_the_first_cell_runs_though_its_editor_is_lazy_and_a_later_one_is_built(
    tmp_path: Path, runners: list[BrowserRunner]
) -> None:
    with SimColab() as sim:
        runner = keeper(tmp_path, sim, runners)
        assert not sim.events("shown", what="editor_built", value=0), "built before the click"
        runner.post(RerunBootstrap("colab", "test: lazy editor"))
        sim.wait_for(runs_of, 15, "a cell ran")
        runner.wait(lambda r: r.runtime.last_rerun is not None, 10, "last_rerun published")
        assert [run["cell"] for run in runs_of(sim)] == [0]
        # the keep-alive's click built the first cell's editor, and Ctrl+Enter came from it
        # (the page posts each event on its own: wait for them, in any order)
        sim.wait_for(lambda s: s.events("shown", what="editor_built", value=0), 5, "built")
        enter = sim.wait_for(lambda s: ctrl_keys(s, "Enter"), 5, "the page saw Ctrl+Enter")
        assert [key["cell"] for key in enter] == [0] and enter[0]["trusted"]
        assert not sim.events("click", target="run_button")
        assert "matched" not in runner.runtime.message


@pytest.mark.slow
def test_the_run_button_fallback_never_clicks_a_running_first_cell(
    tmp_path: Path, runners: list[BrowserRunner]
) -> None:
    # no editor the keep-alive knows: it falls back to the first cell's run button
    with SimColab(variant="no_editor") as sim:
        sim.set_cell_duration(600)  # the bootstrap still runs when the second request comes
        runner = keeper(tmp_path, sim, runners)
        runner.post(RerunBootstrap("colab", "test: first"))
        sim.wait_for(lambda s: [r["cell"] for r in runs_of(s)] == [0], 15, "the first cell ran")
        # (the page posts the click and the run separately: they may arrive in any order)
        sim.wait_for(lambda s: s.count("click", target="run_button") == 1, 5, "the click")
        # the keep-alive's own look at the page sees the cell running
        runner.wait(lambda r: r.worker().sessions[0].last_probe.get("running"), 10, "running")
        runner.post(RerunBootstrap("colab", "test: while it runs"))
        runner.wait(
            lambda r: (
                "still running" in r.runtime.message or sim.events("action", action="interrupted")
            ),
            15,
            "the re-run's verdict",
        )
        assert not sim.events("action", action="interrupted"), "the bootstrap was interrupted"
        assert "would interrupt it: not clicked" in runner.runtime.message
        assert sim.count("click", target="run_button") == 1
        assert sim.running_cells == [0]


# The default, and a list with outer fallbacks (the default before issue 23, or a user's
# override): find_elements would return <body> first, whatever the order written.
FOCUS_LISTS = {
    "default": None,
    "with_body": ".notebook-cell-list, .notebook-content, #main-content, body",
}


@pytest.mark.slow
@pytest.mark.parametrize("focus_list", sorted(FOCUS_LISTS))
def test_run_all_puts_the_focus_inside_the_notebook(
    tmp_path: Path, runners: list[BrowserRunner], focus_list: str
) -> None:
    override = FOCUS_LISTS[focus_list]
    selectors = {"notebook_focus": override} if override else {}
    with SimColab() as sim:
        runner = keeper(tmp_path, sim, runners, rerun="all", selectors=selectors)
        runner.post(RerunBootstrap("colab", "test: run all"))
        sim.wait_for(lambda s: "all" in s.runs, 15, "Run all ran")
        # (the key and the run are posted separately: they may arrive in any order)
        keys = sim.wait_for(lambda s: ctrl_keys(s, "F9"), 5, "the page saw Ctrl+F9")
        assert keys[-1]["focus"] == "notebook"
        assert not sim.events("ignored")


@pytest.mark.slow
@pytest.mark.parametrize("focus_list", sorted(FOCUS_LISTS))
def test_run_all_takes_the_focus_back_from_an_output_frame(tmp_path: Path, focus_list: str) -> None:
    config = BrowserConfig()
    override = FOCUS_LISTS[focus_list]
    sel = colab_dom.merged({"notebook_focus": override} if override else {})
    with SimColab() as sim:
        browser = launch.launch(config, tmp_path)
        try:
            driver = browser.driver
            driver.get(sim.url)
            sim.wait_for(lambda s: s.count("load"), 30, "the page loaded")
            wait_until(
                lambda: driver.execute_script(colab_dom.CLICK_CONNECT_JS, sel), 10, "connect"
            )
            sim.wait_for(lambda s: s.runtime == "connected", 10, "connected")
            # a person (or Colab) left the focus in the first cell's output
            frame = driver.find_element(By.CSS_SELECTOR, 'iframe[src*="outputframe"]')
            driver.switch_to.frame(frame)
            driver.find_element(By.TAG_NAME, "body").click()
            driver.switch_to.default_content()
            assert driver.execute_script("return document.activeElement.localName") == "iframe"
            outcome = rerun.run_all(driver, sel)
            sim.wait_for(lambda s: "all" in s.runs, 10, "Run all ran")
        finally:
            browser.close()
        assert outcome.ran == "run_all" and not outcome.missing
        # (the key and the run are posted separately: they may arrive in any order)
        keys = sim.wait_for(lambda s: ctrl_keys(s, "F9"), 5, "the page saw Ctrl+F9")
        assert keys[-1]["focus"] == "notebook"
        assert not sim.events("ignored")


@pytest.mark.slow
@pytest.mark.parametrize("way", ["editor", "run_button", "run_all"])
def test_run_anyway_is_answered_whichever_way_the_run_started(
    tmp_path: Path, runners: list[BrowserRunner], way: str
) -> None:
    variant = "no_editor" if way == "run_button" else ""
    rerun_mode = "all" if way == "run_all" else "bootstrap"
    with SimColab(variant=variant) as sim:
        sim.set_run_anyway(True)
        runner = keeper(tmp_path, sim, runners, rerun=rerun_mode)
        runner.post(RerunBootstrap("colab", f"test: {way}"))
        sim.wait_for(lambda s: s.runs, 20, "a run after Run anyway")
        assert sim.events("action", action="dialog_run_anyway_run_pending")
        if way == "run_all":
            assert sim.runs == ["all"]
        else:
            assert [run["cell"] for run in runs_of(sim)] == [0]
        if way == "run_button":
            sim.wait_for(lambda s: s.count("click", target="run_button") == 1, 5, "the click")
        else:
            assert not sim.events("click", target="run_button")
