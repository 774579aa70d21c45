"""The unit files and the Ansible role, checked without booting anything."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNITS = sorted((REPO / "systemd").glob("*.service"))
ROLE = REPO / "ansible/roles/colab_gateway"
INSTALLED_COMMAND = "/opt/colab-gateway/bin/colab-gateway"
BIN = Path(sys.executable).parent

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="needs systemd-analyze (package systemd)"
)


def unit_copies(tmp_path: Path) -> list[Path]:
    """The units as they are, except that ExecStart= names this venv's colab-gateway:
    verify checks that every command exists, and /opt/colab-gateway is not on this host."""
    copies = []
    for unit in UNITS:
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace(INSTALLED_COMMAND, str(BIN / "colab-gateway")))
        copies.append(copy)
    return copies


def unit_settings(unit: Path) -> dict[str, list[str]]:
    """Every Key=value of a unit file; a key may come more than once (Wants=, After=)."""
    settings: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).extend(value.split())
    return settings


def test_the_gateway_unit_pulls_in_the_tmux_unit_and_shares_its_user() -> None:
    # The glob the other tests verify finds both units (an empty glob would verify nothing).
    assert {u.name for u in UNITS} >= {"colab-gateway.service", "colab-gateway-tmux.service"}
    gateway = unit_settings(REPO / "systemd/colab-gateway.service")
    tmux = unit_settings(REPO / "systemd/colab-gateway-tmux.service")
    # Started with the gateway, and before it: the keeper finds a server to make its
    # session in, one that a restart of colab-gateway.service leaves alone.
    assert "colab-gateway-tmux.service" in gateway["Wants"]
    assert "colab-gateway-tmux.service" in gateway["After"]
    assert "colab-gateway.service" in tmux["Before"]
    # One user and group: the keeper reaches the server on that user's default socket.
    assert gateway["User"] == tmux["User"] and gateway["Group"] == tmux["Group"]
    assert tmux["PrivateTmp"] == ["no"], "tmux's default socket lives in the real /tmp"
    assert tmux["Restart"] == ["always"], "a `tmux kill-server` by hand is undone"
    assert tmux["WantedBy"] == gateway["WantedBy"] == ["multi-user.target"]


@needs_systemd_analyze
def test_systemd_analyze_verify_passes_on_every_unit(tmp_path: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", *map(str, unit_copies(tmp_path))],
        capture_output=True,
        text=True,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # warnings count too


@needs_systemd_analyze
def test_gateway_unit_exposure_stays_low(tmp_path: Path) -> None:
    gateway = next(u for u in unit_copies(tmp_path) if u.name == "colab-gateway.service")
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(gateway)],
        capture_output=True,
        text=True,
    )
    level = re.search(r"Overall exposure level for colab-gateway\.service: ([\d.]+)", result.stdout)
    assert level, result.stdout + result.stderr
    # 2.7 when written; above 3.0 a hardening line was lost.
    assert float(level.group(1)) <= 3.0, result.stdout


def test_gateway_unit_keeps_tmux_socket_and_exit_codes_right() -> None:
    text = (REPO / "systemd/colab-gateway.service").read_text()
    settings = dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and line[0] != "#"
    )
    assert settings["Type"] == "notify"
    assert settings["NotifyAccess"] == "main"
    assert settings["RestartPreventExitStatus"] == "78"  # EX_CONFIG, as cli.py exits
    assert settings["PrivateTmp"] == "no"  # tmux's socket lives in /tmp
    assert settings["ReadWritePaths"].split() == ["/tmp"]
    assert settings["ExecStart"].split()[0] == INSTALLED_COMMAND


def test_role_installs_the_same_unit_files() -> None:
    for unit in UNITS:
        installed = ROLE / "files" / unit.name
        assert installed.resolve() == unit.resolve(), f"{installed} is not systemd/{unit.name}"


def test_role_variables_are_prefixed_and_specified() -> None:
    import yaml

    defaults = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
    specs = yaml.safe_load((ROLE / "meta/argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    assert all(name.startswith("colab_gateway_") for name in defaults)
    assert set(defaults) == set(options)


def _render_config(tmp_path: Path, **variables: object) -> Path:
    return _render(tmp_path, "config.yaml.j2", tmp_path / "config.yaml", **variables)


def _render(tmp_path: Path, template: str, dest: Path, **variables: object) -> Path:
    """Render one of the role's templates with ansible itself, as the play does."""
    import json

    if not (BIN / "ansible").exists():
        pytest.skip("needs ansible-core in the venv (pip install -e '.[test]')")
    extra = {
        "_colab_gateway_group": "pi",
        "ansible_python_interpreter": sys.executable,
        **variables,
    }
    result = subprocess.run(
        [
            str(BIN / "ansible"),
            "localhost",
            "-c",
            "local",
            "-i",
            "localhost,",
            "-m",
            "ansible.builtin.template",
            "-a",
            f"src={ROLE}/templates/{template} dest={dest}",
            "-e",
            f"@{ROLE}/defaults/main.yml",
            "-e",
            f"@{ROLE}/vars/main.yml",
            "-e",
            json.dumps(extra),
        ],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "ANSIBLE_HOME": str(tmp_path / "ansible"),
            # Not ~/.ansible/tmp: with USER=pi that made a literal ~pi folder in the checkout.
            "ANSIBLE_REMOTE_TMP": str(tmp_path / "ansible-remote-tmp"),
            "ANSIBLE_LOCALHOST_WARNING": "0",
            "ANSIBLE_NOCOLOR": "1",
            "USER": "pi",
        },
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return dest


