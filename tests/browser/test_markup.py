"""The keep-alive on the page as the evidence draws it (../shared/colab-dom.md): the markup
changes of issue 23 that the selectors follow. Real Chromium, the real component; every
test asserts what the PAGE recorded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.sim import SimColab
from gateway.sim.runner import BrowserRunner
from gateway.vocabulary import RerunBootstrap

pytestmark = pytest.mark.slow


@pytest.fixture
def sim() -> Iterator[SimColab]:
    with SimColab(gpu=True) as sim:
        yield sim


@pytest.fixture
def runners() -> Iterator[list[BrowserRunner]]:
    made: list[BrowserRunner] = []
    yield made
    for runner in made:
        runner.stop()


def keeper(runners: list[BrowserRunner], tmp_path: Path, sim: SimColab, **browser: object):
    runner = BrowserRunner(tmp_path, sim, **browser)
    runners.append(runner)
    runner.wait_state("connected", timeout=60)
    return runner


def test_are_you_still_here_is_answered(
    sim: SimColab, tmp_path: Path, runners: list[BrowserRunner]
) -> None:
    keeper(runners, tmp_path, sim)
    sim.show_dialog("still_here")
    sim.wait_for(lambda s: s.events("click", dialog="still_here"), 10, "the answer")
    assert sim.events("click", dialog="still_here")[-1]["button"] == "Yes"
    sim.wait_for(lambda s: not s.dialogs_open(), 5, "the prompt closed")


def test_the_signed_out_dialog_inside_the_page_is_signed_out(
    sim: SimColab, tmp_path: Path, runners: list[BrowserRunner]
) -> None:
    runner = keeper(runners, tmp_path, sim)
    sim.show_dialog("signed_out")
    facts = runner.wait_state("signed_out", timeout=10)
    assert "colab-gateway login" in facts.message
    assert not sim.events("click", dialog="signed_out"), "clicked the sign-in button"


def test_the_md_text_button_recaptcha_is_still_dismissed(
    tmp_path: Path, runners: list[BrowserRunner]
) -> None:
    with SimColab(variant="recaptcha_md") as sim:
        keeper(runners, tmp_path, sim)
        sim.show_recaptcha(times=1)
        sim.wait_for(lambda s: s.count("action", action="recaptcha_dismissed") == 1, 10, "gone")


def test_run_all_puts_the_focus_in_the_notebook_not_on_body(
    sim: SimColab, tmp_path: Path, runners: list[BrowserRunner]
) -> None:
    # <body>'s centre is Colab's open Files panel on this page: a click there leaves the
    # focus on <body>, where Ctrl+F9 runs nothing
    runner = keeper(runners, tmp_path, sim, rerun="all")
    runner.post(RerunBootstrap("colab", "test: run all"))
    sim.wait_for(lambda s: s.runs == ["all"], 10, "Run all ran")
    # The page posts the key apart from the run it starts: wait for the key too.
    f9 = sim.wait_for(
        lambda s: [e for e in s.events("key", key="F9") if e["ctrl"]], 10, "Ctrl+F9 recorded"
    )
    assert f9[-1]["focus"] == "notebook"
    assert not sim.events("ignored")
