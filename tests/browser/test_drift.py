"""Colab's markup drifts: real Chromium against variants of the simulated page.

A selector that matches nothing is a page fact: the keep-alive reports it (with the
``browser.selectors`` key to override), tries the fallbacks, keeps answering disconnects,
and never restarts Chromium for it. The selector canary names what a loaded page lacks,
and stays quiet on the normal page. Every test asserts what the PAGE recorded and how
often Chromium started.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.browser import keepalive, launch
from gateway.sim import SimColab
from gateway.sim.runner import BrowserRunner
from gateway.vocabulary import RerunBootstrap

pytestmark = pytest.mark.slow

OLD_EDITOR_SELECTOR = ".cell.code .inputarea, .cell.code textarea"  # before Monaco markup


@pytest.fixture
def starts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times the component started Chromium (the real launch, counted)."""
    count = [0]
    real = launch.launch

    def counting_launch(*args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(keepalive, "launch", counting_launch)
    return count


@pytest.fixture
def runners(tmp_path: Path) -> Iterator[list[BrowserRunner]]:
    made: list[BrowserRunner] = []
    yield made
    for runner in made:
        runner.stop()


def canary(runner: BrowserRunner, session: str = "colab") -> dict[str, Any]:
    verdicts = runner.state.component("browser").details.get("page_canary") or {}
    return dict(verdicts.get(session) or {})


def run_button_clicks(sim: SimColab) -> list[dict[str, Any]]:
    # the page posts a click's record and its action apart: the run may be seen first
    sim.wait_for(lambda s: s.events("click", target="run_button"), 5, "the run button click")
    return sim.events("click", target="run_button")


def enter_keys(sim: SimColab) -> list[dict[str, Any]]:
    return [e for e in sim.events("key") if e["key"] == "Enter" and e["ctrl"]]


def test_missing_editor_runs_the_run_button_and_keeps_answering_disconnects(
    tmp_path: Path, starts: list[int], runners: list[BrowserRunner]
) -> None:
    with SimColab(gpu=True, variant="no_editor") as sim:
        runner = BrowserRunner(tmp_path, sim)
        runners.append(runner)
        runner.wait_state("connected", timeout=60)
        runner.post(RerunBootstrap("colab", "test: editor drifted"))
        sim.wait_for(lambda s: s.runs == ["first"], 10, "the first cell ran")
        clicks = sim.wait_for(run_button_clicks, 5, "the page saw the run button's click")
        assert [c["cell"] for c in clicks] == [0]
        assert not enter_keys(sim), "Ctrl+Enter went somewhere although no editor matched"
        # The canary may name first_cell_editor first ("... match nothing"): wait for the
        # re-run's own finding.
        facts = runner.wait(
            lambda r: "first_cell_editor matched nothing" in r.runtime.message and r.runtime
        )
        assert "browser.selectors.first_cell_editor" in facts.message
        assert "run button" in facts.message
        assert facts.screenshot and "selector_missing" in facts.screenshot
        assert Path(facts.screenshot).exists()
        assert facts.last_rerun is not None
        runner.wait(lambda r: r.health()[0] == "degraded", 10, "degraded health")
        assert "first_cell_editor" in runner.health()[1]

        # the browser carries on: a disconnect is answered on the same page
        sim.disconnect(dialog=True)
        sim.wait_for(lambda s: s.runtime == "connected" and s.vm_id == "sim-vm-2", 15, "back")
        click = sim.wait_for(
            lambda s: s.events("click", target="dialog", dialog="runtime_disconnected"),
            10,
            "the page's record of the click",
        )[-1]
        assert click["button"] == "Reconnect"
        assert starts[0] == 1 and runner.worker().restarts == 0
        assert sim.count("load") == 1, "the page was loaded again: Chromium restarted"


def test_monaco_editor_is_focused_and_runs_with_ctrl_enter(
    tmp_path: Path, starts: list[int], runners: list[BrowserRunner]
) -> None:
    with SimColab(variant="monaco") as sim:
        runner = BrowserRunner(tmp_path, sim)
        runners.append(runner)
        runner.wait_state("connected", timeout=60)
        runner.post(RerunBootstrap("colab", "test: monaco"))
        sim.wait_for(lambda s: s.runs == ["first"], 10, "the first cell ran")
        sim.wait_for(enter_keys, 5, "the page saw Ctrl+Enter")
        key = enter_keys(sim)[-1]
        assert key["cell"] == 0 and key["trusted"]
        assert not sim.events("click", target="run_button")
        runner.wait(lambda r: r.runtime.last_rerun is not None, 5, "last_rerun published")
        assert "matched" not in runner.runtime.message
        assert canary(runner) == {"checked": True, "dialogs_checked": False, "missing": []}
        assert starts[0] == 1


def test_editor_selector_matching_a_container_falls_back_to_the_run_button(
    tmp_path: Path, starts: list[int], runners: list[BrowserRunner]
) -> None:
    # The selector before Monaco's markup was known matches Colab's `div.inputarea`
    # container first: focus() on it does nothing, so Ctrl+Enter would be lost silently.
    with SimColab(variant="monaco") as sim:
        runner = BrowserRunner(tmp_path, sim, selectors={"first_cell_editor": OLD_EDITOR_SELECTOR})
        runners.append(runner)
        runner.wait_state("connected", timeout=60)
        runner.post(RerunBootstrap("colab", "test: container"))
        sim.wait_for(lambda s: s.runs == ["first"], 10, "the first cell ran")
        clicks = sim.wait_for(run_button_clicks, 5, "the page saw the run button's click")
        assert [c["cell"] for c in clicks] == [0]
        facts = runner.wait(lambda r: "keyboard focus" in r.runtime.message and r.runtime)
        assert "browser.selectors.first_cell_editor" in facts.message
        assert starts[0] == 1 and runner.worker().restarts == 0


def test_no_editor_nor_run_button_uses_run_all_when_allowed(
    tmp_path: Path, starts: list[int], runners: list[BrowserRunner]
) -> None:
    with SimColab(variant="no_editor,no_run_button") as sim:
        sim.set_run_anyway(True)
        runner = BrowserRunner(tmp_path, sim, rerun_fallback_all=True)
        runners.append(runner)
        runner.wait_state("connected", timeout=60)
        runner.post(RerunBootstrap("colab", "test: no cell controls"))
        sim.wait_for(lambda s: s.runs == ["all"], 10, "Run all ran")
        # the page posts the key apart from the run: wait for it rather than race it
        sim.wait_for(lambda s: s.events("key", key="F9", ctrl=True), 10, "Ctrl+F9 recorded")
        sim.wait_for(lambda s: s.events("click", dialog="run_anyway"), 5, "Run anyway click")
        assert sim.events("click", dialog="run_anyway")[-1]["button"] == "Run anyway"
        facts = runner.wait(lambda r: "Run all instead" in r.runtime.message and r.runtime)
        assert "first_cell_editor matched nothing; run_button matched nothing" in facts.message
        assert "browser.selectors.first_cell_editor / browser.selectors.run_button" in (
            facts.message
        )
        assert starts[0] == 1 and runner.worker().restarts == 0


def test_canary_is_quiet_on_the_normal_page_even_with_a_dialog_open(
    tmp_path: Path, starts: list[int], runners: list[BrowserRunner]
) -> None:
    with SimColab() as sim:
        runner = BrowserRunner(tmp_path, sim)
        runners.append(runner)
        runner.wait_state("connected", timeout=60)
        runner.wait(lambda r: canary(r).get("checked"), 30, "the canary's verdict")
        assert canary(runner)["missing"] == []
        # a dialog the keep-alive leaves open is judged by its shape, and it is fine
        sim.show_dialog("notice")
        runner.wait(lambda r: canary(r).get("dialogs_checked"), 15, "a dialog judged")
        assert canary(runner)["missing"] == []
        assert "Colab's page changed" not in runner.runtime.message
        assert "Colab's page changed" not in runner.health()[1]
        assert starts[0] == 1


def test_canary_names_exactly_the_selectors_a_drifted_page_lacks(
    tmp_path: Path, starts: list[int], runners: list[BrowserRunner]
) -> None:
    with (
        SimColab(variant="renamed_connect,no_editor,dialog_element") as drifted,
        SimColab(variant="dialog_buttons") as buttons,
    ):
        runner = BrowserRunner(tmp_path, drifted, more_sessions={"other": buttons})
        runners.append(runner)
        facts = runner.wait(
            lambda r: "Colab's page changed" in r.runtime.message and r.runtime, 40, "warning"
        )
        assert canary(runner)["missing"] == ["connect_host", "first_cell_editor"]
        assert (
            "Colab's page changed: connect_host, first_cell_editor match nothing; "
            "see docs/browser.md" in facts.message
        )
        assert facts.screenshot and "page_changed" in facts.screenshot
        assert Path(facts.screenshot).exists()
        runner.wait(lambda r: "Colab's page changed" in r.health()[1], 10, "health says so")
        assert runner.health()[0] == "degraded"

        # dialogs are absent at load; their shapes are judged when one is shown
        drifted.show_dialog("still_there")
        runner.wait(lambda r: "dialog" in canary(r)["missing"], 15, "the stray dialog named")
        assert canary(runner)["missing"] == ["connect_host", "dialog", "first_cell_editor"]

        runner.wait(lambda r: r.runtime_of("other").state == "connected", 60, "other connected")
        assert canary(runner, "other")["checked"] and canary(runner, "other")["missing"] == []
        buttons.show_dialog("still_there")
        runner.wait(lambda r: canary(r, "other")["missing"], 15, "the dialog's buttons named")
        assert canary(runner, "other")["missing"] == ["dialog_buttons"]
        runner.wait(
            lambda r: (
                "Colab's page changed: dialog_buttons match nothing"
                in r.runtime_of("other").message
            ),
            10,
            "the other session's status says so",
        )
        assert starts[0] == 1 and runner.worker().restarts == 0


def test_the_documented_overrides_repair_a_drifted_page(
    tmp_path: Path, starts: list[int], runners: list[BrowserRunner]
) -> None:
    # the example of docs/browser.md, "What to do when it fires"
    overrides = {
        "first_cell_editor": ".cell.code .cm-content",
        "connect_host": "colab-runtime-button",
    }
    with SimColab(variant="no_editor,renamed_connect") as sim:
        runner = BrowserRunner(tmp_path, sim, selectors=overrides)
        runners.append(runner)
        runner.wait_state("connected", timeout=60)
        assert sim.count("click", target="connect") == 1
        runner.wait(lambda r: canary(r).get("checked"), 30, "the canary's verdict")
        assert canary(runner)["missing"] == []
        runner.post(RerunBootstrap("colab", "test: overridden editor"))
        sim.wait_for(lambda s: s.runs == ["first"], 10, "the first cell ran")
        sim.wait_for(enter_keys, 5, "the page saw Ctrl+Enter")
        assert enter_keys(sim)[-1]["cell"] == 0
        runner.wait(lambda r: r.runtime.last_rerun is not None, 5, "last_rerun published")
        assert "matched" not in runner.runtime.message
        assert "Colab's page changed" not in runner.runtime.message
        assert starts[0] == 1
