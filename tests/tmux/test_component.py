"""The tmux keeper and `colab-gateway shell`, with real tmux, sshd and the daemon.

The tunnel endpoint is played by a test component (tests/helpers/tunnel_switch_daemon.py) that
publishes ``update_tunnel(up=…)``; a real sshd stands in for the Colab VM's on the session's
local ssh port, with its host key pinned in the state directory's known_hosts file as the
tunnel pins it. Assertions read the pane with ``tmux capture-pane``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from helpers.tmux import (
    READY_MARK,
    REPO,
    Daemon,
    Sshd,
    alive,
    capture,
    keeper_window,
    keeper_windows,
    keygen,
    require_root,
    runs_child,
    short_dir,
    tmux,
    tmux_server,
    wait_for_text,
    wait_until,
)

from gateway.tmux import tmuxctl

__all__ = ["tmux_server"]  # the fixture, imported for pytest

pytestmark = pytest.mark.slow


@dataclass
class Rig:
    daemon: Daemon
    colab: Sshd
    base: Path


@pytest.fixture
def rig(tmux_server: Path) -> Iterator[Rig]:
    require_root()
    base = short_dir("cg-gw-")
    identity = base / "id_ed25519"
    public = keygen(identity)
    # The remote shell announces itself, so the test can time the reconnection.
    colab = Sshd(
        base / "colab-sshd",
        [f'command="echo {READY_MARK}; exec /bin/bash --norc --noprofile -i" {public}'],
    )
    daemon = Daemon(base, identity, colab.port)
    daemon.known_hosts.write_text(colab.known_hosts_line() + "\n")
    try:
        yield Rig(daemon, colab, base)
    finally:
        daemon.stop(signal.SIGKILL)
        colab.stop()
        tmux("kill-server", check=False)
        shutil.rmtree(base, ignore_errors=True)


def waiting_clients() -> list[int]:
    """Live `tmux wait-for colab-gateway-colab` clients on this test's tmux socket."""
    found = []
    mine = os.environ["TMUX_TMPDIR"]
    for proc in psutil.process_iter(["cmdline"]):
        if proc.info["cmdline"] != ["tmux", "wait-for", "colab-gateway-colab"]:
            continue
        with contextlib.suppress(psutil.Error):
            if proc.environ().get("TMUX_TMPDIR") == mine and alive(proc.pid):
                found.append(proc.pid)
    return found


def pane() -> str | None:
    return keeper_window("colab")


def wait_for_redraws(window: str, count: int, timeout: float = 10) -> str:
    """The screen once the waiting line (its clock ticks each second) has changed ``count``
    times: the waiting program has gone round its loop, reading the keyboard, that often."""

    def line() -> str:
        return next((x for x in capture(window).splitlines() if "waiting for" in x), "")

    def changed_from(before: str) -> str:
        now = line()
        return now if now not in ("", before) else ""

    seen = line()
    for n in range(count):
        seen = str(wait_until(lambda: changed_from(seen), timeout, f"redraw {n + 1}"))  # noqa: B023
    return capture(window)


def flags(target: str) -> str:
    """Whether the pane is on the alternate screen, and whether mouse reporting is on."""
    return tmux(
        "display-message", "-p", "-t", target, "#{alternate_on} #{mouse_any_flag}"
    ).stdout.strip()


def test_the_pane_waits_connects_and_reconnects_within_a_second(rig: Rig) -> None:
    rig.daemon.start()
    # The waiting screen first says "connecting to daemon" (the status socket may not answer
    # yet under load), then what the daemon says about the tunnel.
    screen = wait_for_text(pane, "tunnel not up yet", 15)
    assert "waiting for the Colab tunnel" in screen

    rig.colab.start()
    rig.daemon.tunnel(up=True)
    wait_for_text(pane, READY_MARK, 10)
    tmux("send-keys", "-t", str(pane()), "echo $((6*7))-marker", "Enter")
    wait_for_text(pane, "42-marker", 10)
    # A full-screen program with mouse reporting is running when the VM goes away.
    tmux("send-keys", "-t", str(pane()), r"printf '\033[?1049h\033[?1000h'; cat", "Enter")
    wait_until(lambda: flags(str(pane())) == "1 1", 10, "alternate screen and mouse on")

    # The VM vanishes: its sshd and every connection go, and the tunnel reports down.
    rig.colab.stop()
    rig.daemon.tunnel(up=False)
    screen = wait_for_text(pane, "tunnel down ", 10)
    assert "waiting for the Colab tunnel" in screen
    assert "42-marker" not in screen
    assert flags(str(pane())) == "0 0", "the waiting screen inherited the VM's terminal modes"

    rig.colab.start()
    pane_pid = int(tmux("display-message", "-p", "-t", str(pane()), "#{pane_pid}").stdout)
    up_at = time.monotonic()
    rig.daemon.tunnel(up=True)
    # The gateway's part: ssh is on its way within 1 s. The login itself is OpenSSH's
    # handshake, bounded separately (it alone takes ~0.9 s on a loaded 2-core machine).
    wait_until(lambda: runs_child(pane_pid, "ssh"), 1.0, "ssh within 1 s of the tunnel up")
    started = time.monotonic() - up_at
    wait_for_text(pane, READY_MARK, 5)
    print(
        f"after tunnel up: ssh started in {started:.3f}s, "
        f"remote shell on screen in {time.monotonic() - up_at:.3f}s"
    )
    tmux("send-keys", "-t", str(pane()), "echo $((7*8))-again", "Enter")
    wait_for_text(pane, "56-again", 10)


