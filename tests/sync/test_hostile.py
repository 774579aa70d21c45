"""The sync against a hostile VM: real rsync on both sides, the VM's side run by a stand-in
for ssh (``hostile_ssh.py``) that forges stderr lines, floods it or changes the tree
between the dry run and the pull. One test per attack of issue 22; each names what it
protects on the Pi (a host key, authorized_keys, the browser's cookies, memory, disk).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import REPO

from gateway.sync import pull as pulling
from gateway.sync.pull import PullPlan
from gateway.sync.rsync import Remote, Result
from gateway.sync.snapshots import SnapshotInfo, SnapshotStore

PATHS = ["/root/work"]
STAND_IN = Path(__file__).with_name("hostile_ssh.py")
ESC = "\x1b"
MiB = 1 << 20


@dataclass
class Pi:
    """A Pi's state directory (store, keys, browser profile), a home, and a hostile VM."""

    state: Path
    home: Path
    vm: Path
    hook: Path

    @property
    def store(self) -> SnapshotStore:
        return SnapshotStore(self.state / "sync" / "a")

    @property
    def remote(self) -> Remote:
        return Remote((sys.executable, str(STAND_IN), str(self.vm), str(self.hook)))

    @property
    def work(self) -> Path:
        return self.vm / "root/work"

    def plays(self, code: str) -> None:
        """What the VM does from now on, each pull's calls counted from 1 (the dry run)."""
        self.hook.write_text(textwrap.dedent(code))
        Path(f"{self.vm}.calls").unlink(missing_ok=True)

    def pull(self, store: SnapshotStore | None = None, **plan: object) -> SnapshotInfo:
        self.plays(self.hook.read_text())  # call numbers start again
        return asyncio.run(
            pulling.pull(store or self.store, self.remote, PullPlan(paths=PATHS, **plan))  # type: ignore[arg-type]
        )


@pytest.fixture
def pi(tmp_path: Path) -> Pi:
    state, home, vm = tmp_path / "state", tmp_path / "home", tmp_path / "vm"
    (state / "keys").mkdir(parents=True)
    (state / "keys/host_ed25519").write_text("the endpoint's host key\n")
    (state / "chromium-profile/Default").mkdir(parents=True)
    (state / "chromium-profile/Default/Cookies").write_text("the user's Google session\n")
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh/authorized_keys").write_text("ssh-ed25519 AAAA the user's own key\n")
    (vm / "root/work").mkdir(parents=True)
    (vm / "root/work/notes.txt").write_text("notes\n")
    hook = tmp_path / "hook.py"
    hook.write_text("")
    return Pi(state, home, vm, hook)


def _vanished(*names: str) -> str:
    """A hook printing rsync's "file has vanished" line for each name, on every call."""
    text = "".join(f'file has vanished: "{name}"\n' for name in names)
    return f"stderr.write({text!r}.encode())\n"


# -- 1: names from the VM never become paths ------------------------------------------------


def test_a_dotdot_name_cannot_delete_a_file_outside_the_store(
    pi: Pi, caplog: pytest.LogCaptureFixture
) -> None:
    # From <store>/<id>.partial/files/root/work, six '..' reach the state directory.
    pi.plays(_vanished("/root/work/" + "../" * 6 + "keys/host_ed25519"))
    with caplog.at_level(logging.WARNING, "gateway.sync"):
        info = pi.pull()
    assert (pi.state / "keys/host_ed25519").read_text() == "the endpoint's host key\n"
    assert info.kept_previous == ()
    assert "ignored the vanished name" in caplog.text


def test_a_directory_turned_link_cannot_redirect_a_write_to_authorized_keys(pi: Pi) -> None:
    (pi.work / "ssh").mkdir()
    (pi.work / "ssh/authorized_keys").write_text("ssh-ed25519 AAAA the attacker's key\n")
    pi.pull()
    # Now the VM makes that directory a link to the Pi's ~/.ssh and says the file vanished.
    (pi.work / "ssh/authorized_keys").unlink()
    (pi.work / "ssh").rmdir()
    (pi.work / "ssh").symlink_to(pi.home / ".ssh")
    pi.plays(_vanished("/root/work/ssh/authorized_keys"))
    pi.pull()
    assert (pi.home / ".ssh/authorized_keys").read_text() == (
        "ssh-ed25519 AAAA the user's own key\n"
    )
    assert not list((pi.home / ".ssh").glob(".*keep*"))


