"""What flushing a snapshot before its commit costs (``gateway.atomic.flush_tree``).

A stand-in VM tree (``--files`` files holding ``--mb`` MB of random bytes, a few large
ones and many small ones) is pulled with the sync's own code (``gateway.sync.pull``:
dry run, rsync, settle check, commit) into a snapshot store on the same file system as
the state directory would be (``--dir``), three ways per trial, interleaved:

- none:   the commit without any flush (as before: the files only in the page cache);
- syncfs: ``syncfs(2)`` of the store's file system (what the daemon does);
- fsync:  syncfs hidden, ``fsync(2)`` of every file and directory of the new snapshot.

Each way does a first pull (every byte new) and then an incremental one (1 % of the files
rewritten: the usual pull). Before each pull the machine's page cache is written out
(``sync``), so a flush pays only for its own pull. Figures are medians of ``--trials``:
the pull's seconds and, inside it, the flush's. Ends with
RESULT first_flush_s=… first_pull_ratio=… incremental_flush_s=… incremental_pull_ratio=…
(syncfs against none; a ratio of 1.00 means the flush costs nothing you can see).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import gateway.atomic as atomic  # noqa: E402
from gateway.sync import pull, snapshots  # noqa: E402
from gateway.sync.rsync import Remote  # noqa: E402
from gateway.sync.snapshots import SnapshotStore  # noqa: E402

WAYS = ("none", "syncfs", "fsync")
LARGE_SHARE = 0.5  # of the bytes in 4 large files (checkpoints), the rest in small ones


def make_tree(work: Path, files: int, total: int, rng: random.Random) -> list[Path]:
    work.mkdir(parents=True)
    large = total * LARGE_SHARE // 4
    small = (total - 4 * large) // max(1, files - 4)
    made = []
    for n in range(files):
        path = work / f"d{n % 40:02d}" / f"f{n:05d}.bin"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(rng.randbytes(int(large if n < 4 else small)))
        made.append(path)
    return made


def touch_one_percent(made: list[Path], rng: random.Random) -> None:
    for path in rng.sample(made[4:], max(1, len(made) // 100)):
        path.write_bytes(rng.randbytes(path.stat().st_size))


class Timed:
    """``snapshots.flush_tree`` as the way under test, timed."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.real: Callable[[Path], str] = atomic.flush_tree
        self.real_libc = atomic._libc_syncfs

    def use(self, way: str) -> None:
        atomic._libc_syncfs = (lambda: None) if way == "fsync" else self.real_libc  # type: ignore[assignment]

        def flush(top: Path) -> str:
            started = time.perf_counter()
            done = "none" if way == "none" else self.real(top)
            self.seconds = time.perf_counter() - started
            return done

        snapshots.flush_tree = flush  # type: ignore[assignment]


def one_pull(store: SnapshotStore, vm: Path, timed: Timed) -> tuple[float, float]:
    os.sync()
    timed.seconds = 0.0
    started = time.perf_counter()
    asyncio.run(pull.pull(store, Remote(None, local_root=vm), pull.PullPlan(paths=["/work"])))
    return time.perf_counter() - started, timed.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--dir", default="/var/tmp", help="on the state directory's disk")
    args = parser.parse_args()
    rng = random.Random(25)
    timed = Timed()
    figures: dict[tuple[str, str], list[tuple[float, float]]] = {}
    base = Path(tempfile.mkdtemp(prefix="bench-flush-", dir=args.dir))
    try:
        vm = base / "vm"
        made = make_tree(vm / "work", args.files, args.mb << 20, rng)
        for trial in range(args.trials):
            for way in WAYS:
                timed.use(way)
                store = SnapshotStore(base / f"store-{way}-{trial}")
                figures.setdefault(("first", way), []).append(one_pull(store, vm, timed))
                touch_one_percent(made, rng)
                figures.setdefault(("incremental", way), []).append(one_pull(store, vm, timed))
                shutil.rmtree(store.root)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"{args.files} files, {args.mb} MB, {args.trials} trials (medians), in {args.dir}")
    med: dict[tuple[str, str], tuple[float, float]] = {}
    for (kind, way), runs in figures.items():
        med[kind, way] = (
            statistics.median(r[0] for r in runs),
            statistics.median(r[1] for r in runs),
        )
        pulled, flushed = med[kind, way]
        print(f"  {kind:12} {way:7} pull {pulled:7.3f} s   flush {flushed:7.3f} s")
    print(
        f"RESULT first_flush_s={med['first', 'syncfs'][1]:.3f} "
        f"first_pull_ratio={med['first', 'syncfs'][0] / med['first', 'none'][0]:.2f} "
        f"incremental_flush_s={med['incremental', 'syncfs'][1]:.3f} "
        f"incremental_pull_ratio="
        f"{med['incremental', 'syncfs'][0] / med['incremental', 'none'][0]:.2f} "
        f"first_fsync_flush_s={med['first', 'fsync'][1]:.3f} "
        f"incremental_fsync_flush_s={med['incremental', 'fsync'][1]:.3f}"
    )


if __name__ == "__main__":
    main()
