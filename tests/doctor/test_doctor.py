"""``colab-gateway doctor``: each check's fail path (and its ok path where cheap) against
real things: config files, key files with wrong modes, listening and closed ports, child
processes whose /proc status is read, a local HTTP address echo, a live status socket."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncssh
import pytest
from helpers import REPO, StartDaemon, free_port, wait_until
from helpers.ddns import Echo, FakeServer, Handler

from gateway.browser import launch
from gateway.browser.launch import chromium_version
from gateway.doctor import browser_checks, network_checks, service_checks, system_checks
from gateway.doctor.command import CHECKS, Check, load, run_all, run_check
from gateway.doctor.env import Env, Unavailable
from gateway.doctor.report import Finding, Result, Status, exit_code, render
from gateway.paths import Paths
from gateway.state import Health, State
from gateway.status_server import StatusServer
from gateway.tunnel import hostkeys
from gateway.tunnel.keys import KeyStore

NOTEBOOK = "https://colab.research.google.com/drive/abc123"
# Everything off: each test switches on what its check looks at.
BASE = """\
tunnel: {enabled: false}
browser: {enabled: false}
tmux: {enabled: false}
ddns: {provider: none}
"""


def make_env(tmp_path: Path, config_text: str = BASE, **overrides: object) -> Env:
    config = tmp_path / "config.yaml"
    config.write_text(config_text)
    paths = Paths(config=config, state_dir=tmp_path / "state", runtime_dir=tmp_path / "run")
    loaded, problems = load(paths)
    assert not problems, problems
    return Env(paths=paths, loaded=loaded, **overrides)  # type: ignore[arg-type]


def browser_config(**browser: str) -> str:
    keys = ", ".join(f"{k}: {v!r}" for k, v in browser.items())
    return (
        f"browser: {{enabled: true{', ' if keys else ''}{keys}}}\n"
        "tunnel: {enabled: false}\ntmux: {enabled: false}\n"
        f"sessions: [{{name: colab, notebook_url: {NOTEBOOK!r}}}]\n"
    )


def tunnel_config(**tunnel: object) -> str:
    keys = "".join(f", {k}: {v!r}" for k, v in tunnel.items())
    return (
        f"tunnel: {{enabled: true{keys}}}\nbrowser: {{enabled: false}}\ntmux: {{enabled: false}}\n"
        f"sessions: [{{name: colab, notebook_url: {NOTEBOOK!r}}}]\n"
    )


def script(directory: Path, name: str, body: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


# -- the runner and the renderer ------------------------------------------------------------


def test_a_bad_config_fails_and_the_checks_that_need_it_say_they_were_skipped(
    tmp_path: Path,
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("tunnel:\n  login_timeout: 20\n  listen: nowhere\n")
    paths = Paths(config=config, state_dir=tmp_path / "state", runtime_dir=tmp_path / "run")
    loaded, problems = load(paths)
    assert loaded is None and len(problems) == 2
    results = {r.check: r.finding for r in run_all(Env(paths=paths), problems)}

    assert results["config"].status is Status.FAIL
    assert "2 problem(s)" in results["config"].message
    assert results["endpoint"].status is Status.SKIP
    assert "needs a valid config" in results["endpoint"].message
    # what does not need the config still runs
    assert results["disk"].status is not Status.SKIP
    assert results["daemon"].status is Status.FAIL


def test_a_crashing_check_becomes_a_fail_line_naming_it(tmp_path: Path) -> None:
    def broken(env: Env) -> Finding:
        raise ZeroDivisionError("division by zero")

    result = run_check(Check("broken", broken), make_env(tmp_path))
    assert result.status is Status.FAIL
    assert "the broken check crashed: ZeroDivisionError" in result.finding.message


def test_lines_are_aligned_and_carry_the_fix_and_only_a_fail_sets_exit_1() -> None:
    results = [
        Result("config", Finding(Status.OK, "fine")),
        Result("public port", Finding(Status.WARN, "unreachable", "test from outside")),
    ]
    lines = render(results)
    assert lines == [
        "ok    config       fine",
        "warn  public port  unreachable -> fix: test from outside",
    ]
    assert exit_code(results) == 0
    assert exit_code([*results, Result("x", Finding(Status.FAIL, "bad"))]) == 1


# -- Chromium and chromedriver --------------------------------------------------------------


def test_the_installed_chromium_and_driver_match_and_say_how_they_were_installed(
    tmp_path: Path,
) -> None:
    env = make_env(tmp_path, browser_config())
    chromium = browser_checks.check_chromium(env)
    driver = browser_checks.check_chromedriver(env)
    assert chromium.status is Status.OK, chromium
    assert driver.status is Status.OK, driver
    assert "deb chromium" in chromium.message  # Debian's package on the test machine
    assert "deb chromium-driver" in driver.message


def test_a_driver_of_another_major_version_fails(tmp_path: Path) -> None:
    stub = script(tmp_path / "bin", "chromedriver", 'echo "ChromeDriver 120.0.6099.109 (abc)"')
    env = make_env(tmp_path, browser_config(chromedriver=str(stub)))
    finding = browser_checks.check_chromedriver(env)
    assert finding.status is Status.FAIL
    shell = "/usr/lib/chromium/chromium-headless-shell"  # what the driver would drive
    installed = chromium_version(shell)
    assert f"version 120 but {shell} is {installed}" in finding.message
    assert "browser.chromedriver" in finding.fix


def test_the_headless_shell_is_named_with_the_chromium_login_uses(tmp_path: Path) -> None:
    finding = browser_checks.check_chromium(make_env(tmp_path, browser_config()))
    assert finding.status is Status.OK, finding
    assert finding.message.startswith("headless shell /usr/lib/chromium/chromium-headless-shell")
    assert "deb chromium-headless-shell" in finding.message
    assert "/usr/bin/chromium for `colab-gateway login`" in finding.message


def test_without_a_headless_shell_the_check_says_what_it_would_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(launch, "HEADLESS_SHELL_CANDIDATES", (str(tmp_path / "none"),))
    finding = browser_checks.check_chromium(make_env(tmp_path, browser_config()))
    assert finding.status is Status.OK, finding
    assert finding.message.startswith("/usr/bin/chromium, version")
    assert "apt-get install chromium-headless-shell" in finding.message
    full = browser_config(engine="chromium")
    assert "headless-shell" not in browser_checks.check_chromium(make_env(tmp_path, full)).message


def test_a_missing_chromium_fails_with_how_to_install_it(tmp_path: Path) -> None:
    env = make_env(tmp_path, browser_config(chromium=str(tmp_path / "no-chromium")))
    finding = browser_checks.check_chromium(env)
    assert finding.status is Status.FAIL
    assert "is not an executable file" in finding.message
    assert "install" in finding.fix


# -- the profile ----------------------------------------------------------------------------


def cookie_db(profile: Path, names: list[str]) -> None:
    path = profile / "Default" / "Network" / "Cookies"
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE cookies (host_key TEXT, name TEXT, value TEXT)")
        db.executemany(
            "INSERT INTO cookies VALUES ('.google.com', ?, '')", [(name,) for name in names]
        )
        db.commit()


def test_profile_missing_or_without_google_cookies_fails_and_with_them_is_ok(
    tmp_path: Path,
) -> None:
    env = make_env(tmp_path, browser_config())
    profile = env.paths.state_dir / "chromium-profile"
    missing = browser_checks.check_profile(env)
    assert missing.status is Status.FAIL and "no browser profile" in missing.message
    assert "colab-gateway login" in missing.fix

    cookie_db(profile, ["NID"])
    assert browser_checks.check_profile(env).status is Status.FAIL

    (profile / "Default" / "Network" / "Cookies").unlink()
    cookie_db(profile, ["NID", "SID"])
    signed_in = browser_checks.check_profile(env)
    assert signed_in.status is Status.OK, signed_in


def test_a_newer_signed_out_record_outweighs_old_cookies(tmp_path: Path) -> None:
    env = make_env(tmp_path, browser_config())
    cookie_db(env.paths.state_dir / "chromium-profile", ["SID"])
    evidence = env.paths.screenshots_dir / "20991231-235959.000-colab-signed_out.json"
    evidence.parent.mkdir(parents=True)
    evidence.write_text("{}")
    finding = browser_checks.check_profile(env)
    assert finding.status is Status.FAIL
    assert "last recorded state was signed out" in finding.message


class LiveStatus:
    """The daemon's real StatusServer answering from a State the test sets."""

    def __init__(self, path: Path, state: State) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = StatusServer(state, path)
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def live_status(tmp_path: Path) -> Iterator[Callable[[Path, State], LiveStatus]]:
    started: list[LiveStatus] = []

    def start(path: Path, state: State) -> LiveStatus:
        started.append(LiveStatus(path, state))
        return started[-1]

    yield start
    for server in started:
        server.close()


