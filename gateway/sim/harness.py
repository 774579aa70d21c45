"""The whole loop on one machine: the real daemon against a simulated Colab.

``LoopHarness`` is what ``colab-gateway demo``, the end-to-end tests and the recovery
benchmark share. It builds two hosts with ``gateway.sim.vm`` ("the Pi" and "the Colab VM",
each a network namespace), serves the simulated notebook page (``gateway.sim.colab``) on
the Pi's loopback, and starts the real daemon (``colab-gateway run``) in the Pi's namespace
with a temporary config, state and runtime directory and its own tmux server
(``TMUX_TMPDIR``). The page's "run cell" runs the generated bootstrap on the VM, which dials
the daemon's endpoint through the veth with ``ssh -R``; the daemon's tmux pane logs into
the VM through that tunnel.

Everything observed here is observed from outside, as a person would: the status socket,
the page's own event log, the tmux pane's screen, the pinned known_hosts file.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from gateway.sim import netns
from gateway.sim.inbox import Inbox
from gateway.sim.polling import free_port
from gateway.sim.vm import SimNetwork, SimVM

SESSION = "demo"
# More notebooks (issue 26): the demo's second, the end-to-end test's second to fourth.
MORE_SESSIONS = ("second", "third", "fourth")
# Their VMs share the VM's network namespace with the first: each sshd takes a port of its
# own (the session's forwards.ssh.colab, which the bootstrap's sshd listens on).
FIRST_MORE_SSHD_PORT = 2222
TMUX_SESSION = "colab"
RERUN_AFTER = 10  # seconds; config.py's minimum for browser.rerun_after
VM_MESSAGES_EVERY = 5  # seconds; config.py's minimum for notify.vm_messages_every
POLL = 0.05

# The parts of the product the loop needs, and where each comes from.
REQUIRED_MODULES = {
    "gateway.sim.colab": "the simulated Colab page (gateway/sim/colab.py, issue 5)",
    "gateway.tunnel.bootstrap": "the bootstrap renderer (gateway/tunnel/bootstrap.py, issue 3)",
}
REQUIRED_COMPONENTS = {
    "tunnel": "the SSH endpoint (issue 3)",
    "browser": "the browser keep-alive (issue 5)",
    "tmux": "the tmux keeper (issue 4)",
}


class HarnessError(RuntimeError):
    """The loop could not be set up or did not reach a state in time; says what and why."""


def missing_parts() -> list[str]:
    """What of the product is not here yet, each named with where it should come from."""
    missing = []
    for module, what in REQUIRED_MODULES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(f"{what}: module {module} not found")
    from gateway.registry import all_specs

    names = {spec.name for spec in all_specs()}
    missing += [
        f"{what}: component {name!r} is not registered in gateway/registry.py"
        for name, what in REQUIRED_COMPONENTS.items()
        if name not in names
    ]
    for program in ("chromium", "chromedriver", "tmux", "ssh", "ssh-keygen", "ip"):
        if shutil.which(program) is None:
            missing.append(f"program {program!r} is not installed (make system-deps)")
    return missing


@dataclass
class PaneLogin:
    """A shell prompt of the VM seen in the tmux pane."""

    vm_hostname: str
    count: int  # prompt lines of that VM in the pane's history so far


# GW_INSTALL=0: sshd is installed on this machine, nothing to apt-get.
SIM_CELL_ENV = {"GW_INSTALL": "0"}


class LoopHarness:
    def __init__(
        self,
        workdir: Path,
        *,
        log: Callable[[str], None] | None = None,
        sync: str = "",
        top: str | Callable[[], str] = "",
        more_sessions: int = 0,
        inbox: bool = False,
        notify: str = "",
    ) -> None:
        """``sync``: the session's ``sync:`` block (YAML, one mapping line, e.g.
        ``{paths: [/root/work]}``); ``top``: more top-level YAML for the config (a callable
        is called on the Pi when the config is written: a test's receiver binds there);
        ``more_sessions``: that many more notebooks (each its own page and VM) in the same
        daemon, named after ``MORE_SESSIONS``; ``inbox``: the daemon's notifications go to
        ``self.inbox`` (a json:// receiver on the Pi), with ``notify`` more keys of its
        ``notify:`` block (YAML, ``key: value, ...``)."""
        self.workdir = Path(workdir)
        self.sync_yaml = sync
        self.top_yaml = top
        self.log = log or (lambda text: None)
        self.wants_inbox = inbox
        self.notify_yaml = notify
        self.inbox: Inbox | None = None
        self.network = SimNetwork()
        self.vm: SimVM | None = None
        self.sim: Any = None  # gateway.sim.colab.SimColab, imported late (it may be missing)
        self.daemon: subprocess.Popen[bytes] | None = None
        self._in_pi: Any = None
        self.config_path = self.workdir / "config.yaml"
        self.state_dir = self.workdir / "state"
        self.runtime_dir = self.workdir / "run"
        self.tmux_dir = self.workdir / "tmux"
        self.logs_dir = self.workdir / "logs"
        self.identity = self.workdir / "pi-ssh" / "id_ed25519"
        self.tunnel_port = 0
        self.ssh_port = 0
        self.metrics_port = 0
        self.hook_errors: list[str] = []
        self.cell = ""
        self.secrets: dict[str, str] = {}
        if not 0 <= more_sessions <= len(MORE_SESSIONS):
            raise HarnessError(f"more_sessions: 0 to {len(MORE_SESSIONS)}, not {more_sessions}")
        self.more = [
            MoreNotebook(self, name, FIRST_MORE_SSHD_PORT + i)
            for i, name in enumerate(MORE_SESSIONS[:more_sessions])
        ]

    # -- setup -----------------------------------------------------------------------------------

    def start(self) -> LoopHarness:
        netns.require_root("the demo and the end-to-end tests")
        missing = missing_parts()
        if missing:
            raise HarnessError("the loop cannot run; missing:\n  - " + "\n  - ".join(missing))
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        from gateway.sim.colab import SimColab

        for directory in (self.state_dir, self.runtime_dir, self.tmux_dir, self.logs_dir):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.network.create()
        self.log(
            f"hosts: Pi = netns {self.network.pi_ns} ({self.network.pi_address}), "
            f"Colab VM = netns {self.network.vm_ns} ({self.network.vm_address})"
        )
        # From here on this thread, and every thread and process it starts, is on the Pi.
        self._in_pi = self.network.entered_pi()
        self._in_pi.__enter__()
        if self.wants_inbox:
            self.inbox = Inbox()
            self.log(f"notifications: to the inbox {self.inbox.url} (on the Pi's loopback)")
        # No sshd of the harness's own: the bootstrap cell starts it, as on a real Colab VM.
        self.vm = SimVM(self.network, self.workdir / "colab-vm", sshd=False)
        self.sim = SimColab(connect_delay=0.5).start()
        self.page_vm = PageDrivesVM(self, "", self.log, self.hook_errors).attach()
        self.log(f"simulated Colab page: {self.sim.url}")
        for notebook in self.more:
            notebook.start()
        self.identity.parent.mkdir(mode=0o700, exist_ok=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pi@demo",
             "-f", str(self.identity)],
            check=True,
        )  # fmt: skip
        self.tunnel_port = free_port(self.network.pi_address)
        self.ssh_port = free_port("127.0.0.1")
        self.metrics_port = free_port("127.0.0.1")
        self.config_path.write_text(self.config_text())
        self.log(
            f"metrics: {self.metrics_url} (on the Pi's loopback, inside its namespace) "
            f"and the textfile {self.metrics_textfile}"
        )
        self.prepare_notebook()
        self.start_daemon()

    def config_text(self) -> str:
        second = "".join(notebook.config_text() for notebook in self.more)
        top = self.top_yaml() if callable(self.top_yaml) else self.top_yaml
        return f"""\
# Written by the colab-gateway demo harness: the real daemon against a simulated Colab.
sessions:
  - name: {SESSION}
    notebook_url: {self.sim.url}
    forwards:
      ssh: {{colab: 22, local: {self.ssh_port}}}
{f"    sync: {self.sync_yaml}" if self.sync_yaml else ""}
{second}
tunnel:
  listen: {self.network.pi_address}:{self.tunnel_port}
  public_host: {self.network.pi_address}
browser:
  profile_dir: {self.workdir / "chromium-profile"}
  headless: true
  rerun: bootstrap
  rerun_after: {RERUN_AFTER}s
  max_reruns_per_hour: 60
  poll_every: 1s
ddns:
  provider: none
tmux:
  session: {TMUX_SESSION}
ssh:
  identity: {self.identity}
  server_alive_interval: 2s
daemon:
  log_level: debug
metrics:
  listen: 127.0.0.1:{self.metrics_port}
  textfile: {self.metrics_textfile}
  textfile_every: 5s
{self.notify_block()}
{top}
"""

    def notify_block(self) -> str:
        if self.inbox is None:
            return ""
        more = f", {self.notify_yaml}" if self.notify_yaml else ""
        return (
            f"notify: {{urls: ['{self.inbox.url}'], vm_messages_every: {VM_MESSAGES_EVERY}s{more}}}"
        )

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def metrics_textfile(self) -> Path:
        return self.workdir.resolve() / "metrics.prom"

    def scrape(self) -> str:
        """The daemon's /metrics, read from the Pi's namespace (this thread is in it)."""
        import urllib.request

        with urllib.request.urlopen(self.metrics_url, timeout=5) as answer:  # noqa: S310
            return str(answer.read().decode())

    def cli(self, *args: str, any_status: bool = False) -> str:
        """Run ``colab-gateway ARGS`` against the harness's config and state; its stdout
        (whatever its exit status with ``any_status``: `status` exits 1 while anything is
        degraded)."""
        result = subprocess.run(
            [sys.executable, "-m", "gateway", args[0], "-c", str(self.config_path),
             "--state-dir", str(self.state_dir), "--runtime-dir", str(self.runtime_dir),
             *args[1:]],
            capture_output=True, text=True, env=self.environment(), timeout=60, check=False,
        )  # fmt: skip
        if result.returncode != 0 and not any_status:
            raise HarnessError(
                f"`colab-gateway {' '.join(args)}` failed ({result.returncode}): "
                f"{result.stderr.strip()}"
            )
        return result.stdout

    def prepare_notebook(self) -> None:
        """What the user does once: put the bootstrap cell in the notebook, the key in its
        secrets, with the product's own commands."""
        self.cell = self.cli("snippet", SESSION)
        secret = re.search(r"^SECRET = '([^']+)'$", self.cell, re.MULTILINE)
        if secret is None:
            raise HarnessError("`colab-gateway snippet` printed no SECRET = '...' line")
        self.secrets = {secret.group(1): self.cli("keys", "--private", SESSION)}
        (self.workdir / "notebook-cell.py").write_text(self.cell)
        self.log(
            f"notebook: bootstrap cell from `colab-gateway snippet` ({len(self.cell)} bytes), "
            f"secret {secret.group(1)!r} from `colab-gateway keys --private`"
        )
        for notebook in self.more:
            notebook.prepare()

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "WATCHDOG_"))}
        env.pop("TMUX", None)
        env.pop("TMUX_PANE", None)
        env["TMUX_TMPDIR"] = str(self.tmux_dir)
        # The tmux pane runs `colab-gateway shell`: make this very installation the one found.
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
        return env

    def start_daemon(self) -> None:
        log_path = self.logs_dir / "daemon.log"
        with log_path.open("ab") as log:
            self.daemon = subprocess.Popen(
                [
                    sys.executable, "-m", "gateway", "run",
                    "-c", str(self.config_path),
                    "--state-dir", str(self.state_dir),
                    "--runtime-dir", str(self.runtime_dir),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment(),
            )  # fmt: skip
        self.log(f"daemon started: pid {self.daemon.pid}, log {log_path}")

    # -- teardown --------------------------------------------------------------------------------

    def stop(self) -> None:
        # What the pane showed, for whoever reads the logs after a failure.
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            if self.logs_dir.is_dir():
                (self.logs_dir / "pane.txt").write_text(self.pane_text())
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(15)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait(5)
        self.tmux("kill-server", check=False)
        # What the daemon left behind on the Pi (Chromium, tmux, ssh), all started by us.
        for pid in self.network.pi_pids() if self.network.pi_ns else []:
            if pid != os.getpid():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self.sim is not None:
            self.sim.stop()
        if self.inbox is not None:
            self.inbox.close()  # what it received stays readable
        for notebook in self.more:
            notebook.stop()
        if self.vm is not None:
            self.vm.stop()
        if self._in_pi is not None:
            self._in_pi.__exit__(None, None, None)
            self._in_pi = None
        self.network.destroy()

    @property
    def second(self) -> MoreNotebook | None:
        return self.more[0] if self.more else None

    def __enter__(self) -> LoopHarness:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def run_bootstrap(self, kind: str) -> None:
        """What the page's run of the first cell does: the bootstrap, in the VM."""
        self.page_vm.run_bootstrap(kind)

    # -- observing -------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        from gateway.status_server import query

        try:
            return dict(query(self.runtime_dir / "status.sock", timeout=2.0))
        except (OSError, ValueError):
            return {}

    def session_facts(self, session: str = SESSION) -> dict[str, Any]:
        sessions = self.status().get("sessions") or {}
        facts = sessions.get(session) if isinstance(sessions, dict) else None
        return facts if isinstance(facts, dict) else {}

    def tunnel_up(self) -> bool:
        return bool(self.session_facts().get("tunnel", {}).get("up"))

    def tunnel_up_since(self, wall: float, fingerprint: str | None = None) -> bool:
        """The tunnel came up after ``wall`` (time.time()), from a VM with ``fingerprint``."""
        tunnel = self.session_facts().get("tunnel", {})
        if not tunnel.get("up") or float(tunnel.get("since") or 0.0) <= wall:
            return False
        return fingerprint is None or tunnel.get("hostkey_fingerprint") == fingerprint

    def runtime_state(self) -> str:
        return str(self.session_facts().get("runtime", {}).get("state", "unknown"))

    def last_rerun(self) -> float | None:
        value = self.session_facts().get("runtime", {}).get("last_rerun")
        return float(value) if value is not None else None

    def tmux(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["tmux", *args],
            capture_output=True,
            text=True,
            env=self.environment(),
            timeout=10,
            check=False,
        )
        if check and result.returncode != 0:
            raise HarnessError(f"tmux {' '.join(args)}: {result.stderr.strip()}")
        return result

    @property
    def session(self) -> str:
        return SESSION

    @property
    def pane(self) -> str:
        return f"{TMUX_SESSION}:{SESSION}"

    def pane_text(self, pane: str = "") -> str:
        """The pane's whole history and screen, as tmux shows it (default: the first
        session's)."""
        target = pane or self.pane
        result = self.tmux("capture-pane", "-p", "-J", "-S", "-", "-t", target, check=False)
        return result.stdout if result.returncode == 0 else ""

    def pane_logins(self, hostname: str, pane: str = "") -> int:
        """How many shell prompts of VM ``hostname`` the pane has shown."""
        prompt = re.compile(rf"^root@{re.escape(hostname)}:\S*[#$]", re.MULTILINE)
        return len(prompt.findall(self.pane_text(pane)))

    def pane_run(self, command: str, timeout: float = 10.0) -> str:
        """Type ``command`` into the pane and return the line it printed (marked)."""
        marker = f"out-{time.monotonic_ns() % 10**8}"
        self.tmux("send-keys", "-t", self.pane, f"echo {marker}: $({command})", "Enter")
        pattern = re.compile(rf"^{marker}: (.*)$", re.MULTILINE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = pattern.search(self.pane_text())
            if found:
                return found.group(1).strip()
            time.sleep(POLL)
        raise HarnessError(f"the pane did not answer {command!r} within {timeout:.0f}s")

    def pinned_key(self) -> str:
        """What the Pi's known_hosts pins for the session's ssh port (``type base64``)."""
        try:
            lines = (self.state_dir / "known_hosts").read_text().splitlines()
        except FileNotFoundError:
            return ""
        for line in lines:
            fields = line.split()
            if len(fields) >= 3 and f"[localhost]:{self.ssh_port}" in fields[0].split(","):
                return f"{fields[1]} {fields[2]}"
        return ""

    def wait(self, what: str, predicate: Callable[[], Any], timeout: float) -> float:
        """Poll ``predicate`` until truthy; return the seconds it took, or raise."""
        start = time.monotonic()
        deadline = start + timeout
        while True:
            if self.daemon is not None and self.daemon.poll() is not None:
                raise HarnessError(
                    f"the daemon exited with status {self.daemon.returncode} while waiting "
                    f"for {what}; see {self.logs_dir / 'daemon.log'}"
                )
            if predicate():
                return time.monotonic() - start
            if time.monotonic() > deadline:
                raise HarnessError(f"{what}: not within {timeout:.0f}s")
            time.sleep(POLL)

    # -- the processes the faults hit ------------------------------------------------------------

    def chromium_pids(self) -> list[int]:
        """The browser processes the daemon's chromedriver started (the top-level ones)."""
        pids = [p for p in self.network.pi_pids() if p != os.getpid()]
        drivers = {p for p in pids if _comm(p) == "chromedriver"}
        return [p for p in pids if _ppid(p) in drivers and _comm(p).startswith("chrom")]


class MoreNotebook:
    """Another notebook of the same user in the same daemon: its own simulated page (a
    second page server, as a second Colab tab) and its own VM; a second tmux window."""

    def __init__(self, harness: LoopHarness, name: str, sshd_port: int) -> None:
        self.harness = harness
        self.name = name
        self.sshd_port = sshd_port
        self.vm: SimVM | None = None
        self.sim: Any = None
        self.ssh_port = 0
        self.cell = ""
        self.secrets: dict[str, str] = {}

    @property
    def pane(self) -> str:
        return f"{TMUX_SESSION}:{self.name}"

    def start(self) -> None:
        from gateway.sim.colab import SimColab

        h = self.harness
        self.vm = SimVM(h.network, h.workdir / f"colab-vm-{self.name}", sshd=False)
        self.sim = SimColab(connect_delay=0.5).start()
        PageDrivesVM(self, f"{self.name}: ", h.log, h.hook_errors).attach()
        self.ssh_port = free_port("127.0.0.1")
        h.log(f"second notebook {self.name!r}: simulated Colab page {self.sim.url}")

    def config_text(self) -> str:
        return f"""\
  - name: {self.name}
    notebook_url: {self.sim.url}
    forwards:
      ssh: {{colab: {self.sshd_port}, local: {self.ssh_port}}}
"""

    def prepare(self) -> None:
        h = self.harness
        self.cell = h.cli("snippet", self.name)
        secret = re.search(r"^SECRET = '([^']+)'$", self.cell, re.MULTILINE)
        if secret is None:
            raise HarnessError(f"`colab-gateway snippet {self.name}` printed no SECRET line")
        self.secrets = {secret.group(1): h.cli("keys", "--private", self.name)}

    def stop(self) -> None:
        if self.sim is not None:
            self.sim.stop()
        if self.vm is not None:
            self.vm.stop()


class PageDrivesVM:
    """A notebook's simulated page driving its VM, as Colab does: a connect or a reset gives
    the notebook a VM (a new one when the page's VM id changed), a run of the first cell
    runs the bootstrap in it. ``notebook`` holds ``sim``, ``vm``, ``cell`` and ``secrets``
    (the harness's own notebook, or a MoreNotebook); what goes wrong lands in ``errors``."""

    def __init__(
        self, notebook: Any, label: str, log: Callable[[str], None], errors: list[str]
    ) -> None:
        self.notebook = notebook
        self.label = label  # "" for the harness's notebook, "NAME: " for the others
        self.log = log
        self.errors = errors
        self.lock = threading.Lock()
        self._page_vm_id: str | None = None

    def attach(self) -> PageDrivesVM:
        sim = self.notebook.sim
        sim.on_connect = self.ensure_vm
        sim.on_reset = lambda: self.ensure_vm(sim.vm_id)
        sim.on_run_cell = self.on_run_cell
        return self

    def ensure_vm(self, page_vm_id: str | None) -> None:
        vm: SimVM = self.notebook.vm
        with self.lock:
            if page_vm_id == self._page_vm_id and vm.vm_id:
                return
            self._page_vm_id = page_vm_id
            if vm.vm_id:
                vm.reset()
            else:
                vm.start()
            self.log(
                f"{self.label}Colab assigned VM {vm.hostname} (page's id {page_vm_id}), "
                f"host key {vm.host_key_fingerprint()}"
            )

    def on_run_cell(self, kind: str) -> None:
        if kind not in ("first", "all"):  # another cell ran: the bootstrap is the first
            problem = f"{self.label}the page ran a cell that is not the bootstrap ({kind})"
            self.errors.append(problem)
            self.log(f"ERROR {problem}")
            return
        try:
            self.run_bootstrap(kind)
        except Exception as exc:
            self.errors.append(f"{self.label}running the bootstrap cell failed: {exc}")
            self.log(f"ERROR {self.label}running the bootstrap on the VM: {exc}")

    def run_bootstrap(self, kind: str) -> None:
        vm: SimVM = self.notebook.vm
        with self.lock:
            if not vm.vm_id:
                vm.start()
            proc = vm.run_cell(self.notebook.cell, secrets=self.notebook.secrets, env=SIM_CELL_ENV)
            self.log(
                f"{self.label}page ran the {kind} cell: bootstrap pid {proc.pid} on {vm.hostname}"
            )


def _comm(pid: int) -> str:
    try:
        return psutil.Process(pid).name()
    except psutil.Error:
        return ""


def _ppid(pid: int) -> int:
    try:
        return psutil.Process(pid).ppid()
    except psutil.Error:
        return 0
