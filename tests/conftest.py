"""Fixtures shared by the tests: real sockets, real processes, isolated directories."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import MINIMAL_CONFIG, REPO, Daemon, NotifySocket, StartDaemon


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        yield notify
    finally:
        notify.close()


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[StartDaemon]:
    """Start ``colab-gateway run`` as a real process; killed at teardown if still alive."""
    started: list[Daemon] = []

    def start(
        config_text: str = MINIMAL_CONFIG,
        env: dict[str, str] | None = None,
        config_path: Path | None = None,
    ) -> Daemon:
        config = config_path or tmp_path / "config.yaml"
        if config_path is None:
            config.write_text(config_text)
        state_dir, runtime_dir = tmp_path / "state", tmp_path / "run"
        full_env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET",)}
        full_env.update({"TMUX_TMPDIR": str(tmp_path)})
        full_env.update(env or {})
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "run",
                "-c",
                str(config),
                "--state-dir",
                str(state_dir),
                "--runtime-dir",
                str(runtime_dir),
            ],
            env=full_env,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            cwd=REPO,
        )
        daemon = Daemon(proc, config, state_dir, runtime_dir)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(5)
        if daemon.proc.stderr:
            daemon.proc.stderr.close()
    if started:
        # A config with tmux enabled makes the daemon start a tmux server on this socket
        # directory; it outlives the daemon by design, so end it here.
        subprocess.run(
            ["tmux", "kill-server"],
            env={**os.environ, "TMUX_TMPDIR": str(tmp_path)},
            capture_output=True,
            timeout=10,
        )
