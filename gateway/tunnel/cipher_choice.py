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
"""

from __future__ import annotations

import logging
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


def ciphers_for(cpuinfo: str) -> list[str]:
    """The cipher list to offer on a CPU described by /proc/cpuinfo text."""
    if cpu_has_aes(cpuinfo):
        return list(AES_GCM)
    return [CHACHA20, *AES_GCM]


def ciphers_for_this_machine(cpuinfo: Path = CPUINFO) -> list[str]:
    """ciphers_for() this machine; AES-GCM only when its CPU cannot be read (not Linux):
    the choice that costs the endpoint the fewest Python calls per packet."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError as exc:
        log.warning(
            "cannot read %s (%s); offering AES-GCM only. Set tunnel.ciphers to choose",
            cpuinfo,
            exc.strerror or exc,
        )
        return list(AES_GCM)
    return ciphers_for(text)
