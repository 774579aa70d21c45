"""The ddns section's keys: defaults, limits and cross-field checks, with positions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.ddns import make_config, write_secret

from gateway.config import DEFAULT_IPV4_SOURCES, ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]


def test_the_example_documents_every_ddns_key_and_loads() -> None:
    config = load_config(REPO / "config.example.yaml").config
    assert config.ddns.detect.ipv4 == DEFAULT_IPV4_SOURCES
    documented = yaml.safe_load((REPO / "config.example.yaml").read_text())["ddns"]
    fields = set(type(config.ddns).__dataclass_fields__)
    assert set(documented) == fields
    assert set(documented["detect"]) == set(type(config.ddns.detect).__dataclass_fields__)


BAD: list[tuple[dict[str, Any], str]] = [
    ({"provider": "duckdns", "hostname": "home.example.net"}, "is not a DuckDNS name"),
    ({"provider": "dyndns2", "hostname": "h.example.net"}, "needs dyndns2.server"),
    ({"hostname": "not a host"}, "is not a host name"),
    ({"detect": {"ipv4": ["ftp://x"]}}, "is not an address source"),
    ({"detect": {"ipv4": ["interface:"]}}, "write interface:NAME"),
    ({"detect": {"agree": 0}}, "out of range"),
    (
        {"provider": "cloudflare", "hostname": "h.example.net", "detect": {"agree": 4}},
        "agree: 4 needs at least 4 ipv4 sources, got 3",
    ),
    ({"timeout": "0s"}, "out of range"),
    ({"check_every": "10s"}, "out of range"),
]


@pytest.mark.parametrize(("ddns", "message"), BAD)
def test_mistakes_are_reported_with_their_key(
    tmp_path: Path, ddns: dict[str, Any], message: str
) -> None:
    secret = write_secret(tmp_path, "secret", "value-1234")
    ddns.setdefault("cloudflare", {"api_token_file": str(secret)})
    ddns.setdefault("duckdns", {"token_file": str(secret)})
    with pytest.raises(ConfigError) as caught:
        make_config(tmp_path, ddns)
    text = str(caught.value)
    assert message in text
    assert "config.yaml:1:" in text and "ddns." in text


def test_dyndns2_requires_a_contact_for_the_user_agent(tmp_path: Path) -> None:
    secret = write_secret(tmp_path, "secret", "value-1234")
    ddns = {
        "provider": "dyndns2",
        "hostname": "h.example.net",
        "dyndns2": {
            "server": "https://dynupdate.no-ip.com",
            "username": "u",
            "password_file": str(secret),
        },
    }
    with pytest.raises(ConfigError, match=r"ddns\.contact: provider dyndns2 needs a contact"):
        make_config(tmp_path, ddns)
    assert make_config(tmp_path, {**ddns, "contact": "me@example.net"}).ddns.contact
