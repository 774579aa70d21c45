"""Every setting of colab-gateway, with its default, in one place.

Constructing these dataclasses only stores values; ``load_config`` reads the file once and
reports every mistake with its position. ``config.example.yaml`` documents the same keys.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gateway.colab_selectors import DEFAULTS as SELECTOR_DEFAULTS
from gateway.sizes import parse_size
from gateway.yaml_binder import (
    MAX_CONFIG_BYTES,
    ConfigError,
    Duration,
    Problem,
    Secret,
    SecretFile,
    Unreadable,
    bind_document,
    decode_text,
    read_bounded,
    setting,
)

__all__ = ["Config", "ConfigError", "Duration", "Problem", "Secret", "SecretFile", "load_config"]

DEFAULT_CONFIG_PATH = Path("/etc/colab-gateway/config.yaml")
EX_CONFIG = 78  # sysexits.h: the unit's RestartPreventExitStatus

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def _session_name(value: str) -> None:
    if not _NAME.match(value):
        raise ValueError(
            f"{value!r} is not a valid session name: use 1-32 lowercase letters, digits, "
            "'-' or '_', starting with a letter (it names a tmux window and a Colab secret)"
        )


def _url(value: str) -> None:
    if not re.match(r"^https?://[^\s/]+", value):
        raise ValueError(f"{value!r} is not a URL: paste the notebook's address from Colab")


def _host_port(value: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT, e.g. 0.0.0.0:10022 or [::]:10022")
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ValueError(f"{value!r}: listen on an IP address such as 0.0.0.0 or ::") from None


def _network(value: str) -> None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not a network: write e.g. 192.168.1.0/24") from None


# Every cipher the endpoint can offer without a [fail] from ssh-audit.
TUNNEL_CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
)


def _cipher(value: str) -> None:
    if value not in TUNNEL_CIPHERS:
        choices = ", ".join(TUNNEL_CIPHERS)
        raise ValueError(f"{value!r} is not an offered cipher: choose from {choices}")


def split_host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class Forward:
    """One port of the Colab VM made reachable on the Pi's loopback."""

    colab: int = setting(min=1, max=65535)
    local: int = setting(min=1024, max=65535)


def _default_forwards() -> dict[str, Forward]:
    return {"ssh": Forward(colab=22, local=20022)}


def _size(value: str) -> None:
    if value:
        parse_size(value)


def _vm_path(value: str) -> None:
    if not value.startswith("/") or value.rstrip("/") == "" or "/../" in value + "/":
        raise ValueError(
            f"{value!r} is not an absolute path on the VM below /: write e.g. /content/outputs"
        )


@dataclass(frozen=True)
class ResumeConfig:
    """What runs in the VM after a restore."""

    command: str = ""  # empty: nothing runs
    # window: typed into the session's tmux window; background: nohup, output logged on the
    # VM in /root/.colab-gateway/resume.log
    where: Literal["window", "background"] = "background"


@dataclass(frozen=True)
class SyncConfig:
    """Keep a session's files on the Pi and put them back into every new VM."""

    paths: list[str] = setting(factory=list, check=_vm_path)  # empty: sync is off
    exclude: list[str] = setting(factory=list)  # rsync patterns, e.g. '*.tmp', '__pycache__/'
    every: Duration = setting(Duration(120), min=10, max=86400)
    max_size: str = setting("", check=_size)  # refuse a pull bigger than this; empty: no limit
    # refuse a pull of more files and directories than this (each costs an inode on the Pi)
    max_entries: int = setting(200_000, min=1, max=100_000_000)
    keep: int = setting(3, min=1, max=100)
    bandwidth: str = setting("", check=_size)  # bytes per second, e.g. 5M; empty: no limit
    resume: ResumeConfig = setting(factory=ResumeConfig)

    @property
    def enabled(self) -> bool:
        return bool(self.paths)

    @property
    def max_bytes(self) -> int | None:
        return parse_size(self.max_size) if self.max_size else None

    @property
    def bandwidth_bytes(self) -> int | None:
        return parse_size(self.bandwidth) if self.bandwidth else None


