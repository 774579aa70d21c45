"""The user's session environment for a Chromium this process starts by hand.

A snap started without a session bus dies on cgroup v2 (Ubuntu 22.04 and later) with
"… is not a snap cgroup": snap-confine wants the transient scope `snap run` asks the
user's systemd for, over ``DBUS_SESSION_BUS_ADDRESS``. ``sudo -u``, ``su`` and some ssh
setups leave ``XDG_RUNTIME_DIR`` and ``DBUS_SESSION_BUS_ADDRESS`` unset although the
user's systemd instance runs (lingering, which the role enables): ``colab-gateway login``
and the doctor's ``--version`` probe point them at the user's own ``/run/user/UID`` then.
What is set already is kept. Harmless for a Chromium that is no snap: it is the user's
own runtime directory and bus.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

RUN_USER = Path("/run/user")


def with_user_session(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with XDG_RUNTIME_DIR and DBUS_SESSION_BUS_ADDRESS
    of this user added where unset and where systemd made them (the directory is ours,
    the bus socket exists)."""
    result = dict(os.environ if env is None else env)
    runtime = Path(result["XDG_RUNTIME_DIR"]) if result.get("XDG_RUNTIME_DIR") else None
    if runtime is None:
        mine = RUN_USER / str(os.getuid())
        try:
            owned = mine.stat().st_uid == os.getuid()
        except OSError:
            owned = False
        if not owned:
            return result
        runtime = mine
        result["XDG_RUNTIME_DIR"] = str(mine)
    if not result.get("DBUS_SESSION_BUS_ADDRESS"):
        bus = runtime / "bus"
        try:
            is_socket = stat.S_ISSOCK(bus.stat().st_mode)
        except OSError:
            is_socket = False
        if is_socket:
            result["DBUS_SESSION_BUS_ADDRESS"] = f"unix:path={bus}"
    return result
