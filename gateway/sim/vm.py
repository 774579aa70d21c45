"""A simulated Colab VM: a separate host on this machine, with a real OpenSSH sshd.

``SimNetwork`` creates two network namespaces, "the Pi" and "the VM", joined by a veth pair
(``netns.PI_ADDRESS`` ↔ ``netns.VM_ADDRESS``). ``SimVM`` runs processes inside the VM's
namespace, each also in a private mount namespace where ``/root``, ``/etc/ssh``, ``/tmp``,
``/usr/local/bin`` and ``/run`` are the VM's own directories: the bootstrap can write
``/root/.ssh``, install into ``/usr/local/bin`` and start ``/usr/sbin/sshd`` exactly as on
Colab without touching this machine's files. The VM's sshd
listens on the VM's loopback only, so the Pi reaches it through the reverse tunnel or not
at all. ``reset()`` is Colab handing out a new VM: everything in it is killed, its
directories are wiped and it gets a new host key and a new id.

Everything is removed on ``stop()``/``__exit__``, at interpreter exit, and on SIGTERM/SIGHUP
once ``install_signal_guard()`` ran (the demo does). Needs root: namespaces and mounts.
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import IO, Any

import psutil

from gateway.sim import netns

NAME_PREFIX = "cgsim"
SSHD = "/usr/sbin/sshd"
# Inside the VM, /tmp is the VM's own directory (bound over it), not this machine's.
VM_TMP = "/tmp"  # noqa: S108
VM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Runs first in every VM process (inside `ip netns exec`, which already gives a mount
# namespace that does not propagate back): give it the VM's own directories, then exec.
# /tmp last: the VM's directories may live under this machine's /tmp.
_ENTER_VM = r"""
set -e
mount --make-rslave /
mount -t tmpfs -o mode=0755,size=16m vm-run /run
mkdir -m 0755 /run/sshd
mount --bind "$4" /usr/local/bin
mount --bind "$1" /root
mount --bind "$2" /etc/ssh
mount --bind "$3" /tmp
hostname "$5"
shift 5
cd /root
exec "$@"
"""

SSHD_CONFIG = """\
# The simulated Colab VM's sshd. It listens on the VM's own loopback: the Pi reaches it
# only through the reverse tunnel, as it reaches a real Colab VM.
ListenAddress 127.0.0.1:22
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
AuthenticationMethods publickey
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PidFile none
AuthorizedKeysFile .ssh/authorized_keys
PrintMotd no
PrintLastLog no
Subsystem sftp internal-sftp
"""
# Logins find the stand-in nvidia-smi first, as a Colab GPU VM's PATH finds the real one
# (the bootstrap's sshd takes it through GW_SSHD_EXTRA).
STANDIN_PATH = "SetEnv PATH=/root/.colab-sim/bin:/usr/local/bin:/usr/bin:/bin"

# What nvidia-smi --query-gpu=name,utilization.gpu,memory.used,memory.total
# --format=csv,noheader,nounits printed on a Colab T4 VM while it trained: the demo's VM
# (tests/vm_stats/fixtures has the A100's, the L4's and garbage too).
RECORDED_T4 = "Tesla T4, 87, 11468, 15360\n"

# A stand-in for nvidia-smi: prints what a test put in /root/.colab-sim/nvidia-smi.out
# (SimVM.set_nvidia_smi: a T4's, an A100's... recorded answer, or garbage); without that
# file it is missing, as on a CPU runtime.
NVIDIA_SMI_STANDIN = """\
#!/bin/sh
out=/root/.colab-sim/nvidia-smi.out
if [ ! -f "$out" ]; then echo "nvidia-smi: command not found" >&2; exit 127; fi
cat "$out"
"""

# A stand-in for Colab's `google.colab.userdata` module: the secrets a user stores in the
# notebook's "Secrets" panel, read here from a 0600 JSON file the harness writes.
_USERDATA_STUB = '''\
"""Simulated google.colab.userdata: the notebook's secrets (written by gateway.sim.vm)."""
import json
import os


class SecretNotFoundError(KeyError):
    pass


class NotebookAccessError(RuntimeError):
    pass


def get(key):
    with open(os.environ["SIM_COLAB_SECRETS"]) as f:
        secrets = json.load(f)
    if key not in secrets:
        raise SecretNotFoundError(key)
    return secrets[key]