def test_the_browser_cookies_are_never_linked_into_a_snapshot(pi: Pi) -> None:
    cookies = pi.state / "chromium-profile/Default/Cookies"
    (pi.work / "d").symlink_to(cookies.parent)
    pi.pull()
    # Then d is a real directory whose Cookies "vanished": the previous copy would be kept.
    (pi.work / "d").unlink()
    (pi.work / "d").mkdir()
    (pi.work / "d/Cookies").write_text("from the VM\n")
    pi.plays(_vanished("/root/work/d/Cookies"))
    info = pi.pull()
    for path in pi.store.files(info.id).rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert not path.samefile(cookies), path
            assert path.read_text() != "the user's Google session\n", path
    assert cookies.stat().st_nlink == 1


def test_vm_names_are_refused_unless_plain_and_below_a_synced_path() -> None:
    from gateway.sync.names import UnsafeName, name_parts

    assert name_parts("/root/work/a/b", PATHS) == ("root", "work", "a", "b")
    assert name_parts("root/work/a", PATHS) == ("root", "work", "a")
    for bad in [
        "", "/", "/root/work", "/root/work/", "/root/work/../x", "/root/work/./x",
        "//root/work/x", "/root/workshop/x", "/etc/passwd", "/root/work/a\0b",
        "root/work/a//b",
    ]:  # fmt: skip
        with pytest.raises(UnsafeName):
            name_parts(bad, PATHS)


# -- 2: --link-dest never follows a link of an older snapshot --------------------------------


def test_link_dest_does_not_follow_a_link_left_in_an_older_snapshot(
    pi: Pi, caplog: pytest.LogCaptureFixture
) -> None:
    secret = pi.state / "secret/token"
    secret.parent.mkdir()
    secret.write_text("pi secret")
    # A snapshot taken by an older version: its links were stored as the VM made them.
    old = pi.store.begin("20260101T000000Z")
    (old / "files/root/work").mkdir(parents=True)
    (old / "files/root/work/d").symlink_to(secret.parent)
    pi.store.commit(SnapshotInfo("20260101T000000Z", time.time(), 0, 0.0))
    # The VM guesses the size and time of the Pi's file: rsync's quick check matches.
    (pi.work / "d").mkdir()
    guess = pi.work / "d/token"
    guess.write_text("vm guess!")
    os.utime(guess, ns=(secret.stat().st_atime_ns, secret.stat().st_mtime_ns))
    with caplog.at_level(logging.WARNING, "gateway.sync"):
        info = pi.pull()
    copy = pi.store.files(info.id) / "root/work/d/token"
    assert copy.read_text() == "vm guess!"
    assert not copy.samefile(secret)
    assert "not used as --link-dest" in caplog.text


# -- 3: no setuid/setgid bits, no devices or FIFOs, in the store or a restore ---------------


def _specials_and_setid(root: Path) -> list[str]:
    found = []
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            continue
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)) or mode & (stat.S_ISUID | stat.S_ISGID):
            found.append(f"{path.relative_to(root)} {stat.filemode(mode)}")
    return found


def test_setuid_files_and_fifos_are_not_kept_in_the_store(pi: Pi) -> None:
    (pi.work / "suid").write_text("#!/bin/sh\n")
    (pi.work / "suid").chmod(0o4755)
    (pi.work / "sgid").mkdir()
    (pi.work / "sgid").chmod(0o2755)
    os.mkfifo(pi.work / "fifo")
    info = pi.pull()
    files = pi.store.files(info.id)
    assert (files / "root/work/suid").exists()
    assert _specials_and_setid(files) == []