def _check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "colab-gateway"), "check-config", "-c", str(path)],
        capture_output=True,
        text=True,
    )


@pytest.mark.slow
def test_role_defaults_render_a_valid_config(tmp_path: Path) -> None:
    config = _render_config(tmp_path)
    text = config.read_text()
    assert text.startswith("#\n# Ansible managed")
    result = _check_config(config)
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_role_renders_the_ddns_secret_path(tmp_path: Path) -> None:
    import yaml

    config = _render_config(
        tmp_path,
        colab_gateway_ddns_provider="dyndns2",
        colab_gateway_ddns_hostname="home.example.net",
        colab_gateway_ddns_dyndns2_server="https://dynupdate.example.net",
        colab_gateway_ddns_dyndns2_username="me",
        colab_gateway_tunnel_public_port=443,
        colab_gateway_config_overrides={"browser": {"max_memory_mb": 600}},
    )
    rendered = yaml.safe_load(config.read_text())
    assert rendered["ddns"]["dyndns2"] == {
        "password_file": "/etc/colab-gateway/ddns.secret",
        "server": "https://dynupdate.example.net",
        "username": "me",
    }
    assert rendered["tunnel"]["public_port"] == 443
    assert rendered["browser"]["max_memory_mb"] == 600
    assert rendered["browser"]["reload_every"] == "30m"  # overrides merge, not replace
    # The secret file does not exist here: check-config must say so, naming it.
    result = _check_config(config)
    assert result.returncode == 78
    assert "/etc/colab-gateway/ddns.secret" in result.stderr


# Every setting that makes systemd set no_new_privs for a service with a non-root User=,
# whatever NoNewPrivileges= says: context_has_seccomp() in systemd's src/core/execute.c
# (v256+; older releases have a subset), by the names `systemd-analyze security` reports.
NNP_IMPLYING = (
    "NoNewPrivileges=",
    "LockPersonality=",
    "MemoryDenyWriteExecute=",
    "PrivateDevices=",
    "ProtectClock=",
    "ProtectHostname=",
    "ProtectKernelTunables=",
    "ProtectKernelModules=",
    "ProtectKernelLogs=",
    "RestrictAddressFamilies=",
    "RestrictNamespaces=",
    "RestrictRealtime=",
    "RestrictSUIDSGID=",
    "SystemCallArchitectures=",
    "SystemCallFilter=",
)


def _security(unit: Path, name: str = "colab-gateway.service") -> tuple[float, dict[str, bool]]:
    """systemd's own reading of the unit and its drop-ins: (exposure, {setting: in force})."""
    import json

    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
    )
    level = re.search(rf"Overall exposure level for {re.escape(name)}: ([\d.]+)", result.stdout)
    assert level, result.stdout + result.stderr
    listing = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--json=short", str(unit)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    in_force: dict[str, bool] = {}
    for entry in json.loads(listing):
        name = entry["name"]
        for setting in NNP_IMPLYING:
            if name.startswith(setting.rstrip("=")):
                in_force[setting] = in_force.get(setting, False) or bool(entry["set"])
    return float(level.group(1)), in_force


def _gateway_with_drop_ins(tmp_path: Path, method: str, **variables: object) -> Path:
    """colab-gateway.service with the drop-ins the role installs for this browser method."""
    (unit,) = (u for u in unit_copies(tmp_path) if u.name == "colab-gateway.service")
    drop_in_dir = tmp_path / "colab-gateway.service.d"
    drop_in_dir.mkdir()
    _render(
        tmp_path,
        "colab-gateway.conf.j2",
        drop_in_dir / "10-site.conf",
        **{
            "_colab_gateway_user": "pi",
            "_colab_gateway_uid": "1000",
            "_colab_gateway_browser_method": method,
            "colab_gateway_venv": str(BIN.parent),
            **variables,
        },
    )
    if method == "snap":
        shutil.copy(ROLE / "files/colab-gateway-snap.conf", drop_in_dir / "20-snap-chromium.conf")
    return unit


@pytest.mark.slow
@needs_systemd_analyze
@pytest.mark.parametrize("login_user", [False, True], ids=["dedicated", "login-user"])
def test_tmux_unit_sandbox_and_the_login_users_exception(tmp_path: Path, login_user: bool) -> None:
    """The tmux server is sandboxed (no_new_privs and every seccomp setting) for the
    dedicated user; for a login user 20-login-user.conf lifts all of it, so sudo works."""
    (unit,) = (u for u in unit_copies(tmp_path) if u.name == "colab-gateway-tmux.service")
    if login_user:
        drop_ins = tmp_path / "colab-gateway-tmux.service.d"
        drop_ins.mkdir()
        shutil.copy(ROLE / "files/colab-gateway-tmux-login.conf", drop_ins / "20-login-user.conf")
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True
    )
    assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr
    level, in_force = _security(unit, "colab-gateway-tmux.service")
    assert set(in_force) == set(NNP_IMPLYING), in_force
    if login_user:
        assert not any(in_force.values()), {k: v for k, v in in_force.items() if v}
    else:
        assert all(in_force.values()), {k: v for k, v in in_force.items() if not v}
    print(f"colab-gateway-tmux.service exposure, {'login' if login_user else 'dedicated'}: {level}")


def test_role_installs_the_snap_drop_in_from_systemd_dir() -> None:
    for name in ("colab-gateway-snap.conf", "colab-gateway-tmux-login.conf"):
        installed = ROLE / "files" / name
        assert installed.resolve() == (REPO / "systemd" / name).resolve()
    units = (ROLE / "tasks/units.yml").read_text()
    assert "20-snap-chromium.conf" in units and "colab-gateway-snap.conf" in units


