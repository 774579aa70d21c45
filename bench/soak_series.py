"""The soak's measurements: what one sample holds, how a series is judged flat, the plot.

Kept apart from ``bench/soak.py`` (which needs root, namespaces, Chromium) so that a test
can run the sampler on a real process tree and the analysis on made-up series.

Judging "flat": a least-squares line through the second half of the run (the first half is
warm-up: imports, the first snapshots filling ``sync.keep``, Chromium's caches). A series
is flat when the slope's 95 % confidence interval contains zero, or when the line's growth
over the whole run, |slope · run hours|, stays under the series' budget (a small amount
that would not matter even if it were real). Otherwise it grows, and the soak fails. The
budget is absolute over the run, so the long run judges a slope 6 times more strictly than
the 20-minute one.
"""

from __future__ import annotations

import csv
import math
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

# Every column of the CSV, in order; ``t_s`` is seconds since the soak started.
COLUMNS = (
    "t_s",
    "faults",
    "rss_mb",
    "pss_mb",
    "fds",
    "threads",
    "children",
    "chromium",
    "chromedriver",
    "ssh",
    "rsync",
    "other",
    "chromium_pss_mb",
    "chromium_uss_mb",
    "pi_processes",
    "state_mb",
    "state_files",
    "log_mb",
)
CHILD_KINDS = ("chromium", "chromedriver", "ssh", "rsync", "other")


@dataclass(frozen=True)
class Budget:
    """A series whose growth over the run stays under ``growth`` is flat, whatever the CI."""

    column: str
    label: str  # the name in the verdict and on the plot
    growth: float  # in the column's unit, over the whole run
    # Judge the lowest of this many samples in a row (1: every sample): a series with
    # short spikes that are not growth (Chromium rendering a screenshot) is judged by
    # its floor, which a leak raises as well.
    floor_of: int = 1


# The series that must stay flat, and how much growth over a run is too little to matter.
# fds/threads/children: a handful of objects, not a leak per reconnect (a 20-minute run
# has hundreds of faults). Memory: an allocator's arena or a cache settling. State: one
# more snapshot than `sync.keep` (the pull and the pruning race one round).
BUDGETS = (
    Budget("fds", "open FDs", 5),
    Budget("threads", "threads", 3),
    Budget("children", "child processes", 2),
    Budget("pi_processes", "processes on the Pi", 2),
    Budget("rss_mb", "daemon RSS MB", 16),
    Budget("pss_mb", "daemon PSS MB", 16),
    # USS, not PSS: a page shared with another Chromium on the machine (a test, another
    # user's browser) counts in PSS by the share, so PSS moves when they start or stop.
    Budget("chromium_uss_mb", "Chromium USS MB", 64, floor_of=6),
    Budget("state_files", "state files", 50),
    Budget("state_mb", "state MB", 4),
)


# -- sampling ------------------------------------------------------------------------------------


def child_kind(name: str) -> str:
    """Which of CHILD_KINDS a process named ``name`` counts as."""
    if name == "chromedriver":
        return "chromedriver"
    if name.startswith(("chrome", "chromium")):
        return "chromium"  # the browser and its zygote, renderers, GPU/utility processes
    if name in ("ssh", "rsync"):
        return name
    return "other"


def tree_usage(root: Path) -> tuple[int, int]:
    """Bytes of the files and count of all entries under ``root``; a hard-linked file
    (snapshots share unchanged files) counts once, as it costs the disk once. Directories
    count as entries only (their size is the file system's business)."""
    seen: set[tuple[int, int]] = set()
    size = entries = 0
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            entries += 1
            try:
                st = os.lstat(os.path.join(directory, name))
            except OSError:
                continue  # removed while we walked (a snapshot being pruned)
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                size += st.st_size
    return size, entries


def _pss_uss(proc: psutil.Process) -> tuple[float, float]:
    try:
        memory = proc.memory_full_info()
    except psutil.Error:
        return 0.0, 0.0
    return float(memory.pss), float(memory.uss)


