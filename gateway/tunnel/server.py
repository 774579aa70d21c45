"""The embedded SSH endpoint: it accepts the Colab VM's ``ssh -R`` and nothing else.

What a connection may do, and where asyncssh's defaults are overridden to get there:

- log in with public-key auth only, as ``tunnel.username``, with one session's tunnel key
  (the key decides the session);
- ask for the remote forwards configured for that session, which are bound on the Pi's
  127.0.0.1 whatever address it named (asyncssh would bind the client's choice);
- run exactly one command, ``register-hostkey <key>`` (see hostkeys.py).

Everything else is refused and logged, rate-limited: password and keyboard-interactive
auth, agent and X11 forwarding, PTYs, shells, other commands, subsystems, ``-L``/``-D``/
``-W``, tun/tap and Unix-socket forwarding. Who may start a handshake at all is the
Guard's business (guard.py).

Every string the peer chose (forward addresses, commands, disconnect reasons, error texts
built from them) reaches the log only through ``untrusted()``: escaped, so a client
cannot forge log lines with a newline or hide them with terminal escapes.

A port still held by an older connection of the same session (a VM that vanished without
closing its TCP connection) is handed to the newer, authenticated connection at once;
the old connection is closed. Keepalives free the ports of clients that vanish otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from gateway.config import Config, SessionConfig
from gateway.tunnel import cipher_choice, fastpath, hostkeys
from gateway.tunnel.forward import open_forward_listener
from gateway.tunnel.guard import Guard
from gateway.tunnel.keys import KeyStore
from gateway.tunnel.known_sources import FILE_NAME as KNOWN_SOURCES_FILE
from gateway.tunnel.known_sources import KnownSources
from gateway.untrusted import quoted
from gateway.vocabulary import (
    NO_COUNTERS,
    TUNNEL_BYTES,
    TUNNEL_PENALISED,
    TUNNEL_REFUSED,
    Counters,
)

log = logging.getLogger("gateway.tunnel")

# Chosen so that ssh-audit reports no [fail] and OpenSSH 8.9 (Colab's Ubuntu 22.04) and
# later connect: no SHA-1, no NIST curves, no CBC, no non-etm MACs.
# Hybrid post-quantum key exchange first, where this asyncssh has it: ML-KEM through
# `cryptography` (OpenSSH 9.9+ clients choose it), sntrup761 only with liboqs installed
# (OpenSSH 9.0+ would choose it). curve25519 stays for OpenSSH 8.2-8.9 (Colab, focal).
PREFERRED_KEX = (
    "mlkem768x25519-sha256",
    "sntrup761x25519-sha512",
    "sntrup761x25519-sha512@openssh.com",
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
)


def kex_algorithms() -> list[str]:
    """PREFERRED_KEX less what the installed asyncssh (and its libraries) cannot do."""
    from asyncssh.kex import get_kex_algs

    available = {name.decode() for name in get_kex_algs()}
    return [name for name in PREFERRED_KEX if name in available]


KEX_ALGS = kex_algorithms()
MAC_ALGS = ["hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com"]
SIGNATURE_ALGS = ["ssh-ed25519"]
MAX_AUTH_TRIES = 6  # OpenSSH's MaxAuthTries
LOOPBACK = "127.0.0.1"


@dataclass
class Forward:
    owner: Connection
    port: int
    listener: asyncssh.SSHListener


@dataclass
class SessionLinks:
    """What the endpoint knows about one session right now."""

    connections: set[Connection] = field(default_factory=set)
    hostkey_fingerprint: str | None = None


class Endpoint:
    def __init__(
        self,
        config: Config,
        keys: KeyStore,
        known_hosts: Path,
        on_change: Callable[[str], None] = lambda session: None,
        *,
        host: str | None = None,
        port: int | None = None,
        known_sources: Path | None = None,
        cpuinfo: Path = cipher_choice.CPUINFO,
        counters: Counters = NO_COUNTERS,
    ) -> None:
        self.config = config
        self.tunnel = config.tunnel
        self.keys = keys
        self.known_hosts = known_hosts
        self.on_change = on_change
        self.counters = counters
        self.host = self.tunnel.listen_host if host is None else host
        self.port = self.tunnel.listen_port if port is None else port
        # An explicit tunnel.ciphers wins; otherwise the cheapest per byte on this CPU.
        self.ciphers = (
            list(self.tunnel.ciphers)
            if self.tunnel.ciphers is not None
            else cipher_choice.ciphers_for_this_machine(cpuinfo)
        )
        # Who logged in before lives in the state directory, next to known_hosts.
        known = KnownSources(
            known_sources or known_hosts.with_name(KNOWN_SOURCES_FILE),
            self.tunnel.known_sources_max,
        )
        self.guard = Guard(self.tunnel, known=known)
        self.refusals = self.guard.refusals
        self.forwards: dict[int, Forward] = {}
        self.sessions: dict[str, SessionLinks] = {s.name: SessionLinks() for s in config.sessions}
        self.connections: set[Connection] = set()
        self._public_keys: dict[str, tuple[object, asyncssh.SSHKey | None]] = {}
        self._server: asyncssh.SSHAcceptor | None = None
        for session in config.sessions:
            ssh = session.forwards["ssh"].local
            self.sessions[session.name].hostkey_fingerprint = hostkeys.pinned_fingerprint(
                known_hosts, ssh
            )

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        tunnel = self.tunnel
        fastpath.drop_inserted_ignore_packets()
        self._server = await asyncssh.create_server(
            lambda: Connection(self),
            self.host,
            self.port,
            family=socket.AF_INET6 if ":" in self.host else socket.AF_INET,
            reuse_address=True,
            server_host_keys=[self.keys.host_key()],
            kex_algs=KEX_ALGS,
            encryption_algs=self.ciphers,
            mac_algs=MAC_ALGS,
            compression_algs=["none"],
            signature_algs=SIGNATURE_ALGS,
            allow_pty=False,
            agent_forwarding=False,
            x11_forwarding=False,
            login_timeout=tunnel.login_timeout,
            keepalive_interval=tunnel.keepalive_interval,
            keepalive_count_max=tunnel.keepalive_count_max,
            server_version="colab-gateway",
        )
        sockets = self._server.sockets
        if self.port == 0 and sockets:
            self.port = sockets[0].getsockname()[1]
        log.info(
            "listening on %s:%d for Colab's tunnel (key exchange: %s; ciphers: %s%s)",
            self.host,
            self.port,
            ", ".join(KEX_ALGS),
            ", ".join(self.ciphers),
            "" if tunnel.ciphers is not None else ", chosen for this CPU",
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close()
        for forward in list(self.forwards.values()):
            forward.listener.close()  # the ports are free when this returns
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # -- keys ----------------------------------------------------------------------------------

    def session_for_key(self, key: asyncssh.SSHKey) -> str | None:
        data = key.public_data
        for session in self.config.sessions:
            current = self.current_key(session.name)
            if current is not None and current.public_data == data:
                return session.name
        return None

    def current_key(self, session: str) -> asyncssh.SSHKey | None:
        # Re-read only when the file changed: rotation by the CLI takes effect at once.
        generation = self.keys.generation(session)
        cached = self._public_keys.get(session)
        if cached is None or cached[0] != generation:
            cached = (generation, self.keys.tunnel_public_key(session))
            self._public_keys[session] = cached
        return cached[1]

    def drop_rotated(self) -> None:
        """Close connections that logged in with a key that has since been replaced."""
        for conn in list(self.connections):
            if conn.session is None or conn.key_data is None:
                continue
            current = self.current_key(conn.session)
            if current is None or current.public_data != conn.key_data:
                log.warning(
                    "session %s: closing the connection from %s: its tunnel key was rotated",
                    conn.session,
                    conn.peer,
                )
                conn.close()

    # -- facts ---------------------------------------------------------------------------------

    def session_config(self, name: str) -> SessionConfig:
        return self.config.session(name)

    def facts(self, session: str) -> dict[str, Any]:
        """TunnelFacts fields for ``session`` (see state.py)."""
        links = self.sessions[session]
        ssh_port = self.session_config(session).forwards["ssh"].local
        ports = sorted(p for p, f in self.forwards.items() if f.owner.session == session)
        holder = self.forwards.get(ssh_port)
        authenticated = [c for c in links.connections if c.session == session]
        peer = holder.owner.peer_text if holder else None
        if peer is None and authenticated:
            peer = max(authenticated, key=lambda c: c.serial).peer_text
        return {
            "up": holder is not None,
            "peer": peer,
            "forwards": ports,
            "hostkey_fingerprint": links.hostkey_fingerprint,
            "connections": len(authenticated),
        }

    def changed(self, session: str | None) -> None:
        if session is not None:
            self.on_change(session)

    # -- forwards ------------------------------------------------------------------------------

    async def bind(self, owner: Connection, requested_host: str, port: int) -> Any:
        session = owner.session
        assert session is not None
        held = self.forwards.get(port)
        if held is not None and held.owner is owner:
            owner.refuse(f"a second forward of port {port}")
            return False
        if held is not None:
            log.warning(
                "session %s: port %d is still held by an older connection from %s; closing "
                "it and handing the port to the new one from %s",
                session,
                port,
                held.owner.peer_text,
                owner.peer_text,
            )
            held.owner.close()
            held.listener.close()  # frees the socket now, not when the old client answers
            self.forwards.pop(port, None)
        if owner.closed:
            return False
        try:
            listener = await open_forward_listener(
                owner.conn,
                LOOPBACK,
                port,
                requested_host,
                port,
                self.tunnel,
                lambda direction, n: self.counters.count(
                    TUNNEL_BYTES, n, session=session, direction=direction
                ),
            )
        except OSError as exc:
            log.error(
                "session %s: cannot listen on %s:%d for the tunnel: %s; is another program "
                "using that port? Free it or change the session's forwards",
                session,
                LOOPBACK,
                port,
                exc.strerror or exc,
            )
            return False
        if owner.is_closed():  # it went away while the listener was being set up
            listener.close()
            return False
        tracked = _TrackedListener(listener, lambda: self._unbound(owner, port))
        self.forwards[port] = Forward(owner, port, tracked)
        log.info(
            "session %s: forwarding %s:%d to Colab's port %d (from %s)",
            session,
            LOOPBACK,
            port,
            self._colab_port(session, port),
            owner.peer_text,
        )
        self.changed(session)
        return tracked

    def _colab_port(self, session: str, local: int) -> int | None:
        for fwd in self.session_config(session).forwards.values():
            if fwd.local == local:
                return fwd.colab
        return None

    def _unbound(self, owner: Connection, port: int) -> None:
        current = self.forwards.get(port)
        if current is not None and current.owner is owner:
            del self.forwards[port]
            log.info("session %s: port %d released", owner.session, port)
            self.changed(owner.session)

    # -- host keys -----------------------------------------------------------------------------

    def register_hostkey(self, owner: Connection, key: asyncssh.SSHKey) -> list[int]:
        session = owner.session
        assert session is not None
        # Every forward that reaches the VM's sshd (the "ssh" forward's Colab port, which the
        # cell's sshd listens on), not a hard-coded 22: the port is the user's to change.
        forwards = self.session_config(session).forwards
        sshd_port = forwards["ssh"].colab
        ports = [f.local for f in forwards.values() if f.colab == sshd_port]
        hostkeys.pin(self.known_hosts, ports, key)
        fingerprint = key.get_fingerprint("sha256")
        self.sessions[session].hostkey_fingerprint = fingerprint
        log.info(
            "session %s: pinned Colab's host key %s for %s",
            session,
            fingerprint,
            ", ".join(hostkeys.host_pattern(p) for p in ports),
        )
        self.changed(session)
        return ports


class _TrackedListener(asyncssh.SSHListener):
    """Tells the endpoint when asyncssh closes a forward (cancel request, disconnect)."""

    def __init__(self, inner: asyncssh.SSHListener, on_close: Callable[[], None]) -> None:
        super().__init__()
        self.inner = inner
        self._on_close: Callable[[], None] | None = on_close

    def get_port(self) -> int:
        return self.inner.get_port()

    def close(self) -> None:
        self.inner.close()
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            on_close()

    async def wait_closed(self) -> None:
        await self.inner.wait_closed()


class Connection(asyncssh.SSHServer):
    """One TCP connection to the endpoint, from handshake to close."""

    _serials = 0

    def __init__(self, endpoint: Endpoint) -> None:
        Connection._serials += 1
        self.serial = Connection._serials
        self.endpoint = endpoint
        self.conn: asyncssh.SSHServerConnection | None = None
        self.peer = "unknown"
        self.peer_port = 0
        self.admitted = False
        self.session: str | None = None
        self.key_data: bytes | None = None
        self._offered: tuple[str, bytes] | None = None
        self.auth_tries = 0
        self.closed = False

    @property
    def peer_text(self) -> str:
        host = f"[{self.peer}]" if ":" in self.peer else self.peer
        return f"{host}:{self.peer_port}"

    # -- connection ----------------------------------------------------------------------------

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername") or ("unknown", 0)
        self.peer, self.peer_port = str(peer[0]), int(peer[1])
        reason = self.endpoint.guard.admit(self.peer)
        if reason is not None:
            self.endpoint.refusals.log(f"refused a connection from {self.peer_text}: {reason}")
            self.endpoint.counters.count(TUNNEL_REFUSED, reason=refusal_kind(reason))
            # Closed before asyncssh sends its banner: a refused source learns nothing, and
            # costs no key exchange.
            self.closed = True
            conn.abort()
            return
        self.admitted = True
        self.endpoint.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.endpoint.connections.discard(self)
        if self.session is None:
            if self.admitted:
                why = untrusted(_reason(exc)) if exc else "closed before logging in"
                self.endpoint.guard.failed(self.peer, f"no login ({why})")
                self.endpoint.counters.gauge(TUNNEL_PENALISED, len(self.endpoint.guard.penalties))
            return
        links = self.endpoint.sessions.get(self.session)
        if links is not None:
            links.connections.discard(self)
        log.info(
            "session %s: connection from %s closed%s",
            self.session,
            self.peer_text,
            f" ({untrusted(_reason(exc))})" if _reason(exc) else "",
        )
        self.endpoint.changed(self.session)

    def close(self) -> None:
        self.closed = True
        if self.conn is not None:
            self.conn.abort()

    def is_closed(self) -> bool:
        return self.closed

    def refuse(self, what: str) -> None:
        who = f"session {self.session}" if self.session else "an unauthenticated client"
        self.endpoint.refusals.log(f"refused {what} from {who} at {self.peer_text}")
        self.endpoint.counters.count(TUNNEL_REFUSED, reason="request")

    # -- authentication ------------------------------------------------------------------------

    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def host_based_auth_supported(self) -> bool:
        return False

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        self.auth_tries += 1
        if self.auth_tries > MAX_AUTH_TRIES and self.conn is not None:
            self.endpoint.refusals.log(
                f"{self.peer_text}: more than {MAX_AUTH_TRIES} keys offered; disconnecting"
            )
            asyncio.get_running_loop().call_soon(self.close)
            return False
        if username != self.endpoint.tunnel.username:
            return False
        session = self.endpoint.session_for_key(key)
        if session is None:
            return False
        self._offered = (session, key.public_data)
        return True

    def auth_completed(self) -> None:
        assert self._offered is not None
        self.session, self.key_data = self._offered
        self.endpoint.guard.authenticated(self.peer)
        self.endpoint.counters.gauge(TUNNEL_PENALISED, len(self.endpoint.guard.penalties))
        self.endpoint.sessions[self.session].connections.add(self)
        log.info("session %s: Colab logged in from %s", self.session, self.peer_text)
        self.endpoint.changed(self.session)

    # -- requests ------------------------------------------------------------------------------

    def server_requested(self, listen_host: str, listen_port: int) -> Any:
        session = self.session
        if session is None:
            return False
        allowed = {f.local for f in self.endpoint.session_config(session).forwards.values()}
        if listen_port not in allowed:
            self.refuse(
                f"a remote forward of {untrusted(listen_host)} port {listen_port} (configured: "
                f"{', '.join(str(p) for p in sorted(allowed))})"
            )
            return False
        return self.endpoint.bind(self, listen_host, listen_port)

    def connection_requested(self, dest_host: str, dest_port: int, *_: object) -> bool:
        self.refuse(f"a local forward (-L/-D/-W) to {untrusted(dest_host)} port {dest_port}")
        return False

    def unix_connection_requested(self, dest_path: str) -> bool:
        self.refuse(f"a Unix socket forward to {untrusted(dest_path)}")
        return False

    def unix_server_requested(self, listen_path: str) -> bool:
        self.refuse(f"a remote Unix socket forward of {untrusted(listen_path)}")
        return False

    def tun_requested(self, unit: int | None) -> bool:
        self.refuse("tun forwarding")
        return False

    def tap_requested(self, unit: int | None) -> bool:
        self.refuse("tap forwarding")
        return False

    def session_requested(self) -> asyncssh.SSHServerSession[str]:
        return _CommandSession(self)


class _CommandSession(asyncssh.SSHServerSession[str]):
    """A session channel whose only use is ``register-hostkey <key>``."""

    def __init__(self, owner: Connection) -> None:
        self.owner = owner
        self.chan: asyncssh.SSHServerChannel[str] | None = None
        self.answer: tuple[int, str] = (1, "")

    def connection_made(self, chan: asyncssh.SSHServerChannel[str]) -> None:
        self.chan = chan

    def pty_requested(self, term_type: str, term_size: Any, term_modes: Any) -> bool:
        self.owner.refuse("a PTY")
        return False

    def shell_requested(self) -> bool:
        self.owner.refuse("a shell")
        return False

    def subsystem_requested(self, subsystem: str) -> bool:
        self.owner.refuse(f"the subsystem {untrusted(subsystem, 40)}")
        return False

    def exec_requested(self, command: str) -> bool:
        if command.split(" ", 1)[0] != hostkeys.COMMAND:
            self.owner.refuse(f"the command {untrusted(command, 60)}")
            return False
        try:
            key = hostkeys.parse_command(command)
        except hostkeys.HostKeyError as exc:
            self.owner.refuse(f"a host key ({untrusted(str(exc))})")
            self.answer = (1, f"colab-gateway: register-hostkey refused: {exc}\n")
            return True
        ports = self.owner.endpoint.register_hostkey(self.owner, key)
        pinned = ", ".join(hostkeys.host_pattern(p) for p in ports)
        self.answer = (0, f"colab-gateway: pinned {key.get_fingerprint()} for {pinned}\n")
        return True

    def session_started(self) -> None:
        assert self.chan is not None
        code, text = self.answer
        if code == 0:
            self.chan.write(text)
        else:
            self.chan.write_stderr(text)
        self.chan.exit(code)


def untrusted(text: str, limit: int = 200) -> str:
    """A string the peer chose, fit for one log line: quoted and escaped by the one gate,
    ``gateway.untrusted``."""
    return quoted(text, limit)


def _reason(exc: Exception | None) -> str:
    if exc is None:
        return ""
    text = str(exc).strip()
    return text or type(exc).__name__


def describe_algorithms(ciphers: Sequence[str]) -> str:
    return f"kex {KEX_ALGS[0]}, ciphers {', '.join(ciphers)}, MACs {', '.join(MAC_ALGS)}"


def refusal_kind(reason: str) -> str:
    """The refusals metric's label for a reason ``Guard.admit`` gave."""
    if reason.startswith("penalised"):
        return "penalised"
    if "max_unauthenticated_per_source" in reason:
        return "per_source"
    return "random_drop"
