"""sd_notify, read from a real AF_UNIX datagram socket, as systemd would."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import MINIMAL_CONFIG, NotifySocket, StartDaemon

from gateway.component import ComponentSpec, Context
from gateway.config import load_config_text
from gateway.daemon import Gateway
from gateway.notify import Notifier
from gateway.paths import Paths
from gateway.state import Health

REPO = Path(__file__).resolve().parent.parent


def test_ready_status_stopping_and_clean_exit(
    notify_socket: NotifySocket, start_daemon: StartDaemon
) -> None:
    daemon = start_daemon(env={"NOTIFY_SOCKET": str(notify_socket.path)})
    notify_socket.wait_for("READY=1", timeout=20)
    status = [m for _, m in notify_socket.messages if m.startswith("STATUS=")]
    assert status, "STATUS= must be sent before or with READY=1"
    started = time.monotonic()
    assert daemon.stop(timeout=10) == 0
    assert time.monotonic() - started < 10
    notify_socket.wait_for("STOPPING=1", timeout=1)


def test_example_config_reaches_ready_degraded_naming_what_is_missing(
    notify_socket: NotifySocket, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    """The issue's "done when": placeholders and all, READY=1 with an honest STATUS."""
    daemon = start_daemon(
        config_path=REPO / "config.example.yaml", env={"NOTIFY_SOCKET": str(notify_socket.path)}
    )
    notify_socket.wait_for("READY=1", timeout=30)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        statuses = [m for _, m in notify_socket.messages if m.startswith("STATUS=")]
        if any("placeholder" in s for s in statuses):
            break
        notify_socket.read(0.5)
    statuses = [m for _, m in notify_socket.messages if m.startswith("STATUS=")]
    assert any("notebook_url is still the example's placeholder" in s for s in statuses), statuses
    assert daemon.stop(timeout=10) == 0


