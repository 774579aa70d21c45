"""Registered secrets leave the process on no way out: the STATUS line, the status socket,
CLI output, evidence files; and ``redact`` (what notifications call) knows their encodings.

Each test registers its own value: the registry only grows, so tests stay independent.
"""

from __future__ import annotations

import asyncio
import html
import json
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from helpers import MINIMAL_CONFIG, REPO, NotifySocket

from gateway import logs
from gateway.browser.evidence import Evidence
from gateway.component import ComponentSpec, Context
from gateway.config import load_config_text
from gateway.daemon import Gateway
from gateway.paths import Paths
from gateway.secrets import redact, register_secrets, scrub_parts
from gateway.state import Health


def test_redact_knows_url_json_and_html_forms() -> None:
    from gateway.secrets import redact, register_secret

    secret = 'p/ss+w"rd&<1>'
    register_secret(secret)
    text = f"raw {secret} url {quote(secret, safe='')} path {quote(secret)} "
    text += f"query {quote_plus(secret)} json {json.dumps(secret)} "
    text += f"html {html.escape(secret)} text-node {html.escape(secret, quote=False)}"
    expected = "raw <redacted> url <redacted> path <redacted> query <redacted> "
    expected += 'json "<redacted>" html <redacted> text-node <redacted>'
    assert redact(text) == expected, "every form replaced whole"


def test_register_secrets_walks_the_config_without_the_daemon(tmp_path: Path) -> None:
    token = tmp_path / "duck.token"
    token.write_text("walk-token-7f3a91\n")
    token.chmod(0o600)
    script = (
        "import sys\n"
        "from gateway.config import load_config\n"
        "from gateway.secrets import redact, register_secrets\n"
        f"register_secrets(load_config({str(tmp_path / 'c.yaml')!r}))\n"
        "print(redact('token walk-token-7f3a91'))\n"
        "print('daemon imported' if 'gateway.daemon' in sys.modules else 'daemon not imported')\n"
    )
    (tmp_path / "c.yaml").write_text(
        "tmux: {enabled: false}\nbrowser: {enabled: false}\n"
        f"ddns: {{provider: duckdns, hostname: home, duckdns: {{token_file: {token}}}}}\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, cwd=REPO
    )
    assert done.stdout.splitlines() == ["token <redacted>", "daemon not imported"], done.stderr


def test_cli_streams_scrub_what_is_registered_later() -> None:
    script = (
        "import sys\n"
        "from gateway import secrets\n"
        "secrets.redact_standard_streams()\n"
        "secrets.register_secret('cli-secret-5521')\n"
        "print('out cli-secret-5521')\n"
        "print('err cli-secret-5521', file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, cwd=REPO
    )
    assert (done.stdout, done.stderr) == ("out <redacted>\n", "err <redacted>\n")


def test_evidence_files_are_scrubbed(tmp_path: Path) -> None:
    secret = "evid/ence+tok3n"
    logs.register_secret(secret)
    page = f"<p>Your token is {html.escape(secret)}</p>"
    facts = {
        "url": f"https://provider.example/update?token={quote(secret, safe='')}",
        "text": f"Your token is {secret}",
        "html": page,
        "metadata": {"title": f"token {secret}"},
    }
    saved = Evidence(tmp_path, keep=5).save("colab", "echo", facts)
    assert saved is not None
    written = Path(saved).read_text()
    assert "<redacted>" in written
    for form in (secret, quote(secret, safe=""), html.escape(secret), json.dumps(secret)[1:-1]):
        assert form not in written, form


class _Quoting:
    """A component whose message quotes a peer's answer that carries a secret."""

    def __init__(self, secret: str) -> None:
        self.secret = secret

    async def run(self, ctx: Context) -> None:
        ctx.health(Health.DEGRADED, f"peer answered 'denied for key={self.secret}'")
        while True:
            await ctx.sleep(0.1)


def _ask(path: Path, request: bytes) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(request)
        return sock.makefile().readline()


