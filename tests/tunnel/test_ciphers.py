"""The endpoint's cipher choice: the rule on /proc/cpuinfo, and what a real OpenSSH client
negotiates with the endpoint that follows it."""

from __future__ import annotations

import logging
import platform
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.tunnel import RunningEndpoint, make_config, running_endpoint

from gateway.config import ConfigError, load_config_text
from gateway.tunnel.cipher_choice import (
    AES_GCM,
    CHACHA20,
    ciphers_for,
    ciphers_for_this_machine,
    cpu_has_aes,
    cpuinfo_is_of,
)

CPUINFO = Path(__file__).parents[1] / "fixtures" / "cpuinfo"  # real machines: see its README.md
GCM_ONLY = list(AES_GCM)
CHACHA_FIRST = [CHACHA20, *AES_GCM]


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        ("x86_64-aes.txt", GCM_ONLY),  # AES-NI
        ("pi5-aarch64.txt", GCM_ONLY),  # Cortex-A76 with the crypto extensions
        ("pi4-aarch64.txt", CHACHA_FIRST),  # Cortex-A72 without them, 64-bit kernel
        ("pi4-armv7l.txt", CHACHA_FIRST),  # the same CPU under a 32-bit kernel
        ("pi3-aarch64.txt", CHACHA_FIRST),  # Cortex-A53 without them
    ],
)
def test_the_rule_on_real_machines_cpuinfo(fixture: str, expected: list[str]) -> None:
    assert ciphers_for((CPUINFO / fixture).read_text()) == expected


def test_only_an_aes_token_in_flags_or_features_counts() -> None:
    assert cpu_has_aes("Features\t: fp asimd evtstrm aes pmull\n")
    assert cpu_has_aes("flags\t\t: fpu sse2 aes avx\n")
    assert not cpu_has_aes("flags\t\t: fpu sse2 vaes avx\n")  # another instruction's name
    assert not cpu_has_aes("model name\t: aes\nFeatures\t: fp asimd\n")
    assert not cpu_has_aes("")


def test_an_unreadable_cpuinfo_means_aes_gcm_and_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway.tunnel"):
        assert ciphers_for_this_machine(tmp_path / "missing") == GCM_ONLY
    assert "cannot read" in caplog.text and "tunnel.ciphers" in caplog.text


