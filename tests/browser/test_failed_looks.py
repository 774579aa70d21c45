"""When failed looks at a page add up to a hung page (gateway/browser/failed_looks.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from selenium.common.exceptions import TimeoutException

from gateway.browser import keepalive
from gateway.browser.failed_looks import MAX_FAILED_LOOKS, FailedLooks
from gateway.browser.keepalive import BrowserDied, Worker
from gateway.component import Context
from gateway.config import BrowserConfig, Config, Duration, SessionConfig
from gateway.paths import Paths
from gateway.state import State


def test_quick_failures_of_a_navigation_are_tolerated_up_to_the_count() -> None:
    looks = FailedLooks(hung_after=15)
    assert not any(looks.failed(i * 0.5) for i in range(MAX_FAILED_LOOKS - 1))
    assert looks.failed((MAX_FAILED_LOOKS - 1) * 0.5)


def test_slow_failures_of_a_stuck_renderer_count_by_time() -> None:
    # chromedriver's "Timed out receiving message from renderer" comes after page_timeout
    # (5 s here), and the wait in the page fails as slowly in between: a look every 10 s.
    looks = FailedLooks(hung_after=15)
    assert not looks.failed(0.0)
    assert not looks.failed(10.0)
    assert looks.failed(20.0)
    assert looks.count == 3


def test_a_good_look_starts_the_row_again() -> None:
    looks = FailedLooks(hung_after=15)
    looks.failed(0.0)
    looks.failed(10.0)
    looks.ok()
    assert not looks.failed(20.0)
    assert not looks.failed(30.0)
    assert looks.failed(35.0)


def test_a_renderer_that_times_out_every_look_restarts_chromium(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keep-alive's side of it, as CI once saw it: every look answered, after
    page_timeout, with chromedriver's renderer timeout (a WebDriverException, not an HTTP
    timeout), which twenty looks in a row took minutes to call hung."""
    config = Config(
        sessions=[SessionConfig(name="colab", notebook_url="http://127.0.0.1:9/notebook")],
        browser=BrowserConfig(page_timeout=Duration(5)),
    )
    paths = Paths(config=tmp_path / "c.yaml", state_dir=tmp_path / "s", runtime_dir=tmp_path / "r")
    worker = Worker(Context("browser", config, paths, State()))
    worker.browser = SimpleNamespace(alive=lambda: True)  # type: ignore[assignment]
    worker.stopping.set()  # the half-second pause between looks returns at once
    clock = [100.0]

    def renderer_timeout(session: object) -> None:
        clock[0] += 5.0
        raise TimeoutException("timeout: Timed out receiving message from renderer: 5.000")

    monkeypatch.setattr(worker, "_visit", renderer_timeout)
    monkeypatch.setattr(keepalive.time, "monotonic", lambda: clock[0])
    session = worker.sessions[0]
    for _ in range(3):  # 0, 5 and 10 s after the first failure: a navigation may take that
        worker._visit_tolerant(session)
    with pytest.raises(BrowserDied, match=r"stopped answering \(4 failed looks in 15s"):
        worker._visit_tolerant(session)
