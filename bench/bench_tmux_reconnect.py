"""How fast the tmux window is back in the VM after the tunnel returns.

Against real tmux, sshd and the daemon (the tunnel played by tests/helpers/tunnel_switch_daemon.py):
each round publishes the tunnel up and measures until ssh runs in the pane and until the
remote shell is on screen, then sends the tunnel down and ends the shell. The alternative
it is compared with is the usual hand-made keeper, `while :; do ssh …; sleep 5; done`, in a
tmux window of its own, timed from the moment its sshd accepts connections again.

    make bench-tmux        (needs root: the stand-in sshd logs in as root)
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from helpers.tmux import (
    READY_MARK,
    Daemon,
    Sshd,
    capture,
    keeper_window,
    keygen,
    runs_child,
    short_dir,
    tmux,
    wait_until,
)

ROUNDS = 8
NAIVE_ROUNDS = 4
NAIVE_SLEEP = 5


def ours(base: Path, identity: Path, public: str) -> tuple[list[float], list[float]]:
    colab = Sshd(
        base / "colab", [f'command="echo {READY_MARK}; exec /bin/bash --norc -i" {public}']
    )
    daemon = Daemon(base, identity, colab.port)
    daemon.known_hosts.write_text(colab.known_hosts_line() + "\n")
    spawned, on_screen = [], []
    try:
        colab.start()
        daemon.start()
        window = str(wait_until(keeper_window, 15, "the keeper's window"))
        pid = int(tmux("display-message", "-p", "-t", window, "#{pane_pid}").stdout)
        for _ in range(ROUNDS):
            wait_until(lambda: "waiting for the Colab tunnel" in capture(window), 10, "waiting")
            up = time.monotonic()
            daemon.tunnel(up=True)
            wait_until(lambda: runs_child(pid, "ssh"), 5, "ssh")
            spawned.append(time.monotonic() - up)
            wait_until(lambda: READY_MARK in capture(window), 10, "the remote shell")
            on_screen.append(time.monotonic() - up)
            daemon.tunnel(up=False)
            tmux("send-keys", "-t", window, "exit", "Enter")
            wait_until(lambda: not runs_child(pid, "ssh"), 10, "ssh to end")
    finally:
        daemon.stop(signal.SIGKILL)
        colab.stop()
    return spawned, on_screen


def naive(base: Path, identity: Path, public: str) -> list[float]:
    colab = Sshd(
        base / "naive", [f'command="echo {READY_MARK}; exec /bin/bash --norc -i" {public}']
    )
    known = base / "naive_known_hosts"
    known.write_text(colab.known_hosts_line() + "\n")
    ssh = shlex.join(
        [
            "ssh",
            "-p",
            str(colab.port),
            "-i",
            str(identity),
            "-o",
            f"UserKnownHostsFile={known}",
            "-o",
            "BatchMode=yes",
            "root@localhost",
        ]
    )
    loop = f"while :; do clear; {ssh}; sleep {NAIVE_SLEEP}; done"
    tmux("new-session", "-d", "-s", "naive", "-x", "120", "-y", "30", loop)
    results = []
    try:
        for _ in range(NAIVE_ROUNDS):
            colab.start()
            up = time.monotonic()
            wait_until(lambda: READY_MARK in capture("=naive:"), 20, "the naive loop's shell")
            results.append(time.monotonic() - up)
            colab.stop()
            wait_until(lambda: READY_MARK not in capture("=naive:"), 10, "the naive loop to drop")
            time.sleep(1.3)  # the VM stays away a moment, as a reset does
    finally:
        colab.stop()
        tmux("kill-session", "-t", "=naive", check=False)
    return results


def main() -> int:
    if os.geteuid() != 0:
        print("bench_tmux_reconnect needs root (the stand-in sshd logs in as root)")
        return 1
    tmpdir = short_dir("cg-bench-tmux-")
    os.environ["TMUX_TMPDIR"] = str(tmpdir)
    os.environ.pop("TMUX", None)
    base = short_dir("cg-bench-")
    identity = base / "id_ed25519"
    public = keygen(identity)
    try:
        spawned, on_screen = ours(base, identity, public)
        baseline = naive(base, identity, public)
    finally:
        tmux("kill-server", check=False)
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(tmpdir, ignore_errors=True)

    def ms(values: list[float]) -> str:
        return f"median {statistics.median(values) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms"

    print(f"colab-gateway shell, {ROUNDS} rounds after the tunnel came up:")
    print(f"  ssh started: {ms(spawned)}; remote shell on screen: {ms(on_screen)}")
    print(
        f"ssh retry loop (sleep {NAIVE_SLEEP}), {NAIVE_ROUNDS} rounds: remote shell {ms(baseline)}"
    )
    ratio = statistics.median(baseline) / statistics.median(on_screen)
    print(
        "RESULT "
        f"ssh_started_median_ms={statistics.median(spawned) * 1000:.0f} "
        f"ssh_started_max_ms={max(spawned) * 1000:.0f} "
        f"shell_median_ms={statistics.median(on_screen) * 1000:.0f} "
        f"shell_max_ms={max(on_screen) * 1000:.0f} "
        f"retry_loop_shell_median_ms={statistics.median(baseline) * 1000:.0f} "
        f"speedup_vs_retry_loop={ratio:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
