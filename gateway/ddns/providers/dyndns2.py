"""The dyndns2 protocol (No-IP, Dynu, DynDNS and many more) on any server.

``GET <server>/nic/update?hostname=H&myip=IP`` with Basic auth; one answer line per host.
The dual-stack variant is explicit because providers differ and getting it wrong can
delete a record: ``separate`` (one request per family, ``myip`` each time), ``myip_list``
(DynDNS: ``myip=v4,v6`` together; one family alone may delete the other record) and
``myipv6`` (No-IP: ``myip=v4&myipv6=v6``).
"""

from __future__ import annotations

import base64

from gateway.config import DdnsConfig
from gateway.ddns.http import Http, NetworkError
from gateway.ddns.outcomes import FAMILIES, Failed, Family, Outcome, Published, WouldPublish
from gateway.secrets import register_secret
from gateway.untrusted import quoted

PROVIDER_TROUBLE_WAIT = 1800.0  # dnserr / 911: the protocol asks for at least 30 minutes

_FATAL = {
    "badauth": "the username or password is wrong: check ddns.dyndns2.username and "
    "ddns.dyndns2.password_file",
    "!donator": "the request used a feature reserved for paying customers",
    "notfqdn": "{host} is not a fully qualified domain name: check ddns.hostname",
    "nohost": "{host} does not exist in this account: check ddns.hostname and "
    "ddns.dyndns2.username",
    "numhost": "too many hosts in one request",
    "abuse": "the provider blocked {host} for abuse: unblock it on the provider's website",
    "badagent": "the provider refuses this client (User-Agent {agent!r}): check ddns.contact",
}


class Dyndns2:
    name = "dyndns2"
    reads_back = False

    def __init__(self, config: DdnsConfig, http: Http) -> None:
        self.host = config.hostname
        self.server = config.dyndns2.server.rstrip("/")
        self.username = config.dyndns2.username
        secret = config.dyndns2.password_file
        self.password = secret.reveal() if secret is not None else ""
        # The Authorization header carries the password in base64: an answer echoing the
        # request's headers must not show it in that form either.
        credentials = f"{self.username}:{self.password}".encode("latin-1", "replace")
        register_secret(base64.b64encode(credentials).decode())
        self.dual_stack = config.dyndns2.dual_stack
        self.http = http

    def target(self) -> str:
        return f"dyndns2 {self.server} {self.username} {self.host.lower()}"

    def requests_for(
        self, wanted: dict[Family, str], known: dict[Family, str]
    ) -> list[tuple[tuple[Family, ...], dict[str, str]]]:
        """Which families each request carries, and its query."""
        if self.dual_stack == "separate":
            return [
                ((f,), {"hostname": self.host, "myip": wanted[f]}) for f in FAMILIES if f in wanted
            ]
        # Together: the other family's current address rides along, so that the provider
        # neither deletes it nor fills it in from the request's source address.
        both = {f: wanted.get(f) or known.get(f) for f in FAMILIES}
        families = tuple(f for f in FAMILIES if both[f])
        query = {"hostname": self.host}
        if self.dual_stack == "myip_list":
            query["myip"] = ",".join(str(both[f]) for f in families)
        else:
            if both["ipv4"]:
                query["myip"] = str(both["ipv4"])
            if both["ipv6"]:
                query["myipv6"] = str(both["ipv6"])
        return [(families, query)]

    def publish(
        self, wanted: dict[Family, str], known: dict[Family, str], dry_run: bool
    ) -> dict[Family, Outcome]:
        out: dict[Family, Outcome] = {}
        stopped: Failed | None = None
        url = f"{self.server}/nic/update"
        for families, query in self.requests_for(wanted, known):
            if dry_run:
                shown = "&".join(f"{k}={v}" for k, v in query.items())
                for f in families:
                    out[f] = WouldPublish(
                        known.get(f) or wanted[f], f"would send GET {url}?{shown}"
                    )
                continue
            outcome = stopped or self._send(url, query)
            if isinstance(outcome, Failed) and outcome.kind == "fatal":
                stopped = outcome  # not one more request to this host
            for f in families:
                address = wanted.get(f) or known[f]
                out[f] = (
                    Published(address, outcome.changed, outcome.note)
                    if isinstance(outcome, Published)
                    else outcome
                )
        return out

    def _send(self, url: str, query: dict[str, str]) -> Published | Failed:
        sent = ", ".join(v for k, v in query.items() if k != "hostname")
        try:
            answer = self.http.request(
                "GET", url, params=query, auth=(self.username, self.password)
            )
        except NetworkError as exc:
            return Failed(f"{exc}; will retry")
        line = answer.text.strip().splitlines()[0].strip() if answer.text.strip() else ""
        code, _, rest = line.partition(" ")
        where = f"{self.server} for {self.host}"
        if code in _FATAL or (answer.status == 401 and code not in ("good", "nochg")):
            code = code if code in _FATAL else "badauth"
            why = _FATAL[code].format(host=self.host, agent=self.http.agent)
            said = quoted(line or f"HTTP {answer.status}", 80)
            return Failed(
                f"{where} answered {said}: {why}. Updates of "
                f"{self.host} are stopped until the ddns configuration changes (dyndns2 "
                "providers ban clients that keep trying)",
                kind="fatal",
                code=code,
            )
        if code in ("dnserr", "911"):
            return Failed(
                f"{where} answered {code!r}: trouble on the provider's side; "
                "waiting 30 minutes as the protocol asks",
                kind="wait",
                wait=PROVIDER_TROUBLE_WAIT,
                code=code,
            )
        if code == "good" and rest.strip() == "127.0.0.1" and "127.0.0.1" not in sent:
            return Failed(
                f"{where} answered 'good 127.0.0.1': it ignored the update, as providers do "
                f"for clients they don't accept (User-Agent {self.http.agent!r}); "
                "check ddns.contact",
                code="good 127.0.0.1",
            )
        if code == "good":
            return Published(sent, True, f"{self.server} answered {quoted(line, 80)}")
        if code == "nochg":
            # Fine once; we only send when the address changed or the refresh is due.
            return Published(sent, False, f"{self.server} answered {quoted(line, 80)}")
        if answer.status >= 500:
            return Failed(f"{where} answered HTTP {answer.status}; will retry")
        shown = quoted(line, 80) if line else repr(f"HTTP {answer.status} with no text")
        return Failed(
            f"{where} answered {shown}, which is not a dyndns2 answer: "
            "is ddns.dyndns2.server right?"
        )
