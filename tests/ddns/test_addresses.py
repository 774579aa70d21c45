"""Strict parsing: only a global unicast address of the family asked for is accepted."""

from __future__ import annotations

import pytest

from gateway.ddns.addresses import NotAnAddress, parse_public, same_address

ACCEPTED = [
    ("81.2.69.160\n", "ipv4", "81.2.69.160"),
    ("  8.8.4.4  ", "ipv4", "8.8.4.4"),
    ("2a02:8070:1::7", "ipv6", "2a02:8070:1::7"),
    ("2A02:8070:0001:0000::0007\r\n", "ipv6", "2a02:8070:1::7"),
]

REJECTED = [
    ("10.1.2.3", "ipv4", "private"),
    ("172.16.5.4", "ipv4", "private"),
    ("192.168.1.20", "ipv4", "private"),
    ("100.64.0.1", "ipv4", "carrier-grade NAT"),
    ("100.127.255.254", "ipv4", "carrier-grade NAT"),
    ("169.254.10.1", "ipv4", "link-local"),
    ("127.0.0.1", "ipv4", "loopback"),
    ("192.0.2.1", "ipv4", "documentation"),
    ("198.51.100.7", "ipv4", "documentation"),
    ("203.0.113.7", "ipv4", "documentation"),
    ("0.0.0.0", "ipv4", "unspecified"),
    ("224.0.0.251", "ipv4", "multicast"),
    ("240.0.0.1", "ipv4", "reserved"),
    ("255.255.255.255", "ipv4", "reserved"),
    ("::1", "ipv6", "loopback"),
    ("fe80::1", "ipv6", "link-local"),
    ("fd12:3456::1", "ipv6", "unique local"),
    ("2001:db8::1", "ipv6", "documentation"),
    ("::ffff:81.2.69.160", "ipv6", "IPv4-mapped"),
    ("ff02::1", "ipv6", "multicast"),
    ("::", "ipv6", "unspecified"),
    ("2a02:8070:1::7", "ipv4", "IPv6 address, not IPv4"),
    ("81.2.69.160", "ipv6", "IPv4 address, not IPv6"),
    ("<html><body>81.2.69.160</body></html>", "ipv4", "HTML page"),
    ("<!DOCTYPE html>\n<title>502</title>", "ipv4", "HTML page"),
    ("81.2.69.160 8.8.8.8", "ipv4", "not one address"),
    ("81.2.69.160\n8.8.8.8", "ipv4", "not one address"),
    ("hello", "ipv4", "not an IP address"),
    ("81.2.69.160:443", "ipv4", "not an IP address"),
    ("", "ipv4", "nothing"),
]


@pytest.mark.parametrize(("text", "family", "expected"), ACCEPTED)
def test_accepts_global_unicast(text: str, family: str, expected: str) -> None:
    assert parse_public(text, family) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "family", "reason"), REJECTED)
def test_rejects_everything_else(text: str, family: str, reason: str) -> None:
    with pytest.raises(NotAnAddress, match=reason):
        parse_public(text, family)  # type: ignore[arg-type]


def test_same_address_compares_ipv6_spellings() -> None:
    assert same_address("2a02:8070:1::7", "2A02:8070:1:0:0:0:0:7")
    assert not same_address("81.2.69.160", "81.2.69.161")
    assert not same_address(None, "81.2.69.160")
