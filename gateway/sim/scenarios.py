"""The loop coming up, and each fault with its recovery, measured from outside.

Each scenario injects one fault into a running ``LoopHarness`` and waits, with a bound,
for what a person would check: the tmux pane logged into the (possibly new) VM. It
returns a ``Step`` with the measured times; a step whose wait ran out has ``ok=False``
and says what did not happen. The demo prints them, the end-to-end tests assert them, the
benchmark repeats them.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.sim.harness import TMUX_SESSION as TMUX_SESSION_NAME
from gateway.sim.harness import VM_MESSAGES_EVERY, HarnessError, LoopHarness
from gateway.sim.vm import SimVM
from gateway.untrusted import untrusted

# The bounds the issue sets, and generous ones where it sets none.
BRING_UP_BOUND = 90.0
TUNNEL_BOUND = 5.0
RESET_BOUND = 30.0
DIALOG_CLICK_BOUND = 10.0
DIALOG_BOUND = 45.0  # the reconnect, then a new VM: the reset's bound plus rerun_after
CHROMIUM_BOUND = 45.0

# What the pane must never show when the VM's host key changes.
HOST_KEY_COMPLAINTS = (
    "REMOTE HOST IDENTIFICATION HAS CHANGED",
    "Are you sure you want to continue connecting",
    "Host key verification failed",
    "POSSIBLE DNS SPOOFING",
)


@dataclass
class Step:
    name: str
    measure: str  # what "seconds" is the time to
    bound: float
    seconds: float | None = None
    ok: bool = False
    detail: str = ""
    extra: dict[str, float] = field(default_factory=dict)


def _attempt(step: Step, body: Callable[[], None]) -> Step:
    try:
        body()
        step.ok = True
    except HarnessError as exc:
        step.ok = False
        step.detail = str(exc)
    return step


def bring_up(h: LoopHarness) -> Step:
    """The browser connects, the bootstrap runs, the tunnel comes up, the pane logs in."""
    step = Step("the loop comes up", "pane logged into the VM", BRING_UP_BOUND)
    start = time.monotonic()

    def body() -> None:
        assert h.vm is not None
        h.wait("the browser connects the runtime", lambda: h.runtime_state() == "connected", 60)
        step.extra["runtime connected"] = time.monotonic() - start
        h.log(f"browser: runtime connected ({step.extra['runtime connected']:.1f}s)")
        h.wait("the bootstrap cell runs", lambda: h.sim.runs, 60)
        step.extra["cell ran"] = time.monotonic() - start
        h.wait("the tunnel comes up", h.tunnel_up, 30)
        step.extra["tunnel up"] = time.monotonic() - start
        h.log(f"tunnel: up ({step.extra['tunnel up']:.1f}s)")
        h.wait("the tmux pane logs into the VM", lambda: h.pane_logins(h.vm.hostname) > 0, 30)  # type: ignore[union-attr]
        step.seconds = time.monotonic() - start
        h.log(f"tmux: pane logged into {h.vm.hostname} ({step.seconds:.1f}s)")
        _check_pane_and_pin(h, step)

    return _attempt(step, body)


def second_session_up(h: LoopHarness) -> Step:
    """The second notebook (its own page, VM and tunnel) has its own tmux window, logged
    into its own VM, beside the first."""
    step = Step("a second notebook comes up", "its tmux window logged into its VM", BRING_UP_BOUND)
    start = time.monotonic()

    def body() -> None:
        second = h.second
        assert second is not None
        h.wait(
            f"the second session's runtime connects ({second.name})",
            lambda: h.session_facts(second.name).get("runtime", {}).get("state") == "connected",
            60,
        )
        h.wait(
            "the second session's tunnel comes up",
            lambda: bool(h.session_facts(second.name).get("tunnel", {}).get("up")),
            60,
        )
        step.extra["tunnel up"] = time.monotonic() - start
        vm = second.vm
        assert vm is not None
        h.wait(
            "the second tmux window logs into the second VM",
            lambda: h.pane_logins(vm.hostname, second.pane) > 0,
            30,
        )
        step.seconds = time.monotonic() - start
        windows = h.tmux("list-windows", "-t", TMUX_SESSION_NAME, "-F", "#W").stdout.split()
        h.log(
            f"tmux: window {second.pane} logged into {vm.hostname}; the session's windows: "
            f"{', '.join(windows)}"
        )
        step.detail = f"windows {windows}"

    return _attempt(step, body)


def _check_pane_and_pin(h: LoopHarness, step: Step) -> None:
    assert h.vm is not None
    answer = h.pane_run("hostname; cat /root/vm-id")
    h.log(f"tmux: typed `hostname; cat /root/vm-id` in the pane → {answer}")
    if h.vm.hostname not in answer or h.vm.vm_id not in answer:
        raise HarnessError(f"the pane answered {answer!r}, not from VM {h.vm.hostname}")
    pinned = h.pinned_key()
    if pinned != h.vm.host_key():
        raise HarnessError(
            f"known_hosts pins {pinned or 'nothing'} for [localhost]:{h.ssh_port}, "
            f"but the VM's host key is {h.vm.host_key()}"
        )
    step.detail = f"pane answered {answer!r}; pinned {h.vm.host_key_fingerprint()}"


def tunnel_killed(h: LoopHarness) -> Step:
    """Kill the VM's ssh client: the VM dials again and the pane reconnects."""
    step = Step("tunnel killed", "pane connected again", TUNNEL_BOUND)
    assert h.vm is not None
    vm = h.vm

    def body() -> None:
        before = h.pane_logins(vm.hostname)
        start, start_wall = time.monotonic(), time.time()
        killed = vm.kill_tunnel()
        if not killed:
            raise HarnessError("the VM had no ssh client to kill: the tunnel was not up")
        h.log(f"FAULT: killed the VM's ssh client (pid {', '.join(map(str, killed))})")
        h.wait("the VM dials again", lambda: h.tunnel_up_since(start_wall), step.bound)
        step.extra["tunnel up"] = time.monotonic() - start
        h.wait(
            "the pane reconnects",
            lambda: h.pane_logins(vm.hostname) > before,
            max(0.1, step.bound - (time.monotonic() - start)),
        )
        step.seconds = time.monotonic() - start
        h.log(f"recovered: tunnel up {step.extra['tunnel up']:.1f}s, pane {step.seconds:.1f}s")
        _check_pane_and_pin(h, step)

    return _attempt(step, body)


