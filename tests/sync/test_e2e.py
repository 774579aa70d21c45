"""End to end: the sync of a session's files in the simulated Colab, with the real daemon,
the real bootstrap, the VMs' real sshd and rsync over the tunnel.

One harness for the module; the tests build on each other's VMs only through what they
check first (each waits for the state it needs).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.sim import scenarios
from gateway.sim.harness import SESSION, HarnessError, LoopHarness, missing_parts
from gateway.status_server import query
from gateway.sync.snapshots import SnapshotStore

pytestmark = [
    pytest.mark.slow,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

MAX_SIZE_MB = 30
# Pulls only when asked (every: 10m), so each test knows which pull it sees; 2 MB/s makes
# a pull of a few MB last long enough to reset the VM in the middle of it.
SYNC = (
    f"{{paths: [/root/work], every: 10m, keep: 3, max_size: {MAX_SIZE_MB}M, bandwidth: 2M, "
    "resume: {command: 'echo ran >> /root/resumed.txt', where: background}}"
)
TOP = "sync: {disk_floor: 10M}"
# In the pane: 1 if the file's inode changed (rsync created it) before the login shell
# ($$) started, from /proc's start time of the shell.
_BEFORE_SHELL = (
    "python3 -c 'import os,sys;"
    'btime=[int(l.split()[1]) for l in open("/proc/stat") if l.startswith("btime")][0];'
    'start=btime+int(open(f"/proc/{sys.argv[1]}/stat").read().rsplit(")",1)[1].split()[19])'
    '/os.sysconf("SC_CLK_TCK");'
    "print(int(os.stat(sys.argv[2]).st_ctime<start))' $$ /root/work/hello.txt"
)


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopHarness]:
    missing = missing_parts() if os.geteuid() == 0 else []
    if missing:
        pytest.skip("parts of the loop are not here yet: " + "; ".join(missing))
    lines: list[str] = []
    harness = LoopHarness(tmp_path_factory.mktemp("sync"), log=lines.append, sync=SYNC, top=TOP)
    with harness:
        step = scenarios.bring_up(harness)
        assert step.ok, f"{step.detail}\n" + "\n".join(lines) + _daemon_log(harness)
        yield harness


def _daemon_log(h: LoopHarness) -> str:
    try:
        tail = (h.logs_dir / "daemon.log").read_text().splitlines()[-80:]
    except OSError:
        return ""
    return "\n--- daemon log (tail)\n" + "\n".join(tail)


def _sync(h: LoopHarness) -> dict[str, Any]:
    facts = h.session_facts().get("sync")
    return facts if isinstance(facts, dict) else {}


def _store(h: LoopHarness) -> SnapshotStore:
    return SnapshotStore(h.state_dir / "sync" / SESSION)


def _ready(h: LoopHarness) -> bool:
    tunnel = h.session_facts().get("tunnel", {})
    return bool(tunnel.get("up")) and _sync(h).get("ready_for") == tunnel.get("hostkey_fingerprint")


def _pull_now(h: LoopHarness) -> str:
    """``colab-gateway sync SESSION --now``; its output, or HarnessError when the pull was
    refused or failed. A sync component restarting after a reload is waited for."""
    deadline = time.monotonic() + 60
    while True:
        h.wait("the sync is ready for the VM", lambda: _ready(h), 60)
        try:
            return h.cli("sync", SESSION, "--now")
        except HarnessError as exc:
            if "did not happen" in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(0.5)


def test_a_file_written_in_vm1_is_in_vm2_before_the_pane_prompt(loop: LoopHarness) -> None:
    assert loop.vm is not None
    work = loop.vm.root_home / "work"
    work.mkdir(exist_ok=True)
    (work / "hello.txt").write_text(f"written in {loop.vm.hostname}\n")
    first_vm = loop.vm.hostname
    out = _pull_now(loop)
    assert "pulled" in out, out
    newest = _store(loop).newest()
    assert newest is not None
    assert (_store(loop).files(newest) / "root/work/hello.txt").read_text() == (
        f"written in {first_vm}\n"
    )

    step = scenarios.vm_reset(loop)
    assert step.ok, step.detail + _daemon_log(loop)
    assert loop.vm.hostname != first_vm
    # In the new VM, from the pane: the file, created there before the shell started.
    assert loop.pane_run("cat /root/work/hello.txt") == f"written in {first_vm}"
    assert loop.pane_run(_BEFORE_SHELL) == "1"
    # resume.command ran once, in the background, after the restore.
    resumed = loop.vm.root_home / "resumed.txt"
    loop.wait("resume.command ran", resumed.exists, 20)
    assert resumed.read_text() == "ran\n"
    sync = _sync(loop)
    assert sync["restore"] == "done" and sync["restore_snapshot"] == newest
    # A reconnect to the same VM restores nothing and resumes nothing again.
    step = scenarios.tunnel_killed(loop)
    assert step.ok, step.detail + _daemon_log(loop)
    loop.wait("the sync is ready again", lambda: _ready(loop), 30)
    assert resumed.read_text() == "ran\n"


def test_a_pull_interrupted_by_a_reset_leaves_the_previous_snapshot_newest(
    loop: LoopHarness,
) -> None:
    assert loop.vm is not None
    work = loop.vm.root_home / "work"
    work.mkdir(exist_ok=True)
    (work / "hello.txt").write_text(f"written in {loop.vm.hostname}\n")
    _pull_now(loop)
    store = _store(loop)
    before = store.newest()
    assert before is not None
    (work / "big.bin").write_bytes(os.urandom(12 * 1024 * 1024))  # 6 s at 2 MB/s
    answer = query(loop.runtime_dir / "status.sock", request=f"sync {SESSION}")
    assert answer.get("ok") is True, answer
    loop.wait("a pull is under way", lambda: any(store.root.glob("*.partial/files/root")), 20)
    step = scenarios.vm_reset(loop)
    assert step.ok, step.detail + _daemon_log(loop)
    assert store.newest() == before
    assert not (store.files(before) / "root/work/big.bin").exists()
    # The cut pull is reported as such (rsync lost its ssh connection).
    assert "rsync exit" in _sync(loop)["problem"]
    # The new VM got the previous snapshot's files, and not the torn pull.
    assert loop.pane_run("cat /root/work/hello.txt").startswith("written in")
    assert loop.pane_run("ls /root/work/big.bin 2>&1 | grep -c 'No such'") == "1"


def test_max_size_refuses_with_a_clear_message(loop: LoopHarness) -> None:
    assert loop.vm is not None
    work = loop.vm.root_home / "work"
    work.mkdir(exist_ok=True)
    huge = work / "huge.bin"
    with huge.open("wb") as out:
        out.truncate((MAX_SIZE_MB + 5) * 1024 * 1024)  # sparse: its size is what counts
    before = _store(loop).newest()
    try:
        with pytest.raises(HarnessError, match=r"more than sync\.max_size 30 MB"):
            _pull_now(loop)
        assert "more than sync.max_size" in _sync(loop)["problem"]
        # The one status line (systemctl status, colab-gateway status) says it too.
        assert "sync refused: the synced paths hold" in str(loop.status().get("summary"))
        assert _store(loop).newest() == before
    finally:
        huge.unlink()


def _reload(h: LoopHarness, top: str) -> None:
    assert h.daemon is not None
    h.top_yaml = top
    h.config_path.write_text(h.config_text())
    h.daemon.send_signal(signal.SIGHUP)


def test_the_disk_floor_refuses_with_a_clear_message(loop: LoopHarness) -> None:
    before = _store(loop).newest()
    _reload(loop, "sync: {disk_floor: 100000T}")
    try:
        deadline = time.monotonic() + 60
        message = ""
        # Until the reloaded sync runs, a pull may still happen under the old floor.
        while time.monotonic() < deadline and "disk_floor" not in message:
            try:
                _pull_now(loop)
                before = _store(loop).newest()
            except HarnessError as exc:
                message = str(exc)
        assert "below sync.disk_floor" in message
        assert "free space there, lower keep, or lower disk_floor" in message
        assert _store(loop).newest() == before
    finally:
        _reload(loop, TOP)


def test_snapshots_beyond_keep_are_removed_oldest_first(loop: LoopHarness) -> None:
    assert loop.vm is not None
    store = _store(loop)
    seen = list(store.ids())
    work = loop.vm.root_home / "work"
    work.mkdir(exist_ok=True)
    for n in range(4):
        (work / "counter.txt").write_text(f"{n}\n")
        _pull_now(loop)
        seen += [i for i in store.ids() if i not in seen]
    assert len(seen) >= 4
    assert store.ids() == sorted(seen)[-3:]
    newest = store.newest()
    assert newest == sorted(seen)[-1]
    assert (store.files(newest) / "root/work/counter.txt").read_text() == "3\n"
    listing = loop.cli("sync", SESSION)
    assert "3 snapshot(s) (keep 3)" in listing
    assert Path(store.root).is_dir()


def test_a_dialog_on_the_page_brings_one_more_pull(loop: LoopHarness) -> None:
    loop.wait("the sync is ready for the VM", lambda: _ready(loop), 60)
    before = _sync(loop).get("last_pull_at") or 0.0
    loop.sim.show_dialog("still_there")  # "Are you still there?": Colab may end it soon
    loop.wait(
        "a pull after the dialog",
        lambda: (_sync(loop).get("last_pull_at") or 0.0) > before,
        60,
    )
    assert _sync(loop)["last_pull_reason"] == "Colab shows a dialog"


def test_resume_in_the_window_runs_there_once_per_vm(loop: LoopHarness) -> None:
    assert loop.vm is not None
    window = SYNC.replace(
        "command: 'echo ran >> /root/resumed.txt', where: background",
        "command: 'echo resumed-in-window | tee -a /root/resumed.txt', where: window",
    )
    assert window != SYNC
    loop.sync_yaml = window
    _reload(loop, TOP)
    try:
        loop.wait("the sync is ready for the VM", lambda: _ready(loop), 60)
        _pull_now(loop)
        step = scenarios.vm_reset(loop)
        assert step.ok, step.detail + _daemon_log(loop)
        resumed = loop.vm.root_home / "resumed.txt"
        loop.wait("resume.command ran in the window", resumed.exists, 20)
        assert resumed.read_text() == "resumed-in-window\n"
        assert "resumed-in-window" in loop.pane_text()
        assert _sync(loop)["resume_window_for"] == loop.vm.host_key_fingerprint()
        step = scenarios.tunnel_killed(loop)  # the window reconnects: no second run
        assert step.ok, step.detail + _daemon_log(loop)
        assert loop.pane_run("cat /root/resumed.txt") == "resumed-in-window"
    finally:
        loop.sync_yaml = SYNC
        _reload(loop, TOP)