def test_restore_to_a_folder_gives_no_setuid_fifo_device_or_live_link(
    pi: Pi, tmp_path: Path
) -> None:
    # A snapshot an older version kept as the VM sent it.
    old = pi.store.begin("20260101T000000Z")
    work = old / "files/root/work"
    work.mkdir(parents=True)
    (work / "suid").write_text("#!/bin/sh\n")
    (work / "suid").chmod(0o6755)
    os.mkfifo(work / "fifo")
    os.mknod(work / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    (work / "keys").symlink_to("/rsyncd-munged//root/.ssh")
    pi.store.commit(SnapshotInfo("20260101T000000Z", time.time(), 0, 0.0))
    target = tmp_path / "restored"
    target.mkdir()
    asyncio.run(
        pulling.restore(pi.store, "20260101T000000Z", PATHS, Remote(None, local_root=target))
    )
    assert (target / "root/work/suid").exists()
    assert _specials_and_setid(target) == []
    assert os.readlink(target / "root/work/keys").startswith("/rsyncd-munged/")


# -- 4: limits hold during the transfer --------------------------------------------------------


def test_a_file_grown_after_the_dry_run_beyond_max_size_is_refused(pi: Pi) -> None:
    first = pi.pull()
    pi.plays(
        """
        if call == 2:  # the real pull, after a dry run that saw a few bytes
            (root / "root/work/big.bin").write_bytes(b"x" * (24 << 20))
        """
    )
    with pytest.raises(pulling.Refused, match=r"more than sync\.max_size 1\.0 MB"):
        pi.pull(max_bytes=MiB)
    assert pi.store.newest() == first.id
    assert pi.store.ids() == [first.id]
    assert not any(p.name.endswith(".partial") for p in pi.store.root.iterdir())


def test_six_thousand_empty_directories_are_over_max_entries(pi: Pi) -> None:
    for n in range(6000):
        (pi.work / f"d{n}").mkdir()
    with pytest.raises(pulling.Refused, match=r"\d+ files and directories, more than "
                       r"sync\.max_entries 5000"):  # fmt: skip
        pi.pull(max_bytes=1024, max_entries=5000)
    assert pi.store.ids() == []


def test_directories_made_after_the_dry_run_are_counted_too(pi: Pi) -> None:
    pi.plays(
        """
        if call == 2:
            for n in range(6000):
                (root / f"root/work/d{n}").mkdir(exist_ok=True)
        """
    )
    with pytest.raises(pulling.Refused, match=r"more than sync\.max_entries 5000"):
        pi.pull(max_entries=5000)
    assert pi.store.ids() == []


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB file system with 2,000 inodes, for the store alone."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,nr_inodes=2000,mode=0700", "tmpfs", str(mount)],
        check=True,
    )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_pull_crossing_the_disk_floor_while_it_runs_is_stopped(pi: Pi, small_fs: Path) -> None:
    store = SnapshotStore(small_fs / "sync/a")
    first = pi.pull(store, disk_floor=MiB)
    pi.plays(
        """
        if call == 2:
            (root / "root/work/big.bin").write_bytes(b"x" * (24 << 20))
        """
    )
    with pytest.raises(pulling.Refused, match=r"below sync\.disk_floor 1\.0 MB"):
        pi.pull(store, disk_floor=MiB, bandwidth=2 * MiB)
    assert store.newest() == first.id
    assert os.statvfs(small_fs).f_bavail * os.statvfs(small_fs).f_frsize > 3 * MiB


def test_a_pull_crossing_the_inode_floor_while_it_runs_is_stopped(pi: Pi, small_fs: Path) -> None:
    store = SnapshotStore(small_fs / "sync/a")
    first = pi.pull(store, inode_floor=500)
    pi.plays(
        """
        if call == 2:
            for n in range(6000):
                (root / f"root/work/d{n}").mkdir(exist_ok=True)
        """
    )
    with pytest.raises(pulling.Refused, match=r"inode_floor|ran out of space or inodes"):
        pi.pull(store, inode_floor=500)
    assert store.newest() == first.id
    assert os.statvfs(small_fs).f_favail > 1500


# -- 5: output is read with a bound --------------------------------------------------------


