"""What the sync says: its facts through the status socket's JSON, the status line, the
tmux pane's wait for the restore, and the dialog sign in the State."""

from __future__ import annotations

import time

import pytest

from gateway.config import load_config_text
from gateway.snapshot import Snapshot
from gateway.state import State
from gateway.status_line import restore_words, sync_words
from gateway.tmux.pane_ssh import restore_wait
from gateway.vocabulary import RestoreState, RuntimeState, SyncFacts

CONFIG = load_config_text(
    "sessions:\n  - name: a\n    notebook_url: https://colab.research.google.com/drive/x\n"
    "    sync: {paths: [/content/outputs]}\n"
    "  - name: b\n    notebook_url: https://colab.research.google.com/drive/y\n"
    "    forwards: {ssh: {colab: 22, local: 20023}}\n"
    "browser: {enabled: false}\ntmux: {enabled: false}\n"
).config


def _snapshot(state: State) -> Snapshot:
    return Snapshot.from_json(state.snapshot())


def test_sync_facts_survive_the_status_socket_json() -> None:
    state = State()
    state.update_sync(
        "a",
        enabled=True,
        snapshots=3,
        disk_bytes=5 << 30,
        last_pull_at=1000.0,
        last_pull_bytes=1 << 30,
        last_pull_seconds=4.0,
        restore=RestoreState.RESTORING,
        restore_bytes=1288490189,
        ready_for=None,
    )
    sync = _snapshot(state).sessions["a"].sync
    assert sync.restore == RestoreState.RESTORING
    assert (sync.snapshots, sync.disk_bytes, sync.restore_bytes) == (3, 5 << 30, 1288490189)


def test_a_made_up_restore_state_is_named() -> None:
    raw = State().snapshot()
    raw["sessions"] = {"a": {"sync": {"restore": "teleporting"}}}
    with pytest.raises(ValueError, match=r"sessions\.a\.sync\.restore is 'teleporting', not one"):
        Snapshot.from_json(raw)


def test_the_pane_says_what_it_restores_and_from_when() -> None:
    taken = time.mktime((2026, 12, 1, 14, 2, 0, 0, 0, -1))
    sync = SyncFacts(
        enabled=True,
        restore=RestoreState.RESTORING,
        restore_bytes=1288490189,
        restore_snapshot_at=taken,
    )
    assert restore_words(sync) == "restoring 1.2 GB from 14:02 snapshot…"
    assert sync_words(sync) == "restoring 1.2 GB from 14:02 snapshot…"


def test_the_status_line_says_why_a_pull_was_refused() -> None:
    sync = SyncFacts(enabled=True, problem="the synced paths hold 35 MB, more than …")
    assert sync_words(sync) == "sync refused: the synced paths hold 35 MB, more than …"
    ok = SyncFacts(enabled=True, snapshots=2, disk_bytes=2 << 20)
    assert sync_words(ok) == "sync 2 snapshots 2.0 MB"


def test_the_pane_waits_until_the_sync_is_ready_for_this_vm() -> None:
    state = State()
    state.update_tunnel("a", up=True, hostkey_fingerprint="SHA256:new")
    state.update_sync("a", enabled=True, ready_for="SHA256:old", restore=RestoreState.DONE)
    assert restore_wait(CONFIG, "a", _snapshot(state)).startswith("looking for a snapshot")
    state.update_sync("a", restore=RestoreState.RESTORING, restore_bytes=2048)
    assert restore_wait(CONFIG, "a", _snapshot(state)).startswith("restoring 2.0 kB from")
    state.update_sync("a", ready_for="SHA256:new", restore=RestoreState.DONE)
    assert restore_wait(CONFIG, "a", _snapshot(state)) == ""
    # A session without sync never waits; nor does one whose restore failed (retried).
    assert restore_wait(CONFIG, "b", _snapshot(state)) == ""
    state.update_tunnel("a", hostkey_fingerprint="SHA256:newer")
    state.update_sync("a", restore=RestoreState.FAILED, restore_message="rsync exit 255")
    assert restore_wait(CONFIG, "a", _snapshot(state)) == ""


def test_a_dialog_is_remembered_after_it_is_answered() -> None:
    state = State()
    state.update_runtime("a", state=RuntimeState.CONNECTED)
    assert state.view().sessions["a"].runtime.dialog_at is None
    state.update_runtime("a", state=RuntimeState.DIALOG)
    state.update_runtime("a", state=RuntimeState.CONNECTED)
    runtime = _snapshot(state).sessions["a"].runtime
    assert runtime.state == RuntimeState.CONNECTED
    assert runtime.dialog_at is not None


def test_a_change_of_sync_settings_restarts_only_the_sync() -> None:
    from gateway.registry import all_specs

    base = (
        "sessions:\n  - name: a\n    notebook_url: https://colab.research.google.com/drive/x\n"
        "    sync: {paths: [/content/outputs]%s}\n"
    )
    before = load_config_text(base % "").config
    after = load_config_text(base % ", keep: 5, resume: {command: make}").config
    restarted = [s.name for s in all_specs() if s.relevant(before) != s.relevant(after)]
    assert restarted == ["sync"]
