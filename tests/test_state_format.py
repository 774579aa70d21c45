"""The state directory's layout version: written when missing, migrated with a backup,
an interrupted migration undone, a newer layout refused (gateway/state_format.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import NotifySocket, StartDaemon

from gateway.config import EX_CONFIG
from gateway.state_format import (
    CURRENT_VERSION,
    FORMAT_FILE,
    Migration,
    StateFormatError,
    prepare,
)


def tree(top: Path) -> dict[str, str]:
    """Every file and link below ``top`` (but the format file and backups): its content."""
    found = {}
    for directory, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if not d.startswith("backup-")]
        for name in files + [d for d in dirs if os.path.islink(os.path.join(directory, d))]:
            path = Path(directory, name)
            rel = str(path.relative_to(top))
            if rel == FORMAT_FILE:
                continue
            found[rel] = f"-> {os.readlink(path)}" if path.is_symlink() else path.read_text()
    return found


def recorded(state: Path) -> dict[str, object]:
    return dict(json.loads((state / FORMAT_FILE).read_text()))


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A state directory of today's layout (1) as a release before the format file left it."""
    state = tmp_path / "state"
    (state / "keys").mkdir(parents=True)
    (state / "keys/host_ed25519").write_text("host key\n")
    (state / "keys/tunnel_colab").write_text("tunnel key\n")
    (state / "known_hosts").write_text("[127.0.0.1]:20022 ssh-ed25519 AAAA\n")
    return state


# A fake step 1 -> 2: the keys move into keys/<kind>/, known_hosts gets a header line.
def move_keys(state: Path) -> None:
    (state / "keys/host").mkdir()
    os.rename(state / "keys/host_ed25519", state / "keys/host/ed25519")
    text = (state / "known_hosts").read_text()
    (state / "known_hosts").write_text("# layout 2\n" + text)


MOVE_KEYS = Migration(1, "keys by kind", ("keys", "known_hosts"), move_keys)


