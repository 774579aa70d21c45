"""A small file in the state directory that tells the next run how this one ended.

Written (atomically) when the daemon starts, ``clean: false``, and rewritten ``clean: true``
when it stops on purpose. A run that finds ``clean: false`` from another process was
preceded by a crash, a kill by the watchdog, or a power cut.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from gateway.atomic import atomic_write


@dataclass(frozen=True)
class Run:
    pid: int
    started_at: float
    clean: bool


def read(path: Path) -> Run | None:
    """The last run's marker; None if there is none or it cannot be read (a first start)."""
    try:
        raw = json.loads(path.read_text())
        return Run(int(raw["pid"]), float(raw["started_at"]), bool(raw["clean"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write(path: Path, started_at: float, *, clean: bool) -> None:
    record = {"pid": os.getpid(), "started_at": started_at, "clean": clean}
    atomic_write(path, json.dumps(record) + "\n", mode=0o600)


def unclean_predecessor(path: Path, started_at: float) -> Run | None:
    """The previous run, if it did not stop cleanly. The marker of this very run (the
    component restarted inside the daemon) does not count."""
    run = read(path)
    if run is None or run.clean or (run.pid == os.getpid() and run.started_at == started_at):
        return None
    return run