_MEASURE = """
import asyncio, resource, sys
from pathlib import Path
from gateway.sync import pull
from gateway.sync.rsync import Remote
from gateway.sync.snapshots import SnapshotStore

stand_in, vm, hook, store, what = sys.argv[1:]
if what == "pull":
    remote = Remote((sys.executable, stand_in, vm, hook))
    asyncio.run(pull.pull(SnapshotStore(Path(store)), remote, pull.PullPlan(paths=["/root/work"])))
else:
    try:
        asyncio.run(pull.start_resume([sys.executable, stand_in, vm, hook, "vm", "true", "."], 60))
    except pull.Failed as exc:
        print(str(exc)[:60])
print("maxrss_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""

_FLOOD = """
if call == 2 or __import__("os").environ.get("FLOOD_ALWAYS"):
    line = b"rsync: [sender] read errors mapping \\x1b[2J" + b"y" * 1000 + b"\\n"
    for _ in range(48 * 1024 // len(line) * 1024):
        stderr.write(line)
    stderr.write(b"z" * (48 << 20))  # and one line without an end
    stderr.write(b"\\n")
"""


def _peak_kib(pi: Pi, tmp_path: Path, what: str, flood: bool) -> int:
    pi.plays(_FLOOD if flood else "")
    env = {**os.environ, "FLOOD_ALWAYS": "1" if what == "resume" else ""}
    run = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(STAND_IN), str(pi.vm), str(pi.hook),
         str(tmp_path / f"store-{what}-{flood}"), what],
        capture_output=True, text=True, cwd=REPO, timeout=300, check=False, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    return int(run.stdout.split("maxrss_kib")[-1])


@pytest.mark.parametrize("what", ["pull", "resume"])
def test_96_mib_of_stderr_from_the_vm_keep_memory_bounded(
    pi: Pi, tmp_path: Path, what: str
) -> None:
    quiet = _peak_kib(pi, tmp_path, what, flood=False)
    flooded = _peak_kib(pi, tmp_path, what, flood=True)
    assert flooded - quiet < 16 * 1024, f"peak {quiet} KiB quiet, {flooded} KiB flooded"


# -- 6: escape codes from the VM never reach a terminal, a log or the store raw -----------

EVIL = "/root/work/\x1b]0;owned\x07\x1b[2Jevil.txt"


def test_escape_codes_in_vm_names_and_errors_are_escaped_everywhere(
    pi: Pi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (pi.vm / EVIL.lstrip("/")).write_text("x")
    pi.plays(_vanished(EVIL, "/root/work/\x1b[31m../../../x"))
    with caplog.at_level(logging.DEBUG, "gateway.sync"):
        info = pi.pull()
    assert len(info.kept_previous) == 1
    assert ESC not in info.kept_previous[0] and "\\x1b]0;owned" in info.kept_previous[0]
    stored = json.loads((pi.store.root / info.id / "snapshot.json").read_text())
    assert all(ESC not in name and "\x07" not in name for name in stored["kept_previous"])
    assert "ignored the vanished name" in caplog.text
    assert ESC not in caplog.text
    config = tmp_path / "config.yaml"
    config.write_text(
        "sessions:\n  - name: a\n    notebook_url: https://colab.research.google.com/drive/x\n"
        "    sync: {paths: [/root/work]}\nbrowser: {enabled: false}\ntmux: {enabled: false}\n"
        "tunnel: {enabled: false}\nddns: {provider: none}\n"
    )
    listing = subprocess.run(
        [sys.executable, "-m", "gateway", "sync", "-c", str(config), "--state-dir",
         str(pi.state), "--runtime-dir", str(tmp_path / "run")],
        capture_output=True, text=True, cwd=REPO, timeout=60, check=False,
    )  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    assert "evil.txt" in listing.stdout
    assert ESC not in listing.stdout and "\x07" not in listing.stdout


def test_the_vm_error_line_in_a_failure_is_escaped() -> None:
    why = Result(12, "", "rsync: connection reset\n\x1b]0;owned\x07\x1b[2J gone\n").why()
    assert why.startswith("rsync exit 12 (")
    assert ESC not in why and "\\x1b]0;owned" in why


def test_resume_stderr_is_escaped_in_the_failure(tmp_path: Path) -> None:
    script = "printf 'starting\\n\\033]0;owned\\007\\033[2J gone' >&2; exit 3"
    with pytest.raises(pulling.Failed) as caught:
        asyncio.run(pulling.start_resume(["sh", "-c", script], 30))
    message = str(caught.value)
    assert message.startswith("starting resume.command failed (ssh exit 3): ")
    assert ESC not in message and "\\x1b]0;owned" in message
