"""How the Pi logs into a session's Colab VM: through the tunnel's local ssh forward, as
the Pi's own user (``ssh.identity``), with the VM's host key checked strictly against the
key the tunnel pinned in ``<state>/known_hosts``.

One definition for everything that does it: the tmux pane's ssh client and the sync's
rsync (``-e``) and ``resume`` command, so they can never disagree about how the VM is
trusted.

No ssh config is read: ``-F /dev/null`` (which also skips /etc/ssh/ssh_config) with every
option on the command line. The user's ``~/.ssh/config`` is the file a hostile VM would
aim at (a ``ProxyCommand`` or ``LocalCommand`` there runs on the Pi), and a config the
gateway wrote itself would be one more file to protect; /dev/null cannot be written.
``IdentitiesOnly`` keeps an agent's other keys out of the VM's reach.

The VM facts (gateway/vm_stats) keep one connection per VM open, an OpenSSH ControlMaster
listening on ``kept_connection()``; the other short commands (the VM's outbox,
gateway/alerts) go over it when it is up, ``over_kept_connection()``, and log in on
their own when it is not.
"""

from __future__ import annotations

import os
from pathlib import Path

from gateway.config import Config
from gateway.paths import Paths

VM_LOGIN = "root@localhost"
# sun_path holds 108 bytes; ssh adds ".XXXXXXXXXXXXXXXX" while it creates the socket.
SOCKET_PATH_MAX = 90


def ssh_options(config: Config, session: str, paths: Paths) -> list[str]:
    """Everything between ``ssh`` and the destination."""
    port = config.session(session).ssh_port
    identity = os.path.expanduser(config.ssh.identity)
    return [
        "-F",
        "/dev/null",
        "-p",
        str(port),
        "-i",
        identity,
        "-o",
        f"UserKnownHostsFile={paths.known_hosts}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"ServerAliveInterval={max(1, round(config.ssh.server_alive_interval))}",
        "-o",
        "ServerAliveCountMax=3",
        # Never prompt unattended: no password, no passphrase, only our key.
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "ConnectTimeout=10",
    ]


def ssh_argv(config: Config, session: str, paths: Paths) -> list[str]:
    """``ssh ... root@localhost``: an interactive login into the session's VM."""
    return ["ssh", *ssh_options(config, session, paths), VM_LOGIN]


def kept_connection(runtime_dir: Path, session: str) -> Path | None:
    """Where the session's kept connection to its VM listens: in the runtime directory (the
    daemon's own, 0750; ssh makes the socket 0600), or None when that path is too long for
    a socket (the VM facts then use a private one of their own, and nothing shares it)."""
    path = runtime_dir / f"vm-{session}.ctl"
    return path if len(os.fsencode(path)) <= SOCKET_PATH_MAX else None


def over_kept_connection(runtime_dir: Path, session: str) -> list[str]:
    """Options that send a command over the kept connection when one listens, and log in
    as usual when none does (``ControlMaster=no`` with a ``ControlPath``: ssh tries the
    socket, and goes on without a master if it cannot use it). Such a client never
    becomes a master itself."""
    path = kept_connection(runtime_dir, session)
    if path is None:
        return []
    # ssh expands %-tokens in ControlPath: a literal % is %%.
    return ["-o", f"ControlPath={str(path).replace('%', '%%')}", "-o", "ControlMaster=no"]
