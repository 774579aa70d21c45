"""`colab-gateway ssh-config`: the printed block, and a real laptop → Pi → VM login with it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.tmux import Sshd, keygen, require_root, short_dir

from gateway.config import ConfigError, load_config_text

BIN = Path(sys.executable).parent

CONFIG = """\
sessions:
  - name: colab
    notebook_url: https://colab.research.google.com/drive/test
    forwards: {{ssh: {{colab: 22, local: {port}}}}}
  - name: spare
    notebook_url: https://colab.research.google.com/drive/spare
    forwards: {{ssh: {{colab: 22, local: {spare}}}}}
tunnel: {{enabled: false}}
browser: {{enabled: false}}
tmux: {{enabled: false}}
ssh:
  server_alive_interval: 20s
  authorized_keys: [{keys}]
"""


def gateway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "colab-gateway"), *args], capture_output=True, text=True, timeout=30
    )


def write_config(directory: Path, port: int, keys: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.yaml"
    path.write_text(CONFIG.format(port=port, spare=port + 1, keys=keys))
    return path


def test_block_names_the_jump_port_alias_and_pinned_key(tmp_path: Path) -> None:
    config = write_config(tmp_path, 20022)
    state = tmp_path / "state"
    state.mkdir()
    (state / "known_hosts").write_text(
        "[localhost]:20022 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPinnedKeyForColab\n"
        "[localhost]:20023 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAISpareKey\n"
        "[localhost]:20099 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOtherPort\n"
    )
    out = gateway(
        "ssh-config", "colab", "--pi", "mypi", "-c", str(config), "--state-dir", str(state)
    )
    assert out.returncode == 0, out.stderr
    block = out.stdout
    for line in (
        "Host colab-colab",
        "    HostName localhost",
        "    Port 20022",
        "    User root",
        "    ProxyJump mypi",
        "    HostKeyAlias colab-colab",
        "    StrictHostKeyChecking yes",
        "    ServerAliveInterval 20",
        "    KnownHostsCommand /usr/bin/ssh -o BatchMode=yes mypi colab-gateway ssh-config "
        "--known-hosts colab",
        "    #     colab-colab ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPinnedKeyForColab",
    ):
        assert line in block.splitlines(), f"{line!r} missing from:\n{block}"
    assert "spare" not in block and "OtherPort" not in block
    assert "ssh.authorized_keys" in block  # the laptop's key is not configured yet

    keys = gateway("ssh-config", "--known-hosts", "-c", str(config), "--state-dir", str(state))
    assert keys.stdout.splitlines() == [
        "colab-colab ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPinnedKeyForColab",
        "colab-spare ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAISpareKey",
    ]

    unknown = gateway("ssh-config", "nosuch", "-c", str(config), "--state-dir", str(state))
    assert unknown.returncode == 2
    assert "no session named 'nosuch'" in unknown.stderr


def test_authorized_keys_must_be_public_key_lines() -> None:
    good = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHfoo laptop"
    config = CONFIG.format(port=20022, spare=20023, keys=f'"{good}"')
    assert load_config_text(config).config.ssh.authorized_keys == [good]
    with pytest.raises(ConfigError) as error:
        load_config_text(CONFIG.format(port=20022, spare=20023, keys='"-----BEGIN OPENSSH"'))
    assert "is not an OpenSSH public key line" in str(error.value)


@dataclass
class Laptop:
    config: Path
    pi: Sshd
    colab: Sshd
    gateway_config: Path
    state: Path


@pytest.fixture
def laptop() -> Iterator[Laptop]:
    """A laptop's ssh config, a 'Pi' sshd running colab-gateway, and a 'Colab VM' sshd."""
    require_root()
    base = short_dir("cg-laptop-")
    identity = base / "laptop_key"
    public = keygen(identity)
    colab = Sshd(base / "colab", [public])
    state, etc = base / "state", base / "etc"
    state.mkdir()
    gateway_config = write_config(etc, colab.port, keys=f'"{public}"')
    (state / "known_hosts").write_text(colab.known_hosts_line() + "\n")
    # On the Pi, `colab-gateway` is on PATH and finds its config and state the way the
    # systemd unit's variables tell it.
    pi = Sshd(
        base / "pi",
        [public],
        extra=f"SetEnv PATH={BIN}:/usr/bin:/bin CONFIGURATION_DIRECTORY={etc} "
        f"STATE_DIRECTORY={state}\n",
    )
    (base / "pi_known_hosts").write_text(pi.known_hosts_line(f"[127.0.0.1]:{pi.port}") + "\n")
    config = base / "ssh_config"
    colab.start()
    pi.start()
    try:
        yield Laptop(config, pi, colab, gateway_config, state)
    finally:
        pi.stop()
        colab.stop()
        shutil.rmtree(base, ignore_errors=True)


