"""The keep-alive on Chromium's headless shell (browser.engine: auto) and on the full
browser, with real Chromium, chromedriver and Xvfb: which program runs, that the shell
keeps the runtime connected, that it shares the signed-in profile with the full Chromium
of `colab-gateway login` both ways, and that it pays in memory."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import free_port, wait_until
from helpers.ddns import FakeServer, Received, Reply

from gateway.browser import launch, login
from gateway.config import BrowserConfig, Duration
from gateway.sim import SimColab
from gateway.sim.runner import BrowserRunner

pytestmark = pytest.mark.slow

SHELL = "/usr/lib/chromium/chromium-headless-shell"
CHROMIUM = "/usr/lib/chromium/chromium"


def program_of(runner: BrowserRunner) -> str:
    browser = runner.worker().browser
    assert browser is not None
    pid = browser.main_pid()
    assert pid is not None
    return os.path.realpath(f"/proc/{pid}/exe")


def own_memory_mb(runner: BrowserRunner) -> float:
    """Pss_Anon + Pss_Shmem over the browser's processes: its own memory, whatever other
    Chromium instances on the machine share of the binary's pages."""
    browser = runner.worker().browser
    assert browser is not None
    total = 0
    for pid in browser.chromium_pids():
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            name, _, rest = line.partition(":")
            if name in ("Pss_Anon", "Pss_Shmem"):
                total += int(rest.split()[0])
    return total / 1024


def survives_a_disconnect_with_a_dialog(sim: SimColab, runner: BrowserRunner) -> None:
    runner.wait(lambda r: r.runtime.state == "connected", 60, "connected")
    sim.disconnect(dialog=True)
    sim.wait_for(lambda s: s.runtime == "connected", 30, "reconnected through the dialog")
    assert any(e["type"] == "click" and e["target"] == "dialog" for e in sim.events())


@pytest.mark.parametrize(
    ("engine", "program"), [("auto", SHELL), ("chromium", CHROMIUM)], ids=["auto", "chromium"]
)
def test_the_engine_runs_its_program_and_keeps_the_runtime_connected(
    tmp_path: Path, engine: str, program: str
) -> None:
    with SimColab() as sim:
        runner = BrowserRunner(tmp_path, sim, engine=engine)
        try:
            survives_a_disconnect_with_a_dialog(sim, runner)
            assert program_of(runner) == program
            name = "headless-shell" if program == SHELL else "chromium"
            status = runner.state.component("browser")
            assert status.details["chromium_engine"] == name
            assert runner.worker().restarts == 0
        finally:
            runner.stop()


def test_the_shell_shows_pages_the_client_hints_of_chromium_in_every_window(
    tmp_path: Path,
) -> None:
    """The page's navigator.userAgentData, on every load (first load, reloads, a second
    session's window): the full Chromium's brands, never "HeadlessChrome"."""
    seen = {}
    with SimColab() as sim, SimColab() as second:
        for engine in ("chromium", "headless-shell"):
            before = sim.count("load"), second.count("load")
            runner = BrowserRunner(
                tmp_path / engine,
                sim,
                more_sessions={"second": second},
                engine=engine,
                reload_every=Duration(5),
            )
            try:
                for page, count in zip((sim, second), before, strict=True):
                    # the first load and at least one reload of each window
                    page.wait_for(lambda p, n=count: p.count("load") >= n + 2, 60, "a reload")
            finally:
                runner.stop()
            loads = sim.events("load")[before[0] :] + second.events("load")[before[1] :]
            seen[engine] = {tuple(e["brands"]) for e in loads}
    assert len(seen["chromium"]) == 1, seen
    assert seen["headless-shell"] == seen["chromium"], seen
    assert not any("HeadlessChrome" in brands for brands in seen["chromium"])


def test_the_headless_shell_holds_far_less_own_memory_than_chromium(tmp_path: Path) -> None:
    """What browser.engine: auto is for (docs/browser.md: 76 against 129 MB here)."""
    own = {}
    with SimColab() as sim:
        for engine in ("headless-shell", "chromium"):
            runner = BrowserRunner(tmp_path / engine, sim, engine=engine)
            try:
                runner.wait(lambda r: r.runtime.state == "connected", 60, "connected")
                own[engine] = own_memory_mb(runner)
            finally:
                runner.stop()
    assert own["headless-shell"] < 0.8 * own["chromium"], own


# -- one profile, two programs -------------------------------------------------------------