def vm_reset(h: LoopHarness) -> Step:
    """Colab swaps the VM: new host key, nothing running; the gateway brings it all back."""
    step = Step("VM reset", "pane connected in the new VM", RESET_BOUND)
    assert h.vm is not None
    vm = h.vm

    def body() -> None:
        old = vm.hostname
        h.log(f"FAULT: Colab resets the VM {old}")
        start, start_wall = time.monotonic(), time.time()
        h.sim.reset_vm()
        _await_new_vm(h, step, vm, start, start_wall)
        h.log(f"recovered: tunnel up {step.extra['tunnel up']:.1f}s, pane {step.seconds:.1f}s")

    return _attempt(step, body)


def _await_new_vm(h: LoopHarness, step: Step, vm: SimVM, start: float, start_wall: float) -> None:
    """Wait for the new VM's tunnel (its host key) and its login in the pane, then check
    that no host-key warning or prompt ever showed and that its key is the pinned one."""
    new, key = vm.hostname, vm.host_key_fingerprint()
    h.wait(
        "the tunnel comes back from the new VM",
        lambda: h.tunnel_up_since(start_wall, key),
        max(0.1, step.bound - (time.monotonic() - start)),
    )
    step.extra["tunnel up"] = time.monotonic() - start
    h.wait(
        "the pane logs into the new VM",
        lambda: h.pane_logins(new) > 0,
        max(0.1, step.bound - (time.monotonic() - start)),
    )
    step.seconds = time.monotonic() - start
    _check_no_host_key_complaint(h)
    _check_pane_and_pin(h, step)


