"""gw-notify and gw-run on a simulated Colab VM reach a phone, each message exactly once.

The VM is the real bootstrap (tests/helpers/tunnel.py: a real sshd, the reverse tunnel to
a real endpoint), which installs gw-notify and gw-run; the Pi collects the outbox with the
real OpenSSH client as the daemon does (``gateway.vm_ssh``: the pinned host key, no ssh
config) and sends through apprise's json:// plugin to a local receiver.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import free_port
from helpers.alerts import Inbox
from helpers.tunnel import ColabVM, make_config, make_vm, running_endpoint, ssh_keygen

from gateway.alerts.sender import Sender
from gateway.alerts.vm_outbox import Collector, SSHFailed, alert_for, parse_listing
from gateway.config import Config
from gateway.paths import Paths
from gateway.vm_ssh import VM_LOGIN, kept_connection, over_kept_connection, ssh_options
from gateway.vm_stats.sampler import VmSampler


@dataclass
class Link:
    vm: ColabVM
    inbox: Inbox
    sender: Sender
    new_collector: Callable[[], Collector]  # as a restarted daemon would make it
    ssh_options: list[str]
    paths: Paths

    @property
    def outbox(self) -> Path:
        return self.vm.dir / "outbox"

    def on_vm(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, env=self.vm.env, capture_output=True, text=True, timeout=60, check=False
        )

    def tool(self, name: str) -> str:
        return self.vm.env["GW_BIN"] + "/" + name


@pytest.fixture
def link(tmp_path: Path) -> Iterator[Link]:
    config: Config = make_config(tmp_path)
    state = tmp_path / "state"
    pi_key = ssh_keygen(tmp_path / "pi" / "id_ed25519")
    inbox = Inbox()
    with running_endpoint(config, state) as running:
        vm = make_vm(tmp_path, running, config, pi_key=pi_key)
        try:
            done = vm.run_bootstrap()
            assert done.returncode == 0, done.stderr
            assert "gw-notify and gw-run installed" in done.stdout
            running.wait_for(lambda f: bool(f["up"]))
            paths = Paths(config=tmp_path / "config.yaml", state_dir=state, runtime_dir=tmp_path)
            ssh = ["ssh", *ssh_options(config, "colab", paths), VM_LOGIN]
            sender = Sender([inbox.url])
            sender.start()

            def new_collector() -> Collector:
                return Collector(
                    "colab",
                    ssh,
                    state / "vm-messages" / "colab.json",
                    host="pi",
                    outbox=str(vm.dir / "outbox"),
                )

            yield Link(vm, inbox, sender, new_collector, ssh[1:-1], paths)
            sender.stop()
        finally:
            vm.stop()
            inbox.close()


def wait_until(what: str, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.05)


def collect(link: Link, collector: Collector) -> int:
    return asyncio.run(collector.collect(link.sender.put, link.sender.has_left))


def test_gw_run_exit_3_reaches_the_receiver_with_exit_3_and_leaves_the_vm(link: Link) -> None:
    run = link.on_vm(link.tool("gw-run"), "--", "sh", "-c", "echo epoch 7 loss 0.31; exit 3")
    assert run.returncode == 3, "gw-run exits with the command's status"
    assert "epoch 7 loss 0.31" in run.stdout, "the output still shows as usual"
    assert len(list(link.outbox.glob("*.json"))) == 1
    collector = link.new_collector()
    collect(link, collector)
    post = link.inbox.wait_for("colab-gateway on pi: colab: sh -c")
    assert "failed" in post["title"]
    assert "exit 3 after" in post["message"]
    assert "epoch 7 loss 0.31" in post["message"], "the last lines of output"
    # The next collection sees it sent: recorded, then removed on the VM.
    wait_until("sent", lambda: link.sender.idle())
    assert collect(link, collector) == 1
    assert list(link.outbox.glob("*.json")) == []
    assert collect(link, collector) == 0
    assert link.inbox.count("sh -c") == 1


def test_a_collection_cut_after_sending_and_before_removing_delivers_once(link: Link) -> None:
    done = link.on_vm(link.tool("gw-notify"), "--title", "run 12 done", "val acc 0.93")
    assert done.returncode == 0, done.stderr
    first = link.new_collector()
    # Read, handed over, sent and recorded: then the daemon dies before removing the file.
    messages = asyncio.run(first.read())
    first.hand_over(messages, link.sender.put)
    link.inbox.wait_for("run 12 done")
    wait_until("sent", lambda: link.sender.idle())
    assert [m.id for m in messages] == first.settle(link.sender.has_left)
    assert len(list(link.outbox.glob("*.json"))) == 1, "the cut left the file on the VM"
    # The next run of the daemon: a new collector that knows only the state directory.
    again = link.new_collector()
    assert collect(link, again) == 1, "removed on the VM"
    assert list(link.outbox.glob("*.json")) == []
    assert link.sender.idle()
    assert link.inbox.count("run 12 done") == 1


def test_a_collection_cut_before_sending_delivers_on_the_next_one(link: Link) -> None:
    done = link.on_vm(link.tool("gw-notify"), "checkpoint saved")
    assert done.returncode == 0, done.stderr
    first = link.new_collector()
    assert len(asyncio.run(first.read())) == 1  # read, then the tunnel drops: nothing sent
    again = link.new_collector()
    collect(link, again)
    link.inbox.wait_for("checkpoint saved")
    wait_until("sent", lambda: link.sender.idle())
    collect(link, again)
    assert list(link.outbox.glob("*.json")) == []
    assert link.inbox.count("checkpoint saved") == 1


def test_a_collection_goes_over_the_vm_facts_kept_connection_when_it_is_up(
    link: Link,
) -> None:
    """No login per collection while the VM facts keep their connection (gateway/vm_stats'
    ControlMaster on vm_ssh.kept_connection): with the VM's port closed to new logins (the
    options name a port nothing listens on), a collection still reads, sends and removes
    over the kept connection; without it the same collection cannot log in."""
    done = link.on_vm(link.tool("gw-notify"), "--title", "epoch 40", "kept connection")
    assert done.returncode == 0, done.stderr
    options = list(link.ssh_options)
    options[options.index("-p") + 1] = str(free_port())  # new logins go nowhere
    argv = ["ssh", *options, *over_kept_connection(link.paths.runtime_dir, "colab"), VM_LOGIN]
    collector = Collector(
        "colab",
        argv,
        link.paths.state_dir / "vm-messages" / "colab.json",
        host="pi",
        outbox=str(link.outbox),
    )
    with pytest.raises(SSHFailed):
        collect(link, collector)  # no kept connection yet: a login of its own, refused
    socket = kept_connection(link.paths.runtime_dir, "colab")
    assert socket is not None
    sampler = VmSampler(link.ssh_options, socket)  # the VM facts' master, on the real port

    async def over_the_master() -> int:
        await sampler.ensure_master()
        try:
            first = await collector.collect(link.sender.put, link.sender.has_left)
            link.inbox.wait_for("epoch 40")
            await asyncio.to_thread(wait_until, "sent", link.sender.idle)
            return first + await collector.collect(link.sender.put, link.sender.has_left)
        finally:
            await sampler.close()

    assert asyncio.run(over_the_master()) == 1, "read, sent, then removed on the VM"
    assert sampler.logins == 1
    assert list(link.outbox.glob("*.json")) == []
    assert link.inbox.count("epoch 40") == 1


def test_hostile_outbox_lines_are_escaped_bounded_or_refused() -> None:
    evil = {"title": "\x1b[2J\u202eowned\n", "message": "a\x07b\n" + "x" * 10_000}
    listing = "\n".join(
        [
            "../../etc/passwd.json " + base64.b64encode(b"{}").decode(),
            "1-deadbeef.json " + base64.b64encode(json.dumps(evil).encode()).decode(),
            "2-deadbeef.json not-base64!",
        ]
    )
    messages, bad = parse_listing(listing)
    assert bad == 1, "a name gw-notify never writes is refused"
    assert [m.id for m in messages] == ["1-deadbeef", "2-deadbeef"]
    alert = alert_for(messages[0], "colab", "pi")
    assert "\x1b" not in alert.title and "\u202e" not in alert.title
    assert "\x07" not in alert.body and len(alert.body) < 1000
    assert "unreadable" in alert_for(messages[1], "colab", "pi").body


def test_a_collection_that_breaks_unexpectedly_crashes_the_component_for_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error nobody planned for (a bug, not a failing ssh) must not leave the alerts
    component running without collecting anything, silently: it ends the component, which
    the daemon restarts with backoff (gateway/supervisor.py)."""
    from gateway.alerts import vm_outbox
    from gateway.alerts.component import AlertsComponent
    from gateway.component import Context
    from gateway.config import Duration, NotifyConfig, Secret, SessionConfig
    from gateway.state import State

    async def broken(self: Collector, *args: object) -> int:
        raise ValueError("a bug in the collection")

    monkeypatch.setattr(vm_outbox.Collector, "collect", broken)
    config = Config(
        sessions=[SessionConfig(name="colab", notebook_url="https://colab.example/drive/1")],
        notify=NotifyConfig(
            urls=[Secret("json://127.0.0.1:9/none")], vm_messages_every=Duration(5)
        ),
    )
    paths = Paths(config=tmp_path / "config.yaml", state_dir=tmp_path, runtime_dir=tmp_path)

    async def run() -> None:
        state = State()
        state.attach(asyncio.get_running_loop())
        state.update_tunnel("colab", up=True)
        await asyncio.wait_for(AlertsComponent().run(Context("alerts", config, paths, state)), 60)

    with pytest.raises(ValueError, match="a bug in the collection"):
        asyncio.run(run())