@dataclass(frozen=True)
class SessionConfig:
    name: str = setting(check=_session_name)
    notebook_url: str = setting(check=_url)
    forwards: dict[str, Forward] = setting(factory=_default_forwards)
    sync: SyncConfig = setting(factory=SyncConfig)

    def check(self) -> list[tuple[str, str]]:
        problems = []
        if "ssh" not in self.forwards:
            problems.append(("forwards", "needs an 'ssh' entry (the port tmux and ssh-config use)"))
        if self.sync.resume.command and not self.sync.enabled:
            problems.append(
                ("sync", "resume.command needs sync.paths: without them nothing is restored")
            )
        if len(set(self.sync.paths)) != len(self.sync.paths):
            problems.append(("sync", f"paths repeat an entry: {self.sync.paths}"))
        return problems

    @property
    def ssh_port(self) -> int:
        return self.forwards["ssh"].local

    @property
    def is_placeholder(self) -> bool:
        return "XXXXXXXX" in self.notebook_url


@dataclass(frozen=True)
class TunnelConfig:
    enabled: bool = True
    listen: str = setting("0.0.0.0:10022", check=_host_port)
    public_host: str = ""  # what the Colab VM dials; the DDNS hostname when empty
    public_port: int | None = setting(None, min=1, max=65535)  # router's port; listen's if unset
    username: str = "colab"
    login_timeout: Duration = setting(Duration(20), min=1, max=600)
    # Like OpenSSH's MaxStartups start:rate:full: from random_drop_start unauthenticated
    # connections on, a new one is dropped with probability random_drop_rate %, rising
    # linearly to 100 % at max_unauthenticated. Empty start: half of max_unauthenticated.
    max_unauthenticated: int = setting(10, min=1, max=1000)
    random_drop_start: int | None = setting(None, min=0, max=1000)
    random_drop_rate: int = setting(30, min=1, max=100)
    max_unauthenticated_per_source: int = setting(3, min=1, max=100)
    # Places on top of max_unauthenticated for sources that logged in before (Colab
    # re-dialling after a drop), so strangers holding the cap cannot lock it out; the
    # endpoint remembers the last known_sources_max such sources in its state directory.
    reserved_for_known: int = setting(3, min=0, max=100)
    known_sources_max: int = setting(64, min=0, max=4096)
    penalty_min: Duration = setting(Duration(30), min=0, max=86400)
    penalty_max: Duration = setting(Duration(600), min=0, max=86400)
    # Sources never penalised for failed logins (each item is checked as a network).
    exempt_networks: list[str] = setting(factory=lambda: ["127.0.0.0/8", "::1/128"], check=_network)
    keepalive_interval: Duration = setting(Duration(15), min=1, max=3600)
    keepalive_count_max: int = setting(3, min=1, max=100)
    # Offered ciphers; the client picks the first of its own list that is here. Unset: the
    # endpoint chooses for the CPU it runs on (gateway/tunnel/cipher_choice.py): AES-GCM
    # only with AES instructions, chacha20-poly1305 first without (Pi 3/4).
    ciphers: list[str] | None = setting(None, check=_cipher)
    # Flow control of each forwarded connection: the receive window and the largest SSH
    # packet the endpoint accepts. Larger means fewer packets per byte, i.e. less Python.
    window: int = setting(8 * 1024 * 1024, min=65536, max=64 * 1024 * 1024)
    max_packet: int = setting(131072, min=4096, max=131072)

    def check(self) -> list[tuple[str, str]]:
        if self.ciphers == []:
            return [
                (
                    "ciphers",
                    "is an empty list, which no client can connect with: name at least one, "
                    "or remove the key to let the endpoint choose for its CPU",
                )
            ]
        start = self.random_drop_start
        if start is not None and start > self.max_unauthenticated:
            return [
                (
                    "random_drop_start",
                    f"{start} is above max_unauthenticated ({self.max_unauthenticated}), where "
                    "every new connection is refused anyway: set it to at most "
                    f"{self.max_unauthenticated}, or leave it empty for half of it",
                )
            ]
        return []

    @property
    def drop_start(self) -> int:
        """Unauthenticated connections from which new ones are dropped at random."""
        if self.random_drop_start is None:
            return self.max_unauthenticated // 2
        return self.random_drop_start

    @property
    def listen_host(self) -> str:
        return split_host_port(self.listen)[0]

    @property
    def listen_port(self) -> int:
        return split_host_port(self.listen)[1]