def _check_no_host_key_complaint(h: LoopHarness) -> None:
    # The whole history: no host key change may ever have shown a warning or a prompt.
    text = h.pane_text()
    for complaint in HOST_KEY_COMPLAINTS:
        if complaint in text:
            raise HarnessError(f"the pane showed {complaint!r} after the new host key")


def disconnect_dialog(h: LoopHarness) -> Step:
    """The runtime drops with "Runtime disconnected": the browser clicks Reconnect."""
    step = Step("disconnect dialog", "pane connected in the new VM", DIALOG_BOUND)
    assert h.vm is not None
    vm = h.vm

    def body() -> None:
        old = vm.hostname
        clicks = h.sim.count("action", action="dialog_runtime_disconnected_connect")
        start, start_wall = time.monotonic(), time.time()
        h.sim.disconnect(dialog=True)
        vm.kill_all()  # a disconnected runtime's VM is gone
        h.log("FAULT: the runtime disconnected; page shows 'Runtime disconnected'")
        h.wait(
            "the browser clicks Reconnect in the dialog",
            lambda: h.sim.count("action", action="dialog_runtime_disconnected_connect") > clicks,
            DIALOG_CLICK_BOUND,
        )
        click = h.sim.events("action", action="dialog_runtime_disconnected_connect")[-1]
        step.extra["dialog reaction"] = float(click["server_t"]) - start_wall
        h.log(f"browser: clicked Reconnect after {step.extra['dialog reaction']:.2f}s")
        h.wait(
            "Colab assigns a new VM",
            lambda: h.sim.runtime == "connected" and vm.hostname != old,
            15,
        )
        _await_new_vm(h, step, vm, start, start_wall)
        h.log(f"recovered: pane in {vm.hostname} after {step.seconds:.1f}s")

    return _attempt(step, body)


def chromium_killed(h: LoopHarness) -> Step:
    """SIGKILL Chromium: the browser component starts a new one and reloads the notebook."""
    step = Step("Chromium killed", "notebook loaded again", CHROMIUM_BOUND)

    def body() -> None:
        pids = h.chromium_pids()
        if not pids:
            raise HarnessError("found no Chromium started by the daemon's chromedriver")
        loads = h.sim.count("load")
        start = time.monotonic()
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        h.log(f"FAULT: SIGKILL to Chromium (pid {', '.join(map(str, pids))})")
        h.wait("a new Chromium loads the notebook", lambda: h.sim.count("load") > loads, step.bound)
        step.extra["page loaded"] = time.monotonic() - start
        h.wait(
            "the runtime shows connected again",
            lambda: h.runtime_state() == "connected" and set(h.chromium_pids()) - set(pids),
            max(0.1, step.bound - (time.monotonic() - start)),
        )
        step.seconds = time.monotonic() - start
        h.log(f"recovered: notebook reloaded and connected after {step.seconds:.1f}s")
        if not h.tunnel_up():
            raise HarnessError("the tunnel went down although only Chromium was killed")
        _check_pane_and_pin(h, step)

    return _attempt(step, body)


# The demo's sessions[].sync: what `sync_across_reset` shows.
SYNC_DEMO = (
    "{paths: [/root/work], every: 10m, "
    "resume: {command: 'date +%T >> /root/resumed.txt', where: background}}"
)
SYNC_BOUND = 60.0


