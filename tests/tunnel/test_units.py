"""The tunnel's parts on their own: guard, host keys, keys, bootstrap rendering, CLI."""

from __future__ import annotations

import base64
import json
import logging
import stat
import subprocess
from pathlib import Path

import asyncssh
import pytest
from helpers import FakeClock
from helpers.tunnel import TUNNEL_ONLY, tunnel_config

from gateway.cli import main
from gateway.config import load_config_text
from gateway.tunnel import hostkeys
from gateway.tunnel.bootstrap import (
    BootstrapError,
    BootstrapParams,
    params_for,
    render_bootstrap_script,
    render_cell,
    render_notebook,
)
from gateway.tunnel.guard import Guard, RateLimitedLog, source_key
from gateway.tunnel.keys import KeyStore, secret_name

# -- guard -----------------------------------------------------------------------------------


def test_guard_caps_in_total_and_per_source() -> None:
    guard = Guard(
        tunnel_config(
            "max_unauthenticated: 4\nrandom_drop_start: 4\nmax_unauthenticated_per_source: 2"
        )
    )
    assert guard.admit("198.51.100.1") is None
    assert guard.admit("198.51.100.1") is None
    assert "max_unauthenticated_per_source=2" in guard.admit("198.51.100.1")
    assert guard.admit("198.51.100.2") is None
    assert guard.admit("198.51.100.3") is None
    assert "max_unauthenticated=4" in guard.admit("198.51.100.4")
    guard.authenticated("198.51.100.1")
    assert guard.admit("198.51.100.4") is None
    assert guard.unauthenticated == 4


def test_guard_penalties_grow_cap_and_are_forgotten() -> None:
    clock = FakeClock()
    guard = Guard(tunnel_config("penalty_min: 30s\npenalty_max: 2m\nexempt_networks: []"), clock)
    durations = []
    for _ in range(4):
        assert guard.admit("203.0.113.9") is None
        guard.failed("203.0.113.9", "no login")
        penalty = guard.penalties["203.0.113.9"]
        durations.append(penalty.until - clock.now)
        assert "penalised" in guard.admit("203.0.113.9")
        clock.now = penalty.until + 1
    assert durations == [30, 60, 120, 120]
    # Good behaviour for penalty_max after the last penalty: back to the first step.
    clock.now += 121
    assert guard.admit("203.0.113.9") is None
    guard.failed("203.0.113.9", "no login")
    assert guard.penalties["203.0.113.9"].until - clock.now == 30


def test_guard_exempts_networks_and_groups_ipv6_by_64() -> None:
    guard = Guard(tunnel_config("exempt_networks: [192.168.1.0/24]"))
    assert guard.admit("192.168.1.20") is None
    guard.failed("192.168.1.20", "no login")
    assert guard.admit("192.168.1.20") is None
    assert guard.admit("2001:db8:1:2::5") is None
    guard.failed("2001:db8:1:2::5", "no login")
    assert "penalised" in guard.admit("2001:db8:1:2:ffff::1")  # same /64
    assert guard.admit("2001:db8:1:3::1") is None
    assert source_key("::ffff:198.51.100.7") == "198.51.100.7"


def test_refusal_log_is_rate_limited(caplog) -> None:
    clock = FakeClock()
    limited = RateLimitedLog(logging.getLogger("test.refusals"), burst=3, period=60, clock=clock)
    with caplog.at_level(logging.WARNING, "test.refusals"):
        for i in range(10):
            limited.log(f"refused {i}")
        clock.now += 61
        limited.log("refused later")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:3] == ["refused 0", "refused 1", "refused 2"]
    assert lines[3].startswith("7 more refusals were not logged")
    assert lines[4] == "refused later"


def test_untrusted_text_is_one_escaped_quoted_line_and_bounded() -> None:
    from gateway.tunnel.server import untrusted

    text = untrusted("evil\n2026-12-01 forged\r\x1b[2K\u202e\x00" + "x" * 500)
    assert text.isprintable() and "\n" not in text and "\x1b" not in text
    assert text.startswith("'evil\\n2026-12-01 forged\\r\\x1b[2K\\u202e\\x00")
    assert text.endswith("…'") and len(text) < 230
    assert untrusted("localhost") == "'localhost'"


# -- host keys -------------------------------------------------------------------------------


def _key_line() -> str:
    key = asyncssh.generate_private_key("ssh-ed25519")
    return key.export_public_key("openssh").decode().strip()