@dataclass(frozen=True)
class BrowserConfig:
    enabled: bool = True
    chromedriver: str = "auto"  # auto: Debian, Ubuntu snap and Raspberry Pi OS locations
    chromium: str = "auto"
    # What the keep-alive runs. auto: Chromium's headless shell when headless and installed
    # (not with the snap), else Chromium: the same engine without the browser's UI, about
    # 130 MB less (docs/browser.md). `colab-gateway login` always runs `chromium`.
    engine: Literal["auto", "headless-shell", "chromium"] = "auto"
    headless_shell: str = "auto"  # auto: Debian's chromium-headless-shell package
    profile_dir: str = ""  # empty: <state>/chromium-profile (the snap needs a non-hidden path)
    headless: bool = True
    display: Literal["none", "xvfb"] = "none"
    reload_every: Duration = setting(Duration(1800), min=60)
    rerun: Literal["bootstrap", "all", "never"] = "bootstrap"
    # rerun: bootstrap, when neither the first cell's editor nor its run button is found:
    # press Run all instead (it runs every cell of the notebook, hence off by default)
    rerun_fallback_all: bool = False
    rerun_after: Duration = setting(Duration(180), min=10)
    max_reruns_per_hour: int = setting(4, min=1, max=60)
    on_gpu_limit: Literal["connect_without_gpu", "wait"] = "connect_without_gpu"
    poll_every: Duration = setting(Duration(5), min=0.5, max=300)
    # WebDriver BiDi (webSocketUrl), with two or more sessions: every window tells the
    # keep-alive when it changes, so all are watched at once (change_feed.py). false: look
    # at the windows in turn, for a chromedriver that refuses it (the keep-alive also falls
    # back by itself). One session never needs it.
    bidi: bool = True
    max_memory_mb: int = setting(800, min=100)
    screenshots_keep: int = setting(20, min=0, max=1000)
    selectors: dict[str, str] = setting(factory=dict)  # overrides of gateway/colab_selectors.py
    user_agent: str = ""  # empty: a desktop Chromium's, for the installed version
    page_timeout: Duration = setting(Duration(60), min=5, max=600)  # load / hang limit
    connect_timeout: Duration = setting(Duration(180), min=10, max=3600)  # then reload
    limit_wait: Duration = setting(Duration(1800), min=60)  # GPU limit (wait) / too many sessions
    recaptcha_max: int = setting(3, min=1, max=100)  # dismissals per window, then a human
    recaptcha_window: Duration = setting(Duration(1800), min=60)
    # A dialog the keep-alive does not know is closed (its secondary/close button, else
    # Escape; never its primary action) when it has been open this long, or at once when it
    # hides something the keep-alive has to click.
    unknown_dialog_grace: Duration = setting(Duration(60), min=5, max=3600)

    def check(self) -> list[tuple[str, str]]:
        problems = []
        if not self.headless and self.display == "none" and not os.environ.get("DISPLAY"):
            problems.append(
                ("headless", "false needs a screen: set display: xvfb on a headless Pi")
            )
        if not self.headless and self.engine == "headless-shell":
            problems.append(
                ("engine", "headless-shell has no window: set engine: chromium or auto")
            )
        for name in self.selectors:
            if name not in SELECTOR_DEFAULTS:
                known = ", ".join(SELECTOR_DEFAULTS)
                problems.append(("selectors", f"{name!r} is not a known selector; known: {known}"))
        return problems


