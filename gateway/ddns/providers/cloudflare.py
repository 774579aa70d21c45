"""Cloudflare API v4 with a scoped token.

The record is read back on every check and written only when it differs: ``PATCH`` with
the content alone keeps its TTL, proxied status and comment; a missing record is created
(DNS only: the tunnel's SSH cannot pass Cloudflare's HTTP proxy). Every answer is an
envelope whose HTTP status and ``success`` are both checked.
"""

from __future__ import annotations

import json
import logging
import time
from email.utils import parsedate_to_datetime
from typing import Any

from gateway.config import DdnsConfig
from gateway.ddns.addresses import same_address
from gateway.ddns.http import Answer, Http, NetworkError
from gateway.ddns.outcomes import (
    RECORD_TYPE,
    Failed,
    Family,
    Outcome,
    Published,
    WouldPublish,
)
from gateway.untrusted import quoted, untrusted

log = logging.getLogger("gateway.ddns")

DEFAULT_RETRY_AFTER = 60.0
PER_PAGE = 100
MAX_PAGES = 50  # 5,000 records of one name and type is not a home zone: stop there
SAID_LIMIT = 200  # of Cloudflare's own words, in a message
# Cloudflare's error codes for a token that is unknown, expired or lacks a permission.
_AUTH_CODES = {1000, 6003, 9103, 9106, 9109, 10000, 10001}


class CloudflareError(Exception):
    def __init__(self, failed: Failed) -> None:
        super().__init__(failed.message)
        self.failed = failed


