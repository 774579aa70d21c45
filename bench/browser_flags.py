"""Which Chromium flags and settings pay, in memory, on the simulated Colab page.

Each variant runs in its own child process (flags are module globals of the launch code),
for the same window, on the same page, and is measured the same way: at the end of the
window, once the runtime is connected again and 3 s have passed, the sum over every
Chromium process (chromedriver's session minus chromedriver) of ``/proc/PID/smaps_rollup``:

- ``pss``: all of it, what ``make bench-browser`` reports;
- ``anon``: ``Pss_Anon + Pss_Shmem``, the browser's own memory (heaps, surfaces);
- ``file``: ``Pss_File``, mostly Chromium's binary. Its pages are shared with every other
  Chromium on the machine, so this part falls while other instances run: compare variants
  on ``anon``, and take ``pss`` from runs on a quiet machine;
- ``uss``: pages only this browser maps;
- ``cpu_pct``: CPU over the window, % of one core, of the processes alive at its start and
  end (``quiet`` keeps them all: the keep-alive's idle cost; with reloads a renderer
  that ended in between is missing);
- ``alone``: what ``pss`` would be on a machine where this is the only Chromium (see
  bench/chromium_memory.py; needs root).

Modes: ``daemon`` runs the real keep-alive component (``BrowserRunner``, the launch code of
the service) with a reload every 30 s and a disconnect every 20 s; ``quiet`` the same
component with no reload and no disconnect; ``bare`` a plain Selenium session with the very
arguments and options ``launch()`` builds, which only loads the page.

    python bench/browser_flags.py [--window 90] [--repeats 2] [--parallel 2] [VARIANT ...]
    python bench/browser_flags.py --list
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chromium_memory import cpu_percent, cpu_ticks, measure, other_chromium_processes

HERE = Path(__file__).resolve().parent
PRIVATE_CHROMIUM = os.environ.get("PRIVATE_CHROMIUM", "/tmp/chromium-copy/chromium")


@dataclass(frozen=True)
class Variant:
    mode: str = "daemon"  # daemon | quiet | bare
    add: tuple[str, ...] = ()  # extra arguments
    drop: tuple[str, ...] = ()  # prefixes of launch.LEAN_FLAGS entries to leave out
    disable_features: tuple[str, ...] = ()  # appended to the one --disable-features list
    enable_features: tuple[str, ...] = ()
    prefs: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)  # browser.* settings


VARIANTS: dict[str, Variant] = {
    "daemon": Variant(),  # browser.engine: auto, the headless shell where installed
    "quiet": Variant(mode="quiet"),
    "bare": Variant(mode="bare"),
    # the full browser (the snap's, or where no headless shell is packaged)
    "chromium": Variant(config={"engine": "chromium"}),
    "chromium-quiet": Variant(mode="quiet", config={"engine": "chromium"}),
    "chromium-bare": Variant(mode="bare", config={"engine": "chromium"}),
    "no-site-isolation": Variant(
        add=("--disable-site-isolation-trials",),
        disable_features=("IsolateOrigins", "site-per-process"),
    ),
    "no-spare-renderer": Variant(disable_features=("SpareRendererForSitePerProcess",)),
    "renderer-limit-1": Variant(
        drop=("--renderer-process-limit",), add=("--renderer-process-limit=1",)
    ),
    "in-process-gpu": Variant(add=("--in-process-gpu",)),
    "network-in-process": Variant(enable_features=("NetworkServiceInProcess",)),
    "no-zygote": Variant(add=("--no-zygote",)),
    "low-end-device": Variant(add=("--enable-low-end-device-mode",)),
    "js-semi-space-1": Variant(add=("--js-flags=--max-semi-space-size=1",)),
    "js-old-space-64": Variant(add=("--js-flags=--max-old-space-size=64",)),
    "js-lite-mode": Variant(add=("--js-flags=--lite-mode",)),
    "caches-small": Variant(add=("--disk-cache-size=1048576", "--media-cache-size=1048576")),
    "window-800x600": Variant(drop=("--window-size",), add=("--window-size=800,600",)),
    "no-renderer-backgrounding": Variant(
        add=("--disable-renderer-backgrounding", "--disable-background-timer-throttling")
    ),
    "prefs-lean": Variant(
        prefs={
            "net.network_prediction_options": 2,  # no preconnect / prefetch
            "safebrowsing.enabled": False,
            "search.suggest_enabled": False,
            "alternate_error_pages.enabled": False,
            "translate.enabled": False,
            "profile.default_content_setting_values.notifications": 2,
        }
    ),
    "no-paint-holding": Variant(disable_features=("PaintHolding",)),
    "single-process": Variant(add=("--single-process",)),
    # headless Chromium 156 preloads the address bar's WebUI popups (chrome://omnibox-popup.
    # top-chrome, two pages) into a second renderer, although headless shows no address bar
    "no-omnibox-webui": Variant(
        disable_features=("WebUIOmniboxPopup", "WebUIOmniboxAimPopup", "PreloadTopChromeWebUI")
    ),
    "no-omnibox-popups": Variant(disable_features=("WebUIOmniboxPopup", "WebUIOmniboxAimPopup")),
    "no-omnibox-popup": Variant(disable_features=("WebUIOmniboxPopup",)),
    "no-omnibox-aim": Variant(disable_features=("WebUIOmniboxAimPopup",)),
    "no-top-chrome-preload": Variant(disable_features=("PreloadTopChromeWebUI",)),
    "js-optimize-for-size": Variant(add=("--js-flags=--optimize-for-size",)),
    # Debian's /usr/bin/chromium wrapper adds --enable-gpu-rasterization
    "no-gpu-raster": Variant(add=("--disable-gpu-rasterization",)),
    "no-gpu-compositing": Variant(add=("--disable-gpu-compositing",)),
    # A private copy of Chromium (cp -a /usr/lib/chromium PRIVATE_CHROMIUM): its file pages
    # are shared with no other Chromium on the machine, so its PSS is what it would be alone.
    "private-binary": Variant(config={"engine": "chromium", "chromium": PRIVATE_CHROMIUM}),
}


# -- one variant (child process) ------------------------------------------------------------


def apply(variant: Variant) -> None:
    """Patch the launch code's flags and Selenium's options for this process only."""
    from selenium import webdriver

    from gateway.browser import launch

    flags = []
    for flag in launch.LEAN_FLAGS:
        if any(flag.startswith(prefix) for prefix in variant.drop):
            continue
        if flag.startswith("--disable-features=") and variant.disable_features:
            flag = ",".join([flag, *variant.disable_features])
        flags.append(flag)
    if variant.disable_features and not any(f.startswith("--disable-features=") for f in flags):
        flags.append("--disable-features=" + ",".join(variant.disable_features))
    if variant.enable_features:
        flags.append("--enable-features=" + ",".join(variant.enable_features))
    launch.LEAN_FLAGS = (*flags, *variant.add)  # type: ignore[misc]
    if variant.prefs:
        base = webdriver.ChromeOptions

        class WithPrefs(base):  # type: ignore[misc,valid-type]
            def __init__(self) -> None:
                super().__init__()
                self.add_experimental_option("prefs", variant.prefs)

        webdriver.ChromeOptions = WithPrefs  # type: ignore[misc]


def run_bare(url: str, window: float, tmp: Path, config_values: dict[str, Any]) -> dict[str, Any]:
    """A plain Selenium session with the arguments and options launch() builds."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from gateway.browser import launch
    from gateway.config import BrowserConfig

    config = BrowserConfig(**config_values)
    driver_path = launch.find_chromedriver()
    engine = launch.find_engine(config, driver_path)
    profile = tmp / "profile"
    agent = launch.user_agent(launch.chromium_version(engine.binary))
    options = launch.chrome_options(config, driver_path, engine, profile, agent)
    service = Service(
        executable_path=driver_path,
        log_output=subprocess.DEVNULL,
        popen_kw={"start_new_session": True},
    )
    driver = webdriver.Chrome(options=options, service=service)
    browser = launch.Browser(driver=driver, sid=service.process.pid, profile=profile)
    try:
        driver.get(url)
        time.sleep(window)
        pids = browser.chromium_pids()
        return {**measure(pids), "others": other_chromium_processes(set(pids)), "loads": 1}
    finally:
        browser.close()