@dataclass(frozen=True)
class CloudflareConfig:
    api_token_file: SecretFile | None = None
    zone: str = ""  # empty: the hostname's last two labels
    api_base: str = setting("https://api.cloudflare.com/client/v4", check=_url)


@dataclass(frozen=True)
class DuckdnsConfig:
    token_file: SecretFile | None = None
    server: str = setting("https://www.duckdns.org", check=_url)


@dataclass(frozen=True)
class Dyndns2Config:
    server: str = setting("", check=lambda v: _url(v) if v else None)
    username: str = ""
    password_file: SecretFile | None = None
    dual_stack: Literal["separate", "myip_list", "myipv6"] = "separate"


def _detect_source(value: str) -> None:
    """An address source: an echo URL, ``trace:URL`` or ``interface:NAME``."""
    kind, sep, rest = value.partition(":")
    if sep and kind == "interface":
        if not re.match(r"^[A-Za-z0-9_.:@-]{1,15}$", rest):
            raise ValueError(f"{value!r}: write interface:NAME, e.g. interface:eth0")
        return
    url = rest if sep and kind == "trace" else value
    if not re.match(r"^https?://[^\s/]+", url):
        raise ValueError(
            f"{value!r} is not an address source: write an echo service URL "
            "(https://api.ipify.org), trace:URL (Cloudflare's /cdn-cgi/trace) or interface:NAME"
        )


# Family-specific hosts, so that each answer can only be the address of the family asked
# for; Cloudflare's resolver addresses carry a valid certificate for the bare IP.
DEFAULT_IPV4_SOURCES = [
    "trace:https://1.1.1.1/cdn-cgi/trace",
    "https://api.ipify.org",
    "https://ipv4.icanhazip.com",
]
DEFAULT_IPV6_SOURCES = [
    "trace:https://[2606:4700:4700::1111]/cdn-cgi/trace",
    "https://api6.ipify.org",
    "https://ipv6.icanhazip.com",
]


@dataclass(frozen=True)
class DetectConfig:
    """Where the public addresses come from; tried in order."""

    ipv4: list[str] = setting(factory=lambda: list(DEFAULT_IPV4_SOURCES), check=_detect_source)
    ipv6: list[str] = setting(factory=lambda: list(DEFAULT_IPV6_SOURCES), check=_detect_source)
    # How many sources must report the same address before it is published.
    agree: int = setting(1, min=1, max=5)
    timeout: Duration = setting(Duration(10), min=1, max=120)


