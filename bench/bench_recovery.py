"""How fast the loop heals: each fault repeated against the real daemon and simulated Colab.

Runs rounds of (tunnel killed, VM reset, disconnect dialog) on one harness: each round's
VM reset and reconnect give the next round a fresh VM, as Colab would. Prints every
measurement, the maxima, and ends with the medians:

    RESULT tunnel_recovery_s=… reset_recovery_s=… dialog_reaction_s=…

tunnel_recovery_s: ssh client on the VM killed → the tmux pane logged in again.
reset_recovery_s:  Colab resets the VM → the pane logged into the new VM (new host key).
dialog_reaction_s: "Runtime disconnected" shown → the browser clicked Reconnect.
Needs root (network namespaces). Bounded: at most ROUNDS rounds and BUDGET seconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from gateway.sim import scenarios
from gateway.sim.harness import HarnessError, LoopHarness
from gateway.sim.vm import install_signal_guard

ROUNDS = 5
BUDGET = 480.0  # seconds for all rounds; a round is not started past this


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--budget", type=float, default=BUDGET)
    args = parser.parse_args()
    rounds = max(1, min(args.rounds, 20))
    if os.geteuid() != 0:
        print("bench_recovery needs root (network namespaces); run: sudo make bench-recovery")
        return 2
    install_signal_guard()
    samples: dict[str, list[float]] = {"tunnel": [], "reset": [], "dialog": [], "dialog_all": []}
    failures: list[str] = []
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as tmp:
        harness = LoopHarness(Path(tmp), log=lambda line: print(f"  {line}", flush=True))
        try:
            harness.start()
        except HarnessError as exc:
            print(f"cannot run: {exc}")
            return 2
        try:
            up = scenarios.bring_up(harness)
            if not up.ok:
                print(f"the loop did not come up: {up.detail}")
                return 1
            for n in range(1, rounds + 1):
                if time.monotonic() - start > args.budget:
                    print(f"budget of {args.budget:.0f}s used up after {n - 1} rounds")
                    break
                print(f"round {n}/{rounds}", flush=True)
                for key, fault in (
                    ("tunnel", scenarios.tunnel_killed),
                    ("reset", scenarios.vm_reset),
                    ("dialog", scenarios.disconnect_dialog),
                ):
                    step = fault(harness)
                    if not step.ok or step.seconds is None:
                        failures.append(f"round {n} {step.name}: {step.detail}")
                        print(f"  FAILED {step.name}: {step.detail}", flush=True)
                        continue
                    if key == "dialog":
                        samples["dialog"].append(step.extra["dialog reaction"])
                        samples["dialog_all"].append(step.seconds)
                    else:
                        samples[key].append(step.seconds)
                    print(f"  {step.name}: {step.measure} {step.seconds:.2f}s", flush=True)
        finally:
            harness.stop()
    print()
    labels = {
        "tunnel": "tunnel killed → pane connected",
        "reset": "VM reset → pane in new VM",
        "dialog": "dialog shown → Reconnect clicked",
        "dialog_all": "dialog shown → pane in new VM",
    }
    for key, label in labels.items():
        values = samples[key]
        if values:
            print(
                f"{label:<36} n={len(values)} median {statistics.median(values):6.2f}s "
                f"max {max(values):6.2f}s  all: {' '.join(f'{v:.2f}' for v in values)}"
            )
    for failure in failures:
        print(f"failure: {failure}")
    if not all(samples[k] for k in ("tunnel", "reset", "dialog")):
        print("RESULT incomplete: some fault never recovered")
        return 1
    print(
        "RESULT "
        f"tunnel_recovery_s={statistics.median(samples['tunnel']):.2f} "
        f"reset_recovery_s={statistics.median(samples['reset']):.2f} "
        f"dialog_reaction_s={statistics.median(samples['dialog']):.2f}"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
