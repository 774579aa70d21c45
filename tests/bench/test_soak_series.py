"""`make soak`'s sampler and judgement, so that they cannot rot between long runs.

The sampler runs on a real process tree (a parent with a `sleep`, an `ssh` that never
connects, and a program named like Chromium); the judgement on made-up series whose
answer is known: noise around a level is flat, a leak of one FD a minute grows.
"""

from __future__ import annotations

import importlib.util
import math
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

import psutil
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load_series() -> ModuleType:
    spec = importlib.util.spec_from_file_location("soak_series", BENCH / "soak_series.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("soak_series", module)
    spec.loader.exec_module(module)
    return module


series = load_series()


def rows_of(values: list[float], column: str, every: float = 10.0) -> list[dict[str, float]]:
    """A run sampled every ``every`` s where only ``column`` moves; the rest stays level."""
    rows = []
    for i, value in enumerate(values):
        row = dict.fromkeys(series.COLUMNS, 1.0)
        row.update({"t_s": i * every, "faults": float(i), "log_mb": i * 0.01, column: value})
        rows.append(row)
    return rows


def test_noise_around_a_level_is_flat_and_a_leak_grows() -> None:
    noise = random.Random(7)
    minutes20 = 120  # samples of a 20-minute run
    flat = rows_of([40 + noise.gauss(0, 1.5) for _ in range(minutes20)], "fds")
    leak = rows_of([40 + i / 6 + noise.gauss(0, 1.5) for i in range(minutes20)], "fds")

    flat_fds = next(v for v in series.judge(flat) if v.budget.column == "fds")
    leak_fds = next(v for v in series.judge(leak) if v.budget.column == "fds")

    assert flat_fds.flat, flat_fds.line()
    assert not leak_fds.flat, leak_fds.line()
    assert leak_fds.line().startswith("GROWS open FDs")
    # one FD a minute: 60 an hour, the fit over the second half finds it within its CI
    assert abs(leak_fds.slope.per_hour - 60) <= leak_fds.slope.half_width + 1


def test_a_tiny_real_slope_is_flat_under_the_budget() -> None:
    # Exactly linear (no noise: its CI is 0 wide) but 2 FDs over the run: under the 5 allowed.
    tiny = rows_of([40 + 2 * i / 119 for i in range(120)], "fds")
    verdict = next(v for v in series.judge(tiny) if v.budget.column == "fds")
    assert not verdict.slope.contains_zero
    assert verdict.flat, verdict.line()


def test_slope_matches_a_known_line_and_its_interval_covers_it() -> None:
    hours = [i / 360 for i in range(200)]
    values = [3 + 12 * h for h in hours]
    fit = series.slope(hours, values)
    assert fit.per_hour == pytest.approx(12)
    assert fit.half_width == pytest.approx(0, abs=1e-9)
    assert math.isinf(series.slope([0.0, 1.0], [1.0, 2.0]).half_width)  # two points: no CI


def test_result_line_names_every_figure_the_issue_asks_for() -> None:
    rows = rows_of([40.0] * 30, "fds")
    line = series.result_line(rows, faults=12, recovered=12, minutes=5.0)
    keys = [field.split("=")[0] for field in line.split()[1:]]
    assert line.startswith("RESULT ")
    assert keys == [
        "minutes", "faults", "recovered", "fd_slope_per_h", "rss_slope_mb_per_h",
        "chromium_pss_slope_mb_per_h", "children_max", "state_files_max", "log_mb_per_h",
    ]  # fmt: skip
    assert "faults=12 recovered=12 fd_slope_per_h=0.00" in line
    # 0.01 MB per 10 s sample: 3.6 MB an hour
    assert line.endswith("log_mb_per_h=3.60")


def test_csv_keeps_every_column_and_reads_back(tmp_path: Path) -> None:
    log = series.CsvLog(tmp_path / "soak.csv")
    rows = rows_of([1.5, 2.25, 3.0], "rss_mb")
    for row in rows:
        log.append(row)
    back = series.read_csv(tmp_path / "soak.csv")
    assert back == rows


def test_sampler_counts_a_real_process_tree_by_kind(tmp_path: Path) -> None:
    # A copy of `sleep` named like Chromium's processes: kinds go by the process name.
    chrome = tmp_path / "chromium"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", chrome)
    state = tmp_path / "state"
    (state / "snap" / "a").mkdir(parents=True)
    (state / "snap" / "a" / "f").write_bytes(b"x" * 4096)
    (state / "snap" / "b").mkdir()
    (state / "snap" / "b" / "f").hardlink_to(state / "snap" / "a" / "f")  # counts once
    log = tmp_path / "daemon.log"
    log.write_bytes(b"y" * 2**20)
    script = (
        "import subprocess, sys, time\n"
        f"kids = [subprocess.Popen([{str(chrome)!r}, '60']), subprocess.Popen(['sleep', '60']),\n"
        "        subprocess.Popen(['ssh', '-o', 'BatchMode=yes', '-o', 'ConnectTimeout=60',\n"
        "                          '-p', '9', '127.0.0.1', 'true'], stderr=subprocess.DEVNULL)]\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None and parent.stdout.readline() == "ready\n"
        # ssh execs itself: wait until all three children carry their final names
        deadline = time.monotonic() + 10
        row: dict[str, float] = {}
        while time.monotonic() < deadline:
            row = series.sample(parent.pid, state, log, t=5.0, faults=3)
            if row["chromium"] == 1 and row["ssh"] == 1 and row["other"] == 1:
                break
            time.sleep(0.05)
        assert (row["chromium"], row["ssh"], row["other"], row["rsync"]) == (1, 1, 1, 0), row
        assert row["children"] == 3
        assert row["chromium_pss_mb"] > 0 and row["chromium_uss_mb"] > 0
        assert row["rss_mb"] > 0 and row["pss_mb"] > 0
        assert row["fds"] >= 3 and row["threads"] >= 1
        assert (
            row["state_files"] == 5
        )  # snap, snap/a, snap/b, a/f, b/f (one inode: counted once in bytes)
        assert row["state_mb"] == pytest.approx(4096 / 2**20)
        assert row["log_mb"] == pytest.approx(1.0)
        assert (row["t_s"], row["faults"]) == (5.0, 3)
    finally:
        for child in psutil.Process(parent.pid).children(recursive=True):
            child.kill()
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()


def test_plot_draws_every_panel(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="a bench extra: pip install -e '.[bench]'")
    rows = rows_of([float(i % 7) for i in range(60)], "chromium_pss_mb")
    series.plot(rows, tmp_path / "soak.png", "test")
    assert (tmp_path / "soak.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sampler_thread_keeps_sampling_until_stopped() -> None:
    taken: list[float] = []
    three = threading.Event()

    def take() -> None:
        taken.append(time.monotonic())
        if len(taken) >= 3:
            three.set()

    sampler = series.Sampler(take, every=0.01).start()
    try:
        assert three.wait(10), f"{len(taken)} samples in 10 s"
    finally:
        sampler.stop()
    assert not sampler._thread.is_alive()  # stopped: nothing samples a stopped daemon
