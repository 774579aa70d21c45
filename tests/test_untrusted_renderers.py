"""Text from outside never reaches a person raw: a hostile text (an OSC that retitles the
terminal, a clear-screen, a newline that forges a line, a bidi override, 10,000 characters)
put where the outside puts it shows escaped and bounded in every renderer.

One real daemon (its DDNS provider answering the hostile text, its heartbeat pinging a
local server, its sd_notify socket a real datagram socket) serves the STATUS=, ``status``,
heartbeat and tmux tests; the notification and sync-fact tests drive the pure parts
(the page classifier, the State, the Watcher) the way their own tests do, with the real
sender posting to a local HTTP server.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO, Daemon, NotifySocket, end_daemons, start_daemon, wait_until
from helpers.alerts import Inbox
from helpers.ddns import Echo, FakeServer, Received, Reply, write_secret
from helpers.tmux import short_dir

from gateway import status_line
from gateway.alerts.events import Watcher
from gateway.alerts.sender import Sender
from gateway.browser import colab_dom
from gateway.browser.page_state import SessionMachine, classify
from gateway.config import Config, Duration, NotifyConfig, Secret, SessionConfig
from gateway.heartbeat.component import verdict
from gateway.state import State
from gateway.tmux import pane_ssh
from gateway.vocabulary import Health, RestoreState

# What a hostile VM, page or provider writes: retitle the terminal (OSC 0 … BEL), clear it,
# forge a line of its own, reverse what follows, and go on for 10,000 characters.
MARK = "pwned-title"
HOSTILE = f"\x1b]0;{MARK}\x07\x1b[2J\nFORGED=1 a line of the attacker's\u202ereversed" + (
    "A" * 10_000
)
RAW = ("\x1b", "\x07", "\u202e")  # none of these may reach a person as such
ESCAPED_OSC = f"\\x1b]0;{MARK}\\x07"  # how untrusted() shows the OSC instead
# The bounds each renderer promises (status_line.SUMMARY_LIMIT, REPORT_LINE_LIMIT,
# pane_ssh.SCREEN_LINE_LIMIT, heartbeat REASON_MAX, the notification's title and lines).
STATUS_MAX = 1000
REPORT_LINE_MAX = 1100
SCREEN_LINE_MAX = 1100
FACT_MAX = 1000  # what the State keeps of a message
REASON_MAX = 500
TITLE_MAX = 200
BODY_LINE_MAX = 800
DIALOG_TITLE_MAX = 120


def assert_shown_safely(text: str, limit: int, where: str) -> None:
    """``text`` is one line of at most ``limit`` characters with nothing of HOSTILE raw."""
    for char in RAW:
        assert char not in text, f"{char!r} reached {where} raw: {text[:300]!r}"
    assert "\n" not in text and "\r" not in text, f"a forged line in {where}: {text[:300]!r}"
    assert len(text) <= limit, f"{where} is {len(text)} characters long, above {limit}"


# -- a real daemon whose DDNS provider answers the hostile text -------------------------------


@dataclass
class Rig:
    daemon: Daemon
    notify: NotifySocket
    checks: FakeServer
    servers: list[FakeServer]


def _cloudflare_refusing(request: Received) -> Reply:
    # A provider's error envelope; code 1004 is no authentication error, so the updater
    # reports it as a refusal, quoting the message.
    errors = [{"code": 1004, "message": HOSTILE}]
    body = json.dumps({"success": False, "errors": errors, "messages": [], "result": None})
    return Reply(400, body, headers={"Content-Type": "application/json"})


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    workdir = tmp_path_factory.mktemp("hostile")
    servers: list[FakeServer] = []

    def serve(handler: Any) -> FakeServer:
        server = FakeServer(handler)
        servers.append(server)
        return server

    checks = serve(lambda r: Reply(200, "OK"))
    provider = serve(_cloudflare_refusing)
    echo = Echo(serve, "81.2.69.160", None)
    notify = NotifySocket(workdir / "notify.sock")
    config = {
        "sessions": [
            {"name": "colab", "notebook_url": "https://colab.research.google.com/drive/test"}
        ],
        "browser": {"enabled": False},
        "tmux": {"enabled": False},
        "tunnel": {"enabled": False},
        "healthcheck": {"url": f"{checks.url}/ping/uuid-1", "every": "1s"},
        "ddns": {
            "provider": "cloudflare",
            "hostname": "home.example.net",
            "contact": "ops@example.net",
            "detect": {"ipv4": [echo.source("ipv4")]},
            "cloudflare": {
                "api_token_file": str(write_secret(workdir, "cf.token", "cf-token-0123456789")),
                "api_base": f"{provider.url}/client/v4",
            },
        },
    }
    daemon = start_daemon(workdir, json.dumps(config), env={"NOTIFY_SOCKET": str(notify.path)})
    try:
        # The provider has answered once the daemon's State quotes it.
        wait_until(
            lambda: "Cloudflare refused" in json.dumps(_socket_status(daemon)),
            30,
            "the provider's refusal in the daemon's status",
        )
        yield Rig(daemon, notify, checks, servers)
    finally:
        end_daemons([daemon], workdir)
        notify.close()
        for server in servers:
            server.close()


def _socket_status(daemon: Daemon) -> dict[str, object]:
    from gateway.status_server import query

    try:
        return query(daemon.runtime_dir / "status.sock")
    except (OSError, ValueError):
        return {}


def _cli(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args, "--runtime-dir", str(daemon.runtime_dir)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )


def test_the_status_line_sent_to_systemd_is_one_escaped_bounded_line(rig: Rig) -> None:
    line = rig.notify.wait_for("STATUS=", 30)
    while "Cloudflare refused" not in line:
        line = rig.notify.wait_for("STATUS=", 30)
    # The datagram is split on newlines: a forged line would arrive as its own assignment.
    assert not any(m.startswith("FORGED=") for _, m in rig.notify.messages)
    assert_shown_safely(line.removeprefix("STATUS="), STATUS_MAX, "STATUS=")
    assert ESCAPED_OSC in line


def test_colab_gateway_status_escapes_and_bounds_every_line(rig: Rig) -> None:
    shown = _cli(rig.daemon, "status")
    assert shown.returncode == 1, shown.stderr  # ddns degraded
    assert "Cloudflare refused" in shown.stdout
    for line in shown.stdout.splitlines():
        assert_shown_safely(line, REPORT_LINE_MAX, "colab-gateway status")
        assert not line.startswith("FORGED"), "a line forged by the provider's newline"
    assert ESCAPED_OSC in shown.stdout


def test_colab_gateway_status_json_holds_escaped_bounded_values(rig: Rig) -> None:
    shown = _cli(rig.daemon, "status", "--json")
    assert shown.stdout.isascii(), "ensure_ascii: no character acts on the terminal"
    data = json.loads(shown.stdout)
    message = data["components"]["ddns"]["message"]
    assert "Cloudflare refused" in message
    assert_shown_safely(message, FACT_MAX, "status --json's ddns message")
    assert_shown_safely(data["summary"], STATUS_MAX, "status --json's summary")


def test_the_heartbeat_reason_is_escaped_and_bounded(rig: Rig) -> None:
    def failing_pings() -> list[bytes]:
        return [
            r.body
            for r in list(rig.checks.received)
            if r.path == "/ping/uuid-1/fail" and b"Cloudflare refused" in r.body
        ]

    body = wait_until(failing_pings, 30, "a /fail ping quoting the provider")[-1]
    reason = body.decode()
    assert_shown_safely(reason, REASON_MAX, "the heartbeat reason")
    assert ESCAPED_OSC in reason


def test_the_tmux_waiting_screen_shows_the_text_escaped(rig: Rig) -> None:
    """``colab-gateway shell`` in a real tmux pane: the OSC would retitle the pane and the
    clear-screen wipe it; escaped, both are plain text on the waiting screen."""
    tmpdir = short_dir("cg-hostile-")
    env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "TMUX_PANE")}
    env.update({"TMUX_TMPDIR": str(tmpdir), "TERM": "xterm-256color"})

    def tmux(*args: str) -> str:
        done = subprocess.run(
            ["tmux", *args], capture_output=True, text=True, timeout=10, env=env, check=True
        )
        return done.stdout

    shell = [
        sys.executable,
        "-m",
        "gateway",
        "shell",
        "colab",
        "-c",
        str(rig.daemon.config),
        "--state-dir",
        str(rig.daemon.state_dir),
        "--runtime-dir",
        str(rig.daemon.runtime_dir),
    ]
    try:
        tmux("new-session", "-d", "-s", "hostile", "-x", "200", "-y", "50", "-c", str(REPO), *shell)

        def title() -> str:
            return tmux("display-message", "-p", "-t", "hostile", "#{pane_title}")

        def drawn() -> str:
            # The screen drawn from the daemon's snapshot: its summary is on it, or (raw)
            # the OSC retitled the pane, the clear-screen wiped the summary's head and
            # 10,000 characters pushed the rest off.
            text = tmux("capture-pane", "-p", "-J", "-t", "hostile")
            done = "nothing to type here" in text and ("daemon:" in text or MARK in title())
            return text if done else ""

        text = str(wait_until(drawn, 30, "the waiting screen with the daemon's summary"))
        assert MARK not in title(), f"the pane was retitled: {title()!r}"
        assert ESCAPED_OSC in text, text
        assert "waiting for the Colab tunnel" in text, "the clear-screen wiped the screen"
        for line in text.splitlines():
            assert not line.startswith("FORGED"), "a line forged by the provider's newline"
            assert_shown_safely(line, SCREEN_LINE_MAX, "the waiting screen")
    finally:
        subprocess.run(["tmux", "kill-server"], env=env, capture_output=True, timeout=10)
        shutil.rmtree(tmpdir, ignore_errors=True)


# -- page texts into phone messages ------------------------------------------------------------

T0 = 1_800_000_000.0
SEL = colab_dom.merged()


def _config(url: str) -> Config:
    return Config(
        sessions=[SessionConfig(name="colab", notebook_url="https://colab.example/drive/1")],
        notify=NotifyConfig(
            urls=[Secret(url)], tunnel_down_after=Duration(600), repeat_after=Duration(3600)
        ),
    )


def _probe(**overrides: Any) -> dict[str, Any]:
    probe: dict[str, Any] = {
        "url": "https://colab.research.google.com/drive/abc",
        "error_page": False,
        "connect": {"tooltip": "Connect to a new runtime", "text": "Connect"},
        "dialogs": [],
        "recaptcha": False,
        "running": False,
        "vm_id": None,
        "signed_out_element": False,
        "body_excerpt": "",
    }
    probe.update(overrides)
    return probe


def _publish(state: State, machine: SessionMachine, probe: dict[str, Any], now: float) -> None:
    """What the keep-alive does with one look: classify, decide, publish."""
    decision = machine.step(classify(probe, SEL), now)
    state.update_runtime(
        "colab",
        state=decision.state,
        gpu=decision.gpu,
        vm_id=decision.vm_id,
        message=decision.message,
        since=now,
    )


@pytest.fixture
def inbox() -> Iterator[Inbox]:
    box = Inbox()
    yield box
    box.close()


def _send(inbox: Inbox, alerts: list[Any], title: str) -> dict[str, Any]:
    sender = Sender([inbox.url])
    sender.start()
    try:
        for alert in alerts:
            sender.put(alert)
        return inbox.wait_for(title)
    finally:
        sender.stop()


def _running_state() -> State:
    state = State()
    for name in ("browser", "tunnel"):
        state.set_health(name, Health.OK, "fine")
    state.session("colab")
    return state


def test_a_dialog_title_reaches_a_phone_escaped_and_bounded(inbox: Inbox) -> None:
    state = _running_state()
    machine = SessionMachine(SEL)
    machine.page_loaded(T0 - 60)
    dialog = {"title": HOSTILE, "text": "", "buttons": [{"text": "OK", "primary": True}]}
    _publish(state, machine, _probe(dialogs=[dialog]), T0)
    alerts = Watcher(_config(inbox.url), host="pi").evaluate(state.view(T0 + 600), T0 + 600)
    assert [a.event for a in alerts] == ["runtime_lost"]
    post = _send(inbox, alerts, "could not be reconnected")
    assert_shown_safely(post["title"], TITLE_MAX, "the notification title")
    lines = post["message"].split("\n")
    assert not any(line.startswith("FORGED") for line in lines)
    for line in lines:
        assert_shown_safely(line, BODY_LINE_MAX, "a line of the notification body")
    # The title is quoted, escaped, at most 120 characters of it.
    quoted_title = lines[1].split("an unknown dialog '", 1)[1].split("' [", 1)[0]
    assert quoted_title.startswith(ESCAPED_OSC)
    assert len(quoted_title.replace("\\'", "'")) <= DIALOG_TITLE_MAX  # quoted() escapes its quotes


def test_a_vm_id_the_page_names_reaches_a_notification_title_escaped(inbox: Inbox) -> None:
    state = _running_state()
    machine = SessionMachine(SEL)
    machine.page_loaded(T0 - 60)
    connected = {"tooltip": "Connected to\nPython 3 Google Compute Engine backend", "text": "RAM"}
    _publish(state, machine, _probe(connect=connected, vm_id="vm-a"), T0)
    state.update_tunnel("colab", up=True, since=T0 + 1)
    watcher = Watcher(_config(inbox.url), host="pi")
    assert watcher.evaluate(state.view(T0 + 2), T0 + 2) == []
    _publish(state, machine, _probe(connect=connected, vm_id=HOSTILE), T0 + 100)
    state.update_tunnel("colab", up=False, since=T0 + 100)
    state.update_tunnel("colab", up=True, since=T0 + 130)
    alerts = watcher.evaluate(state.view(T0 + 131), T0 + 131)
    assert [a.event for a in alerts] == ["vm_reset"]
    post = _send(inbox, alerts, "new VM")
    assert_shown_safely(post["title"], TITLE_MAX, "the notification title")
    assert ESCAPED_OSC in post["title"]


# -- facts the sync publishes, in every renderer ------------------------------------------------


def _sync_state(**facts: Any) -> State:
    state = State()
    state.set_health("sync", Health.DEGRADED, "session colab: pull refused")
    state.update_sync("colab", enabled=True, **facts)
    return state


@pytest.mark.parametrize(
    "facts",
    [
        # rsync's "file has vanished" names a file the VM chose
        {"problem": f'file has vanished: "{HOSTILE}"'},
        # resume's stderr, after a restore
        {"restore": RestoreState.FAILED, "restore_message": f"resume said: {HOSTILE}"},
    ],
    ids=["pull problem", "resume's stderr"],
)
def test_a_sync_fact_is_escaped_in_every_renderer(facts: dict[str, Any]) -> None:
    view = _sync_state(**facts).view()
    assert_shown_safely(view.summary, STATUS_MAX, "the summary")
    for line in status_line.report(view).splitlines():
        assert_shown_safely(line, REPORT_LINE_MAX, "colab-gateway status")
    # What the daemon sends on its socket, read back by a reader.
    again = type(view).from_json(json.loads(json.dumps(view.to_json())))
    sync = again.sessions["colab"].sync
    for text in (sync.problem, sync.restore_message):
        assert_shown_safely(text, FACT_MAX, "the status socket's sync facts")
    # The tmux waiting screen, drawn into a terminal stand-in.
    watch = pane_ssh.Watch(Path("/nonexistent"))
    watch.snapshot = again
    out = io.StringIO()
    devnull = os.open(os.devnull, os.O_RDONLY)  # no terminal: draw() only writes
    try:
        pane_ssh.Terminal(devnull, out).draw(pane_ssh.screen_lines("colab", watch, None, "", 0.0))
    finally:
        os.close(devnull)
    drawn = out.getvalue().removeprefix("\x1b[H\x1b[2J")
    for line in drawn.split("\r\n"):
        assert_shown_safely(line, SCREEN_LINE_MAX, "the waiting screen")


def test_a_component_message_is_escaped_in_the_heartbeat_reason() -> None:
    state = State()
    state.set_health("ddns", Health.DEGRADED, f"provider said {HOSTILE}")
    ping = verdict(state.view(), "heartbeat")
    assert ping.kind == "fail"
    assert_shown_safely(ping.reason, REASON_MAX, "the heartbeat reason")


def test_restating_the_same_hostile_text_wakes_nobody() -> None:
    """The State compares what it keeps (escaped, bounded): a page that shows the same
    hostile dialog on every look is no change."""
    state = State()
    state.set_health("browser", Health.DEGRADED, HOSTILE)
    state.update_runtime("colab", message=HOSTILE, vm_id=HOSTILE)
    state.update_sync("colab", problem=HOSTILE)
    version = state.version
    state.set_health("browser", Health.DEGRADED, HOSTILE)
    state.update_runtime("colab", message=HOSTILE, vm_id=HOSTILE)
    state.update_sync("colab", problem=HOSTILE)
    assert state.version == version