@dataclass(frozen=True)
class DdnsConfig:
    provider: Literal["cloudflare", "duckdns", "dyndns2", "none"] = "none"
    hostname: str = ""
    ipv4: bool = True
    ipv6: bool = False
    check_every: Duration = setting(Duration(300), min=30)
    contact: str = ""  # goes into the User-Agent, as providers ask
    timeout: Duration = setting(Duration(20), min=1, max=300)  # each request to the provider
    # Network errors and 5xx answers are retried after 30 s, doubling up to this.
    retry_max: Duration = setting(Duration(3600), min=30, max=86400)
    detect: DetectConfig = setting(factory=DetectConfig)
    cloudflare: CloudflareConfig = setting(factory=CloudflareConfig)
    duckdns: DuckdnsConfig = setting(factory=DuckdnsConfig)
    dyndns2: Dyndns2Config = setting(factory=Dyndns2Config)

    def check(self) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        if self.provider != "none" and not self.hostname:
            problems.append(("hostname", f"provider {self.provider} needs a hostname to update"))
        if self.hostname and not re.match(
            r"^(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)*"
            r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$",
            self.hostname,
        ):
            problems.append(
                ("hostname", f"{self.hostname!r} is not a host name: write e.g. home.example.net")
            )
        secrets = {
            "cloudflare": ("cloudflare", self.cloudflare.api_token_file, "api_token_file"),
            "duckdns": ("duckdns", self.duckdns.token_file, "token_file"),
            "dyndns2": ("dyndns2", self.dyndns2.password_file, "password_file"),
        }
        if self.provider in secrets:
            key, secret, name = secrets[self.provider]
            if secret is None:
                problems.append((key, f"provider {self.provider} needs {key}.{name}"))
        if (
            self.provider == "duckdns"
            and "." in self.hostname
            and not self.hostname.lower().endswith(".duckdns.org")
        ):
            problems.append(
                (
                    "hostname",
                    f"{self.hostname!r} is not a DuckDNS name: write SUB.duckdns.org or SUB",
                )
            )
        if self.provider == "dyndns2":
            if not self.dyndns2.server:
                problems.append(("dyndns2", "provider dyndns2 needs dyndns2.server"))
            if not self.dyndns2.username:
                problems.append(("dyndns2", "provider dyndns2 needs dyndns2.username"))
            if not self.contact:
                # dyndns2 providers ban clients whose User-Agent names no contact.
                problems.append(
                    (
                        "contact",
                        "provider dyndns2 needs a contact (your e-mail address): "
                        "it goes into the User-Agent, which dyndns2 providers require",
                    )
                )
        if not (self.ipv4 or self.ipv6) and self.provider != "none":
            problems.append(("ipv4", "enable ipv4, ipv6 or both, or set provider: none"))
        for family, enabled, sources in (
            ("ipv4", self.ipv4, self.detect.ipv4),
            ("ipv6", self.ipv6, self.detect.ipv6),
        ):
            if self.provider != "none" and enabled and len(sources) < self.detect.agree:
                problems.append(
                    (
                        "detect",
                        f"agree: {self.detect.agree} needs at least {self.detect.agree} "
                        f"{family} sources, got {len(sources)}: add sources to "
                        f"detect.{family} or lower detect.agree",
                    )
                )
        return problems


@dataclass(frozen=True)
class TmuxConfig:
    enabled: bool = True
    session: str = setting("colab", check=_session_name)


_PUBLIC_KEY = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com"
    r"|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,3}( .*)?$"
)


def _public_key(value: str) -> None:
    if not _PUBLIC_KEY.match(value.strip()):
        raise ValueError(
            f"{value[:40]!r} is not an OpenSSH public key line: paste the whole line of the "
            "laptop's ~/.ssh/id_ed25519.pub (ssh-ed25519 AAAA... comment)"
        )


@dataclass(frozen=True)
class SshConfig:
    identity: str = "~/.ssh/id_ed25519"  # the Pi user's key; its .pub goes to Colab
    server_alive_interval: Duration = setting(Duration(15), min=1, max=3600)
    # More public keys the bootstrap installs for root on the VM: a laptop's, so that
    # `colab-gateway ssh-config` hosts (ProxyJump through the Pi) can log in end to end.
    authorized_keys: list[str] = setting(factory=list, check=_public_key)


NOTIFY_EVENTS = (
    "human_needed",
    "runtime_lost",
    "tunnel_down",
    "vm_reset",
    "ddns_stopped",
    "daemon_restarted",
    "gpu_idle",
    "vm_message",
)
NotifyEvent = Literal[
    "human_needed",
    "runtime_lost",
    "tunnel_down",
    "vm_reset",
    "ddns_stopped",
    "daemon_restarted",
    "gpu_idle",
    "vm_message",
]


