"""Cloudflare API v4 against a local server that keeps zones and records like the real one."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from email.utils import formatdate
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

Serve = Callable[[Handler], FakeServer]
HOST = "home.example.net"
TOKEN = "cf-token-0123456789"
V4, V6 = "81.2.69.160", "2a02:8070:1::7"
ZONE_ID = "023e105f4ecef8ad9ca31a8372d0c353"


def envelope(
    result: Any, success: bool = True, errors: list[Any] | None = None, **extra: Any
) -> str:
    return json.dumps(
        {"success": success, "errors": errors or [], "messages": [], "result": result, **extra}
    )


class CloudflareApi:
    """Zones, records, a token; ``faults`` answer instead for a (METHOD, path suffix)."""

    def __init__(self, serve: Serve, records: list[dict[str, Any]] | None = None) -> None:
        self.zones = {"example.net": ZONE_ID}
        self.records = records if records is not None else []
        self.faults: dict[tuple[str, str], list[Reply]] = {}
        self.ignore_name_filter = False  # answer every record, as a broad listing would
        self.per_page_cap = 100
        self.server = serve(self._reply)
        self.base = self.server.url + "/client/v4"

    @property
    def received(self) -> list[Received]:
        return self.server.received

    def fault(self, method: str, suffix: str, *replies: Reply) -> None:
        self.faults[(method, suffix)] = list(replies)

    def _reply(self, request: Received) -> Reply:
        for (method, suffix), replies in self.faults.items():
            if request.method == method and request.path.endswith(suffix) and replies:
                return replies.pop(0)
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            errors = [{"code": 10000, "message": "Authentication error"}]
            return json_reply(403, envelope(None, False, errors))
        parts = request.path.removeprefix("/client/v4").strip("/").split("/")
        if parts == ["zones"] and request.method == "GET":
            name = request.query.get("name")
            zones = [{"id": i, "name": n} for n, i in self.zones.items() if n == name]
            return json_reply(200, envelope(zones))
        if parts[:3] == ["zones", ZONE_ID, "dns_records"]:
            return self._records(request, parts[3:])
        return json_reply(404, envelope(None, False, [{"code": 7003, "message": "no route"}]))

    def _records(self, request: Received, rest: list[str]) -> Reply:
        if request.method == "GET" and not rest:
            q = request.query
            found = [
                r
                for r in self.records
                if self.ignore_name_filter
                or (r["type"] == q.get("type") and r["name"] == q.get("name"))
            ]
            per_page = min(int(q.get("per_page", "20")), self.per_page_cap)
            page = int(q.get("page", "1"))
            chunk = found[(page - 1) * per_page : page * per_page]
            pages = max(1, -(-len(found) // per_page))
            info = {
                "page": page,
                "per_page": per_page,
                "count": len(chunk),
                "total_count": len(found),
                "total_pages": pages,
            }
            return json_reply(200, envelope(chunk, result_info=info))
        if request.method == "POST" and not rest:
            body = request.json()
            record = {"id": f"rec{len(self.records) + 1}", **body}
            self.records.append(record)
            return json_reply(200, envelope(record))
        if request.method == "PATCH" and len(rest) == 1:
            for record in self.records:
                if record["id"] == rest[0]:
                    record.update(request.json())
                    return json_reply(200, envelope(record))
        return json_reply(
            404, envelope(None, False, [{"code": 81044, "message": "Record not found"}])
        )


def json_reply(status: int, body: str, **headers: str) -> Reply:
    return Reply(status, body, {"Content-Type": "application/json", **headers})


def record(rid: str, content: str, rtype: str = "A", name: str = HOST) -> dict[str, Any]:
    return {
        "id": rid,
        "type": rtype,
        "name": name,
        "content": content,
        "ttl": 300,
        "proxied": False,
        "comment": "home",
    }


def config(
    tmp_path: Path, api: CloudflareApi, echo: Echo, token: str = TOKEN, **extra: Any
) -> Config:
    secret = write_secret(tmp_path, "cloudflare.token", token)
    return make_config(
        tmp_path,
        {
            "provider": "cloudflare",
            "hostname": HOST,
            "contact": "ops@example.net",
            "ipv6": extra.pop("ipv6", False),
            "detect": {"ipv4": [echo.source("ipv4")], "ipv6": [echo.source("ipv6")]},
            "cloudflare": {"api_token_file": str(secret), "api_base": api.base, **extra},
        },
    )


def calls(api: CloudflareApi) -> list[tuple[str, str]]:
    return [(r.method, r.path.removeprefix("/client/v4")) for r in api.received]


def assert_headers(api: CloudflareApi) -> None:
    for request in api.received:
        assert request.headers["authorization"] == f"Bearer {TOKEN}"
        assert request.headers["user-agent"] == AGENT


RECORDS = f"/zones/{ZONE_ID}/dns_records"


def test_a_changed_address_patches_only_the_content(
    tmp_path: Path, serve: Serve, echo: Echo, clock: Clock
) -> None:
    api = CloudflareApi(serve, [record("r1", "81.2.69.1")])
    updater = make_updater(config(tmp_path, api, echo), tmp_path, clock)
    lines = updater.cycle()
    assert calls(api) == [("GET", "/zones"), ("GET", RECORDS), ("PATCH", f"{RECORDS}/r1")]
    assert api.received[0].query == {"name": "example.net"}
    assert api.received[1].query == {"type": "A", "name": HOST, "page": "1", "per_page": "100"}
    assert api.received[2].json() == {"content": V4}
    assert api.received[2].headers["content-type"] == "application/json"
    assert_headers(api)
    # TTL, proxied status and comment are untouched.
    assert api.records == [{**record("r1", V4)}]
    assert updater.records["ipv4"].published == V4
    assert "changed the A record from 81.2.69.1" in lines[-1]


def test_nothing_is_written_when_the_record_holds_the_address(
    tmp_path: Path, serve: Serve, echo: Echo, clock: Clock
) -> None:
    api = CloudflareApi(serve, [record("r1", V4)])
    updater = make_updater(config(tmp_path, api, echo), tmp_path, clock)
    updater.cycle()
    clock.advance(300)
    updater.cycle()
    # The zone is looked up once; the record is read back on every check; nothing written.
    assert calls(api) == [("GET", "/zones"), ("GET", RECORDS), ("GET", RECORDS)]
    # Nor is the state file rewritten every check (it lives on an SD card).
    state = (tmp_path / "ddns.json").read_text()
    clock.advance(300)
    updater.cycle()
    assert (tmp_path / "ddns.json").read_text() == state
    assert len(api.received) == 4
    health, _, brief = updater.health()
    assert (health.value, brief) == ("ok", f"ddns {HOST}={V4}")


def test_a_proxied_record_stays_proxied_with_a_warning(
    tmp_path: Path, serve: Serve, echo: Echo, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    api = CloudflareApi(serve, [{**record("r1", "81.2.69.1"), "proxied": True}])
    updater = make_updater(config(tmp_path, api, echo), tmp_path, clock)
    updater.cycle()
    assert api.received[-1].json() == {"content": V4}
    assert api.records[0]["proxied"] is True
    assert "proxied by Cloudflare: the tunnel's SSH cannot pass" in caplog.text


def test_a_missing_record_is_created_dns_only(
    tmp_path: Path, serve: Serve, echo: Echo, clock: Clock
) -> None:
    api = CloudflareApi(serve, [record("r9", "81.2.69.9", name="other.example.net")])
    updater = make_updater(config(tmp_path, api, echo, ipv6=True), tmp_path, clock)
    updater.cycle()
    posts = [r for r in api.received if r.method == "POST"]
    assert [r.path.removeprefix("/client/v4") for r in posts] == [RECORDS, RECORDS]
    assert [p.json() for p in posts] == [
        {
            "type": rtype,
            "name": HOST,
            "content": address,
            "ttl": 1,
            "proxied": False,
            "comment": "kept up to date by colab-gateway",
        }
        for rtype, address in (("A", V4), ("AAAA", V6))
    ]
    assert [
        r.query["type"] for r in api.received if r.method == "GET" and r.path.endswith(RECORDS)
    ] == ["A", "AAAA"]
    assert {f: s.published for f, s in updater.records.items()} == {"ipv4": V4, "ipv6": V6}


def test_pagination_is_followed(tmp_path: Path, serve: Serve, echo: Echo, clock: Clock) -> None:
    others = [record(f"o{i}", f"81.2.70.{i}", name=f"h{i}.example.net") for i in range(3)]
    api = CloudflareApi(serve, [*others, record("r1", "81.2.69.1")])
    api.ignore_name_filter = True
    api.per_page_cap = 2  # the server pages smaller than asked
    updater = make_updater(config(tmp_path, api, echo), tmp_path, clock)
    updater.cycle()
    pages = [
        r.query["page"] for r in api.received if r.method == "GET" and r.path.endswith(RECORDS)
    ]
    assert pages == ["1", "2"]
    assert calls(api)[-1] == ("PATCH", f"{RECORDS}/r1")
    assert [r["content"] for r in api.records] == ["81.2.70.0", "81.2.70.1", "81.2.70.2", V4]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Retry-After", "120"),
        ("retry-after", "120"),  # HTTP/2 proxies lower-case header names
        ("Retry-After", "http-date"),
    ],
)
def test_429_honours_retry_after(
    tmp_path: Path, serve: Serve, echo: Echo, clock: Clock, name: str, value: str
) -> None:
    if value == "http-date":
        value = formatdate(time.time() + 120, usegmt=True)
    api = CloudflareApi(serve, [record("r1", "81.2.69.1")])
    api.fault(
        "PATCH",
        "/r1",
        json_reply(
            429,
            envelope(None, False, [{"code": 971, "message": "Please wait"}]),
            **{name: value},
        ),
    )
    updater = make_updater(config(tmp_path, api, echo), tmp_path, clock, rng=0.0)
    start = clock.now
    updater.cycle()
    status = updater.records["ipv4"]
    assert "rate-limiting" in status.last_error and status.published is None
    assert start + 118 <= status.next_check <= start + 120
    clock.now = status.next_check - 1
    updater.cycle()
    assert len(api.received) == 3  # nothing before Retry-After ran out
    clock.now = status.next_check
    updater.cycle()
    assert calls(api)[-2:] == [("GET", RECORDS), ("PATCH", f"{RECORDS}/r1")]
    assert api.records[0]["content"] == V4
    assert updater.records["ipv4"].last_error is None


def test_a_token_without_dns_edit_gets_an_actionable_error(
    tmp_path: Path, serve: Serve, echo: Echo, clock: Clock
) -> None:
    api = CloudflareApi(serve, [record("r1", "81.2.69.1")])
    api.fault(
        "PATCH",
        "/r1",
        json_reply(
            403, envelope(None, False, [{"code": 10000, "message": "Authentication error"}])
        ),
    )
    updater = make_updater(config(tmp_path, api, echo), tmp_path, clock)
    updater.cycle()
    error = updater.records["ipv4"].last_error
    assert error.startswith(
        "Cloudflare rejected the token: it needs Zone → DNS → Edit on example.net"
    )
    assert "10000: Authentication error" in error
    assert TOKEN not in error
    assert api.records[0]["content"] == "81.2.69.1"
    health, message, _ = updater.health()
    assert health.value == "degraded" and "Zone → DNS → Edit" in message


def test_a_wrong_token_fails_at_the_zone_lookup(
    tmp_path: Path, serve: Serve, echo: Echo, clock: Clock
) -> None:
    api = CloudflareApi(serve, [record("r1", "81.2.69.1")])
    updater = make_updater(config(tmp_path, api, echo, token="wrong-token-xyz"), tmp_path, clock)
    updater.cycle()
    assert calls(api) == [("GET", "/zones")]
    assert api.received[0].headers["authorization"] == "Bearer wrong-token-xyz"
    error = updater.records["ipv4"].last_error
    assert "Cloudflare rejected the token: it needs Zone → Zone → Read on example.net" in error


def test_an_unknown_zone_says_what_to_set(
    tmp_path: Path, serve: Serve, echo: Echo, clock: Clock
) -> None:
    api = CloudflareApi(serve)
    updater = make_updater(config(tmp_path, api, echo, zone="example.org"), tmp_path, clock)
    updater.cycle()
    assert api.received[0].query == {"name": "example.org"}
    error = updater.records["ipv4"].last_error
    assert "no zone named example.org" in error and "ddns.cloudflare.zone" in error


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        (
            json_reply(
                200,
                envelope(
                    None, False, [{"code": 9005, "message": "Content for A record is invalid"}]
                ),
            ),
            "refused to change the record for home.example.net: 9005: Content for A record "
            "is invalid",
        ),
        (
            json_reply(
                400, envelope(None, False, [{"code": 1004, "message": "DNS Validation Error"}])
            ),
            "1004: DNS Validation Error",
        ),
        (Reply(502, "<html>Bad gateway</html>", {"Content-Type": "text/html"}), "HTTP 502"),
        (json_reply(200, envelope({"id": "r1", "content": "81.2.69.99"})), "holds '81.2.69.99'"),
    ],
)
def test_envelopes_are_checked(
    tmp_path: Path, serve: Serve, echo: Echo, clock: Clock, reply: Reply, why: str
) -> None:
    api = CloudflareApi(serve, [record("r1", "81.2.69.1")])
    api.fault("PATCH", "/r1", reply)
    updater = make_updater(config(tmp_path, api, echo), tmp_path, clock, rng=1.0)
    updater.cycle()
    status = updater.records["ipv4"]
    assert why in status.last_error
    assert status.published is None
    assert status.next_check == clock.now + 30  # retried with backoff


def test_duplicate_records_are_not_guessed_at(
    tmp_path: Path, serve: Serve, echo: Echo, clock: Clock
) -> None:
    api = CloudflareApi(serve, [record("r1", "81.2.69.1"), record("r2", "81.2.69.2")])
    updater = make_updater(config(tmp_path, api, echo), tmp_path, clock)
    updater.cycle()
    assert [m for m, _ in calls(api)] == ["GET", "GET"]
    assert "2 A records" in updater.records["ipv4"].last_error


def test_dry_run_reads_but_never_writes(
    tmp_path: Path, serve: Serve, echo: Echo, clock: Clock
) -> None:
    api = CloudflareApi(serve, [record("r1", "81.2.69.1")])
    updater = make_updater(config(tmp_path, api, echo, ipv6=True), tmp_path, clock)
    lines = updater.cycle(dry_run=True)
    assert {m for m, _ in calls(api)} == {"GET"}
    assert any(f"would change the A record {HOST} from 81.2.69.1 to {V4}" in line for line in lines)
    assert any(f"would create the AAAA record {HOST} → {V6}" in line for line in lines)
    assert api.records[0]["content"] == "81.2.69.1"
