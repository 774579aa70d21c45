"""What the updater remembers across restarts, in ``<state>/ddns.json``.

- per host and family, the last address a provider accepted, when it became that address
  and when it was last sent (for the forced refresh), and whether the clock was
  synchronised when those times were written: a Pi has no battery clock, so a time
  written before NTP synchronised is not trusted;
- the stops a provider ordered (dyndns2's fatal answers), keyed by a hash of the
  configuration they concern: a new configuration has a new hash, which lifts the stop.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gateway.atomic import atomic_write

log = logging.getLogger("gateway.ddns")

FORMAT = 1


@dataclass(frozen=True)
class Accepted:
    address: str
    sent_at: float  # the last time the provider accepted it (good/nochg/OK/PATCH)
    changed_at: float | None  # when the record became this address (None: unknown)
    clock_synced: bool  # whether those times come from a synchronised clock
    target: str  # which provider account and host; a different one knows nothing of this


@dataclass(frozen=True)
class Stop:
    host: str
    code: str
    message: str
    at: float


class Store:
    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly  # dry runs read what is known and write nothing
        self.accepted: dict[str, Accepted] = {}
        self.stops: dict[str, Stop] = {}
        self._load()

    def _load(self) -> None:
        try:
            raw: Any = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            # Losing this file costs one update too many, never a wrong record.
            log.warning("ignoring unreadable %s (%s): it will be rewritten", self.path, exc)
            return
        try:
            for key, value in raw.get("accepted", {}).items():
                self.accepted[key] = Accepted(**value)
            for key, value in raw.get("stops", {}).items():
                self.stops[key] = Stop(**value)
        except (AttributeError, TypeError) as exc:
            log.warning("ignoring malformed %s (%s): it will be rewritten", self.path, exc)
            self.accepted.clear()
            self.stops.clear()

    def _save(self) -> None:
        if self.readonly:
            return
        data = {
            "format": FORMAT,
            "accepted": {k: asdict(v) for k, v in sorted(self.accepted.items())},
            "stops": {k: asdict(v) for k, v in sorted(self.stops.items())},
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps(data, indent=1) + "\n")

    def last(self, key: str, target: str) -> Accepted | None:
        found = self.accepted.get(key)
        return found if found is not None and found.target == target else None

    def remember(self, key: str, accepted: Accepted) -> None:
        if self.accepted.get(key) != accepted:
            self.accepted[key] = accepted
            self._save()

    def stop_for(self, config_hash: str) -> Stop | None:
        return self.stops.get(config_hash)

    def add_stop(self, config_hash: str, stop: Stop) -> None:
        self.stops[config_hash] = stop
        self._save()

    def lift_stops_except(self, config_hash: str) -> list[Stop]:
        """Forget stops ordered for other configurations: the user changed it since."""
        lifted = [s for k, s in self.stops.items() if k != config_hash]
        if lifted:
            self.stops = {k: s for k, s in self.stops.items() if k == config_hash}
            self._save()
        return lifted


def key(host: str, family: str) -> str:
    return f"{host.lower()}/{family}"


# adjtimex(2) returns TIME_ERROR while the kernel's clock is not synchronised; every NTP
# client (systemd-timesyncd, chrony, ntpd) clears that state once it has set the clock.
_TIME_ERROR = 5


def clock_is_synchronised() -> bool:
    with contextlib.suppress(OSError, AttributeError):
        if Path("/run/systemd/timesync/synchronized").exists():
            return True
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        timex = ctypes.create_string_buffer(512)  # struct timex with modes = 0: read only
        return int(libc.adjtimex(timex)) not in (-1, _TIME_ERROR)
    return False
