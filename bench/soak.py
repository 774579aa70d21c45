"""The whole daemon under accelerated faults for a while: does anything grow?

    make soak                        # 20 minutes
    SOAK_MINUTES=120 make soak       # the long run
    .venv/bin/python bench/soak.py --minutes 5 --out /tmp/soak

Runs the real daemon against the simulated Colab (``LoopHarness``, as ``make demo``):
tunnel, browser, tmux, sync, metrics and alerts (to a local inbox), and injects, on a
fixed cycle with a few seconds between them, idle disconnects ("Runtime disconnected"),
VM resets, tunnel kills, Chromium kills, SIGHUP reloads and sync pulls. Each fault waits,
with a bound, for its recovery as a person would see it (the pane logged into the VM, the
snapshot holding the new file) and counts as recovered or not.

Every 10 s it samples the daemon (RSS, PSS, FDs, threads), its child processes by kind,
Chromium's PSS, every process on the Pi, the state directory and the log, into
``soak.csv``; at the end it writes ``soak.png`` and judges each series (bench/soak_series.py
says how; ``fds-start.txt`` and ``fds-end.txt`` list what the daemon's descriptors point
at), stops the daemon and looks for what was left: processes on the Pi other than
the tmux server and its panes, partial snapshots and temporary files in the state
directory. Ends with

    RESULT minutes=… faults=… recovered=… fd_slope_per_h=… rss_slope_mb_per_h=…
    chromium_pss_slope_mb_per_h=… children_max=… state_files_max=… log_mb_per_h=…

and exits 1 when a fault was not recovered, a series grows, or something was left; 2 when
it cannot run (not root, programs missing). Needs root (network namespaces).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import soak_series as series

from gateway.browser.keepalive import HEALTHY_RUN
from gateway.sim import scenarios
from gateway.sim.harness import HarnessError, LoopHarness
from gateway.sim.scenarios import Step
from gateway.sim.vm import install_signal_guard

# Pulls on their own too (sessions[].sync.every's minimum), beside the ones the soak asks for.
SYNC = "{paths: [/root/work], every: 10s, keep: 3}"
SAMPLE_EVERY = 10.0
PAUSE = 3.0  # seconds between one fault's recovery and the next fault
RELOAD_BOUND = 20.0
PULL_BOUND = 60.0
SETTLE_BOUND = 180.0  # after a fault that did not recover, for the loop to be whole again
# Chromium is killed only once it has run long enough to reset the browser's restart
# backoff (keepalive.HEALTHY_RUN): killed more often, it waits 2, 4, ... 120 s before
# starting again, by design, and its recovery bound would fail for that reason alone.
CHROMIUM_MIN_AGE = HEALTHY_RUN + 10.0
STOP_BOUND = 30.0  # the daemon's own shutdown_timeout is 8 s
# One cycle of faults; idle disconnects the most often, as on a free Colab account.
CYCLE = (
    "idle", "tunnel", "idle", "sighup", "newvm", "idle",
    "sync", "idle", "reset", "tunnel", "idle", "chromium",
)  # fmt: skip
# Each new VM costs a re-run of the bootstrap, and browser.max_reruns_per_hour (at most 60,
# config.py) stops re-running past that: a loop guard, working as designed. So VM changes
# ("newvm", "reset") are held under this many in any hour (the bring-up is one more); past
# it the cycle's VM change becomes an idle disconnect that keeps the VM.
VM_CHANGES_PER_HOUR = 50
VM_CHANGES = ("newvm", "reset")


def idle_disconnect(h: LoopHarness) -> Step:
    """Colab's idle timeout: "Runtime disconnected" over a VM that lives on. The browser
    clicks Reconnect, the runtime is back on the same VM, and its tunnel never dropped."""
    step = Step("idle disconnect", "reconnected, same VM, pane answers", scenarios.DIALOG_BOUND)
    assert h.vm is not None
    vm = h.vm
    action = "dialog_runtime_disconnected_connect"

    def body() -> None:
        clicks = h.sim.count("action", action=action)
        start = time.monotonic()
        h.sim.disconnect(dialog=True, new_vm=False)
        h.wait(
            "the browser clicks Reconnect in the dialog",
            lambda: h.sim.count("action", action=action) > clicks,
            scenarios.DIALOG_CLICK_BOUND,
        )
        h.wait(
            "the runtime is connected again",
            lambda: h.sim.runtime == "connected" and h.runtime_state() == "connected",
            max(0.1, step.bound - (time.monotonic() - start)),
        )
        h.wait("the tunnel is up", h.tunnel_up, max(0.1, step.bound - (time.monotonic() - start)))
        answer = h.pane_run("hostname")
        if answer != vm.hostname:
            raise HarnessError(f"after the reconnect the pane answered {answer!r}")
        step.seconds = time.monotonic() - start

    return scenarios._attempt(step, body)


def sighup_reload(h: LoopHarness) -> Step:
    """`systemctl reload`: SIGHUP; the daemon re-reads its config and keeps everything up."""
    step = Step("SIGHUP reload", "reloaded, tunnel and pane still up", RELOAD_BOUND)
    assert h.daemon is not None
    daemon = h.daemon
    log_path = h.logs_dir / "daemon.log"

    def body() -> None:
        offset = log_path.stat().st_size
        start = time.monotonic()
        os.kill(daemon.pid, signal.SIGHUP)

        def logged_since() -> bytes:
            with log_path.open("rb") as log:
                log.seek(offset)
                return log.read()

        h.wait("the daemon logs `reloading`", lambda: b"reloading " in logged_since(), step.bound)
        h.wait("the status answers after the reload", h.status, step.bound)
        h.wait("the tunnel is up after the reload", h.tunnel_up, step.bound)
        answer = h.pane_run("hostname")
        assert h.vm is not None
        if answer != h.vm.hostname:
            raise HarnessError(f"after the reload the pane answered {answer!r}")
        # The daemon's own entry "config" says a reload was refused (gateway/daemon.py).
        refused = (h.status().get("components") or {}).get("config")
        if refused or b"new config rejected" in logged_since():
            raise HarnessError(f"the reload refused the unchanged config: {refused}")
        step.seconds = time.monotonic() - start

    return scenarios._attempt(step, body)


class Puller:
    """A sync pull of a file that changes every time: the snapshot must hold the new text."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, h: LoopHarness) -> Step:
        step = Step("sync pull", "the latest snapshot holds the new file", PULL_BOUND)
        assert h.vm is not None
        vm = h.vm

        def body() -> None:
            self.count += 1
            work = vm.root_home / "work"
            work.mkdir(exist_ok=True)
            text = f"pull {self.count} from {vm.hostname}\n"
            (work / "soak.txt").write_text(text)
            # A file of its own per pull (the last few): snapshots differ in names too.
            (work / f"round-{self.count % 5}.bin").write_bytes(os.urandom(64 * 1024))
            start = time.monotonic()
            h.cli("sync", h.session, "--now")
            pulled = h.state_dir / "sync" / h.session / "latest" / "files" / "root" / "work"
            got = (pulled / "soak.txt").read_text() if (pulled / "soak.txt").exists() else ""
            if got != text:
                raise HarnessError(f"the latest snapshot holds {got!r}, not {text!r}")
            step.seconds = time.monotonic() - start

        return scenarios._attempt(step, body)


