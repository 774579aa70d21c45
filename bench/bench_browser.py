"""Benchmark of the browser keep-alive against the simulated Colab page (real Chromium).

1. Reaction: the runtime is disconnected N times (alternately with and without the
   "Runtime disconnected" dialog); the reaction is the time between the page rendering the
   disconnect and the page receiving the click, both on the page's own clock. The page is
   noisy, as Colab's is: while connected, the tooltip's RAM figure changes every second.
1b. Own CPU on that never-quiet page: with the runtime connected and nothing to do, the
   CPU time of this process (the keep-alive's threads; the simulated page's server in it
   idles on a long poll) over --cpu-window seconds, as a percentage of one core, on the
   noisy page (``daemon_cpu_pct_noisy``) and on a quiet one (``daemon_cpu_pct_quiet``).
2. Memory: reload/reconnect cycles for --duration seconds (a reload every --reload-every,
   a disconnect every --disconnect-every), then the PSS summed over all Chromium processes
   (from /proc/PID/smaps_rollup; summed RSS would count shared pages many times).
   The keep-alive runs what ``browser.engine: auto`` picks: Chromium's headless shell where
   installed (``engine=`` in the RESULT line). For comparison it first measures plain
   headless Chromium (only the flags headless needs here) on the same page: what a
   keep-alive script without these choices would run. PSS splits shared pages among ALL
   processes mapping them, other Chromium instances on the machine included, so its file
   part (Chromium's binary) drops while other instances run. Hence also ``anon``
   (Pss_Anon + Pss_Shmem, independent of other instances) and ``alone`` (PSS as if no other
   process mapped Chromium's files; needs root), see bench/chromium_memory.py, and the
   count of other Chromium processes.

The setups this replaces clicked every 60 s and reloaded every 10 minutes.

    python bench/bench_browser.py [--disconnects 20] [--duration 600]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from chromium_memory import measure, other_chromium_processes

from gateway.browser.launch import Browser, find_chromedriver, find_chromium, session_members
from gateway.config import Duration
from gateway.sim import SimColab
from gateway.sim.runner import BrowserRunner

PLAIN_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def plain_chromium_memory(url: str, settle: float) -> dict[str, float]:
    """PSS of headless Chromium with only the flags it needs, on the same page."""
    import subprocess

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = find_chromium()
    with tempfile.TemporaryDirectory() as profile:
        for flag in [*PLAIN_FLAGS, f"--user-data-dir={profile}"]:
            options.add_argument(flag)
        service = Service(
            executable_path=find_chromedriver(),
            log_output=subprocess.DEVNULL,
            popen_kw={"start_new_session": True},
        )
        driver = webdriver.Chrome(options=options, service=service)
        browser = Browser(driver=driver, sid=service.process.pid, profile=Path(profile))
        try:
            driver.get(url)
            time.sleep(settle)
            return measure(browser.chromium_pids())
        finally:
            browser.close()


def measure_reactions(sim: SimColab, runner: BrowserRunner, count: int) -> list[float]:
    reactions = []
    for i in range(count):
        runner.wait(lambda r: r.runtime.state == "connected", 30, "connected")
        time.sleep(0.5 + (i % 5) * 0.2)  # vary the phase against the poll interval
        with_dialog = i % 2 == 0
        before = len(sim.events())
        sim.disconnect(dialog=with_dialog)
        sim.wait_for(lambda s: s.runtime == "connected", 15, "reconnected")
        events = sim.events()[before:]
        what = ("dialog", "runtime_disconnected") if with_dialog else ("disconnected", True)
        shown = next(e for e in events if e["type"] == "shown" and e["what"] == what[0])
        target = "dialog" if with_dialog else "connect"
        click = next(e for e in events if e["type"] == "click" and e["target"] == target)
        reactions.append((click["t"] - shown["t"]) / 1000)
        print(
            f"disconnect {i + 1:2d} ({'dialog' if with_dialog else 'tooltip'}): "
            f"clicked after {reactions[-1]:.3f}s",
            flush=True,
        )
    return reactions


def own_cpu_pct(sim: SimColab, runner: BrowserRunner, window: float, noisy: bool) -> float:
    """This process's CPU over ``window`` seconds while connected, in % of one core."""
    sim.set_noisy(noisy)
    runner.wait(lambda r: r.runtime.state == "connected", 30, "connected")
    time.sleep(3)  # let the last reaction's work finish
    cpu0, wall0 = time.process_time(), time.monotonic()
    time.sleep(window)
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    assert sim.runtime == "connected", "the runtime dropped while measuring"
    return 100.0 * cpu / wall


