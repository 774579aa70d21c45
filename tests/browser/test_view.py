"""``colab-gateway view``, driven as a person would: the real command, the real keep-alive
(headless Chromium) on the simulated Colab, and an HTTP client in place of the laptop's
browser (through ``ssh -L`` it would reach the same 127.0.0.1 port)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from helpers import REPO, wait_until

from gateway.browser import view_request
from gateway.browser.view_request import ViewAnswer
from gateway.config import Duration, ViewConfig
from gateway.paths import Paths
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

    def __init__(
        self, paths: Paths, sim: SimColab, tmp: Path, *extra: str, config_extra: str = ""
    ) -> None:
        config = tmp / "config.yaml"
        config.write_text(
            "sessions:\n"
            f"  - {{name: colab, notebook_url: '{sim.url}'}}\n"
            "tunnel: {enabled: false}\ntmux: {enabled: false}\n" + config_extra
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
                str(paths.runtime_dir),
                "--state-dir",
                str(paths.state_dir),
                *extra,
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

    def until_exit_or_token(self, timeout: float = 90) -> list[str]:
        """Every line until the command exits or prints a token (a person would open it
        at once), within ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if not self._reader.is_alive():  # the output ended: the command exited
                    self.proc.wait(10)
                    return self.seen
                continue
            self.seen.append(line)
            if "token=" in line:
                return self.seen
        raise AssertionError(f"the command neither ended nor printed a token: {self.seen}")

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
    command = ViewCommand(keeper.paths, sim, tmp_path)
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
        # the page posts its click event apart from the close it caused: wait for it too
        (click,) = sim.wait_for(
            lambda s: s.events("click", target="dialog", dialog="still_there"),
            10,
            "the page's record of the click",
        )
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


# -- other local users (issue 22, attack 7) and the idle timeout ------------------------------


class Squatter:
    """Another local user's server on a port: answers everything 200, as the daemon's
    /ping did, and keeps every request line it receives."""

    def __init__(self, port: int = 0) -> None:
        self.received: list[str] = []
        received = self.received

        class Answer(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                received.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", "3")
                self.end_headers()
                self.wfile.write(b"ok\n")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Answer)
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _follow_printed_urls(lines: list[str]) -> None:
    """What the person does with an address the command printed: open it."""
    for line in lines:
        for url in re.findall(r"http://127\.0\.0\.1:\d+/\?token=\S+", line):
            with contextlib.suppress(requests.RequestException):
                requests.get(url, timeout=5)


def test_a_port_another_user_holds_never_receives_the_token(
    keeper: BrowserRunner, sim: SimColab, tmp_path: Path
) -> None:
    keeper.wait_state("connected", timeout=60)
    squatter = Squatter()
    command = ViewCommand(keeper.paths, sim, tmp_path, "--port", str(squatter.port))
    try:
        lines = command.until_exit_or_token()
        _follow_printed_urls(lines)
        assert not [p for p in squatter.received if "token" in p], squatter.received
        assert command.proc.returncode == 1, lines
        output = "\n".join(lines)
        assert f"cannot listen on 127.0.0.1:{squatter.port}: Address already in use" in output
        assert "token=" not in output
        assert view_request.read(keeper.paths.runtime_dir) is None
        keeper.wait_state("connected", timeout=30)
    finally:
        command.close()
        squatter.close()


def test_a_socket_that_is_not_the_daemons_never_receives_the_token(
    sim: SimColab, tmp_path: Path
) -> None:
    """The daemon's answer names a socket that is gone, and someone else listens on its
    port now (the race after a view ended): the command checks /proc/net/tcp and refuses.
    This test plays the daemon's part; no browser is involved."""
    paths = Paths(
        config=tmp_path / "config.yaml", state_dir=tmp_path / "state", runtime_dir=tmp_path / "run"
    )
    paths.ensure()
    runtime_dir = paths.runtime_dir
    command = ViewCommand(paths, sim, tmp_path)
    squatter: Squatter | None = None
    try:
        request = wait_until(lambda: view_request.read(runtime_dir), 30, "the view request")
        # The daemon's socket: bound, then gone.
        with socket.socket() as gone:
            gone.bind(("127.0.0.1", request.port))
            gone.listen()
            port, inode = gone.getsockname()[1], os.fstat(gone.fileno()).st_ino
        squatter = Squatter(port)
        view_request.answer(runtime_dir, ViewAnswer(request.token_sha256, port, inode))
        lines = command.until_exit_or_token()
        _follow_printed_urls(lines)
        assert not [p for p in squatter.received if "token" in p], squatter.received
        assert command.proc.returncode == 1, lines
        output = "\n".join(lines)
        assert f"127.0.0.1:{port} is not held by the daemon's socket (inode {inode}" in output
        assert "token=" not in output
    finally:
        command.close()
        if squatter is not None:
            squatter.close()


def test_a_view_without_input_gives_the_page_back_after_the_idle_timeout(
    keeper: BrowserRunner, sim: SimColab, tmp_path: Path
) -> None:
    keeper.wait_state("connected", timeout=60)
    config = keeper.ctx.config
    keeper.ctx.config = dataclasses.replace(config, view=ViewConfig(idle_timeout=Duration(3)))
    command = ViewCommand(keeper.paths, sim, tmp_path, config_extra="view: {idle_timeout: 3s}\n")
    try:
        url = command.wait_line(r"open (http://127\.0\.0\.1:(\d+)/\?token=(\S+))")
        keeper.wait_state("paused", timeout=30)
        # The person opens the page and watches (screenshots are not input), then leaves.
        person = requests.Session()
        assert person.get(url.group(1), timeout=10).status_code == 200
        assert person.get(f"http://127.0.0.1:{url.group(2)}/screenshot.png", timeout=30).ok
        ended = command.wait_line(r"^ended: (.*)", timeout=60)
        assert ended.group(1).startswith("no click or key for 3s (view.idle_timeout)")
        assert command.proc.wait(15) == 0
        assert view_request.read(keeper.paths.runtime_dir) is None
        keeper.wait_state("connected", timeout=30)
    finally:
        keeper.ctx.config = config
        command.close()