def test_the_running_browser_showing_the_sign_in_page_fails_the_profile(
    tmp_path: Path, live_status: Callable[[Path, State], LiveStatus]
) -> None:
    env = make_env(tmp_path, browser_config())
    cookie_db(env.paths.state_dir / "chromium-profile", ["SID"])  # stale cookies: still out
    state = State()
    state.update_runtime("colab", state="signed_out")
    live_status(env.paths.status_socket, state)
    finding = browser_checks.check_profile(env)
    assert finding.status is Status.FAIL
    assert "sign-in page for colab" in finding.message


# -- the service's sandbox (the Chromium snap under NoNewPrivileges) ------------------------


def snap_wrapper(tmp_path: Path) -> Path:
    """What Ubuntu's transitional chromium-browser deb installs: a script that runs the snap."""
    return script(tmp_path / "bin", "chromium-browser", 'exec /snap/bin/chromium "$@"')


@pytest.fixture
def child() -> Iterator[Callable[[list[str]], int]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str]) -> int:
        procs.append(subprocess.Popen(argv))
        return procs[-1].pid

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(10)


def test_a_snap_under_a_service_with_no_new_privs_fails(
    tmp_path: Path, child: Callable[[list[str]], int]
) -> None:
    locked = child(["setpriv", "--no-new-privs", "sleep", "60"])
    free = child(["sleep", "60"])
    config = browser_config(chromium=str(snap_wrapper(tmp_path)))

    # setpriv execs sleep: wait until the flag is in place before reading it
    wait_until(
        lambda: browser_checks.no_new_privs(Path("/proc"), locked) is True,
        10,
        "setpriv setting no_new_privs",
    )
    finding = browser_checks.check_sandbox(make_env(tmp_path, config, main_pid=lambda: locked))
    assert finding.status is Status.FAIL
    assert f"pid {locked}" in finding.message and "NoNewPrivileges=no" in finding.fix

    finding = browser_checks.check_sandbox(make_env(tmp_path, config, main_pid=lambda: free))
    assert finding.status is Status.OK, finding


