"""The state directory's layout version, and the migrations between layouts.

``<state_dir>/format`` is a small JSON, written atomically::

    {"version": 1, "written_by": "colab-gateway 0.1.0"}

The daemon calls ``prepare`` once at start, before any component touches the state:

- no ``format`` file: a fresh directory gets today's version; a directory with state in it
  was made before the file existed, which is layout 1;
- an older version: the migrations run one version at a time, each after a complete copy
  of what it changes (``backup-<from>-to-<to>-<time>/``, left in place for a rollback);
- a newer version: ``StateFormatError``; the daemon does not start. A release older than
  the state cannot know what the newer one changed, and guessing could lose keys.

Crash safety: before a migration changes anything, ``format`` names its backup
(``"migrating_to"``); the next start finds that mark and puts the backup back before
anything else, so a power cut in the middle of a migration leaves the old layout.

Version 1 is the layout of every release so far: there are no migrations yet.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.atomic import atomic_write, flush_tree, fsync_dir
from gateway.untrusted import quoted

log = logging.getLogger(__name__)

FORMAT_FILE = "format"
CURRENT_VERSION = 1
# The layout of a state directory made before the format file existed.
LAYOUT_WITHOUT_FORMAT_FILE = 1
BACKUP_MANIFEST = "backup.json"
ROLLBACK_DOC = "docs/install.md, Upgrading and rolling back"


@dataclass(frozen=True)
class Migration:
    """One step from ``from_version`` to ``from_version + 1``.

    ``touches`` names every path in the state directory the step may create, change or
    remove ("keys", "known_hosts", "sync/colab/latest"); they are copied before it runs
    and put back if it fails or is cut short. ``apply`` must only change those.
    """

    from_version: int
    what: str
    touches: tuple[str, ...]
    apply: Callable[[Path], None]


# From layout N to N + 1, in order. Empty: version 1 is today's layout.
MIGRATIONS: tuple[Migration, ...] = ()


class StateFormatError(Exception):
    """The daemon must not start on this state directory; the message says what to do."""


@dataclass(frozen=True)
class Prepared:
    version: int
    migrated_from: int | None = None
    backups: tuple[Path, ...] = ()
    restored: Path | None = None  # the backup an interrupted migration was undone from


def written_by() -> str:
    return f"colab-gateway {__version__}"


def prepare(
    state_dir: Path,
    *,
    current: int = CURRENT_VERSION,
    migrations: Sequence[Migration] = MIGRATIONS,
) -> Prepared:
    """Make ``state_dir`` hold layout ``current``, or raise StateFormatError saying why not."""
    path = state_dir / FORMAT_FILE
    recorded = _read(path)
    restored = None
    if recorded is None:
        fresh = not any(p.name != FORMAT_FILE for p in state_dir.iterdir())
        version = current if fresh else LAYOUT_WITHOUT_FORMAT_FILE
        _write(state_dir, version)
        if version == current:
            return Prepared(version)
    else:
        version = recorded["version"]
        if "migrating_to" in recorded:
            restored = _undo_interrupted(state_dir, recorded)
    if version > current:
        raise StateFormatError(_too_new(state_dir, version, recorded, current))
    steps = {m.from_version: m for m in migrations}
    backups = []
    start = version
    while version < current:
        step = steps.get(version)
        if step is None:
            raise StateFormatError(
                f"no migration of the state directory {state_dir} from layout {version} to "
                f"{version + 1} in {written_by()}: a packaging bug, please report it"
            )
        backups.append(_migrate(state_dir, step))
        version += 1
    return Prepared(version, start if backups else None, tuple(backups), restored)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        raw = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateFormatError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        data = json.loads(raw)
        version = data["version"]
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ValueError(f"version {version!r} is no whole number >= 1")
    except (ValueError, TypeError, KeyError) as exc:
        raise StateFormatError(
            f"{path} is not a layout version ({exc}): {quoted(raw, 100)}. If this state "
            f"directory is one of colab-gateway {__version__}'s, write "
            f'{{"version": {CURRENT_VERSION}}} into it; else restore a backup'
        ) from exc
    return dict(data)


def _write(state_dir: Path, version: int, **migrating: str | int) -> None:
    data: dict[str, Any] = {"version": version, "written_by": written_by(), **migrating}
    atomic_write(state_dir / FORMAT_FILE, json.dumps(data) + "\n", mode=0o600)


def _too_new(state_dir: Path, version: int, recorded: dict[str, Any] | None, current: int) -> str:
    by = quoted(str((recorded or {}).get("written_by", "a newer release")), 80)
    backups = sorted(p.name for p in state_dir.glob(f"backup-{current}-to-*"))
    restore = (
        f", or stop the service and put back the copy that upgrade made ({backups[-1]})"
        if backups
        else ""
    )
    return (
        f"the state directory {state_dir} has layout version {version} (written by {by}); "
        f"this {written_by()} knows layouts up to {current}: it is older than the release "
        f"that last ran here. Install that release or a newer one again "
        f"(colab_gateway_wheel){restore}. See {ROLLBACK_DOC}"
    )


def _migrate(state_dir: Path, step: Migration) -> Path:
    to = step.from_version + 1
    backup = _backup(state_dir, step)
    _write(state_dir, step.from_version, migrating_to=to, backup=backup.name)
    log.info(
        "migrating the state directory %s from layout %d to %d (%s); a copy of %s is in %s",
        state_dir,
        step.from_version,
        to,
        step.what,
        ", ".join(step.touches),
        backup,
    )
    try:
        step.apply(state_dir)
        flush_tree(state_dir)
    except Exception as exc:
        _restore(state_dir, backup)
        _write(state_dir, step.from_version)
        raise StateFormatError(
            f"migrating the state directory {state_dir} from layout {step.from_version} to "
            f"{to} ({step.what}) failed: {exc}. It is back as it was (a copy stays in "
            f"{backup}): reinstall the previous release (colab_gateway_wheel) and report this"
        ) from exc
    _write(state_dir, to)
    return backup


def _backup(state_dir: Path, step: Migration) -> Path:
    """A complete copy of what ``step`` touches: made under a .partial name, flushed, then
    renamed, so a directory without that suffix is always whole."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    name = f"backup-{step.from_version}-to-{step.from_version + 1}-{stamp}"
    backup, n = state_dir / name, 1
    while backup.exists() or backup.with_name(backup.name + ".partial").exists():
        n += 1
        backup = state_dir / f"{name}-{n}"
    partial = backup.with_name(backup.name + ".partial")
    partial.mkdir(mode=0o700)
    present, absent = [], []
    for entry in step.touches:
        source = state_dir / entry
        if not os.path.lexists(source):
            absent.append(entry)
            continue
        present.append(entry)
        (partial / entry).parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir() and not source.is_symlink():
            shutil.copytree(source, partial / entry, symlinks=True)
        else:
            shutil.copy2(source, partial / entry, follow_symlinks=False)
    manifest: dict[str, Any] = {"from": step.from_version, "to": step.from_version + 1}
    manifest |= {"present": present, "absent": absent}
    atomic_write(partial / BACKUP_MANIFEST, json.dumps(manifest) + "\n")
    flush_tree(partial)
    os.rename(partial, backup)
    fsync_dir(state_dir)
    return backup


