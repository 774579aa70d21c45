"""DuckDNS: ``GET /update?domains=SUB&token=T&ip=V4&ipv6=V6&verbose=true`` → ``OK``/``KO``."""

from __future__ import annotations

from gateway import logs
from gateway.config import DdnsConfig
from gateway.ddns.http import Http, NetworkError
from gateway.ddns.outcomes import Failed, Family, Outcome, Published, WouldPublish
from gateway.untrusted import quoted, untrusted


class DuckDns:
    name = "duckdns"
    reads_back = False

    def __init__(self, config: DdnsConfig, http: Http) -> None:
        self.host = config.hostname
        host = config.hostname.lower()
        self.domain = host[: -len(".duckdns.org")] if host.endswith(".duckdns.org") else host
        self.server = config.duckdns.server.rstrip("/")
        secret = config.duckdns.token_file
        self.token = secret.reveal() if secret is not None else ""
        logs.register_secret(self.token)  # it travels in the query string
        self.http = http

    def target(self) -> str:
        return f"duckdns {self.server} {self.domain}"

    def publish(
        self, wanted: dict[Family, str], known: dict[Family, str], dry_run: bool
    ) -> dict[Family, Outcome]:
        # Both addresses every time: without ip= DuckDNS takes the request's source address.
        both = {**known, **wanted}
        query = {"domains": self.domain, "token": self.token}
        if "ipv4" in both:
            query["ip"] = both["ipv4"]
        if "ipv6" in both:
            query["ipv6"] = both["ipv6"]
        query["verbose"] = "true"
        url = f"{self.server}/update"
        if dry_run:
            shown = "&".join(f"{k}={'<token>' if k == 'token' else v}" for k, v in query.items())
            return {f: WouldPublish(a, f"would send GET {url}?{shown}") for f, a in both.items()}
        outcome = self._send(url, query)
        if isinstance(outcome, Failed):
            return dict.fromkeys(both, outcome)
        changed = outcome
        return {f: Published(a, changed.changed, changed.note) for f, a in both.items()}

    def _send(self, url: str, query: dict[str, str]) -> Published | Failed:
        try:
            answer = self.http.request("GET", url, params=query)
        except NetworkError as exc:
            return Failed(f"{exc}; will retry")
        lines = [line.strip() for line in answer.text.strip().splitlines()]
        first = lines[0] if lines else ""
        if answer.status >= 500:
            return Failed(f"DuckDNS answered HTTP {answer.status}; will retry")
        if first == "OK":
            changed = "NOCHANGE" not in lines[1:]
            return Published(
                "",
                changed,
                "DuckDNS answered OK"
                + (f" ({untrusted(lines[-1], 80)})" if len(lines) > 1 else ""),
            )
        if first == "KO":
            return Failed(
                f"DuckDNS answered KO for {self.domain!r}: the token in ddns.duckdns.token_file "
                f"is wrong, or {self.domain}.duckdns.org is not one of its domains "
                "(DuckDNS gives no reason)",
                code="KO",
            )
        shown = quoted(first, 80) if first else f"HTTP {answer.status} with no text"
        return Failed(f"DuckDNS answered {shown}, not OK or KO: is ddns.duckdns.server right?")