def test_the_sandbox_is_read_from_the_injected_proc_root(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "4242").mkdir(parents=True)
    (proc / "4242" / "status").write_text("Name:\tpython3\nNoNewPrivs:\t1\nSeccomp:\t2\n")
    config = browser_config(chromium=str(snap_wrapper(tmp_path)))
    env = make_env(tmp_path, config, proc_root=proc, main_pid=lambda: 4242)
    assert browser_checks.check_sandbox(env).status is Status.FAIL


def test_the_sandbox_check_skips_without_systemd_and_warns_when_stopped(tmp_path: Path) -> None:
    def no_systemd() -> int | None:
        raise Unavailable("systemd is not running on this machine")

    config = browser_config(chromium=str(snap_wrapper(tmp_path)))
    skipped = browser_checks.check_sandbox(make_env(tmp_path, config, main_pid=no_systemd))
    assert skipped.status is Status.SKIP and "systemd is not running" in skipped.message
    stopped = browser_checks.check_sandbox(make_env(tmp_path, config, main_pid=lambda: None))
    assert stopped.status is Status.WARN and "systemctl start" in stopped.fix
    # a deb Chromium is not hindered by NoNewPrivileges at all
    deb = browser_checks.check_sandbox(make_env(tmp_path, browser_config(), main_pid=no_systemd))
    assert deb.status is Status.OK and "not a snap" in deb.message