@pytest.mark.slow
@needs_systemd_analyze
@pytest.mark.parametrize("method", ["apt", "snap"])
def test_role_drop_ins_verify_and_decide_no_new_privs(tmp_path: Path, method: str) -> None:
    """With the snap's drop-in nothing that implies no_new_privs is left in force (so the
    setuid snap-confine can gain root); without it the whole seccomp sandbox stays."""
    unit = _gateway_with_drop_ins(tmp_path, method)
    site = (tmp_path / "colab-gateway.service.d/10-site.conf").read_text()
    assert ("XDG_RUNTIME_DIR=/run/user/1000" in site) == (method == "snap")
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True
    )
    assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr
    level, in_force = _security(unit)
    assert set(in_force) == set(NNP_IMPLYING), in_force
    if method == "snap":
        assert not any(in_force.values()), {k: v for k, v in in_force.items() if v}
    else:
        # MemoryDenyWriteExecute stays off for V8 (the unit's comment says why).
        off = {k for k, v in in_force.items() if not v}
        assert off == {"MemoryDenyWriteExecute="}, off
        assert level <= 3.0
    # SystemCallLog= implies it too (systemd 247+): the unit must not set it at all.
    assert "SystemCallLog" not in (REPO / "systemd/colab-gateway.service").read_text()
    print(f"exposure with the {method} drop-ins: {level}")


@pytest.mark.slow
def test_role_drop_in_follows_the_venv_and_spares_a_login_users_ipc(tmp_path: Path) -> None:
    site = tmp_path / "10-site.conf"
    common = {
        "_colab_gateway_user": "pi",
        "_colab_gateway_uid": "1000",
        "_colab_gateway_browser_method": "apt",
        "colab_gateway_venv": "/srv/cg/venv",
    }
    text = _render(
        tmp_path, "colab-gateway.conf.j2", site, _colab_gateway_user_logs_in=True, **common
    ).read_text()
    assert "ExecStart=\nExecStart=/srv/cg/venv/bin/colab-gateway run\n" in text
    assert "RemoveIPC=no" in text
    text = _render(
        tmp_path, "colab-gateway.conf.j2", site, _colab_gateway_user_logs_in=False, **common
    ).read_text()
    assert "RemoveIPC" not in text
    assert "ReadWritePaths" not in text  # no textfile, nothing beyond the unit's own


@pytest.mark.slow
@needs_systemd_analyze
def test_role_lets_the_service_write_the_node_exporter_textfile(tmp_path: Path) -> None:
    textfile = "/var/lib/prometheus/node-exporter/colab_gateway.prom"
    unit = _gateway_with_drop_ins(tmp_path, "apt", colab_gateway_metrics_textfile=textfile)
    site = (tmp_path / "colab-gateway.service.d/10-site.conf").read_text()
    assert "\nReadWritePaths=-/var/lib/prometheus/node-exporter\n" in site
    # systemd takes the drop-in with the unit (the "-": the directory need not exist)
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True
    )
    assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr


def test_chromedriver_gets_no_snap_binary_in_snap_mode(tmp_path: Path) -> None:
    """The role's snap mode meets launch.py's: with the snap's driver, no browser binary."""
    from gateway.browser import launch
    from gateway.config import BrowserConfig

    options = launch.chrome_options(
        BrowserConfig(),
        "/snap/bin/chromium.chromedriver",
        launch.Engine("/snap/bin/chromium"),
        tmp_path,
        "a",
    )
    assert "binary" not in options.to_capabilities()["goog:chromeOptions"]


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["auto", "headless-shell", "chromium"])
def test_role_renders_the_browser_engine(tmp_path: Path, engine: str) -> None:
    import yaml

    config = _render_config(tmp_path, colab_gateway_browser_engine=engine)
    rendered = yaml.safe_load(config.read_text())
    assert rendered["browser"]["engine"] == engine
    result = _check_config(config)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("fallback", [False, True])
def test_role_renders_the_run_all_fallback(tmp_path: Path, fallback: bool) -> None:
    import yaml

    config = _render_config(tmp_path, colab_gateway_browser_rerun_fallback_all=fallback)
    rendered = yaml.safe_load(config.read_text())
    assert rendered["browser"]["rerun_fallback_all"] is fallback
    result = _check_config(config)
    assert result.returncode == 0, result.stderr


def test_role_renders_the_unknown_dialog_grace(tmp_path: Path) -> None:
    import yaml

    default = yaml.safe_load(_render_config(tmp_path).read_text())
    assert default["browser"]["unknown_dialog_grace"] == "1m"
    config = _render_config(tmp_path, colab_gateway_browser_unknown_dialog_grace="90s")
    assert yaml.safe_load(config.read_text())["browser"]["unknown_dialog_grace"] == "90s"
    result = _check_config(config)
    assert result.returncode == 0, result.stderr


def test_role_renders_how_often_vm_messages_are_collected(tmp_path: Path) -> None:
    import yaml

    default = yaml.safe_load(_render_config(tmp_path).read_text())
    assert default["notify"]["vm_messages_every"] == "30s"
    config = _render_config(tmp_path, colab_gateway_notify_vm_messages_every="2m")
    assert yaml.safe_load(config.read_text())["notify"]["vm_messages_every"] == "2m"
    result = _check_config(config)
    assert result.returncode == 0, result.stderr