def run_component(
    sim: Any, window: float, tmp: Path, quiet: bool, reload_every: float, config: dict[str, Any]
) -> dict[str, Any]:
    from gateway.config import Duration
    from gateway.sim.runner import BrowserRunner

    runner = BrowserRunner(
        tmp,
        sim,
        reload_every=Duration(3600 if quiet else reload_every),
        max_memory_mb=4000,
        **config,
    )
    try:
        runner.wait(lambda r: r.runtime.state == "connected", 60, "connected")
        time.sleep(5)  # the page's own start-up
        worker = runner.worker()
        assert worker.browser is not None
        ticks = cpu_ticks(worker.browser.chromium_pids())
        start = time.monotonic()
        disconnects = 0
        next_disconnect = start + 20
        while time.monotonic() - start < window:
            if not quiet and time.monotonic() >= next_disconnect and sim.runtime == "connected":
                sim.disconnect(dialog=disconnects % 2 == 0)
                disconnects += 1
                next_disconnect = time.monotonic() + 20
            time.sleep(0.5)
        cpu = cpu_percent(ticks, cpu_ticks(worker.browser.chromium_pids()), window)
        runner.wait(lambda r: r.runtime.state == "connected", 30, "connected at the end")
        time.sleep(3)
        worker = runner.worker()
        assert worker.browser is not None
        pids = worker.browser.chromium_pids()
        return {
            **measure(pids),
            "cpu_pct": cpu,
            "others": other_chromium_processes(set(pids)),
            "loads": sim.count("load"),
            "disconnects": disconnects,
            "restarts": worker.restarts,
        }
    finally:
        runner.stop()


