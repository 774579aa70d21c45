"""The snapshots of one session on the Pi's disk.

Layout, in ``<state>/sync/<session>/``::

    20261201T140212Z/files/content/outputs/...   one complete snapshot (the VM's paths)
    20261201T140212Z/snapshot.json               when it was taken, its size, how long
    20261201T141012Z.partial/                    a pull in progress (or one that died)
    latest -> 20261201T141012Z                   the newest complete snapshot

A pull writes into ``<id>.partial`` and renames it to ``<id>`` only when it is complete;
then ``latest`` is replaced atomically (a new symlink renamed over the old one). A crash,
a reset of the VM in the middle of a pull or a refused pull therefore never changes which
snapshot is newest; what the pull wrote is flushed to the disk before the rename, so a
power cut does not either (``commit``). Unchanged files are hard links into the previous
snapshot (rsync ``--link-dest``), so a snapshot costs only what changed.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from gateway.atomic import atomic_write, flush_tree, fsync_dir

PARTIAL = ".partial"
LATEST = "latest"
META = "snapshot.json"
FILES = "files"


@dataclass(frozen=True)
class SnapshotInfo:
    id: str
    taken_at: float  # wall clock the pull started
    bytes: int  # size of the files it holds
    seconds: float  # how long the pull took
    vm: str = ""  # host key fingerprint of the VM it came from
    # files that changed during the pull, previous copy kept (VM names, escaped)
    kept_previous: tuple[str, ...] = ()
    # rsync stored every link munged (/rsyncd-munged/...): safe as the next --link-dest.
    # False for snapshots of older versions, whose links may lead out of the store.
    links_munged: bool = False


class SnapshotStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    # -- reading -------------------------------------------------------------------------------

    def ids(self) -> list[str]:
        """Complete snapshots, oldest first (ids sort by time)."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and not p.is_symlink() and not p.name.endswith(PARTIAL)
            and (p / META).is_file()
        )  # fmt: skip

    def newest(self) -> str | None:
        """What ``latest`` points at, if that snapshot is complete."""
        try:
            target = os.readlink(self.root / LATEST)
        except OSError:
            return None
        return target if target in self.ids() else None

    def files(self, snapshot_id: str) -> Path:
        return self.root / snapshot_id / FILES

    def info(self, snapshot_id: str) -> SnapshotInfo:
        raw = json.loads((self.root / snapshot_id / META).read_text())
        raw["kept_previous"] = tuple(raw.get("kept_previous", ()))
        return SnapshotInfo(**raw)

    def infos(self) -> list[SnapshotInfo]:
        return [self.info(i) for i in self.ids()]

    def disk_bytes(self) -> int:
        """Blocks used by all snapshots, each hard-linked file counted once (as ``du``)."""
        seen: set[tuple[int, int]] = set()
        total = 0
        if not self.root.is_dir():
            return 0
        for directory, dirs, names in os.walk(self.root):
            for name in dirs + names:
                try:
                    st = os.lstat(os.path.join(directory, name))
                except OSError:
                    continue
                key = (st.st_dev, st.st_ino)
                if key not in seen:
                    seen.add(key)
                    total += st.st_blocks * 512
        return total

    # -- writing -------------------------------------------------------------------------------

    def new_id(self, now: float | None = None) -> str:
        """A fresh id from the clock (UTC, sortable); a suffix if two pulls share a second."""
        base = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
        candidate, n = base, 1
        while (self.root / candidate).exists() or (self.root / (candidate + PARTIAL)).exists():
            n += 1
            candidate = f"{base}-{n}"
        return candidate

    def begin(self, snapshot_id: str) -> Path:
        """The ``.partial`` directory a pull writes into (its files go in ``files/``)."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        partial = self.root / (snapshot_id + PARTIAL)
        (partial / FILES).mkdir(parents=True, exist_ok=True)
        return partial

    def commit(self, info: SnapshotInfo) -> None:
        """Make the finished pull a snapshot, then the newest one, in an order a power cut
        cannot undo: the Pi has no battery and an SD card loses what is only in the page
        cache. rsync wrote the files without fsync, so before any name says "complete"
        they are flushed (``flush_tree``); the rename is made durable before ``latest``
        names the new snapshot, and ``latest`` before ``commit`` returns. Cut anywhere,
        ``latest`` names the previous snapshot or the complete new one, never one whose
        newest files are empty."""
        partial = self.root / (info.id + PARTIAL)
        final = self.root / info.id
        meta = asdict(info)
        meta["kept_previous"] = list(info.kept_previous)
        atomic_write(partial / META, json.dumps(meta, indent=1) + "\n", mode=0o644)
        flush_tree(partial)
        os.rename(partial, final)
        fsync_dir(self.root)
        self._point_latest(info.id)
        fsync_dir(self.root)

    def _point_latest(self, snapshot_id: str) -> None:
        # A new link renamed over the old one: ``latest`` is always one or the other.
        tmp = self.root / f".{LATEST}.{os.getpid()}.tmp"
        if tmp.is_symlink():
            tmp.unlink()
        os.symlink(snapshot_id, tmp)
        os.replace(tmp, self.root / LATEST)

    def discard_partials(self) -> list[str]:
        """Remove pulls that never finished (a reset, a crash, a refusal)."""
        gone = []
        if self.root.is_dir():
            for p in self.root.iterdir():
                if p.name.endswith(PARTIAL) and p.is_dir() and not p.is_symlink():
                    _remove_tree(p)
                    gone.append(p.name)
        return gone

    def prune(self, keep: int) -> list[str]:
        """Remove the oldest snapshots beyond ``keep``; never the newest. Returns their ids."""
        ids = self.ids()
        newest = self.newest()
        removed = []
        for snapshot_id in ids[: max(0, len(ids) - keep)]:
            if snapshot_id == newest:
                continue
            _remove_tree(self.root / snapshot_id)
            removed.append(snapshot_id)
        return removed


def _remove_tree(path: Path) -> None:
    # rsync keeps the VM's permissions: a read-only directory would stop rmtree.
    for directory, _dirs, _names in os.walk(path):
        if not os.path.islink(directory):
            os.chmod(directory, 0o700)
    shutil.rmtree(path)
