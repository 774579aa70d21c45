"""The gateway's own known_hosts file: which host key each local tunnel port leads to.

One writer, the tunnel (when the Colab VM registers its sshd key), and several readers
(the tmux pane's ssh client waits for a key before it runs ssh; ``ssh-config`` prints the
key to laptops; the tunnel shows its fingerprint). Lines are OpenSSH's own format, so the
Pi's ssh reads the file directly (``UserKnownHostsFile``)::

    [localhost]:20022 ssh-ed25519 AAAA...

The tunnel forwards only to local ports >= 1024 (config: forwards.*.local), so every
entry has the bracketed ``[localhost]:PORT`` form; a bare ``localhost`` never occurs.
"""

from __future__ import annotations

import threading
from pathlib import Path

from gateway.atomic import atomic_write

_write_lock = threading.Lock()


def host_pattern(port: int) -> str:
    return f"[localhost]:{port}"


def pinned_keys(known_hosts: Path, port: int) -> list[str]:
    """``TYPE BASE64`` of every key pinned for ``[localhost]:PORT``."""
    wanted = host_pattern(port)
    try:
        text = known_hosts.read_text()
    except FileNotFoundError:
        return []
    keys = []
    for line in text.splitlines():
        fields = line.split()
        # '#' comments; '@cert-authority' / '@revoked' markers are not pins
        if len(fields) < 3 or fields[0].startswith(("#", "@")):
            continue
        if wanted in fields[0].split(","):
            keys.append(f"{fields[1]} {fields[2]}")
    return keys


def pin(known_hosts: Path, ports: list[int], key: str) -> None:
    """Make ``key`` (``TYPE BASE64``) the only known key of each of ``ports``."""
    patterns = {host_pattern(p) for p in ports}
    with _write_lock:
        try:
            old = known_hosts.read_text().splitlines()
        except FileNotFoundError:
            old = []
        kept = [line for line in old if not _names_any(line, patterns)]
        new = [f"{host_pattern(p)} {key}" for p in sorted(set(ports))]
        known_hosts.parent.mkdir(parents=True, exist_ok=True)
        # World-readable like ~/.ssh/known_hosts: it holds public keys only, and the people
        # in the gateway's group run ssh with it.
        atomic_write(known_hosts, "\n".join(kept + new) + "\n", 0o644)


def _names_any(line: str, patterns: set[str]) -> bool:
    fields = line.split()
    if not fields or fields[0].startswith("#"):
        return False
    return any(name in patterns for name in fields[0].split(","))
