"""What the waiting screen of `colab-gateway shell` says, from the daemon's snapshot."""

from __future__ import annotations

from pathlib import Path

from gateway.snapshot import Snapshot
from gateway.tmux.pane_ssh import Watch, screen_lines, tunnel_of, waiting_line

NOW = 1_800_000_000.0


def snapshot(components: tuple[str, ...] = ("browser", "tunnel"), **session: object) -> Snapshot:
    return Snapshot.from_json(
        {
            "started_at": NOW - 300,
            "now": NOW,
            "components": {name: {} for name in components},
            "sessions": {"colab": session},
        }
    )


def test_runtime_connected_tunnel_down_for_40s() -> None:
    snap = snapshot(
        tunnel={"up": False, "since": NOW - 40}, runtime={"state": "connected", "since": NOW}
    )
    assert waiting_line(snap, "colab", NOW) == (
        "waiting for the Colab tunnel — tunnel down 40s · runtime connected"
    )


def test_tunnel_never_up_and_no_browser() -> None:
    snap = snapshot(("tunnel",), tunnel={"up": False, "since": None}, runtime={"state": "unknown"})
    assert waiting_line(snap, "colab", NOW) == (
        "waiting for the Colab tunnel — tunnel not up yet (the daemon started 5m ago)"
    )


def test_runtime_state_words_and_unknown_session() -> None:
    snap = snapshot(tunnel={"up": False, "since": NOW - 3700}, runtime={"state": "signed_out"})
    assert waiting_line(snap, "colab", NOW).endswith("tunnel down 1h01m · runtime signed out")
    assert waiting_line(snap, "other", NOW) == (
        "the daemon has no session 'other' (its sessions: colab); check the config"
    )
    assert tunnel_of(snap, "other") is None
    assert tunnel_of(None, "colab") is None


def test_daemon_not_running_names_the_socket(tmp_path: Path) -> None:
    watch = Watch(tmp_path / "status.sock")
    assert not watch.connect()
    lines = screen_lines("colab", watch, None, "", 0.0)
    assert lines[2] == (
        f"waiting for the Colab tunnel — daemon not running (no status socket "
        f"{tmp_path / 'status.sock'})"
    )
    assert lines[-1] == "This window connects by itself; there is nothing to type here."
