"""Copies the source of a colab-gateway checkout into an empty directory to build the wheel
from, on the controller. `pip wheel CHECKOUT` reuses whatever lies in the checkout's build/
(setuptools copies modules into build/lib and never removes one): a module deleted from
the checkout would still ship. The copy has no build/ to reuse.

    python3 export-checkout.py CHECKOUT DEST

A git checkout: the files git tracks (`git ls-files`), as they are in the working tree,
uncommitted edits included; a tracked file deleted from the working tree is left out.
Anything else (an unpacked sdist or tarball, or no git on the controller): the whole tree
but for what a build or a venv leaves behind (build/, dist/, *.egg-info, .venv,
__pycache__) and .git. Prints what it did, one line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

# Never source: what a build, a test run or a virtualenv leaves in a tree.
LEFT_OUT = shutil.ignore_patterns(
    ".git", "build", "dist", "*.egg-info", ".venv", "__pycache__", "*.pyc", ".*_cache"
)


def tracked_files(checkout: Path) -> list[str] | None:
    """The paths git tracks under CHECKOUT, or None when it is not the top of a git work
    tree (a subfolder of some other repository is not this checkout's history)."""
    try:
        top = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "--show-toplevel"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if Path(top).resolve() != checkout.resolve():
            return None
        listing = subprocess.run(
            ["git", "-C", str(checkout), "ls-files", "-z", "--cached"],
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return [os.fsdecode(p) for p in listing.split(b"\0") if p]


def main() -> int:
    checkout, dest = Path(sys.argv[1]), Path(sys.argv[2])
    if not (checkout / "pyproject.toml").is_file():
        print(
            f"colab-gateway: {str(checkout)!r} has no pyproject.toml: set colab_gateway_checkout "
            "to a colab-gateway checkout",
            file=sys.stderr,
        )
        return 1
    paths = tracked_files(checkout)
    if paths is None:
        shutil.copytree(checkout, dest, symlinks=True, ignore=LEFT_OUT, dirs_exist_ok=True)
        print(
            f"export=tree: {checkout} is not a git checkout; copied it without build/, "
            "dist/, *.egg-info, .venv, __pycache__ and .git"
        )
        return 0
    copied = 0
    for relative in paths:
        source = checkout / relative
        if not os.path.lexists(source) or source.is_dir():  # deleted, or a submodule
            continue
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)
        copied += 1
    print(f"export=git: copied the {copied} files git tracks in {checkout}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