def test_watchdog_pings_at_half_the_interval(
    notify_socket: NotifySocket, start_daemon: StartDaemon
) -> None:
    start_daemon(env={"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "1000000"})
    notify_socket.wait_for("READY=1", timeout=20)
    for _ in range(6):
        notify_socket.wait_for("WATCHDOG=1", timeout=5)
    pings = [t for t, m in notify_socket.messages if m == "WATCHDOG=1"]
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    # Every 0.5 s; systemd would kill the service after a gap of 1 s (WatchdogSec). The
    # bound is systemd's, not a benchmark: a gap of 1 s is a kill, however busy the host.
    assert max(gaps) < 1.0, gaps


def test_watchdog_for_another_pid_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert Notifier().watchdog_period is None


def test_sighup_reload_good_and_bad_config(
    notify_socket: NotifySocket, start_daemon: StartDaemon
) -> None:
    daemon = start_daemon(env={"NOTIFY_SOCKET": str(notify_socket.path)})
    notify_socket.wait_for("READY=1", timeout=20)

    daemon.config.write_text(MINIMAL_CONFIG + "daemon: {log_level: debug}\n")
    daemon.proc.send_signal(signal.SIGHUP)
    notify_socket.wait_for("RELOADING=1", timeout=5)
    notify_socket.wait_for("READY=1", timeout=5)

    daemon.config.write_text("tunnel: {listen: nowhere}\n")
    daemon.proc.send_signal(signal.SIGHUP)
    notify_socket.wait_for("RELOADING=1", timeout=5)
    notify_socket.wait_for("READY=1", timeout=5)
    assert daemon.proc.poll() is None, "a bad new config must not stop the daemon"
    assert daemon.stop() == 0
    log = daemon.output()
    assert "new config rejected, keeping the running one" in log
    assert "tunnel.listen: 'nowhere' is not HOST:PORT" in log


class _Wedging:
    """Makes progress for a while, then hangs without proving progress any more."""

    def __init__(self, healthy_for: float) -> None:
        self.healthy_for = healthy_for

    async def run(self, ctx: Context) -> None:
        ctx.health(Health.OK, "working")
        deadline = time.monotonic() + self.healthy_for
        while time.monotonic() < deadline:
            await ctx.sleep(0.05)
        await asyncio.Event().wait()  # wedged: alive, silent


def test_watchdog_stops_when_a_component_wedges(
    notify_socket: NotifySocket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_socket.path))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    loaded = load_config_text(MINIMAL_CONFIG + "daemon: {stall_timeout: 1s}\n")
    paths = Paths(tmp_path / "c.yaml", tmp_path / "state", tmp_path / "run")
    spec = ComponentSpec("wedger", lambda c: True, lambda c: None, lambda: _Wedging(1.0))
    ticks_after_wedge = 0

    async def scenario() -> None:
        nonlocal ticks_after_wedge
        gateway = Gateway(loaded, paths, [spec])
        assert "NOTIFY_SOCKET" not in os.environ, "children must not inherit the socket"
        ticks = 0
        tick = gateway.tick

        def counted_tick() -> None:  # the real tick, counted: each one may ping
            nonlocal ticks
            tick()
            ticks += 1

        gateway.tick = counted_tick  # type: ignore[method-assign]
        task = asyncio.create_task(gateway.serve())

        async def until(predicate: Callable[[], bool], what: str) -> None:
            for _ in range(1000):  # bounded: 10 s
                if predicate() or task.done():
                    break
                await asyncio.sleep(0.01)
            assert predicate(), what

        wedger = gateway.state.component("wedger")
        await until(lambda: wedger.message == "wedged: no progress", "the stall reported")
        wedged_at = ticks
        # Three more passes of the main loop (0.2 s apart at most): each would have pinged.
        await until(lambda: ticks >= wedged_at + 3, "three more ticks")
        ticks_after_wedge = ticks - wedged_at
        gateway.should_exit.set()
        assert await asyncio.wait_for(task, 10) == 0

    asyncio.run(scenario())
    notify_socket.wait_for("STOPPING=1", timeout=5)  # the last message: all others are in
    messages = [m for _, m in notify_socket.messages]
    ready = messages.index("READY=1")
    wedged = next(i for i, m in enumerate(messages) if "wedger failed: wedged: no progress" in m)
    assert "WATCHDOG=1" in messages[ready:wedged], "pings while the component makes progress"
    assert ticks_after_wedge >= 3
    assert "WATCHDOG=1" not in messages[wedged:], "a ping after the component wedged"


BROKEN_CONFIGS = {
    "utf-16": ("tunnel: {enabled: false}\n".encode("utf-16"), "is UTF-16 text"),
    "binary": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "a NUL byte"),
    "deep-nesting": (b"[" * 50_000 + b"]" * 50_000, "nested more than 32 levels deep"),
    "huge": (b"# padding\n" * 30_000, "more than the 262144 allowed"),
    "billion-laughs": (
        b"x: &a [l, l, l, l, l, l, l, l, l]\n"
        + b"".join(
            f"x{i}: &a{i} [{', '.join(['*a' if i == 1 else f'*a{i - 1}'] * 9)}]\n".encode()
            for i in range(1, 10)
        )
        + b"browser: {selectors: {? *a9 : x}}\n",
        "unknown key 'x'",  # the first problem; the bomb's key is among the others
    ),
}


def test_sighup_with_a_broken_file_keeps_the_old_config_and_says_why(
    notify_socket: NotifySocket, start_daemon: StartDaemon
) -> None:
    from gateway.status_server import query

    daemon = start_daemon(env={"NOTIFY_SOCKET": str(notify_socket.path)})
    notify_socket.wait_for("READY=1", timeout=20)
    status_socket = daemon.runtime_dir / "status.sock"
    for case, (content, reason) in BROKEN_CONFIGS.items():
        daemon.config.write_bytes(content)
        daemon.proc.send_signal(signal.SIGHUP)
        notify_socket.wait_for("RELOADING=1", timeout=10)
        notify_socket.wait_for("READY=1", timeout=10)
        assert daemon.proc.poll() is None, f"{case}: the daemon must survive a broken config"
        line = notify_socket.wait_for("STATUS=config degraded: new config rejected", 10)
        assert str(daemon.config) in line and reason in line, (case, line)
        config = query(status_socket)["components"]["config"]
        assert config["health"] == "degraded"
        assert reason in config["message"], (case, config)

    daemon.config.write_text(MINIMAL_CONFIG)
    daemon.proc.send_signal(signal.SIGHUP)
    notify_socket.wait_for("RELOADING=1", timeout=10)
    notify_socket.wait_for("READY=1", timeout=10)
    deadline = time.monotonic() + 10
    while "config" in (components := query(status_socket)["components"]):
        assert time.monotonic() < deadline, components
        time.sleep(0.1)
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.output()
