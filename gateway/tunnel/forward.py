"""Forwarding one local port to the Colab side over an authenticated connection.

asyncssh's own forwarder does the work (socket → channel and back, with flow control and
no task per chunk); this only chooses where it listens and the channel's window and
packet size. The endpoint advertises ``tunnel.window``/``tunnel.max_packet`` for the data
coming from Colab: larger packets mean fewer per-packet costs (decryption, MAC, Python
calls) per byte.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncssh
from asyncssh.listener import create_tcp_forward_listener

from gateway.config import TunnelConfig


async def open_forward_listener(
    conn: asyncssh.SSHServerConnection | None,
    listen_host: str,
    listen_port: int,
    dest_host: str,
    dest_port: int,
    tunnel: TunnelConfig,
    count: Callable[[str, int], None] = lambda direction, n: None,
) -> asyncssh.SSHListener:
    """Listen on ``listen_host:listen_port``; each connection becomes a forwarded-tcpip
    channel naming ``dest_host:dest_port``, the address the client asked to be bound (an
    OpenSSH client matches the channel to its ``-R`` by that address)."""
    if conn is None:
        raise OSError("connection closed")

    async def open_channel(session_factory: Any, orig_host: str, orig_port: int) -> Any:
        def counted() -> Any:
            # asyncssh's channel-side forwarder: what it receives came from Colab, what it
            # writes goes there. Wrapping its two methods costs one call per chunk.
            forwarder = session_factory()
            received, write = forwarder.data_received, forwarder.write

            def data_received(data: bytes, datatype: int | None = None) -> None:
                count("in", len(data))
                received(data, datatype)

            def write_out(data: bytes) -> None:
                count("out", len(data))
                write(data)

            forwarder.data_received, forwarder.write = data_received, write_out
            return forwarder

        return await conn.create_connection(
            counted,
            dest_host,
            dest_port,
            orig_host,
            orig_port,
            window=tunnel.window,
            max_pktsize=tunnel.max_packet,
        )

    loop = asyncio.get_running_loop()
    return await create_tcp_forward_listener(conn, loop, open_channel, listen_host, listen_port)
