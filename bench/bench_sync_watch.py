"""What watching a pull costs: the sync's own pull of a local tree, with the product's
default limits (the partial snapshot walked while rsync runs, statvfs every tick) and with
no size limits (statvfs only), interleaved. Prints each pull's time and the walks' own
time (the watch's debug log line), then the medians.

    .venv/bin/python bench/bench_sync_watch.py --mb 512 --trials 5
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sync import make_tree  # noqa: E402

from gateway.config import SyncConfig  # noqa: E402
from gateway.sync import pull  # noqa: E402
from gateway.sync.rsync import Remote  # noqa: E402
from gateway.sync.snapshots import SnapshotStore  # noqa: E402


class Walks(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("pull watched"):
            count, _partial, seconds = record.args  # type: ignore[misc]
            self.seen.append((count, seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=512)
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    walks = Walks()
    logger = logging.getLogger("gateway.sync")
    logger.addHandler(walks)
    logger.setLevel(logging.DEBUG)
    tmp = Path(tempfile.mkdtemp(prefix="bench-sync-watch-", dir="/var/tmp"))
    try:
        vm = tmp / "vm"
        (vm / "root/work").mkdir(parents=True)
        make_tree(vm / "root/work", args.mb << 20, random.Random(1))
        entries = sum(len(d) + len(f) for _, d, f in os.walk(vm))
        print(f"tree: {args.mb} MiB, {entries} entries")
        plans = {
            "watched": pull.PullPlan(paths=["/root/work"], max_entries=SyncConfig().max_entries),
            "statvfs only": pull.PullPlan(paths=["/root/work"]),
        }
        times: dict[str, list[float]] = {name: [] for name in plans}
        walk_share: list[float] = []
        for trial in range(args.trials):
            order = list(plans) if trial % 2 == 0 else list(reversed(plans))
            for name in order:
                store = SnapshotStore(tmp / f"store-{trial}-{name.replace(' ', '-')}")
                walks.seen.clear()
                start = time.monotonic()
                asyncio.run(pull.pull(store, Remote(None, local_root=vm), plans[name]))
                took = time.monotonic() - start
                times[name].append(took)
                count, seconds = walks.seen[0] if walks.seen else (0, 0.0)
                if name == "watched":
                    walk_share.append(seconds / took)
                print(f"trial {trial + 1} {name:12}: {took:.2f}s, {count} walks {seconds:.3f}s")
                shutil.rmtree(store.root)
        for name, values in times.items():
            print(f"{name:12}: median {statistics.median(values):.2f}s")
        ratio = statistics.median(times["watched"]) / statistics.median(times["statvfs only"])
        print(
            f"RESULT watched_ratio={ratio:.2f} "
            f"walk_share_median={statistics.median(walk_share):.3f}"
        )
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
