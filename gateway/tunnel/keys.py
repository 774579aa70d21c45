"""The endpoint's host key and one tunnel key pair per session, kept in ``paths.keys_dir``.

Layout (every file 0600, the directory 0700):

    host_ed25519 / host_ed25519.pub            the endpoint's host key, pinned by Colab
    tunnel-<session> / tunnel-<session>.pub    the key Colab logs in with; its private
                                               half is stored as a Colab secret

Keys are made on first use by whoever needs them first (the daemon at start, or
``colab-gateway keys``/``snippet``); an exclusive lock on the directory keeps two
processes from generating different keys at the same time. Rotation replaces a session's
pair; the endpoint notices the new public key at the next login and drops connections
that logged in with the old one (see ``KeyStore.generation``).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from gateway.atomic import atomic_write

HOST_KEY_NAME = "host_ed25519"
KEY_ALGORITHM = "ssh-ed25519"
# The one-line form of a private key in a Colab secret: this prefix, then the OpenSSH
# private key file base64-encoded. A pasted multi-line key can lose its line breaks in
# Colab's Secrets panel (googlecolab/colabtools#5586); one line has none to lose. The
# bootstrap (bootstrap.sh, read_tunnel_key) decodes it and still accepts the PEM form.
SECRET_PREFIX = "openssh-base64:"  # noqa: S105  (a format name, not a secret)


def secret_name(session: str) -> str:
    """The name of the Colab secret that holds ``session``'s tunnel private key.

    Colab secret names are identifiers, so '-' becomes '_'.
    """
    return "colab_gateway_" + session.replace("-", "_")


def secret_value(private_key_text: str) -> str:
    """The one-line Colab secret value for an OpenSSH private key file's text."""
    return SECRET_PREFIX + base64.b64encode(private_key_text.encode()).decode()


@dataclass(frozen=True)
class KeyInfo:
    path: Path  # the private half
    public: str  # one OpenSSH line: "ssh-ed25519 AAAA… comment"
    fingerprint: str  # SHA256:…

    @property
    def public_path(self) -> Path:
        return self.path.with_name(self.path.name + ".pub")


class KeyStore:
    def __init__(self, keys_dir: Path) -> None:
        self.dir = keys_dir

    # -- paths ---------------------------------------------------------------------------------

    @property
    def host_key_path(self) -> Path:
        return self.dir / HOST_KEY_NAME

    def tunnel_key_path(self, session: str) -> Path:
        return self.dir / f"tunnel-{session}"

    # -- creation ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.dir / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def ensure(self, sessions: list[str]) -> list[Path]:
        """Generate whatever key is missing; return the private-key paths created."""
        created: list[Path] = []
        with self._locked():
            for path, comment in [(self.host_key_path, "colab-gateway endpoint")] + [
                (self.tunnel_key_path(s), f"colab-gateway tunnel {s}") for s in sessions
            ]:
                if not path.exists():
                    _write_pair(path, comment)
                    created.append(path)
        return created

    def rotate(self, session: str) -> KeyInfo:
        """Replace ``session``'s tunnel key pair; the old one stops working at once."""
        with self._locked():
            _write_pair(self.tunnel_key_path(session), f"colab-gateway tunnel {session}")
        return self.tunnel_key(session)

    # -- reading -------------------------------------------------------------------------------

    def host_key(self) -> asyncssh.SSHKey:
        return asyncssh.read_private_key(self.host_key_path)

    def host_info(self) -> KeyInfo:
        return _info(self.host_key_path)

    def tunnel_key(self, session: str) -> KeyInfo:
        return _info(self.tunnel_key_path(session))

    def tunnel_public_key(self, session: str) -> asyncssh.SSHKey | None:
        """The session's current public key, or None when it has none yet."""
        try:
            return asyncssh.read_public_key(self.tunnel_key(session).public_path)
        except FileNotFoundError:
            return None

    def tunnel_private_text(self, session: str) -> str:
        return self.tunnel_key_path(session).read_text()

    def tunnel_secret(self, session: str) -> str:
        """``session``'s private key as the one-line value of its Colab secret."""
        return secret_value(self.tunnel_private_text(session))

    def generation(self, session: str) -> tuple[int, int] | None:
        """Changes whenever the session's key is replaced (inode and mtime of the .pub)."""
        try:
            st = os.stat(self.tunnel_key(session).public_path)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns


def _write_pair(path: Path, comment: str) -> None:
    key = asyncssh.generate_private_key(KEY_ALGORITHM, comment=comment)
    # Public half first: a reader never finds a private key without its .pub.
    atomic_write(path.with_name(path.name + ".pub"), key.export_public_key("openssh"), 0o600)
    atomic_write(path, key.export_private_key("openssh"), 0o600)


def _info(path: Path) -> KeyInfo:
    public = asyncssh.read_public_key(path.with_name(path.name + ".pub"))
    line = public.export_public_key("openssh").decode().strip()
    return KeyInfo(path=path, public=line, fingerprint=public.get_fingerprint("sha256"))