def test_role_renders_the_hostile_vm_limits(tmp_path: Path) -> None:
    """The role's defaults for issue 22's new keys reach the config and pass its check."""
    import yaml

    config = _render_config(
        tmp_path, colab_gateway_view_idle_timeout="5m", colab_gateway_sync_inode_floor=500
    )
    rendered = yaml.safe_load(config.read_text())
    assert rendered["view"] == {"idle_timeout": "5m"}
    assert rendered["sync"]["inode_floor"] == 500
    result = _check_config(config)
    assert result.returncode == 0, result.stderr


# What `apt-cache policy chromium chromium-headless-shell` says (its layout, LC_ALL=C) on
# Debian 12, where both come from one source at one version, and on Raspberry Pi OS, whose
# own Chromium build ("rpt", with an epoch) has no shell of its own version next to it.
DEBIAN_VERSION = "156.0.8078.114-1~deb12u1"
RPT_VERSION = "1:156.0.8078.114-1~deb12u1+rpt1"
POLICY_STANZA = """{name}:
  Installed: (none)
  Candidate: {version}
  Version table:
     {version} 500
        500 {uri} bookworm/main arm64 Packages
"""
DEBIAN_URI = "http://deb.debian.org/debian"
RPI_URI = "http://archive.raspberrypi.com/debian"
POLICIES = {
    "debian": POLICY_STANZA.format(name="chromium", version=DEBIAN_VERSION, uri=DEBIAN_URI)
    + POLICY_STANZA.format(name="chromium-headless-shell", version=DEBIAN_VERSION, uri=DEBIAN_URI),
    "rpi-debian-shell": POLICY_STANZA.format(name="chromium", version=RPT_VERSION, uri=RPI_URI)
    + POLICY_STANZA.format(name="chromium-headless-shell", version=DEBIAN_VERSION, uri=DEBIAN_URI),
    # A package apt has never heard of gets no stanza at all.
    "rpi-no-shell": POLICY_STANZA.format(name="chromium", version=RPT_VERSION, uri=RPI_URI),
}

# Stand-ins for dpkg-query, apt-cache and apt-get that log their arguments: this host is
# neither Raspberry Pi OS nor a machine to install packages on. The deploy test
# (tests/test_deploy.py) runs the same tasks against a real apt on Debian 12.
FAKE_TOOLS = {
    "dpkg-query": """#!/bin/sh
echo "dpkg-query $*" | tr '\\n' ' ' >>"$FAKE_APT_LOG" && echo >>"$FAKE_APT_LOG"
shift 3  # -W -f FORMAT
rc=0
for p in "$@"; do
  if grep -qx "$p" "$FAKE_INSTALLED"; then echo "$p installed"
  else echo "dpkg-query: no packages found matching $p" >&2; rc=1; fi
done
exit $rc
""",
    "apt-cache": """#!/bin/sh
echo "apt-cache $*" >>"$FAKE_APT_LOG"
cat "$FAKE_POLICY"
""",
    # Fails `update` as often as $FAKE_APT_BUSY says, as when apt-daily holds the lock.
    "apt-get": """#!/bin/sh
echo "apt-get $*" >>"$FAKE_APT_LOG"
case " $* " in *" update "*)
  busy=$(cat "$FAKE_APT_BUSY" 2>/dev/null || echo 0)
  if [ "$busy" -gt 0 ]; then
    echo $((busy - 1)) >"$FAKE_APT_BUSY"
    echo "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 812 (apt-get)" >&2
    exit 100
  fi;;
esac
""",
}


@dataclass
class PackagePlay:
    result: subprocess.CompletedProcess[str]
    calls: list[str]  # each tool's command line, in order

    def installed(self) -> list[str]:
        lines = [c for c in self.calls if c.startswith("apt-get") and " install " in c]
        assert len(lines) <= 1, lines
        return lines[0].split(" install -y -q ")[1].split() if lines else []

    def updates(self) -> list[str]:
        return [c for c in self.calls if c.startswith("apt-get") and c.endswith(" update -q")]


def _play_packages(
    tmp_path: Path,
    os_name: str,
    policy: str,
    installed: set[str],
    apt_busy: int = 0,
    **variables: object,
) -> PackagePlay:
    """The role's engine checks and package tasks, played on this host with FAKE_TOOLS."""
    import json

    if not (BIN / "ansible-playbook").exists():
        pytest.skip("needs ansible-core in the venv (pip install -e '.[test]')")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for name, script in FAKE_TOOLS.items():
        (fake_bin / name).write_text(script)
        (fake_bin / name).chmod(0o755)
    (tmp_path / "installed").write_text("".join(f"{p}\n" for p in installed))
    (tmp_path / "policy").write_text(policy)
    log = tmp_path / "calls.log"
    log.touch()
    (tmp_path / "apt-busy").write_text(f"{apt_busy}\n")
    playbook = tmp_path / "packages.yml"
    playbook.write_text(
        json.dumps(
            [
                {
                    "name": "The role's package tasks",
                    "hosts": "localhost",
                    "gather_facts": False,
                    "vars_files": [
                        f"{ROLE}/defaults/main.yml",
                        f"{ROLE}/vars/main.yml",
                        f"{ROLE}/vars/{os_name}.yml",
                    ],
                    "tasks": [
                        {"ansible.builtin.import_tasks": f"{ROLE}/tasks/browser-engine.yml"},
                        {"ansible.builtin.import_tasks": f"{ROLE}/tasks/packages.yml"},
                    ],
                }
            ]
        )
    )
    result = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "-c",
            "local",
            "-i",
            "localhost,",
            str(playbook),
            "-e",
            json.dumps({"ansible_python_interpreter": sys.executable, **variables}),
        ],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "PATH": f"{fake_bin}:{os.environ['PATH']}",
            "FAKE_APT_LOG": str(log),
            "FAKE_INSTALLED": str(tmp_path / "installed"),
            "FAKE_POLICY": str(tmp_path / "policy"),
            "FAKE_APT_BUSY": str(tmp_path / "apt-busy"),
            "ANSIBLE_HOME": str(tmp_path / "ansible"),
            "ANSIBLE_REMOTE_TMP": str(tmp_path / "ansible-remote-tmp"),
            "ANSIBLE_LOCALHOST_WARNING": "0",
            "ANSIBLE_NOCOLOR": "1",
        },
        timeout=180,
    )
    return PackagePlay(result, log.read_text().splitlines())


