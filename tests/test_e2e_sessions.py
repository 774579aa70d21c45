"""End to end with four notebooks (issue 26): the real daemon, four simulated Colab pages
(one page server each), four VMs and four tmux windows. Faults hit two of the sessions (the
second's tunnel is killed, the third's VM is reset); both come back, each in its own window
and its own VM, and the two others are not disturbed: their VMs stay the same and their
windows stay logged in. Observed from outside: the status socket, the tmux panes' screens."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from gateway.sim import scenarios
from gateway.sim.harness import LoopHarness, missing_parts

pytestmark = [
    pytest.mark.slow,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]


def _runtime(h: LoopHarness, session: str) -> str:
    return str(h.session_facts(session).get("runtime", {}).get("state", ""))


def _tunnel_up_since(h: LoopHarness, session: str, wall: float) -> bool:
    tunnel = h.session_facts(session).get("tunnel", {})
    return bool(tunnel.get("up")) and float(tunnel.get("since") or 0.0) > wall


def test_four_sessions_recover_from_faults_in_two_and_the_others_stay(tmp_path: Path) -> None:
    missing = missing_parts()
    if missing:
        pytest.skip("parts of the loop are not here yet: " + "; ".join(missing))
    lines: list[str] = []
    with LoopHarness(tmp_path, log=lines.append, more_sessions=3) as h:
        try:
            up = scenarios.bring_up(h)
            assert up.ok, up.detail
            assert h.vm is not None
            for notebook in h.more:
                vm = notebook.vm
                assert vm is not None
                h.wait(f"{notebook.name} connected", lambda n=notebook: _runtime(h, n.name)
                       == "connected", 60)  # fmt: skip
                h.wait(
                    f"{notebook.name}'s window in its VM",
                    lambda n=notebook: (
                        n.vm is not None and n.vm.vm_id and h.pane_logins(n.vm.hostname, n.pane) > 0
                    ),
                    60,
                )
            second, third, fourth = h.more
            assert second.vm is not None and third.vm is not None and fourth.vm is not None
            vms_before = {"first": h.vm.vm_id, "fourth": fourth.vm.vm_id}
            logins_before = {
                "first": h.pane_logins(h.vm.hostname),
                "fourth": h.pane_logins(fourth.vm.hostname, fourth.pane),
            }
            # The faults: the second's tunnel dies, the third's VM is replaced.
            wall = time.time()
            second_logins = h.pane_logins(second.vm.hostname, second.pane)
            killed = second.vm.kill_tunnel()
            assert killed, "the second VM had no tunnel to kill"
            old_third = third.vm.hostname
            third.sim.reset_vm()
            h.wait("the second's tunnel back", lambda: _tunnel_up_since(h, "second", wall), 60)
            h.wait(
                "the second's window logged in again",
                lambda: h.pane_logins(second.vm.hostname, second.pane) > second_logins,  # type: ignore[union-attr]
                60,
            )
            h.wait(
                "the third in a new VM",
                lambda: third.vm is not None and third.vm.hostname != old_third,
                60,
            )
            h.wait(
                "the third's window logged into its new VM",
                lambda: h.pane_logins(third.vm.hostname, third.pane) > 0,  # type: ignore[union-attr]
                90,
            )
            # The others were not disturbed.
            assert {"first": h.vm.vm_id, "fourth": fourth.vm.vm_id} == vms_before
            for name, pane, host in (
                ("first", "", h.vm.hostname),
                ("fourth", fourth.pane, fourth.vm.hostname),
            ):
                assert h.pane_logins(host, pane) == logins_before[name], f"{name} logged in again"
                assert _runtime(h, "demo" if name == "first" else name) == "connected"
            assert not h.hook_errors, h.hook_errors
        except BaseException:
            log = h.logs_dir / "daemon.log"
            tail = log.read_text()[-4000:] if log.exists() else ""
            print("\n".join(lines) + "\n--- daemon.log (tail)\n" + tail)
            raise