def sample(
    daemon_pid: int,
    state_dir: Path,
    log_path: Path,
    *,
    t: float,
    faults: int = 0,
    pi_pids: Callable[[], Iterable[int]] = lambda: (),
) -> dict[str, float]:
    """One row: the daemon, its descendants by kind, Chromium's PSS, the state, the log.

    Raises psutil.NoSuchProcess when the daemon is gone (the soak fails on that anyway)."""
    daemon = psutil.Process(daemon_pid)
    with daemon.oneshot():
        memory = daemon.memory_full_info()
        row: dict[str, float] = {
            "t_s": t,
            "faults": faults,
            "rss_mb": memory.rss / 2**20,
            "pss_mb": memory.pss / 2**20,
            "fds": daemon.num_fds(),
            "threads": daemon.num_threads(),
        }
    kinds = dict.fromkeys(CHILD_KINDS, 0)
    chromium_pss = chromium_uss = 0.0
    children = daemon.children(recursive=True)
    for child in children:
        try:
            kind = child_kind(child.name())
        except psutil.Error:
            continue  # ended between the listing and the look
        kinds[kind] += 1
        if kind == "chromium":
            pss, uss = _pss_uss(child)
            chromium_pss += pss
            chromium_uss += uss
    row["children"] = sum(kinds.values())
    row.update({kind: float(n) for kind, n in kinds.items()})
    row["chromium_pss_mb"] = chromium_pss / 2**20
    row["chromium_uss_mb"] = chromium_uss / 2**20
    row["pi_processes"] = float(len(list(pi_pids())))
    state_bytes, state_entries = tree_usage(state_dir)
    row["state_mb"] = state_bytes / 2**20
    row["state_files"] = float(state_entries)
    try:
        row["log_mb"] = log_path.stat().st_size / 2**20
    except FileNotFoundError:
        row["log_mb"] = 0.0
    return row


class CsvLog:
    """Rows appended and flushed one by one: a soak killed half-way keeps what it measured."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with path.open("w", newline="") as out:
            csv.writer(out).writerow(COLUMNS)

    def append(self, row: dict[str, float]) -> None:
        with self.path.open("a", newline="") as out:
            csv.writer(out).writerow(_format(row.get(c, math.nan)) for c in COLUMNS)


def _format(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(value)


def read_csv(path: Path) -> list[dict[str, float]]:
    with path.open(newline="") as source:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(source)]


class Sampler:
    """Calls ``take()`` every ``every`` seconds on a thread of its own, so that a fault
    waiting on its recovery (up to a minute) leaves no gap in the series."""

    def __init__(self, take: Callable[[], None], every: float = 10.0) -> None:
        self.take = take
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            self.take()
            # On the schedule, not "every after the last": a slow sample does not drift it.
            while next_at <= time.monotonic():
                next_at += self.every


# -- analysis ------------------------------------------------------------------------------------

# Student's t, two-sided 95 %, by degrees of freedom; beyond 120 the normal's 1.96.
_T95 = {1: 12.71, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042,
        40: 2.021, 60: 2.000, 120: 1.980}  # fmt: skip


def t95(df: int) -> float:
    """The two-sided 95 % quantile of Student's t (the table's next smaller df: wider)."""
    if df < 1:
        return math.inf
    if df > 120:
        return 1.96
    return _T95[max(k for k in _T95 if k <= df)]


@dataclass(frozen=True)
class Slope:
    per_hour: float  # least-squares slope, unit per hour
    half_width: float  # of its 95 % confidence interval (inf: too few points)
    n: int

    @property
    def contains_zero(self) -> bool:
        return abs(self.per_hour) <= self.half_width


def slope(hours: Sequence[float], values: Sequence[float]) -> Slope:
    """Ordinary least squares of ``values`` on ``hours``, with the slope's 95 % CI."""
    n = len(hours)
    if n < 3:
        return Slope(0.0, math.inf, n)
    mean_x, mean_y = sum(hours) / n, sum(values) / n
    sxx = sum((x - mean_x) ** 2 for x in hours)
    if sxx == 0:
        return Slope(0.0, math.inf, n)
    b = sum((x - mean_x) * (y - mean_y) for x, y in zip(hours, values, strict=True)) / sxx
    a = mean_y - b * mean_x
    residual = sum((y - a - b * x) ** 2 for x, y in zip(hours, values, strict=True))
    stderr = math.sqrt(residual / (n - 2) / sxx)
    return Slope(b, t95(n - 2) * stderr, n)


def second_half(rows: Sequence[dict[str, float]]) -> list[dict[str, float]]:
    """The rows after warm-up: from half the run's time on."""
    if not rows:
        return []
    end = rows[-1]["t_s"]
    return [r for r in rows if r["t_s"] >= end / 2]


