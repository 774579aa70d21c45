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
        ``-R 127.0.0.1:LOCAL:localhost:COLAB`` (a COLAB of 22 means ``GW_SSHD_PORT``).
    ``GW_PI_PUBKEY``
        public key lines (one per line: the Pi's, then ``ssh.authorized_keys``), each
        appended to ``GW_AUTHORIZED_KEYS`` if missing (empty: none).
    ``GW_KEY_FILE``
        the tunnel private key (default ``$GW_DIR/tunnel_key``; the cell writes it).
    ``GW_DIR``
        the VM-side state: known_hosts, sshd_config, pid/lock/status/log files
        (default ``$HOME/.colab-gateway``).
    ``GW_SSHD``, ``GW_SSHD_PORT``, ``GW_SSHD_CONFIG``, ``GW_SSHD_HOSTKEY``
        the sshd binary (``/usr/sbin/sshd``), its port (22), the config file it is started
        with (``$GW_DIR/sshd_config``) and its ed25519 host key
        (``/etc/ssh/ssh_host_ed25519_key``, generated if missing); sshd listens on
        127.0.0.1 only.
    ``GW_SSHD_EXTRA``
        extra sshd_config lines (tests use ``StrictModes no`` for files under /tmp).
    ``GW_AUTHORIZED_KEYS``
        ``$HOME/.ssh/authorized_keys``.
    ``GW_INSTALL``
        1 (default): ``apt-get install openssh-server`` when ``GW_SSHD`` is missing.
    ``GW_SSH``
        the ssh client (``ssh``).
    ``GW_SERVER_ALIVE``, ``GW_BACKOFF_MAX``
        keepalive interval of the tunnel (15 s) and the longest wait between tries (60 s).
    ``GW_WAIT``
        how long the script waits to report the first connection (15 s).

    The loop runs detached (``setsid``), holds ``$GW_DIR/tunnel.lock`` and writes its pid
    to ``$GW_DIR/tunnel.pid``: a second run leaves it alone. Stop it with
    ``kill -- -$(cat $GW_DIR/tunnel.pid)``.
    """
    defaults = {
        "GW_ENDPOINT_HOST": params.endpoint_host,
        "GW_ENDPOINT_PORT": str(params.endpoint_port),
        "GW_USER": params.username,
        "GW_ENDPOINT_HOSTKEY": params.endpoint_hostkey,
        "GW_FORWARDS": " ".join(f"{local}:{colab}" for local, colab in params.forwards.items()),
        "GW_PI_PUBKEY": params.pi_public_key,
        "GW_SERVER_ALIVE": str(params.server_alive_interval),
    }
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
# "Notebook access"); on the Pi, `colab-gateway keys --private {session}` prints it.
import os, subprocess

SECRET = {secret!r}
INLINE_TUNNEL_KEY = {inline}  # opt-in fallback, saved with the notebook: prefer the secret

def _tunnel_key():
    try:
        from google.colab import userdata
        return userdata.get(SECRET)
    except Exception as exc:  # not in Colab, secret missing, or no notebook access
        if INLINE_TUNNEL_KEY:
            return INLINE_TUNNEL_KEY
        raise SystemExit(
            f"colab-gateway: cannot read the Colab secret {{SECRET!r}} "
            f"({{type(exc).__name__}}: {{exc}}). Add it in the Secrets panel (key icon) with "
            "the output of `colab-gateway keys --private {session}` and enable notebook access."
        ) from None

_dir = os.environ.get("GW_DIR") or os.path.expanduser("~/.colab-gateway")
os.makedirs(_dir, mode=0o700, exist_ok=True)
_key_file = os.path.join(_dir, "tunnel_key")
_fd = os.open(_key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(_fd, "w") as _f:
    _f.write(_tunnel_key().strip() + "\\n")

SCRIPT = r"""
{script}"""
_env = dict(os.environ, GW_DIR=_dir, GW_KEY_FILE=_key_file)
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
                    "`ssh -p <port> root@localhost` on the Pi, or `tmux attach`. "
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
    )