# -- tmux -----------------------------------------------------------------------------------


def test_tmux_missing_fails_too_old_warns_and_the_installed_one_is_ok(tmp_path: Path) -> None:
    enabled = BASE.replace("tmux: {enabled: false}", "tmux: {enabled: true}") + (
        f"sessions: [{{name: colab, notebook_url: {NOTEBOOK!r}}}]\n"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = system_checks.check_tmux(make_env(tmp_path, enabled, search_path=str(empty)))
    assert missing.status is Status.FAIL and "apt-get install tmux" in missing.fix

    old = script(tmp_path / "old", "tmux", 'echo "tmux 2.8"').parent
    too_old = system_checks.check_tmux(make_env(tmp_path, enabled, search_path=str(old)))
    assert too_old.status is Status.WARN and "3.0 or newer" in too_old.message

    real = system_checks.check_tmux(make_env(tmp_path, enabled))
    assert real.status is Status.OK and "tmux 3" in real.message


# -- the ssh identity -----------------------------------------------------------------------


def keygen(path: Path, passphrase: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-f", str(path)],
        check=True,
        timeout=30,
    )
    return path


def identity_config(key: Path) -> str:
    return tunnel_config() + f"ssh: {{identity: {str(key)!r}}}\n"


def test_ssh_identity_missing_open_unpaired_or_without_pub_fails(tmp_path: Path) -> None:
    key = tmp_path / "ssh" / "id_ed25519"
    env = make_env(tmp_path, identity_config(key))
    missing = system_checks.check_ssh_identity(env)
    assert missing.status is Status.FAIL and "ssh-keygen" in missing.fix

    keygen(key)
    assert system_checks.check_ssh_identity(env).status is Status.OK

    key.chmod(0o644)
    too_open = system_checks.check_ssh_identity(env)
    assert too_open.status is Status.FAIL and "mode 0644" in too_open.message
    key.chmod(0o600)

    other = keygen(tmp_path / "other" / "id_ed25519")
    pub = key.with_name("id_ed25519.pub")
    pub.write_text(other.with_name("id_ed25519.pub").read_text())
    unpaired = system_checks.check_ssh_identity(env)
    assert unpaired.status is Status.FAIL and "not the public half" in unpaired.message

    pub.unlink()
    no_pub = system_checks.check_ssh_identity(env)
    assert no_pub.status is Status.FAIL and "ssh-keygen -y" in no_pub.fix


def test_a_passphrase_on_the_identity_warns(tmp_path: Path) -> None:
    key = keygen(tmp_path / "ssh" / "id_ed25519", passphrase="correct horse")
    finding = system_checks.check_ssh_identity(make_env(tmp_path, identity_config(key)))
    assert finding.status is Status.WARN and "passphrase" in finding.message


# -- tunnel keys and the Colab VM's host key -------------------------------------------------


def test_tunnel_keys_missing_warn_open_fail_and_an_unregistered_vm_warns(tmp_path: Path) -> None:
    env = make_env(tmp_path, tunnel_config())
    missing = service_checks.check_tunnel_keys(env)
    assert missing.status is Status.WARN and "session colab's tunnel key" in missing.message

    store = KeyStore(env.paths.keys_dir)
    store.ensure(["colab"])
    store.tunnel_key_path("colab").chmod(0o644)
    too_open = service_checks.check_tunnel_keys(env)
    assert too_open.status is Status.FAIL and "tunnel-colab" in too_open.message
    store.tunnel_key_path("colab").chmod(0o600)

    unpinned = service_checks.check_tunnel_keys(env)
    assert unpinned.status is Status.WARN
    assert "no Colab VM has registered its host key yet for colab" in unpinned.message

    vm_key = asyncssh.generate_private_key("ssh-ed25519")
    hostkeys.pin(env.paths.known_hosts, [20022], vm_key)
    pinned = service_checks.check_tunnel_keys(env)
    assert pinned.status is Status.OK, pinned
    assert "secret colab_gateway_colab" in pinned.message


# -- the endpoint and the public port -------------------------------------------------------


class BannerServer:
    """A real listening socket that greets every connection with ``banner``."""

    def __init__(self, banner: bytes) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.sock.settimeout(0.05)  # closing a socket does not wake a thread in accept()
        self.banner = banner
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(self.banner)

    def close(self) -> None:
        self.closed.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def banner_server() -> Iterator[Callable[[bytes], BannerServer]]:
    servers: list[BannerServer] = []

    def start(banner: bytes) -> BannerServer:
        servers.append(BannerServer(banner))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_the_endpoint_closed_fails_foreign_fails_and_ssh_is_ok(
    tmp_path: Path, banner_server: Callable[[bytes], BannerServer]
) -> None:
    closed = free_port()
    finding = network_checks.check_endpoint(
        make_env(tmp_path, tunnel_config(listen=f"0.0.0.0:{closed}"))
    )
    assert finding.status is Status.FAIL
    assert f"nothing listens on 127.0.0.1:{closed}" in finding.message
    assert "systemctl start colab-gateway" in finding.fix

    http = banner_server(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    foreign = network_checks.check_endpoint(
        make_env(tmp_path, tunnel_config(listen=f"127.0.0.1:{http.port}"))
    )
    assert foreign.status is Status.FAIL and "other than an SSH server" in foreign.message

    ssh = banner_server(b"SSH-2.0-AsyncSSH_2.14\r\n")
    good = network_checks.check_endpoint(
        make_env(tmp_path, tunnel_config(listen=f"0.0.0.0:{ssh.port}"))
    )
    assert good.status is Status.OK and "SSH-2.0-AsyncSSH_2.14" in good.message


def test_an_unreachable_public_port_warns_about_hairpin_nat(
    tmp_path: Path, banner_server: Callable[[bytes], BannerServer]
) -> None:
    closed = free_port()
    env = make_env(tmp_path, tunnel_config(public_host="127.0.0.1", public_port=closed))
    finding = network_checks.check_public_port(env)
    assert finding.status is Status.WARN
    assert "hairpin NAT" in finding.message and f"forward TCP {closed}" in finding.fix

    ssh = banner_server(b"SSH-2.0-OpenSSH_9.2\r\n")
    env = make_env(tmp_path, tunnel_config(public_host="127.0.0.1", public_port=ssh.port))
    assert network_checks.check_public_port(env).status is Status.OK

    # what the endpoint does to a penalised source: accept, then close before its banner
    silent = banner_server(b"")
    env = make_env(tmp_path, tunnel_config(public_host="127.0.0.1", public_port=silent.port))
    refused = network_checks.check_public_port(env)
    assert refused.status is Status.WARN and "without an SSH banner" in refused.message


# -- the DDNS name against the detected address ---------------------------------------------


@pytest.fixture
def echo() -> Iterator[Echo]:
    servers: list[FakeServer] = []

    def serve(handler: Handler) -> FakeServer:
        servers.append(FakeServer(handler))
        return servers[-1]

    yield Echo(serve, "81.2.69.160", None)
    for server in servers:
        server.close()


def ddns_config(echo: Echo, hostname: str = "localhost") -> str:
    return tunnel_config() + (
        f"ddns: {{provider: none, hostname: {hostname}, "
        f"detect: {{ipv4: [{echo.source('ipv4')!r}]}}}}\n"
    )


def test_a_name_resolving_elsewhere_than_the_detected_address_fails(
    tmp_path: Path, echo: Echo
) -> None:
    # really resolved: localhost is 127.0.0.1 (and ::1), the echo says 81.2.69.160
    finding = network_checks.check_ddns(make_env(tmp_path, ddns_config(echo)))
    assert finding.status is Status.FAIL
    assert "this network's public address is 81.2.69.160" in finding.message

    env = make_env(tmp_path, ddns_config(echo), resolve=lambda name: ["81.2.69.160"])
    assert network_checks.check_ddns(env).status is Status.OK


def test_a_name_that_does_not_resolve_fails_and_a_failed_detection_warns(
    tmp_path: Path, echo: Echo
) -> None:
    def nxdomain(name: str) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    unresolved = network_checks.check_ddns(make_env(tmp_path, ddns_config(echo), resolve=nxdomain))
    assert unresolved.status is Status.FAIL and "does not resolve" in unresolved.message

    echo.answers["/v4"] = None  # the echo now answers 404
    env = make_env(tmp_path, ddns_config(echo), resolve=lambda name: ["81.2.69.160"])
    undetected = network_checks.check_ddns(env)
    assert undetected.status is Status.WARN and "could not be detected" in undetected.message


# -- disk and the daemon ----------------------------------------------------------------------


def test_disk_below_the_thresholds_warns_then_fails(tmp_path: Path) -> None:
    roomy = system_checks.check_disk(make_env(tmp_path, disk_warn_mb=0, disk_fail_mb=0))
    assert roomy.status is Status.OK and "MB free" in roomy.message
    # thresholds above any disk this runs on: the same real statvfs now falls short
    tight = system_checks.check_disk(make_env(tmp_path, disk_warn_mb=1e12, disk_fail_mb=0))
    assert tight.status is Status.WARN
    full = system_checks.check_disk(make_env(tmp_path, disk_warn_mb=1e12, disk_fail_mb=1e12))
    assert full.status is Status.FAIL and "journalctl --vacuum" in full.fix


def test_no_daemon_fails_with_how_to_start_it_and_a_degraded_one_warns(
    tmp_path: Path, live_status: Callable[[Path, State], LiveStatus]
) -> None:
    env = make_env(tmp_path)
    absent = service_checks.check_daemon(env)
    assert absent.status is Status.FAIL and "is not running" in absent.message
    assert "systemctl start colab-gateway" in absent.fix

    state = State()
    state.set_health("tunnel", Health.DEGRADED, "no session key yet")
    live_status(env.paths.status_socket, state)
    degraded = service_checks.check_daemon(make_env(tmp_path))
    assert degraded.status is Status.WARN and "degraded" in degraded.message


# -- the command as a user runs it ----------------------------------------------------------


def doctor(daemon_config: Path, state: Path, run: Path) -> subprocess.CompletedProcess[str]:
    argv = ["doctor", "-c", str(daemon_config), "--state-dir", str(state), "--runtime-dir"]
    return subprocess.run(
        [sys.executable, "-m", "gateway", *argv, str(run)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_the_command_exits_0_with_a_healthy_daemon_and_1_once_it_is_gone(
    start_daemon: StartDaemon,
) -> None:
    daemon = start_daemon()
    deadline = time.monotonic() + 30
    while True:
        done = doctor(daemon.config, daemon.state_dir, daemon.runtime_dir)
        if done.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[1] for line in lines] == ["config", *(c.name.split()[0] for c in CHECKS)]
    assert any(line.startswith("ok    daemon") for line in lines), done.stdout

    daemon.stop()
    gone = doctor(daemon.config, daemon.state_dir, daemon.runtime_dir)
    assert gone.returncode == 1, gone.stdout + gone.stderr
    assert any(
        line.startswith("fail  daemon") and "systemctl start" in line
        for line in gone.stdout.splitlines()
    ), gone.stdout


def test_a_driver_found_only_on_path_is_named_in_the_fix(tmp_path: Path) -> None:
    stub = script(tmp_path / "bin", "chromedriver", 'echo "ChromeDriver 120.0.6099.109 (abc)"')
    config = browser_config(chromedriver=str(tmp_path / "not-here"))
    env = make_env(tmp_path, config, search_path=str(stub.parent))
    finding = browser_checks.check_chromedriver(env)
    assert finding.status is Status.FAIL and "is not an executable file" in finding.message
    assert f"set browser.chromedriver: {stub}" in finding.fix


def test_name_resolution_really_resolves_and_reports_unknown_names() -> None:
    from gateway.doctor.env import resolve_host

    assert "127.0.0.1" in resolve_host("localhost")
    with pytest.raises(OSError):
        resolve_host("no-such-host.invalid")  # RFC 6761: never resolves


def test_the_example_notebook_address_left_in_the_config_warns(tmp_path: Path) -> None:
    env = make_env(tmp_path, browser_config().replace("abc123", "XXXXXXXX"))
    finding = service_checks.check_config(env, [])
    assert finding.status is Status.WARN and "example notebook_url" in finding.message
    assert service_checks.check_config(make_env(tmp_path, browser_config()), []).status is Status.OK


def test_the_command_lists_each_config_problem_and_exits_1(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(BASE.replace("tunnel: {enabled: false}", "tunnel: {login_timout: 20s}"))
    done = doctor(config, tmp_path / "state", tmp_path / "run")
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("fail  config") and "1 problem(s)" in lines[0]
    assert lines[1].startswith(f"  {config}:1:10:") and "did you mean 'login_timeout'" in lines[1]
    assert any(line.startswith("skip  endpoint") for line in lines), done.stdout
    assert done.stderr == ""


def test_a_probe_penalised_by_the_real_endpoint_warns_instead_of_failing(
    tmp_path: Path, start_daemon: StartDaemon
) -> None:
    """The endpoint penalises a source whose connection ends without a login, and the
    doctor's probe is such a connection: a second probe must not read as a foreign server."""
    port = free_port()
    config = (
        f"tunnel: {{listen: '127.0.0.1:{port}', exempt_networks: [], penalty_min: 10m}}\n"
        "browser: {enabled: false}\ntmux: {enabled: false}\nddns: {provider: none}\n"
    )
    start_daemon(config)
    (tmp_path / "doctor").mkdir()
    env = make_env(tmp_path / "doctor", config)
    wait_until(
        lambda: network_checks.check_endpoint(env).status is Status.OK,
        30,
        "the endpoint check passing once",
        interval=0.1,
    )
    again = network_checks.check_endpoint(make_env(tmp_path / "doctor", config))
    assert again.status is Status.WARN, again
    assert "without an SSH banner" in again.message


@pytest.mark.skipif(Path("/run/systemd/system").is_dir(), reason="systemd runs here")
def test_without_systemd_the_main_pid_is_unavailable_with_the_reason() -> None:
    from gateway.doctor.env import systemd_main_pid

    with pytest.raises(Unavailable, match="systemd is not running"):
        systemd_main_pid()


def test_a_status_socket_left_by_a_dead_daemon_reads_as_not_running(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    env.paths.runtime_dir.mkdir()
    left = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    left.bind(str(env.paths.status_socket))
    left.close()  # the file stays, nobody listens: connect() is refused
    finding = service_checks.check_daemon(env)
    assert finding.status is Status.FAIL and "left from a run that ended" in finding.message
