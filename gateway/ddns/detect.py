"""Finding the public addresses: a list of sources per family, parsed strictly.

A source is written in the config as one of
  ``https://api.ipify.org``                 an echo service answering the address as plain text
  ``trace:https://1.1.1.1/cdn-cgi/trace``   Cloudflare's trace page (its ``ip=`` line)
  ``interface:eth0``                        an address of a local interface (IPv6: global,
                                            stable; never temporary, deprecated or tentative)
Sources are asked in order; with ``agree: N`` the first address reported by N of them wins.
Anything that is not a global unicast address of the family asked for is a failure of that
source, and when no address wins detection fails: the records are then left alone.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from gateway.config import DetectConfig
from gateway.ddns.addresses import NotAnAddress, parse_public
from gateway.ddns.http import Http, NetworkError
from gateway.ddns.outcomes import LABEL, Detected, DetectFailed, Family

IF_INET6 = Path("/proc/net/if_inet6")

# ifa_flags from linux/if_addr.h, as /proc/net/if_inet6 prints their low byte.
IFA_F_TEMPORARY = 0x01
IFA_F_OPTIMISTIC = 0x04
IFA_F_DADFAILED = 0x08
IFA_F_DEPRECATED = 0x20
IFA_F_TENTATIVE = 0x40
IFA_F_PERMANENT = 0x80
_UNSTABLE = (
    IFA_F_TEMPORARY | IFA_F_OPTIMISTIC | IFA_F_DADFAILED | IFA_F_DEPRECATED | IFA_F_TENTATIVE
)


class SourceError(Exception):
    """This source gave no usable address; the message says what it did instead."""


class Source(Protocol):
    name: str

    def address(self, family: Family) -> str: ...


class EchoSource:
    """An HTTPS service that answers with the caller's address and nothing else."""

    def __init__(self, url: str, http: Http) -> None:
        self.name = url
        self.url = url
        self.http = http

    def address(self, family: Family) -> str:
        text = _fetch(self.http, self.url)
        try:
            return parse_public(text, family)
        except NotAnAddress as exc:
            raise SourceError(str(exc)) from None


class TraceSource:
    """Cloudflare's ``/cdn-cgi/trace``: ``key=value`` lines, one of them ``ip=``."""

    def __init__(self, url: str, http: Http) -> None:
        self.name = f"trace:{url}"
        self.url = url
        self.http = http

    def address(self, family: Family) -> str:
        text = _fetch(self.http, self.url)
        values = [line[3:] for line in text.splitlines() if line.startswith("ip=")]
        if len(values) != 1:
            if "<" in text:
                raise SourceError("answered with an HTML page instead of a trace")
            raise SourceError(
                "answered without exactly one ip= line: is this a /cdn-cgi/trace URL?"
            )
        try:
            return parse_public(values[0], family)
        except NotAnAddress as exc:
            raise SourceError(str(exc)) from None


class InterfaceSource:
    """A public address configured on a local interface (IPv6 with SLAAC, or PPPoE)."""

    def __init__(
        self,
        interface: str,
        if_inet6: Path = IF_INET6,
        run_ip: Callable[[Sequence[str]], str] | None = None,
    ) -> None:
        self.name = f"interface:{interface}"
        self.interface = interface
        self.if_inet6 = if_inet6
        self.run_ip = run_ip or _run_ip

    def address(self, family: Family) -> str:
        if family == "ipv6":
            candidates = stable_ipv6(self.if_inet6.read_text(), self.interface)
        else:
            candidates = ipv4_of(self.run_ip(["-4", "-j", "addr", "show", "dev", self.interface]))
        reasons = []
        for text in candidates:
            try:
                return parse_public(text, family)
            except NotAnAddress as exc:
                reasons.append(str(exc).replace("answered ", "has "))
        if not reasons:
            raise SourceError(f"has no stable {LABEL[family]} address")
        raise SourceError("; ".join(reasons))


