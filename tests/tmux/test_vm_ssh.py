"""Every ssh the Pi runs into the VM (the pane's, the sync's rsync -e) reads no ssh config:
a ``~/.ssh/config`` that a hostile VM once wrote (issue 22, attack 11) never runs.

Real OpenSSH and rsync against a real sshd. OpenSSH finds ``~`` in the password database,
not in HOME, so the user's home is replaced in a private mount namespace (``unshare -m``,
as root) by one whose ``.ssh/config`` has a ProxyCommand that leaves a marker file.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.tmux import Sshd, keygen, require_root

from gateway.config import load_config_text
from gateway.paths import Paths
from gateway.sync.rsync import Remote
from gateway.vm_ssh import VM_LOGIN, ssh_argv, ssh_options

pytestmark = pytest.mark.skipif(
    shutil.which("unshare") is None or not Path("/usr/sbin/sshd").exists(),
    reason="needs unshare (util-linux) and openssh-server",
)


@pytest.fixture
def setting(tmp_path: Path) -> Iterator[tuple[Sshd, Paths, Path]]:
    """A VM's sshd, the gateway's config and pinned key for it, and a hostile home."""
    require_root()
    identity = tmp_path / "pi" / "id_ed25519"
    identity.parent.mkdir()
    sshd = Sshd(tmp_path / "vm", [keygen(identity)])
    sshd.start()
    paths = Paths(tmp_path / "config.yaml", tmp_path / "state", tmp_path / "run")
    paths.state_dir.mkdir()
    paths.config.write_text(
        "sessions:\n  - name: colab\n    notebook_url: https://colab.research.google.com/drive/x\n"
        f"    forwards: {{ssh: {{colab: 22, local: {sshd.port}}}}}\n"
        f"ssh: {{identity: {identity}}}\n"
    )
    paths.known_hosts.write_text(sshd.known_hosts_line() + "\n")
    home = tmp_path / "hostile-home"
    (home / ".ssh").mkdir(parents=True)
    marker = tmp_path / "proxycommand-ran"
    (home / ".ssh" / "config").write_text(
        f"Host *\n    ProxyCommand sh -c 'touch {marker}; exec nc %h %p'\n"
        f"    LocalCommand touch {marker}\n    PermitLocalCommand yes\n"
    )
    yield sshd, paths, home
    sshd.stop()


def run_with_home(home: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """``argv`` with ``home`` mounted over this user's home directory (and in HOME)."""
    own_home = pwd.getpwuid(os.getuid()).pw_dir
    script = 'mount --bind "$1" "$2" && shift 2 && exec "$@"'
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", str(home),
         own_home, *argv],
        env=dict(os.environ, HOME=str(home)),
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip


def test_the_panes_ssh_never_reads_the_users_ssh_config(
    setting: tuple[Sshd, Paths, Path], tmp_path: Path
) -> None:
    """Fails on b2ceba6 (no -F): the ProxyCommand ran on the Pi (the marker appeared)."""
    _sshd, paths, home = setting
    config = load_config_text(paths.config.read_text(), str(paths.config)).config
    done = run_with_home(home, [*ssh_argv(config, "colab", paths), "echo", "in-the-vm"])
    assert not (tmp_path / "proxycommand-ran").exists(), "the user's ssh config was read"
    assert (done.returncode, done.stdout) == (0, "in-the-vm\n"), done.stderr
    assert ssh_argv(config, "colab", paths)[1:3] == ["-F", "/dev/null"]
    assert "IdentitiesOnly=yes" in ssh_argv(config, "colab", paths)


def test_the_syncs_rsync_over_ssh_never_reads_the_users_ssh_config(
    setting: tuple[Sshd, Paths, Path], tmp_path: Path
) -> None:
    """Fails on b2ceba6: rsync's ssh ran the ProxyCommand."""
    _sshd, paths, home = setting
    config = load_config_text(paths.config.read_text(), str(paths.config)).config
    source = tmp_path / "vm-file"
    source.write_text("from the vm\n")
    remote = Remote(("ssh", *ssh_options(config, "colab", paths)), VM_LOGIN)
    dest = tmp_path / "pulled"
    argv = ["rsync", *remote.shell(), remote.spec(str(source)), str(dest)]
    done = run_with_home(home, argv)
    assert not (tmp_path / "proxycommand-ran").exists(), "the user's ssh config was read"
    assert done.returncode == 0, f"{shlex.join(argv)}: {done.stderr}"
    assert dest.read_text() == "from the vm\n"