def test_a_fresh_state_directory_gets_todays_version(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    assert prepare(state).version == 1
    assert recorded(state)["version"] == 1
    assert str(recorded(state)["written_by"]).startswith("colab-gateway ")


def test_a_state_from_before_the_format_file_is_layout_1_and_left_alone(state: Path) -> None:
    before = tree(state)
    result = prepare(state)
    assert (result.version, result.migrated_from, result.backups) == (1, None, ())
    assert recorded(state)["version"] == 1
    assert tree(state) == before
    assert not list(state.glob("backup-*"))


def test_a_state_from_before_the_format_file_is_migrated_from_layout_1(state: Path) -> None:
    before = tree(state)
    result = prepare(state, current=2, migrations=[MOVE_KEYS])
    assert (result.version, result.migrated_from) == (2, 1)
    assert recorded(state)["version"] == 2
    assert "migrating_to" not in recorded(state)
    after = tree(state)
    assert after["keys/host/ed25519"] == "host key\n"
    assert after["known_hosts"].startswith("# layout 2\n")
    # The backup holds what the step changed, exactly as it was, and stays for a rollback.
    (backup,) = result.backups
    assert backup.name.startswith("backup-1-to-2-") and backup.parent == state
    assert oct(backup.stat().st_mode & 0o777) == "0o700"
    assert tree(backup) == {**before, "backup.json": (backup / "backup.json").read_text()}


def test_a_later_start_migrates_nothing_more(state: Path) -> None:
    prepare(state, current=2, migrations=[MOVE_KEYS])
    migrated = tree(state)
    again = prepare(state, current=2, migrations=[MOVE_KEYS])
    assert (again.version, again.backups) == (2, ())
    assert tree(state) == migrated
    assert len(list(state.glob("backup-*"))) == 1


def test_a_failing_step_leaves_the_old_layout(state: Path) -> None:
    before = tree(state)

    def half_then_fail(state: Path) -> None:
        move_keys(state)
        (state / "keys/new-file").write_text("made by the step\n")
        raise OSError(28, "No space left on device")

    step = Migration(1, "keys by kind", ("keys", "known_hosts"), half_then_fail)
    with pytest.raises(StateFormatError) as failed:
        prepare(state, current=2, migrations=[step])
    message = str(failed.value)
    assert "from layout 1 to 2 (keys by kind) failed" in message, message
    assert "No space left on device" in message and "back as it was" in message, message
    assert "colab_gateway_wheel" in message, message
    assert tree(state) == before
    assert recorded(state) == {"version": 1, "written_by": recorded(state)["written_by"]}


CRASHING_START = """
import os, signal, sys
from pathlib import Path
from gateway.state_format import Migration, prepare

def half_then_power_cut(state):
    os.rename(state / "keys/host_ed25519", state / "keys/moved")
    (state / "known_hosts").write_text("")
    os.kill(os.getpid(), signal.SIGKILL)

prepare(Path(sys.argv[1]), current=2,
        migrations=[Migration(1, "keys by kind", ("keys", "known_hosts"), half_then_power_cut)])
"""


def crash_in_the_middle(state: Path) -> None:
    """A daemon start killed (SIGKILL, as a power cut ends it) halfway through a step."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CRASHING_START), str(state)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == -9, result.stderr
    assert tree(state)["known_hosts"] == ""  # it really was cut halfway
    assert recorded(state)["migrating_to"] == 2


def test_a_crash_in_the_middle_leaves_the_old_layout_for_a_rollback(state: Path) -> None:
    """The start after the crash, of the release that had the old layout (current 1),
    finds the mark and puts the backup back: the old layout, exactly."""
    before = tree(state)
    crash_in_the_middle(state)
    result = prepare(state, current=1, migrations=[])
    assert result.version == 1 and result.restored is not None
    assert tree(state) == before
    assert "migrating_to" not in recorded(state)


def test_a_crash_in_the_middle_is_undone_then_migrated_again(state: Path) -> None:
    crash_in_the_middle(state)
    result = prepare(state, current=2, migrations=[MOVE_KEYS])
    assert (result.version, result.migrated_from) == (2, 1)
    after = tree(state)
    assert after["keys/host/ed25519"] == "host key\n"
    assert after["known_hosts"] == "# layout 2\n[127.0.0.1]:20022 ssh-ed25519 AAAA\n"
    assert "keys/moved" not in after


def test_a_newer_layout_is_refused_and_left_untouched(state: Path) -> None:
    """A rollback to a release older than the state: it must not start on it."""
    (state / FORMAT_FILE).write_text('{"version": 2, "written_by": "colab-gateway 0.2.0"}\n')
    (state / "backup-1-to-2-20250101T000000Z").mkdir()
    before = tree(state)
    with pytest.raises(StateFormatError) as refused:
        prepare(state)
    message = str(refused.value)
    assert f"{state} has layout version 2" in message, message
    assert "'colab-gateway 0.2.0'" in message and "knows layouts up to 1" in message, message
    assert "colab_gateway_wheel" in message, message
    assert "backup-1-to-2-20250101T000000Z" in message, message
    assert "Upgrading and rolling back" in message, message
    assert tree(state) == before
    assert recorded(state)["version"] == 2


@pytest.mark.parametrize(
    "text", ["", "{", '{"version": "2"}', '{"version": 0}', "[1]", '{"layout": 1}']
)
def test_an_unreadable_format_file_is_refused_naming_it(state: Path, text: str) -> None:
    (state / FORMAT_FILE).write_text(text)
    with pytest.raises(StateFormatError) as refused:
        prepare(state)
    assert str(state / FORMAT_FILE) in str(refused.value)
    assert (state / FORMAT_FILE).read_text() == text


# ---- the daemon: `colab-gateway run` as a real process ----------------------------------


def test_the_daemon_records_the_format_of_a_fresh_state_directory(
    start_daemon: StartDaemon, notify_socket: NotifySocket
) -> None:
    daemon = start_daemon(env={"NOTIFY_SOCKET": str(notify_socket.path)})
    notify_socket.wait_for("READY=1", 30)
    assert recorded(daemon.state_dir)["version"] == CURRENT_VERSION
    assert daemon.stop() == 0


def test_the_daemon_refuses_a_newer_state_and_says_what_to_do(
    start_daemon: StartDaemon, notify_socket: NotifySocket, tmp_path: Path
) -> None:
    """A rollback to a release older than the state: exit 78 (systemd does not retry), the
    STATUS line and the journal say why and what to do; the state is left as it was."""
    state = tmp_path / "state"
    (state / "keys").mkdir(parents=True)
    (state / "keys/host_ed25519").write_text("host key\n")
    (state / FORMAT_FILE).write_text('{"version": 2, "written_by": "colab-gateway 9.0"}\n')
    before = tree(state)
    daemon = start_daemon(env={"NOTIFY_SOCKET": str(notify_socket.path)})
    assert daemon.proc.wait(30) == EX_CONFIG
    status = notify_socket.wait_for("STATUS=", 10)
    assert status.startswith("STATUS=not started: the state directory "), status
    assert "has layout version 2" in status and "colab_gateway_wheel" in status, status
    log = daemon.output()
    assert "not starting: the state directory" in log and "knows layouts up to 1" in log, log
    assert "READY=1" not in [m for _, m in notify_socket.messages]
    assert tree(state) == before
    assert recorded(state)["version"] == 2