def _apprise_url(value: Secret) -> None:
    # The value is a secret: messages show it only as notify_urls.shown() does (scheme
    # and public host). apprise itself parses it, so check-config refuses what the
    # daemon could never send to.
    from gateway.notify_urls import UnusableURL, load

    scheme, sep, rest = value.reveal().partition("://")
    if not sep or not rest or not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*$", scheme):
        raise ValueError(
            "is not an apprise URL (SERVICE://...): write e.g. ntfy://ntfy.sh/my-topic or "
            "json://host:port/path; https://github.com/caronc/apprise/wiki lists the services"
        )
    try:
        load(value.reveal())
    except UnusableURL as exc:
        raise ValueError(str(exc)) from None


@dataclass(frozen=True)
class NotifyConfig:
    """Where a person hears that something needs them (gateway/alerts, docs/notifications.md)."""

    urls: list[Secret] = setting(factory=list, check=_apprise_url)  # tokens live in URLs
    urls_file: SecretFile | None = None  # more URLs, one a line
    events: list[NotifyEvent] = setting(factory=lambda: list(NOTIFY_EVENTS))
    # runtime_lost and tunnel_down wait this long before anyone is told.
    tunnel_down_after: Duration = setting(Duration(600), min=10, max=86400)
    repeat_after: Duration = setting(Duration(21600), min=60)
    # gpu_idle: the GPU's utilisation stayed below vm_stats.GPU_IDLE_BELOW this long
    # (sampled every vm_stats.every); 0: never told.
    gpu_idle_after: Duration = setting(Duration(0), min=0, max=7 * 86400)
    # How often the VMs' outboxes (gw-notify, gw-run) are collected over ssh while the
    # tunnel is up: one short ssh login per session each time.
    vm_messages_every: Duration = setting(Duration(30), min=5, max=3600)

    def check(self) -> list[tuple[str, str]]:
        """The URLs of ``urls_file``, checked as ``urls`` are (by line: they have no node)."""
        problems = []
        lines = self.urls_file.reveal().splitlines() if self.urls_file else []
        for number, line in enumerate(lines, 1):
            if line.strip() and not line.strip().startswith("#"):
                try:
                    _apprise_url(Secret(line.strip()))
                except ValueError as exc:
                    problems.append(("urls_file", f"line {number}: {exc}"))
        return problems

    def all_urls(self) -> list[str]:
        lines = self.urls_file.reveal().splitlines() if self.urls_file else []
        from_file = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
        return [u.reveal() for u in self.urls] + from_file

    @property
    def enabled(self) -> bool:
        return bool(self.all_urls()) and bool(self.events)


@dataclass(frozen=True)
class StorageConfig:
    """The Pi's side of sessions[].sync: where snapshots live and how much disk they may take."""

    # Refuse a pull when the state directory's file system would keep less free than this.
    disk_floor: str = setting("1G", check=_size)
    # ... or fewer free inodes than this (file systems that count none are not checked).
    inode_floor: int = setting(10_000, min=0, max=1_000_000_000)

    @property
    def disk_floor_bytes(self) -> int:
        return parse_size(self.disk_floor)


@dataclass(frozen=True)
class DaemonConfig:
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # A component that shows no progress this long is wedged: the watchdog pings stop and
    # systemd restarts the service.
    stall_timeout: Duration = setting(Duration(90), min=1, max=3600)
    shutdown_timeout: Duration = setting(Duration(8), min=1, max=60)
    restart_backoff_max: Duration = setting(Duration(300), min=1, max=3600)


def _metrics_listen(value: str) -> None:
    if value:
        _host_port(value)


def _textfile(value: str) -> None:
    if value and not (value.startswith("/") and value.endswith(".prom")):
        raise ValueError(
            f"{value!r} is not a textfile path: write an absolute path ending in .prom in "
            "node_exporter's --collector.textfile.directory"
        )


def _ping_url(value: str) -> None:
    if value and not re.match(r"^https?://[^\s/]+(/\S*)?$", value):
        raise ValueError(
            f"{value!r} is not a ping URL: paste the check's URL from healthchecks.io "
            "(https://hc-ping.com/UUID) or Uptime Kuma's push URL"
        )