def write_laptop_config(laptop: Laptop) -> None:
    base = laptop.config.parent
    out = gateway(
        "ssh-config",
        "colab",
        "--pi",
        "pi",
        "-c",
        str(laptop.gateway_config),
        "--state-dir",
        str(laptop.state),
    )
    assert out.returncode == 0, out.stderr
    # The laptop's user config is ~/.ssh/config; this test names its file with -F, which
    # the nested ssh of KnownHostsCommand must be told as well.
    block = out.stdout.replace(
        "KnownHostsCommand /usr/bin/ssh ", f"KnownHostsCommand /usr/bin/ssh -F {laptop.config} "
    )
    laptop.config.write_text(
        "Host pi\n"
        "    HostName 127.0.0.1\n"
        f"    Port {laptop.pi.port}\n"
        "    User root\n"
        f"    UserKnownHostsFile {base / 'pi_known_hosts'}\n"
        "    StrictHostKeyChecking yes\n\n" + block + "\nHost *\n"
        f"    IdentityFile {base / 'laptop_key'}\n"
        "    IdentitiesOnly yes\n"
        "    BatchMode yes\n"
    )


def laptop_ssh(laptop: Laptop, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-F", str(laptop.config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.slow
def test_laptop_reaches_the_vm_through_the_pi_with_the_pinned_key(laptop: Laptop) -> None:
    write_laptop_config(laptop)
    out = laptop_ssh(laptop, "colab-colab", "echo $((3*4))-via-pi")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "12-via-pi"

    copied = laptop.config.parent / "copied"
    scp = subprocess.run(
        ["scp", "-F", str(laptop.config), "colab-colab:" + str(laptop.config), str(copied)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert scp.returncode == 0, scp.stderr
    assert copied.read_text() == laptop.config.read_text()

    # The Pi pins another key (say, a VM we never saw): the laptop refuses to log in.
    other = keygen(laptop.config.parent / "other_host_key")
    key_type, key = other.split()[:2]
    (laptop.state / "known_hosts").write_text(f"[localhost]:{laptop.colab.port} {key_type} {key}\n")
    refused = laptop_ssh(laptop, "colab-colab", "echo should-not-run")
    assert refused.returncode == 255
    assert "should-not-run" not in refused.stdout
    assert "Host key verification failed" in refused.stderr or "HOST IDENTIFICATION" in (
        refused.stderr
    ), refused.stderr


def test_secrets_it_cannot_read_do_not_stop_it_but_a_bad_session_does(tmp_path: Path) -> None:
    config = write_config(tmp_path, 20022)
    state = tmp_path / "state"
    state.mkdir()
    # A member of the gateway's group runs it over ssh: the DDNS token is not theirs.
    with config.open("a") as f:
        f.write(
            "ddns:\n  provider: cloudflare\n  hostname: home.example.net\n"
            f"  cloudflare: {{api_token_file: {tmp_path / 'missing.token'}}}\n"
        )
    assert gateway("check-config", "-c", str(config)).returncode == 78
    out = gateway("ssh-config", "-c", str(config), "--state-dir", str(state), "--pi", "pi")
    assert out.returncode == 0, out.stderr
    assert "Host colab-colab" in out.stdout

    config.write_text(config.read_text().replace("local: 20022", "local: 80"))
    bad = gateway("ssh-config", "-c", str(config), "--state-dir", str(state))
    assert bad.returncode == 78
    assert f"{config}:4:" in bad.stderr and "80" in bad.stderr