class SoakHarness(LoopHarness):
    """The demo's loop, with alerts going to an inbox on the Pi and pulls every 10 s."""

    def __init__(self, work: Path, **kwargs: Any) -> None:
        super().__init__(
            work,
            top="sync: {disk_floor: 10M}",
            inbox=True,
            notify="tunnel_down_after: 10s, repeat_after: 1m",
            **kwargs,
        )


def chromium_age(h: LoopHarness) -> float:
    """Seconds the daemon's Chromium has run (0 when there is none)."""
    started = []
    for pid in h.chromium_pids():
        try:
            started.append(psutil.Process(pid).create_time())
        except psutil.Error:
            continue
    return time.time() - min(started) if started else 0.0


def settle(h: LoopHarness, bound: float = SETTLE_BOUND) -> bool:
    """After a fault that did not recover: wait until the loop is whole again (runtime
    connected, tunnel up, the pane answering from the current VM), so that the next fault
    hits a healthy loop instead of counting the same failure twice."""
    assert h.vm is not None
    vm = h.vm
    deadline = time.monotonic() + bound

    def whole() -> bool:
        if h.runtime_state() != "connected" or not h.tunnel_up():
            return False
        try:
            return h.pane_run("hostname", timeout=5) == vm.hostname
        except HarnessError:
            return False

    while time.monotonic() < deadline:
        if whole():
            return True
        time.sleep(1.0)
    return False


def faults_by_name() -> dict[str, Callable[[LoopHarness], Step]]:
    return {
        "idle": idle_disconnect,
        "newvm": scenarios.disconnect_dialog,
        "tunnel": scenarios.tunnel_killed,
        "reset": scenarios.vm_reset,
        "chromium": scenarios.chromium_killed,
        "sighup": sighup_reload,
        "sync": Puller(),
    }


