"""aarch64 programs run on this x86_64 host through qemu-user and the kernel's binfmt_misc,
set up for a test and put back as it was found.

Debian's qemu-user-static registers aarch64 with the flags ``OPF``; a setuid program (sudo,
and with it Ansible's ``become``) runs with its owner's rights only with ``C`` as well, so
the test registers ``OCPF``. ``F`` opens the interpreter at registration: it then runs
inside a machine's root that has no qemu of its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

BINFMT = Path("/proc/sys/fs/binfmt_misc")
NAME = "qemu-aarch64"
# The ELF header of an aarch64 executable, and which of its bits to compare (binfmt.d's
# qemu-aarch64.conf, from qemu-user-static).
MAGIC = r"\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00"
MASK = r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"
INTERPRETERS = ("/usr/libexec/qemu-binfmt/aarch64-binfmt-P", "/usr/bin/qemu-aarch64-static")
FLAGS = "OCPF"
LOCK = Path("/run/colab-gateway-tests-binfmt.lock")


def interpreter() -> str | None:
    """qemu-user-static's aarch64 interpreter (the -binfmt-P name tells qemu that the
    kernel preserves argv[0], flag P), or None when it is not installed."""
    return next((path for path in INTERPRETERS if Path(path).exists()), None)


def _escaped(hex_text: str) -> str:
    """binfmt_misc shows magic and mask as plain hex; it takes them as \\x escapes."""
    return "".join(f"\\x{hex_text[i : i + 2]}" for i in range(0, len(hex_text), 2))


def registration_of(entry: Path) -> str:
    """The register line that makes an existing entry again, read from its file."""
    fields = dict(
        line.split(" ", 1) if " " in line else (line, "") for line in entry.read_text().splitlines()
    )
    flags = fields.get("flags:", "").strip()
    return (
        f":{entry.name}:M:{fields.get('offset', '0').strip()}:"
        f"{_escaped(fields['magic'].strip())}:{_escaped(fields.get('mask', '').strip())}:"
        f"{fields['interpreter'].strip()}:{flags}"
    )


def flags_of(entry: Path) -> str:
    for line in entry.read_text().splitlines():
        if line.startswith("flags:"):
            return line.split(":", 1)[1].strip()
    return ""


def why_not() -> str | None:
    """Why aarch64 emulation cannot be had here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root to set up binfmt_misc for qemu-user"
    if os.uname().machine == "aarch64":
        return None
    if interpreter() is None:
        return "needs qemu-user-static (make test-arm64 installs it)"
    if not BINFMT.is_dir():
        return f"this kernel has no binfmt_misc ({BINFMT} is missing)"
    return None


@contextlib.contextmanager
def aarch64_emulation() -> Iterator[None]:
    """aarch64 executables run here (flags OCPF) while inside; afterwards binfmt_misc is as
    it was: unmounted if it was, the entry removed, or the earlier entry back."""
    if os.uname().machine == "aarch64":
        yield
        return
    qemu = interpreter()
    assert qemu is not None, why_not()
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one test at a time changes the registration
        mounted_here = not (BINFMT / "register").exists()
        if mounted_here:
            subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], check=True)
        entry = BINFMT / NAME
        earlier = registration_of(entry) if entry.exists() else None
        try:
            if earlier is None or set(flags_of(entry)) != set(FLAGS):
                if entry.exists():
                    entry.write_text("-1")
                (BINFMT / "register").write_text(f":{NAME}:M::{MAGIC}:{MASK}:{qemu}:{FLAGS}")
            yield
        finally:
            if entry.exists():
                entry.write_text("-1")
            if earlier is not None:
                (BINFMT / "register").write_text(earlier)
            if mounted_here:
                subprocess.run(["umount", str(BINFMT)], check=False)
