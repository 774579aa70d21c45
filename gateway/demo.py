"""``colab-gateway demo``: the whole loop and its self-healing, on this machine, in ~2 minutes.

No Google account is needed: the demo plays Colab itself (``gateway.sim``) and runs the
real daemon against it. It prints a timeline as things happen and a table at the end, and
exits non-zero if any step failed. Everything it starts is stopped and removed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

EXIT_OK, EXIT_FAILED, EXIT_CANNOT_RUN = 0, 1, 2


class Timeline:
    """Lines stamped with the seconds since the demo began."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.out = out
        self.start = time.monotonic()

    def __call__(self, text: str) -> None:
        elapsed = time.monotonic() - self.start
        for i, line in enumerate(text.splitlines() or [""]):
            stamp = f"[{elapsed:6.1f}s]" if i == 0 else " " * 9
            print(f"{stamp} {line}", file=self.out, flush=True)


def render_table(steps: Sequence[Any]) -> str:
    """The final table: one row per step, the measured time against its bound."""
    rows = [("step", "recovered when", "measured", "bound", "result")]
    for step in steps:
        seconds = f"{step.seconds:.1f} s" if step.seconds is not None else "-"
        rows.append((step.name, step.measure, seconds, f"{step.bound:.0f} s", _verdict(step)))
        for name, value in step.extra.items():
            rows.append(("", f"  {name}", f"{value:.1f} s", "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _verdict(step: Any) -> str:
    if not step.ok:
        return "FAILED"
    if step.seconds is not None and step.seconds > step.bound:
        return "SLOW"
    return "ok"


def run_demo(
    faults: Sequence[str], workdir: Path | None, keep: bool, out: TextIO = sys.stdout
) -> int:
    from gateway.sim import netns
    from gateway.sim.harness import HarnessError, LoopHarness
    from gateway.sim.scenarios import (
        FAULTS,
        SYNC_DEMO,
        bring_up,
        job_end_message,
        second_session_up,
    )
    from gateway.sim.vm import RECORDED_T4, install_signal_guard

    timeline = Timeline(out)
    print("colab-gateway demo: the real daemon against a simulated Colab on this machine", file=out)
    try:
        netns.require_root("colab-gateway demo")
    except netns.NamespaceError as exc:
        print(f"colab-gateway demo: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    install_signal_guard()
    base = workdir or Path(tempfile.mkdtemp(prefix="colab-gateway-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    timeline(f"working directory {base} (config, state, logs)")
    steps = []
    # sessions[].sync on, for the "sync" step; it costs the other steps nothing (no
    # snapshot, nothing to restore, until that step pulls).
    # Two notebooks, as people often keep (issue 26): the faults hit the first; the second
    # shows its own window in the tmux session.
    harness = LoopHarness(
        base,
        log=timeline,
        sync=SYNC_DEMO,
        top="sync: {disk_floor: 10M}",
        more_sessions=1,
        inbox=True,  # notifications (a gw-run message) to a json:// receiver on the Pi
    )
    try:
        try:
            harness.start()
        except HarnessError as exc:
            timeline(f"cannot start: {exc}")
            return EXIT_CANNOT_RUN
        if harness.vm is not None:
            harness.vm.set_nvidia_smi(RECORDED_T4)  # a T4 runtime, as most free ones are
        up = bring_up(harness)
        steps.append(up)
        if up.ok:
            timeline(vm_facts_line(harness))
            up = second_session_up(harness)
            steps.append(up)
        if up.ok:
            up = job_end_message(harness)
            steps.append(up)
        if not up.ok:
            timeline(f"FAILED: {up.detail}")
        else:
            for name in faults:
                timeline(f"--- fault: {name}")
                step = FAULTS[name](harness)
                steps.append(step)
                if not step.ok:
                    timeline(f"FAILED: {step.detail}")
        if harness.hook_errors:
            timeline("errors in the simulated Colab: " + "; ".join(harness.hook_errors))
    except (KeyboardInterrupt, SystemExit):
        timeline("interrupted")
        raise
    finally:
        _show_metrics(harness, timeline)
        timeline("stopping the daemon and removing the simulated hosts")
        failed = not steps or any(_verdict(s) != "ok" for s in steps) or harness.hook_errors
        if failed:
            _show_log_tail(harness.logs_dir / "daemon.log", out)
        harness.stop()
        if not keep and not failed and workdir is None:
            shutil.rmtree(base, ignore_errors=True)
        elif not keep and workdir is None:
            timeline(f"kept {base} for the logs (remove it when done)")
    print("", file=out)
    print(render_table(steps), file=out)
    total = time.monotonic() - timeline.start
    ok = steps and all(_verdict(s) == "ok" for s in steps) and not harness.hook_errors
    print(f"\n{'all steps passed' if ok else 'SOME STEPS FAILED'} in {total:.0f} s", file=out)
    return EXIT_OK if ok else EXIT_FAILED


def vm_facts_line(harness: Any, timeout: float = 40.0) -> str:
    """``VM facts: T4 87 %, VRAM 11.2/15 GB · RAM …``: what the daemon sampled from the
    first session's VM, as ``colab-gateway status`` shows it."""
    from gateway.sim.harness import SESSION, HarnessError

    def shown() -> str | None:
        vm = harness.session_facts().get("vm") or {}
        if vm.get("sampled_at") is None:
            return None
        # Exit status 1 while anything is degraded (the second notebook still coming up).
        report: str = harness.cli("status", any_status=True)
        session = None  # whose lines these are: the second notebook's VM has no GPU
        for line in report.splitlines():
            if line.startswith("  session "):
                session = line.removeprefix("  session ").partition(":")[0]
            elif session == SESSION and line.strip().startswith("VM "):
                return line.strip().removeprefix("VM ")
        return None

    try:
        harness.wait("the VM's facts in the status", shown, timeout)
    except HarnessError as exc:
        return f"VM facts: none ({exc})"
    return f"VM facts: {shown()}"


def _show_metrics(harness: Any, timeline: Timeline) -> None:
    """Where the metrics were while the demo ran, and what they counted."""
    if not harness.metrics_port:
        return
    try:
        text = harness.scrape()
    except OSError as exc:
        timeline(f"metrics were at {harness.metrics_url}; the last scrape failed: {exc}")
        return
    timeline(
        f"metrics were at {harness.metrics_url} (inside the Pi's network namespace), and in "
        f"the node_exporter textfile {harness.metrics_textfile}; what they counted:\n"
        + "\n".join(f"  {line}" for line in metrics_summary(text))
    )


def metrics_summary(text: str) -> list[str]:
    """The counters that moved, and the chain's gauges, one sample a line."""
    from prometheus_client.parser import text_string_to_metric_families

    shown = ("runtime_connected", "tunnel_up", "component_health", "up_seconds")
    lines = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            moved = family.type == "counter" and sample.name.endswith("_total") and sample.value
            if moved or family.name.removeprefix("colab_gateway_") in shown:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                shown_labels = f"{{{labels}}}" if labels else ""
                lines.append(f"{sample.name}{shown_labels} {sample.value:g}")
    return lines


def _show_log_tail(path: Path, out: TextIO, lines: int = 40) -> None:
    try:
        tail = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return
    print(f"--- last {len(tail)} lines of {path}", file=out)
    for line in tail:
        print(f"    {line}", file=out)


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.sim.scenarios import FAULTS

    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = [f for f in faults if f not in FAULTS]
    if unknown:
        print(
            f"colab-gateway demo: unknown fault {unknown[0]!r}; choose from {', '.join(FAULTS)}",
            file=sys.stderr,
        )
        return EXIT_CANNOT_RUN
    workdir = Path(args.workdir) if args.workdir else None
    return run_demo(faults, workdir, args.keep)


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "demo",
        help="the whole loop and its recoveries against a simulated Colab (needs root)",
        description="Start the real daemon against a simulated Colab page and VM on this "
        "machine, show the loop, inject faults and measure the recoveries.",
    )
    parser.add_argument(
        "--faults",
        default="tunnel,reset,dialog,chromium,sync",
        help="comma-separated faults to inject, in order (default: %(default)s)",
    )
    parser.add_argument("--workdir", help="keep config, state and logs here (default: a temp dir)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directory even on success"
    )
    parser.set_defaults(handler=cmd_demo)
