"""Forwarding one local port to the Colab side over an authenticated connection."""

from __future__ import annotations

import asyncssh

from gateway.config import TunnelConfig


async def open_forward_listener(
    conn: asyncssh.SSHServerConnection | None,
    listen_host: str,
    listen_port: int,
    dest_host: str,
    dest_port: int,
    tunnel: TunnelConfig,
) -> asyncssh.SSHListener:
    """Listen on ``listen_host:listen_port``; each connection becomes a forwarded-tcpip
    channel naming ``dest_host:dest_port``, the address the client asked to be bound (an
    OpenSSH client matches the channel to its ``-R`` by that address)."""
    if conn is None:
        raise OSError("connection closed")
    return await conn.forward_local_port(listen_host, listen_port, dest_host, dest_port)
