"""``colab-gateway ssh-config``: reach the Colab VM from a laptop, through the Pi.

The block it prints jumps through the Pi (``ProxyJump``) to the tunnel's local port, so
the laptop's ssh talks end to end with the VM's sshd: the laptop's own key must be one the
VM accepts (``ssh.authorized_keys``, installed by the bootstrap cell) and the VM's host key
is checked strictly against the key the gateway pinned. That key changes with every new VM,
so the block fetches it from the Pi on each connection (``KnownHostsCommand``, OpenSSH
8.5+); ``--known-hosts`` is what that command prints, and also a file to save for older
clients.
"""

from __future__ import annotations

import socket
from pathlib import Path

import yaml

from gateway.config import Config, ConfigError, load_config
from gateway.known_hosts import pinned_keys
from gateway.paths import Paths
from gateway.yaml_binder import bind_document

# What a terminal into the VM needs from the config; the rest is the daemon's business.
_SSH_SECTIONS = ("sessions", "ssh")

ALIAS_PREFIX = "colab-"


def load_ssh_view(path: Path) -> Config:
    """The config as far as ssh into the VM needs it (``sessions`` and ``ssh``).

    The whole file is tried first, for its exact error positions. If that fails, only the
    two sections are bound: a person in the gateway's group may not read the DDNS secret
    files, and a mistake elsewhere must not cut the tmux window off from the VM. Raises
    the whole file's ConfigError when even those two sections are wrong.
    """
    try:
        return load_config(path).config
    except ConfigError as whole:
        try:
            document = yaml.safe_load(path.read_text())
            if not isinstance(document, dict):
                raise whole from None
            subset = {key: document[key] for key in _SSH_SECTIONS if key in document}
            config, _ = bind_document(yaml.safe_dump(subset), str(path), Config)
        except (ConfigError, OSError, yaml.YAMLError):
            raise whole from None
        assert isinstance(config, Config)
        return config


def alias(session: str) -> str:
    return f"{ALIAS_PREFIX}{session}"


def known_hosts_lines(config: Config, paths: Paths, sessions: list[str]) -> list[str]:
    """The pinned keys under the laptop's names for them (the blocks' HostKeyAlias)."""
    lines = []
    for name in sessions:
        port = config.session(name).ssh_port
        lines += [f"{alias(name)} {key}" for key in pinned_keys(paths.known_hosts, port)]
    return lines


def config_block(config: Config, paths: Paths, session: str, pi: str) -> str:
    port = config.session(session).ssh_port
    keys = pinned_keys(paths.known_hosts, port)
    # ssh runs KnownHostsCommand without a shell and wants an absolute path.
    fetch = f"/usr/bin/ssh -o BatchMode=yes {pi} colab-gateway ssh-config --known-hosts {session}"
    lines = [
        f"# Colab session {session!r}, reached through {pi} (colab-gateway ssh-config).",
        f"Host {alias(session)}",
        "    HostName localhost",
        f"    Port {port}",
        "    User root",
        f"    ProxyJump {pi}",
        f"    HostKeyAlias {alias(session)}",
        "    StrictHostKeyChecking yes",
        "    # The VM's host key changes with every new VM: ask the Pi for the pinned one.",
        "    UserKnownHostsFile /dev/null",
        "    GlobalKnownHostsFile /dev/null",
        f"    KnownHostsCommand {fetch}",
        f"    ServerAliveInterval {max(1, round(config.ssh.server_alive_interval))}",
        "    # OpenSSH before 8.5 has no KnownHostsCommand: replace the three lines above with",
        "    #     UserKnownHostsFile ~/.ssh/known_hosts.colab-gateway",
        f"    # and save the output of `{fetch}` there (again after each new VM).",
    ]
    if keys:
        lines.append("    # The key pinned right now:")
        lines += [f"    #     {alias(session)} {key}" for key in keys]
    else:
        lines.append(
            "    # No host key is pinned yet: the tunnel pins it when the Colab VM first connects."
        )
    return "\n".join(lines)


def render(config: Config, paths: Paths, sessions: list[str], pi: str | None) -> str:
    pi = pi or socket.gethostname()
    header = [
        f"# Paste into ~/.ssh/config on your laptop; `{pi}` must already be a Host you can",
        f"# `ssh {pi}` to. Then: ssh {alias(sessions[0])}, scp/rsync/sshfs "
        f"{alias(sessions[0])}:PATH, or",
        "# pick the host in VS Code Remote-SSH / PyCharm.",
    ]
    if not config.ssh.authorized_keys:
        header += [
            "# The VM accepts only the keys it was given: add your laptop's public key",
            "# (~/.ssh/id_ed25519.pub) to ssh.authorized_keys in the gateway's config; the",
            "# bootstrap cell installs those keys for root on every new VM.",
        ]
    blocks = [config_block(config, paths, name, pi) for name in sessions]
    return "\n".join(header) + "\n\n" + "\n\n".join(blocks) + "\n"