@pytest.mark.parametrize(
    ("fixture", "machine"),
    [
        ("x86_64-aes.txt", "aarch64"),  # an arm64 root under qemu-user on an x86_64 host
        ("pi4-aarch64.txt", "x86_64"),  # and the other way round
    ],
)
def test_an_emulated_cpu_means_aes_gcm_and_a_warning(
    fixture: str, machine: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Under an emulator /proc/cpuinfo is the host's: its flags are not the CPU this
    program sees, so they choose nothing."""
    with caplog.at_level(logging.WARNING, logger="gateway.tunnel"):
        assert ciphers_for_this_machine(CPUINFO / fixture, machine) == GCM_ONLY
    assert "another architecture" in caplog.text and "tunnel.ciphers" in caplog.text


@pytest.mark.parametrize(
    "fixture", ["x86_64-aes.txt", "pi5-aarch64.txt", "pi4-aarch64.txt", "pi4-armv7l.txt"]
)
def test_a_real_machines_cpuinfo_is_of_its_own_architecture(fixture: str) -> None:
    machine = fixture.split("-")[1].removesuffix(".txt")
    assert cpuinfo_is_of((CPUINFO / fixture).read_text(), machine)


def test_an_empty_cipher_list_is_refused_with_what_to_do() -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text("tunnel: {ciphers: []}\nbrowser: {enabled: false}\ntmux: {enabled: false}")
    text = str(info.value)
    assert "tunnel.ciphers" in text and "remove the key" in text


def _negotiated(stderr: str) -> tuple[str, str]:
    """Both directions' ciphers from ``ssh -vv``'s ``kex: server->client cipher: …`` lines."""
    found = {}
    for line in stderr.splitlines():
        for direction in ("server->client", "client->server"):
            marker = f"kex: {direction} cipher: "
            if marker in line:
                found[direction] = line.split(marker, 1)[1].split()[0]
    assert len(found) == 2, f"no cipher lines in ssh -vv output:\n{stderr}"
    return found["server->client"], found["client->server"]


def _ssh_vv(tmp_path: Path, r: RunningEndpoint, *extra: str) -> str:
    key = tmp_path / "client-key"
    key.write_text(r.keys.tunnel_private_text("colab"))
    key.chmod(0o600)
    known = tmp_path / "client-known-hosts"
    known.write_text(f"[127.0.0.1]:{r.port} {r.keys.host_info().public}\n")
    result = subprocess.run(
        [
            "ssh",
            "-vv",
            "-F",
            "/dev/null",
            "-p",
            str(r.port),
            "-i",
            str(key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            f"UserKnownHostsFile={known}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "ConnectTimeout=10",
            *extra,
            "colab@127.0.0.1",
            "register-hostkey",  # answered with its usage: logged in, nothing changed
        ],
        capture_output=True,
        text=True,
        timeout=20,
        stdin=subprocess.DEVNULL,
    )
    assert "usage: register-hostkey" in result.stderr, result.stderr
    return result.stderr


@pytest.mark.parametrize(
    ("fixture", "cipher"),
    [
        ("pi4-aarch64.txt", "chacha20-poly1305@openssh.com"),
        ("pi5-aarch64.txt", "aes128-gcm@openssh.com"),
        ("x86_64-aes.txt", "aes128-gcm@openssh.com"),
    ],
)
def test_openssh_negotiates_the_cipher_chosen_for_the_cpu(
    tmp_path: Path, fixture: str, cipher: str
) -> None:
    config = make_config(tmp_path)
    assert config.tunnel.ciphers is None  # the default: the endpoint chooses
    with running_endpoint(config, tmp_path / "state", cpuinfo=CPUINFO / fixture) as r:
        assert r.endpoint.ciphers == ciphers_for((CPUINFO / fixture).read_text())
        # OpenSSH's own default list, chacha20-poly1305 first: what Colab's client sends.
        assert _negotiated(_ssh_vv(tmp_path, r)) == (cipher, cipher)


def test_this_machine_gets_what_its_cpuinfo_says(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    cpuinfo = Path("/proc/cpuinfo").read_text()
    emulated = not cpuinfo_is_of(cpuinfo, platform.machine())  # e.g. the arm64 test's root
    expected = (
        "aes128-gcm@openssh.com"
        if emulated or cpu_has_aes(cpuinfo)
        else "chacha20-poly1305@openssh.com"
    )
    with running_endpoint(config, tmp_path / "state") as r:
        assert _negotiated(_ssh_vv(tmp_path, r)) == (expected, expected)


def test_an_explicit_cipher_list_wins_over_the_cpu(tmp_path: Path) -> None:
    config = make_config(tmp_path, "ciphers: [aes256-gcm@openssh.com]")
    with running_endpoint(config, tmp_path / "state", cpuinfo=CPUINFO / "pi4-aarch64.txt") as r:
        assert r.endpoint.ciphers == ["aes256-gcm@openssh.com"]
        stderr = _ssh_vv(tmp_path, r)
        assert _negotiated(stderr) == ("aes256-gcm@openssh.com", "aes256-gcm@openssh.com")
        # A client that wants only chacha20 is refused: nothing else is offered.
        key = tmp_path / "client-key"
        refused = subprocess.run(
            [
                "ssh",
                "-F",
                "/dev/null",
                "-p",
                str(r.port),
                "-i",
                str(key),
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-c",
                "chacha20-poly1305@openssh.com",
                "colab@127.0.0.1",
                "true",
            ],
            capture_output=True,
            text=True,
            timeout=20,
            stdin=subprocess.DEVNULL,
        )
        assert refused.returncode != 0
        assert "no matching cipher" in refused.stderr, refused.stderr


def test_ssh_audit_finds_no_failure_in_the_pi_4_choice(tmp_path: Path) -> None:
    """chacha20-poly1305 is Terrapin's cipher: offered, it is safe only with strict kex,
    which the endpoint does; ssh-audit checks exactly that."""
    config = make_config(tmp_path)
    with running_endpoint(config, tmp_path / "state", cpuinfo=CPUINFO / "pi4-aarch64.txt") as r:
        assert r.endpoint.ciphers[0] == CHACHA20
        audit = Path(sys.executable).with_name("ssh-audit")
        result = subprocess.run(
            [str(audit), "-n", "-p", str(r.port), "127.0.0.1"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert "(enc) chacha20-poly1305@openssh.com" in result.stdout, result.stdout
    assert "[fail]" not in result.stdout, result.stdout
    assert "kex-strict-s-v00@openssh.com" in result.stdout, result.stdout
