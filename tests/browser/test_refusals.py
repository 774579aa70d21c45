"""What Colab's refusals leave behind, without a browser: the stop for disallowed code
kept across restarts and cleared by ``colab-gateway runtime clear``, the notifications
and metrics of a refusal, and the status words."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers import MINIMAL_CONFIG
from helpers.metrics import samples, value
from prometheus_client import CollectorRegistry, generate_latest

from gateway.alerts.events import Watcher
from gateway.browser import stop_flag
from gateway.browser.page_state import Stopped
from gateway.config import Config, Duration, NotifyConfig, Secret, SessionConfig
from gateway.metrics.collector import StateCollector
from gateway.snapshot import Snapshot
from gateway.state import State
from gateway.status_line import summary
from gateway.vocabulary import COLAB_REFUSALS, Health, RuntimeState

T0 = 1_800_000_000.0


def config() -> Config:
    return Config(
        sessions=[SessionConfig(name="gpu", notebook_url="https://colab.example/drive/1")],
        notify=NotifyConfig(
            urls=[Secret("json://127.0.0.1:9/none")],
            tunnel_down_after=Duration(600),
            repeat_after=Duration(3600),
        ),
    )


def running() -> State:
    state = State()
    state.set_health("browser", Health.OK, "fine")
    state.session("gpu")
    return state


def test_the_stop_survives_in_the_state_directory(tmp_path: Path) -> None:
    assert stop_flag.read(tmp_path, "gpu") is None
    assert stop_flag.write(tmp_path, "gpu", Stopped(T0, "disallowed\x1b[2J in our free tier"))
    kept = stop_flag.read(tmp_path, "gpu")
    assert kept is not None and kept.since == T0 and "\x1b" not in kept.detail
    assert oct(stop_flag.flag_path(tmp_path, "gpu").stat().st_mode & 0o777) == "0o640"
    # a flag that cannot be read is still a stop
    stop_flag.flag_path(tmp_path, "gpu").write_text("{not json")
    assert stop_flag.read(tmp_path, "gpu") is not None
    assert stop_flag.clear(tmp_path, "gpu") is not None
    assert stop_flag.read(tmp_path, "gpu") is None and stop_flag.clear(tmp_path, "gpu") is None


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    conf = tmp_path / "config.yaml"
    conf.write_text(
        MINIMAL_CONFIG + "sessions:\n  - {name: gpu, notebook_url: 'https://colab.example/d/1'}\n"
    )
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            *args,
            "-c",
            str(conf),
            "--state-dir",
            str(tmp_path / "state"),
            "--runtime-dir",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NO_COLOR": "1"},
    )


def test_runtime_clear_removes_the_stop(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    stop_flag.write(state_dir, "gpu", Stopped(T0, "disallowed"))
    result = _cli(tmp_path, "runtime", "clear", "gpu")
    assert result.returncode == 0, result.stderr
    assert "session gpu: cleared the stop for disallowed code (since 2027-01-15" in result.stdout
    assert "the daemon is not running" in result.stdout
    assert not stop_flag.present(state_dir, "gpu")
    again = _cli(tmp_path, "runtime", "clear")  # the first session by default
    assert again.returncode == 0 and "nothing to clear" in again.stdout
    unknown = _cli(tmp_path, "runtime", "clear", "nope")
    assert unknown.returncode == 2 and "nope" in unknown.stderr


def test_disallowed_is_a_human_needed_notification_with_what_to_do() -> None:
    state = running()
    state.update_runtime("gpu", state=RuntimeState.DISALLOWED, since=T0, message="stopped")
    (alert,) = Watcher(config(), view_command=lambda s: f"colab-gateway view {s}").evaluate(
        state.view(T0 + 1), T0 + 1
    )
    assert alert.event == "human_needed"
    assert "disallowed in its free tier" in alert.title
    assert "paid Colab plan" in alert.body and "colab-gateway runtime clear gpu" in alert.body


def test_no_backend_is_told_after_three_refusals_in_a_row_not_before() -> None:
    state = running()
    watcher = Watcher(config())
    for failures, state_name in ((1, "no_backend"), (2, "connecting"), (2, "no_backend")):
        state.update_runtime("gpu", state=state_name, no_backend_failures=failures, since=T0)
        assert watcher.evaluate(state.view(T0 + failures), T0 + failures) == []
    state.update_runtime("gpu", state="no_backend", no_backend_failures=3)
    (alert,) = watcher.evaluate(state.view(T0 + 100), T0 + 100)
    assert alert.event == "runtime_lost" and "could not assign a backend" in alert.title
    assert "3 refusals in a row" in alert.body
    # connecting between two refusals is the same problem, not a resolved one
    state.update_runtime("gpu", state="connecting")
    assert watcher.evaluate(state.view(T0 + 110), T0 + 110) == []
    state.update_runtime("gpu", state="connected", no_backend_failures=0)
    (resolved,) = watcher.evaluate(state.view(T0 + 120), T0 + 120)
    assert resolved.resolved


def test_wrong_language_needs_a_person() -> None:
    state = running()
    state.update_runtime("gpu", state=RuntimeState.WRONG_LANGUAGE, since=T0)
    (alert,) = Watcher(config()).evaluate(state.view(T0), T0)
    assert alert.event == "human_needed" and "language other than English" in alert.title


def test_refusals_are_counted_and_a_stop_needs_a_human_in_the_metrics() -> None:
    state = running()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(state.view))
    got = samples(generate_latest(registry).decode())
    for reason in ("disallowed", "no_backend"):
        assert value(got, "colab_gateway_colab_refusals_total", session="gpu", reason=reason) == 0
    state.count(COLAB_REFUSALS, session="gpu", reason="disallowed")
    state.update_runtime("gpu", state=RuntimeState.DISALLOWED)
    got = samples(generate_latest(registry).decode())
    assert value(got, "colab_gateway_colab_refusals_total", session="gpu", reason="disallowed") == 1
    assert value(got, "colab_gateway_runtime_needs_human", session="gpu") == 1


def test_the_status_line_names_the_state_and_a_snapshot_keeps_the_failures() -> None:
    state = running()
    state.update_runtime("gpu", state=RuntimeState.NO_BACKEND, no_backend_failures=2)
    snapshot = state.view(T0)
    assert "gpu: runtime no backend" in summary(snapshot)
    again = Snapshot.from_json(snapshot.to_json())
    assert again.sessions["gpu"].runtime.no_backend_failures == 2
