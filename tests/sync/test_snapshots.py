"""The sync's snapshot store and its pulls and restores, without ssh: the same rsync
commands against a local directory standing in for the VM's ``/``."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import REPO

from gateway.config import ConfigError, load_config_text
from gateway.sync import pull as pulling
from gateway.sync.pull import PullPlan
from gateway.sync.rsync import Remote
from gateway.sync.snapshots import SnapshotInfo, SnapshotStore

PATHS = ["/root/work"]


@pytest.fixture
def vm(tmp_path: Path) -> Path:
    root = tmp_path / "vm"
    (root / "root/work/sub").mkdir(parents=True)
    (root / "root/work/notes.txt").write_text("first\n")
    (root / "root/work/sub/weights.bin").write_bytes(os.urandom(200_000))
    return root


def _pull(store: SnapshotStore, vm: Path, **plan: object) -> SnapshotInfo:
    remote = Remote(None, local_root=vm)
    return asyncio.run(pulling.pull(store, remote, PullPlan(paths=PATHS, **plan)))  # type: ignore[arg-type]


def test_each_pull_is_a_new_snapshot_sharing_unchanged_files(tmp_path: Path, vm: Path) -> None:
    store = SnapshotStore(tmp_path / "snaps")
    first = _pull(store, vm)
    (vm / "root/work/notes.txt").write_text("second\n")
    second = _pull(store, vm)
    assert store.ids() == [first.id, second.id]
    assert store.newest() == second.id
    old, new = store.files(first.id), store.files(second.id)
    assert (old / "root/work/notes.txt").read_text() == "first\n"
    assert (new / "root/work/notes.txt").read_text() == "second\n"
    # Unchanged: the same inode (rsync --link-dest), so the second snapshot costs nothing.
    assert (old / "root/work/sub/weights.bin").stat().st_ino == (
        new / "root/work/sub/weights.bin"
    ).stat().st_ino
    assert store.disk_bytes() < 2 * 200_000


def test_a_failed_pull_leaves_the_previous_snapshot_newest(tmp_path: Path, vm: Path) -> None:
    store = SnapshotStore(tmp_path / "snaps")
    good = _pull(store, vm)
    # An ssh that dies at once, as when the VM is reset mid-pull.
    broken = Remote(("false",), "root@localhost")
    with pytest.raises(pulling.Failed, match="rsync exit"):
        asyncio.run(pulling.pull(store, broken, PullPlan(paths=PATHS)))
    assert store.newest() == good.id
    assert store.ids() == [good.id]
    assert any(p.name.endswith(".partial") for p in store.root.iterdir())
    after = _pull(store, vm)
    assert store.newest() == after.id
    assert not any(p.name.endswith(".partial") for p in store.root.iterdir())


def test_snapshots_beyond_keep_are_removed_oldest_first(tmp_path: Path, vm: Path) -> None:
    store = SnapshotStore(tmp_path / "snaps")
    ids = []
    for n in range(5):
        (vm / "root/work/notes.txt").write_text(f"version {n}\n")
        ids.append(_pull(store, vm).id)
    assert store.prune(3) == ids[:2]
    assert store.ids() == ids[2:]
    assert store.newest() == ids[-1]
    assert (store.files(ids[-1]) / "root/work/notes.txt").read_text() == "version 4\n"


def test_max_size_refuses_with_a_clear_message(tmp_path: Path, vm: Path) -> None:
    store = SnapshotStore(tmp_path / "snaps")
    with pytest.raises(pulling.Refused, match=r"more than sync\.max_size 98 kB") as caught:
        _pull(store, vm, max_bytes=100_000)
    assert "raise max_size, or add exclude patterns" in str(caught.value)
    assert store.ids() == []
    assert store.newest() is None


def test_the_disk_floor_refuses_with_a_clear_message(tmp_path: Path, vm: Path) -> None:
    store = SnapshotStore(tmp_path / "snaps")
    floor = 1 << 60  # more than any disk has free
    with pytest.raises(pulling.Refused, match=r"below sync\.disk_floor"):
        _pull(store, vm, disk_floor=floor)
    assert store.ids() == []


def test_excluded_files_are_not_pulled(tmp_path: Path, vm: Path) -> None:
    store = SnapshotStore(tmp_path / "snaps")
    info = _pull(store, vm, excludes=["*.bin"])
    assert (store.files(info.id) / "root/work/notes.txt").exists()
    assert not (store.files(info.id) / "root/work/sub/weights.bin").exists()


RECORD = b"x" * 3000


def _complete(data: bytes) -> bool:
    """Records are ``<n>:<3000 x>\\n``; a torn copy ends inside one."""
    if not data.endswith(b"\n"):
        return False
    return all(line.split(b":", 1)[1] == RECORD for line in data.splitlines())


def _appending(log: Path, gap: float, pause: float, stop: threading.Event) -> list[int]:
    """Start a writer appending records in two writes ``gap`` apart (between them the file
    holds half a record), ``pause`` between records; returns its live record count."""
    count = [0]

    def writer() -> None:
        with log.open("ab", buffering=0) as out:
            while not stop.is_set():
                out.write(f"{count[0]}:".encode() + RECORD[:1500])
                time.sleep(gap)
                out.write(RECORD[1500:] + b"\n")
                count[0] += 1
                stop.wait(pause)

    threading.Thread(target=writer, daemon=True).start()
    return count


def _pull_while_appending(
    tmp_path: Path, vm: Path, gap: float, pause: float, pulls: int
) -> SnapshotStore:
    store = SnapshotStore(tmp_path / "snaps")
    stop = threading.Event()
    count = _appending(vm / "root/work/train.log", gap, pause, stop)
    try:
        deadline = time.monotonic() + 90
        for _ in range(pulls):
            if time.monotonic() > deadline:
                break
            _pull(store, vm)
    finally:
        stop.set()
    assert count[0] > 3, "the writer did not run during the pulls"
    return store


def test_a_file_appended_during_pulls_is_never_torn_in_any_snapshot(
    tmp_path: Path, vm: Path
) -> None:
    # Half of the time the file ends inside a record: a plain copy would often be torn.
    store = _pull_while_appending(tmp_path, vm, gap=0.02, pause=0.02, pulls=12)
    for snapshot_id in store.ids():
        copy = store.files(snapshot_id) / "root/work/train.log"
        if copy.exists():
            assert _complete(copy.read_bytes()), f"snapshot {snapshot_id}: torn train.log"


def test_a_file_appended_with_pauses_is_kept_whole(tmp_path: Path, vm: Path) -> None:
    # A training log: a record now and then. It must be in the snapshots, and whole.
    store = _pull_while_appending(tmp_path, vm, gap=0.02, pause=0.6, pulls=6)
    copies = [store.files(i) / "root/work/train.log" for i in store.ids()]
    present = [c.read_bytes() for c in copies if c.exists()]
    assert present, "the appended file is in no snapshot at all"
    assert all(_complete(data) for data in present)
    assert present[-1].count(b"\n") >= 2


def test_restore_to_a_local_folder_adds_and_never_deletes(tmp_path: Path, vm: Path) -> None:
    store = SnapshotStore(tmp_path / "snaps")
    info = _pull(store, vm)
    target = tmp_path / "target"
    (target / "root/work").mkdir(parents=True)
    (target / "root/work/mine.txt").write_text("keep me\n")
    newer = target / "root/work/notes.txt"
    newer.write_text("newer than the snapshot\n")
    os.utime(newer, (time.time() + 60, time.time() + 60))
    asyncio.run(pulling.restore(store, info.id, PATHS, Remote(None, local_root=target)))
    assert (target / "root/work/sub/weights.bin").read_bytes() == (
        vm / "root/work/sub/weights.bin"
    ).read_bytes()
    assert (target / "root/work/mine.txt").read_text() == "keep me\n"
    assert newer.read_text() == "newer than the snapshot\n"
    assert store.ids() == [info.id]  # and nothing on the Pi's side changed


def test_sync_config_errors_name_the_setting_and_the_value() -> None:
    text = """\
