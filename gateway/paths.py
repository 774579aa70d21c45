"""Where things live: systemd's directory variables decide, command-line flags override."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gateway.config import DEFAULT_CONFIG_PATH

DEFAULT_STATE_DIR = Path("/var/lib/colab-gateway")
DEFAULT_RUNTIME_DIR = Path("/run/colab-gateway")
STATUS_SOCKET_NAME = "status.sock"


def _systemd_dir(variable: str) -> Path | None:
    # systemd passes a colon-separated list when a unit names several directories.
    value = os.environ.get(variable, "")
    first = value.split(":")[0]
    return Path(first) if first else None


@dataclass(frozen=True)
class Paths:
    config: Path
    state_dir: Path
    runtime_dir: Path

    @classmethod
    def resolve(
        cls,
        config: str | None = None,
        state_dir: str | None = None,
        runtime_dir: str | None = None,
    ) -> Paths:
        conf_dir = _systemd_dir("CONFIGURATION_DIRECTORY")
        config_path = (
            Path(config)
            if config
            else conf_dir / "config.yaml"
            if conf_dir
            else DEFAULT_CONFIG_PATH
        )
        return cls(
            config=config_path,
            state_dir=Path(state_dir)
            if state_dir
            else _systemd_dir("STATE_DIRECTORY") or DEFAULT_STATE_DIR,
            runtime_dir=Path(runtime_dir)
            if runtime_dir
            else _systemd_dir("RUNTIME_DIRECTORY") or DEFAULT_RUNTIME_DIR,
        )

    @property
    def status_socket(self) -> Path:
        return self.runtime_dir / STATUS_SOCKET_NAME

    # Well-known places inside the state directory, shared by the components that write
    # them and the commands that read them.
    @property
    def keys_dir(self) -> Path:
        return self.state_dir / "keys"

    @property
    def known_hosts(self) -> Path:
        """Pinned host keys of the Colab VMs, as ``[localhost]:PORT`` entries."""
        return self.state_dir / "known_hosts"

    @property
    def screenshots_dir(self) -> Path:
        return self.state_dir / "screenshots"

    @property
    def sync_dir(self) -> Path:
        """Snapshots of the sessions' files (sessions[].sync), one directory per session."""
        return self.state_dir / "sync"

    @property
    def ddns_state(self) -> Path:
        return self.state_dir / "ddns.json"

    @property
    def run_marker(self) -> Path:
        """Whether the last run of the daemon ended cleanly (gateway/alerts/run_marker.py)."""
        return self.state_dir / "last-run.json"

    def ensure(self) -> None:
        """Create the state and runtime directories, private to the service user."""
        for directory in (self.state_dir, self.runtime_dir):
            directory.mkdir(parents=True, exist_ok=True, mode=0o750)