def test_ctrl_c_and_typing_on_the_waiting_screen_change_nothing(rig: Rig) -> None:
    rig.daemon.start()
    wait_for_text(pane, "waiting for the Colab tunnel", 15)
    window = str(pane())
    pane_pid = int(tmux("display-message", "-p", "-t", window, "#{pane_pid}").stdout)

    for key in ("C-c", "C-\\", "C-z", "C-d"):
        tmux("send-keys", "-t", window, key)
    tmux("send-keys", "-t", window, "-l", "typed-while-waiting")
    tmux("send-keys", "-t", window, "Enter")
    # Two redraws of the screen later, the same process still waits and showed nothing.
    wait_for_text(pane, "tunnel not up yet (the daemon started", 5)
    screen = wait_for_redraws(window, 2)
    assert "waiting for the Colab tunnel" in screen
    assert "typed-while-waiting" not in screen
    assert pane() == window
    assert alive(pane_pid)

    # What was typed while waiting never reaches the remote shell either.
    rig.colab.start()
    rig.daemon.tunnel(up=True)
    wait_for_text(pane, READY_MARK, 10)
    tmux("send-keys", "-t", window, "echo $((5*5))-remote", "Enter")
    screen = wait_for_text(pane, "25-remote", 10)
    assert "typed-while-waiting" not in screen