BASE_PACKAGES = ["tmux", "openssh-client", "rsync", "ca-certificates", "python3-venv"]
BROWSER_PACKAGES = ["chromium", "chromium-driver", "xvfb"]


@pytest.mark.slow
def test_role_installs_the_headless_shell_at_chromiums_version(tmp_path: Path) -> None:
    play = _play_packages(tmp_path, "Debian", POLICIES["debian"], set())
    assert play.result.returncode == 0, play.result.stdout[-4000:]
    assert play.calls.index(play.updates()[0]) < play.calls.index(
        "apt-cache policy chromium chromium-headless-shell"
    ), play.calls
    assert sorted(play.installed()) == sorted(
        BASE_PACKAGES + BROWSER_PACKAGES + ["chromium-headless-shell"]
    )


@pytest.mark.slow
def test_role_waits_for_apts_lock_after_boot(tmp_path: Path) -> None:
    """apt-daily holds the lists' lock on a fresh boot: `apt-get update` is tried again
    until it gets it, and apt-get waits for dpkg's lock before installing."""
    play = _play_packages(
        tmp_path, "Debian", POLICIES["debian"], set(), apt_busy=2, _colab_gateway_apt_update_delay=0
    )
    assert play.result.returncode == 0, play.result.stdout[-4000:]
    assert len(play.updates()) == 3, play.calls
    assert play.installed(), play.calls
    for call in play.calls:
        if call.startswith("apt-get"):
            assert " -o DPkg::Lock::Timeout=600 " in call, call


@pytest.mark.slow
def test_role_upgrades_chromium_with_the_shell_it_adds(tmp_path: Path) -> None:
    """An older install without the shell: the shell comes with Chromium and its driver
    named too, so that apt brings all three to the one version."""
    everything = set(BASE_PACKAGES + BROWSER_PACKAGES)
    play = _play_packages(tmp_path, "Debian", POLICIES["debian"], everything)
    assert play.result.returncode == 0, play.result.stdout[-4000:]
    assert sorted(play.installed()) == ["chromium", "chromium-driver", "chromium-headless-shell"]


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["rpi-debian-shell", "rpi-no-shell"])
def test_role_skips_a_shell_apt_cannot_match_to_chromium(tmp_path: Path, policy: str) -> None:
    """Raspberry Pi OS: a shell of another version than its Chromium, or none at all, is
    left out, the play goes on, and it says the daemon uses full Chromium."""
    play = _play_packages(tmp_path, "Debian", POLICIES[policy], set())
    out = play.result.stdout
    assert play.result.returncode == 0, out[-4000:]
    assert sorted(play.installed()) == sorted(BASE_PACKAGES + BROWSER_PACKAGES)
    assert "chromium-headless-shell is not installed" in out, out[-4000:]
    assert "The daemon will use full Chromium" in out
    assert f"for chromium {RPT_VERSION}" in out
    shell = DEBIAN_VERSION if policy == "rpi-debian-shell" else "(none)"
    assert f"apt offers version {shell} for" in out


@pytest.mark.slow
def test_role_fails_early_when_the_required_shell_cannot_be_had(tmp_path: Path) -> None:
    play = _play_packages(
        tmp_path,
        "Debian",
        POLICIES["rpi-debian-shell"],
        set(),
        colab_gateway_browser_engine="headless-shell",
    )
    out = play.result.stdout
    assert play.result.returncode != 0
    assert "colab_gateway_browser_engine is headless-shell, but apt offers" in out, out[-4000:]
    assert f"chromium-headless-shell {DEBIAN_VERSION} for chromium {RPT_VERSION}" in out
    assert play.installed() == [], "nothing is installed before the play stops"


@pytest.mark.slow
def test_role_asks_apt_nothing_about_the_shell_for_engine_chromium(tmp_path: Path) -> None:
    play = _play_packages(
        tmp_path, "Debian", POLICIES["debian"], set(), colab_gateway_browser_engine="chromium"
    )
    assert play.result.returncode == 0, play.result.stdout[-4000:]
    assert not any(c.startswith("apt-cache") for c in play.calls), play.calls
    assert "chromium-headless-shell" not in " ".join(play.calls)
    assert sorted(play.installed()) == sorted(BASE_PACKAGES + BROWSER_PACKAGES)


@pytest.mark.slow
def test_role_second_run_with_the_shell_installed_changes_nothing(tmp_path: Path) -> None:
    everything = set(BASE_PACKAGES + BROWSER_PACKAGES + ["chromium-headless-shell"])
    play = _play_packages(tmp_path, "Debian", POLICIES["debian"], everything)
    assert play.result.returncode == 0, play.result.stdout[-4000:]
    assert [c.split()[0] for c in play.calls] == ["dpkg-query"], play.calls
    assert "changed=0" in play.result.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("os_name", "headless", "message"),
    [
        ("Ubuntu", True, "the snap has no\nheadless shell"),
        ("Debian", False, "which has no window, but colab_gateway_browser_headless is false"),
    ],
    ids=["snap", "headed"],
)
def test_role_refuses_the_headless_shell_where_it_cannot_run(
    tmp_path: Path, os_name: str, headless: bool, message: str
) -> None:
    play = _play_packages(
        tmp_path,
        os_name,
        POLICIES["debian"],
        set(),
        colab_gateway_browser_engine="headless-shell",
        colab_gateway_browser_headless=headless,
    )
    out = play.result.stdout
    assert play.result.returncode != 0
    failed_task = re.findall(r"^TASK \[(.*?)\]", out.split("fatal:")[0], re.M)
    assert failed_task and failed_task[-1].startswith("Check that the headless shell"), out
    assert " ".join(message.split()) in " ".join(out.split()), out[-4000:]
    assert play.calls == [], "it fails before dpkg or apt is asked anything"