@dataclass(frozen=True)
class Verdict:
    budget: Budget
    slope: Slope
    growth: float  # |slope| · run hours

    @property
    def flat(self) -> bool:
        return self.slope.contains_zero or self.growth <= self.budget.growth or self.shrinks

    @property
    def shrinks(self) -> bool:
        return self.slope.per_hour < 0

    def line(self) -> str:
        s = self.slope
        ci = f"±{s.half_width:.3g}" if math.isfinite(s.half_width) else "±inf"
        why = (
            "CI contains 0"
            if s.contains_zero
            else "shrinks"
            if self.shrinks
            else f"growth {self.growth:.3g} ≤ budget {self.budget.growth:g}"
            if self.flat
            else f"growth {self.growth:.3g} > budget {self.budget.growth:g}"
        )
        word = "flat " if self.flat else "GROWS"
        return f"{word} {self.budget.label:<22} slope {s.per_hour:+.3g}/h {ci} (n={s.n}): {why}"


def floor(values: Sequence[float], window: int) -> list[float]:
    """Each value replaced by the lowest of the ``window`` values ending at it."""
    return [min(values[max(0, i - window + 1) : i + 1]) for i in range(len(values))]


def judge(rows: Sequence[dict[str, float]], budgets: Sequence[Budget] = BUDGETS) -> list[Verdict]:
    run_hours = rows[-1]["t_s"] / 3600 if rows else 0.0
    late = second_half(rows)
    hours = [r["t_s"] / 3600 for r in late]
    verdicts = []
    for budget in budgets:
        s = slope(hours, floor([r[budget.column] for r in late], budget.floor_of))
        verdicts.append(Verdict(budget, s, abs(s.per_hour) * run_hours))
    return verdicts


def result_line(
    rows: Sequence[dict[str, float]], faults: int, recovered: int, minutes: float
) -> str:
    """The RESULT line the issue asks for (slopes over the second half, per hour)."""
    late = second_half(rows)
    hours = [r["t_s"] / 3600 for r in late]

    def per_h(column: str) -> float:
        return slope(hours, [r[column] for r in late]).per_hour if late else math.nan

    def top(column: str) -> float:
        return max((r[column] for r in rows), default=math.nan)

    span_h = (rows[-1]["t_s"] - rows[0]["t_s"]) / 3600 if len(rows) > 1 else math.nan
    log_per_h = (rows[-1]["log_mb"] - rows[0]["log_mb"]) / span_h if len(rows) > 1 else math.nan
    return (
        f"RESULT minutes={minutes:.1f} faults={faults} recovered={recovered} "
        f"fd_slope_per_h={per_h('fds'):.2f} rss_slope_mb_per_h={per_h('rss_mb'):.2f} "
        f"chromium_pss_slope_mb_per_h={per_h('chromium_pss_mb'):.2f} "
        f"children_max={top('children'):.0f} state_files_max={top('state_files'):.0f} "
        f"log_mb_per_h={log_per_h:.2f}"
    )


# -- the plot ------------------------------------------------------------------------------------

PANELS = (
    ("daemon memory (MB)", ("rss_mb", "pss_mb")),
    ("Chromium memory (MB)", ("chromium_pss_mb", "chromium_uss_mb")),
    ("open FDs, threads", ("fds", "threads")),
    ("processes", ("children", "chromium", "ssh", "rsync", "other", "pi_processes")),
    ("state directory", ("state_files",)),
    ("log (MB), faults", ("log_mb",)),
)


def plot(rows: Sequence[dict[str, float]], path: Path, title: str) -> None:
    """A PNG: one panel per kind of series over minutes, the second half's fit dashed."""
    import matplotlib

    matplotlib.use("Agg")  # no display on the Pi or in CI
    import matplotlib.pyplot as plt

    minutes = [r["t_s"] / 60 for r in rows]
    late = second_half(rows)
    late_h = [r["t_s"] / 3600 for r in late]
    fig, axes = plt.subplots(3, 2, figsize=(12, 10), sharex=True)
    for ax, (name, columns) in zip(axes.flat, PANELS, strict=True):
        for column in columns:
            values = [r[column] for r in rows]
            (line,) = ax.plot(minutes, values, label=column, linewidth=1)
            if len(late) >= 3:
                fit = slope(late_h, [r[column] for r in late])
                mean_x = sum(late_h) / len(late_h)
                mean_y = sum(r[column] for r in late) / len(late)
                ends = (late_h[0], late_h[-1])
                ax.plot(
                    [x * 60 for x in ends],
                    [mean_y + fit.per_hour * (x - mean_x) for x in ends],
                    linestyle="--",
                    color=line.get_color(),
                    linewidth=1,
                )
        if name.startswith("log"):
            twin = ax.twinx()
            twin.plot(minutes, [r["faults"] for r in rows], color="grey", linewidth=1)
            twin.set_ylabel("faults (grey)")
        ax.set_title(name)
        ax.legend(fontsize="small", loc="upper left")
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("minutes")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