sessions:
  - name: a
    notebook_url: https://colab.research.google.com/drive/x
    sync:
      paths: [content/outputs]
      max_size: 12 parsecs
      keep: 0
      resume: {command: "python train.py", where: tab}
browser: {enabled: false}
tmux: {enabled: false}
"""
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, "config.yaml")
    message = str(caught.value)
    assert "sessions[0].sync.paths[0]: 'content/outputs' is not an absolute path" in message
    assert "sessions[0].sync.max_size: '12 parsecs' is not a size" in message
    assert "sessions[0].sync.keep" in message
    assert "sessions[0].sync.resume.where: 'tab' is not one of: window | background" in message


def test_sync_config_defaults() -> None:
    text = """\
sessions:
  - name: a
    notebook_url: https://colab.research.google.com/drive/x
    sync: {paths: [/content/outputs], max_size: 2G, bandwidth: 5M}
sync: {disk_floor: 500M}
browser: {enabled: false}
tmux: {enabled: false}
"""
    config = load_config_text(text).config
    sync = config.sessions[0].sync
    assert float(sync.every) == 120.0
    assert (sync.keep, sync.max_bytes, sync.bandwidth_bytes) == (3, 2 << 30, 5 << 20)
    assert sync.resume.where == "background"
    assert config.sync.disk_floor_bytes == 500 << 20


def test_cli_lists_snapshots_and_restores_to_a_folder(tmp_path: Path, vm: Path) -> None:
    state = tmp_path / "state"
    store = SnapshotStore(state / "sync" / "a")
    info = _pull(store, vm)
    config = tmp_path / "config.yaml"
    config.write_text(
        "sessions:\n  - name: a\n    notebook_url: https://colab.research.google.com/drive/x\n"
        "    sync: {paths: [/root/work]}\nbrowser: {enabled: false}\ntmux: {enabled: false}\n"
        "tunnel: {enabled: false}\nddns: {provider: none}\n"
    )

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", *args, "-c", str(config), "--state-dir", str(state),
             "--runtime-dir", str(tmp_path / "run")],
            capture_output=True, text=True, cwd=REPO, timeout=60, check=False,
        )  # fmt: skip

    listing = cli("sync")
    assert listing.returncode == 0, listing.stderr
    assert "session a: 1 snapshot(s) (keep 3)" in listing.stdout
    assert f"{info.id}" in listing.stdout and "newest" in listing.stdout
    out = tmp_path / "out"
    restored = cli("restore", "a", "--to", str(out))
    assert restored.returncode == 0, restored.stderr
    assert (out / "root/work/notes.txt").read_text() == "first\n"
    missing = cli("restore", "a", "--snapshot", "nope", "--to", str(out))
    assert missing.returncode == 1
    assert f"no snapshot 'nope' (snapshots: {info.id})" in missing.stderr