class Cloudflare:
    name = "cloudflare"
    reads_back = True

    def __init__(self, config: DdnsConfig, http: Http) -> None:
        self.host = config.hostname.lower().rstrip(".")
        self.zone = config.cloudflare.zone or ".".join(self.host.split(".")[-2:])
        self.base = config.cloudflare.api_base.rstrip("/")
        secret = config.cloudflare.api_token_file
        self.token = secret.reveal() if secret is not None else ""
        self.http = http
        self.zone_id: str | None = None  # a zone's id never changes: look it up once
        self.warned_proxied = False

    def target(self) -> str:
        return f"cloudflare {self.base} {self.zone} {self.host}"

    def publish(
        self, wanted: dict[Family, str], known: dict[Family, str], dry_run: bool
    ) -> dict[Family, Outcome]:
        out: dict[Family, Outcome] = {}
        for family, address in wanted.items():
            try:
                out[family] = self._sync(family, address, dry_run)
            except CloudflareError as exc:
                out[family] = exc.failed
        return out

    def _sync(self, family: Family, address: str, dry_run: bool) -> Outcome:
        zone_id = self._zone_id()
        rtype = RECORD_TYPE[family]
        records = self._records(zone_id, rtype)
        if len(records) > 1:
            listed = untrusted(
                ", ".join(f"{r.get('content')} (id {r.get('id')})" for r in records), SAID_LIMIT
            )
            raise CloudflareError(
                Failed(
                    f"Cloudflare has {len(records)} {rtype} records for {self.host}: {listed}; "
                    "delete the extra ones in the dashboard (the gateway keeps exactly one)"
                )
            )
        if not records:
            body = {
                "type": rtype,
                "name": self.host,
                "content": address,
                "ttl": 1,  # automatic
                "proxied": False,  # SSH cannot pass Cloudflare's HTTP proxy
                "comment": "kept up to date by colab-gateway",
            }
            if dry_run:
                return WouldPublish(
                    address, f"would create the {rtype} record {self.host} → {address}"
                )
            result = self._call(
                "POST", f"/zones/{zone_id}/dns_records", "create the record", json_body=body
            )
            self._check_content(result, address, rtype)
            return Published(address, True, f"created the {rtype} record")
        record = records[0]
        if record.get("proxied") is True and not self.warned_proxied:
            # Kept as the user set it (only the content is ours), but said once: through
            # Cloudflare's HTTP proxy the Colab VM's SSH cannot reach the Pi.
            log.warning(
                "the %s record %s is proxied by Cloudflare: the tunnel's SSH cannot pass the "
                "proxy; set it to DNS only in the dashboard",
                rtype,
                self.host,
            )
            self.warned_proxied = True
        current = str(record.get("content", ""))
        if same_address(current, address):
            return Published(address, False, f"the {rtype} record already holds it")
        if dry_run:
            return WouldPublish(
                address, f"would change the {rtype} record {self.host} from {current} to {address}"
            )
        result = self._call(
            "PATCH",
            f"/zones/{zone_id}/dns_records/{record['id']}",
            "change the record",
            json_body={"content": address},
        )
        self._check_content(result, address, rtype)
        return Published(address, True, f"changed the {rtype} record from {current}")

    def _check_content(self, result: Any, address: str, rtype: str) -> None:
        if (
            isinstance(result, dict)
            and "content" in result
            and not same_address(result["content"], address)
        ):
            raise CloudflareError(
                Failed(
                    f"Cloudflare accepted the {rtype} record but holds "
                    f"{quoted(result['content'], 60)}, not {address}"
                )
            )

    def _zone_id(self) -> str:
        if self.zone_id is None:
            zones = self._call("GET", "/zones", "look up the zone", params={"name": self.zone})
            if not isinstance(zones, list) or not zones:
                raise CloudflareError(
                    Failed(
                        f"Cloudflare shows no zone named {self.zone} to this token: set "
                        "ddns.cloudflare.zone to the domain as the dashboard lists it, and give "
                        f"the token Zone → Zone → Read on {self.zone}"
                    )
                )
            self.zone_id = str(zones[0]["id"])
        return self.zone_id

    def _records(self, zone_id: str, rtype: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        page = 1
        while page <= MAX_PAGES:
            params = {
                "type": rtype,
                "name": self.host,
                "page": str(page),
                "per_page": str(PER_PAGE),
            }
            answer = self._envelope(
                "GET", f"/zones/{zone_id}/dns_records", "read the records", params=params
            )
            result = answer.get("result") or []
            # Filter here too: the name filter is what we rely on, so check it.
            found += [
                r
                for r in result
                if isinstance(r, dict)
                and r.get("type") == rtype
                and str(r.get("name", "")).lower().rstrip(".") == self.host
            ]
            info = answer.get("result_info") or {}
            total_pages = int(info.get("total_pages") or 1)
            if page >= total_pages or not result:
                break
            page += 1
        return found

    def _call(
        self,
        method: str,
        path: str,
        purpose: str,
        params: dict[str, str] | None = None,
        json_body: Any = None,
    ) -> Any:
        return self._envelope(method, path, purpose, params=params, json_body=json_body).get(
            "result"
        )

    def _envelope(
        self,
        method: str,
        path: str,
        purpose: str,
        params: dict[str, str] | None = None,
        json_body: Any = None,
    ) -> dict[str, Any]:
        try:
            answer = self.http.request(
                method,
                self.base + path,
                params=params,
                json=json_body,
                headers={"Authorization": f"Bearer {self.token}"},
            )
        except NetworkError as exc:
            raise CloudflareError(Failed(f"could not {purpose} on Cloudflare: {exc}")) from None
        if answer.status == 429:
            wait = _retry_after(answer)
            raise CloudflareError(
                Failed(
                    f"Cloudflare is rate-limiting this token (HTTP 429); next try in {wait:.0f}s",
                    kind="wait",
                    wait=wait,
                    code="429",
                )
            )
        try:
            envelope = json.loads(answer.text)
        except ValueError:
            envelope = None
        if answer.status >= 500 or not isinstance(envelope, dict):
            raise CloudflareError(
                Failed(
                    f"Cloudflare answered HTTP {answer.status} to {purpose}, not its API's "
                    "JSON; will retry"
                )
            )
        errors = envelope.get("errors") or []
        # The provider's own words, quoted in the status and in phone messages: escaped
        # and bounded (a hostile or broken API can answer anything, of any length).
        said = untrusted(
            "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors if isinstance(e, dict))
            or f"HTTP {answer.status}",
            SAID_LIMIT,
        )
        codes = {e.get("code") for e in errors if isinstance(e, dict)}
        if answer.status in (401, 403) or codes & _AUTH_CODES:
            raise CloudflareError(
                Failed(self._permission_hint(purpose, said), code=str(answer.status))
            )
        if answer.status >= 400 or envelope.get("success") is not True:
            raise CloudflareError(
                Failed(f"Cloudflare refused to {purpose} for {self.host}: {said}")
            )
        return envelope

    def _permission_hint(self, purpose: str, said: str) -> str:
        # Reading records needs DNS Read, changing them DNS Edit: ask for the one that works
        # for both.
        permission = "Zone → Zone → Read" if purpose == "look up the zone" else "Zone → DNS → Edit"
        need = f"{permission} on {self.zone}"
        return (
            f"Cloudflare rejected the token: it needs {need} "
            f"(Cloudflare said: {said}); check ddns.cloudflare.api_token_file"
        )


def _retry_after(answer: Answer) -> float:
    value = answer.headers.get("Retry-After", "")
    try:
        return max(1.0, float(value))
    except ValueError:
        pass
    try:
        return max(1.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return DEFAULT_RETRY_AFTER
