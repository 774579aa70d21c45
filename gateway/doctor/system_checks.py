"""tmux, the ssh identity the Pi logs into the VM with, and room in the state directory."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import asyncssh

from gateway.doctor.env import Env
from gateway.doctor.report import Finding, fail, ok, skip, warn

# The keeper appends its session-closed hook beside the user's own (`set-hook -ga`):
# hooks became array options that can be appended to in tmux 3.0.
MIN_TMUX = (3, 0)


def tmux_version(text: str) -> tuple[int, int] | None:
    """(major, minor) from ``tmux -V`` ("tmux 3.3a", "tmux next-3.4"); None for a
    development build ("tmux master") or anything unexpected."""
    match = re.search(r"(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def check_tmux(env: Env) -> Finding:
    enabled = env.loaded is None or env.config.tmux.enabled
    binary = env.which("tmux")
    if binary is None:
        if not enabled:
            return skip("tmux.enabled is false and tmux is not installed")
        return fail("tmux is not installed (not on PATH)", "sudo apt-get install tmux")
    try:
        done = subprocess.run(
            [binary, "-V"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return fail(f"{binary} -V did not run: {exc}", "reinstall tmux (sudo apt-get install tmux)")
    said = done.stdout.strip() or done.stderr.strip()
    version = tmux_version(said)
    wanted = ".".join(map(str, MIN_TMUX))
    if version is not None and version < MIN_TMUX:
        return warn(
            f"{binary} is {said!r}; the keeper needs tmux {wanted} or newer (set-hook -a)",
            f"install tmux {wanted}+ (Debian 11, Ubuntu 20.04 and later ship it)",
        )
    return ok(f"{binary}: {said}")


def check_ssh_identity(env: Env) -> Finding:
    """The key the tmux window's ssh logs into the VM with; the bootstrap installs its .pub."""
    config = env.config
    if not (config.tmux.enabled or config.tunnel.enabled):
        return skip("neither tmux nor the tunnel is enabled: nothing uses ssh.identity")
    key = Path(config.ssh.identity).expanduser()
    public = key.with_name(key.name + ".pub")
    create = f"ssh-keygen -t ed25519 -N '' -f {key}"
    if not key.exists():
        fix = f"create it: {create}"
        if config.ssh.identity.startswith("~"):
            fix += " (as the service's user: ~ is the home of whoever runs this)"
        return fail(f"ssh.identity {key} does not exist", fix)
    mode = stat.S_IMODE(key.stat().st_mode)
    if mode & 0o077:
        return fail(
            f"{key} has mode {mode:04o}: ssh refuses a private key others can read",
            f"chmod 600 {key}",
        )
    if not os.access(key, os.R_OK):
        return fail(
            f"{key} is not readable by this user",
            "run the doctor as the service user, or chown the key to it",
        )
    if not public.exists():
        return fail(
            f"{public} does not exist: the bootstrap installs it on the VM",
            f"recreate it: ssh-keygen -y -f {key} > {public}",
        )
    try:
        private_key = asyncssh.read_private_key(key)
    except (asyncssh.KeyImportError, ValueError) as exc:
        # asyncssh names the passphrase (or the bcrypt it would need to open one)
        if "assphrase" in str(exc) or "bcrypt" in str(exc):
            return warn(
                f"{key} is protected by a passphrase: the tmux window's ssh cannot use it "
                "unattended",
                f"remove the passphrase: ssh-keygen -p -N '' -f {key}",
            )
        return fail(f"{key} is not an OpenSSH private key: {exc}", f"create one: {create}")
    try:
        public_key = asyncssh.read_public_key(public)
    except (asyncssh.KeyImportError, ValueError) as exc:
        return fail(f"{public} is not an OpenSSH public key: {exc}", _rebuild(key, public))
    if public_key.public_data != private_key.public_data:
        return fail(f"{public} is not the public half of {key}", _rebuild(key, public))
    return ok(f"{key} and its .pub match ({public_key.get_fingerprint()})")


def _rebuild(key: Path, public: Path) -> str:
    return f"ssh-keygen -y -f {key} > {public} (then run the notebook's first cell again)"


def free_mb(directory: Path) -> tuple[Path, float]:
    """Free space (for an unprivileged writer) where ``directory`` is, or would be made."""
    place = directory
    while not place.exists() and place != place.parent:
        place = place.parent
    st = os.statvfs(place)
    return place, st.f_bavail * st.f_frsize / (1 << 20)


def check_disk(env: Env) -> Finding:
    state = env.paths.state_dir
    place, mb = free_mb(state)
    where = (
        str(state) if place == state else f"{place} (the state directory {state} is not made yet)"
    )
    text = f"{mb:.0f} MB free in {where}"
    fix = (
        f"free space there: old screenshots in {env.paths.screenshots_dir}, "
        "`sudo journalctl --vacuum-size=100M`, `sudo apt-get clean`"
    )
    if mb < env.disk_fail_mb:
        return fail(
            f"{text}: below {env.disk_fail_mb:.0f} MB Chromium and the state files fail", fix
        )
    if mb < env.disk_warn_mb:
        return warn(f"{text}: below {env.disk_warn_mb:.0f} MB", fix)
    return ok(text)
