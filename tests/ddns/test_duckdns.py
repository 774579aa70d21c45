"""DuckDNS against a local server answering OK (verbose) and KO."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from helpers.ddns import (
    AGENT,
    Clock,
    Echo,
    FakeServer,
    Handler,
    Received,
    Reply,
    make_config,
    make_updater,
    write_secret,
)

from gateway.config import Config

Serve = Callable[[Handler], FakeServer]
TOKEN = "a7c4d0ad-114e-40ef-ba1d-d217904a50f2"
V4, V6 = "81.2.69.160", "2a02:8070:1::7"


class DuckDnsServer:
    def __init__(self, serve: Serve) -> None:
        self.ips: dict[str, str] = {}
        self.server = serve(self._reply)

    def _reply(self, request: Received) -> Reply:
        q = request.query
        if request.path != "/update" or q.get("token") != TOKEN or q.get("domains") != "home":
            return Reply(200, "KO")
        new = {k: v for k, v in (("ip", q.get("ip")), ("ipv6", q.get("ipv6"))) if v}
        changed = any(self.ips.get(k) != v for k, v in new.items())
        self.ips.update(new)
        state = "UPDATED" if changed else "NOCHANGE"
        return Reply(200, f"OK\n{self.ips.get('ip', '')}\n{self.ips.get('ipv6', '')}\n{state}")

    @property
    def received(self) -> list[Received]:
        return self.server.received


def config(
    tmp_path: Path, duck: DuckDnsServer, echo: Echo, token: str = TOKEN, **extra: Any
) -> Config:
    secret = write_secret(tmp_path, "duckdns.token", token)
    return make_config(
        tmp_path,
        {
            "provider": "duckdns",
            "hostname": "home.duckdns.org",
            "contact": "ops@example.net",
            "detect": {"ipv4": [echo.source("ipv4")], "ipv6": [echo.source("ipv6")]},
            "duckdns": {"token_file": str(secret), "server": duck.server.url},
            **extra,
        },
    )


def test_ok_stores_and_unchanged_sends_nothing(
    tmp_path: Path, serve: Serve, echo: Echo, clock: Clock
) -> None:
    duck = DuckDnsServer(serve)
    updater = make_updater(config(tmp_path, duck, echo, ipv6=True), tmp_path, clock)
    updater.cycle()
    (request,) = duck.received
    assert (request.method, request.path) == ("GET", "/update")
    assert request.query == {
        "domains": "home",
        "token": TOKEN,
        "ip": V4,
        "ipv6": V6,
        "verbose": "true",
    }
    assert request.headers["user-agent"] == AGENT
    assert "authorization" not in request.headers and request.body == b""
    assert {f: s.published for f, s in updater.records.items()} == {"ipv4": V4, "ipv6": V6}
    assert duck.ips == {"ip": V4, "ipv6": V6}
    clock.advance(300)
    updater.cycle()
    assert len(duck.received) == 1


def test_a_changed_ipv4_sends_the_ipv6_along(
    tmp_path: Path, serve: Serve, echo: Echo, clock: Clock
) -> None:
    duck = DuckDnsServer(serve)
    updater = make_updater(config(tmp_path, duck, echo, ipv6=True), tmp_path, clock)
    updater.cycle()
    echo.answers["/v4"] = "81.2.69.161"
    clock.advance(300)
    updater.cycle()
    assert duck.received[-1].query["ip"] == "81.2.69.161"
    assert duck.received[-1].query["ipv6"] == V6
    assert updater.records["ipv4"].last_change == clock.now


def test_ko_is_a_failure_that_names_what_to_check(
    tmp_path: Path, serve: Serve, echo: Echo, clock: Clock
) -> None:
    duck = DuckDnsServer(serve)
    updater = make_updater(config(tmp_path, duck, echo, token="not-the-token"), tmp_path, clock)
    updater.cycle()
    (request,) = duck.received
    assert request.query["token"] == "not-the-token"
    status = updater.records["ipv4"]
    assert status.published is None
    assert (
        "DuckDNS answered KO" in status.last_error
        and "ddns.duckdns.token_file" in status.last_error
    )
    assert "not-the-token" not in status.last_error
    assert status.next_check > clock.now
    assert not (tmp_path / "ddns.json").exists()


def test_dry_run_hides_the_token(tmp_path: Path, serve: Serve, echo: Echo, clock: Clock) -> None:
    duck = DuckDnsServer(serve)
    updater = make_updater(config(tmp_path, duck, echo), tmp_path, clock)
    lines = updater.cycle(dry_run=True)
    assert duck.received == []
    text = "\n".join(lines)
    assert f"/update?domains=home&token=<token>&ip={V4}&verbose=true" in text
    assert TOKEN not in text


def test_a_network_error_never_shows_the_token(
    tmp_path: Path, serve: Serve, echo: Echo, clock: Clock
) -> None:
    duck = DuckDnsServer(serve)
    cfg = config(tmp_path, duck, echo)
    duck.server.close()
    updater = make_updater(cfg, tmp_path, clock)
    updater.cycle()
    error = updater.records["ipv4"].last_error
    assert "could not reach 127.0.0.1" in error and "connection refused" in error
    assert TOKEN not in error and "token=" not in error
