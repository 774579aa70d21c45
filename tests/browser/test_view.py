"""``colab-gateway view``, driven as a person would: the real command, the real keep-alive
(headless Chromium) on the simulated Colab, and an HTTP client in place of the laptop's
browser (through ``ssh -L`` it would reach the same 127.0.0.1 port)."""

from __future__ import annotations

import queue
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from helpers import REPO

from gateway.browser import view_request
from gateway.sim import SimColab
from gateway.sim.runner import BrowserRunner

pytestmark = pytest.mark.slow

ACTION = {"X-Colab-Gateway": "1"}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimColab]:
    with SimColab() as sim:
        yield sim


@pytest.fixture(scope="module")
def keeper(sim: SimColab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserRunner]:
    runner = BrowserRunner(tmp_path_factory.mktemp("view"), sim)
    yield runner
    runner.stop()


class ViewCommand:
    """``colab-gateway view colab`` as a subprocess, its output read line by line."""

    def __init__(self, keeper: BrowserRunner, sim: SimColab, tmp: Path) -> None:
        config = tmp / "config.yaml"
        config.write_text(
            "sessions:\n"
            f"  - {{name: colab, notebook_url: '{sim.url}'}}\n"
            "tunnel: {enabled: false}\ntmux: {enabled: false}\n"
        )
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "view",
                "colab",
                "-c",
                str(config),
                "--runtime-dir",
                str(keeper.paths.runtime_dir),
                "--state-dir",
                str(keeper.paths.state_dir),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=REPO,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_line(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r}; got {self.seen}") from None
            self.seen.append(line)
            found = re.search(pattern, line)
            if found:
                return found

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(10)  # it ends at the end of the output
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def test_a_person_clicks_the_dialog_through_the_view(
    keeper: BrowserRunner, sim: SimColab, tmp_path: Path
) -> None:
    keeper.wait_state("connected", timeout=60)
    command = ViewCommand(keeper, sim, tmp_path)
    try:
        ssh = command.wait_line(r"ssh -N -L (\d+):127\.0\.0\.1:(\d+) \S+@\S+")
        url = command.wait_line(r"open (http://127\.0\.0\.1:(\d+)/\?token=(\S+))")
        port = int(url.group(2))
        assert ssh.group(1) == ssh.group(2) == str(port)
        base = f"http://127.0.0.1:{port}"
        # the keep-alive steps back while a person is in control
        facts = keeper.wait_state("paused", timeout=30)
        assert "a person is in control" in facts.message

        # a wrong token is refused, the right one becomes a cookie, and never works again
        assert requests.get(f"{base}/?token=wrong", timeout=10).status_code == 403
        assert requests.get(f"{base}/", timeout=10).status_code == 403  # no cookie
        person = requests.Session()
        first = person.get(url.group(1), allow_redirects=False, timeout=10)
        assert first.status_code == 303 and first.headers["Location"] == "/"
        assert "HttpOnly" in first.headers["Set-Cookie"]
        reused = requests.get(url.group(1), allow_redirects=False, timeout=10)
        assert reused.status_code == 403
        page = person.get(f"{base}/", timeout=10)
        assert page.status_code == 200 and "session colab" in page.text
        shot = person.get(f"{base}/screenshot.png", timeout=30)
        assert shot.status_code == 200 and shot.content.startswith(b"\x89PNG")

        # a dialog the keep-alive would answer at once waits for the person
        sim.show_dialog("still_there")
        shown = sim.wait_for(
            lambda s: s.events("shown", what="dialog_layout", value="still_there"),
            10,
            "the dialog on the page",
        )[-1]
        button = shown["buttons"][0]
        # an action without the header a cross-site form cannot send is refused
        assert person.post(f"{base}/click", json=button, timeout=10).status_code == 403
        clicked = person.post(f"{base}/click", json=button, headers=ACTION, timeout=30)
        assert clicked.status_code == 200, clicked.text
        sim.wait_for(lambda s: s.dialog is None, 10, "the dialog answered")
        (click,) = sim.events("click", target="dialog", dialog="still_there")
        assert click["trusted"] is True  # a real input event; the keep-alive clicks by script
        assert click["button"] == button["text"]

        # Done: the command ends, the request is gone, the keep-alive resumes
        assert person.post(f"{base}/done", json={}, headers=ACTION, timeout=10).ok
        command.wait_line(r"^done: the keep-alive has the page again")
        assert command.proc.wait(15) == 0
        assert view_request.read(keeper.paths.runtime_dir) is None
        keeper.wait_state("connected", timeout=30)
    finally:
        command.close()


def test_a_view_of_an_unknown_session_is_refused_by_the_command(
    keeper: BrowserRunner, sim: SimColab, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"sessions:\n  - {{name: colab, notebook_url: '{sim.url}'}}\n"
        "tunnel: {enabled: false}\ntmux: {enabled: false}\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "view",
            "other",
            "-c",
            str(config),
            "--runtime-dir",
            str(keeper.paths.runtime_dir),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 2
    assert "no session named 'other' (sessions: colab)" in result.stderr