def test_parse_command_accepts_a_host_key_and_rejects_the_rest() -> None:
    line = _key_line()
    key = hostkeys.parse_command(f"register-hostkey {line}")
    assert key.get_algorithm() == "ssh-ed25519"
    for bad, why in [
        ("id", "only 'register-hostkey"),
        ("register-hostkey", "usage"),
        ("register-hostkey ssh-dss AAAA", "not accepted"),
        ("register-hostkey ssh-ed25519 AAAA$(reboot)", "not base64"),
        ("register-hostkey ssh-ed25519 AAAAC3NzaC1lZDI1NTE5", "not a valid"),
        ("register-hostkey " + "x" * 5000, "longer than"),
    ]:
        with pytest.raises(hostkeys.HostKeyError, match=why.replace("(", r"\(")):
            hostkeys.parse_command(bad)
    rsa = asyncssh.generate_private_key("ssh-rsa", key_size=1024)
    small = rsa.export_public_key("openssh").decode().split()
    with pytest.raises(hostkeys.HostKeyError, match="2048"):
        hostkeys.parse_command(f"register-hostkey {small[0]} {small[1]}")
    ecdsa = " ".join(_key_line().split()[:2]).replace("ssh-ed25519", "ecdsa-sha2-nistp256")
    with pytest.raises(hostkeys.HostKeyError):
        hostkeys.parse_command(f"register-hostkey {ecdsa}")


def test_pin_replaces_the_lines_of_those_ports_and_keeps_the_others(tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    other = _key_line()
    known.write_text(f"[localhost]:20022 {_key_line()}\n[localhost]:30022 {other}\n# comment\n")
    new = asyncssh.import_public_key(_key_line())
    hostkeys.pin(known, [20022, 20023], new)
    lines = known.read_text().splitlines()
    assert lines[:2] == [f"[localhost]:30022 {other}", "# comment"]
    assert lines[2:] == [
        f"[localhost]:20022 {hostkeys.key_line(new)}",
        f"[localhost]:20023 {hostkeys.key_line(new)}",
    ]
    assert hostkeys.pinned_fingerprint(known, 20023) == new.get_fingerprint()
    assert hostkeys.pinned_fingerprint(known, 40000) is None


# -- keys --------------------------------------------------------------------------------------


def test_keys_are_made_once_private_and_rotate(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys")
    created = store.ensure(["colab", "gpu-2"])
    assert len(created) == 3
    assert store.ensure(["colab", "gpu-2"]) == []
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    for path in (tmp_path / "keys").iterdir():
        if path.name != ".lock":
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    before = store.tunnel_key("colab")
    generation = store.generation("colab")
    after = store.rotate("colab")
    assert after.fingerprint != before.fingerprint
    assert store.generation("colab") != generation
    assert store.tunnel_key("gpu-2").fingerprint != after.fingerprint
    assert asyncssh.import_private_key(store.tunnel_private_text("colab")).get_algorithm() == (
        "ssh-ed25519"
    )
    assert secret_name("gpu-2") == "colab_gateway_gpu_2"


# -- bootstrap rendering -------------------------------------------------------------------------


KEY_X = "AAAAC3NzaC1lZDI1NTE5AAAAIHZQ3bAfZrRf0y2aR7Q2b2kP0m1tY9d6hG4uJk5R3l2x"
KEY_Y = "AAAAC3NzaC1lZDI1NTE5AAAAIHZQ3bAfZrRf0y2aR7Q2b2kP0m1tY9d6hG4uJk5R3l2y"
PARAMS = BootstrapParams(
    endpoint_host="home.example.net",
    endpoint_port=10022,
    username="colab",
    endpoint_hostkey=f"ssh-ed25519 {KEY_X}",
    forwards={20022: 22, 16006: 6006},
    pi_public_key=f"ssh-ed25519 {KEY_Y} pi@home",
    session="colab",
)


def test_the_script_is_valid_bash_with_the_gateway_values_as_defaults(tmp_path: Path) -> None:
    script = render_bootstrap_script(PARAMS)
    (tmp_path / "s.sh").write_text(script)
    subprocess.run(["bash", "-n", str(tmp_path / "s.sh")], check=True)
    assert "GW_ENDPOINT_HOST=home.example.net" in script
    # The ssh forward's Colab port is the sshd's: "sshd" follows GW_SSHD_PORT.
    assert "GW_FORWARDS='20022:sshd 16006:6006'" in script
    assert "GW_SSHD_PORT=22\n" in script
    assert "GW_SESSION=colab\n" in script and "GW_SECRET=colab_gateway_colab\n" in script
    assert (
        "'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHZQ3bAfZrRf0y2aR7Q2b2kP0m1tY9d6hG4uJk5R3l2y pi@home'"
        in script
    )
    # Environment wins over the rendered defaults.
    probe = script.split("set -euo pipefail")[0] + 'echo "$GW_ENDPOINT_HOST:$GW_ENDPOINT_PORT"\n'
    out = subprocess.run(
        ["bash", "-c", probe],
        capture_output=True,
        text=True,
        env={"GW_ENDPOINT_HOST": "127.0.0.1", "PATH": "/usr/bin:/bin"},
    )
    assert out.stdout == "127.0.0.1:10022\n"


def test_the_cell_compiles_and_the_notebook_is_nbformat_4() -> None:
    cell = render_cell(PARAMS, "colab")
    compile(cell, "<cell>", "exec")
    assert "SECRET = 'colab_gateway_colab'" in cell
    assert "INLINE_TUNNEL_KEY = None" in cell
    assert "the one line `colab-gateway keys --private colab`" in cell
    import nbformat

    text = render_notebook(cell, "colab")
    nbformat.validate(nbformat.reads(text, as_version=4))  # Jupyter's own schema
    notebook = json.loads(text)
    assert notebook["nbformat"] == 4
    first = notebook["cells"][0]
    assert first["cell_type"] == "code"
    assert "".join(first["source"]) == cell
    inline = render_cell(PARAMS, "colab", "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n")
    compile(inline, "<cell>", "exec")
    assert "INLINE_TUNNEL_KEY = '''-----BEGIN OPENSSH PRIVATE KEY-----\nabc'''" in inline


def _write_config(tmp_path: Path, identity: Path, public_host: str = "home.example.net") -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(
        "sessions:\n  - name: colab\n    notebook_url: https://colab.research.google.com/drive/a\n"
        f"tunnel:\n  public_host: '{public_host}'\n  public_port: 443\n"
        f"ssh:\n  identity: {identity}\n" + TUNNEL_ONLY
    )
    return config


def test_params_say_what_to_do_when_the_pi_key_or_the_address_is_missing(tmp_path: Path) -> None:
    config = load_config_text(_write_config(tmp_path, tmp_path / "nokey").read_text()).config
    store = KeyStore(tmp_path / "keys")
    store.ensure(["colab"])
    with pytest.raises(BootstrapError, match=r"ssh-keygen -t ed25519 -f .*nokey"):
        params_for(config, config.sessions[0], store)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "id")], check=True
    )
    config = load_config_text(_write_config(tmp_path, tmp_path / "id", "").read_text()).config
    with pytest.raises(BootstrapError, match=r"tunnel\.public_host"):
        params_for(config, config.sessions[0], store)
    params = params_for(config, config.sessions[0], store, host="203.0.113.5")
    assert (params.endpoint_host, params.endpoint_port) == ("203.0.113.5", 443)
    assert params.forwards == {20022: 22}
    assert (params.session, params.sshd_port) == ("colab", 22)


