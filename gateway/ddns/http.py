"""HTTP for the updater: one session, a timeout on every request, a bounded answer.

Every failure to get an answer becomes ``NetworkError`` with a sentence naming the host;
what an answer means is for the caller (a provider, a detection source) to judge.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests

from gateway import __version__
from gateway.secrets import redact

MAX_BODY = 1 << 20  # a provider's answer is small; a page this big is not an answer


def user_agent(contact: str) -> str:
    """What dyndns2 providers ask for: program/version and a way to reach its user."""
    return f"colab-gateway/{__version__} {contact}".strip()


class NetworkError(Exception):
    """No usable answer: refused, timed out, TLS failure, too big or too slow."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    text: str


class Http:
    def __init__(self, agent: str, timeout: float, session: requests.Session | None = None):
        self.agent = agent
        self.timeout = timeout
        self.session = session or requests.Session()
        # Environment proxies and ~/.netrc credentials must not change where our requests
        # go or which credentials they carry.
        self.session.trust_env = False

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
    ) -> Answer:
        limit = self.timeout if timeout is None else timeout
        host = urlsplit(url).netloc or url
        all_headers = {"User-Agent": self.agent, **(headers or {})}
        deadline = time.monotonic() + 2 * limit  # connect + the whole answer
        try:
            with self.session.request(
                method,
                url,
                params=params,
                headers=all_headers,
                json=json,
                auth=auth,
                timeout=(limit, limit),
                stream=True,
            ) as response:
                body = bytearray()
                for chunk in response.iter_content(16384):
                    body += chunk
                    if len(body) > MAX_BODY:
                        raise NetworkError(f"{host} answered with more than {MAX_BODY} bytes")
                    if time.monotonic() > deadline:
                        raise NetworkError(f"{host} sent its answer too slowly")
                # Scrubbed here, before any caller quotes or cuts it: a provider echoing the
                # request (DuckDNS's token is in the URL) would otherwise put the token, or
                # the part of it that survives ``[:80]``, into the status and the state file.
                text = redact(body.decode(response.encoding or "utf-8", errors="replace"))
                # requests' headers mapping ignores case, as HTTP does (HTTP/2 proxies send
                # lower-case names).
                return Answer(response.status_code, response.headers, text)
        except requests.exceptions.SSLError as exc:
            raise NetworkError(f"TLS with {host} failed: {_reason(exc)}") from None
        except requests.exceptions.Timeout:
            raise NetworkError(f"no answer from {host} within {limit:g}s") from None
        except requests.exceptions.ConnectionError as exc:
            raise NetworkError(f"could not reach {host}: {_reason(exc)}") from None
        except requests.exceptions.RequestException as exc:
            raise NetworkError(f"request to {host} failed: {_reason(exc)}") from None

    def close(self) -> None:
        self.session.close()


def _reason(exc: BaseException) -> str:
    """The innermost cause, without urllib3's pool and object reprs, and without the URL:
    a query string may carry a token (DuckDNS), and this text reaches the status."""
    text = redact(re.sub(r"url: \S+", "", str(exc)))
    for marker in ("Caused by ", "Errno"):
        if marker in text:
            text = text[text.index(marker) :]
    if "Connection refused" in text:
        return "connection refused"
    if "Name or service not known" in text or "Temporary failure in name resolution" in text:
        return "its name does not resolve (is DNS working?)"
    if "Network is unreachable" in text:
        return "network unreachable"
    return text.rstrip(")'\"")[:200]
