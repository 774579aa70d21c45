"""The checkout is no scratch space: a test writes only under its temporary directories.

A test that wrote into the checkout once left an empty ``~pi/.ansible/tmp`` there (Ansible's
remote_tmp, ``~/.ansible/tmp`` for a user ``pi`` that does not exist here, made relative to
the working directory). git shows no empty folder, so ``git status`` cannot tell: the guard
lists the checkout's paths itself, before and after the session.
"""

from __future__ import annotations

import os
from pathlib import Path

# What the tools themselves keep in the checkout (the venv, caches, the editable install's
# build files): written by design, ignored by .gitignore, not the tests' doing.
TOOL_DIRECTORIES = frozenset(
    {".git", ".venv", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", "build"}
)


def checkout_paths(root: Path) -> frozenset[str]:
    """Every file and folder under root, relative, except the tools' own folders."""
    found: set[str] = set()
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = [
            name
            for name in subdirectories
            if name not in TOOL_DIRECTORIES and not name.endswith(".egg-info")
        ]
        relative = Path(directory).relative_to(root)
        found.update(str(relative / name) for name in subdirectories)
        found.update(str(relative / name) for name in files)
    return frozenset(found)


def left_behind(before: frozenset[str], root: Path) -> list[str]:
    """The paths that appeared under root since ``before`` was taken, sorted."""
    return sorted(checkout_paths(root) - before)