@dataclass(frozen=True)
class MetricsConfig:
    # Prometheus /metrics on HOST:PORT; empty: off. 127.0.0.1:9817 keeps it on the Pi.
    listen: str = setting("", check=_metrics_listen)
    # node_exporter textfile collector file (*.prom), rewritten atomically; empty: off.
    textfile: str = setting("", check=_textfile)
    textfile_every: Duration = setting(Duration(60), min=1, max=3600)  # fsyncs: SD wear

    @property
    def enabled(self) -> bool:
        return bool(self.listen or self.textfile)


@dataclass(frozen=True)
class VmStatsConfig:
    # How often the VM's facts (GPU, memory, disk, uptime) are sampled over the Pi's ssh
    # into the VM; 0: never.
    every: Duration = setting(Duration(30), min=0, max=86400)

    @property
    def enabled(self) -> bool:
        return self.every > 0


@dataclass(frozen=True)
class ViewConfig:
    # `colab-gateway view` gives the page back to the keep-alive after this long without a
    # click or a key: a forgotten view must not pause the keep-alive for days.
    idle_timeout: Duration = setting(Duration(600), min=1, max=86400)


@dataclass(frozen=True)
class HealthcheckConfig:
    # A healthchecks.io ping URL or an Uptime Kuma push URL; empty: no pings.
    url: str = setting("", check=_ping_url)
    every: Duration = setting(Duration(60), min=1, max=86400)
    timeout: Duration = setting(Duration(10), min=1, max=60)


@dataclass(frozen=True)
class Config:
    sessions: list[SessionConfig] = setting(factory=list)
    tunnel: TunnelConfig = setting(factory=TunnelConfig)
    browser: BrowserConfig = setting(factory=BrowserConfig)
    ddns: DdnsConfig = setting(factory=DdnsConfig)
    tmux: TmuxConfig = setting(factory=TmuxConfig)
    ssh: SshConfig = setting(factory=SshConfig)
    notify: NotifyConfig = setting(factory=NotifyConfig)
    daemon: DaemonConfig = setting(factory=DaemonConfig)
    sync: StorageConfig = setting(factory=StorageConfig)
    metrics: MetricsConfig = setting(factory=MetricsConfig)
    view: ViewConfig = setting(factory=ViewConfig)
    healthcheck: HealthcheckConfig = setting(factory=HealthcheckConfig)
    vm_stats: VmStatsConfig = setting(factory=VmStatsConfig)

    def check(self) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        names = [s.name for s in self.sessions]
        if len(set(names)) != len(names):
            problems.append(("sessions", f"session names must be unique, got {names}"))
        locals_ = [f.local for s in self.sessions for f in s.forwards.values()]
        if len(set(locals_)) != len(locals_):
            problems.append(("sessions", f"local forward ports must be unique, got {locals_}"))
        if self.tunnel.listen_port in locals_:
            problems.append(
                ("tunnel", f"listen port {self.tunnel.listen_port} is also a local forward port")
            )
        if not self.sessions and (self.browser.enabled or self.tmux.enabled):
            problems.append(
                (
                    "sessions",
                    "add at least one session (name, notebook_url), or disable browser and tmux",
                )
            )
        return problems

    def session(self, name: str) -> SessionConfig:
        for session in self.sessions:
            if session.name == name:
                return session
        known = ", ".join(s.name for s in self.sessions) or "none configured"
        raise KeyError(f"no session named {name!r} (sessions: {known})")


# What Chromium holds for the keep-alive, measured by bench/bench_sessions.py (PSS as the
# only Chromium on the machine, the headless shell, on the simulated notebook page; see
# docs/browser.md "Several sessions"): the first session, and each one more. Colab's real
# page holds more JavaScript than the simulated one: these are lower bounds.
CHROMIUM_FIRST_SESSION_MB = 203
CHROMIUM_EXTRA_SESSION_MB = 30
SYSTEM_RESERVE_MB = 300  # the OS, the daemon itself (about 40 MB), tmux, ssh, rsync