class CookieSite:
    """/set/NAME=VALUE answers with a lasting cookie; every page then fetches /loaded, which
    the browser asks for only once it has taken the page (and its cookie) in. The tests'
    FakeServer records each request with its headers."""

    def __init__(self) -> None:
        self.server = FakeServer(self._reply)
        self.url = self.server.url

    @staticmethod
    def _reply(request: Received) -> Reply:
        headers = {"Content-Type": "text/html"}
        if request.path.startswith("/set/"):
            cookie = request.path.removeprefix("/set/")
            headers["Set-Cookie"] = f"{cookie}; Max-Age=86400; Path=/"
        return Reply(200, "<html><body><img src=/loaded></body></html>", headers)

    def loaded(self, path: str, timeout: float = 60) -> Received:
        """The request for ``path``, once its page asked for /loaded too."""

        def found() -> Received | None:
            received = list(self.server.received)
            paths = [r.path for r in received]
            if path in paths and "/loaded" in paths[paths.index(path) :]:
                return received[paths.index(path)]
            return None

        request: Received = wait_until(found, timeout, f"{path} loaded")
        return request


def cookie_names(profile: Path) -> set[str]:
    """Names in the profile's cookie store (stored in clear; values are encrypted)."""
    try:
        with contextlib.closing(
            sqlite3.connect(f"file:{profile}/Default/Cookies?mode=ro&immutable=1", uri=True)
        ) as db:
            return {name for (name,) in db.execute("SELECT name FROM cookies")}
    except sqlite3.Error:  # not there yet, or caught mid-write
        return set()


@pytest.fixture
def site() -> Iterator[CookieSite]:
    cookies = CookieSite()
    yield cookies
    cookies.server.close()


def close_like_a_person(devtools_port: int) -> None:
    """Close the window's browser as its own menu would (CDP Browser.close, through a
    chromedriver attached to it): Chromium writes its cookies to the profile on the way
    out, where a SIGTERM would lose those not yet committed (it commits every 30 s)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.debugger_address = f"127.0.0.1:{devtools_port}"
    service = Service(
        executable_path=launch.find_chromedriver(),
        log_output=subprocess.DEVNULL,
        popen_kw={"start_new_session": True},
    )
    driver = webdriver.Chrome(options=options, service=service)
    try:
        with contextlib.suppress(Exception):  # the browser may go before it answers
            driver.execute_cdp_cmd("Browser.close", {})
    finally:
        launch.kill_session(service.process.pid)  # the driver only; not the browser's


def run_login_chromium(profile: Path, site: CookieSite, path: str) -> str:
    """The full Chromium as `colab-gateway login` starts it, in a window (Xvfb), until the
    page was fetched; then closed by the person (the profile saved)."""
    xvfb, display = launch.start_xvfb()
    port = free_port()
    try:
        chromium = subprocess.Popen(
            login.login_command(launch.find_chromium(), profile, site.url + path, port),
            env={**os.environ, "DISPLAY": display},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            sent = site.loaded(path).headers.get("cookie", "")
            close_like_a_person(port)
            # its helpers (the network service writes the cookies) end after the browser
            wait_until(lambda: not launch.session_members(chromium.pid), 30, "Chromium to close")
            return sent
        finally:
            launch.kill_session(chromium.pid)
            chromium.wait()
    finally:
        xvfb.kill()
        xvfb.wait()


def test_the_shell_and_logins_chromium_share_the_signed_in_profile(
    tmp_path: Path, site: CookieSite
) -> None:
    profile = tmp_path / "profile"
    # 1. a person signs in with `colab-gateway login`: the cookie lands in the profile
    assert run_login_chromium(profile, site, "/set/SID=signed-in") == ""
    assert cookie_names(profile) == {"SID"}
    # 2. the keep-alive's headless shell sends it, and takes a rotated one (Google rotates
    # its __Secure-*PSIDTS cookies while a session lives)
    shell = launch.launch(BrowserConfig(profile_dir=str(profile)), tmp_path / "state")
    try:
        assert shell.engine == "headless-shell"
        shell.driver.get(f"{site.url}/set/SIDTS=rotated")
        request = site.loaded("/set/SIDTS=rotated")
        assert request.headers.get("cookie") == "SID=signed-in"
        # the request's Client Hints name no headless brand (client_hints.py)
        hints = request.headers.get("sec-ch-ua", "")
        assert '"Chromium"' in hints and "HeadlessChrome" not in hints, hints
    finally:
        shell.close()  # politely: Chromium writes its cookies to the profile on the way out
    assert cookie_names(profile) == {"SID", "SIDTS"}
    # 3. the next login sends both
    sent = run_login_chromium(profile, site, "/look")
    assert set(sent.split("; ")) == {"SID=signed-in", "SIDTS=rotated"}