def _play_wheel_build(
    tmp_path: Path, checkout: Path
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """The role's wheel-build tasks, played on this host as the controller; the wheel they
    build is copied to tmp_path/built.whl."""
    import json

    if not (BIN / "ansible-playbook").exists():
        pytest.skip("needs ansible-core in the venv (pip install -e '.[test]')")
    built = tmp_path / "built.whl"
    playbook = tmp_path / "wheel.yml"
    playbook.write_text(
        json.dumps(
            [
                {
                    "name": "The role's wheel build",
                    "hosts": "localhost",
                    "gather_facts": False,
                    "vars": {"role_path": str(ROLE)},
                    "tasks": [
                        {"ansible.builtin.import_tasks": f"{ROLE}/tasks/wheel-build.yml"},
                        {
                            "name": "Keep the wheel",
                            "ansible.builtin.copy": {
                                "src": "{{ _colab_gateway_built.files[0].path }}",
                                "dest": str(built),
                                "mode": "0644",
                            },
                        },
                    ],
                }
            ]
        )
    )
    variables = {
        "ansible_python_interpreter": sys.executable,
        "colab_gateway_wheel": "",
        "colab_gateway_checkout": str(checkout),
    }
    (tmp_path / "tmp").mkdir()
    result = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            *("-c", "local", "-i", "localhost,", str(playbook)),
            *("-e", json.dumps(variables)),
        ],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "PATH": f"{BIN}:{os.environ['PATH']}",
            "TMPDIR": str(tmp_path / "tmp"),
            "ANSIBLE_HOME": str(tmp_path / "ansible"),
            "ANSIBLE_REMOTE_TMP": str(tmp_path / "ansible-remote-tmp"),
            "ANSIBLE_LOCALHOST_WARNING": "0",
            "ANSIBLE_NOCOLOR": "1",
        },
        timeout=300,
    )
    return result, built


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["git", "tree"])
def test_role_wheel_never_ships_a_stale_module_from_build(tmp_path: Path, kind: str) -> None:
    """A module deleted from the checkout but still in its build/lib (left by an earlier
    `pip wheel .` or `setup.py build`) stays out of the wheel; so does an untracked one
    next to the source in a git checkout. A checkout that is no git repository (an unpacked
    tarball) is copied without its build/."""
    import zipfile

    checkout = tmp_path / "checkout"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(checkout)], check=True)
    stale = checkout / "build/lib/gateway/deleted_module.py"
    stale.parent.mkdir(parents=True)
    stale.write_text("GONE = True\n")
    (checkout / "gateway/local_experiment.py").write_text("UNTRACKED = True\n")
    if kind == "tree":
        shutil.rmtree(checkout / ".git")
    result, built = _play_wheel_build(tmp_path, checkout)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    names = zipfile.ZipFile(built).namelist()
    assert "gateway/__init__.py" in names
    assert "gateway/deleted_module.py" not in names
    if kind == "git":
        assert "gateway/local_experiment.py" not in names
    else:
        assert "is not a git checkout" in result.stdout, result.stdout[-4000:]


# Ubuntu 20.04 for files/bootstrap-python.sh: a python3 that is 3.8, apt offering nothing
# newer, and stand-ins for apt-get (its lists' lock held $FAKE_APT_BUSY times, as by
# apt-daily after boot) and for uv. PATH holds only these and the few tools the script
# calls, so that this host's own Python 3.10+ is not found.
FOCAL_TOOLS = {
    # `-m venv DIR` makes a pip that logs and, asked for uv, installs UV_STAND_IN.
    "python3": """#!/bin/sh
echo "python3 $*" >>"$FAKE_APT_LOG"
case "$*" in
  *version_info*) exit 1;;  # 3.8: not new enough
  "-m venv "*)
    mkdir -p "$3/bin"
    printf '#!/bin/sh\\necho "pip $*" >>"$FAKE_APT_LOG"\\n' >"$3/bin/pip"
    printf 'case "$*" in *" uv") cp "$FAKE_UV" "%s/bin/uv";; esac\\n' "$3" >>"$3/bin/pip"
    chmod 755 "$3/bin/pip";;
esac
exit 0
""",
    # A deadsnakes python3.10 without python3.10-venv.
    "python3.10": """#!/bin/sh
echo "python3.10 $*" >>"$FAKE_APT_LOG"
case "$*" in
  *"version_info < (3, 10)"*) exit 0;;
  *ensurepip*) exit 1;;
  *"version_info[:2]"*) echo 3.10;;
esac
""",
    "apt-cache": """#!/bin/sh
echo "apt-cache $*" >>"$FAKE_APT_LOG"
printf 'python3:\\n  Installed: 3.8.2-0ubuntu2\\n  Candidate: 3.8.2-0ubuntu2\\n'
""",
    "apt-get": FAKE_TOOLS["apt-get"],
}
UV_STAND_IN = """#!/bin/sh
echo "uv $*" >>"$FAKE_APT_LOG"
case "$1 $2" in "python find") echo "$FAKE_UV_PYTHON";; *) exit 2;; esac
"""