def leftovers(h: LoopHarness) -> list[str]:
    """After the daemon stopped: what on the Pi is neither the tmux server nor in its panes,
    what in the state directory is a pull or a write that never finished, and anything in
    the runtime directory."""
    found = []
    pids = [p for p in h.network.pi_pids() if p != os.getpid()]
    kept: set[int] = set()
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            # Only the server: a `tmux wait-for` client the daemon ran is its to end.
            if proc.name() == "tmux: server":
                kept.add(pid)
                kept.update(c.pid for c in proc.children(recursive=True))
        except psutil.Error:
            continue
    for pid in pids:
        if pid in kept:
            continue
        try:
            proc = psutil.Process(pid)
            found.append(f"process {pid} {proc.name()!r}: {' '.join(proc.cmdline())[:120]}")
        except psutil.Error:
            continue
    for path in sorted(h.state_dir.rglob("*")):
        if path.name.endswith((".partial", ".tmp")):
            found.append(f"file {path}")
    # The status socket and whatever else the daemon kept there while it ran.
    found += [f"file {path}" for path in sorted(h.runtime_dir.iterdir())]
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", 20)))
    parser.add_argument("--out", type=Path, help="where soak.csv, soak.png, the logs go")
    parser.add_argument("--pause", type=float, default=PAUSE)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("soak needs root (network namespaces); run: sudo make soak", file=sys.stderr)
        return 2
    install_signal_guard()
    out = args.out or Path(tempfile.mkdtemp(prefix="colab-gateway-soak-"))
    out.mkdir(parents=True, exist_ok=True)
    return Soak(out, args.minutes, args.pause).run()


