"""The config, the tunnel's keys and pinned host keys, and the running daemon."""

from __future__ import annotations

import stat
from typing import Any

from gateway.doctor.env import SERVICE, Env
from gateway.doctor.report import Finding, fail, ok, skip, warn
from gateway.snapshot import Snapshot
from gateway.status_server import query
from gateway.tunnel import hostkeys
from gateway.tunnel.keys import KeyStore, secret_name
from gateway.vocabulary import Health


def check_config(env: Env, problems: list[str]) -> Finding:
    """The load itself happens before the checks (every other check needs its result)."""
    if env.loaded is None:
        return fail(
            f"{env.paths.config} is not usable ({len(problems)} problem(s), each on a line below)",
            "fix each FILE:LINE:COL; `colab-gateway check-config` checks the file again",
        )
    sessions = len(env.config.sessions)
    placeholders = [s.name for s in env.config.sessions if s.is_placeholder]
    if placeholders:
        return warn(
            f"{env.paths.config}: session(s) {', '.join(placeholders)} still have the example "
            "notebook_url",
            "paste your notebook's address (https://colab.research.google.com/drive/…)",
        )
    warnings = "; ".join(str(w) for w in env.loaded.warnings)
    if warnings:
        return warn(f"{env.paths.config}: {warnings}", "see each warning")
    return ok(f"{env.paths.config} ({sessions} session(s))")


def check_tunnel_keys(env: Env) -> Finding:
    config = env.config
    if not config.tunnel.enabled:
        return skip("tunnel.enabled is false")
    store = KeyStore(env.paths.keys_dir)
    made_by = f"the daemon makes them at start, or run `colab-gateway keys -c {env.paths.config}`"
    wanted = [("endpoint host key", store.host_key_path)] + [
        (f"session {s.name}'s tunnel key", store.tunnel_key_path(s.name)) for s in config.sessions
    ]
    missing = [
        f"{what} ({path})"
        for what, path in wanted
        if not (path.exists() and path.with_name(path.name + ".pub").exists())
    ]
    if missing:
        return warn(f"missing: {', '.join(missing)}", made_by)
    too_open = [str(path) for _, path in wanted if stat.S_IMODE(path.stat().st_mode) & 0o077]
    if too_open:
        return fail(
            f"private keys readable by others: {', '.join(too_open)}",
            "chmod 600 them, then rotate each session's key (colab-gateway keys --rotate "
            "SESSION) and paste the new one into its Colab secret",
        )
    unpinned = [
        s.name
        for s in config.sessions
        if hostkeys.pinned_fingerprint(env.paths.known_hosts, s.ssh_port) is None
    ]
    facts = f"endpoint host key {store.host_info().fingerprint}; " + ", ".join(
        f"{s.name} key {store.tunnel_key(s.name).fingerprint} (secret {secret_name(s.name)})"
        for s in config.sessions
    )
    if unpinned:
        return warn(
            f"{facts}; no Colab VM has registered its host key yet for {', '.join(unpinned)}",
            f"run the notebook's first cell (`colab-gateway snippet {unpinned[0]}` prints it) "
            "with the key in its Colab secret; the VM registers its host key once the tunnel "
            "is up",
        )
    return ok(f"{facts}; every session has a Colab VM host key pinned")


def daemon_snapshot(env: Env) -> dict[str, Any] | OSError | ValueError:
    """The running daemon's State, or why it could not be read (asked once per run)."""

    def ask() -> dict[str, Any] | OSError | ValueError:
        try:
            return query(env.paths.status_socket, timeout=env.timeout)
        except (OSError, ValueError) as exc:
            return exc

    result: dict[str, Any] | OSError | ValueError = env.once("status", ask)
    return result


def check_daemon(env: Env) -> Finding:
    socket_path = env.paths.status_socket
    snapshot = daemon_snapshot(env)
    start = (
        f"sudo systemctl start {SERVICE} (`journalctl -u {SERVICE} -n 50` says why it "
        f"stopped); without systemd: colab-gateway run -c {env.paths.config}"
    )
    if isinstance(snapshot, PermissionError):
        return warn(
            f"not allowed to read {socket_path}",
            "run the doctor as the service's user or a member of its group "
            f"(`systemctl show -p User {SERVICE}` names it)",
        )
    if isinstance(snapshot, FileNotFoundError):
        return fail(f"{SERVICE} is not running (no status socket at {socket_path})", start)
    if isinstance(snapshot, ConnectionRefusedError):
        return fail(
            f"{SERVICE} is not running ({socket_path} is left from a run that ended)", start
        )
    if isinstance(snapshot, Exception):
        reason = getattr(snapshot, "strerror", None) or str(snapshot)
        return fail(f"no answer on {socket_path}: {reason}", start)
    try:
        view = Snapshot.from_json(snapshot)
    except ValueError as exc:
        return fail(
            f"{socket_path} answered a status this version cannot read ({exc})",
            f"restart the service so that it runs this version: sudo systemctl restart {SERVICE}",
        )
    text = f"running: {view.health.value} — {view.summary}"
    if view.health == Health.OK:
        return ok(text)
    fix = "`colab-gateway status` names the component and what it needs"
    return fail(text, fix) if view.health == Health.FAILED else warn(text, fix)
