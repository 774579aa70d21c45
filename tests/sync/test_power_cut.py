"""Power cuts lose nothing that was committed: the order of a snapshot's flush and renames,
read from the kernel's side with strace, and the store a commit cut at each step leaves.

Why strace, and why its order is the proof. A real power cut cannot be made here (no
device-mapper, no spare disk, and the page cache of a running machine survives any
process being killed). What a power cut does is known: the journal (ext4 on the Pi's SD
card) brings the file system's names back as they were at some moment, in the order they
were changed, while a file's data is on the disk only if it was flushed, by ``fsync`` of
that file or ``syncfs`` of its file system, after it was written. Everything else is in the
page cache, lost, and the file comes back empty. So what decides whether a power cut can
leave ``latest`` naming a snapshot with empty files is only the order, in the one process
history the kernel saw, of: the pull's writes, the flushes, the rename of ``<id>.partial``
and the replacement of ``latest``. strace records exactly that history (each system call,
of every process of the pull, rsync's included, with its file descriptors resolved to
paths by ``-y``), from outside the program, without trusting any of its code or the page
cache. The tests read that record, and the crash-point test applies the power cut to the
store from it: every file opened for writing and not flushed since is emptied.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.sync import pull as pulling
from gateway.sync.pull import PullPlan
from gateway.sync.rsync import Remote
from gateway.sync.snapshots import LATEST, PARTIAL, SnapshotStore

pytestmark = pytest.mark.skipif(
    shutil.which("strace") is None, reason="needs strace (package strace: make system-deps)"
)

CHILD = Path(__file__).with_name("commit_child.py")
TRACED = "openat,open,creat,fsync,fdatasync,syncfs,sync,rename,renameat,renameat2"
PREVIOUS = {"root/work/notes.txt": b"first\n", "root/work/sub/weights.bin": os.urandom(150_000)}
CHANGES = {"root/work/notes.txt": b"second, longer\n", "root/work/new.bin": os.urandom(300_000)}


@dataclass(frozen=True)
class Call:
    pid: int
    name: str
    paths: tuple[str, ...]  # every path it names, file descriptors resolved (strace -y)
    result: str  # the returned file descriptor's path, or the number
    args: str

    @property
    def ok(self) -> bool:
        return not self.result.startswith("-")


_LINE = re.compile(r"^(\d+) +(.*)$")
_RESUMED = re.compile(r"^<\.\.\. \w+ resumed>(.*)$")
_CALL = re.compile(r"^(\w+)\((.*)\) += (-?\d+)(?:<([^>]*)>)?")
_TOKEN = re.compile(r'(?:\d+|AT_FDCWD)<([^>]*)>|"((?:[^"\\]|\\.)*)"')


def read_trace(log: Path) -> list[Call]:
    """strace -f -y output, in the order the calls returned; split calls joined."""
    pending: dict[int, str] = {}
    calls = []
    for line in log.read_text().splitlines():
        head = _LINE.match(line)
        if head is None:
            continue
        pid, rest = int(head[1]), head[2]
        if rest.endswith(" <unfinished ...>"):
            pending[pid] = rest.removesuffix(" <unfinished ...>")
            continue
        resumed = _RESUMED.match(rest)
        if resumed is not None:
            rest = pending.pop(pid, "") + resumed[1]
        call = _CALL.match(rest)
        if call is not None:
            result = call[4] or call[3]
            calls.append(Call(pid, call[1], _paths(call[2]), result, call[2]))
    return calls


def _paths(args: str) -> tuple[str, ...]:
    """``fd<dir>, "name"`` pairs joined; an fd alone or an absolute name as it is."""
    out: list[str] = []
    base: str | None = None
    for fd_path, text in _TOKEN.findall(args):
        if fd_path:
            if base is not None:
                out.append(base)
            base = fd_path
        else:
            out.append(os.path.join(base, text) if base and not text.startswith("/") else text)
            base = None
    if base is not None:
        out.append(base)
    return tuple(out)


def unflushed(calls: list[Call]) -> set[str]:
    """Files opened for writing and not flushed since, named as they are after ``calls``
    (renames followed): what a power cut right after the last call would empty."""
    dirty: dict[str, bool] = {}
    for call in calls:
        if not call.ok:
            continue
        if call.name in ("openat", "open", "creat") and re.search(r"O_WRONLY|O_RDWR", call.args):
            dirty[call.result] = True
        elif call.name in ("fsync", "fdatasync") and call.paths:
            dirty.pop(call.paths[0], None)
        elif call.name in ("syncfs", "sync"):
            dirty.clear()  # the store's file system: all the verdict looks at is in the store
        elif call.name.startswith("rename") and len(call.paths) == 2:
            src, dst = call.paths
            for path in [p for p in dirty if p == dst or p.startswith(dst + "/")]:
                del dirty[path]
            for path in [p for p in dirty if p == src or p.startswith(src + "/")]:
                dirty[dst + path[len(src) :]] = dirty.pop(path)
    return set(dirty)


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def _write(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def _setup(tmp_path: Path) -> tuple[SnapshotStore, Path]:
    """A store with one snapshot of PREVIOUS, on the disk (older than the kernel's
    writeback interval, as any snapshot but the one being made), and the VM changed."""
    vm = tmp_path / "vm"
    _write(vm, PREVIOUS)
    store = SnapshotStore(tmp_path / "snaps")
    asyncio.run(pulling.pull(store, Remote(None, local_root=vm), PullPlan(paths=["/root/work"])))
    os.sync()
    _write(vm, CHANGES)
    return store, vm


def _traced_pull(
    tmp_path: Path, store: SnapshotStore, vm: Path, step: str, flush: str
) -> list[Call]:
    log = tmp_path / "strace.log"
    argv = [sys.executable, str(CHILD), str(store.root), str(vm), step, flush]
    done = subprocess.run(
        ["strace", "-f", "-y", "-e", "signal=none", "-e", f"trace={TRACED}", "-o", str(log),
         *argv],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    killed = step != "none"
    assert (done.returncode != 0) == killed, f"exit {done.returncode}: {done.stderr[-2000:]}"
    return read_trace(log)


def _one(what: str, found: list[int]) -> int:
    assert len(found) == 1, f"{what}: {len(found)} such calls in the trace"
    return found[0]


@pytest.mark.parametrize("flush", ["syncfs", "fsync"])
def test_the_pull_is_flushed_before_it_is_renamed_and_made_latest(
    tmp_path: Path, flush: str
) -> None:
    """In the kernel's record of a real pull (rsync and the commit): no file the pull
    wrote is still only in the page cache when ``<id>.partial`` is renamed to ``<id>``;
    the rename is on the disk (fsync of the store) before ``latest`` is replaced, and
    that replacement before the commit returns. With syncfs, one syncfs does it; without
    (``fsync``: syncfs hidden, as on a C library without it), each file and directory."""
    store, vm = _setup(tmp_path)
    calls = _traced_pull(tmp_path, store, vm, "none", flush)
    new = store.newest()
    assert new is not None and _tree(store.files(new)) == _tree(vm)
    root = str(store.root)
    partial, final, latest = f"{root}/{new}{PARTIAL}", f"{root}/{new}", f"{root}/{LATEST}"
    renames = [i for i, c in enumerate(calls) if c.name.startswith("rename") and c.ok]
    made = _one("rename of the partial", [i for i in renames if calls[i].paths == (partial, final)])
    pointed = _one("latest replaced", [i for i in renames if calls[i].paths[-1:] == (latest,)])
    written = [p for p in (c.result for c in calls if c.name == "openat") if p.startswith(partial)]
    assert len(written) >= 3, "the trace shows rsync's writes into the partial snapshot"

    left = sorted(p for p in unflushed(calls[:made]) if p.startswith(root))
    assert not left, f"only in the page cache when {partial} was renamed: {left}"
    store_synced = [
        i for i, c in enumerate(calls) if c.name == "fsync" and c.paths == (root,) and c.ok
    ]  # fmt: skip
    assert any(made < i < pointed for i in store_synced), "the rename was not flushed before latest"
    assert any(i > pointed for i in store_synced), "latest's replacement was never flushed"

    syncfs = [i for i, c in enumerate(calls) if c.name == "syncfs" and c.ok]
    if flush == "syncfs":
        assert any(i < made for i in syncfs)
    else:
        assert not syncfs
        fsynced = {c.paths[0] for c in calls[:made] if c.name == "fsync" and c.paths}
        files = {f"{final}/files/{name}" for name in CHANGES}
        assert {p.replace(partial, final, 1) for p in fsynced} >= files


STEPS = ["before_flush", "before_rename", "before_latest", "after_latest", "after_commit"]


@pytest.mark.parametrize("flush", ["syncfs", "fsync"])
@pytest.mark.parametrize("step", STEPS)
def test_a_commit_cut_at_each_step_restores_the_previous_or_the_new_snapshot(
    tmp_path: Path, step: str, flush: str
) -> None:
    """The pull's process is SIGKILLed at ``step``; then the power goes: every file the
    strace record shows opened for writing and not flushed since is emptied (the names
    stay as the crash left them: the journal keeps them, in order). The restarted store's
    ``latest`` restores the previous snapshot or the complete new one, never a mix."""
    store, vm = _setup(tmp_path)
    calls = _traced_pull(tmp_path, store, vm, step, flush)
    lost = sorted(p for p in unflushed(calls) if p.startswith(str(store.root)))
    for path in lost:
        if os.path.isfile(path) and not os.path.islink(path):
            os.truncate(path, 0)

    after = SnapshotStore(store.root)  # as the restarted daemon finds it
    newest = after.newest()
    assert newest is not None, "no snapshot is newest after the cut"
    target = tmp_path / "restored"
    target.mkdir()
    paths = ["/root/work"]
    asyncio.run(pulling.restore(after, newest, paths, Remote(None, local_root=target)))
    restored = _tree(target)
    assert restored in (PREVIOUS, {**PREVIOUS, **CHANGES}), (
        f"cut {step}: latest ({newest}) restores "
        f"{ {name: len(data) for name, data in restored.items()} } (bytes per file); "
        f"emptied by the power cut: {lost}"
    )
    # And the next pull, after the restart, makes the complete new snapshot.
    asyncio.run(pulling.pull(after, Remote(None, local_root=vm), PullPlan(paths=paths)))
    again = after.newest()
    assert again is not None and _tree(after.files(again)) == {**PREVIOUS, **CHANGES}


def test_atomic_write_flushes_the_data_before_the_rename_and_the_directory_after(
    tmp_path: Path,
) -> None:
    """The other persistent files (keys, pinned host keys, DDNS and stop flags, a
    snapshot's snapshot.json) go through ``atomic_write``: in the kernel's record, its
    temporary file is fsynced before it is renamed over the target, and the directory
    after."""
    target = tmp_path / "state.json"
    log = tmp_path / "strace.log"
    script = f"from gateway.atomic import atomic_write; atomic_write({str(target)!r}, 'new')"
    subprocess.run(
        ["strace", "-f", "-y", "-e", "signal=none", "-e", f"trace={TRACED}", "-o", str(log),
         sys.executable, "-c", script],
        check=True, timeout=60,
    )  # fmt: skip
    calls = read_trace(log)
    renamed = _one("rename", [i for i, c in enumerate(calls) if c.paths[-1:] == (str(target),)])
    tmp = calls[renamed].paths[0]
    assert tmp in unflushed([c for c in calls if c.name == "openat"]), "no write seen"
    assert tmp not in unflushed(calls[:renamed]), f"{tmp} renamed before it was fsynced"
    assert any(c.name == "fsync" and c.paths == (str(tmp_path),) for c in calls[renamed + 1 :]), (
        "the directory was not fsynced after the rename"
    )
    assert target.read_text() == "new"
