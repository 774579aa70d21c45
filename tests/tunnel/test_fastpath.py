"""The endpoint sends no SSH_MSG_IGNORE in front of each packet (gateway/tunnel/fastpath.py),
seen by a real OpenSSH client, which logs every one it receives at -vvv."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers.tunnel import free_port, make_config, running_endpoint, ssh_keygen

from gateway.tunnel import fastpath

RECEIVED_IGNORE = "Received SSH2_MSG_IGNORE"


def _ssh_vvv(port: int, key: Path, known_hosts: str, user: str, command: str) -> str:
    result = subprocess.run(
        [
            "ssh",
            "-vvv",
            "-F",
            "/dev/null",
            "-p",
            str(port),
            "-i",
            str(key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            f"UserKnownHostsFile={known_hosts}",
            "-o",
            f"StrictHostKeyChecking={'no' if known_hosts == '/dev/null' else 'yes'}",
            f"{user}@127.0.0.1",
            command,
        ],
        capture_output=True,
        text=True,
        timeout=20,
        stdin=subprocess.DEVNULL,
    )
    return result.stdout + result.stderr


def test_openssh_receives_no_ignore_packets_from_the_endpoint(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    with running_endpoint(config, tmp_path / "state") as r:
        key = tmp_path / "client-key"
        key.write_text(r.keys.tunnel_private_text("colab"))
        key.chmod(0o600)
        known = tmp_path / "known"
        known.write_text(f"[127.0.0.1]:{r.port} {r.keys.host_info().public}\n")
        out = _ssh_vvv(r.port, key, str(known), "colab", "register-hostkey")
    assert "usage: register-hostkey" in out, out  # logged in, a channel, data, exit status
    assert out.count(RECEIVED_IGNORE) == 0, out


# An asyncssh server without the patch, in its own process: what the client sees otherwise.
PLAIN_SERVER = textwrap.dedent("""\
    import asyncio, sys, asyncssh

    class Server(asyncssh.SSHServer):
        def begin_auth(self, username): return True
        def public_key_auth_supported(self): return True
        def validate_public_key(self, username, key): return True

    async def main():
        await asyncssh.create_server(
            Server, "127.0.0.1", int(sys.argv[1]), server_host_keys=[sys.argv[2]],
            process_factory=lambda p: (p.stdout.write("done\\n"), p.exit(0)))
        await asyncio.sleep(60)

    asyncio.run(main())
""")


def test_without_it_asyncssh_sends_one_before_each_packet(tmp_path: Path) -> None:
    """The control: the same client counts them from an unpatched asyncssh server."""
    port = free_port()
    host_key = ssh_keygen(tmp_path / "host")
    server = subprocess.Popen(
        [sys.executable, "-c", PLAIN_SERVER, str(port), str(host_key)],
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the plain asyncssh server did not start"
                assert server.poll() is None, server.stderr.read() if server.stderr else ""
                time.sleep(0.05)
        out = _ssh_vvv(port, ssh_keygen(tmp_path / "client"), "/dev/null", "u", "cmd")
    finally:
        server.kill()
        server.wait(5)
        if server.stderr:
            server.stderr.close()
    assert "done" in out, out
    assert out.count(RECEIVED_IGNORE) >= 3, out  # one per packet after NEWKEYS


def test_an_asyncssh_that_differs_is_left_alone_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(fastpath, "_applied", False)
    monkeypatch.setattr(fastpath, "_compatible", lambda: False)
    with caplog.at_level(logging.WARNING, logger="gateway.tunnel"):
        assert fastpath.drop_inserted_ignore_packets() is False
    assert "keeps asyncssh's own packet path" in caplog.text


def test_the_check_accepts_the_installed_asyncssh() -> None:
    # If this fails after an asyncssh upgrade: re-read its send_packet, then fastpath.py.
    assert fastpath._compatible()