def _undo_interrupted(state_dir: Path, recorded: dict[str, Any]) -> Path:
    name = str(recorded.get("backup", ""))
    backup = state_dir / name
    if not name or "/" in name or not (backup / BACKUP_MANIFEST).is_file():
        raise StateFormatError(
            f"{state_dir / FORMAT_FILE} says a migration to layout "
            f"{quoted(str(recorded['migrating_to']), 20)} was cut short, but its backup "
            f"{quoted(name, 100)} is not there: restore the state directory from a copy"
        )
    log.warning(
        "a migration of the state directory %s to layout %s was cut short: putting back %s",
        state_dir,
        recorded["migrating_to"],
        backup,
    )
    _restore(state_dir, backup)
    _write(state_dir, recorded["version"])
    return backup


def _restore(state_dir: Path, backup: Path) -> None:
    """Put every entry the backup lists back as it was (and remove those that were absent)."""
    manifest = json.loads((backup / BACKUP_MANIFEST).read_text())
    for entry in [*manifest["present"], *manifest["absent"]]:
        target = state_dir / entry
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
    for entry in manifest["present"]:
        source = backup / entry
        (state_dir / entry).parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir() and not source.is_symlink():
            shutil.copytree(source, state_dir / entry, symlinks=True)
        else:
            shutil.copy2(source, state_dir / entry, follow_symlinks=False)
    flush_tree(state_dir)
