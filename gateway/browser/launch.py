"""Starting Chromium under Selenium, measuring it, and ending every process it started.

Selenium is always given the driver's path (``Service(executable_path=...)``): Selenium
Manager is then skipped, and it could not download a driver for Linux arm64 anyway.
chromedriver is started as the leader of a new session (``setsid``); Chromium and all its
helpers inherit that session id, so the whole tree is found in /proc and killed, even when
chromedriver itself has died and its children were re-parented to init.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import platform
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from gateway.browser.client_hints import user_agent_override
from gateway.browser.language import ENGLISH_ARGS
from gateway.browser.profile_holders import ProfileInUse, free_profile, in_use_message
from gateway.browser.user_session import with_user_session
from gateway.config import BrowserConfig

log = logging.getLogger(__name__)

# Where distributions put the driver: Debian / Raspberry Pi OS package chromium-driver,
# Ubuntu's snap (chromium-browser is a transitional package that installs it), and older
# Raspberry Pi OS / Ubuntu debs.
DRIVER_CANDIDATES = (
    "/usr/bin/chromedriver",
    "/snap/bin/chromium.chromedriver",
    "/usr/lib/chromium-browser/chromedriver",
    "/usr/lib/chromium/chromedriver",
)
BROWSER_CANDIDATES = (
    "/usr/bin/chromium",
    "/usr/bin/chromium-browser",
    "/snap/bin/chromium",
    "/usr/lib/chromium/chromium",
    "/usr/lib/chromium-browser/chromium-browser",
)
# Debian's chromium-headless-shell: the same engine and version as the chromium package
# without the browser's UI, so the same chromedriver drives it.
HEADLESS_SHELL_CANDIDATES = (
    "/usr/lib/chromium/chromium-headless-shell",
    "/usr/bin/chromium-headless-shell",
)
# What chromedriver must be told to drive the shell: it then opens the first page itself
# (the shell starts without one, and the driver would wait for one in vain).
HEADLESS_SHELL_BROWSER_NAME = "chrome-headless-shell"
INSTALL_HINT = (
    "install it: `sudo apt-get install chromium-driver` on Debian / Raspberry Pi OS, "
    "`sudo snap install chromium` on Ubuntu (the snap ships chromium.chromedriver), "
    "or set browser.chromedriver to its path"
)

# Fewer processes, no background traffic, nothing Colab does not need. Measured effect in
# docs/browser.md.
LEAN_FLAGS = (
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-breakpad",
    "--disable-crash-reporter",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--metrics-recording-only",
    "--mute-audio",
    "--hide-crash-restore-bubble",
    "--disable-session-crashed-bubble",
    "--renderer-process-limit=2",
    # One list: Chromium reads only the last --disable-features. WebUIOmniboxPopup and
    # WebUIOmniboxAimPopup: Chromium 156 preloads the address bar's popups (two
    # chrome://omnibox-popup.top-chrome pages) in a renderer of their own even headless,
    # where there is no address bar; without them 20-24 MB less (docs/browser.md).
    "--disable-features=Translate,MediaRouter,OptimizationHints,AutofillServerCommunication,"
    "CalculateNativeWinOcclusion,InterestFeedContentSuggestions,BackForwardCache,"
    "WebUIOmniboxPopup,WebUIOmniboxAimPopup",
    "--password-store=basic",  # on EVERY launch of the profile: see docs/browser.md
    "--window-size=1280,900",
)


class BrowserNotFound(RuntimeError):
    pass


# Browsers started by this process and not yet killed: should the process exit while a
# component is still stopping, the exit hook ends them (chromedriver runs in its own
# session, so nothing else would).
_LIVE: set[Browser] = set()
_LIVE_LOCK = threading.Lock()


@atexit.register
def _kill_live_browsers() -> None:
    with _LIVE_LOCK:
        browsers = list(_LIVE)
    for browser in browsers:
        browser.kill()


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def find_chromedriver(configured: str = "auto") -> str:
    if configured != "auto":
        if not _executable(configured):
            raise BrowserNotFound(
                f"browser.chromedriver: {configured!r} is not an executable file; {INSTALL_HINT}"
            )
        return configured
    for candidate in DRIVER_CANDIDATES:
        if _executable(candidate):
            return candidate
    raise BrowserNotFound(
        f"chromedriver not found (looked in {', '.join(DRIVER_CANDIDATES)}); {INSTALL_HINT}"
    )


def find_chromium(configured: str = "auto", driver: str | None = None) -> str:
    if configured != "auto":
        if not _executable(configured):
            raise BrowserNotFound(
                f"browser.chromium: {configured!r} is not an executable file; install the "
                "`chromium` package (Debian) or the chromium snap (Ubuntu), or fix the path"
            )
        return configured
    candidates: Iterable[str] = BROWSER_CANDIDATES
    if driver and is_snap(driver):
        # the snap's driver only drives the snap's browser
        candidates = ("/snap/bin/chromium", *BROWSER_CANDIDATES)
    for candidate in candidates:
        if _executable(candidate):
            return candidate
    raise BrowserNotFound(
        f"Chromium not found (looked in {', '.join(BROWSER_CANDIDATES)}): install the "
        "`chromium` package (Debian, Raspberry Pi OS) or `snap install chromium` (Ubuntu)"
    )


@dataclass(frozen=True)
class Engine:
    """The program the keep-alive runs: Chromium, or its headless shell."""

    binary: str
    headless_shell: bool = False

    @property
    def name(self) -> str:
        return "headless-shell" if self.headless_shell else "chromium"


def find_headless_shell(configured: str = "auto") -> str | None:
    """The configured headless shell (which must exist), else Debian's, else None."""
    if configured != "auto":
        if not _executable(configured):
            raise BrowserNotFound(
                f"browser.headless_shell: {configured!r} is not an executable file; install "
                "it: `sudo apt-get install chromium-headless-shell`, or fix the path"
            )
        return configured
    return next((c for c in HEADLESS_SHELL_CANDIDATES if _executable(c)), None)


