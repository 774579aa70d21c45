"""Chromium, its driver, the signed-in profile, and whether the service's sandbox lets
the Chromium snap start."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from gateway.browser import login
from gateway.browser.launch import (
    BrowserNotFound,
    Engine,
    chromium_version,
    find_chromedriver,
    find_chromium,
    find_engine,
    profile_dir,
)
from gateway.doctor.env import SERVICE, Env, Unavailable
from gateway.doctor.report import Finding, fail, ok, skip, warn
from gateway.doctor.service_checks import daemon_snapshot
from gateway.snapshot import Snapshot
from gateway.vocabulary import RuntimeState

SNAP_DROP_IN = f"/etc/systemd/system/{SERVICE}.service.d/10-site.conf"
# States the keep-alive publishes only while it sees the notebook itself: the profile is
# signed in.
_SIGNED_IN_STATES = {
    RuntimeState.CONNECTED,
    RuntimeState.CONNECTING,
    RuntimeState.DISCONNECTED,
    RuntimeState.DIALOG,
    RuntimeState.GPU_LIMIT,
    RuntimeState.TOO_MANY_SESSIONS,
    RuntimeState.DISALLOWED,
    RuntimeState.NO_BACKEND,
    RuntimeState.WRONG_LANGUAGE,
}


def _browser_off(env: Env) -> Finding | None:
    return None if env.config.browser.enabled else skip("browser.enabled is false")


def _driver(env: Env) -> str:
    return str(env.once("driver", lambda: find_chromedriver(env.config.browser.chromedriver)))


def _chromium(env: Env) -> str:
    def find() -> str:
        try:
            driver: str | None = _driver(env)
        except BrowserNotFound:
            driver = None
        return find_chromium(env.config.browser.chromium, driver)

    return str(env.once("chromium", find))


def _engine(env: Env) -> Engine:
    """What the keep-alive runs (the headless shell or Chromium), as the daemon chooses it."""

    def find() -> Engine:
        try:
            driver = _driver(env)
        except BrowserNotFound:
            return Engine(_chromium(env))
        return find_engine(env.config.browser, driver)

    engine: Engine = env.once("engine", find)
    return engine


def _major(env: Env, binary: str) -> str | None:
    major: str | None = env.once(f"major:{binary}", lambda: chromium_version(binary))
    return major


def is_snap(path: str) -> bool:
    """The snap itself, or Ubuntu's transitional ``chromium-browser`` script that runs it."""
    if path.startswith("/snap/"):
        return True
    try:
        with open(os.path.realpath(path), "rb") as binary:
            head = binary.read(65536)
    except OSError:
        return False
    return head.startswith(b"#!") and b"/snap/bin/chromium" in head


def install_kind(path: str) -> str:
    """How ``path`` came onto this machine: the snap, a deb (Raspberry Pi OS's builds carry
    ``rpt`` in their version), or neither."""
    if is_snap(path):
        return "snap"
    real = os.path.realpath(path)
    owner = _dpkg(["-S", real]) or _dpkg(["-S", path])
    if owner is None:
        return f"not from a package ({real})"
    package = owner.split(":")[0].strip()
    version = _dpkg(["-W", "-f", "${Version}", package]) or "?"
    origin = "Raspberry Pi OS deb" if "rpt" in version else "deb"
    return f"{origin} {package} {version}"