def _bootstrap(
    tmp_path: Path, mode: str, *, uv_python: bool, apt_busy: int = 0, deadsnakes: bool = False
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (tmp_path / "uv").write_text(UV_STAND_IN)
    (tmp_path / "uv").chmod(0o755)
    for name, script in FOCAL_TOOLS.items():
        if name == "python3.10" and not deadsnakes:
            continue
        (fake_bin / name).write_text(script)
        (fake_bin / name).chmod(0o755)
    for tool in ("sh", "sed", "mkdir", "cat", "sleep", "rm", "cp", "chmod"):
        (fake_bin / tool).symlink_to(shutil.which(tool) or tool)
    python_dir = tmp_path / "python"
    if uv_python:
        (python_dir / "uv/bin").mkdir(parents=True)
        (python_dir / "uv/bin/uv").write_text(UV_STAND_IN)
        (python_dir / "uv/bin/uv").chmod(0o755)
    log = tmp_path / "calls.log"
    log.touch()
    (tmp_path / "apt-busy").write_text(f"{apt_busy}\n")
    result = subprocess.run(
        [
            *(str(fake_bin / "sh"), str(ROLE / "files/bootstrap-python.sh")),
            *(mode, "3.12", str(python_dir), ""),
        ],
        capture_output=True,
        text=True,
        env={
            "PATH": str(fake_bin),
            "FAKE_APT_LOG": str(log),
            "FAKE_APT_BUSY": str(tmp_path / "apt-busy"),
            "FAKE_UV_PYTHON": sys.executable,
            "FAKE_UV": str(tmp_path / "uv"),
            "COLAB_GATEWAY_APT_RETRY_DELAY": "0",
        },
        timeout=60,
    )
    return result, log.read_text().splitlines()


def test_bootstrap_on_focal_asks_apt_nothing_once_uvs_python_is_there(tmp_path: Path) -> None:
    """The second play on Ubuntu 20.04: python3 is 3.8, uv's CPython is installed; apt's
    lists are not updated again (they were, on every play)."""
    result, calls = _bootstrap(tmp_path, "auto", uv_python=True)
    assert result.returncode == 0, result.stderr
    assert f"python={sys.executable}" in result.stdout.splitlines()
    assert "changed=0" in result.stdout.splitlines()
    assert not [c for c in calls if c.startswith("apt")], calls


def test_bootstrap_waits_for_apts_lists_lock(tmp_path: Path) -> None:
    """apt-daily holds the lists' lock right after boot: the bootstrap's `apt-get update`
    is tried again until it gets the lock (here it then learns that apt has no Python
    3.10+, which mode system refuses by name)."""
    result, calls = _bootstrap(tmp_path, "system", uv_python=False, apt_busy=2)
    updates = [c for c in calls if c.startswith("apt-get") and c.endswith(" update -q")]
    assert len(updates) == 3, calls
    assert all("-o DPkg::Lock::Timeout=600" in c for c in updates), updates
    assert result.returncode == 1
    assert "colab_gateway_python is 'system' but this machine's python3 is 3.8" in result.stderr


# A stand-in for snap on a freshly booted Ubuntu image: until `snap wait system
# seed.loaded` has run, snapd refuses changes; then `snap install` clashes $FAKE_SNAP_BUSY
# times with the first auto-refresh (exit 10), or fails for good when $FAKE_SNAP_FAILS
# exists. And for loginctl.
SNAP_TOOLS = {
    "snap": """#!/bin/sh
echo "snap $*" >>"$FAKE_APT_LOG"
case "$*" in
  "wait system seed.loaded") touch "$FAKE_SNAP_SEEDED"; exit 0;;
  "install "*)
    if [ ! -e "$FAKE_SNAP_SEEDED" ]; then
      echo 'error: too early for operation, device not yet seeded or device model not' \\
        'acknowledged' >&2
      exit 1
    fi
    if [ -e "$FAKE_SNAP_FAILS" ]; then echo 'error: cannot install "chromium"' >&2; exit 1; fi
    busy=$(cat "$FAKE_APT_BUSY")
    if [ "$busy" -gt 0 ]; then
      echo $((busy - 1)) >"$FAKE_APT_BUSY"
      echo 'error: snap "chromium" has "auto-refresh" change in progress' >&2
      exit 10
    fi;;
esac
""",
    "loginctl": """#!/bin/sh
echo "loginctl $*" >>"$FAKE_APT_LOG"
""",
}


def _play_snap(
    tmp_path: Path, home: str, busy: int = 0
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """The role's snap tasks (tasks/browser-snap.yml), played on this host with SNAP_TOOLS."""
    import json

    if not (BIN / "ansible-playbook").exists():
        pytest.skip("needs ansible-core in the venv (pip install -e '.[test]')")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for name, script in SNAP_TOOLS.items():
        (fake_bin / name).write_text(script)
        (fake_bin / name).chmod(0o755)
    log = tmp_path / "calls.log"
    log.touch()
    (tmp_path / "busy").write_text(f"{busy}\n")
    playbook = tmp_path / "snap.yml"
    playbook.write_text(
        json.dumps(
            [
                {
                    "name": "The role's snap tasks",
                    "hosts": "localhost",
                    "gather_facts": False,
                    "vars_files": [
                        f"{ROLE}/defaults/main.yml",
                        f"{ROLE}/vars/main.yml",
                        f"{ROLE}/vars/Ubuntu.yml",
                    ],
                    "tasks": [{"ansible.builtin.import_tasks": f"{ROLE}/tasks/browser-snap.yml"}],
                }
            ]
        )
    )
    variables = {
        "ansible_python_interpreter": sys.executable,
        "_colab_gateway_user": "colab-gateway",
        "_colab_gateway_home": home,
        "_colab_gateway_snap_delay": 0,
    }
    result = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            *("-c", "local", "-i", "localhost,", str(playbook)),
            *("-e", json.dumps(variables)),
        ],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "PATH": f"{fake_bin}:{os.environ['PATH']}",
            "FAKE_APT_LOG": str(log),
            "FAKE_APT_BUSY": str(tmp_path / "busy"),
            "FAKE_SNAP_SEEDED": str(tmp_path / "seeded"),
            "FAKE_SNAP_FAILS": str(tmp_path / "snap-fails"),
            "ANSIBLE_HOME": str(tmp_path / "ansible"),
            "ANSIBLE_REMOTE_TMP": str(tmp_path / "ansible-remote-tmp"),
            "ANSIBLE_LOCALHOST_WARNING": "0",
            "ANSIBLE_NOCOLOR": "1",
        },
        timeout=180,
    )
    return result, log.read_text().splitlines()


