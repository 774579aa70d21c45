"""The deploy tests' machinery: a Debian root made by debootstrap and cached as a tarball,
booted with systemd-nspawn and reached over SSH like a Pi (Machine), the ansible-playbook
that deploys onto it (Controller, run_playbook) and readers of its output (recap,
changed_tasks). tests/test_deploy.py (x86_64) and tests/test_deploy_arm64.py share it.
"""

from __future__ import annotations

import configparser
import contextlib
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from helpers import REPO

CACHE_DIR = Path(os.environ.get("COLAB_GATEWAY_TEST_CACHE", "/var/cache/colab-gateway-tests"))
SUITE = "bookworm"
# What a Raspberry Pi OS Lite image has that matters here: systemd, sshd, sudo, python3.
INCLUDE = "systemd,systemd-sysv,dbus,openssh-server,python3,sudo,ca-certificates,iproute2"
LOGIN_USER = "pi"  # the machine's login user, whom Ansible logs in as
SERVICE_USER = "colab-gateway"  # the role's default: a dedicated system user
AS_SERVICE = f"sudo -u {SERVICE_USER}"
TMUX_SESSION = "colab"
# Not the role's default (/opt/colab-gateway): the unit must follow it.
VENV = "/srv/colab-gateway/venv"
# Everything that makes python3 on a Debian 12 root.
PYTHON_PACKAGES = (
    "python3",
    "python3-minimal",
    "python3.11",
    "python3.11-minimal",
    "libpython3-stdlib",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
)
BOOT_TIMEOUT = 120.0
PLAYBOOK_TIMEOUT = 1200.0

# ansible-core 2.20 and later refuse a controller Python older than 3.12.
NEWEST_CORE_PYTHON = (3, 12)
FALLBACK_WARNING = "the deploy test ran ansible-core"


