"""The stop for disallowed code, kept in the state directory so that a restart keeps it.

Colab disconnects a runtime "due to executing code that is disallowed in our free of charge
tier"; reconnecting and re-running the same code repeats it and puts the account at risk.
The keep-alive then stops that session (``page_state.Stopped``) and writes
``<state_dir>/disallowed/<session>.json`` (atomically); a daemon restart reads it back and
stays stopped. ``colab-gateway runtime clear SESSION`` (a person, once the notebook is fixed
or the plan paid) removes the file; the keep-alive sees it gone on its next look and
connects again.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

from gateway.atomic import atomic_write
from gateway.browser.page_state import Stopped

log = logging.getLogger(__name__)

DIRECTORY = "disallowed"


def flag_path(state_dir: Path, session: str) -> Path:
    # Session names are checked by the config: 1-32 lowercase letters, digits and dashes.
    return state_dir / DIRECTORY / f"{session}.json"


def write(state_dir: Path, session: str, stopped: Stopped) -> bool:
    """Keep the stop; False (and a warning) when the state directory refuses it."""
    path = flag_path(state_dir, session)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        text = json.dumps({"since": stopped.since, "detail": stopped.detail})
        atomic_write(path, text, mode=0o640)
    except OSError as exc:
        log.warning("could not keep the stop of session %s in %s: %s", session, path, exc)
        return False
    return True


def read(state_dir: Path, session: str) -> Stopped | None:
    """The kept stop, or None. A flag that cannot be read is still a stop: better stopped
    than reconnecting into disallowed code."""
    path = flag_path(state_dir, session)
    try:
        data = json.loads(path.read_text())
        return Stopped(float(data["since"]), str(data.get("detail") or ""))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("the stop flag %s is unreadable (%s): staying stopped", path, exc)
        since = 0.0
        with contextlib.suppress(OSError):
            since = path.stat().st_mtime
        return Stopped(since, "")


def present(state_dir: Path, session: str) -> bool:
    return flag_path(state_dir, session).exists()


def clear(state_dir: Path, session: str) -> Stopped | None:
    """Remove the stop; return what it was (None when there was none)."""
    stopped = read(state_dir, session)
    with contextlib.suppress(FileNotFoundError):
        flag_path(state_dir, session).unlink()
    return stopped
