"""Each DNS host's protocol behind one small interface, ``Provider``."""

from __future__ import annotations

from typing import Protocol

from gateway.config import DdnsConfig
from gateway.ddns.http import Http
from gateway.ddns.outcomes import Family, Outcome


class Provider(Protocol):
    name: str
    # True when the provider's own record is read before writing (Cloudflare): the
    # updater then passes every detected address and the provider decides. False: the
    # updater compares against the last address the provider accepted, and passes only
    # what changed, since these providers count repeated unchanged updates as abuse.
    reads_back: bool

    def target(self) -> str:
        """Which account and host the records belong to (not secret)."""
        ...

    def publish(
        self, wanted: dict[Family, str], known: dict[Family, str], dry_run: bool
    ) -> dict[Family, Outcome]:
        """Make the records hold ``wanted``; ``known`` has the current address of every
        enabled family (detected or last accepted) for protocols that send them together."""
        ...


def make_provider(config: DdnsConfig, http: Http) -> Provider:
    if config.provider == "cloudflare":
        from gateway.ddns.providers.cloudflare import Cloudflare

        return Cloudflare(config, http)
    if config.provider == "duckdns":
        from gateway.ddns.providers.duckdns import DuckDns

        return DuckDns(config, http)
    if config.provider == "dyndns2":
        from gateway.ddns.providers.dyndns2 import Dyndns2

        return Dyndns2(config, http)
    raise ValueError(f"provider {config.provider!r} publishes nothing")