def run_one(name: str, window: float, reload_every: float) -> dict[str, Any]:
    from gateway.sim import SimColab

    variant = VARIANTS[name]
    apply(variant)
    with SimColab() as sim, tempfile.TemporaryDirectory() as tmp:
        if variant.mode == "bare":
            return run_bare(sim.url, window, Path(tmp), variant.config)
        quiet = variant.mode == "quiet"
        return run_component(sim, window, Path(tmp), quiet, reload_every, variant.config)


# -- orchestration --------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="*", help="names (default: all); see --list")
    parser.add_argument("--window", type=float, default=90.0, help="seconds per run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time")
    parser.add_argument("--reload-every", type=float, default=30.0)
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.list:
        for name, variant in VARIANTS.items():
            print(f"{name:28s} {variant}")
        return 0
    if args.one:
        print("JSON " + json.dumps(run_one(args.one, args.window, args.reload_every)), flush=True)
        return 0
    names = args.variants or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {', '.join(unknown)}; see --list")

    # Interleave the repeats (a, b, c, a, b, c) so that a change in the machine's load
    # spreads over all variants rather than hitting one.
    queue = [n for _ in range(args.repeats) for n in names]
    running: list[tuple[str, subprocess.Popen[str]]] = []
    results: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    while queue or running:
        while queue and len(running) < args.parallel:
            name = queue.pop(0)
            cmd = [sys.executable, __file__, "--one", name, "--window", str(args.window)]
            cmd += ["--reload-every", str(args.reload_every)]
            running.append(
                (name, subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env))
            )
        time.sleep(1)
        for item in list(running):
            name, proc = item
            if proc.poll() is None:
                continue
            running.remove(item)
            out = proc.stdout.read() if proc.stdout else ""
            line = next((x for x in out.splitlines() if x.startswith("JSON ")), None)
            if proc.returncode != 0 or line is None:
                print(f"{name}: failed (exit {proc.returncode})", flush=True)
                continue
            result = json.loads(line[5:])
            results[name].append(result)
            print(f"{name}: {json.dumps(result)}", flush=True)

    base = results.get("daemon") or []
    print(f"\nwindow {args.window:.0f}s, {args.repeats} repeats, {args.parallel} at a time")
    print(
        f"{'variant':26s} {'pss':>11s} {'anon':>11s} {'file':>5s} {'alone':>11s} "
        f"{'uss':>5s} procs d_anon d_alone"
    )
    for name in names:
        runs = results[name]
        if not runs:
            print(f"{name:26s} no result")
            continue

        def each(key: str, runs: list[dict[str, Any]] = runs) -> str:
            return "/".join(f"{r[key]:.0f}" for r in runs)

        def delta(key: str, runs: list[dict[str, Any]] = runs) -> str:
            if not base:
                return "-"
            mine = statistics.mean(r[key] for r in runs)
            return f"{mine - statistics.mean(r[key] for r in base):+.0f}"

        print(
            f"{name:26s} {each('pss'):>11s} {each('anon'):>11s} "
            f"{statistics.mean(r['file'] for r in runs):5.0f} {each('alone'):>11s} "
            f"{statistics.mean(r['uss'] for r in runs):5.0f} "
            f"{'/'.join(str(r['processes']) for r in runs):>5s} "
            f"{delta('anon'):>6s} {delta('alone'):>7s}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
