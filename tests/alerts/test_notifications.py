"""Notifications: what the Watcher decides from the facts, and what reaches a real HTTP
endpoint through apprise's json:// plugin (tests/helpers/alerts.py)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import MINIMAL_CONFIG, REPO, FakeClock, NotifySocket, StartDaemon, wait_until
from helpers.alerts import Inbox

from gateway.alerts import run_marker
from gateway.alerts.events import Watcher
from gateway.alerts.sender import Sender
from gateway.config import (
    Config,
    Duration,
    NotifyConfig,
    Secret,
    SessionConfig,
    load_config_text,
)
from gateway.secrets import redact, register_secret, register_secrets
from gateway.state import State
from gateway.vocabulary import Health

T0 = 1_800_000_000.0


@pytest.fixture
def inbox() -> Iterator[Inbox]:
    box = Inbox()
    yield box
    box.close()


def make_config(url: str = "json://127.0.0.1:9/none", **notify: object) -> Config:
    settings: dict[str, object] = {
        "urls": [Secret(url)],
        "tunnel_down_after": Duration(600),
        "repeat_after": Duration(3600),
    }
    settings.update(notify)
    return Config(
        sessions=[SessionConfig(name="colab", notebook_url="https://colab.example/drive/1")],
        notify=NotifyConfig(**settings),  # type: ignore[arg-type]
    )


def running_state(*components: str) -> State:
    state = State()
    for name in components or ("browser", "tunnel"):
        state.set_health(name, Health.OK, "fine")
    state.session("colab")
    return state


def test_signed_out_is_sent_once_with_what_since_and_todo_then_resolved(
    inbox: Inbox, tmp_path: Path
) -> None:
    state = running_state()
    shot = tmp_path / "signin.png"
    shot.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    state.update_runtime(
        "colab", state="signed_out", since=T0, message="Google sign-in needed", screenshot=str(shot)
    )
    watcher = Watcher(make_config(inbox.url), host="pi")
    sender = Sender([inbox.url])
    sender.start()
    try:
        first = watcher.evaluate(state.view(T0 + 5), T0 + 5)
        assert [a.event for a in first] == ["human_needed"]
        assert watcher.evaluate(state.view(T0 + 60), T0 + 60) == []  # still the same problem
        for alert in first:
            sender.put(alert)
        state.update_runtime("colab", state="connected", since=T0 + 120)
        resolved = watcher.evaluate(state.view(T0 + 120), T0 + 120)
        assert [(a.event, a.resolved) for a in resolved] == [("human_needed", True)]
        for alert in resolved:
            sender.put(alert)
        inbox.wait_for("resolved")
    finally:
        sender.stop()
    post = inbox.wait_for("Google wants a sign-in")
    assert post["title"] == "colab-gateway on pi: Google wants a sign-in"
    assert "(session colab), since 2027-01-15 08:00 UTC (5s ago)." in post["message"]
    assert (
        "To do: sign the browser profile in again: on the Pi run colab-gateway login"
        in (post["message"])
    )
    # the evidence screenshot rides along where the service takes attachments
    assert [a["filename"] for a in post["attachments"]] == ["signin.png"]
    assert base64.b64decode(post["attachments"][0]["base64"]) == shot.read_bytes()
    assert inbox.count("Google wants a sign-in") == 2  # the problem, then its "resolved"
    resolved_post = inbox.wait_for("resolved: Google wants a sign-in")
    assert "Resolved (session colab) after 2m" in resolved_post["message"]


def test_repeat_after_holds_for_an_unresolved_problem() -> None:
    state = running_state()
    state.update_runtime("colab", state="too_many_sessions", since=T0)
    clock = FakeClock(T0)
    watcher = Watcher(make_config(repeat_after=Duration(3600)))
    sent_at = []
    for minutes in range(0, 181, 10):  # three hours, looked at every ten minutes
        clock.now = T0 + minutes * 60
        if watcher.evaluate(state.view(clock()), clock()):
            sent_at.append(minutes)
    assert sent_at == [0, 60, 120, 180]


def test_runtime_lost_and_tunnel_down_wait_for_tunnel_down_after() -> None:
    state = running_state()
    watcher = Watcher(make_config(tunnel_down_after=Duration(600)))
    state.update_runtime("colab", state="disconnected", since=T0)
    assert watcher.evaluate(state.view(T0 + 599), T0 + 599) == []
    assert watcher.next_due == T0 + 600  # the component wakes up for it, no polling
    lost = watcher.evaluate(state.view(T0 + 600), T0 + 600)
    assert [a.event for a in lost] == ["runtime_lost"]
    assert "could not be reconnected" in lost[0].title and "now: disconnected" in lost[0].body
    # connected again (vm_id unknown), tunnel still down since before: tunnel_down after 10 min
    state.update_runtime("colab", state="connected", since=T0 + 700)
    state.update_tunnel("colab", up=False, since=T0)
    back = watcher.evaluate(state.view(T0 + 700), T0 + 700)
    assert [(a.event, a.resolved) for a in back] == [("runtime_lost", True)]
    assert watcher.evaluate(state.view(T0 + 1299), T0 + 1299) == []
    down = watcher.evaluate(state.view(T0 + 1300), T0 + 1300)
    assert [a.event for a in down] == ["tunnel_down"]
    assert "tunnel is down" in down[0].title and "bootstrap has not been re-run" in down[0].body


def test_vm_reset_reports_the_reruns_outcome_once() -> None:
    state = running_state()
    watcher = Watcher(make_config())
    state.update_runtime("colab", state="connected", vm_id="vm-a", since=T0)
    state.update_tunnel("colab", up=True, since=T0 + 1)
    assert watcher.evaluate(state.view(T0 + 2), T0 + 2) == []  # the first VM is no reset
    state.update_runtime("colab", vm_id="vm-b", since=T0 + 100)
    state.update_tunnel("colab", up=False, since=T0 + 100)
    assert watcher.evaluate(state.view(T0 + 101), T0 + 101) == []  # outcome not known yet
    state.update_runtime("colab", last_rerun=T0 + 110)
    state.update_tunnel("colab", up=True, since=T0 + 130)
    alerts = watcher.evaluate(state.view(T0 + 131), T0 + 131)
    assert [a.event for a in alerts] == ["vm_reset"]
    assert "new VM (vm-a -> vm-b)" in alerts[0].title
    assert "re-run 2027-01-15 08:01 UTC; the tunnel came back after 30s" in alerts[0].body
    assert watcher.evaluate(state.view(T0 + 200), T0 + 200) == []


def test_ddns_stop_and_gpu_limit_while_waiting_need_a_person() -> None:
    state = running_state("browser", "ddns")
    config = make_config()
    config = Config(
        sessions=config.sessions,
        notify=config.notify,
        browser=type(config.browser)(on_gpu_limit="wait"),
    )
    watcher = Watcher(config)
    state.set_health("ddns", Health.DEGRADED, "badauth", stopped="the provider answered badauth")
    state.update_runtime("colab", state="gpu_limit", since=T0)
    alerts = watcher.evaluate(state.view(T0), T0)
    assert sorted(a.event for a in alerts) == ["ddns_stopped", "human_needed"]
    ddns = next(a for a in alerts if a.event == "ddns_stopped")
    assert "the provider answered badauth" in ddns.body and "systemctl reload" in ddns.body
    gpu = next(a for a in alerts if a.event == "human_needed")
    assert "GPU usage limit" in gpu.title


def test_events_not_listed_are_not_sent() -> None:
    state = running_state()
    watcher = Watcher(make_config(events=["tunnel_down"]))
    state.update_runtime("colab", state="signed_out", since=T0)
    assert watcher.evaluate(state.view(T0), T0) == []


def test_what_is_sent_goes_through_the_log_redaction(inbox: Inbox) -> None:
    register_secret("hunter2-secret-token")
    state = running_state()
    state.update_runtime(
        "colab", state="needs_human", since=T0, message="token hunter2-secret-token leaked"
    )
    sender = Sender([inbox.url])
    sender.start()
    try:
        for alert in Watcher(make_config(inbox.url)).evaluate(state.view(T0), T0):
            sender.put(alert)
        post = inbox.wait_for("reCAPTCHA keeps coming back")
    finally:
        sender.stop()
    assert "hunter2-secret-token" not in json.dumps(post)
    assert "token <redacted> leaked" in post["message"]


def test_a_failing_endpoint_is_retried_and_shows_in_the_status() -> None:
    box = Inbox(fail_first=2)  # HTTP 500 twice, then OK
    try:
        sender = Sender([box.url], retry_first=0.2, retry_max=1.0)
        sender.start()
        try:
            state = running_state()
            state.update_runtime("colab", state="signed_out", since=T0)
            for alert in Watcher(make_config(box.url)).evaluate(state.view(T0), T0):
                sender.put(alert)
            failing = wait_until(
                lambda: not sender.status()[0] and sender.status(), 10, "a failure in the status"
            )
            _ok, message, details = failing
            assert "URL 1 (json://127.0.0.1:" in message and "failure(s) in a row" in message
            assert details["targets"][0]["pending"] == 1
            box.wait_for("Google wants a sign-in", timeout=15)
            assert box.refused == 2
            wait_until(lambda: sender.status()[0], 5, "the status well again")
            assert sender.status()[1] == "1 URL(s), 1 message(s) sent"
        finally:
            sender.stop()
    finally:
        box.close()


def test_config_reads_urls_from_a_secret_file(tmp_path: Path) -> None:
    secret = tmp_path / "notify.urls"
    secret.write_text("# phone\nntfy://ntfy.sh/topic-abc\n\njson://127.0.0.1:1/x\n")
    secret.chmod(0o600)
    text = (
        MINIMAL_CONFIG
        + f"notify:\n  urls: [json://a.example/x]\n  urls_file: {secret}\n  repeat_after: 1h\n"
    )
    loaded = load_config_text(text, str(tmp_path / "c.yaml"))
    notify = loaded.config.notify
    assert notify.all_urls() == [
        "json://a.example/x",
        "ntfy://ntfy.sh/topic-abc",
        "json://127.0.0.1:1/x",
    ]
    assert "topic-abc" not in repr(notify)
    register_secrets(loaded)  # each line of the file is a secret of its own
    assert redact("sent to ntfy://ntfy.sh/topic-abc") == "sent to <redacted>"
    assert notify.repeat_after == 3600 and notify.tunnel_down_after == 600


def test_notify_test_prints_each_urls_result(inbox: Inbox, tmp_path: Path) -> None:
    dead = Inbox()
    dead_url = dead.url
    dead.close()  # a closed port: that URL must fail
    config = tmp_path / "config.yaml"
    config.write_text(MINIMAL_CONFIG + f"notify:\n  urls: ['{inbox.url}', '{dead_url}']\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "notify", "--test", "-c", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    lines = result.stdout.splitlines()
    assert result.returncode == 1, result.stdout + result.stderr
    assert lines[0] == f"sent    URL 1 (json://{inbox.url.split('/')[2]})"
    assert lines[1].startswith(f"FAILED  URL 2 (json://{dead_url.split('/')[2]}): ")
    assert "test message" in inbox.wait_for("test message")["title"]


def test_daemon_restarted_after_an_unclean_end_even_through_a_failing_endpoint(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    box = Inbox(fail_first=1)
    try:
        state_dir = tmp_path / "state"
        state_dir.mkdir()
        marker = state_dir / "last-run.json"
        # the previous run: another process, never marked clean (killed by the watchdog)
        marker.write_text(json.dumps({"pid": 1, "started_at": T0, "clean": False}))
        config = MINIMAL_CONFIG + f"notify:\n  urls: ['{box.url}']\n"
        daemon = start_daemon(config)
        status = [sys.executable, "-m", "gateway", "status", "--json"]
        status += ["--runtime-dir", str(daemon.runtime_dir)]

        def alerts_status() -> dict[str, object] | None:
            out = subprocess.run(status, capture_output=True, text=True, cwd=REPO, timeout=30)
            if not out.stdout:
                return None
            return json.loads(out.stdout).get("components", {}).get("alerts")  # type: ignore[no-any-return]

        # the first post fails: the status says so, and the daemon goes on answering
        failing = wait_until(
            lambda: (s := alerts_status()) and s["health"] == "degraded" and s, 30, "degraded"
        )
        assert "URL 1 (json://127.0.0.1:" in str(failing["message"])
        post = box.wait_for("restarted", timeout=30)  # the retry (5-10 s later) gets through
        assert "did not stop cleanly" in post["title"]
        assert "journalctl -u colab-gateway" in post["message"]
        wait_until(lambda: (s := alerts_status()) and s["health"] == "ok", 15, "alerts ok")
        current = run_marker.read(marker)
        assert current is not None and not current.clean and current.pid == daemon.proc.pid
        assert daemon.stop() == 0
        stopped = run_marker.read(marker)
        assert stopped is not None and stopped.clean  # a clean stop is no restart next time
        assert os.stat(marker).st_mode & 0o077 == 0
    finally:
        box.close()


def test_human_needed_names_the_view_command_and_a_paused_session_keeps_its_problem() -> None:
    state = running_state()
    watcher = Watcher(make_config(), view_command=lambda s: f"colab-gateway view {s}")
    state.update_runtime("colab", state="needs_human", since=T0)
    (alert,) = watcher.evaluate(state.view(T0), T0)
    assert "To do: answer it: run colab-gateway view colab on the Pi, then tick the box" in (
        alert.body
    )
    # a person took the page (colab-gateway view): not "resolved" yet
    state.update_runtime("colab", state="paused", since=T0 + 10)
    assert watcher.evaluate(state.view(T0 + 10), T0 + 10) == []
    assert watcher.evaluate(state.view(T0 + 7200), T0 + 7200) == []  # nor repeated
    state.update_runtime("colab", state="connected", since=T0 + 7260)
    (resolved,) = watcher.evaluate(state.view(T0 + 7260), T0 + 7260)
    assert resolved.resolved and "after 2h01m" in resolved.body


# -- attack 9: the secret parts of notify URLs -------------------------------------------------

# Each is the secret of its URL: an ntfy topic, a password, an access token (as a bot token
# is), and a topic shorter than secrets.MIN_LENGTH, which cannot be registered and must
# still never be shown.
TOPIC, PASSWORD, TOKEN, SHORT_TOPIC = "topic-s3cr3t-91", "pa55-s3cr3t-82", "tk_s3cr3t73", "q7z"


class FailingNtfy:
    """An ntfy server that answers every post 500, echoing the topic it was asked for (as
    servers do: "forbidden: topic X"), on 127.0.0.1."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                asked = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                body = json.dumps(
                    {"code": 50001, "http": 500, "error": f"cannot publish to {asked['topic']}"}
                ).encode()
                self.send_response(500)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_PUT = do_POST

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        port = self.server.server_address[1]
        self.urls = [
            f"ntfy://alice:{PASSWORD}@127.0.0.1:{port}/{TOPIC}",
            f"ntfy://127.0.0.1:{port}/{SHORT_TOPIC}?auth=token&token={TOKEN}",
        ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def failing_ntfy() -> Iterator[FailingNtfy]:
    server = FailingNtfy()
    yield server
    server.close()


def assert_no_secret(text: str, where: str) -> None:
    for secret in (TOPIC, PASSWORD, TOKEN, SHORT_TOPIC):
        assert secret not in text, f"{secret!r} in {where}: {text}"


def test_notify_test_never_shows_a_urls_secret_parts(
    failing_ntfy: FailingNtfy, tmp_path: Path
) -> None:
    """Fails on b2ceba6: apprise's "Failed to send ntfy notification to topic 'topic-…'"
    was printed; only whole URLs were registered for redaction."""
    config = tmp_path / "config.yaml"
    config.write_text(MINIMAL_CONFIG + f"notify:\n  urls: {json.dumps(failing_ntfy.urls)}\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "notify", "--test", "-c", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert_no_secret(result.stdout + result.stderr, "notify --test")
    port = failing_ntfy.server.server_address[1]
    assert result.stdout.splitlines() == [
        f"FAILED  URL 1 (ntfy://127.0.0.1:{port}): the service did not take the message "
        "(Failed to send ntfy notification to topic '<redacted>': cannot publish to "
        "<redacted>, error=50001.)",
        f"FAILED  URL 2 (ntfy://127.0.0.1:{port}): the service did not take the message "
        "(Failed to send ntfy notification to topic '<redacted>': cannot publish to "
        "<redacted>, error=50001.)",
    ]


def test_a_failing_ntfy_server_shows_no_secret_in_status_line_status_json_or_log(
    failing_ntfy: FailingNtfy,
    notify_socket: NotifySocket,
    start_daemon: StartDaemon,
    tmp_path: Path,
) -> None:
    """Fails on b2ceba6: the topic was in STATUS=, `status --json` and the log."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    # An unclean previous run: the daemon has something to send at once.
    (state_dir / "last-run.json").write_text(
        json.dumps({"pid": 1, "started_at": T0, "clean": False})
    )
    config = MINIMAL_CONFIG + f"notify:\n  urls: {json.dumps(failing_ntfy.urls)}\n"
    daemon = start_daemon(config, env={"NOTIFY_SOCKET": str(notify_socket.path)})
    status = [sys.executable, "-m", "gateway", "status", "--json"]
    status += ["--runtime-dir", str(daemon.runtime_dir)]

    def both_failing() -> str | None:
        out = subprocess.run(status, capture_output=True, text=True, cwd=REPO, timeout=30)
        alerts = json.loads(out.stdout or "{}").get("components", {}).get("alerts", {})
        errors = [t["error"] for t in alerts.get("details", {}).get("targets", [])]
        return out.stdout if len(errors) == 2 and all(errors) else None

    shown = wait_until(both_failing, 30, "both URLs failing in status --json")
    assert_no_secret(shown, "status --json")
    assert "topic '<redacted>'" in shown
    line = ""
    deadline = time.monotonic() + 30
    while "URL 2" not in line and time.monotonic() < deadline:
        line = notify_socket.wait_for("STATUS=", timeout=max(0.1, deadline - time.monotonic()))
    assert "the service did not take the message" in line
    assert daemon.stop() == 0
    for _, message in notify_socket.messages:
        assert_no_secret(message, "sd_notify")
    log = daemon.output()
    assert "sending failed" in log
    assert_no_secret(log, "the daemon's log")


def test_check_config_refuses_a_url_apprise_cannot_parse(tmp_path: Path) -> None:
    """Fails on b2ceba6: only the SCHEME:// shape was checked; the daemon started with a URL
    it could never send to."""
    token = "not-a-bot-token-5s3cr3t"
    config = tmp_path / "config.yaml"
    config.write_text(
        MINIMAL_CONFIG
        + "notify:\n"
        + "  urls:\n"
        + "    - ntfy://ntfy.sh/fine-topic-123\n"
        + f"    - tgram://{token}/12345678\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "-c", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 78, result.stdout + result.stderr
    assert token not in result.stdout + result.stderr and "12345678" not in result.stderr
    assert result.stderr.splitlines() == [
        f"{config}:8:7: notify.urls[1]: apprise cannot use this tgram:// URL "
        "(tgram://<redacted>/<redacted>): Unparseable Telegram URL "
        "tgram://<redacted>/<redacted>; write it as https://appriseit.com/services/telegram/ "
        "shows"
    ], result.stderr
