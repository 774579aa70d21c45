"""The endpoint from inside, the DDNS name, and the public port as Colab dials it."""

from __future__ import annotations

import ipaddress
import socket

from gateway.config import Config
from gateway.ddns.detect import Detector
from gateway.ddns.http import Http, user_agent
from gateway.ddns.outcomes import LABEL, Detected, Family
from gateway.doctor.env import SERVICE, Env
from gateway.doctor.report import Finding, fail, ok, skip, warn
from gateway.tunnel.bootstrap import endpoint_address

MAX_BANNER = 255  # RFC 4253 4.2: the identification line is at most 255 bytes


def read_banner(host: str, port: int, timeout: float) -> str:
    """Connect and return the first line the server sends (an SSH server sends its
    identification string at once). OSError when nothing answers."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        data = b""
        while b"\n" not in data and len(data) < MAX_BANNER:
            chunk = sock.recv(MAX_BANNER)
            if not chunk:
                break
            data += chunk
    return data.split(b"\n")[0].decode("ascii", "replace").strip()


def _closed_without_banner(where: str) -> Finding:
    # The endpoint closes a connection before its banner when the source is penalised for
    # a connection that ended without a login, and a probe like this one is such a
    # connection (loopback is exempt; a hairpinned one comes from the router's address).
    return warn(
        f"{where} accepted the connection and closed it without an SSH banner: the endpoint "
        "does that to a source penalised for connections without a login (an earlier probe "
        "counts), or a full queue",
        "run the doctor again after tunnel.penalty_min (30s by default); "
        "`journalctl -u colab-gateway | grep refused` shows the endpoint's refusals",
    )


def _dial_host(listen_host: str) -> str:
    """Where to reach a listener bound to ``listen_host`` from this machine."""
    if listen_host in ("0.0.0.0", ""):  # noqa: S104 (we connect, not bind)
        return "127.0.0.1"
    if listen_host == "::":
        return "::1"
    return listen_host


def check_endpoint(env: Env) -> Finding:
    tunnel = env.config.tunnel
    if not tunnel.enabled:
        return skip("tunnel.enabled is false")
    host = _dial_host(tunnel.listen_host)
    where = f"{host}:{tunnel.listen_port}" if ":" not in host else f"[{host}]:{tunnel.listen_port}"
    try:
        banner = read_banner(host, tunnel.listen_port, env.timeout)
    except ConnectionRefusedError:
        return fail(
            f"nothing listens on {where} (tunnel.listen {tunnel.listen})",
            f"start the daemon (sudo systemctl start {SERVICE}); `colab-gateway status` says "
            "why the tunnel is down",
        )
    except OSError as exc:
        return fail(
            f"{where} gave no answer within {env.timeout:.0f}s ({exc})",
            f"`colab-gateway status`; `journalctl -u {SERVICE} -n 50`",
        )
    if not banner:
        return _closed_without_banner(where)
    if not banner.startswith("SSH-"):
        return fail(
            f"something other than an SSH server answers on {where}: {banner[:60]!r}",
            f"find it with `sudo ss -ltnp 'sport = :{tunnel.listen_port}'`, or move the "
            "endpoint with tunnel.listen",
        )
    return ok(f"{where} answers {banner[:60]}")


def _families(config: Config) -> list[Family]:
    families: list[Family] = []
    if config.ddns.ipv4:
        families.append("ipv4")
    if config.ddns.ipv6:
        families.append("ipv6")
    return families


def check_ddns(env: Env) -> Finding:
    """The name Colab dials resolves to this network's public address (as the DDNS
    updater detects it: the same sources, the same rules)."""
    config = env.config
    host, _ = endpoint_address(config)
    if not host:
        return skip("no public name: tunnel.public_host and ddns.hostname are empty")
    literal = _is_address(host)
    says = "tunnel.public_host is" if literal else f"{host} resolves to"
    try:
        resolved = [host.strip("[]")] if literal else env.resolve(host)
    except OSError as exc:
        return fail(
            f"{host} does not resolve: {exc}",
            _record_fix(config, host),
        )
    families = _families(config)
    if not families:
        return skip("ddns.ipv4 and ddns.ipv6 are both off")
    http = Http(
        user_agent(config.ddns.contact), timeout=min(env.timeout, config.ddns.detect.timeout)
    )
    detector = Detector.from_config(config.ddns.detect, http)
    detected: list[str] = []
    for family in families:
        outcome = detector.detect(family)
        if not isinstance(outcome, Detected):
            return warn(
                f"{says} {', '.join(resolved)}; the public {LABEL[family]} address "
                f"could not be detected: {outcome.reason}",
                "check the ddns.detect sources (colab-gateway ddns --once --dry-run shows them)",
            )
        detected.append(outcome.address)
    canonical = {str(ipaddress.ip_address(a)) for a in resolved}
    missing = [a for a in detected if a not in canonical]
    if missing:
        return fail(
            f"{says} {', '.join(resolved)} but this network's public address is "
            f"{', '.join(detected)}",
            _record_fix(config, host),
        )
    return ok(f"{says} {', '.join(detected)}, this network's public address")


def _record_fix(config: Config, host: str) -> str:
    if config.ddns.provider != "none" and config.ddns.hostname == host:
        return (
            "`colab-gateway ddns --once` updates the record now and says what the provider "
            "answered; a fresh record can take the TTL to be seen"
        )
    if _is_address(host):
        return "set tunnel.public_host to this network's public address, or use a DDNS name"
    return f"point {host}'s DNS record at this network's public address, or set ddns.provider"


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def check_public_port(env: Env) -> Finding:
    """What Colab dials. From inside the network this goes through the router's port
    forward only when the router does hairpin NAT (NAT loopback): many do not."""
    config = env.config
    if not config.tunnel.enabled:
        return skip("tunnel.enabled is false")
    host, port = endpoint_address(config)
    if not host:
        return skip("no public name: tunnel.public_host and ddns.hostname are empty")
    try:
        banner = read_banner(host.strip("[]"), port, env.timeout)
    except OSError as exc:
        return warn(
            f"{host}:{port} is not reachable from here ({exc}); routers without hairpin NAT "
            "never let a machine reach its own public address, so this may still work from "
            "outside",
            f"test from outside (a phone's hotspot: `ssh -p {port} {host}` must print a host "
            f"key prompt); else forward TCP {port} on the router to this machine's port "
            f"{config.tunnel.listen_port}",
        )
    if not banner:
        return _closed_without_banner(f"{host}:{port}")
    if not banner.startswith("SSH-"):
        return fail(
            f"{host}:{port} answers, but not with SSH ({banner[:60]!r}): the router forwards "
            "it elsewhere or serves it itself",
            f"forward TCP {port} on the router to this machine's port {config.tunnel.listen_port}",
        )
    return ok(f"{host}:{port} answers {banner[:60]}")