def sync_across_reset(h: LoopHarness) -> Step:
    """A file written in the VM is pulled to the Pi; Colab resets the VM; the new VM has the
    file before the pane's shell starts, and the resume command ran once."""
    step = Step("files across a reset", "pane in the new VM, files back", SYNC_BOUND)
    assert h.vm is not None
    vm = h.vm

    def body() -> None:
        if "/root/work" not in h.sync_yaml:
            raise HarnessError("the harness has no sessions[].sync with /root/work")
        work = vm.root_home / "work"
        work.mkdir(exist_ok=True)
        text = f"epoch 7 checkpoint from {vm.hostname}"
        (work / "results.txt").write_text(text + "\n")
        h.log(f"wrote /root/work/results.txt in {vm.hostname}: {text!r}")
        start = time.monotonic()
        pulled = h.cli("sync", h.session, "--now").strip().splitlines()[-1]
        step.extra["pull (sync --now)"] = time.monotonic() - start
        h.log(f"sync: {pulled}")
        old = vm.hostname
        start, start_wall = time.monotonic(), time.time()
        h.log(f"FAULT: Colab resets the VM {old}")
        h.sim.reset_vm()
        key = vm.host_key_fingerprint()
        h.wait(
            "the tunnel comes back from the new VM",
            lambda: h.tunnel_up_since(start_wall, key),
            step.bound,
        )
        step.extra["tunnel up"] = time.monotonic() - start
        h.wait(
            "the files are restored into the new VM",
            lambda: h.session_facts().get("sync", {}).get("ready_for") == key,
            max(0.1, step.bound - (time.monotonic() - start)),
        )
        step.extra["files restored"] = time.monotonic() - start
        h.log(f"sync: {h.session_facts().get('sync', {}).get('restore_message', '')}")
        h.wait(
            "the pane logs into the new VM",
            lambda: h.pane_logins(vm.hostname) > 0,
            max(0.1, step.bound - (time.monotonic() - start)),
        )
        step.seconds = time.monotonic() - start
        answer = h.pane_run("cat /root/work/results.txt")
        h.log(f"tmux: typed `cat /root/work/results.txt` in {vm.hostname}'s pane → {answer}")
        if answer != text:
            raise HarnessError(f"the new VM's pane shows {answer!r}, not {text!r}")
        resumed = vm.root_home / "resumed.txt"
        h.wait("resume.command runs", resumed.exists, 20)
        runs = resumed.read_text().split()
        h.log(f"resume.command ran {len(runs)} time(s) in {vm.hostname}, at {', '.join(runs)}")
        if len(runs) != 1:
            raise HarnessError(f"resume.command ran {len(runs)} times, not once")

    return _attempt(step, body)


# Two collections and the send: a message waiting just after one collection, then sent.
JOB_END_BOUND = 2 * VM_MESSAGES_EVERY + 10.0
JOB_END_COMMAND = ("sh", "-c", "echo epoch 3/3 loss 0.12; echo saved /root/model.pt")


def job_end_message(h: LoopHarness) -> Step:
    """``gw-run`` in the VM, as the user runs a training script; its end (exit status,
    duration, last lines) reaches the inbox on the Pi through the daemon's notifications."""
    step = Step("a job's end reaches the phone", "the inbox got the gw-run message", JOB_END_BOUND)
    assert h.vm is not None
    vm = h.vm

    def body() -> None:
        if h.inbox is None:
            raise HarnessError("the harness has no inbox (LoopHarness(inbox=True))")
        argv = ["gw-run", "--", *JOB_END_COMMAND]
        h.log(f"in {vm.hostname}: gw-run -- {' '.join(JOB_END_COMMAND[:2])} '...'")
        ran = vm.run(argv, timeout=30)
        if ran.returncode != 0:
            raise HarnessError(f"gw-run exited with {ran.returncode}: {ran.stderr.strip()}")
        start = time.monotonic()
        wanted = JOB_END_COMMAND[2][:20]
        inbox = h.inbox
        h.wait("the gw-run message in the inbox", lambda: inbox.find(wanted), step.bound)
        step.seconds = time.monotonic() - start
        post = inbox.find(wanted) or {}
        # Escaped by the daemon already; a renderer escapes again (idempotent).
        lines = [untrusted(str(post.get("title", "")))]
        lines += [untrusted(line) for line in str(post.get("message", "")).splitlines()]
        h.log("the inbox on the Pi received:\n" + "\n".join(f"  | {line}" for line in lines))

    return _attempt(step, body)


FAULTS: dict[str, Callable[[LoopHarness], Step]] = {
    "tunnel": tunnel_killed,
    "reset": vm_reset,
    "dialog": disconnect_dialog,
    "chromium": chromium_killed,
    "sync": sync_across_reset,
}
