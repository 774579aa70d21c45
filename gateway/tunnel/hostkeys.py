"""Pinning the Colab VM's sshd host key for the Pi's own ``ssh -p <port> root@localhost``.

The VM sends its key over its authenticated tunnel connection with the one command the
endpoint allows, ``register-hostkey <type> <base64> [comment]``. The gateway writes it to
its own known_hosts file as ``[localhost]:<port> <type> <base64>`` for every local port of
that session whose Colab side is port 22, replacing what was there for those ports: a new
VM brings a new key, and the Pi's ssh keeps checking strictly without ever seeing
"REMOTE HOST IDENTIFICATION HAS CHANGED".
"""

from __future__ import annotations

import re
from pathlib import Path

import asyncssh

from gateway import known_hosts as known_hosts_file
from gateway.known_hosts import host_pattern

__all__ = [
    "COMMAND",
    "HostKeyError",
    "host_pattern",
    "key_line",
    "parse_command",
    "pin",
    "pinned_fingerprint",
]

COMMAND = "register-hostkey"
MAX_COMMAND_BYTES = 4096  # an RSA-4096 public key is ~750 bytes; nothing legitimate is larger
# The host key types OpenSSH's sshd offers (no certificates, no DSA).
ALLOWED_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "ssh-rsa",
    }
)
_TOKEN = re.compile(r"^[A-Za-z0-9+/=@.-]+$")


class HostKeyError(ValueError):
    """The offered host key is not acceptable; the message says why."""


def parse_command(command: str) -> asyncssh.SSHKey:
    """Validate ``register-hostkey <type> <base64> [comment]`` and return the key."""
    if len(command.encode("utf-8", "replace")) > MAX_COMMAND_BYTES:
        raise HostKeyError(f"command longer than {MAX_COMMAND_BYTES} bytes")
    parts = command.split()
    if not parts or parts[0] != COMMAND:
        raise HostKeyError(f"only '{COMMAND} <type> <base64>' is allowed here")
    if len(parts) < 3:
        raise HostKeyError(f"usage: {COMMAND} <type> <base64> [comment]")
    key_type, blob = parts[1], parts[2]
    if key_type not in ALLOWED_TYPES:
        raise HostKeyError(
            f"host key type {key_type[:40]!r} is not accepted; send one of "
            + ", ".join(sorted(ALLOWED_TYPES))
        )
    if not _TOKEN.match(blob):
        raise HostKeyError("the key is not base64")
    try:
        key = asyncssh.import_public_key(f"{key_type} {blob}")
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise HostKeyError(f"not a valid {key_type} public key: {exc}") from None
    if key.get_algorithm() != key_type:
        raise HostKeyError(f"the key inside is {key.get_algorithm()}, not {key_type}")
    if key_type == "ssh-rsa" and _rsa_bits(key) < 2048:
        raise HostKeyError("RSA host keys shorter than 2048 bits are not accepted")
    return key


def _rsa_bits(key: asyncssh.SSHKey) -> int:
    pyca = getattr(getattr(key, "_key", None), "pyca_key", None)
    size = getattr(pyca, "key_size", None)
    return int(size) if size is not None else 0


def key_line(key: asyncssh.SSHKey) -> str:
    """``type base64`` without the comment (a comment from the VM is not worth keeping)."""
    key_type, blob = key.export_public_key("openssh").decode().split()[:2]
    return f"{key_type} {blob}"


def pin(known_hosts: Path, ports: list[int], key: asyncssh.SSHKey) -> None:
    """Make ``key`` the only known key of ``[localhost]:<port>`` for each of ``ports``."""
    known_hosts_file.pin(known_hosts, ports, key_line(key))


def pinned_fingerprint(known_hosts: Path, port: int) -> str | None:
    """The fingerprint of the key currently pinned for ``port``, if any."""
    for key in known_hosts_file.pinned_keys(known_hosts, port):
        try:
            return asyncssh.import_public_key(key).get_fingerprint()
        except (asyncssh.KeyImportError, ValueError):
            return None
    return None