@pytest.mark.slow
def test_role_refuses_a_snap_user_whose_home_is_outside_home(tmp_path: Path) -> None:
    result, calls = _play_snap(tmp_path, "/var/lib/colab-gateway")
    out = " ".join(result.stdout.split())
    assert result.returncode != 0
    assert "has the home /var/lib/colab-gateway, outside /home" in out, result.stdout[-4000:]
    assert "snap-confine refuses it" in out
    assert calls == [], "it fails before snap is asked anything"


@pytest.mark.slow
def test_role_keeps_the_units_xdg_dirs_out_of_the_snap(tmp_path: Path) -> None:
    """The unit's XDG_CACHE_HOME/XDG_CONFIG_HOME (under /var/lib/colab-gateway) are not
    handed to the snap, which may not write there; Chromium from apt keeps them."""
    for method, unset in (("snap", True), ("apt", False)):
        (tmp_path / method).mkdir()
        unit = _gateway_with_drop_ins(tmp_path / method, method)
        assert "Environment=XDG_CACHE_HOME=" in unit.read_text()
        site = unit_settings(unit.parent / "colab-gateway.service.d/10-site.conf")
        names = set(site.get("UnsetEnvironment", []))
        assert ({"XDG_CACHE_HOME", "XDG_CONFIG_HOME"} <= names) is unset, (method, site)


def test_bootstrap_refuses_a_python_without_venv(tmp_path: Path) -> None:
    """A deadsnakes python3.10 without python3.10-venv: refused by name, with the package
    to install, instead of a failing `python -m venv` later in the play."""
    result, _ = _bootstrap(tmp_path, "auto", uv_python=False, deadsnakes=True)
    assert result.returncode == 1, result.stdout
    message = " ".join(result.stderr.split())
    assert "(Python 3.10) has no venv/ensurepip module" in message, result.stderr
    assert "install python3.10-venv" in message
    assert "python=" not in result.stdout


def test_bootstrap_installs_uv_from_a_wheel_only(tmp_path: Path) -> None:
    """Ubuntu 20.04's first play: uv comes from the index as a wheel, never built from
    source (Rust, an hour on a Pi); uv then gives the CPython."""
    result, calls = _bootstrap(tmp_path, "auto", uv_python=False)
    assert result.returncode == 0, result.stderr
    assert f"python={sys.executable}" in result.stdout.splitlines()
    (install_uv,) = [c for c in calls if c.startswith("pip install") and c.endswith(" uv")]
    assert " --only-binary :all: " in f"{install_uv} ", calls


@pytest.mark.slow
def test_role_installs_the_snap_on_a_freshly_booted_image(tmp_path: Path) -> None:
    """snapd refuses changes until the image is seeded, then clashes twice with its first
    auto-refresh (exit 10): the play waits for the seed and tries again."""
    result, calls = _play_snap(tmp_path, "/home/colab-gateway", busy=2)
    assert result.returncode == 0, result.stdout[-4000:]
    assert calls[:4] == ["snap wait system seed.loaded"] + ["snap install chromium"] * 3, calls
    assert calls[4:] == ["loginctl enable-linger colab-gateway"], calls


@pytest.mark.slow
def test_role_stops_at_a_snap_error_other_than_a_clash(tmp_path: Path) -> None:
    """Only exit 10 (another change in progress) is tried again."""
    (tmp_path / "seeded").touch()
    (tmp_path / "snap-fails").touch()
    result, calls = _play_snap(tmp_path, "/home/colab-gateway")
    assert result.returncode != 0
    assert calls.count("snap install chromium") == 1, calls


def test_role_renders_the_vm_stats_and_gpu_idle_settings(tmp_path: Path) -> None:
    import yaml

    default = yaml.safe_load(_render_config(tmp_path).read_text())
    assert default["vm_stats"] == {"every": "30s"}
    assert default["notify"]["gpu_idle_after"] == "0s"
    assert "gpu_idle" in default["notify"]["events"]
    config = _render_config(
        tmp_path, colab_gateway_vm_stats_every="1m", colab_gateway_notify_gpu_idle_after="20m"
    )
    rendered = yaml.safe_load(config.read_text())
    assert rendered["vm_stats"] == {"every": "1m"}
    assert rendered["notify"]["gpu_idle_after"] == "20m"
    result = _check_config(config)
    assert result.returncode == 0, result.stderr