def test_status_line_and_socket_scrub_component_messages(
    notify_socket: NotifySocket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "status-secret-90210"
    logs.register_secret(secret)
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_socket.path))
    loaded = load_config_text(MINIMAL_CONFIG)
    paths = Paths(tmp_path / "c.yaml", tmp_path / "state", tmp_path / "run")
    spec = ComponentSpec("quoter", lambda c: True, lambda c: None, lambda: _Quoting(secret))
    answers: dict[str, str] = {}

    async def scenario() -> None:
        gateway = Gateway(loaded, paths, [spec])
        task = asyncio.create_task(gateway.serve())
        try:
            for _ in range(200):
                if gateway.state.component("quoter").health == Health.DEGRADED:
                    break
                await asyncio.sleep(0.05)
            sock = paths.status_socket
            answers["status"] = await asyncio.to_thread(_ask, sock, b"status\n")
            answers["watch"] = await asyncio.to_thread(_ask, sock, b"watch\n")
        finally:
            gateway.should_exit.set()
            assert await asyncio.wait_for(task, 10) == 0

    asyncio.run(scenario())
    notify_socket.read(0.2)
    statuses = [m for _, m in notify_socket.messages if m.startswith("STATUS=")]
    assert any("quoter degraded: peer answered" in s for s in statuses), statuses
    for where, text in [*(("STATUS", s) for s in statuses), *answers.items()]:
        assert secret not in text, f"{where}: {text}"
        assert "peer answered" in text, f"{where}: {text}"


@pytest.mark.slow
def test_evidence_of_a_real_page_echoing_a_secret_is_scrubbed(tmp_path: Path) -> None:
    """Chromium shows a provider page that quotes the token in its URL, title and text;
    the evidence the browser component would keep (page facts + screenshot) has none."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    from gateway.browser.launch import launch
    from gateway.config import BrowserConfig

    secret = "page-token/8c1e+4f"
    logs.register_secret(secret)

    class Echoing(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = (
                f"<title>update {html.escape(secret)}</title>"
                f"<p>You asked {html.escape(self.path)}</p><p>token: {html.escape(secret)}</p>"
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Echoing)
    Thread(target=server.serve_forever, daemon=True).start()
    browser = launch(BrowserConfig(), tmp_path / "state")
    try:
        driver = browser.driver
        port = server.server_address[1]
        driver.get(f"http://127.0.0.1:{port}/update?token={quote(secret, safe='')}")
        probe = {
            "url": driver.current_url,
            "title": driver.title,
            "text": driver.find_element("tag name", "body").text,
            "html": driver.page_source,
        }
        assert secret in probe["text"], "the page must really show the token"
        saved = Evidence(tmp_path / "shots", keep=5).save("colab", "echo", {"probe": probe}, driver)
    finally:
        browser.close()
        server.shutdown()
        server.server_close()
    assert saved is not None and saved.endswith(".png")
    written = Path(saved).with_suffix(".json").read_text()
    assert written.count("<redacted>") >= 4, written
    for form in (secret, quote(secret, safe=""), html.escape(secret), json.dumps(secret)[1:-1]):
        assert form not in written, form


@pytest.mark.parametrize(
    ("url", "secret_parts", "public"),
    [
        # ntfy: the topic is the secret; the host is a public name.
        ("ntfy://ntfy.sh/tpc-58aa31", ["tpc-58aa31"], ["ntfy.sh"]),
        # A Telegram bot token stands where a host would: no public name, so a secret.
        (
            "tgram://123456789:AAHk3y-x_Q/987654321",
            ["123456789:AAHk3y-x_Q", "AAHk3y-x_Q", "987654321"],
            [],
        ),
        # userinfo, a quoted password and a query token.
        (
            "ntfys://bob:p%40ss-w0rd@push.example.org/alerts?token=tk_77abc&priority=high",
            ["bob:p%40ss-w0rd", "p%40ss-w0rd", "p@ss-w0rd", "tk_77abc"],
            ["push.example.org", "alerts", "priority", "high"],
        ),
    ],
)
def test_every_secret_part_of_a_notify_url_is_registered_when_the_config_is_loaded(
    tmp_path: Path, url: str, secret_parts: list[str], public: list[str]
) -> None:
    """Only whole URLs were registered on b2ceba6: apprise's messages name the parts.

    Plain words in the path or query ("alerts", "high") are left to the scrub of apprise's
    own messages: registering them would blank the word everywhere."""
    loaded = load_config_text(MINIMAL_CONFIG + f"notify:\n  urls: ['{url}']\n", "c.yaml")
    register_secrets(loaded)
    for part in secret_parts:
        assert redact(f"said {part}.") == "said <redacted>.", part
    for word in public:
        assert redact(f"said {word}.") == f"said {word}.", word


def test_short_parts_are_scrubbed_from_text_about_their_url() -> None:
    """A 3-character topic is below MIN_LENGTH and never registered, yet a message about
    its URL never shows it (only where it stands alone: a word containing it stays)."""
    url = "ntfy://ntfy.sh/k9z"
    assert redact("topic 'k9z'") == "topic 'k9z'"
    assert scrub_parts("topic 'k9z' at /k9z; k9zed", url) == (
        "topic '<redacted>' at /<redacted>; k9zed"
    )
