"""The monitoring settings are checked when the config loads, with file:line errors."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, load_config_text

BASE = "tunnel: {enabled: false}\nbrowser: {enabled: false}\ntmux: {enabled: false}\n"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("metrics: {listen: 'localhost:9817'}", "listen on an IP address such as 0.0.0.0"),
        ("metrics: {listen: '127.0.0.1'}", "is not HOST:PORT"),
        ("metrics: {listen: '127.0.0.1:99999'}", "is not HOST:PORT"),
        ("metrics: {textfile: 'metrics.prom'}", "write an absolute path ending in .prom"),
        ("metrics: {textfile: '/var/lib/x/metrics.txt'}", "ending in .prom"),
        ("healthcheck: {url: 'hc-ping.com/abc'}", "is not a ping URL"),
        ("healthcheck: {url: 'https://hc-ping.com/abc', every: 0s}", "healthcheck.every"),
    ],
)
def test_bad_monitoring_settings_are_named(section: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config_text(BASE + section + "\n", "config.yaml")
    text = str(caught.value)
    assert text.startswith("config.yaml:4:"), text
    assert message in text


def test_good_monitoring_settings_load() -> None:
    config = load_config_text(
        BASE
        + "metrics: {listen: '[::1]:9817', textfile: /var/lib/node/colab_gateway.prom}\n"
        + "healthcheck: {url: 'https://kuma.example.net/api/push/Tok3n', every: 30s}\n"
    ).config
    assert config.metrics.enabled and config.metrics.listen == "[::1]:9817"
    assert config.healthcheck.every == 30


def test_monitoring_is_off_by_default() -> None:
    config = load_config_text(BASE).config
    assert not config.metrics.enabled and not config.healthcheck.url
