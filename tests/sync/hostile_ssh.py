"""A stand-in for ``ssh`` given to rsync as ``-e``: a hostile VM's side of the sync.

    python hostile_ssh.py VMROOT HOOK [-l USER] HOST rsync --server ...

It ignores the host, counts its calls (``VMROOT.calls``), runs ``HOOK`` (Python, with
``call``: 1 for the first rsync of a pull, the dry run; ``root``: VMROOT; ``stderr``: the
raw stderr, which rsync reads as the remote side's) and then becomes the real rsync
server, with the VM's absolute paths moved below VMROOT. So the remote side is real rsync
over the real protocol, plus whatever the hook does: forge lines on stderr, flood it,
change the tree between the dry run and the pull.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main() -> None:
    root, hook, *rest = sys.argv[1:]
    if rest[0] == "-l":
        rest = rest[2:]
    command = rest[1:]  # the host dropped
    calls = Path(root + ".calls")
    call = int(calls.read_text()) + 1 if calls.exists() else 1
    calls.write_text(str(call))
    code = compile(Path(hook).read_text(), hook, "exec")
    exec(code, {"call": call, "root": Path(root), "stderr": sys.stderr.buffer})
    sys.stderr.flush()
    # Paths after the server's "." are the VM's: "/" (a push, or --files-from) or a path.
    dot = command.index(".")
    paths = [
        f"{root}/" if arg == "/" else f"{root}/.{arg}" if arg.startswith("/") else arg
        for arg in command[dot + 1 :]
    ]
    os.execvp(command[0], [*command[: dot + 1], *paths])


if __name__ == "__main__":
    main()