'''


class VMError(RuntimeError):
    pass


_counter = itertools.count(1)
_live: set[SimNetwork] = set()
_live_lock = threading.Lock()


def _guard_exit() -> None:
    with _live_lock:
        networks = list(_live)
    for network in networks:
        network.destroy()


atexit.register(_guard_exit)


def install_signal_guard() -> None:
    """Turn SIGTERM and SIGHUP into SystemExit so every ``with`` block cleans up."""

    def _exit(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit)


def cleanup_stale() -> list[str]:
    """Delete namespaces left by a harness process that died without cleaning up."""
    removed: list[str] = []
    if not netns.NETNS_DIR.is_dir():
        return removed
    for entry in netns.NETNS_DIR.iterdir():
        parts = entry.name.split("-")
        if len(parts) < 3 or parts[0] != NAME_PREFIX or not parts[1].isdigit():
            continue
        owner = int(parts[1])
        if owner == os.getpid() or psutil.pid_exists(owner):
            continue
        netns.delete(entry.name)
        removed.append(entry.name)
    return removed


class SimNetwork:
    """The Pi's and one VM's network namespaces, joined by a veth pair."""

    def __init__(self) -> None:
        # The owner's pid in the name lets cleanup_stale() recognise orphans.
        tag = f"{NAME_PREFIX}-{os.getpid()}-{next(_counter)}"
        self.pi_ns = f"{tag}-pi"
        self.vm_ns = f"{tag}-vm"
        self.pi_address = netns.PI_ADDRESS
        self.vm_address = netns.VM_ADDRESS
        self._created = False

    def create(self) -> SimNetwork:
        netns.require_root("the simulated Colab VM")
        cleanup_stale()
        with _live_lock:
            _live.add(self)
        self._created = True
        try:
            netns.add(self.pi_ns)
            netns.add(self.vm_ns)
            netns.link(self.pi_ns, self.vm_ns)
        except BaseException:
            self.destroy()
            raise
        return self

    def destroy(self) -> None:
        if not self._created:
            return
        netns.delete(self.vm_ns)
        netns.delete(self.pi_ns)
        with _live_lock:
            _live.discard(self)
        self._created = False

    def entered_pi(self) -> Any:
        """Context manager: the calling thread, and what it starts, live on the Pi."""
        return netns.entered(self.pi_ns)

    def pi_pids(self) -> list[int]:
        return netns.pids(self.pi_ns)

    def __enter__(self) -> SimNetwork:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.destroy()


class SimVM:
    """The Colab VM: processes in ``network.vm_ns`` with their own /root, /etc/ssh, /tmp
    and /usr/local/bin."""

    def __init__(self, network: SimNetwork, workdir: Path, *, sshd: bool = True) -> None:
        self.network = network
        self.workdir = Path(workdir)
        self.run_sshd = sshd
        self.vm_id = ""
        self.generation = 0
        self._disk: Path | None = None
        self.nvidia_smi: str | None = None  # what the stand-in prints (set_nvidia_smi)
        self._procs: list[subprocess.Popen[bytes]] = []
        self._lock = threading.RLock()

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> SimVM:
        with self._lock:
            self._provision()
            if self.run_sshd:
                self.start_sshd()
        return self

    def reset(self) -> str:
        """Colab hands out a new VM: kill everything, wipe it, new host key, new id."""
        with self._lock:
            self.kill_all()
            self._provision()
            if self.run_sshd:
                self.start_sshd()
            return self.vm_id

    def stop(self) -> None:
        with self._lock:
            self.kill_all()

    def __enter__(self) -> SimVM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the VM's disk -------------------------------------------------------------------------

    @property
    def disk(self) -> Path:
        """The VM's own files: ``root`` (/root), ``etc-ssh`` (/etc/ssh), ``tmp`` (/tmp)."""
        if self._disk is None:
            raise VMError("the VM has not been started")
        return self._disk

    @property
    def root_home(self) -> Path:
        return self.disk / "root"

    @property
    def etc_ssh(self) -> Path:
        return self.disk / "etc-ssh"

    @property
    def tmp(self) -> Path:
        return self.disk / "tmp"

    @property
    def usr_local_bin(self) -> Path:
        return self.disk / "usr-local-bin"

    @property
    def logs_dir(self) -> Path:
        return self.workdir / "logs"

    @property
    def hostname(self) -> str:
        return f"colab-{self.vm_id}"

    @property
    def host_key_path(self) -> Path:
        return self.etc_ssh / "ssh_host_ed25519_key.pub"

    def host_key(self) -> str:
        """The sshd host public key, ``ssh-ed25519 AAAA…`` (without comment)."""
        algorithm, blob = self.host_key_path.read_text().split()[:2]
        return f"{algorithm} {blob}"

    def host_key_fingerprint(self) -> str:
        out = subprocess.run(
            ["ssh-keygen", "-l", "-E", "sha256", "-f", str(self.host_key_path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return out.split()[1]

    def _provision(self) -> None:
        # Build the new VM's disk beside the old one and switch at the end: whoever reads
        # vm_id, hostname or the host key sees the old VM or the new one, never a mix.
        generation = self.generation + 1
        vm_id = uuid.uuid4().hex[:12]
        disk = self.workdir / f"vm-{generation}"
        if disk.exists():
            shutil.rmtree(disk)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        (disk / "root").mkdir(parents=True, mode=0o700)
        (disk / "etc-ssh").mkdir(parents=True, mode=0o755)
        (disk / "tmp").mkdir(parents=True)
        (disk / "tmp").chmod(0o1777)
        # The VM's own /usr/local/bin, empty as on a fresh VM: what the bootstrap installs
        # there (gw-notify, gw-run) stays in this VM and goes with it on a reset.
        (disk / "usr-local-bin").mkdir(parents=True, mode=0o755)
        (disk / "etc-ssh" / "sshd_config").write_text(SSHD_CONFIG)
        # A fresh host key per VM, as a new Colab VM has: the Pi must pin the new one.
        subprocess.run(
            [
                "ssh-keygen", "-q", "-t", "ed25519", "-N", "",
                "-C", f"root@colab-{vm_id}",
                "-f", str(disk / "etc-ssh" / "ssh_host_ed25519_key"),
            ],
            check=True,
        )  # fmt: skip
        (disk / "root" / "vm-id").write_text(vm_id + "\n")
        standin = disk / "root" / ".colab-sim" / "bin" / "nvidia-smi"
        standin.parent.mkdir(parents=True)
        standin.write_text(NVIDIA_SMI_STANDIN)
        standin.chmod(0o755)
        if self.nvidia_smi is not None:  # the next VM has the same kind of GPU
            (standin.parent.parent / "nvidia-smi.out").write_text(self.nvidia_smi)
        old = self._disk
        self._disk, self.vm_id, self.generation = disk, vm_id, generation
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def set_nvidia_smi(self, output: str | None) -> None:
        """What the VM's nvidia-smi prints from now on, in this VM and the next ones;
        None: the VM has none (CPU)."""
        self.nvidia_smi = output
        if self._disk is None:
            return  # not started: _provision writes it
        out = self.root_home / ".colab-sim" / "nvidia-smi.out"
        if output is None:
            out.unlink(missing_ok=True)
        else:
            out.write_text(output)

    # -- running things inside ---------------------------------------------------------------

    def command(self, argv: Sequence[str]) -> list[str]:
        """The full command line that runs ``argv`` inside the VM."""
        return [
            *netns.exec_prefix(self.network.vm_ns),
            "unshare", "--uts", "--",
            "sh", "-c", _ENTER_VM, "vm-enter",
            str(self.root_home), str(self.etc_ssh), str(self.tmp), str(self.usr_local_bin),
            self.hostname,
            *argv,
        ]  # fmt: skip

    def environment(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        # A fresh VM knows nothing of the demo's environment.
        env = {"PATH": VM_PATH, "HOME": "/root", "LANG": "C.UTF-8", "USER": "root"}
        env.update(extra or {})
        return env

    def popen(
        self,
        argv: Sequence[str],
        *,
        name: str,
        env: Mapping[str, str] | None = None,
        stdin: int | IO[Any] | None = subprocess.DEVNULL,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in the VM; its output goes to ``logs/<name>.log``."""
        with self._lock:
            self._reap()
            log_path = self.logs_dir / f"{name}.log"
            with log_path.open("ab") as log:
                log.write(f"--- {time.strftime('%H:%M:%S')} vm {self.vm_id}: {name}\n".encode())
                log.flush()
                proc = subprocess.Popen(
                    self.command(argv),
                    stdin=stdin,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.environment(env),
                    start_new_session=True,
                )
            self._procs.append(proc)
            return proc

    def run(
        self, argv: Sequence[str], *, timeout: float = 20.0, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the VM to completion and return what it printed."""
        return subprocess.run(
            self.command(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.environment(env),
            check=False,
        )

    def start_sshd(self) -> subprocess.Popen[bytes]:
        proc = self.popen(
            [SSHD, "-D", "-e", "-f", "/etc/ssh/sshd_config"], name=f"sshd-{self.generation}"
        )
        self._wait_listening(proc)
        return proc

    def _wait_listening(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise VMError(
                    f"the VM's sshd exited with status {proc.returncode}; see "
                    f"{self.logs_dir}/sshd-{self.generation}.log"
                )
            probe = self.run(
                ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/22 && head -c 4 <&3"], timeout=5
            )
            if probe.stdout.startswith("SSH-"):
                return
            time.sleep(0.05)
        raise VMError(f"the VM's sshd did not answer on 127.0.0.1:22 within {timeout:.0f} s")

    def run_script(
        self, script: str, *, env: Mapping[str, str] | None = None, name: str = "bootstrap"
    ) -> subprocess.Popen[bytes]:
        """Run a shell script in the VM (the bootstrap cell's shell part), in background."""
        path = self.tmp / f"{name}-{self.generation}.sh"
        path.write_text(script)
        path.chmod(0o700)
        return self.popen(
            ["bash", f"{VM_TMP}/{path.name}"], name=f"{name}-{self.generation}", env=env
        )

    def run_cell(
        self,
        source: str,
        *,
        secrets: Mapping[str, str],
        env: Mapping[str, str] | None = None,
        name: str = "cell",
    ) -> subprocess.Popen[bytes]:
        """Run a notebook cell's Python in the VM, with ``google.colab.userdata`` simulated."""
        lib = self.tmp / "sim-colab-lib"
        package = lib / "google" / "colab"
        package.mkdir(parents=True, exist_ok=True)
        (lib / "google" / "__init__.py").write_text("")
        (package / "__init__.py").write_text("")
        (package / "userdata.py").write_text(_USERDATA_STUB)
        secrets_file = self.tmp / "sim-colab-secrets.json"
        fd = os.open(secrets_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(dict(secrets), f)
        cell = self.tmp / f"{name}-{self.generation}.py"
        cell.write_text(source)
        cell_env = {
            "PYTHONPATH": f"{VM_TMP}/sim-colab-lib",
            "SIM_COLAB_SECRETS": f"{VM_TMP}/sim-colab-secrets.json",
            "COLAB_RELEASE_TAG": "sim",
            "GW_SSHD_EXTRA": STANDIN_PATH,
            **(env or {}),
        }
        return self.popen(
            ["python3", f"{VM_TMP}/{cell.name}"], name=f"{name}-{self.generation}", env=cell_env
        )

    # -- faults --------------------------------------------------------------------------------

    def pids(self) -> list[int]:
        """This VM's processes. Several VMs may share the VM namespace (the demo's second
        notebook): a process is this VM's when its mounts are this VM's disk, or when it
        descends from a process started here (one still entering the VM)."""
        in_ns = netns.pids(self.network.vm_ns)
        ours = self._descendants()
        marker = f"/{self.workdir.name}/vm-"
        return [pid for pid in in_ns if pid in ours or marker in _mountinfo(pid)]

    def _descendants(self) -> set[int]:
        found: set[int] = set()
        for proc in self._procs:
            with suppress(psutil.Error):
                parent = psutil.Process(proc.pid)
                found.add(parent.pid)
                found.update(child.pid for child in parent.children(recursive=True))
        return found

    def tunnel_pids(self) -> list[int]:
        """The VM's ssh clients: whatever holds the reverse tunnel to the Pi."""
        return [pid for pid in self.pids() if _comm(pid) == "ssh" and not _zombie(pid)]

    def kill_tunnel(self) -> list[int]:
        """Kill the VM's ssh clients (SIGKILL), as a dropped connection would end them."""
        killed = []
        for pid in self.tunnel_pids():
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
        # SIGKILL is delivered asynchronously: return once they are really gone.
        deadline = time.monotonic() + 5.0
        while any(not _zombie(pid) for pid in killed) and time.monotonic() < deadline:
            time.sleep(0.005)
        self._reap()
        return killed

    def kill_all(self, timeout: float = 5.0) -> None:
        """SIGKILL every process in the VM and wait until none is left."""
        deadline = time.monotonic() + timeout
        while True:
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                raise VMError(f"processes {pids} in {self.network.vm_ns} survived SIGKILL")
            self._reap()
            time.sleep(0.02)
        self._reap(wait=True)

    def _reap(self, wait: bool = False) -> None:
        alive = []
        for proc in self._procs:
            if wait:
                try:
                    proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    alive.append(proc)
            elif proc.poll() is None:
                alive.append(proc)
        self._procs = alive


def _zombie(pid: int) -> bool:
    """Gone, or dead and not yet reaped."""
    try:
        return psutil.Process(pid).status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.Error:
        return True


def _mountinfo(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/mountinfo").read_text()
    except OSError:
        return ""


def _comm(pid: int) -> str:
    try:
        return psutil.Process(pid).name()
    except psutil.Error:
        return ""


@contextmanager
def simulated_vm(workdir: Path, *, sshd: bool = True) -> Iterator[SimVM]:
    """A network (Pi + VM namespaces) and a started VM, all removed afterwards."""
    with SimNetwork() as network, SimVM(network, workdir, sshd=sshd) as vm:
        yield vm
