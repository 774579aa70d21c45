"""Interface detection against the real kernel, in a network namespace of our own.

The kernel marks addresses itself: one still in duplicate address detection is
tentative, one whose preferred lifetime ran out is deprecated. Neither may be published.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from gateway.ddns.detect import InterfaceSource, ipv4_of

pytestmark = pytest.mark.root


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root to create a network namespace")
    name = f"ddns-{uuid.uuid4().hex[:8]}"
    try:
        ip("netns", "add", name)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot create a network namespace: {exc.stderr.decode().strip()}")
    try:
        yield name
    finally:
        ip("netns", "del", name)


DETECT = """
import sys
from gateway.ddns.detect import Detector, InterfaceSource
from gateway.ddns.outcomes import Detected
d = Detector({"ipv4": [InterfaceSource("v0")], "ipv6": [InterfaceSource("v0")]})
for family in ("ipv4", "ipv6"):
    r = d.detect(family)
    print(family, r.address if isinstance(r, Detected) else "FAILED " + r.reason)
"""


def detect_in(ns: str) -> dict[str, str]:
    done = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", DETECT],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return dict(line.split(" ", 1) for line in done.stdout.splitlines())


def test_only_a_stable_global_address_of_a_real_interface_counts(netns: str) -> None:
    ip("-n", netns, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
    ip("-n", netns, "link", "set", "v0", "up")
    # The peer stays down: without carrier, duplicate address detection never finishes,
    # so an address added without nodad stays tentative for the whole test.
    # Only unusable addresses first: deprecated, tentative (DAD running), private.
    ip("-n", netns, "-6", "addr", "add", "2a02:4b8:0:1::6/64", "dev", "v0", "nodad",
       "preferred_lft", "0")  # fmt: skip
    ip("-n", netns, "-6", "addr", "add", "2a02:4b8:0:1::7/64", "dev", "v0")
    ip("-n", netns, "-6", "addr", "add", "fd00::1/64", "dev", "v0", "nodad")
    ip("-n", netns, "-4", "addr", "add", "192.168.7.2/24", "dev", "v0")
    before = detect_in(netns)
    assert (
        before["ipv4"].startswith("FAILED") and "192.168.7.2, a private address" in before["ipv4"]
    )
    assert before["ipv6"].startswith("FAILED") and "fd00::1" in before["ipv6"]
    assert "2a02:4b8:0:1::6" not in before["ipv6"] and "2a02:4b8:0:1::7" not in before["ipv6"]
    # Then a stable global one, and a public IPv4 (as PPPoE on the Pi would have).
    ip("-n", netns, "-6", "addr", "add", "2a02:4b8:0:1::5/64", "dev", "v0", "nodad")
    ip("-n", netns, "-4", "addr", "flush", "dev", "v0")
    ip("-n", netns, "-4", "addr", "add", "81.2.69.160/24", "dev", "v0")
    assert detect_in(netns) == {"ipv4": "81.2.69.160", "ipv6": "2a02:4b8:0:1::5"}


def test_ipv4_of_reads_ip_json() -> None:
    sample = (
        '[{"ifname":"ppp0","addr_info":[{"family":"inet","local":"81.2.69.160",'
        '"prefixlen":32},{"family":"inet","local":"81.2.69.161","secondary":true}]}]'
    )
    assert ipv4_of(sample) == ["81.2.69.160"]
    source = InterfaceSource("ppp0", run_ip=lambda args: sample)
    assert source.address("ipv4") == "81.2.69.160"