def stable_ipv6(if_inet6: str, interface: str) -> list[str]:
    """Addresses of ``interface`` that stay: global scope, not temporary (privacy
    extensions rotate them), not deprecated, not still being checked for duplicates.
    Permanent (static) ones first, then in address order, so the choice never flips."""
    found: list[tuple[int, str]] = []
    for line in if_inet6.splitlines():
        fields = line.split()
        if len(fields) != 6 or fields[5] != interface:
            continue
        hex_address, _index, _plen, scope, flags_hex, _name = fields
        flags = int(flags_hex, 16)
        if int(scope, 16) != 0 or flags & _UNSTABLE:
            continue
        text = ":".join(hex_address[i : i + 4] for i in range(0, 32, 4))
        found.append((0 if flags & IFA_F_PERMANENT else 1, text))
    found.sort(key=lambda f: (f[0], ipaddress.ip_address(f[1])))
    return [str(ipaddress.ip_address(text)) for _, text in found]


def ipv4_of(ip_json: str) -> list[str]:
    """IPv4 addresses in the output of ``ip -4 -j addr show``, primary ones first."""
    try:
        links = json.loads(ip_json or "[]")
    except ValueError:
        raise SourceError("could not read the output of 'ip -4 -j addr'") from None
    out = []
    for link in links:
        for info in link.get("addr_info", []):
            if info.get("family") == "inet" and not info.get("secondary"):
                out.append(str(info.get("local", "")))
    return out


def _run_ip(args: Sequence[str]) -> str:
    try:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SourceError(f"could not run 'ip': {exc}") from None
    if done.returncode != 0:
        raise SourceError(done.stderr.strip() or f"'ip {' '.join(args)}' failed")
    return done.stdout


def _fetch(http: Http, url: str) -> str:
    try:
        answer = http.request("GET", url)
    except NetworkError as exc:
        raise SourceError(str(exc)) from None
    if answer.status != 200:
        raise SourceError(f"answered HTTP {answer.status}")
    if "html" in answer.headers.get("Content-Type", "").lower():
        raise SourceError("answered with an HTML page instead of an address")
    return answer.text


def make_source(spec: str, http: Http, if_inet6: Path = IF_INET6) -> Source:
    kind, sep, rest = spec.partition(":")
    if sep and kind == "interface":
        return InterfaceSource(rest, if_inet6)
    if sep and kind == "trace":
        return TraceSource(rest, http)
    return EchoSource(spec, http)


class Detector:
    def __init__(self, sources: dict[Family, list[Source]], agree: int = 1) -> None:
        self.sources = sources
        self.agree = agree

    @classmethod
    def from_config(cls, config: DetectConfig, http: Http, if_inet6: Path = IF_INET6) -> Detector:
        return cls(
            {
                "ipv4": [make_source(s, http, if_inet6) for s in config.ipv4],
                "ipv6": [make_source(s, http, if_inet6) for s in config.ipv6],
            },
            config.agree,
        )

    def detect(self, family: Family) -> Detected | DetectFailed:
        votes: dict[str, list[str]] = {}
        failures: list[str] = []
        for source in self.sources[family]:
            try:
                address = source.address(family)
            except SourceError as exc:
                failures.append(f"{source.name} {exc}")
                continue
            except OSError as exc:
                failures.append(f"{source.name} could not be read: {exc.strerror or exc}")
                continue
            votes.setdefault(address, []).append(source.name)
            if len(votes[address]) >= self.agree:
                return Detected(address, tuple(votes[address]))
        said = [f"{name} said {address}" for address, names in votes.items() for name in names]
        if not self.sources[family]:
            return DetectFailed(f"no {LABEL[family]} sources are configured (ddns.detect.{family})")
        if votes:
            reason = (
                f"fewer than {self.agree} sources agree on the {LABEL[family]} address: "
                + "; ".join(said + failures)
            )
        else:
            reason = "; ".join(failures)
        return DetectFailed(reason)
