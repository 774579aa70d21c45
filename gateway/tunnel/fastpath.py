"""One per-packet cost asyncssh pays that the endpoint does not need, removed.

Once encryption is on, asyncssh sends an empty SSH_MSG_IGNORE packet in front of every
packet (``SSHConnection.send_packet``: "insert an ignore packet into the stream"; it is its
only use of MSG_IGNORE). That is the countermeasure RFC 4251 (9.3.1) describes for CBC
ciphers, whose IV an attacker could otherwise predict; the endpoint never offers CBC
(config.TUNNEL_CIPHERS: AES-GCM, chacha20-poly1305, AES-CTR), so for it the packet only
doubles the per-packet work: two encryptions, two log records and two ``send()`` calls
per data packet. Without it the endpoint used about a tenth less CPU per GB forwarded
(docs/tunnel.md, Performance); round trips showed no consistent change.

This patches a method of asyncssh's, so it checks what it relies on first (the method's
signature, the constant, the server class) and leaves asyncssh alone, with a warning, when
an asyncssh release differs. It drops only the exact packet asyncssh inserts (MSG_IGNORE,
empty string) and only on server connections: asyncssh clients in the same process are
unchanged.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import asyncssh
from asyncssh import connection as _connection
from asyncssh.constants import MSG_IGNORE

log = logging.getLogger("gateway.tunnel")

_EMPTY_STRING = b"\x00\x00\x00\x00"  # asyncssh's String(b""), the inserted packet's body
_applied = False
# asyncssh's own, as imported (before any patch of this module).
_ORIGINAL = getattr(_connection.SSHConnection, "send_packet", None)


def _compatible() -> bool:
    send_packet = _ORIGINAL
    if send_packet is None or MSG_IGNORE != 2:
        return False
    try:
        source = inspect.getsource(send_packet).replace(" ", "")
    except (OSError, TypeError):  # no source to check against (a frozen or compiled build)
        return False
    params = list(inspect.signature(send_packet).parameters)
    return params == ["self", "pkttype", "args", "handler"] and "send_packet(MSG_IGNORE" in source


def drop_inserted_ignore_packets() -> bool:
    """Make asyncssh's server connections send no SSH_MSG_IGNORE before each packet.
    Idempotent; False (and a warning) when this asyncssh is not the one it was made for."""
    global _applied
    if _applied:
        return True
    if not _compatible():
        log.warning(
            "asyncssh %s sends packets differently from what gateway/tunnel/fastpath.py "
            "expects; the endpoint keeps asyncssh's own packet path (a little more CPU "
            "per byte)",
            asyncssh.__version__,
        )
        return False
    original = _ORIGINAL
    assert original is not None
    server_class = _connection.SSHServerConnection

    def send_packet(self: Any, pkttype: int, *args: bytes, handler: Any = None) -> None:
        if pkttype == MSG_IGNORE and args == (_EMPTY_STRING,) and isinstance(self, server_class):
            return
        original(self, pkttype, *args, handler=handler)

    _connection.SSHConnection.send_packet = send_packet  # type: ignore[method-assign]
    _applied = True
    return True
