"""Each component counts its events into the State where they happen: the supervisor's
restarts, the tunnel's refusals and penalised sources (a real endpoint, real sockets),
DDNS errors and publications (a real updater against local HTTP fakes)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from helpers import MINIMAL_CONFIG, wait_until
from helpers.ddns import (
    Clock,
    Echo,
    FakeServer,
    Reply,
    clock,
    echo,
    make_updater,
    serve,
    write_secret,
)
from helpers.ddns import make_config as make_ddns_config
from helpers.tunnel import make_config, running_endpoint

from gateway import supervisor as supervisor_module
from gateway.browser.keepalive import restart_reason
from gateway.component import ComponentSpec, Context
from gateway.config import load_config_text
from gateway.paths import Paths
from gateway.state import State
from gateway.vocabulary import (
    COMPONENT_RESTARTS,
    DDNS_ERRORS,
    DDNS_PUBLISHED,
    TUNNEL_PENALISED,
    TUNNEL_REFUSED,
    Measure,
)

__all__ = ["clock", "echo", "serve"]  # fixtures


def measured(state: State, measure: Measure) -> dict[tuple[str, ...], float]:
    return state.view().measures.get(measure, {})


class _Crasher:
    async def run(self, ctx: Context) -> None:
        raise RuntimeError("boom")


def test_the_supervisor_counts_restarts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor_module, "BACKOFF_FIRST", 0.05)
    config = load_config_text(MINIMAL_CONFIG + "daemon: {restart_backoff_max: 1s}\n").config
    state = State()
    specs = [ComponentSpec("crasher", lambda c: True, lambda c: None, _Crasher)]

    async def scenario() -> None:
        state.attach(asyncio.get_running_loop())
        sup = supervisor_module.Supervisor(state, Paths(tmp_path, tmp_path, tmp_path), specs)
        sup.apply(config)
        await asyncio.to_thread(
            wait_until,
            lambda: measured(state, COMPONENT_RESTARTS).get(("crasher",), 0) >= 2,
            10,
            "two counted restarts",
        )
        await sup.stop_all(2)

    asyncio.run(scenario())


def test_the_tunnel_counts_refusals_and_penalised_sources(tmp_path: Path) -> None:
    config = make_config(
        tmp_path, "max_unauthenticated_per_source: 1\nexempt_networks: []\npenalty_min: 60s"
    )
    state = State()
    with running_endpoint(config, tmp_path) as running:
        running.endpoint.counters = state
        first = socket.create_connection(("127.0.0.1", running.port), 5)
        first.recv(64)  # the banner: the endpoint admitted it
        with socket.create_connection(("127.0.0.1", running.port), 5) as second:
            assert second.recv(64) == b"", "refused before the banner"
        assert measured(state, TUNNEL_REFUSED) == {("per_source",): 1.0}
        first.close()  # no login: its source is penalised
        wait_until(
            lambda: measured(state, TUNNEL_PENALISED).get(()) == 1, 10, "one penalised source"
        )
        with socket.create_connection(("127.0.0.1", running.port), 5) as third:
            assert third.recv(64) == b""
        assert measured(state, TUNNEL_REFUSED)[("penalised",)] == 1


def test_ddns_counts_errors_by_kind_and_stamps_publications(
    tmp_path: Path, serve: object, echo: Echo, clock: Clock
) -> None:
    answers = iter([Reply(500, "down"), Reply(200, "good 81.2.69.160")])
    provider: FakeServer = serve(lambda r: next(answers))  # type: ignore[operator]
    config = make_ddns_config(
        tmp_path,
        {
            "provider": "dyndns2",
            "hostname": "home.example.net",
            "contact": "ops@example.net",
            "detect": {"ipv4": [echo.source("ipv4")]},
            "dyndns2": {
                "server": provider.url,
                "username": "pi",
                "password_file": str(write_secret(tmp_path, "pw", "pass-word")),
            },
        },
    )
    state = State()
    updater = make_updater(config, tmp_path, clock)
    updater.counters = state
    updater.cycle()
    assert measured(state, DDNS_ERRORS) == {("retry",): 1.0}
    assert DDNS_PUBLISHED not in state.view().measures
    updater.cycle(force=True)
    assert measured(state, DDNS_PUBLISHED) == {("ipv4",): clock.now}


@pytest.mark.parametrize(
    ("reason", "missing", "label"),
    [
        ("Chromium or chromedriver exited", False, "exited"),
        ("Chromium uses 900 MB (PSS), above max_memory_mb 800", False, "memory"),
        ("the page stopped answering (timeout)", False, "hung"),
        ("chromedriver not found: install chromium-driver", True, "not_found"),
        ("WebDriverException: something new", False, "error"),
        (
            "browser profile /p is in use by pid 7 (chromium, user pi), which …",
            False,
            "profile_in_use",
        ),
    ],
)
def test_browser_restart_reasons_are_a_few_labels(reason: str, missing: bool, label: str) -> None:
    assert restart_reason(reason, missing) == label
