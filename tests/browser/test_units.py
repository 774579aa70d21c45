"""Launch discovery, process accounting, evidence, login helpers and config keys."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.browser import launch, login
from gateway.browser.evidence import Evidence
from gateway.config import BrowserConfig, load_config_text


def test_configured_driver_path_that_does_not_exist_names_the_package(tmp_path: Path) -> None:
    with pytest.raises(launch.BrowserNotFound, match="chromium-driver") as err:
        launch.find_chromedriver(str(tmp_path / "nope"))
    assert str(tmp_path / "nope") in str(err.value)


def test_no_driver_anywhere_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launch, "DRIVER_CANDIDATES", ("/nonexistent/chromedriver",))
    with pytest.raises(launch.BrowserNotFound, match="apt-get install chromium-driver"):
        launch.find_chromedriver("auto")


def test_debian_locations_are_found() -> None:
    assert launch.find_chromedriver() == "/usr/bin/chromedriver"
    assert launch.find_chromium(driver="/usr/bin/chromedriver") == "/usr/bin/chromium"


def test_arguments_always_use_basic_password_store_and_lean_flags(tmp_path: Path) -> None:
    agent = launch.user_agent(launch.chromium_version("/usr/bin/chromium"))
    assert "HeadlessChrome" not in agent and "Chrome/" in agent
    args = launch.chromium_args(BrowserConfig(), tmp_path, agent)
    assert "--password-store=basic" in args and "--headless=new" in args
    assert f"--user-data-dir={tmp_path}" in args and f"--user-agent={agent}" in args
    headed = launch.chromium_args(BrowserConfig(headless=False, display="xvfb"), tmp_path, agent)
    assert "--password-store=basic" in headed and "--headless=new" not in headed
    shell = launch.chromium_args(BrowserConfig(), tmp_path, agent, headless_shell=True)
    for each in (args, headed, shell):  # English on every engine: tests/browser/test_language.py
        assert "--lang=en-US" in each and "--accept-lang=en-US,en" in each


# (driver, browser) as each install method puts them: Debian's chromium-driver package,
# Ubuntu's chromium snap, and Raspberry Pi OS (chromium-browser renamed chromium in Bookworm).
INSTALL_METHODS = {
    "debian": ("/usr/bin/chromedriver", "/usr/bin/chromium"),
    "snap": ("/snap/bin/chromium.chromedriver", "/snap/bin/chromium"),
    "raspberry-pi-os": ("/usr/bin/chromedriver", "/usr/bin/chromium-browser"),
}


@pytest.mark.parametrize("method", sorted(INSTALL_METHODS))
def test_launch_arguments_per_install_method(tmp_path: Path, method: str) -> None:
    driver, chromium = INSTALL_METHODS[method]
    profile = launch.profile_dir(BrowserConfig(), tmp_path, chromium)
    options = launch.chrome_options(
        BrowserConfig(), driver, launch.Engine(chromium), profile, "agent"
    )
    capabilities = options.to_capabilities()["goog:chromeOptions"]
    if method == "snap":
        # The confined driver may not execute /snap/bin/chromium and starts its own.
        assert "binary" not in capabilities and options.binary_location == ""
        assert profile == Path.home() / "snap/chromium/common/colab-gateway-profile"
    else:
        assert capabilities["binary"] == chromium
        assert profile == tmp_path / "chromium-profile"
    assert not any(v == "/snap/bin/chromium" for v in capabilities.values())
    assert f"--user-data-dir={profile}" in capabilities["args"]
    assert "--headless=new" in capabilities["args"]


def test_auto_engine_is_the_headless_shell_when_debian_installed_it() -> None:
    engine = launch.find_engine(BrowserConfig(), "/usr/bin/chromedriver")
    assert engine == launch.Engine("/usr/lib/chromium/chromium-headless-shell", True)
    assert engine.name == "headless-shell"


def test_auto_engine_is_chromium_without_a_shell_headed_or_with_the_snap(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    chromium = launch.Engine("/usr/bin/chromium")
    headed = BrowserConfig(headless=False, display="xvfb")
    assert launch.find_engine(headed, "/usr/bin/chromedriver") == chromium
    assert launch.find_engine(BrowserConfig(engine="chromium"), "/usr/bin/chromedriver") == chromium
    monkeypatch.setattr(launch, "HEADLESS_SHELL_CANDIDATES", (str(tmp_path / "none"),))
    assert launch.find_engine(BrowserConfig(), "/usr/bin/chromedriver") == chromium
    monkeypatch.setattr(launch, "BROWSER_CANDIDATES", ("/usr/bin/chromium",))
    # the snap's driver drives only the snap's own browser (none here: the next candidate)
    assert launch.find_engine(BrowserConfig(), "/snap/bin/chromium.chromedriver") == chromium


def test_a_headless_shell_asked_for_but_missing_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(launch, "HEADLESS_SHELL_CANDIDATES", (str(tmp_path / "none"),))
    wanted = BrowserConfig(engine="headless-shell")
    with pytest.raises(launch.BrowserNotFound, match="apt-get install chromium-headless-shell"):
        launch.find_engine(wanted, "/usr/bin/chromedriver")
    with pytest.raises(launch.BrowserNotFound, match="snap's Chromium, which has no headless"):
        launch.find_engine(wanted, "/snap/bin/chromium.chromedriver")
    configured = BrowserConfig(headless_shell=str(tmp_path / "shell"))
    with pytest.raises(launch.BrowserNotFound, match=r"browser\.headless_shell: .*not an exec"):
        launch.find_engine(configured, "/usr/bin/chromedriver")


def test_the_shell_is_named_to_chromedriver_and_gets_no_headless_switch(tmp_path: Path) -> None:
    shell = launch.Engine("/usr/lib/chromium/chromium-headless-shell", headless_shell=True)
    options = launch.chrome_options(BrowserConfig(), "/usr/bin/chromedriver", shell, tmp_path, "a")
    capabilities = options.to_capabilities()
    # without this name chromedriver waits for a first page the shell never opens
    assert capabilities["browserName"] == "chrome-headless-shell"
    assert capabilities["goog:chromeOptions"]["binary"] == shell.binary
    args = capabilities["goog:chromeOptions"]["args"]
    assert "--password-store=basic" in args and "--disable-gpu" in args
    assert not any(arg.startswith("--headless") for arg in args)


def test_a_headed_headless_shell_is_a_config_error() -> None:
    problems = dict(BrowserConfig(engine="headless-shell", headless=False).check())
    assert "no window" in problems["engine"]


def test_profile_dir_default_and_configured(tmp_path: Path) -> None:
    assert launch.profile_dir(BrowserConfig(), tmp_path) == tmp_path / "chromium-profile"
    assert launch.profile_dir(BrowserConfig(profile_dir="/srv/p"), tmp_path) == Path("/srv/p")
    snap = launch.profile_dir(BrowserConfig(), tmp_path, "/snap/bin/chromium")
    assert snap == Path.home() / "snap/chromium/common/colab-gateway-profile"


def test_kill_session_ends_a_whole_tree_even_after_its_leader_died() -> None:
    leader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, time; "
            "subprocess.Popen(['sleep', '60']); subprocess.Popen(['sleep', '60']); time.sleep(60)",
        ],
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 5
        while len(launch.session_members(leader.pid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        members = launch.session_members(leader.pid)
        assert len(members) == 3
        assert launch.pss_kib(leader.pid) > 0
        os.kill(leader.pid, 9)
        leader.wait()
        assert len(launch.session_members(leader.pid)) == 2  # orphans of a dead leader
        launch.kill_session(leader.pid)
        assert launch.session_members(leader.pid) == []
    finally:
        launch.kill_session(leader.pid)
        leader.poll()


def test_evidence_keeps_the_newest(tmp_path: Path) -> None:
    evidence = Evidence(tmp_path / "shots", keep=3)

    class Driver:
        def get_screenshot_as_png(self) -> bytes:
            return b"\x89PNG fake"

    paths = [evidence.save("colab", f"what{i}", {"i": i}, Driver()) for i in range(5)]
    assert all(p and p.endswith(".png") for p in paths)
    left = sorted(p.name for p in (tmp_path / "shots").iterdir())
    assert len(left) == 6 and all("what2" in n or "what3" in n or "what4" in n for n in left)
    assert json.loads(Path(paths[-1][:-4] + ".json").read_text()) == {"i": 4}  # type: ignore[index]
    assert oct((tmp_path / "shots" / left[0]).stat().st_mode & 0o777) == "0o640"


def test_evidence_without_screenshot_keeps_json(tmp_path: Path) -> None:
    class Dead:
        def get_screenshot_as_png(self) -> bytes:
            raise RuntimeError("browser gone")

    path = Evidence(tmp_path, keep=2).save("browser", "restart", {"reason": "x"}, Dead())
    assert path and path.endswith(".json")


def test_pause_flag_follows_the_login_process(tmp_path: Path) -> None:
    assert not login.pause_requested(tmp_path)
    login.write_pause(tmp_path)
    assert login.pause_requested(tmp_path)
    # a flag left by a login that died does not pause the service forever
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / login.PAUSE_FILE).write_text(json.dumps({"pid": dead.pid}))
    assert not login.pause_requested(tmp_path)


def test_profile_in_use_reads_chromium_singleton_lock(tmp_path: Path) -> None:
    assert login.profile_in_use(tmp_path) is None
    os.symlink(f"{socket.gethostname()}-{os.getpid()}", tmp_path / "SingletonLock")
    assert login.profile_in_use(tmp_path) == os.getpid()


def test_signed_in_looks_for_google_session_cookies(tmp_path: Path) -> None:
    cookies = tmp_path / "Default" / "Network" / "Cookies"
    cookies.parent.mkdir(parents=True)
    with sqlite3.connect(cookies) as db:
        db.execute("CREATE TABLE cookies (host_key TEXT, name TEXT, encrypted_value BLOB)")
        db.execute("INSERT INTO cookies VALUES ('.youtube.com', 'SID', x'00')")
    assert not login.signed_in(tmp_path)
    with sqlite3.connect(cookies) as db:
        db.execute("INSERT INTO cookies VALUES ('.google.com', '__Secure-1PSID', x'00')")
    assert login.signed_in(tmp_path)


def test_login_command_binds_devtools_to_loopback(tmp_path: Path) -> None:
    args = login.login_command("/usr/bin/chromium", tmp_path, "https://x", 9333)
    assert "--remote-debugging-address=127.0.0.1" in args
    assert "--remote-debugging-port=9333" in args and "--password-store=basic" in args
    assert not any("enable-automation" in a for a in args)


def test_unknown_selector_in_config_is_reported() -> None:
    text = (
        "sessions: [{name: colab, notebook_url: 'https://x/y'}]\n"
        "browser: {selectors: {connect_hots: x}}\n"
    )
    with pytest.raises(Exception, match="connect_hots"):
        load_config_text(text, "c.yaml")


def test_example_config_documents_every_browser_key() -> None:
    example = (Path(__file__).parents[2] / "config.example.yaml").read_text()
    section = example.split("\nbrowser:\n", 1)[1].split("\n\n", 1)[0]
    for key in BrowserConfig.__dataclass_fields__:
        assert f"  {key}:" in section, key


def test_component_without_driver_fails_with_the_package_to_install(tmp_path: Path) -> None:
    from gateway.sim import SimColab
    from gateway.sim.runner import BrowserRunner

    with SimColab() as sim:
        runner = BrowserRunner(tmp_path, sim, chromedriver=str(tmp_path / "no-driver"))
        try:
            _, message = runner.wait(
                lambda r: r.health()[0] == "failed" and r.health(), 10, "failed health"
            )
            assert "chromium-driver" in message and str(tmp_path / "no-driver") in message
            assert not list((tmp_path / "state").glob("chromium-profile/Singleton*"))
        finally:
            runner.stop()


def test_placeholder_notebook_starts_no_browser(tmp_path: Path) -> None:
    import asyncio

    from gateway.browser.component import BrowserKeeper
    from gateway.component import Context
    from gateway.config import Config, SessionConfig
    from gateway.paths import Paths
    from gateway.state import State

    placeholder = SessionConfig(
        name="colab", notebook_url="https://colab.research.google.com/drive/XXXXXXXX"
    )
    paths = Paths(tmp_path / "c.yaml", tmp_path / "state", tmp_path / "run")
    paths.ensure()

    async def scenario() -> tuple[str, str, object]:
        state = State()
        state.attach(asyncio.get_running_loop())
        keeper = BrowserKeeper()
        task = asyncio.create_task(
            keeper.run(Context("browser", Config(sessions=[placeholder]), paths, state))
        )
        status = state.component("browser")
        for _ in range(500):  # bounded: 10 s for the worker to judge its sessions
            if status.health.value != "starting":
                break
            await asyncio.sleep(0.02)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert keeper.worker is not None
        return status.health.value, status.message, keeper.worker.browser

    health, message, browser = asyncio.run(scenario())
    assert health == "degraded" and "notebook_url" in message
    assert browser is None and not (tmp_path / "state" / "chromium-profile").exists()