def test_daemon_restart_leaves_the_session_and_an_attached_client_alive(rig: Rig) -> None:
    rig.daemon.start()
    wait_for_text(pane, "waiting for the Colab tunnel", 15)
    window = str(pane())
    server_pid = tmux("display-message", "-p", "-t", window, "#{pid}").stdout.strip()
    client = subprocess.Popen(
        ["script", "-qfec", "tmux attach -t =colab", "/dev/null"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until(
            lambda: tmux("list-clients", "-t", "=colab").stdout.strip(), 10, "attached client"
        )

        def still_attached() -> None:
            assert client.poll() is None, "the attached tmux client died"
            assert tmux("list-clients", "-t", "=colab").stdout.strip()
            assert tmux("display-message", "-p", "-t", window, "#{pid}").stdout.strip() == (
                server_pid
            )

        rig.daemon.stop(signal.SIGTERM)
        wait_for_text(lambda: window, "daemon not running", 10)
        still_attached()

        rig.daemon.start()
        wait_for_text(lambda: window, "tunnel not up yet", 10)
        wait_until(
            lambda: rig.daemon.status()["components"]["tmux"]["health"] == "ok",  # type: ignore[index]
            10,
            "the keeper to report ok",
        )
        assert keeper_windows() == {window: "colab"}, "the new keeper made a second window"
        still_attached()

        # A crash that takes the daemon's whole process group down spares tmux too.
        rig.daemon.stop(signal.SIGKILL)
        wait_for_text(lambda: window, "daemon not", 10)
        still_attached()

        # Killed alone, the daemon leaves no `tmux wait-for` client of its own behind.
        rig.daemon.start()
        wait_until(lambda: waiting_clients(), 10, "the keeper's wait-for client")
        assert rig.daemon.proc is not None
        os.kill(rig.daemon.proc.pid, signal.SIGKILL)
        rig.daemon.proc.wait(timeout=10)
        rig.daemon.proc = None
        wait_until(lambda: not waiting_clients(), 5, "the wait-for client to end")
        still_attached()
    finally:
        client.kill()
        client.wait(timeout=10)
        assert client.stdin is not None
        client.stdin.close()


def test_keeper_minds_its_own_windows_only(rig: Rig) -> None:
    tmux("new-session", "-d", "-s", "other", "sleep 600")
    tmux("new-window", "-d", "-t", "=other:", "sleep 600")
    other_before = tmux("list-windows", "-t", "=other", "-F", "#{window_id}").stdout

    rig.daemon.start()
    wait_for_text(pane, "waiting for the Colab tunnel", 15)
    tmux("new-window", "-d", "-t", "=colab:", "-n", "mine", "sleep 600")
    mine = tmux("list-windows", "-t", "=colab", "-F", "#{window_id} #{window_name}").stdout
    mine_id = next(line.split()[0] for line in mine.splitlines() if line.endswith(" mine"))

    first = str(pane())
    killed_at = time.monotonic()
    tmux("kill-window", "-t", first)
    second = wait_until(lambda: pane() not in (None, first) and pane(), 5, "the window back")
    print(f"keeper window back {time.monotonic() - killed_at:.2f}s after kill-window")
    wait_for_text(pane, "waiting for the Colab tunnel", 10)
    windows = keeper_windows()
    assert windows == {mine_id: "", str(second): "colab"}
    name = tmux("display-message", "-p", "-t", str(second), "#{window_name}").stdout.strip()
    assert name == "colab"

    # The whole session killed (the server stays: it has another session): the global
    # session-closed hook tells the keeper, which makes it again.
    tmux("kill-session", "-t", "=colab")
    wait_until(pane, 3, "the keeper's session back")
    assert tmux("list-windows", "-t", "=other", "-F", "#{window_id}").stdout == other_before


def unit_exec_start() -> list[str]:
    unit = (REPO / "systemd" / "colab-gateway-tmux.service").read_text()
    line = next(x for x in unit.splitlines() if x.startswith("ExecStart="))
    # systemd splits on whitespace and turns a lone `\;` into a literal ';'.
    return [";" if word == "\\;" else word for word in line.removeprefix("ExecStart=").split()]


def test_the_units_server_outlives_its_client_and_hosts_the_keepers_session(rig: Rig) -> None:
    argv = unit_exec_start()
    assert argv[0] == shutil.which("tmux") or Path(argv[0]).exists()
    # Type=forking: the command must return once the server runs in the background.
    starter = subprocess.run(argv, timeout=10, capture_output=True, text=True)
    assert starter.returncode == 0, starter.stderr
    assert tmux("list-sessions").stdout == ""  # a server with no session, kept up
    # What keeps it up with no session and no client; that it did is shown below: the
    # keeper's session lives in this very server (its command line is the unit's).
    assert tmux("show-options", "-s", "exit-empty").stdout.strip() == "exit-empty off"

    rig.daemon.start()
    wait_for_text(pane, "waiting for the Colab tunnel", 15)
    server_pid = int(tmux("display-message", "-p", "-t", str(pane()), "#{pid}").stdout)
    assert "start-server" in psutil.Process(server_pid).cmdline()
    assert keeper_windows() == {str(pane()): "colab"}, "no stray shell window"


def test_one_window_per_session_following_config_reloads(rig: Rig) -> None:
    rig.daemon.write_config(extra_sessions=("spare",))
    rig.daemon.start()
    wait_until(lambda: sorted(keeper_windows().values()) == ["colab", "spare"], 15, "both windows")
    spare = keeper_window("spare")
    wait_for_text(lambda: spare, "waiting for the Colab tunnel", 10)
    colab = keeper_window("colab")

    rig.daemon.write_config()
    rig.daemon.reload()
    wait_until(lambda: keeper_window("spare") is None, 10, "the removed session's window gone")
    assert keeper_windows() == {str(colab): "colab"}, "the remaining window was replaced"

    rig.daemon.write_config(extra_sessions=("third",))
    rig.daemon.reload()
    third = wait_until(lambda: keeper_window("third"), 10, "the added session's window")
    name = tmux("display-message", "-p", "-t", str(third), "#{window_name}").stdout.strip()
    assert name == "third"
    assert keeper_window("colab") == colab


def pane_pid() -> int | None:
    window = pane()
    if window is None:
        return None
    out = tmux("display-message", "-p", "-t", window, "#{pane_pid}", check=False)
    return int(out.stdout) if out.returncode == 0 and out.stdout.strip() else None


def hooks() -> str:
    return tmux("show-hooks", "-t", str(pane()), check=False).stdout


def test_keeper_recovers_from_a_killed_tmux_server(rig: Rig) -> None:
    rig.daemon.start()
    wait_for_text(pane, "waiting for the Colab tunnel", 15)
    assert "wait-for -S colab-gateway-colab" in hooks()

    tmux("kill-server")
    # The keeper's `tmux wait-for` client ends with the server: it notices at once.
    wait_for_text(pane, "waiting for the Colab tunnel", 10)
    # The new server reuses session id $0; the hook must be installed on it all the same.
    assert "wait-for -S colab-gateway-colab" in hooks()
    first = pane_pid()
    # Its only window: the session closes with it, and so does the server (no session
    # left); the keeper's wait-for client notices.
    tmux("kill-window", "-t", str(pane()))
    wait_until(lambda: pane_pid() not in (None, first), 3, "the window back, through a hook")


def test_a_window_that_dies_at_once_is_retried_with_a_growing_pause(rig: Rig) -> None:
    subprocess.run(unit_exec_start(), timeout=10, check=True)
    # Every pane's python dies at start-up, as a broken install would make it.
    tmux("set-environment", "-g", "PYTHONHOME", "/nonexistent")
    rig.daemon.start()

    def degraded() -> bool:
        tmux_health = rig.daemon.status()["components"]["tmux"]  # type: ignore[index]
        return "keep closing" in tmux_health["message"]  # type: ignore[no-any-return]

    wait_until(degraded, 15, "the keeper to report a crash loop")
    wait_until(lambda: "4 times in a row" in rig.daemon.log.read_text(), 20, "a fourth quick death")
    log = rig.daemon.log.read_text()
    # A crash would restart the keeper with its count of deaths forgotten.
    assert "tmux crashed" not in log, log
    # Deaths in a row: at once, at once, then 1 s, 2 s, 4 s apart. Under load the keeper
    # may notice a death only after QUICK_EXIT, which starts a new run, so each logged pause
    # is checked against its own count, and the last run must have reached 4.
    deaths = [
        (int(n), int(s))
        for n, s in re.findall(r"(\d+) times in a row; recreating it in (\d+)s", log)
    ]
    assert deaths and all(pause == 2 ** (n - 2) for n, pause in deaths), deaths
    assert [n for n, _ in deaths][-3:] == [2, 3, 4], deaths
    # One new session per death, never one per python start. Every death is logged: a
    # quick one with its count and pause, any other (under load the keeper may notice one
    # only after QUICK_EXIT, which starts a new run) as a plain "closed ... recreating".
    closed = len(re.findall(r"window colab closed [\d.]+s after it was created", log))
    created = log.count("created tmux session colab")
    assert closed >= len(deaths)
    assert created <= 1 + closed, f"{created} sessions for {closed} deaths"

    tmux("set-environment", "-gu", "PYTHONHOME")
    wait_for_text(pane, "waiting for the Colab tunnel", 20)
    wait_until(
        lambda: rig.daemon.status()["components"]["tmux"]["health"] == "ok",  # type: ignore[index]
        10,
        "the keeper to report ok again",
    )


def test_a_target_on_a_server_left_with_no_session_counts_as_gone(tmux_server: Path) -> None:
    # The unit's server stays up when the keeper's only window dies and takes the session
    # along; tmux then answers "no current target" rather than "can't find session". The
    # keeper must take that as a race to look again at, not as a failure to crash on.
    subprocess.run(unit_exec_start(), timeout=10, check=True)
    assert tmux("list-sessions").stdout == ""
    with pytest.raises(tmuxctl.TmuxError) as raised:
        asyncio.run(tmuxctl.run("list-windows", "-t", "=colab"))
    assert raised.value.vanished, raised.value


def test_the_attach_hint_goes_through_sudo_for_a_dedicated_service_user() -> None:
    """The role's default runs the tmux server as a system user without a login: a plain
    `tmux attach` from the person's own account would find no server."""
    import pwd

    from gateway.tmux.component import attach_command

    assert attach_command("colab", uid=0) == "tmux attach -t colab"
    assert attach_command("colab", uid=1000) == "tmux attach -t colab"
    system_uid = 1  # "daemon" on Debian and Ubuntu
    user = pwd.getpwuid(system_uid).pw_name
    assert attach_command("colab", uid=system_uid) == f"sudo -u {user} tmux attach -t colab"