def _dpkg(args: list[str]) -> str | None:
    try:
        done = subprocess.run(
            ["dpkg-query", *args], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout else None


def check_chromium(env: Env) -> Finding:
    """The program the keep-alive runs, and the full Chromium ``colab-gateway login`` needs."""
    if off := _browser_off(env):
        return off
    try:
        engine = _engine(env)
    except BrowserNotFound as exc:
        return _not_found(exc)
    major = _major(env, engine.binary)
    if major is None:
        headless = "" if engine.headless_shell else " --headless=new"
        return fail(
            f"{engine.binary} --version printed no version: it does not start",
            f"run `{engine.binary}{headless} --disable-gpu --dump-dom about:blank` as the "
            "service user to see why; reinstall it",
        )
    found = f"{engine.binary}, version {major}, {install_kind(engine.binary)}"
    if not engine.headless_shell:
        config = env.config.browser
        if config.engine == "auto" and config.headless and not is_snap(engine.binary):
            found += (
                "; `sudo apt-get install chromium-headless-shell` where your distribution has "
                "it would save about 130 MB (docs/browser.md)"
            )
        return ok(found)
    try:
        chromium = _chromium(env)
    except BrowserNotFound as exc:
        if env.config.browser.chromium != "auto":
            return _not_found(exc)  # a configured path that is wrong
        return warn(
            f"the keep-alive runs the headless shell {found}, but there is no full Chromium "
            "for `colab-gateway login` (signing in needs a window)",
            "`sudo apt-get install chromium`, or set browser.chromium to its path",
        )
    return ok(f"headless shell {found}; {chromium} for `colab-gateway login`")


def check_chromedriver(env: Env) -> Finding:
    if off := _browser_off(env):
        return off
    try:
        driver = _driver(env)
    except BrowserNotFound as exc:
        on_path = env.which("chromedriver")
        if on_path is None:
            return _not_found(exc)
        # The daemon looks only where distributions install it, never on PATH.
        return fail(
            _not_found(exc).message,
            f"a chromedriver is on PATH at {on_path}: set browser.chromedriver: {on_path}",
        )
    driver_major = _major(env, driver)
    if driver_major is None:
        return fail(f"{driver} --version printed no version: it does not start", _install_fix())
    try:
        chromium = _engine(env).binary  # what the driver will drive
    except BrowserNotFound:
        return warn(f"{driver}, version {driver_major}; no Chromium to compare with", "")
    chromium_major = _major(env, chromium)
    if chromium_major is not None and chromium_major != driver_major:
        return fail(
            f"{driver} is version {driver_major} but {chromium} is {chromium_major}: a driver "
            "only drives its own major version",
            "install both from the same source (`sudo apt-get install chromium "
            "chromium-driver`, or the snap's chromium.chromedriver), or point "
            "browser.chromedriver and browser.chromium at a matching pair",
        )
    return ok(f"{driver}, version {driver_major}, {install_kind(driver)}")


def _not_found(exc: BrowserNotFound) -> Finding:
    """launch.py's message, its "install …" hint moved to the fix."""
    parts = [*re.split(r"([;:] )(?=install)", str(exc), maxsplit=1), "", ""]
    return fail(parts[0], parts[2] or _install_fix())


def _install_fix() -> str:
    return (
        "`sudo apt-get install chromium chromium-driver` (Debian, Raspberry Pi OS) or "
        "`sudo snap install chromium` (Ubuntu), or set browser.chromium / browser.chromedriver"
    )


def check_profile(env: Env) -> Finding:
    """Signed in to Google: the running daemon's page state when it has one, else the last
    evidence the browser left, else the profile's cookies."""
    if off := _browser_off(env):
        return off
    login_fix = "run `colab-gateway login` and sign in to the Google account that owns the notebook"
    live = _live_runtime_states(env)
    signed_out = sorted(name for name, state in live.items() if state == RuntimeState.SIGNED_OUT)
    if signed_out:
        return fail(
            f"the browser shows Google's sign-in page for {', '.join(signed_out)}", login_fix
        )
    seen = {name: state for name, state in live.items() if state in _SIGNED_IN_STATES}
    if seen:
        states = ", ".join(f"{name} {state}" for name, state in sorted(seen.items()))
        return ok(f"signed in (the running browser reports {states})")
    try:
        chromium: str | None = _chromium(env)
    except BrowserNotFound:
        chromium = None
    profile = profile_dir(env.config.browser, env.paths.state_dir, chromium)
    if not profile.is_dir():
        return fail(f"no browser profile at {profile} yet", login_fix)
    cookies = _cookie_mtime(profile)
    latest = _latest_evidence(env.paths.screenshots_dir)
    if (
        latest is not None
        and latest.name.endswith("-signed_out.json")
        and (cookies is None or latest.stat().st_mtime >= cookies)
    ):
        return fail(f"the browser's last recorded state was signed out ({latest})", login_fix)
    if not login.signed_in(profile):
        return fail(f"the profile {profile} holds no Google sign-in cookies", login_fix)
    return ok(f"the profile {profile} holds Google's sign-in cookies")


def _live_runtime_states(env: Env) -> dict[str, RuntimeState]:
    raw = daemon_snapshot(env)
    if isinstance(raw, Exception):
        return {}
    try:
        snapshot = Snapshot.from_json(raw)
    except ValueError:
        return {}  # check_daemon names what is wrong with the daemon
    return {name: session.runtime.state for name, session in snapshot.sessions.items()}


def _cookie_mtime(profile: Path) -> float | None:
    for candidate in (profile / "Default" / "Network" / "Cookies", profile / "Default" / "Cookies"):
        if candidate.exists():
            return candidate.stat().st_mtime
    return None


def _latest_evidence(directory: Path) -> Path | None:
    """The newest anomaly the browser recorded (names start with a sortable UTC stamp)."""
    try:
        files = sorted(p for p in directory.glob("*.json") if _is_evidence(p))
    except OSError:
        return None
    return files[-1] if files else None


def _is_evidence(path: Path) -> bool:
    return bool(re.match(r"^\d{8}-\d{6}", path.name))


def no_new_privs(proc_root: Path, pid: int) -> bool | None:
    """The NoNewPrivs flag of process ``pid`` from its status file; None if unreadable."""
    try:
        text = (proc_root / str(pid) / "status").read_text()
    except OSError:
        return None
    match = re.search(r"^NoNewPrivs:\s*(\d)", text, re.MULTILINE)
    return None if match is None else match.group(1) == "1"


def check_sandbox(env: Env) -> Finding:
    if off := _browser_off(env):
        return off
    try:
        chromium = _chromium(env)
    except BrowserNotFound:
        return skip("no Chromium found (see the chromium line)")
    if not is_snap(chromium):
        return ok(f"{chromium} is not a snap: the unit's NoNewPrivileges=yes does not hinder it")
    try:
        pid = env.main_pid()
    except Unavailable as exc:
        return skip(f"Chromium is a snap, but the service's sandbox cannot be read: {exc}")
    if pid is None:
        return warn(
            f"Chromium is a snap and {SERVICE} is not running: its sandbox cannot be read",
            f"start it (sudo systemctl start {SERVICE}) and run the doctor again",
        )
    flag = no_new_privs(env.proc_root, pid)
    status_file = env.proc_root / str(pid) / "status"
    if flag is None:
        return warn(f"cannot read NoNewPrivs in {status_file}", "run the doctor with sudo")
    if flag:
        return fail(
            f"the service (pid {pid}) runs with no_new_privs set ({status_file}): the Chromium "
            "snap cannot start under it (snap-confine gains privileges to set itself up)",
            f"{SNAP_DROP_IN} must say NoNewPrivileges=no: re-run the Ansible play (it writes "
            f"that on Ubuntu), then `sudo systemctl daemon-reload && sudo systemctl restart "
            f"{SERVICE}`",
        )
    return ok(f"the service (pid {pid}) runs without no_new_privs: the Chromium snap can start")
