"""Several sessions on one browser (issue 26): reaction and memory for 1, 2 and 4 sessions.

For each count N, N simulated notebook pages (each its own page server, as N notebooks
are N tabs of Colab) in one keep-alive (the real ``browser`` component, real Chromium, the
engine ``browser.engine: auto`` picks). Once every session is connected:

1. memory: PSS summed over Chromium's processes (bench/chromium_memory.py: also ``anon``,
   independent of other Chromium instances on the machine, and ``alone``, as if no other
   Chromium ran), and the number of processes;
2. idle CPU of this process (the keep-alive's threads) over --cpu-window seconds, with the
   pages noisy as Colab's are (the tooltip's RAM figure changes every second);
3. reaction: --rounds disconnects per session, one page after the other every --every
   seconds, each with the "Runtime disconnected" dialog; the reaction is the time from the
   page showing the dialog to the page receiving the click, both on the page's clock.

``--bidi false`` measures the polling fallback (the windows watched in turn, as before
issue 26); ``--renderer-process-limit N`` (0: no limit) replaces the product's flag, to
measure what it decides.

    python bench/bench_sessions.py [--counts 1,2,4] [--rounds 3] [--bidi false]

Prints ``RESULT reaction_max_s_4=… pss_mb_1=… pss_mb_2=… pss_mb_4=…
pss_per_extra_session_mb=…`` (the per-extra-session cost: (PSS with 4 - PSS with 1) / 3,
from the ``alone`` figures when measured, which do not move with other Chromiums).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from chromium_memory import measure, other_chromium_processes

from gateway.browser import launch as launch_module
from gateway.sim import SimColab
from gateway.sim.runner import BrowserRunner


def set_renderer_limit(limit: int | None) -> None:
    """Replace the product's --renderer-process-limit (None: keep it; 0: no limit)."""
    if limit is None:
        return
    flags = [f for f in launch_module.LEAN_FLAGS if not f.startswith("--renderer-process-limit")]
    if limit > 0:
        flags.append(f"--renderer-process-limit={limit}")
    launch_module.LEAN_FLAGS = tuple(flags)


def reactions(pages: dict[str, SimColab], runner: BrowserRunner, rounds: int, every: float):
    """Disconnect each page ``rounds`` times, in turn; the reactions in seconds."""
    names = list(pages)
    answered_before = {
        n: p.count("click", target="dialog", dialog="runtime_disconnected")
        for n, p in pages.items()
    }
    made = dict.fromkeys(names, 0)
    deadline = time.monotonic() + rounds * len(names) * (every + 15) + 60
    for i in range(rounds * len(names)):
        if time.monotonic() > deadline:
            raise RuntimeError("the disconnects took too long")
        name = names[i % len(names)]
        page = pages[name]
        page.wait_for(lambda s: s.runtime == "connected" and not s.dialogs_open(), 30, name)
        page.disconnect(dialog=True)
        made[name] += 1
        time.sleep(every)
    out = []
    for name, page in pages.items():
        page.wait_for(
            lambda s, n=name: (
                s.count("click", target="dialog", dialog="runtime_disconnected")
                >= answered_before[n] + made[n]
            ),
            30,
            f"{name}: every disconnect answered",
        )
        shown = [e["t"] for e in page.events("shown", what="dialog", value="runtime_disconnected")]
        clicks = page.events("click", target="dialog", dialog="runtime_disconnected")
        for click in clicks[answered_before[name] :]:
            before = [t for t in shown if t <= click["t"]]
            out.append((click["t"] - max(before)) / 1000)
    return out


def one_count(count: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        pages = {f"s{i + 1}": stack.enter_context(SimColab()) for i in range(count)}
        first, *rest = pages
        runner = BrowserRunner(
            tmp / f"n{count}",
            pages[first],
            more_sessions={n: pages[n] for n in rest},
            max_memory_mb=8000,
            bidi=args.bidi,
        )
        # the runner names its first session "colab"
        by_session = {("colab" if n == first else n): p for n, p in pages.items()}
        try:
            for name in by_session:
                runner.wait(lambda r, n=name: r.runtime_of(n).state == "connected", 120, name)
            time.sleep(args.settle)
            browser = runner.worker().browser
            assert browser is not None
            pids = browser.chromium_pids()
            memory = measure(pids)
            memory["processes"] = len(pids)
            memory["others"] = other_chromium_processes(set(pids))
            memory["engine"] = browser.engine
            cpu0, wall0 = time.process_time(), time.monotonic()
            time.sleep(args.cpu_window)
            cpu = 100.0 * (time.process_time() - cpu0) / (time.monotonic() - wall0)
            times = reactions(by_session, runner, args.rounds, args.every)
        finally:
            runner.stop()
    result = {"count": count, "cpu": cpu, "reactions": times, **memory}
    print(
        f"{count} session(s): PSS {memory['pss']:.0f} MB (anon {memory['anon']:.0f}, alone "
        f"{memory['alone']:.0f}), {memory['processes']} processes, "
        f"{memory['others']} other Chromium processes; idle CPU {cpu:.2f}% of a core; "
        f"reaction over {len(times)} disconnects: max {max(times):.3f}s, "
        f"median {sorted(times)[len(times) // 2]:.3f}s",
        flush=True,
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="1,2,4")
    parser.add_argument("--rounds", type=int, default=3, help="disconnects per session")
    parser.add_argument("--every", type=float, default=1.0, help="seconds between disconnects")
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--cpu-window", type=float, default=20.0)
    parser.add_argument("--bidi", choices=("true", "false"), default="true")
    parser.add_argument("--renderer-process-limit", type=int, default=None)
    args = parser.parse_args()
    args.bidi = args.bidi == "true"
    counts = [int(c) for c in args.counts.split(",")]
    if any(c < 1 or c > 16 for c in counts) or args.rounds < 1:
        parser.error("counts between 1 and 16, at least one round")
    set_renderer_limit(args.renderer_process_limit)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for count in counts:
            results[count] = one_count(count, args, Path(tmp))
    fields = []
    for count, r in results.items():
        fields.append(f"reaction_max_s_{count}={max(r['reactions']):.3f}")
    for count, r in results.items():
        fields.append(f"pss_mb_{count}={r['pss']:.0f}")
    for count, r in results.items():
        fields.append(f"pss_alone_mb_{count}={r['alone']:.0f}")
    for count, r in results.items():
        fields.append(f"processes_{count}={r['processes']} idle_cpu_pct_{count}={r['cpu']:.2f}")
    low, high = min(results), max(results)
    if high > low:
        key = "alone" if results[low]["alone"] and results[high]["alone"] else "pss"
        extra = (results[high][key] - results[low][key]) / (high - low)
        fields.append(f"pss_per_extra_session_mb={extra:.0f}")
    limit = [f for f in launch_module.LEAN_FLAGS if f.startswith("--renderer-process-limit")]
    fields.append(f"renderer_process_limit={limit[0].split('=')[1] if limit else 'none'}")
    fields.append(f"bidi={str(args.bidi).lower()} engine={results[high]['engine']}")
    fields.append(f"cpus={os.cpu_count()}")
    print("RESULT " + " ".join(fields))
    return 0


if __name__ == "__main__":
    sys.exit(main())