def missing_prerequisite() -> str | None:
    if os.geteuid() != 0:
        return "needs root (debootstrap, systemd-nspawn)"
    for tool in ("debootstrap", "systemd-nspawn", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"needs {tool} (make system-deps installs it)"
    if not (Path(sys.executable).parent / "ansible-playbook").exists():
        return "needs ansible-playbook in the venv (pip install -e '.[test]')"
    return None


# ---- the controller: the newest ansible-core -------------------------------------------


def newest_python_for_ansible_core() -> tuple[tuple[int, ...], Path] | None:
    """The newest Python >= 3.12 on this machine that can make a virtualenv, or None.

    The newest ansible-core needs a newer controller Python (2.20+: >= 3.12) than the
    project venv may have (3.11 on CI's image), and the issue wants the deploy test to run
    the newest. CI's image has pyenv builds under /root/.pyenv (its python3.1x on PATH are
    pyenv shims, which fail for a version pyenv has not selected); a Debian box may have a
    python3.12/3.13 of its own, or neither. Each candidate is run once to learn its real
    path and version, and whether it has venv + ensurepip (Debian's python3.X-venv).
    """
    candidates = [shutil.which(f"python3.{minor}") for minor in range(19, 11, -1)]
    candidates += glob.glob("/root/.pyenv/versions/3.1[2-9]*/bin/python3")
    found = []
    for candidate in filter(None, candidates):
        probe = subprocess.run(
            [
                candidate,
                "-c",
                "import ensurepip, sys, venv; print(sys.executable, *sys.version_info[:3])",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if probe.returncode != 0:
            continue
        executable, *version = probe.stdout.split()
        if tuple(map(int, version)) >= NEWEST_CORE_PYTHON:
            found.append((tuple(map(int, version)), Path(executable)))
    return max(found) if found else None


def newest_ansible_core(python: Path) -> str:
    """The newest ansible-core release this Python may install (pip honours Requires-Python)."""
    result = subprocess.run(
        [
            str(python),
            *("-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps"),
            *("--quiet", "--report", "-", "ansible-core"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"{python} -m pip could not resolve ansible-core:\n{result.stderr[-3000:]}")
    return str(json.loads(result.stdout)["install"][0]["metadata"]["version"])


def ansible_core_version(playbook: Path) -> tuple[str, str]:
    """(ansible-core version, Python version) that this ansible-playbook runs, as it says."""
    out = subprocess.run(
        [str(playbook), "--version"], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    core = re.search(r"\[core ([^\]]+)\]", out)
    python = re.search(r"python version = (\S+)", out)
    assert core and python, out
    return core.group(1), python.group(1)


def ansible_core_venv(python: Path, version: tuple[int, ...], core: str) -> Path:
    """A virtualenv of that Python with ansible-core == core, made once and cached."""
    venv = CACHE_DIR / f"ansible-core-{core}-py{'.'.join(map(str, version))}"
    playbook = venv / "bin/ansible-playbook"
    with cache_lock():
        with contextlib.suppress(subprocess.CalledProcessError, OSError, AssertionError):
            if ansible_core_version(playbook)[0] == core:
                return venv
        # Absent, half made by an interrupted run, or its Python gone: make it again.
        shutil.rmtree(venv, ignore_errors=True)
        try:
            subprocess.run(
                [str(python), "-m", "venv", str(venv)], check=True, capture_output=True, text=True
            )
            subprocess.run(
                [str(venv / "bin/python"), "-m", "pip", "install", "-q", f"ansible-core=={core}"],
                check=True,
                capture_output=True,
                text=True,
                timeout=900,
            )
        except subprocess.CalledProcessError as exc:
            shutil.rmtree(venv, ignore_errors=True)
            pytest.fail(f"making {venv} failed: {exc}\n{exc.stdout}\n{exc.stderr[-3000:]}")
    return venv


@dataclass(frozen=True)
class Controller:
    """The ansible-playbook every play of this module runs, and why that one."""

    playbook: Path
    core: str  # the ansible-core it runs
    python: str  # the Python version it runs on


# ---- the cached root ---------------------------------------------------------------


def apt_source_files() -> list[Path]:
    files = [Path("/etc/apt/sources.list")]
    files += sorted(Path(p) for p in glob.glob("/etc/apt/sources.list.d/*.list"))
    files += sorted(Path(p) for p in glob.glob("/etc/apt/sources.list.d/*.sources"))
    return [f for f in files if f.is_file()]


def debian_mirror() -> str:
    """The Debian mirror this host's apt uses for SUITE: debootstrap fetches from it too."""
    for path in apt_source_files():
        text = path.read_text()
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(
                    (k.strip().lower(), v.strip())
                    for k, _, v in (
                        line.partition(":")
                        for line in stanza.splitlines()
                        if line and not line.startswith("#")
                    )
                )
                if (
                    "deb" in fields.get("types", "").split()
                    and SUITE in fields.get("suites", "").split()
                ):
                    return fields["uris"].split()[0]
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^\]]*\]", "", line).split()
                if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                    return words[1]
    pytest.skip(f"this host's apt has no source for Debian {SUITE} to debootstrap from")


@contextlib.contextmanager
def cache_lock() -> Iterator[None]:
    """One builder of anything in CACHE_DIR at a time (parallel test runs share it)."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def cached_root_tarball(arch: str | None = None) -> Path:
    """debootstrap once per machine; later runs unpack the tarball in a few seconds. arch: a
    Debian architecture other than this host's (arm64: under qemu-user, see
    helpers/binfmt.py)."""
    key = hashlib.sha256(f"{SUITE} {INCLUDE} {LOGIN_USER} v1".encode()).hexdigest()[:12]
    tarball = CACHE_DIR / f"debian-{SUITE}-{key}.tar"
    if arch is not None:
        tarball = CACHE_DIR / f"debian-{SUITE}-{arch}-{key}.tar"
    with cache_lock():
        if tarball.exists():
            return tarball
        build = CACHE_DIR / f"build-{os.getpid()}"
        shutil.rmtree(build, ignore_errors=True)
        try:
            subprocess.run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={INCLUDE}",
                    *([f"--arch={arch}"] if arch else []),
                    SUITE,
                    str(build),
                    debian_mirror(),
                ],
                check=True,
                capture_output=True,
                text=True,
                timeout=900 if arch is None else 2400,
            )
            chroot = ["chroot", str(build)]
            subprocess.run(
                [*chroot, "useradd", "-m", "-s", "/bin/bash", "-G", "sudo", LOGIN_USER],
                check=True,
            )
            # The Pi's images let the login user sudo without a password; so does this one.
            sudoers = build / "etc/sudoers.d" / LOGIN_USER
            sudoers.write_text(f"{LOGIN_USER} ALL=(ALL) NOPASSWD:ALL\n")
            sudoers.chmod(0o440)
            subprocess.run([*chroot, "apt-get", "clean"], check=True)
            partial = tarball.with_suffix(".tar.partial")
            subprocess.run(
                ["tar", "--numeric-owner", "-C", str(build), "-cf", str(partial), "."],
                check=True,
            )
            partial.rename(tarball)
        except subprocess.CalledProcessError as exc:
            pytest.fail(f"building the Debian root failed: {exc}\n{exc.stdout}\n{exc.stderr}")
        finally:
            shutil.rmtree(build, ignore_errors=True)
    return tarball


# ---- per-run setup of the root -------------------------------------------------------


def copy_apt_sources(root: Path) -> None:
    """The machine installs from the same mirrors as this host, with the same keys."""
    (root / "etc/apt/sources.list").write_text("")
    for path in apt_source_files():
        target = root / str(path).lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        for keyring in re.findall(r"signed-by[=:]\s*(\S+?)[\]\s]", path.read_text(), re.I):
            source = Path(keyring)
            if source.is_file() and not (root / keyring.lstrip("/")).exists():
                (root / keyring.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, root / keyring.lstrip("/"))


def copy_ca_certificates(root: Path) -> None:
    """Local CAs of this host (e.g. a TLS-inspecting proxy's) are trusted inside too."""
    local = Path("/usr/local/share/ca-certificates")
    if local.is_dir():
        shutil.copytree(local, root / "usr/local/share/ca-certificates", dirs_exist_ok=True)
        subprocess.run(
            ["chroot", str(root), "update-ca-certificates"], check=True, capture_output=True
        )


def copy_pip_config(root: Path) -> None:
    """pip inside resolves like pip here: the effective settings, files and PIP_* alike."""
    listing = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PIP_NO_INPUT": "1"},
    ).stdout
    settings: dict[str, str] = {}
    for line in listing.splitlines():
        name, _, value = line.partition("=")
        key = name.rpartition(".")[2]
        settings[key] = value.strip().strip("'\"")
    conf = configparser.ConfigParser()
    conf["global"] = {}
    files_dir = root / "etc/pip-host"
    files_dir.mkdir(parents=True, exist_ok=True)
    for key, value in settings.items():
        if key in ("cert", "client-cert", "constraint", "requirement"):
            source = Path(value)
            if source.is_file():
                shutil.copy2(source, files_dir / f"{key}{source.suffix}")
                conf["global"][key] = f"/etc/pip-host/{key}{source.suffix}"
        elif key in ("index-url", "extra-index-url", "find-links"):
            # Local directories of this host don't exist inside; remote indexes do.
            remote = [v for v in value.split() if v.startswith(("http://", "https://"))]
            if remote:
                conf["global"][key] = " ".join(remote)
        elif key in ("default-timeout", "retries", "trusted-host", "proxy", "timeout"):
            conf["global"][key] = value
    # Downloads survive between runs, like the debootstrap root.
    conf["global"]["cache-dir"] = "/var/cache/pip"
    with open(root / "etc/pip.conf", "w") as out:
        conf.write(out)


@dataclass
class Machine:
    root: Path
    name: str
    ssh_port: int
    key: Path
    known_hosts: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None
    archives_lock: Any = None  # held while the machine uses the shared apt cache
    boot_timeout: float = BOOT_TIMEOUT
    # Under qemu-user nspawn's SIGTERM arrives in the emulated systemd as the rescue
    # signal: such a machine is powered off from inside.
    power_off_inside: bool = False

    def ssh_command(self, command: str) -> list[str]:
        return [
            "ssh",
            "-F",
            "none",  # this host's ~/.ssh/config has no say
            "-i",
            str(self.key),
            "-p",
            str(self.ssh_port),
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=5",
            f"{LOGIN_USER}@127.0.0.1",
            command,
        ]

    def run(
        self, command: str, *, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.ssh_command(command), capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"on the machine: {command!r} exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def apt_archives(self) -> Path:
        """The shared cache of .deb files, or this machine's own when another machine (a
        second test run on this host) has it: apt locks the directory and would fail at
        once ("Could not get lock /var/cache/apt/archives/lock"), not wait."""
        shared = CACHE_DIR / "apt-archives"
        (shared / "partial").mkdir(parents=True, exist_ok=True)
        self.archives_lock = open(CACHE_DIR / "apt-archives.lock", "w")  # noqa: SIM115
        try:
            fcntl.flock(self.archives_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.archives_lock.close()
            own = self.root.parent / "apt-archives"
            (own / "partial").mkdir(parents=True, exist_ok=True)
            return own
        return shared

    def boot(self) -> None:
        cmd = [
            "systemd-nspawn",
            "--keep-unit",
            "--register=no",
            "--boot",
            "--console=passive",
            f"--machine={self.name}",
            f"--directory={self.root}",
            f"--bind={self.apt_archives()}:/var/cache/apt/archives",
            f"--bind={CACHE_DIR / 'pip'}:/var/cache/pip",
        ]
        (CACHE_DIR / "pip").mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + self.boot_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"systemd-nspawn exited {self.process.returncode}:\n{self.boot_log()}")
            if self.run("true", check=False, timeout=10).returncode == 0:
                break
            time.sleep(0.5)
        else:
            waited = f"{self.boot_timeout:.0f}s"
            pytest.fail(f"no ssh into the machine after {waited}:\n{self.boot_log()}")
        wait = f"timeout {self.boot_timeout:.0f} systemctl is-system-running --wait"
        state = self.run(wait, check=False, timeout=self.boot_timeout + 30).stdout.strip()
        assert state in ("running", "degraded"), f"machine did not finish booting: {state}"

    def boot_log(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def power_off(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        if self.power_off_inside:
            self.run("sudo systemctl --no-block poweroff", check=False, timeout=60)
        else:
            # systemd-nspawn turns SIGTERM into a clean poweroff of the machine.
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)
        if self.archives_lock is not None:
            self.archives_lock.close()


def prepare_root(machine: Machine, *, keep_python: bool = False) -> None:
    root = machine.root
    (root / "etc/hostname").write_text("deploytest\n")
    # What every image has and debootstrap does not write: without `localhost`, Selenium
    # cannot reach the chromedriver it started ("Can not connect to the Service").
    (root / "etc/hosts").write_text(
        "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n127.0.1.1 deploytest\n"
    )
    # Fresh host keys for every machine, pinned on this side.
    for old in (root / "etc/ssh").glob("ssh_host_*"):
        old.unlink()
    subprocess.run(["chroot", str(root), "ssh-keygen", "-A"], check=True, capture_output=True)
    host_key = (root / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()[:2]
    machine.known_hosts.write_text(f"[127.0.0.1]:{machine.ssh_port} {' '.join(host_key)}\n")
    (root / "etc/ssh/sshd_config.d/10-deploytest.conf").write_text(
        f"Port {machine.ssh_port}\nListenAddress 127.0.0.1\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
    )
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(machine.key)], check=True
    )
    home = root / "home" / LOGIN_USER
    uid, gid = home.stat().st_uid, home.stat().st_gid
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    authorized = ssh_dir / "authorized_keys"
    authorized.write_text(Path(f"{machine.key}.pub").read_text())
    authorized.chmod(0o600)
    for path in (ssh_dir, authorized):
        os.chown(path, uid, gid)
    copy_apt_sources(root)
    copy_ca_certificates(root)
    copy_pip_config(root)
    if not keep_python:
        remove_python(root)


def remove_python(root: Path) -> None:
    """No python3 at all: the first thing the role runs must not need one."""
    subprocess.run(
        ["chroot", str(root), "apt-get", "purge", "-y", "-q", *PYTHON_PACKAGES],
        check=True,
        capture_output=True,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    left = sorted(str(p) for p in (root / "usr/bin").glob("python*"))
    assert not left, f"python is still in the machine: {left}"


def run_playbook(
    controller: Controller, inventory: Path, workdir: Path, *extra: str, tree: Path = REPO
) -> subprocess.CompletedProcess[str]:
    """The playbook and role of ``tree``: this checkout's, or a release's source."""
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(tree / "ansible/ansible.cfg"),
        "ANSIBLE_HOME": str(workdir / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(workdir / "ansible-tmp"),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(workdir / "cp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
    }
    command = [
        str(controller.playbook),
        "-i",
        str(inventory),
        str(tree / "ansible/playbook.yml"),
        *extra,
    ]
    return subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=PLAYBOOK_TIMEOUT
    )


def recap(output: str) -> dict[str, int]:
    match = re.search(r"deploytest\s*:\s*(.*)", output.split("PLAY RECAP")[-1])
    assert match, f"no PLAY RECAP in:\n{output[-3000:]}"
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}


def changed_tasks(output: str) -> list[str]:
    """The TASK / RUNNING HANDLER headers whose result was "changed"."""
    names, current = [], ""
    for line in output.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            current = line.split("]")[0] + "]"
        elif line.startswith("changed:") and current and current not in names:
            names.append(current)
    return names


def wait_active(machine: Machine, unit: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = machine.run(f"systemctl is-active {unit}", check=False).stdout.strip()
        if state == "active":
            return
        time.sleep(0.5)
    raise AssertionError(f"{unit} is {state!r} after {timeout:.0f}s")


def main_pid(machine: Machine) -> int:
    return int(machine.run("systemctl show -p MainPID --value colab-gateway").stdout)


def tmux_server(machine: Machine) -> tuple[str, str]:
    """(server pid, creation time of the session) of the service user's default socket."""
    out = machine.run(
        f"{AS_SERVICE} tmux display-message -p -t {TMUX_SESSION} '#{{pid}} #{{session_created}}'"
    ).stdout.split()
    return out[0], out[1]
