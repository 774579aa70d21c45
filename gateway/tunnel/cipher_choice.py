"""The ciphers the endpoint offers when ``tunnel.ciphers`` is not set: the cheapest per byte
on the CPU it runs on.

An SSH client takes the first cipher of *its own* list that the server also offers (RFC
4253, 7.1), and OpenSSH's list starts with chacha20-poly1305. So the server's order decides
nothing against an OpenSSH client; what it leaves out does:

- with AES instructions (x86 AES-NI: ``aes`` in ``flags``; ARMv8 crypto extensions:
  ``aes`` in ``Features``, e.g. a Raspberry Pi 5's Cortex-A76): AES-GCM only, so the
  client takes aes128-gcm. One `cryptography` call per packet in asyncssh (chacha20-
  poly1305 takes four) and hardware AES per byte: about a third less CPU per byte than
  chacha20-poly1305 through the endpoint (docs/tunnel.md, Performance).
- without (a Pi 3's Cortex-A53 and a Pi 4's Cortex-A72 lack the crypto extensions): AES
  and GHASH are software there, and chacha20-poly1305 costs less per byte (measured with
  AES-NI masked on x86: about 30 % less through the endpoint), so chacha20-poly1305 first,
  which an OpenSSH client takes; AES-GCM after it for clients without chacha20 (FIPS
  builds).
- under an emulator (qemu-user: an aarch64 program on an x86_64 host) /proc/cpuinfo is
  the host's and says nothing of the CPU the program sees: AES-GCM only, as when it
  cannot be read, and the log says why.
"""

from __future__ import annotations

import logging
import platform
from pathlib import Path

log = logging.getLogger("gateway.tunnel")

CPUINFO = Path("/proc/cpuinfo")
AES_GCM = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
CHACHA20 = "chacha20-poly1305@openssh.com"


def cpu_has_aes(cpuinfo: str) -> bool:
    """Whether /proc/cpuinfo text says the CPU has AES instructions: ``aes`` in the
    ``flags`` line (x86) or the ``Features`` line (ARM)."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features") and "aes" in value.split():
            return True
    return False


def cpuinfo_is_of(cpuinfo: str, machine: str) -> bool:
    """Whether /proc/cpuinfo text describes a CPU of this architecture (platform.machine()):
    x86 kernels list ``flags``, ARM kernels ``Features``. Under qemu-user a program reads
    its host's /proc/cpuinfo, another architecture's."""
    keys = {line.partition(":")[0].strip().lower() for line in cpuinfo.splitlines()}
    machine = machine.lower()
    if machine.startswith(("aarch64", "arm")):
        return "flags" not in keys or "features" in keys
    if machine in ("x86_64", "amd64", "i386", "i686"):
        return "features" not in keys or "flags" in keys
    return True  # an architecture this rule knows nothing about: take its word


def ciphers_for(cpuinfo: str) -> list[str]:
    """The cipher list to offer on a CPU described by /proc/cpuinfo text."""
    if cpu_has_aes(cpuinfo):
        return list(AES_GCM)
    return [CHACHA20, *AES_GCM]


def ciphers_for_this_machine(cpuinfo: Path = CPUINFO, machine: str | None = None) -> list[str]:
    """ciphers_for() this machine; AES-GCM only when its CPU cannot be read (not Linux) or
    cpuinfo describes another architecture's (an emulator's host): the choice that costs
    the endpoint the fewest Python calls per packet. machine: what the CPU described by
    cpuinfo must be; by default this one's for /proc/cpuinfo, and anything for another
    file (a real machine's, which tests stand in for it)."""
    if machine is None and cpuinfo == CPUINFO:
        machine = platform.machine()
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError as exc:
        log.warning(
            "cannot read %s (%s); offering AES-GCM only. Set tunnel.ciphers to choose",
            cpuinfo,
            exc.strerror or exc,
        )
        return list(AES_GCM)
    if machine is not None and not cpuinfo_is_of(text, machine):
        log.warning(
            "%s describes another architecture's CPU than this %s one (an emulator such as "
            "qemu-user runs this program); offering AES-GCM only. Set tunnel.ciphers to choose",
            cpuinfo,
            machine,
        )
        return list(AES_GCM)
    return ciphers_for(text)