def chromium_estimate_mb(sessions: int) -> int:
    """Chromium's PSS for ``sessions`` windows, from the measured costs."""
    if sessions <= 0:
        return 0
    return CHROMIUM_FIRST_SESSION_MB + (sessions - 1) * CHROMIUM_EXTRA_SESSION_MB


def sessions_carried(memory_mb: int) -> int:
    """How many sessions ``memory_mb`` of Chromium memory carries (0: not even one)."""
    if memory_mb < CHROMIUM_FIRST_SESSION_MB:
        return 0
    return 1 + (memory_mb - CHROMIUM_FIRST_SESSION_MB) // CHROMIUM_EXTRA_SESSION_MB


def machine_memory_mb() -> int | None:
    """MemTotal of this machine, or None where /proc/meminfo cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def sessions_budget_warnings(config: Config, memory_mb: int | None) -> list[str]:
    """Warnings when the sessions outgrow browser.max_memory_mb or the machine's memory
    (``memory_mb``, MemTotal; None: not checked)."""
    if not config.browser.enabled:
        return []
    count = sum(1 for s in config.sessions if not s.is_placeholder)
    need = chromium_estimate_mb(count)
    warnings = []
    limit = config.browser.max_memory_mb
    if count > 1 and need > limit:
        warnings.append(
            f"sessions: {count} sessions need about {need} MB of Chromium memory (measured: "
            f"{CHROMIUM_FIRST_SESSION_MB} MB + {CHROMIUM_EXTRA_SESSION_MB} MB per extra "
            f"session), above browser.max_memory_mb {limit}: Chromium would restart again and "
            f"again; raise browser.max_memory_mb or keep at most {sessions_carried(limit)} "
            "sessions (docs/browser.md)"
        )
    if memory_mb is not None and count > 1:
        room = memory_mb - SYSTEM_RESERVE_MB
        if need > room:
            warnings.append(
                f"sessions: {count} sessions need about {need} MB of Chromium memory, more "
                f"than this machine's {memory_mb} MB leaves after {SYSTEM_RESERVE_MB} MB for "
                f"the system; keep at most {max(1, sessions_carried(room))} sessions on it "
                "(docs/browser.md)"
            )
    return warnings


@dataclass(frozen=True)
class LoadedConfig:
    config: Config
    path: Path
    warnings: list[Problem]


def load_config(path: str | os.PathLike[str]) -> LoadedConfig:
    """Read and validate ``path``; raise ConfigError with every problem found.

    Nothing in the file can make this raise anything else: a config is read by a daemon
    that must keep running (SIGHUP) or exit 78 (start), never with a traceback.
    """
    config_path = Path(path)
    name = str(config_path)
    try:
        data, _ = read_bounded(config_path, MAX_CONFIG_BYTES)
    except FileNotFoundError:
        raise ConfigError(
            [
                Problem(
                    name,
                    None,
                    None,
                    "config file does not exist: copy config.example.yaml there and edit it",
                )
            ]
        ) from None
    except Unreadable as exc:
        message = str(exc)
        if exc.wrong_file:
            message += f": the config is a YAML file of at most {MAX_CONFIG_BYTES >> 10} KiB"
        raise ConfigError([Problem(name, None, None, message)]) from None
    return load_config_text(decode_text(data, name), name)


def load_config_text(text: str, filename: str = "<string>") -> LoadedConfig:
    config, warnings = bind_document(text, filename, Config)
    warnings += [
        Problem(filename, None, None, message, warning=True)
        for message in sessions_budget_warnings(config, machine_memory_mb())
    ]
    return LoadedConfig(config=config, path=Path(filename), warnings=warnings)
