"""Strict parsing of what an address source said: only a global unicast address will do."""

from __future__ import annotations

import ipaddress

from gateway.ddns.outcomes import LABEL, Family

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")


class NotAnAddress(ValueError):
    """The text is not a usable public address; the message says why."""


def parse_public(text: str, family: Family) -> str:
    """The address in ``text`` in canonical form, if it is a public unicast one of ``family``."""
    candidate = text.strip()
    if not candidate:
        raise NotAnAddress("answered with nothing")
    if "<" in candidate or candidate.lower().startswith("<!doctype"):
        raise NotAnAddress("answered with an HTML page instead of an address")
    if len(candidate) > 64 or any(c.isspace() for c in candidate):
        raise NotAnAddress(f"answered {_excerpt(candidate)}, which is not one address")
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        raise NotAnAddress(f"answered {_excerpt(candidate)}, which is not an IP address") from None
    wanted = 4 if family == "ipv4" else 6
    if address.version != wanted:
        raise NotAnAddress(
            f"answered {address}, an IPv{address.version} address, not {LABEL[family]}"
        )
    reason = why_not_public(address)
    if reason:
        raise NotAnAddress(f"answered {address}, {reason}")
    return str(address)


def why_not_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """None for a global unicast address; otherwise what it is instead."""
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_unspecified:
        return "the unspecified address"
    if isinstance(address, ipaddress.IPv4Address):
        if address in _CGNAT:
            return "a carrier-grade NAT address (100.64.0.0/10): the router has no public IPv4"
        if _is_documentation(address):
            return "a documentation address"
        if address.is_reserved or address == ipaddress.IPv4Address("255.255.255.255"):
            return "a reserved address"
        if address.is_private or not address.is_global:
            return "a private address"
        return None
    if address.ipv4_mapped is not None:
        return "an IPv4-mapped address"
    if _is_documentation(address):
        return "a documentation address"
    if address in ipaddress.ip_network("fc00::/7"):
        return "a unique local (private) address"
    if address not in _GLOBAL_UNICAST_V6 or not address.is_global:
        return "not a global unicast address"
    return None


_DOCUMENTATION = [
    ipaddress.ip_network(n)
    for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32", "3fff::/20")
]


def _is_documentation(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return any(address.version == n.version and address in n for n in _DOCUMENTATION)


def same_address(a: str | None, b: str | None) -> bool:
    """Compare two textual addresses (IPv6 has many spellings of one address)."""
    if a is None or b is None:
        return a is b
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a == b


def _excerpt(text: str, limit: int = 40) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[:limit] + "…")
