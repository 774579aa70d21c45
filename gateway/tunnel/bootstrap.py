"""The Colab side: the notebook cell that makes a fresh Colab VM dial home.

The cell is Python (Colab runs Python cells): it reads the session's tunnel private key
from Colab's secrets (``google.colab.userdata``), with an opt-in inline fallback, writes it
to a 0600 file and runs the shell part, ``bootstrap.sh``, which does the real work. The
shell part can be rendered and run on its own (tests and the demo's simulated VM do), with
every input an environment variable.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from gateway.config import Config, SessionConfig
from gateway.tunnel.keys import KeyStore, secret_name


class BootstrapError(Exception):
    """Something the user must fix before a cell can be made; the message says what."""


def endpoint_address(config: Config) -> tuple[str, int]:
    """Where the Colab VM dials: ``tunnel.public_host`` or else ``ddns.hostname``, and
    ``tunnel.public_port`` or else the listen port. The host is "" when neither is set."""
    host = config.tunnel.public_host or config.ddns.hostname
    port = config.tunnel.public_port or config.tunnel.listen_port
    return host, port


@dataclass(frozen=True)
class BootstrapParams:
    """The gateway's side of the bootstrap, rendered into the script as defaults."""

    endpoint_host: str
    endpoint_port: int
    username: str
    endpoint_hostkey: str  # "ssh-ed25519 AAAA…", pinned by the VM
    forwards: dict[int, int]  # local port on the Pi -> Colab port
    pi_public_key: str  # installed in the VM's authorized_keys; one key per line
    server_alive_interval: int = 15
    session: str = ""  # names the Colab secret in the cell's messages
    sshd_port: int = 22  # the session's forwards.ssh.colab: where the VM's sshd listens


def render_bootstrap_script(params: BootstrapParams) -> str:
    """The shell part of the bootstrap cell, as one bash script.

    The values in ``params`` become defaults of environment variables, so the environment
    of whoever runs the script wins. The inputs are:

    ``GW_ENDPOINT_HOST``, ``GW_ENDPOINT_PORT``
        where the gateway's endpoint is reached (``tunnel.public_host``/``ddns.hostname``,
        ``tunnel.public_port``/the listen port).
    ``GW_USER``
        ``tunnel.username``.
    ``GW_ENDPOINT_HOSTKEY``
        the endpoint's host public key (``type base64``), the only one accepted.
    ``GW_FORWARDS``
        space-separated ``LOCAL:COLAB`` pairs; each becomes
        ``-R 127.0.0.1:LOCAL:localhost:COLAB``. A COLAB of ``sshd`` (how the session's ssh
        forward is rendered) means ``GW_SSHD_PORT``.
    ``GW_SESSION``, ``GW_SECRET``, ``GW_KEY_SOURCE``
        the session and its Colab secret, named in the one-line error about a bad key;
        ``GW_KEY_SOURCE`` (set by the cell) says where the key came from instead.
    ``GW_PI_PUBKEY``
        public key lines (one per line: the Pi's, then ``ssh.authorized_keys``), each
        appended to ``GW_AUTHORIZED_KEYS`` if missing (empty: none).
    ``GW_KEY_FILE``
        the tunnel key (default ``$GW_DIR/tunnel_key``; the cell writes the secret's value
        there): the one-line form ``openssh-base64:…`` or the OpenSSH/PEM text, also with
        its line breaks lost (turned into spaces or removed); rewritten as a key file ssh
        reads, or the script stops with one line naming the secret and the fix.
    ``GW_DIR``
        the VM-side state: known_hosts, sshd_config, pid/lock/status/log files
        (default ``$HOME/.colab-gateway``).
    ``GW_SSHD``, ``GW_SSHD_PORT``, ``GW_SSHD_CONFIG``, ``GW_SSHD_HOSTKEY``
        the sshd binary (``/usr/sbin/sshd``), its port (the session's
        ``forwards.ssh.colab``, 22), the config file it is started with
        (``$GW_DIR/sshd_config``) and its ed25519 host key
        (``/etc/ssh/ssh_host_ed25519_key``, generated if missing); sshd listens on
        127.0.0.1 only. An sshd already started with ``GW_SSHD_CONFIG`` is reused; another
        program on the port stops the script with one line naming it.
    ``GW_SSHD_EXTRA``
        extra sshd_config lines (tests use ``StrictModes no`` for files under /tmp).
    ``GW_AUTHORIZED_KEYS``
        ``$HOME/.ssh/authorized_keys``.
    ``GW_INSTALL``, ``GW_RSYNC``, ``GW_APT_TIMEOUT``
        1 (default): ``apt-get install`` openssh-server when ``GW_SSHD`` is missing and
        rsync when ``GW_RSYNC`` (``rsync``) is not found; no apt at all when both are
        there. A failing ``apt-get update`` (a broken third-party source) is tolerated;
        each apt-get call is stopped after ``GW_APT_TIMEOUT`` seconds (180); only a
        missing sshd stops the script. Its output is in ``$GW_DIR/apt.log``.
    ``GW_SSH``
        the ssh client (``ssh``).
    ``GW_BIN``, ``GW_OUTBOX``
        where ``gw-notify`` and ``gw-run`` are installed (``/usr/local/bin``) and where
        ``gw-notify`` leaves messages for the gateway (``$GW_DIR/outbox``; the gateway reads
        ``/root/.colab-gateway/outbox``, gateway/alerts/vm_outbox.py).
    ``GW_SERVER_ALIVE``, ``GW_BACKOFF_MAX``
        keepalive interval of the tunnel (15 s) and the longest wait between tries (60 s).
    ``GW_WAIT``
        how long the script waits to report the first connection (15 s).

    The loop runs detached (``setsid``, its own process group), holds
    ``$GW_DIR/tunnel.lock``, writes its pid to ``$GW_DIR/tunnel.pid`` and carries
    ``colab-gateway-tunnel-loop $GW_DIR`` as its last arguments, so a later run finds it
    even without the pid file. A later run keeps it when it is up with the same settings
    and code, and replaces it otherwise: there is never more than one. Stop it with
    ``kill -- -$(cat $GW_DIR/tunnel.pid)``.
    """
    defaults = {
        "GW_ENDPOINT_HOST": params.endpoint_host,
        "GW_ENDPOINT_PORT": str(params.endpoint_port),
        "GW_USER": params.username,
        "GW_ENDPOINT_HOSTKEY": params.endpoint_hostkey,
        "GW_FORWARDS": " ".join(
            f"{local}:{'sshd' if colab == params.sshd_port else colab}"
            for local, colab in params.forwards.items()
        ),
        "GW_PI_PUBKEY": params.pi_public_key,
        "GW_SERVER_ALIVE": str(params.server_alive_interval),
        "GW_SSHD_PORT": str(params.sshd_port),
    }
    if params.session:
        defaults["GW_SESSION"] = params.session
        defaults["GW_SECRET"] = secret_name(params.session)
    header = ["#!/bin/bash"] + [
        f'[ "${{{name}+set}}" = set ] || {name}={shlex.quote(value)}'
        for name, value in defaults.items()
    ]
    body = resources.files("gateway.tunnel").joinpath("bootstrap.sh").read_text()
    return "\n".join(header) + "\n" + body


