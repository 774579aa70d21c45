"""Heartbeat pings of the real daemon, received by a local HTTP server: /start at startup,
/fail with a one-line reason (its secret redacted) while a component is unwell, and a
success once every component is healthy again."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from helpers import StartDaemon, wait_until
from helpers.ddns import Echo, FakeServer, Received, Reply, echo, serve, write_secret

from gateway.heartbeat.component import verdict
from gateway.heartbeat.pinger import BACKLOG, Ping, Pinger, request_for
from gateway.secrets import register_secret
from gateway.state import State
from gateway.vocabulary import Health

__all__ = ["echo", "serve"]  # fixtures

PASSWORD = "s3cret-pass-0c1d"


@pytest.mark.parametrize(
    ("ping", "method", "url", "query", "body"),
    [
        (Ping("start"), "POST", "https://hc-ping.com/u-1/start", {}, b""),
        (Ping("success"), "POST", "https://hc-ping.com/u-1", {}, b""),
        (
            Ping("fail", "ddns failed: x"),
            "POST",
            "https://hc-ping.com/u-1/fail",
            {},
            b"ddns failed: x",
        ),
    ],
)
def test_healthchecks_io_urls(
    ping: Ping, method: str, url: str, query: dict[str, str], body: bytes
) -> None:
    assert request_for("https://hc-ping.com/u-1/", ping) == (method, url, query, body)


def test_uptime_kuma_push_urls() -> None:
    push = "https://kuma.example.net/api/push/Tok3n"
    assert request_for(push, Ping("fail", "tunnel down")) == (
        "GET",
        push,
        {"status": "down", "msg": "tunnel down"},
        b"",
    )
    assert request_for(push, Ping("success"))[2] == {"status": "up", "msg": "OK"}


def test_the_reason_is_one_redacted_line() -> None:
    register_secret("hunter2-secret")
    state = State()
    state.set_health("heartbeat", Health.DEGRADED, "own trouble is not reported")
    state.set_health("healer", Health.OK, "watching")
    state.set_health("ddns", Health.DEGRADED, "provider said\nhunter2-secret is wrong")
    ping = verdict(state.view(), "heartbeat")
    # The provider's newline is shown escaped, as every renderer shows outside text: the
    # reason stays one line, and says what the provider really sent.
    assert ping == Ping("fail", "ddns degraded: provider said\\n<redacted> is wrong")
    state.set_health("ddns", Health.OK, "published")
    assert verdict(state.view(), "heartbeat") == Ping("success")


def test_a_stalled_ping_service_never_holds_up_the_sender(serve: object) -> None:
    """send() only queues: with the service stuck on the first ping, twenty more sends
    return, the oldest waiting pings give way, and the newest one arrives in the end."""
    stalled: FakeServer = serve(lambda r: Reply(200, "OK", delay=30))  # type: ignore[operator]
    results: list[tuple[Ping, str | None]] = []
    pinger = Pinger(f"{stalled.url}/ping/u", 60, lambda p, problem: results.append((p, problem)))
    try:
        pinger.send(Ping("start"))
        wait_until(lambda: stalled.received, 10, "the first ping, which stalls")
        for n in range(20):
            pinger.send(Ping("fail", f"reason {n}"))
        stalled.release.set()  # the service answers again
        wait_until(lambda: any(p.reason == "reason 19" for p, _ in results), 20, "the newest")
    finally:
        pinger.close()
    fails = [r for r in stalled.received if r.path == "/ping/u/fail"]
    assert len(fails) <= BACKLOG < 20
    assert fails[-1].body == b"reason 19"


def test_daemon_pings_start_fail_with_redacted_reason_then_success(
    tmp_path: Path, start_daemon: StartDaemon, serve: object, echo: Echo
) -> None:
    checks: FakeServer = serve(lambda r: Reply(200, "OK"))  # type: ignore[operator]
    # A provider that echoes the credentials back in an answer the gateway does not know:
    # the DDNS component fails with the password in its message.
    provider: FakeServer = serve(lambda r: Reply(200, f"oops {PASSWORD}"))  # type: ignore[operator]
    base = {
        "browser": {"enabled": False},
        "tmux": {"enabled": False},
        "tunnel": {"enabled": False},
        "healthcheck": {"url": f"{checks.url}/ping/uuid-1", "every": "1s"},
    }
    ddns = {
        "provider": "dyndns2",
        "hostname": "home.example.net",
        "contact": "ops@example.net",
        "detect": {"ipv4": [echo.source("ipv4")]},
        "dyndns2": {
            "server": provider.url,
            "username": "pi-user",
            "password_file": str(write_secret(tmp_path, "pw", PASSWORD)),
        },
    }
    daemon = start_daemon(json.dumps({**base, "ddns": ddns}))

    def pings(path: str) -> list[Received]:
        return [r for r in list(checks.received) if r.path == path]

    wait_until(lambda: pings("/ping/uuid-1/start"), 20, "the /start ping")
    failed = wait_until(
        lambda: [r for r in pings("/ping/uuid-1/fail") if b"<redacted>" in r.body],
        30,
        "a /fail ping naming the DDNS failure",
    )[0]
    reason = failed.body.decode()
    assert failed.method == "POST"
    assert reason.startswith("ddns ") and "\n" not in reason
    assert PASSWORD not in reason
    assert all(PASSWORD.encode() not in r.body for r in checks.received)

    # The config drops DDNS: every component is healthy, and a success ping follows.
    daemon.config.write_text(json.dumps({**base, "ddns": {"provider": "none"}}))
    seen = len(checks.received)
    daemon.proc.send_signal(signal.SIGHUP)
    wait_until(
        lambda: [r for r in list(checks.received)[seen:] if r.path == "/ping/uuid-1"],
        20,
        "a success ping after the reload",
    )
    assert daemon.stop(15) == 0, daemon.output()
    assert PASSWORD not in daemon.output()