def find_engine(config: BrowserConfig, driver: str) -> Engine:
    """What ``browser.engine`` chooses on this machine. ``auto`` takes the headless shell
    when headless and installed: it needs about 130 MB less than Chromium on the same page
    (docs/browser.md) and shares the profile with the full Chromium that
    ``colab-gateway login`` starts (``browser.chromium``)."""
    if config.engine == "chromium" or not config.headless:
        return Engine(find_chromium(config.chromium, driver))
    if is_snap(driver):
        if config.engine == "headless-shell":
            raise BrowserNotFound(
                "browser.engine: headless-shell, but the Chromium snap's driver drives only "
                "the snap's Chromium, which has no headless shell: set engine: auto"
            )
        return Engine(find_chromium(config.chromium, driver))
    shell = find_headless_shell(config.headless_shell)
    if shell is not None:
        return Engine(shell, headless_shell=True)
    if config.engine == "headless-shell":
        raise BrowserNotFound(
            "browser.engine: headless-shell, but no headless shell is installed (looked in "
            f"{', '.join(HEADLESS_SHELL_CANDIDATES)}); install it: `sudo apt-get install "
            "chromium-headless-shell`, or set engine: auto"
        )
    return Engine(find_chromium(config.chromium, driver))


def chromium_version(binary: str) -> str | None:
    try:
        out = subprocess.run(
            [binary, "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env=with_user_session(),  # a snap on cgroup v2 needs the session bus
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"(\d+)\.\d+\.\d+\.\d+", out)
    return match.group(1) if match else None


def user_agent(major: str | None) -> str:
    """What a desktop Chromium on this machine says, without "HeadlessChrome"."""
    machine = platform.machine() or "x86_64"
    version = f"{major}.0.0.0" if major else "120.0.0.0"
    return (
        f"Mozilla/5.0 (X11; Linux {machine}) AppleWebKit/537.36 (KHTML, like Gecko) "
        f"Chrome/{version} Safari/537.36"
    )


def profile_dir(config: BrowserConfig, state_dir: Path, chromium: str | None = None) -> Path:
    """The configured profile; else ``<state_dir>/chromium-profile``. The Ubuntu snap may
    not write there (confinement) nor use hidden folders, so with the snap the default is
    the snap's own common directory in the service user's home."""
    if config.profile_dir:
        return Path(config.profile_dir).expanduser()
    if chromium and is_snap(chromium):
        return Path.home() / "snap" / "chromium" / "common" / "colab-gateway-profile"
    return state_dir / "chromium-profile"


def is_snap(path: str) -> bool:
    return path.startswith("/snap/")


def chrome_options(
    config: BrowserConfig, driver_path: str, engine: Engine, profile: Path, agent: str
) -> Any:
    """What Selenium hands chromedriver. The snap's chromedriver is confined: it may not
    execute /snap/bin/chromium (a link to /usr/bin/snap), and it starts the snap's own
    Chromium by itself, so with it no browser binary is named."""
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    if not is_snap(driver_path):
        options.binary_location = engine.binary
    if engine.headless_shell:
        options.set_capability("browserName", HEADLESS_SHELL_BROWSER_NAME)
    for arg in chromium_args(config, profile, agent, headless_shell=engine.headless_shell):
        options.add_argument(arg)
    options.unhandled_prompt_behavior = "accept"
    options.page_load_strategy = "eager"
    if config.bidi:  # a WebDriver BiDi session beside the classic one (change_feed.py)
        options.set_capability("webSocketUrl", True)
    options.add_experimental_option("excludeSwitches", ["enable-automation"])
    return options


def chromium_args(
    config: BrowserConfig, profile: Path, agent: str, *, headless_shell: bool = False
) -> list[str]:
    args = [*LEAN_FLAGS, *ENGLISH_ARGS, f"--user-data-dir={profile}", f"--user-agent={agent}"]
    if headless_shell:
        args.append("--disable-gpu")  # the shell is headless by itself
    elif config.headless:
        args += ["--headless=new", "--disable-gpu"]
    if os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    return args


# -- processes --------------------------------------------------------------------------------


def is_running(pid: int) -> bool:
    """Exists and is not a zombie (a dead child waiting for its parent to notice)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def session_members(sid: int) -> list[int]:
    """Every live process whose session id is ``sid``."""
    members = []
    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(OSError):  # gone meanwhile
            if os.getsid(proc.pid) == sid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
    return members


def processes_with_arg(fragment: str) -> set[int]:
    """Live processes whose command line contains ``fragment`` (e.g. a profile path)."""
    found = set()
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []  # None: not ours to read, or gone
        if proc.info["status"] != psutil.STATUS_ZOMBIE and fragment in "\0".join(cmdline):
            found.add(proc.pid)
    return found


def crashpad_handlers() -> set[int]:
    """Chromium's crash handlers: started with setsid(), outside the driver's session."""
    return {
        proc.pid
        for proc in psutil.process_iter(["name"])
        if (proc.info["name"] or "").startswith("chrome_crashpad")
    }


def _memory(pid: int) -> Any:
    """smaps_rollup's sums (psutil reads them): pss and uss in bytes, or None."""
    try:
        return psutil.Process(pid).memory_full_info()
    except psutil.Error:
        return None


def pss_kib(pid: int) -> int:
    """Proportional set size of one process: shared pages are split among their users."""
    memory = _memory(pid)
    return int(memory.pss) // 1024 if memory is not None else 0


def uss_kib(pid: int) -> int:
    """Pages only this process maps (Private_Clean + Private_Dirty): what ending it frees."""
    memory = _memory(pid)
    return int(memory.uss) // 1024 if memory is not None else 0


def kill_session(sid: int, timeout: float = 5.0) -> None:
    """SIGKILL every process of session ``sid`` and wait (bounded) until they are gone."""
    deadline = time.monotonic() + timeout
    while True:
        members = session_members(sid)
        if not members:
            return
        for pid in members:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            log.warning("processes of session %d survived SIGKILL: %s", sid, members)
            return
        time.sleep(0.05)


@dataclass(eq=False)  # identity: kept in a set of live browsers
class Browser:
    """A running Chromium and its driver; ``close()`` leaves no process behind."""

    driver: Any  # selenium.webdriver.Chrome (untyped library)
    sid: int  # chromedriver's pid = the session id of the whole tree
    profile: Path
    engine: str = "chromium"  # Engine.name
    # Client Hints as the full Chromium gives them (the shell's, without "HeadlessChrome")
    user_agent_override: dict[str, Any] | None = None
    xvfb: subprocess.Popen[bytes] | None = None
    display: str | None = None
    started_at: float = field(default_factory=time.monotonic)
    chromium_pid: int | None = None
    helpers: set[int] = field(default_factory=set)  # processes outside the session (crashpad)

    def pids(self) -> list[int]:
        return session_members(self.sid)

    def present_as_chromium(self) -> None:
        """For the current window (each window needs it once: CDP emulation is per page;
        it lasts through reloads and navigations): the shell's Client Hints without the
        brand that names it headless."""
        if self.user_agent_override is not None:
            self.driver.execute_cdp_cmd("Emulation.setUserAgentOverride", self.user_agent_override)

    def chromium_pids(self) -> list[int]:
        return [p for p in self.pids() if p != self.sid]

    def pss_mb(self) -> float:
        return sum(pss_kib(p) for p in self.chromium_pids()) / 1024

    def uss_mb(self) -> float:
        return sum(uss_kib(p) for p in self.chromium_pids()) / 1024

    def driveris_running(self) -> bool:
        return is_running(self.sid)

    def main_pid(self) -> int | None:
        """The browser process chromedriver started (its helpers are that one's children)."""
        for pid in self.chromium_pids():
            with contextlib.suppress(psutil.Error):
                if psutil.Process(pid).ppid() == self.sid:
                    return pid
        return None

    def alive(self) -> bool:
        """Both chromedriver and the Chromium it started are running."""
        if not self.driveris_running():
            return False
        if self.chromium_pid is None:
            self.chromium_pid = self.main_pid()
        return self.chromium_pid is not None and is_running(self.chromium_pid)

    def kill(self) -> None:
        """Thread-safe and idempotent: may be called while another thread is inside Selenium."""
        kill_session(self.sid)
        with _LIVE_LOCK:
            _LIVE.discard(self)
        for pid in self.helpers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if is_running(pid):
                    os.kill(pid, signal.SIGKILL)
        self._release()
        if self.xvfb is not None and self.xvfb.poll() is None:
            self.xvfb.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.xvfb.wait(timeout=5)

    def _release(self) -> None:
        """What this process holds of a browser that is gone: the HTTP connections to
        chromedriver, the pipe to its stdin, its exit status. Without this every restart
        after a crash or a kill left two or three descriptors open (found by `make soak`)."""
        with contextlib.suppress(Exception):  # a Selenium call may be failing meanwhile
            self.driver.command_executor.close()
        process = getattr(getattr(self.driver, "service", None), "process", None)
        if process is None:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(self.sid, os.WNOHANG)
            return
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            process.wait(timeout=5)  # killed above: reaped at once

    def close(self, polite: bool = True) -> None:
        """End the browser. A polite quit lets Chromium flush its cookies to the profile;
        a browser that died or hung is killed at once. Either way nothing survives."""
        if polite and self.alive():
            with contextlib.suppress(Exception):
                self.driver.command_executor._client_config.timeout = 10
                self.driver.quit()
        self.kill()


def start_xvfb() -> tuple[subprocess.Popen[bytes], str]:
    """Xvfb on a free display number (it picks one and tells us through -displayfd)."""
    read_fd, write_fd = os.pipe()
    try:
        proc = subprocess.Popen(
            [
                "Xvfb",
                "-displayfd",
                str(write_fd),
                "-screen",
                "0",
                "1280x900x24",
                "-nolisten",
                "tcp",
            ],
            pass_fds=(write_fd,),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except FileNotFoundError:
        os.close(read_fd)
        os.close(write_fd)
        raise BrowserNotFound("Xvfb is not installed: `sudo apt-get install xvfb`") from None
    os.close(write_fd)
    try:
        with os.fdopen(read_fd, "rb") as pipe:
            number = pipe.readline().strip().decode()
    except OSError:
        number = ""
    if not number.isdigit():
        proc.kill()
        raise BrowserNotFound("Xvfb did not start: install the `xvfb` package")
    return proc, f":{number}"


def configured_profile(config: BrowserConfig, state_dir: Path) -> Path | None:
    """The profile ``launch`` would open; None when no browser is installed."""
    try:
        driver_path = find_chromedriver(config.chromedriver)
        return profile_dir(config, state_dir, find_engine(config, driver_path).binary)
    except BrowserNotFound:
        return None


def free_profile_of_leftovers(profile: Path, runtime_dir: Path | None) -> None:
    """End what was left holding ``profile`` (profile_holders.py), sparing the browsers
    this process runs; raise ProfileInUse for what cannot be freed."""
    with _LIVE_LOCK:
        live = list(_LIVE)
    free_profile(
        profile,
        runtime_dir,
        spare_sessions={b.sid for b in live},
        spare_pids={pid for b in live for pid in b.helpers},
    )


def launch(config: BrowserConfig, state_dir: Path, runtime_dir: Path | None = None) -> Browser:
    """Start chromedriver and Chromium as the config says; raise BrowserNotFound if absent,
    ProfileInUse while the profile is held by what may not or could not be ended.

    ``runtime_dir`` is where a running ``colab-gateway login`` leaves its pause flag: its
    browser is never ended. None (tests, benchmarks): no login to look for.
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # Belt and braces: with a driver path Selenium never runs Selenium Manager, and should
    # anything call it, it must not try the network.
    os.environ.setdefault("SE_OFFLINE", "true")
    driver_path = find_chromedriver(config.chromedriver)
    engine = find_engine(config, driver_path)
    profile = profile_dir(config, state_dir, engine.binary)
    profile.mkdir(parents=True, exist_ok=True, mode=0o700)
    free_profile_of_leftovers(profile, runtime_dir)
    agent = config.user_agent or user_agent(chromium_version(engine.binary))

    options = chrome_options(config, driver_path, engine, profile, agent)

    env = dict(os.environ)
    xvfb = display = None
    if not config.headless and config.display == "xvfb":
        xvfb, display = start_xvfb()
        env["DISPLAY"] = display
    service = Service(
        executable_path=driver_path,
        env=env,
        log_output=subprocess.DEVNULL,
        popen_kw={"start_new_session": True},
    )
    crashpad_before = crashpad_handlers()
    try:
        driver = webdriver.Chrome(options=options, service=service)
    except Exception as exc:
        process = getattr(service, "process", None)
        if process is not None:
            kill_session(process.pid)
        if xvfb is not None:
            xvfb.kill()
        # Something this scan does not see still holds the profile (a browser started
        # without the argument, another machine's): say so, not Selenium's stack dump.
        held = in_use_message(profile, str(exc))
        if held is not None:
            raise ProfileInUse(held) from None
        raise
    sid = service.process.pid
    browser = Browser(
        driver=driver, sid=sid, profile=profile, engine=engine.name, xvfb=xvfb, display=display
    )
    with _LIVE_LOCK:
        _LIVE.add(browser)
    browser.chromium_pid = browser.main_pid()
    browser.helpers = crashpad_handlers() - crashpad_before
    # A hung page must not hang this thread forever: every command gets an answer or fails.
    # _client_config is private but first appears in Selenium 4.26 (pyproject's lower
    # bound) and is the only per-connection timeout there; the public client_config came later.
    executor: Any = driver.command_executor
    executor._client_config.timeout = config.page_timeout + 10
    driver.set_page_load_timeout(config.page_timeout)
    # the in-page wait for a change lasts up to poll_every: it must end before Selenium's
    driver.set_script_timeout(max(config.page_timeout, config.poll_every + 5))
    if engine.headless_shell:
        try:
            browser.user_agent_override = user_agent_override(driver, agent)
            browser.present_as_chromium()
        except Exception:
            browser.close(polite=False)
            raise
    log.info(
        "started %s (driver %s, pid %d, profile %s%s)",
        engine.binary,
        driver_path,
        sid,
        profile,
        f", display {display}" if display else "",
    )
    return browser