_CELL = '''\
# colab-gateway bootstrap for session {session!r}: run this cell first (Runtime > Run all).
# It starts sshd (keys only), installs the Pi's key and keeps a reverse SSH tunnel to
# {endpoint} open in the background. Running it again does not start a second tunnel.
# The tunnel key comes from the Colab secret {secret!r} (the key icon on the left; enable
# "Notebook access"). Its value: the one line `colab-gateway keys --private {session}`
# prints on the Pi (a pasted multi-line key works too, even with its line breaks lost).
import os, subprocess

SECRET = {secret!r}
INLINE_TUNNEL_KEY = {inline}  # opt-in fallback, saved with the notebook: prefer the secret

def _tunnel_key():
    try:
        from google.colab import userdata
        return userdata.get(SECRET) or "", f"the Colab secret {{SECRET!r}}"
    except Exception as exc:  # not in Colab, secret missing, or no notebook access
        if INLINE_TUNNEL_KEY:
            return INLINE_TUNNEL_KEY, "INLINE_TUNNEL_KEY in this cell"
        raise SystemExit(
            f"colab-gateway: cannot read the Colab secret {{SECRET!r}} "
            f"({{type(exc).__name__}}: {{exc}}). Add it in the Secrets panel (key icon): "
            "as its value paste the one line `colab-gateway keys --private {session}` prints "
            "on the Pi, and enable notebook access."
        ) from None

_dir = os.environ.get("GW_DIR") or os.path.expanduser("~/.colab-gateway")
# The key goes into a 0700 directory of ours, whatever was there before (a directory of
# another mode, a symlink to elsewhere), into a file made fresh: a file or a symlink left at
# the key's name keeps neither its mode nor its target, the rename replaces the name.
if os.path.islink(_dir) or (os.path.lexists(_dir) and not os.path.isdir(_dir)):
    os.unlink(_dir)
os.makedirs(_dir, mode=0o700, exist_ok=True)
_dir_fd = os.open(_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
os.fchmod(_dir_fd, 0o700)
_key_file = os.path.join(_dir, "tunnel_key")
_key, _source = _tunnel_key()
_new = f"tunnel_key.{{os.getpid()}}.new"
try:
    os.unlink(_new, dir_fd=_dir_fd)
except FileNotFoundError:
    pass
_flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
_fd = os.open(_new, _flags, 0o600, dir_fd=_dir_fd)
os.fchmod(_fd, 0o600)
with os.fdopen(_fd, "w") as _f:
    _f.write(_key.strip() + "\\n")  # bootstrap.sh decodes and repairs it
os.rename(_new, "tunnel_key", src_dir_fd=_dir_fd, dst_dir_fd=_dir_fd)
os.close(_dir_fd)

SCRIPT = r"""
{script}"""
_env = dict(os.environ, GW_DIR=_dir, GW_KEY_FILE=_key_file, GW_KEY_SOURCE=_source)
_done = subprocess.run(["bash", "-c", SCRIPT], env=_env)
if _done.returncode:
    raise SystemExit(f"colab-gateway: the bootstrap failed (exit {{_done.returncode}})")
'''