# -- CLI -------------------------------------------------------------------------------------------


def test_cli_keys_snippet_and_notebook(tmp_path: Path, capsys) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "id")], check=True
    )
    config = _write_config(tmp_path, tmp_path / "id")
    common = ["-c", str(config), "--state-dir", str(tmp_path / "state")]
    assert main(["keys", *common]) == 0
    out = capsys.readouterr().out
    assert "endpoint host key  SHA256:" in out
    assert "Colab secret: colab_gateway_colab" in out
    before = KeyStore(tmp_path / "state" / "keys").tunnel_key("colab").fingerprint

    assert main(["keys", *common, "--rotate", "colab"]) == 0
    assert "new tunnel key" in capsys.readouterr().out
    assert KeyStore(tmp_path / "state" / "keys").tunnel_key("colab").fingerprint != before
    assert main(["keys", *common, "--rotate", "nope"]) == 2
    assert "no session named 'nope'" in capsys.readouterr().err

    # One line, nothing else: the Colab secret's value, the key file in base64.
    assert main(["keys", *common, "--private", "colab"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.endswith("\n")
    assert out.startswith("openssh-base64:")
    key_text = base64.b64decode(out.strip().removeprefix("openssh-base64:"), validate=True).decode()
    assert key_text == KeyStore(tmp_path / "state" / "keys").tunnel_private_text("colab")
    assert key_text.startswith("-----BEGIN OPENSSH PRIVATE KEY-----\n")

    assert main(["snippet", *common]) == 0
    cell = capsys.readouterr().out
    compile(cell, "<cell>", "exec")
    assert "GW_ENDPOINT_HOST=home.example.net" in cell and "GW_ENDPOINT_PORT=443" in cell
    assert out.strip() not in cell and key_text.splitlines()[1] not in cell  # no key inside

    assert main(["snippet", *common, "--shell"]) == 0
    script = capsys.readouterr().out
    assert script.startswith("#!/bin/bash\n") and "GW_ENDPOINT_PORT=443" in script
    assert "import os" not in script

    out_file = tmp_path / "gw.ipynb"
    assert main(["notebook", *common, "colab", "-o", str(out_file), "--inline-key"]) == 0
    assert "contains the tunnel private key" in capsys.readouterr().err
    assert stat.S_IMODE(out_file.stat().st_mode) == 0o600
    notebook = json.loads(out_file.read_text())
    source = "".join(notebook["cells"][0]["source"])
    assert "INLINE_TUNNEL_KEY = '''" + out.strip() + "'''" in source  # the one-line form
