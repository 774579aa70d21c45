"""``colab-gateway ddns --once [--dry-run]`` as a real process, and the daemon component."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from helpers.ddns import AGENT, Echo, FakeServer, Handler, Received, Reply, write_secret

from gateway.component import Context
from gateway.config import load_config
from gateway.ddns.component import DdnsComponent
from gateway.paths import Paths
from gateway.registry import all_specs
from gateway.state import Health, State

Serve = Callable[[Handler], FakeServer]
HOST = "home.example.net"
V4 = "81.2.69.160"


def write_config(tmp_path: Path, server: FakeServer, echo: Echo, **ddns: Any) -> Path:
    secret = write_secret(tmp_path, "dyndns.password", "s3cret-pass")
    document = {
        "browser": {"enabled": False},
        "tmux": {"enabled": False},
        "ddns": {
            "provider": "dyndns2",
            "hostname": HOST,
            "contact": "ops@example.net",
            "detect": {"ipv4": [echo.source("ipv4")]},
            "dyndns2": {
                "server": server.url,
                "username": "pi-user",
                "password_file": str(secret),
            },
            **ddns,
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(document))
    return path


def good(request: Received) -> Reply:
    return Reply(200, f"good {request.query.get('myip')}")


def run_cli(tmp_path: Path, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "ddns",
            "-c",
            str(config),
            "--state-dir",
            str(tmp_path / "state"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_once_dry_run_prints_what_it_would_do_and_sends_nothing(
    tmp_path: Path, serve: Serve, echo: Echo
) -> None:
    server = serve(good)
    config = write_config(tmp_path, server, echo)
    done = run_cli(tmp_path, config, "--once", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert f"dry run: {HOST} via dyndns2" in done.stdout
    assert f"IPv4: detected {V4}" in done.stdout
    assert f"would send GET {server.url}/nic/update?hostname={HOST}&myip={V4}" in done.stdout
    assert server.received == []
    assert len(echo.server.received) == 1
    assert not (tmp_path / "state" / "ddns.json").exists()
    assert "s3cret" not in done.stdout + done.stderr


def test_once_publishes_then_shows_the_state(tmp_path: Path, serve: Serve, echo: Echo) -> None:
    server = serve(good)
    config = write_config(tmp_path, server, echo)
    done = run_cli(tmp_path, config, "--once")
    assert done.returncode == 0, done.stderr
    assert f"IPv4: published {HOST} = {V4}" in done.stdout
    (request,) = server.received
    assert request.query == {"hostname": HOST, "myip": V4}
    assert request.headers["user-agent"] == AGENT
    state = tmp_path / "state" / "ddns.json"
    assert state.stat().st_mode & 0o777 == 0o600
    shown = run_cli(tmp_path, config)
    assert f"{HOST}/ipv4: {V4} (accepted " in shown.stdout
    # --once always checks, but sends only what changed.
    again = run_cli(tmp_path, config, "--once")
    assert "nothing sent to dyndns2" in again.stdout
    assert len(server.received) == 1


def test_once_exits_1_on_a_failure_and_78_on_a_bad_config(
    tmp_path: Path, serve: Serve, echo: Echo
) -> None:
    server = serve(lambda r: Reply(200, "nohost"))
    config = write_config(tmp_path, server, echo)
    done = run_cli(tmp_path, config, "--once")
    assert done.returncode == 1
    assert "does not exist in this account" in done.stdout
    shown = run_cli(tmp_path, config)
    assert f"STOPPED {HOST}" in shown.stdout
    bad = write_config(tmp_path, server, echo, provider="dyndns2", contact="")
    done = run_cli(tmp_path, bad, "--once")
    assert done.returncode == 78
    assert "ddns.contact: provider dyndns2 needs a contact" in done.stderr


def test_the_component_is_registered_only_with_a_provider(tmp_path: Path) -> None:
    (spec,) = [s for s in all_specs() if s.name == "ddns"]
    empty = tmp_path / "none.yaml"
    empty.write_text("browser: {enabled: false}\ntmux: {enabled: false}\n")
    assert not spec.enabled(load_config(empty).config)


def test_component_publishes_status_per_record(tmp_path: Path, serve: Serve, echo: Echo) -> None:
    server = serve(good)
    config = load_config(write_config(tmp_path, server, echo)).config
    paths = Paths(tmp_path / "config.yaml", tmp_path / "state", tmp_path / "run")
    paths.state_dir.mkdir()

    async def scenario() -> dict[str, Any]:
        state = State()
        state.attach(asyncio.get_running_loop())
        ctx = Context("ddns", config, paths, state)
        task = asyncio.create_task(DdnsComponent().run(ctx))
        version = -1
        try:
            for _ in range(100):
                version = await state.wait_changed(version, timeout=0.2)
                if state.component("ddns").health == Health.OK:
                    break
            return state.snapshot()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    snapshot = asyncio.run(scenario())
    ddns = snapshot["components"]["ddns"]
    assert ddns["health"] == "ok"
    assert ddns["brief"] == f"ddns {HOST}={V4}"
    assert f"ddns {HOST}={V4}" in snapshot["summary"]
    (record,) = ddns["details"]["records"]
    assert record["hostname"] == HOST and record["family"] == "ipv4"
    assert record["published"] == V4 and record["last_error"] is None
    assert record["next_check"] - record["last_check"] == 300
    assert record["last_change"] == record["last_check"]
    assert len(server.received) == 1
