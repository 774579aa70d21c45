"""Named network namespaces for the simulated Colab: create, enter, list, delete.

The demo and the end-to-end tests play two hosts on one machine: "the Pi" and "the Colab
VM", each in a network namespace this module creates, joined by a veth pair whose
addresses exist only inside those namespaces. Nothing here adds an address, a route or an
interface to the machine's own namespace.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000

# 198.18.0.0/15 is reserved for network benchmark tests (RFC 2544): never routed anywhere,
# and these addresses live only inside the namespace pair, so every pair can reuse them.
PI_ADDRESS = "198.18.0.1"
VM_ADDRESS = "198.18.0.2"
PREFIX_LEN = 30
# Both ends carry the same name, each in its own namespace, never in the machine's.
LINK_NAME = "uplink0"


class NamespaceError(RuntimeError):
    """A namespace could not be created or entered; the message says what to do."""


def require_root(purpose: str) -> None:
    if os.geteuid() != 0:
        raise NamespaceError(
            f"{purpose} needs root: it creates network namespaces (`ip netns add`) for the "
            "simulated Pi and Colab VM. Run it with sudo, e.g. `sudo make demo`."
        )


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise NamespaceError(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")
    return result


def exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def add(name: str) -> None:
    _ip("netns", "add", name)
    _ip("-n", name, "link", "set", "lo", "up")


def delete(name: str) -> None:
    """Kill what still runs inside, then delete; a missing namespace is fine."""
    if not exists(name):
        return
    for pid in pids(name):
        if pid != os.getpid():  # a thread of ours may still be inside: never kill ourselves
            _kill(pid)
    _ip("netns", "delete", name, check=False)


def pids(name: str) -> list[int]:
    """Every process whose network namespace is ``name`` (all of them were started by us)."""
    result = _ip("netns", "pids", name, check=False)
    return [int(p) for p in result.stdout.split() if p.isdigit()]


def _kill(pid: int) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, 9)


def link(pi_ns: str, vm_ns: str) -> None:
    """Join two namespaces with a veth pair: the Pi's end .1, the VM's end .2."""
    _ip(
        "-n", pi_ns, "link", "add", LINK_NAME, "type", "veth",
        "peer", "name", LINK_NAME, "netns", vm_ns,
    )  # fmt: skip
    _ip("-n", pi_ns, "addr", "add", f"{PI_ADDRESS}/{PREFIX_LEN}", "dev", LINK_NAME)
    _ip("-n", vm_ns, "addr", "add", f"{VM_ADDRESS}/{PREFIX_LEN}", "dev", LINK_NAME)
    _ip("-n", pi_ns, "link", "set", LINK_NAME, "up")
    _ip("-n", vm_ns, "link", "set", LINK_NAME, "up")


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise NamespaceError(f"setns into a network namespace failed: {os.strerror(errno)}")


@contextmanager
def entered(name: str) -> Iterator[None]:
    """Move the calling thread into namespace ``name``, and back afterwards.

    Threads and processes started meanwhile stay in ``name``: the demo enters the Pi's
    namespace before it starts the daemon, the simulated page's server and tmux.
    """
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(NETNS_DIR / name, os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(original)
    finally:
        os.close(original)


def exec_prefix(name: str) -> list[str]:
    return ["ip", "netns", "exec", name]