def soak(sim: SimColab, runner: BrowserRunner, duration: float, disconnect_every: float) -> dict:
    start = time.monotonic()
    disconnects = 0
    peak = 0.0
    samples = []
    next_disconnect = start + disconnect_every
    next_sample = start
    while time.monotonic() - start < duration:
        now = time.monotonic()
        if now >= next_disconnect and sim.runtime == "connected":
            sim.disconnect(dialog=disconnects % 2 == 0)
            disconnects += 1
            next_disconnect = now + disconnect_every
        if now >= next_sample:
            browser = runner.worker().browser
            if browser is not None:
                pss = browser.pss_mb()
                peak = max(peak, pss)
                samples.append(pss)
                print(
                    f"  t={now - start:5.0f}s loads={sim.count('load')} "
                    f"disconnects={disconnects} pss={pss:.0f} MB",
                    flush=True,
                )
            next_sample = now + 60
        time.sleep(0.5)
    runner.wait(lambda r: r.runtime.state == "connected", 30, "connected at the end")
    time.sleep(3)
    browser = runner.worker().browser
    assert browser is not None
    pids = browser.chromium_pids()
    final = measure(pids)
    return {
        "engine": browser.engine,
        "final": final["pss"],
        "uss": final["uss"],
        "anon": final["anon"],
        "alone": final["alone"],
        "others": other_chromium_processes(set(pids)),
        "peak": max(peak, final["pss"]),
        "processes": len(pids),
        "loads": sim.count("load"),
        "disconnects": disconnects,
        "restarts": runner.worker().restarts,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--disconnects", type=int, default=20)
    parser.add_argument("--duration", type=float, default=600.0, help="soak seconds")
    parser.add_argument("--reload-every", type=float, default=30.0)
    parser.add_argument("--disconnect-every", type=float, default=20.0)
    parser.add_argument("--cpu-window", type=float, default=60.0, help="CPU seconds measured")
    args = parser.parse_args()
    if args.disconnects < 1:
        parser.error("--disconnects must be at least 1")

    with SimColab() as sim, tempfile.TemporaryDirectory() as tmp:
        plain_memory = plain_chromium_memory(sim.url, settle=5.0)
        plain, plain_uss = plain_memory["pss"], plain_memory["uss"]
        print(
            f"plain headless Chromium on the page: {plain:.0f} MB PSS, {plain_uss:.0f} MB USS, "
            f"{plain_memory['anon']:.0f} MB anon, {plain_memory['alone']:.0f} MB alone",
            flush=True,
        )
        runner = BrowserRunner(
            Path(tmp), sim, reload_every=Duration(args.reload_every), max_memory_mb=4000
        )
        try:
            reactions = measure_reactions(sim, runner, args.disconnects)
            cpu_noisy = own_cpu_pct(sim, runner, args.cpu_window, noisy=True)
            cpu_quiet = own_cpu_pct(sim, runner, args.cpu_window, noisy=False)
            sim.set_noisy(True)
            print(
                f"own CPU while connected over {args.cpu_window:.0f}s: noisy page "
                f"{cpu_noisy:.2f}% of a core, quiet page {cpu_quiet:.2f}%",
                flush=True,
            )
            print(
                f"soaking for {args.duration:.0f}s: reload every {args.reload_every:.0f}s, "
                f"disconnect every {args.disconnect_every:.0f}s",
                flush=True,
            )
            memory = soak(sim, runner, args.duration, args.disconnect_every)
            sid = runner.worker().browser.sid  # type: ignore[union-attr]
        finally:
            runner.stop()
        leftovers = session_members(sid)
    p50 = statistics.median(reactions)
    print(
        f"reaction over {len(reactions)} disconnects: p50 {p50:.3f}s, max {max(reactions):.3f}s; "
        f"{memory['loads']} page loads, {memory['disconnects']} soak disconnects, "
        f"{memory['restarts']} browser restarts; {memory['processes']} Chromium processes; "
        f"PSS final {memory['final']:.0f} MB, peak {memory['peak']:.0f} MB, "
        f"anon {memory['anon']:.0f} MB, alone {memory['alone']:.0f} MB, "
        f"{memory['others']} other Chromium processes on the machine; "
        f"plain headless {plain:.0f} MB (alone {plain_memory['alone']:.0f} MB); "
        f"engine {memory['engine']}; processes left after stop: {len(leftovers)}"
    )
    # own memory against plain headless Chromium's, and the PSS each would have alone
    ratio = memory["alone"] / plain_memory["alone"] if plain_memory["alone"] else float("nan")
    print(
        f"RESULT reaction_p50_s={p50:.3f} reaction_max_s={max(reactions):.3f} "
        f"daemon_cpu_pct_noisy={cpu_noisy:.2f} daemon_cpu_pct_quiet={cpu_quiet:.2f} "
        f"chromium_pss_mb={memory['final']:.0f} chromium_pss_peak_mb={memory['peak']:.0f} "
        f"chromium_uss_mb={memory['uss']:.0f} chromium_anon_mb={memory['anon']:.0f} "
        f"chromium_pss_alone_mb={memory['alone']:.0f} other_chromium_procs={memory['others']} "
        f"plain_headless_pss_mb={plain:.0f} plain_headless_uss_mb={plain_uss:.0f} "
        f"plain_headless_anon_mb={plain_memory['anon']:.0f} "
        f"plain_headless_pss_alone_mb={plain_memory['alone']:.0f} "
        f"pss_alone_ratio_vs_plain={ratio:.2f} engine={memory['engine']} "
        f"soak_s={args.duration:.0f} cpus={os.cpu_count()}"
    )
    return 0 if not leftovers else 1


if __name__ == "__main__":
    sys.exit(main())
