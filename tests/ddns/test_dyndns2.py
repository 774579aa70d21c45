"""dyndns2 against a local server that answers every code of the protocol."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
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
from gateway.ddns.updater import FORCED_REFRESH

Serve = Callable[[Handler], FakeServer]
HOST = "home.example.net"
V4, V6 = "81.2.69.160", "2a02:8070:1::7"


class Dyndns2Server:
    """Answers each request with the next scripted line (the last one repeats)."""

    def __init__(self, serve: Serve, *answers: str | Reply) -> None:
        self.answers = list(answers) or ["good {myip}"]
        self.server = serve(self._reply)

    def _reply(self, request: Received) -> Reply:
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Reply):
            return answer
        return Reply(200, answer.format(myip=request.query.get("myip", "")) + "\n")

    @property
    def received(self) -> list[Received]:
        return self.server.received


def config(
    tmp_path: Path, server: Dyndns2Server, echo: Echo, password: str = "s3cret-pass", **extra: Any
) -> Config:
    secret = write_secret(tmp_path, "dyndns.password", password)
    ddns: dict[str, Any] = {
        "provider": "dyndns2",
        "hostname": HOST,
        "contact": "ops@example.net",
        "ipv4": True,
        "ipv6": extra.pop("ipv6", False),
        "check_every": "5m",
        "detect": {"ipv4": [echo.source("ipv4")], "ipv6": [echo.source("ipv6")]},
        "dyndns2": {
            "server": server.server.url,
            "username": "pi-user",
            "password_file": str(secret),
            **extra,
        },
    }
    return make_config(tmp_path, ddns)


def assert_update(request: Received, **query: str) -> None:
    assert request.method == "GET"
    assert request.path == "/nic/update"
    assert request.query == {"hostname": HOST, **query}
    assert request.basic_auth() == ("pi-user", "s3cret-pass")
    assert request.headers["user-agent"] == AGENT
    assert request.body == b""


def stored(tmp_path: Path) -> dict[str, Any]:
    return dict(json.loads((tmp_path / "ddns.json").read_text()))


@pytest.mark.parametrize("answer", ["good {myip}", "nochg {myip}"])
def test_accepted_answers_store_the_address(
    tmp_path: Path, serve: Serve, echo: Echo, clock: Clock, answer: str
) -> None:
    server = Dyndns2Server(serve, answer)
    updater = make_updater(config(tmp_path, server, echo), tmp_path, clock)
    lines = updater.cycle()
    (request,) = server.received
    assert_update(request, myip=V4)
    record = stored(tmp_path)["accepted"][f"{HOST}/ipv4"]
    assert record["address"] == V4
    assert record["sent_at"] == clock.now and record["clock_synced"] is True
    assert (tmp_path / "ddns.json").stat().st_mode & 0o777 == 0o600
    status = updater.records["ipv4"]
    assert (status.published, status.last_error) == (V4, None)
    assert status.next_check == clock.now + 300
    assert any(f"{HOST} = {V4}" in line for line in lines)


FATAL = ["badauth", "!donator", "notfqdn", "nohost", "numhost", "abuse", "badagent"]


@pytest.mark.parametrize("code", FATAL)
def test_fatal_answer_stops_the_host_across_restarts(
    tmp_path: Path, serve: Serve, echo: Echo, clock: Clock, code: str
) -> None:
    server = Dyndns2Server(serve, code)
    cfg = config(tmp_path, server, echo)
    updater = make_updater(cfg, tmp_path, clock)
    updater.cycle()
    assert len(server.received) == 1
    error = updater.records["ipv4"].last_error
    assert f"answered {code!r}" in error and "stopped until the ddns configuration changes" in error
    assert "ddns.json" in {p.name for p in tmp_path.iterdir()}
    assert f"{HOST}/ipv4" not in stored(tmp_path)["accepted"]

    # Later, and after a restart (a new updater, same state directory): silence.
    clock.advance(3600)
    updater.cycle()
    restarted = make_updater(cfg, tmp_path, clock)
    lines = restarted.cycle(force=True)
    assert len(server.received) == 1
    assert lines and lines[0].startswith("stopped:")
    health, message, _ = restarted.health()
    assert health.value == "degraded" and code in message


def test_a_config_change_lifts_the_stop(
    tmp_path: Path, serve: Serve, echo: Echo, clock: Clock
) -> None:
    server = Dyndns2Server(serve, "badauth", "good {myip}")
    make_updater(config(tmp_path, server, echo), tmp_path, clock).cycle()
    assert len(server.received) == 1
    fixed = config(tmp_path, server, echo, password="the-right-one")
    updater = make_updater(fixed, tmp_path, clock)
    updater.cycle()
    assert len(server.received) == 2
    assert server.received[1].basic_auth() == ("pi-user", "the-right-one")
    assert updater.records["ipv4"].published == V4
    assert stored(tmp_path)["stops"] == {}


def test_http_401_without_a_code_is_badauth(
    tmp_path: Path, serve: Serve, echo: Echo, clock: Clock
) -> None:
    server = Dyndns2Server(serve, Reply(401, "Unauthorized"))
    updater = make_updater(config(tmp_path, server, echo), tmp_path, clock)
    updater.cycle()
    assert "username or password is wrong" in updater.records["ipv4"].last_error
    (stop,) = stored(tmp_path)["stops"].values()
    assert stop["code"] == "badauth"


@pytest.mark.parametrize("code", ["dnserr", "911"])
def test_provider_trouble_waits_at_least_30_minutes(
    tmp_path: Path, serve: Serve, echo: Echo, clock: Clock, code: str
) -> None:
    server = Dyndns2Server(serve, code, "good {myip}")
    updater = make_updater(config(tmp_path, server, echo), tmp_path, clock, rng=0.0)
    start = clock.now
    updater.cycle()
    status = updater.records["ipv4"]
    assert status.next_check >= start + 1800
    assert "waiting 30 minutes" in status.last_error
    clock.advance(1799)
    updater.cycle()
    assert len(server.received) == 1
    clock.advance(1)
    updater.cycle()
    assert len(server.received) == 2
    assert updater.records["ipv4"].published == V4


def test_good_127_0_0_1_is_a_failure(
    tmp_path: Path, serve: Serve, echo: Echo, clock: Clock
) -> None:
    server = Dyndns2Server(serve, "good 127.0.0.1")
    updater = make_updater(config(tmp_path, server, echo), tmp_path, clock)
    updater.cycle()
    status = updater.records["ipv4"]
    assert status.published is None
    assert "ignored the update" in status.last_error and AGENT in status.last_error
    assert (
        not (tmp_path / "ddns.json").exists() or f"{HOST}/ipv4" not in stored(tmp_path)["accepted"]
    )
    assert status.next_check > clock.now  # retried later, not stopped
    assert stored_stops(tmp_path) == {}


def stored_stops(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "ddns.json"
    return stored(tmp_path)["stops"] if path.exists() else {}


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        (Reply(500, "Internal Server Error"), "HTTP 500"),
        (Reply(502, ""), "HTTP 502"),
        (Reply(200, "<html>maintenance</html>"), "not a dyndns2 answer"),
        (Reply(404, "Not Found"), "not a dyndns2 answer"),
    ],
)
def test_errors_back_off_exponentially_with_jitter(
    tmp_path: Path, serve: Serve, echo: Echo, clock: Clock, reply: Reply, why: str
) -> None:
    server = Dyndns2Server(serve, reply)
    updater = make_updater(config(tmp_path, server, echo), tmp_path, clock, rng=1.0)
    waits = []
    for _ in range(9):
        updater.cycle()
        waits.append(updater.records["ipv4"].next_check - clock.now)
        clock.now = updater.records["ipv4"].next_check
        clock.mono += waits[-1]
    assert why in updater.records["ipv4"].last_error
    # rng=1.0 is the top of the jitter: 30 s doubling, capped at retry_max (1 h).
    assert waits == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert len(server.received) == 9
    # The bottom of the jitter is half the ceiling.
    updater.rng = lambda: 0.0
    updater.cycle()
    assert updater.records["ipv4"].next_check - clock.now == 1800


def test_unreachable_server_is_retried(
    tmp_path: Path, serve: Serve, echo: Echo, clock: Clock
) -> None:
    server = Dyndns2Server(serve, "good {myip}")
    cfg = config(tmp_path, server, echo)
    server.server.close()
    updater = make_updater(cfg, tmp_path, clock, rng=0.5)
    updater.cycle()
    status = updater.records["ipv4"]
    assert "could not reach 127.0.0.1" in status.last_error
    assert status.next_check == clock.now + 22.5


def test_nothing_is_sent_when_nothing_changed(
    tmp_path: Path, serve: Serve, echo: Echo, clock: Clock
) -> None:
    server = Dyndns2Server(serve, "good {myip}")
    cfg = config(tmp_path, server, echo)
    updater = make_updater(cfg, tmp_path, clock)
    updater.cycle()
    for _ in range(3):
        clock.advance(300)
        lines = updater.cycle()
        assert lines[-1].endswith("nothing sent to dyndns2")
    # Nor after a restart: the accepted address is persisted.
    make_updater(cfg, tmp_path, clock).cycle()
    assert len(server.received) == 1
    assert len(echo.server.received) == 5  # detection ran every time
    # The address changes: one update.
    echo.answers["/v4"] = "81.2.69.161"
    clock.advance(300)
    updater.cycle()
    assert len(server.received) == 2
    assert_update(server.received[1], myip="81.2.69.161")
    assert updater.records["ipv4"].last_change == clock.now


def test_forced_refresh_after_25_days(
    tmp_path: Path, serve: Serve, echo: Echo, clock: Clock
) -> None:
    server = Dyndns2Server(serve, "good {myip}", "nochg {myip}")
    cfg = config(tmp_path, server, echo)
    make_updater(cfg, tmp_path, clock).cycle()
    first = clock.now
    clock.advance(FORCED_REFRESH - 60)
    make_updater(cfg, tmp_path, clock).cycle()
    assert len(server.received) == 1
    clock.advance(60)
    updater = make_updater(cfg, tmp_path, clock)
    updater.cycle()
    assert len(server.received) == 2
    assert_update(server.received[1], myip=V4)
    record = stored(tmp_path)["accepted"][f"{HOST}/ipv4"]
    assert record["sent_at"] == clock.now
    assert record["changed_at"] == first  # a refresh is not a change


def test_a_time_written_before_ntp_sync_is_not_trusted(
    tmp_path: Path, serve: Serve, echo: Echo, clock: Clock
) -> None:
    server = Dyndns2Server(serve, "good {myip}", "nochg {myip}")
    cfg = config(tmp_path, server, echo)
    clock.synced = False
    make_updater(cfg, tmp_path, clock).cycle()
    assert stored(tmp_path)["accepted"][f"{HOST}/ipv4"]["clock_synced"] is False
    # Still unsynchronised: no refresh on the strength of an untrustworthy clock.
    clock.advance(300)
    make_updater(cfg, tmp_path, clock).cycle()
    assert len(server.received) == 1
    # NTP synchronised: the stored time's age is unknown, so refresh once...
    clock.synced = True
    clock.advance(300)
    updater = make_updater(cfg, tmp_path, clock)
    updater.cycle()
    assert len(server.received) == 2
    assert stored(tmp_path)["accepted"][f"{HOST}/ipv4"]["clock_synced"] is True
    # ...and only once.
    clock.advance(300)
    updater.cycle()
    assert len(server.received) == 2


def test_a_stored_time_in_the_future_triggers_a_refresh(
    tmp_path: Path, serve: Serve, echo: Echo, clock: Clock
) -> None:
    server = Dyndns2Server(serve, "good {myip}", "nochg {myip}")
    cfg = config(tmp_path, server, echo)
    make_updater(cfg, tmp_path, clock).cycle()
    clock.now -= 30 * 86400  # the clock was set back a month
    make_updater(cfg, tmp_path, clock).cycle()
    assert len(server.received) == 2


def test_failed_detection_sends_nothing(
    tmp_path: Path, serve: Serve, echo: Echo, clock: Clock
) -> None:
    server = Dyndns2Server(serve, "good {myip}")
    echo.answers["/v4"] = "192.168.1.20"
    updater = make_updater(config(tmp_path, server, echo), tmp_path, clock)
    updater.cycle()
    assert server.received == []
    error = updater.records["ipv4"].last_error
    assert "record is left alone" in error and "192.168.1.20, a private address" in error


DUAL = [
    ("separate", [{"myip": V4}, {"myip": V6}]),
    ("myip_list", [{"myip": f"{V4},{V6}"}]),
    ("myipv6", [{"myip": V4, "myipv6": V6}]),
]


@pytest.mark.parametrize(("variant", "queries"), DUAL)
def test_dual_stack_variants(
    tmp_path: Path,
    serve: Serve,
    echo: Echo,
    clock: Clock,
    variant: str,
    queries: list[dict[str, str]],
) -> None:
    server = Dyndns2Server(serve, "good {myip}")
    cfg = config(tmp_path, server, echo, ipv6=True, dual_stack=variant)
    updater = make_updater(cfg, tmp_path, clock)
    updater.cycle()
    assert len(server.received) == len(queries)
    for request, query in zip(server.received, queries, strict=True):
        assert_update(request, **query)
    assert {f: s.published for f, s in updater.records.items()} == {"ipv4": V4, "ipv6": V6}


def test_a_fatal_answer_stops_the_second_family_s_request_too(
    tmp_path: Path, serve: Serve, echo: Echo, clock: Clock
) -> None:
    server = Dyndns2Server(serve, "badauth")
    cfg = config(tmp_path, server, echo, ipv6=True, dual_stack="separate")
    updater = make_updater(cfg, tmp_path, clock)
    updater.cycle()
    (request,) = server.received
    assert_update(request, myip=V4)
    assert all("badauth" in s.last_error for s in updater.records.values())


@pytest.mark.parametrize(
    ("variant", "query"),
    [
        ("separate", {"myip": "2a02:8070:1::8"}),
        # Together: the unchanged IPv4 rides along, so that it is neither deleted nor
        # replaced by the request's source address.
        ("myip_list", {"myip": f"{V4},2a02:8070:1::8"}),
        ("myipv6", {"myip": V4, "myipv6": "2a02:8070:1::8"}),
    ],
)
def test_only_ipv6_changed(
    tmp_path: Path,
    serve: Serve,
    echo: Echo,
    clock: Clock,
    variant: str,
    query: dict[str, str],
) -> None:
    server = Dyndns2Server(serve, "good {myip}")
    cfg = config(tmp_path, server, echo, ipv6=True, dual_stack=variant)
    updater = make_updater(cfg, tmp_path, clock)
    updater.cycle()
    sent = len(server.received)
    echo.answers["/v6"] = "2a02:8070:1::8"
    clock.advance(300)
    updater.cycle()
    assert len(server.received) == sent + 1
    assert_update(server.received[-1], **query)


def test_myip_list_keeps_the_last_accepted_ipv4_when_its_detection_fails(
    tmp_path: Path, serve: Serve, echo: Echo, clock: Clock
) -> None:
    server = Dyndns2Server(serve, "good {myip}")
    cfg = config(tmp_path, server, echo, ipv6=True, dual_stack="myip_list")
    updater = make_updater(cfg, tmp_path, clock)
    updater.cycle()
    echo.answers["/v4"] = None  # the IPv4 echo is down
    echo.answers["/v6"] = "2a02:8070:1::8"
    clock.advance(300)
    updater.cycle()
    assert_update(server.received[-1], myip=f"{V4},2a02:8070:1::8")
    assert "record is left alone" in updater.records["ipv4"].last_error


def test_dry_run_sends_nothing_and_writes_nothing(
    tmp_path: Path, serve: Serve, echo: Echo, clock: Clock
) -> None:
    from gateway.ddns.store import Store
    from gateway.ddns.updater import Updater

    server = Dyndns2Server(serve, "good {myip}")
    cfg = config(tmp_path, server, echo)
    updater = Updater(cfg.ddns, Store(tmp_path / "ddns.json", readonly=True), clock=clock.time)
    lines = updater.cycle(dry_run=True)
    assert server.received == []
    assert not (tmp_path / "ddns.json").exists()
    assert any(
        f"would send GET {server.server.url}/nic/update?hostname={HOST}&myip={V4}" in line
        for line in lines
    )
    assert "s3cret" not in "".join(lines)


def test_a_lasting_problem_is_logged_once(
    tmp_path: Path, serve: Serve, echo: Echo, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    server = Dyndns2Server(serve, Reply(503, "busy"), Reply(503, "busy"), "good {myip}")
    updater = make_updater(config(tmp_path, server, echo), tmp_path, clock)
    caplog.set_level("INFO", logger="gateway.ddns")
    for _ in range(3):
        updater.cycle()
        clock.now = updater.records["ipv4"].next_check
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", f"{server.server.url} for {HOST} answered HTTP 503; will retry"),
        ("INFO", f"IPv4: published {HOST} = {V4} ({server.server.url} answered 'good {V4}')"),
    ]