class Soak:
    def __init__(self, out: Path, minutes: float, pause: float) -> None:
        self.out = out
        self.minutes = minutes
        self.pause = pause
        self.start = time.monotonic()
        self.steps: list[Step] = []
        self.rows: list[dict[str, float]] = []
        self.csv = series.CsvLog(out / "soak.csv")
        self.faults_log = (out / "faults.tsv").open("w")
        self.faults_log.write("t_s\tfault\tok\tseconds\tdetail\n")
        self.harness: LoopHarness | None = None

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.start:7.1f}s] {text}", flush=True)

    def run(self) -> int:
        work = self.out / "loop"
        if work.exists():
            shutil.rmtree(work)
        h = self.harness = SoakHarness(work, log=lambda line: None, sync=SYNC)
        try:
            h.start()
        except HarnessError as exc:
            print(f"cannot run: {exc}", file=sys.stderr)
            return 2
        left: list[str] = []
        stopped_ok = False
        try:
            up = scenarios.bring_up(h)
            if not up.ok:
                print(f"the loop did not come up: {up.detail}")
                return 1
            self.say(f"loop up in {up.seconds:.1f}s; faults for {self.minutes:g} minutes")
            self.list_fds(h, "fds-start.txt")
            self.fault_loop(h)
            self.take_sample(h)
            self.list_fds(h, "fds-end.txt")
            stopped_ok, left = self.stop_daemon(h)
        finally:
            h.stop()
            self.faults_log.close()
        return self.report(left, stopped_ok, h.inbox.received if h.inbox else 0)

    def fault_loop(self, h: LoopHarness) -> None:
        sampler = series.Sampler(lambda: self.take_sample(h), SAMPLE_EVERY).start()
        try:
            self._faults(h)
        finally:
            sampler.stop()

    def _faults(self, h: LoopHarness) -> None:
        faults = faults_by_name()
        end = self.start + self.minutes * 60
        n = 0
        vm_changes: deque[float] = deque()  # when each VM change of the last hour began
        while time.monotonic() < end:
            name = CYCLE[n % len(CYCLE)]
            n += 1
            if name == "chromium" and chromium_age(h) < CHROMIUM_MIN_AGE:
                name = "idle"
            now = time.monotonic()
            while vm_changes and vm_changes[0] < now - 3600:
                vm_changes.popleft()
            if name in VM_CHANGES:
                if len(vm_changes) >= VM_CHANGES_PER_HOUR:
                    name = "idle"
                else:
                    vm_changes.append(now)
            # The faults see a login as one more prompt in the pane's history: a full
            # history (tmux's history-limit, 2000 lines, full after about 30 minutes here)
            # drops a line for each new one and the count stops growing. Found by the first
            # long run: every tunnel fault after minute 31 "not recovered", the loop whole
            # at once.
            h.tmux("clear-history", "-t", h.pane, check=False)
            step = faults[name](h)
            self.steps.append(step)
            t = time.monotonic() - self.start
            seconds = f"{step.seconds:.2f}" if step.seconds is not None else ""
            detail = step.detail.replace("\t", " ").replace("\n", " ")[:300]
            self.faults_log.write(f"{t:.1f}\t{name}\t{int(step.ok)}\t{seconds}\t{detail}\n")
            self.faults_log.flush()
            if not step.ok:
                self.say(f"NOT RECOVERED {name}: {step.detail}")
                start_settle = time.monotonic()
                if not settle(h):
                    self.say(f"the loop is not whole {SETTLE_BOUND:.0f}s later; stopping")
                    break
                self.say(f"the loop is whole again after {time.monotonic() - start_settle:.0f}s")
            elif n % 20 == 0:
                self.say(f"{n} faults, {sum(s.ok for s in self.steps)} recovered")
            if h.daemon is not None and h.daemon.poll() is not None:
                self.say(f"the daemon exited with status {h.daemon.returncode}; stopping")
                break
            time.sleep(self.pause)

    def take_sample(self, h: LoopHarness) -> None:
        assert h.daemon is not None
        try:
            row = series.sample(
                h.daemon.pid,
                h.state_dir,
                h.logs_dir / "daemon.log",
                t=time.monotonic() - self.start,
                faults=len(self.steps),
                pi_pids=h.network.pi_pids,
            )
        except psutil.Error as exc:
            self.say(f"sample failed: {exc}")
            return
        self.rows.append(row)
        self.csv.append(row)

    def list_fds(self, h: LoopHarness, name: str) -> None:
        """What the daemon's descriptors point at, to compare start and end by hand."""
        assert h.daemon is not None
        lines = []
        for fd in sorted(Path(f"/proc/{h.daemon.pid}/fd").iterdir(), key=lambda p: int(p.name)):
            with contextlib.suppress(OSError):
                lines.append(f"{fd.name}\t{os.readlink(fd)}")
        (self.out / name).write_text("\n".join(lines) + "\n")

    def stop_daemon(self, h: LoopHarness) -> tuple[bool, list[str]]:
        """SIGTERM as systemd would; then what was not cleaned up."""
        assert h.daemon is not None
        h.daemon.send_signal(signal.SIGTERM)
        try:
            status = h.daemon.wait(STOP_BOUND)
        except Exception:
            self.say(f"the daemon did not stop within {STOP_BOUND:.0f}s of SIGTERM")
            return False, leftovers(h)
        self.say(f"daemon stopped (status {status})")
        # Processes the daemon started and did not wait for may take a moment to die.
        deadline = time.monotonic() + 10
        left = leftovers(h)
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = leftovers(h)
        return status == 0, left

    def report(self, left: list[str], stopped_ok: bool, alerts: int) -> int:
        minutes = (time.monotonic() - self.start) / 60
        faults = len(self.steps)
        recovered = sum(s.ok for s in self.steps)
        print()
        by_kind: Counter[str] = Counter(s.name for s in self.steps)
        ok_kind: Counter[str] = Counter(s.name for s in self.steps if s.ok)
        for name, count in by_kind.items():
            times = sorted(
                s.seconds for s in self.steps if s.name == name and s.ok and s.seconds is not None
            )
            median = times[len(times) // 2] if times else float("nan")
            worst = times[-1] if times else float("nan")
            print(
                f"{name:<20} {ok_kind[name]}/{count} recovered, "
                f"median {median:.1f}s, max {worst:.1f}s"
            )
        print(f"alerts the inbox received: {alerts}")
        verdicts = series.judge(self.rows)
        print(
            f"\nseries over the second half ({len(series.second_half(self.rows))} samples of "
            f"{len(self.rows)}; flat: 95 % CI of the slope contains 0, or growth over the "
            f"run under the budget):"
        )
        for verdict in verdicts:
            print(f"  {verdict.line()}")
        if self.rows:
            try:
                series.plot(self.rows, self.out / "soak.png", self.title(minutes, faults))
                print(f"plot: {self.out / 'soak.png'}")
            except ImportError:
                print("no plot: matplotlib is missing (make soak installs it: .[bench])")
        print(f"samples: {self.out / 'soak.csv'}; faults: {self.out / 'faults.tsv'}")
        for thing in left:
            print(f"LEFT AFTER THE END: {thing}")
        if not stopped_ok:
            print("the daemon did not stop cleanly on SIGTERM (status != 0 or timeout)")
        print(series.result_line(self.rows, faults, recovered, minutes))
        failed = (
            recovered < faults
            or not faults
            or any(not v.flat for v in verdicts)
            or left
            or not stopped_ok
        )
        return 1 if failed else 0

    def title(self, minutes: float, faults: int) -> str:
        return (
            f"colab-gateway soak: {minutes:.0f} min, {faults} faults "
            f"({', '.join(dict.fromkeys(CYCLE))})"
        )


if __name__ == "__main__":
    sys.exit(main())
