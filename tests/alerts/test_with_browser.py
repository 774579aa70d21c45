"""human_needed from what the real keep-alive sees: headless Chromium on the simulated Colab,
the alerts component in the same State, apprise posting to a local json:// endpoint."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import Future

import pytest
from helpers.alerts import Inbox

from gateway.alerts.component import AlertsComponent
from gateway.component import Context
from gateway.config import Config, Duration, NotifyConfig, Secret
from gateway.sim import SimColab
from gateway.sim.runner import BrowserRunner

# One page and one browser for both tests (each start costs Chromium's start-up): in file
# order, the sign-out test runs last.
pytestmark = [pytest.mark.slow, pytest.mark.random_order(disabled=True)]

HUMAN_NEEDED_WITHIN = 30.0  # the bound


@pytest.fixture(scope="module")
def inbox() -> Iterator[Inbox]:
    box = Inbox()
    yield box
    box.close()


@pytest.fixture(scope="module")
def sim() -> Iterator[SimColab]:
    with SimColab() as sim:
        yield sim


@pytest.fixture(scope="module")
def keeper(
    sim: SimColab, inbox: Inbox, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BrowserRunner]:
    runner = BrowserRunner(tmp_path_factory.mktemp("alerts"), sim, recaptcha_max=2)
    config = Config(
        sessions=runner.config.sessions,
        browser=runner.config.browser,
        notify=NotifyConfig(
            urls=[Secret(inbox.url)], tunnel_down_after=Duration(600), repeat_after=Duration(3600)
        ),
    )
    ctx = Context("alerts", config, runner.paths, runner.state)
    task: Future[None] = asyncio.run_coroutine_threadsafe(AlertsComponent().run(ctx), runner.loop)
    yield runner
    runner.stop()  # cancels the alerts task too: it shares the loop
    assert task.done()


def test_a_recaptcha_that_keeps_coming_back_needs_a_human(
    keeper: BrowserRunner, sim: SimColab, inbox: Inbox
) -> None:
    keeper.wait_state("connected", timeout=60)
    started = time.monotonic()
    sim.show_recaptcha(times=None)  # comes back after every dismissal
    post = inbox.wait_for("a reCAPTCHA keeps coming back", timeout=HUMAN_NEEDED_WITHIN)
    assert time.monotonic() - started <= HUMAN_NEEDED_WITHIN
    assert sim.count("click", target="recaptcha") == 2  # recaptcha_max, then it stopped
    assert "(session colab), since" in post["message"]
    # the exact command that shows the page to a person (tests/browser/test_view.py)
    assert "To do: answer it: run colab-gateway view colab on the Pi" in post["message"]
    assert post["attachments"] and post["attachments"][0]["filename"].endswith(".png")
    sim.hide_recaptcha()  # a person answered it
    inbox.wait_for("resolved: a reCAPTCHA keeps coming back", timeout=30)


def test_the_sign_in_redirect_needs_a_human(
    keeper: BrowserRunner, sim: SimColab, inbox: Inbox
) -> None:
    keeper.wait_state("connected", timeout=60)
    started = time.monotonic()
    sim.sign_out()
    try:
        post = inbox.wait_for("Google wants a sign-in", timeout=HUMAN_NEEDED_WITHIN)
        assert time.monotonic() - started <= HUMAN_NEEDED_WITHIN
        assert "colab-gateway login" in post["message"]
        assert keeper.runtime.state == "signed_out"
    finally:
        # The page is shared with the other test of this module, in any order.
        sim.sign_in()