def render_cell(params: BootstrapParams, session: str, inline_key: str | None = None) -> str:
    """The whole notebook cell for ``session``."""
    script = render_bootstrap_script(params)
    if '"""' in script or (inline_key and "'''" in inline_key):
        raise BootstrapError("the bootstrap script cannot be quoted into a cell")
    return _CELL.format(
        session=session,
        secret=secret_name(session),
        endpoint=f"{params.endpoint_host}:{params.endpoint_port}",
        inline=f"'''{inline_key.strip()}'''" if inline_key else "None",
        script=script,
    )


def render_notebook(cell: str, session: str) -> str:
    """A valid nbformat-4 notebook whose first cell is the bootstrap."""
    notebook = {
        "nbformat": 4,
        "nbformat_minor": 0,
        "metadata": {
            "colab": {"name": f"colab-gateway {session}", "provenance": []},
            "kernelspec": {"name": "python3", "display_name": "Python 3"},
            "language_info": {"name": "python"},
        },
        "cells": [
            {
                "cell_type": "code",
                "execution_count": None,
                "metadata": {"id": "colab-gateway-bootstrap"},
                "outputs": [],
                "source": cell.splitlines(keepends=True),
            },
            {
                "cell_type": "markdown",
                "metadata": {"id": "colab-gateway-notes"},
                "source": [
                    "The cell above keeps this VM reachable from the gateway: "
                    "`ssh -p <port> root@localhost` on the Pi, or its tmux session "
                    "(`tmux attach` as the Pi's login user, docs/daily-use.md). "
                    "Your own cells go below.\n"
                ],
            },
        ],
    }
    return json.dumps(notebook, indent=1) + "\n"


def params_for(
    config: Config,
    session: SessionConfig,
    keys: KeyStore,
    *,
    host: str | None = None,
    port: int | None = None,
) -> BootstrapParams:
    """Gather the bootstrap's inputs from the config, the keys and the Pi user's key."""
    default_host, default_port = endpoint_address(config)
    host = host or default_host
    if not host:
        raise BootstrapError(
            "the Colab VM needs an address to dial: set tunnel.public_host (or ddns.hostname) "
            "in the config, or pass --host"
        )
    identity = Path(config.ssh.identity).expanduser()
    public_path = identity.with_name(identity.name + ".pub")
    try:
        pi_key = public_path.read_text().strip()
    except FileNotFoundError:
        raise BootstrapError(
            f"{public_path} does not exist: the Colab VM must trust the Pi's key (ssh.identity="
            f"{config.ssh.identity!r}). Create it with:  ssh-keygen -t ed25519 -f {identity}"
        ) from None
    return BootstrapParams(
        endpoint_host=host,
        endpoint_port=port or default_port,
        username=config.tunnel.username,
        endpoint_hostkey=" ".join(keys.host_info().public.split()[:2]),
        forwards={f.local: f.colab for f in session.forwards.values()},
        pi_public_key="\n".join([pi_key, *config.ssh.authorized_keys]),
        server_alive_interval=max(1, round(config.ssh.server_alive_interval)),
        session=session.name,
        sshd_port=session.forwards["ssh"].colab,
    )
