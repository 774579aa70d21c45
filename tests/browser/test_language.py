"""English whatever the account's language: ``hl=en`` on the notebook's URL (pure, and on
every load and reload of the real keep-alive), and Chromium speaking English (Accept-Language
and ``navigator.language``) on both engines even when the profile was set to Portuguese."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import wait_until
from helpers.ddns import FakeServer, Received, Reply

from gateway.browser import launch
from gateway.browser.language import english_url
from gateway.config import BrowserConfig, Duration
from gateway.sim import SimColab
from gateway.sim.runner import BrowserRunner

# -- the URL (pure) -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://colab.research.google.com/drive/1AbC",
            "https://colab.research.google.com/drive/1AbC?hl=en",
        ),
        (  # the fragment stays after the query
            "https://colab.research.google.com/drive/1AbC#scrollTo=xYz&line=3",
            "https://colab.research.google.com/drive/1AbC?hl=en#scrollTo=xYz&line=3",
        ),
        (  # other parameters keep their order and their encoding
            "https://colab.research.google.com/drive/1AbC?authuser=1&q=a%2Fb+c#x",
            "https://colab.research.google.com/drive/1AbC?authuser=1&q=a%2Fb+c&hl=en#x",
        ),
        (  # another language is replaced where it was
            "https://colab.research.google.com/drive/1AbC?hl=pt-BR&authuser=0",
            "https://colab.research.google.com/drive/1AbC?hl=en&authuser=0",
        ),
        (  # repeated hl: one is enough
            "https://c/d?hl=pt&x=1&hl=ja",
            "https://c/d?hl=en&x=1",
        ),
        (  # a parameter that only ends in "hl" is another parameter
            "https://c/d?thl=pt&hl_extra=1",
            "https://c/d?thl=pt&hl_extra=1&hl=en",
        ),
        ("https://c/d?", "https://c/d?hl=en"),  # an empty query
        ("https://c/d?#top", "https://c/d?hl=en#top"),
        ("https://c/d?a=1#frag?hl=pt", "https://c/d?a=1&hl=en#frag?hl=pt"),  # '?' in the fragment
    ],
)
def test_english_url_adds_hl_en_and_keeps_the_rest(url: str, expected: str) -> None:
    assert english_url(url) == expected


def test_english_url_is_idempotent() -> None:
    url = "https://colab.research.google.com/drive/1AbC?authuser=1#scrollTo=z"
    once = english_url(url)
    assert english_url(once) == once


# -- the keep-alive opens and reloads the notebook with it -------------------------------------


@pytest.mark.slow
def test_the_notebook_is_opened_and_reloaded_with_hl_en(tmp_path: Path) -> None:
    with SimColab() as sim:
        runner = BrowserRunner(tmp_path, sim, reload_every=Duration(4))
        try:
            sim.wait_for(lambda s: s.count("load") >= 2, 60, "the first load and a reload")
        finally:
            runner.stop()
        for load in sim.events("load")[:2]:
            assert load["url"] == f"{sim.url}?hl=en", load


@pytest.mark.slow
def test_a_portuguese_account_still_gets_an_english_page_that_is_kept_connected(
    tmp_path: Path,
) -> None:
    with SimColab(language="pt") as sim:
        runner = BrowserRunner(tmp_path, sim)
        try:
            runner.wait_state("connected", timeout=60)
            sim.disconnect(dialog=True)
            sim.wait_for(lambda s: s.runtime == "connected", 20, "reconnected through the dialog")
        finally:
            runner.stop()
        load = sim.events("load")[0]
        assert "hl=en" in load["query"] and load["language"] == "en-US"
        click = sim.wait_for(
            lambda s: s.events("click", target="dialog", dialog="runtime_disconnected"),
            10,
            "the page's record of the click",
        )[-1]
        assert click["button"] == "Reconnect"


class NotebookLink(SimColab):
    """A notebook URL as Colab's links are: a query of its own (a markup variant here, like
    ``?authuser=1``) and a fragment (``#scrollTo=...``)."""

    @property
    def url(self) -> str:
        return f"{self.base}/notebook?variant=monaco#scrollTo=bootstrap"


@pytest.mark.slow
def test_a_notebook_link_with_a_fragment_is_really_reloaded_and_keeps_it_all(
    tmp_path: Path,
) -> None:
    with NotebookLink() as sim:
        runner = BrowserRunner(tmp_path, sim, reload_every=Duration(4))
        try:
            # Two reloads: the second starts from a page already at the very same URL.
            sim.wait_for(lambda s: s.count("load") >= 3, 60, "the first load and two reloads")
        finally:
            runner.stop()
        for load in sim.events("load")[:3]:
            assert load["url"] == f"{sim.base}/notebook?variant=monaco&hl=en#scrollTo=bootstrap"
            assert load["variant"] == "monaco"


# -- Chromium speaks English -----------------------------------------------------------------

# What a Chromium window set to Portuguese leaves in the profile (colab-gateway login is such a
# window, run by a person): both lists, as Chromium 156 writes them.
PORTUGUESE_PROFILE = {
    "intl": {"accept_languages": "pt-BR,pt", "selected_languages": "pt-BR,pt"},
}

LANGUAGE_PAGE = """<!DOCTYPE html><html><body><script>
fetch('/language?' + new URLSearchParams({language: navigator.language,
                                          languages: navigator.languages.join(',')}));
</script></body></html>"""


class LanguagePage:
    """A page that reports ``navigator.language``; the server records Accept-Language."""

    def __init__(self) -> None:
        self.server = FakeServer(self._reply)

    def _reply(self, request: Received) -> Reply:
        if request.path == "/page":
            return Reply(body=LANGUAGE_PAGE, headers={"Content-Type": "text/html"})
        return Reply(status=204)

    def requests(self, path: str) -> list[Received]:
        return [r for r in self.server.received if r.path == path]


@pytest.fixture
def language_page() -> Iterator[LanguagePage]:
    page = LanguagePage()
    yield page
    page.server.close()


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["chromium", "headless-shell"])
def test_chromium_speaks_english_even_with_a_portuguese_profile(
    tmp_path: Path, language_page: LanguagePage, engine: str
) -> None:
    config = BrowserConfig(engine=engine)
    preferences = launch.profile_dir(config, tmp_path) / "Default" / "Preferences"
    preferences.parent.mkdir(parents=True)
    preferences.write_text(json.dumps(PORTUGUESE_PROFILE))
    browser = launch.launch(config, tmp_path)
    try:
        assert browser.engine == engine
        browser.driver.get(f"{language_page.server.url}/page")
        reports = wait_until(lambda: language_page.requests("/language"), 30, "the page's report")
    finally:
        browser.close()
    page_request = language_page.requests("/page")[0]
    accept = page_request.headers.get("accept-language")
    assert accept is not None and accept.startswith("en-US,en"), accept
    assert reports[0].query["language"] == "en-US"
    assert reports[0].query["languages"].split(",")[0] == "en-US"
