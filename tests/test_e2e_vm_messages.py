"""End to end: ``gw-run`` and ``gw-notify`` in the simulated Colab VM reach a phone on the Pi.

The whole daemon against the simulated Colab (``LoopHarness``): the page runs the
bootstrap cell, which installs the two commands in the VM; the test runs them there as the
notebook's user would; the daemon's alerts component collects the VM's outbox over its ssh
(through the reverse tunnel, the pinned host key) and sends through apprise's json:// to a
receiver on the Pi's loopback (``gateway.sim.inbox``). tests/alerts/test_vm_messages.py
holds the collection's parts one by one; this shows them working in the daemon.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import psutil
import pytest

from gateway.alerts.vm_outbox import OUTBOX
from gateway.sim import scenarios
from gateway.sim.harness import LoopHarness, missing_parts
from gateway.sim.inbox import Inbox

pytestmark = [
    pytest.mark.slow,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

ARRIVES = scenarios.JOB_END_BOUND  # two collections (every 5 s) and the send


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopHarness]:
    missing = missing_parts()
    if missing:
        pytest.skip("parts of the loop are not here yet: " + "; ".join(missing))
    lines: list[str] = []
    harness = LoopHarness(tmp_path_factory.mktemp("e2e-vm-messages"), log=lines.append, inbox=True)
    with harness:
        step = scenarios.bring_up(harness)
        assert step.ok, f"{step.detail}\n" + "\n".join(lines) + _daemon_log(harness)
        yield harness


@pytest.fixture
def loop(harness: LoopHarness) -> LoopHarness:
    h = harness
    h.wait("the runtime connected", lambda: h.runtime_state() == "connected", 60)
    h.wait("the tunnel up", h.tunnel_up, 60)
    # What a test before left on the VM has been collected: each starts from an empty outbox.
    h.wait("the VM's outbox empty", lambda: not _waiting_on_vm(h), 3 * ARRIVES)
    return h


def _daemon_log(h: LoopHarness) -> str:
    try:
        return "\n--- daemon log (tail)\n" + "\n".join(
            (h.logs_dir / "daemon.log").read_text().splitlines()[-60:]
        )
    except OSError:
        return ""


def _inbox(h: LoopHarness) -> Inbox:
    assert h.inbox is not None
    return h.inbox


def _in_vm(h: LoopHarness, *argv: str) -> subprocess.CompletedProcess[str]:
    assert h.vm is not None
    return h.vm.run(argv, timeout=30)


def _waiting_on_vm(h: LoopHarness) -> list[str]:
    assert h.vm is not None
    outbox = h.vm.root_home / ".colab-gateway" / "outbox"
    return sorted(p.name for p in outbox.glob("*.json"))


def _arrived(h: LoopHarness, title_part: str) -> dict[str, object]:
    post = _inbox(h).wait_for(title_part, ARRIVES)
    assert post is not None, (
        f"no post titled with {title_part!r}; got {_inbox(h).titles()}" + _daemon_log(h)
    )
    return post


def test_gw_run_exit_3_reaches_the_phone_with_status_duration_and_last_lines(
    loop: LoopHarness,
) -> None:
    ran = _in_vm(loop, "gw-run", "--", "sh", "-c", "echo epoch 9 loss 0.77; exit 3")
    assert ran.returncode == 3, "gw-run exits with the command's status"
    assert "epoch 9 loss 0.77" in ran.stdout, "the output still shows as usual"
    post = _arrived(loop, "epoch 9 loss")
    title, message = str(post["title"]), str(post["message"])
    assert title.startswith("colab-gateway on ") and ": demo: sh -c" in title
    assert title.endswith(": failed")
    assert re.search(r"failed with exit 3 after \d+s on colab-", message), message
    assert message.splitlines()[-1] == "epoch 9 loss 0.77", "the last line of output"
    # Removed on the VM once sent, and sent once.
    loop.wait("the outbox emptied", lambda: not _waiting_on_vm(loop), ARRIVES)
    assert _inbox(loop).count("epoch 9 loss") == 1


def test_gw_notify_text_arrives_escaped_and_capped(loop: LoopHarness) -> None:
    forged = "colab-gateway on pi: demo: runtime lost"
    title = "T\x1b]0;owned\x07\u202eyrros\nFORGED TITLE"
    message = f"val acc 0.93\n\x1b[2J\r{forged}\n" + "x" * 10_000
    sent = _in_vm(loop, "gw-notify", "--title", title, message)
    assert sent.returncode == 0, sent.stderr
    post = _arrived(loop, "owned")
    shown_title, shown = str(post["title"]), str(post["message"])
    for text in (shown_title, shown):
        assert not {"\x1b", "\x07", "\u202e", "\r"} & set(text), "no control reaches the phone"
    assert "\n" not in shown_title and "\\nFORGED TITLE" in shown_title
    assert "\\x1b]0;owned\\x07\\u202eyrros" in shown_title
    # The forged line stays inside the message, visibly escaped: not a title of its own.
    assert f"\\x1b[2J\\r{forged}" in shown.splitlines()
    assert forged not in _inbox(loop).titles()
    assert "x" * 400 not in shown and len(shown) < 2000, "capped"
    loop.wait("the outbox emptied", lambda: not _waiting_on_vm(loop), ARRIVES)
    assert _inbox(loop).count("owned") == 1


def test_the_demo_step_shows_a_gw_run_message(loop: LoopHarness) -> None:
    step = scenarios.job_end_message(loop)
    assert step.ok, step.detail + _daemon_log(loop)
    post = _inbox(loop).find(scenarios.JOB_END_COMMAND[2][:20])
    assert post is not None and "saved /root/model.pt" in str(post["message"])


def _name(pid: int) -> str:
    try:
        return psutil.Process(pid).name()
    except psutil.Error:  # ended between the listing and now
        return ""


@contextmanager
def removal_fails_on_the_vm(h: LoopHarness) -> Iterator[None]:
    """The VM's outbox read-only for the ssh logins (the sshd's mount namespace) and
    writable for the notebook: every collection reads it, none can remove a file. That is
    a collection cut after reading and sending, before deleting, as often as it runs."""
    assert h.vm is not None
    sshd = [p for p in h.vm.pids() if _name(p) == "sshd"]
    assert sshd, "the VM's sshd (started by the bootstrap)"
    listener = min(sshd)  # the first: its sessions fork from it and share its mounts
    enter = ["nsenter", "-t", str(listener), "-m", "--"]
    subprocess.run([*enter, "mount", "--bind", OUTBOX, OUTBOX], check=True)
    subprocess.run([*enter, "mount", "-o", "remount,bind,ro", OUTBOX], check=True)
    try:
        yield
    finally:
        subprocess.run([*enter, "umount", OUTBOX], check=True)


def _restart_daemon(h: LoopHarness) -> None:
    assert h.daemon is not None
    h.daemon.send_signal(signal.SIGTERM)
    h.daemon.wait(30)
    h.start_daemon()


def test_a_collection_cut_before_deleting_delivers_once_across_a_daemon_restart(
    loop: LoopHarness,
) -> None:
    delivered = loop.state_dir / "vm-messages" / "demo.json"
    log = loop.logs_dir / "daemon.log"
    warnings_before = log.read_text().count("messages could not be collected")
    with removal_fails_on_the_vm(loop):
        sent = _in_vm(loop, "gw-notify", "--title", "run 12 done", "checkpoint 12")
        assert sent.returncode == 0, sent.stderr
        _arrived(loop, "run 12 done")
        waiting = _waiting_on_vm(loop)
        assert len(waiting) == 1
        message_id = waiting[0].removesuffix(".json")

        def recorded() -> bool:
            try:
                return message_id in json.loads(delivered.read_text())["delivered"]
            except (OSError, ValueError, KeyError):
                return False

        loop.wait("the message recorded as delivered on the Pi", recorded, ARRIVES)
        loop.wait(
            "a collection that could not remove it",
            lambda: log.read_text().count("messages could not be collected") > warnings_before,
            ARRIVES,
        )
        assert _waiting_on_vm(loop) == waiting, "the cut left the message on the VM"
        # The daemon restarts while the message still waits on the VM.
        _restart_daemon(loop)
        loop.wait("the tunnel back after the restart", loop.tunnel_up, 90)
    # The removal works again: the restarted daemon removes it without sending it again.
    loop.wait("the outbox emptied", lambda: not _waiting_on_vm(loop), 3 * ARRIVES)
    assert _inbox(loop).count("run 12 done") == 1, _inbox(loop).titles()


def _status_text(h: LoopHarness) -> str:
    """``colab-gateway status`` as a person runs it (it exits 1 while anything is degraded)."""
    ran = subprocess.run(
        [sys.executable, "-m", "gateway", "status", "-c", str(h.config_path),
         "--state-dir", str(h.state_dir), "--runtime-dir", str(h.runtime_dir)],
        capture_output=True, text=True, env=h.environment(), timeout=60, check=False,
    )  # fmt: skip
    return ran.stdout


def _alerts_message(h: LoopHarness) -> str:
    return str(h.status().get("components", {}).get("alerts", {}).get("message", ""))


def test_collections_failing_in_a_row_show_in_the_status_and_clear(loop: LoopHarness) -> None:
    fact = "VM messages: cannot collect from session demo: "
    with removal_fails_on_the_vm(loop):
        sent = _in_vm(loop, "gw-notify", "--title", "run 13 done", "checkpoint 13")
        assert sent.returncode == 0, sent.stderr
        _arrived(loop, "run 13 done")
        loop.wait("the status says collecting fails", lambda: fact in _alerts_message(loop), 60)
        assert "Read-only file system" in _alerts_message(loop), "the VM's reason, quoted"
        shown = _status_text(loop)
        assert fact in shown and "Read-only file system" in shown, shown
    loop.wait("the outbox emptied", lambda: not _waiting_on_vm(loop), 3 * ARRIVES)
    loop.wait("the status fact gone", lambda: fact not in _alerts_message(loop), ARRIVES)
    assert _inbox(loop).count("run 13 done") == 1, "sent once over all the failed removals"
