"""Log lines: journald priorities when under systemd, and never a secret."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from helpers import REPO


def run_logging(tmp_path: Path, journal: bool) -> str:
    secret = tmp_path / "token"
    secret.write_text("tok-123456789\n")
    secret.chmod(0o600)
    script = f"""
import logging
from gateway import logs
from gateway.config import load_config_text
from gateway.secrets import register_secrets
loaded = load_config_text('''
tmux: {{enabled: false}}
browser: {{enabled: false}}
ddns:
  provider: duckdns
  hostname: home
  duckdns: {{token_file: {secret}}}
''')
register_secrets(loaded)
logs.setup("info")
log = logging.getLogger("gateway.test")
log.info("asking with token=%s", loaded.config.ddns.duckdns.token_file.reveal())
log.warning("config is %r", loaded.config.ddns.duckdns)
log.debug("not shown at info")
"""
    env = {"PATH": "/usr/bin:/bin", **({"JOURNAL_STREAM": "8:1234"} if journal else {})}
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    return result.stderr


def test_journal_lines_carry_priorities_and_no_timestamps(tmp_path: Path) -> None:
    lines = run_logging(tmp_path, journal=True).splitlines()
    assert lines[0] == "<6>gateway.test: asking with token=<redacted>"
    assert lines[1].startswith(
        "<4>gateway.test: config is DuckdnsConfig(token_file=Secret(<hidden>"
    )
    assert len(lines) == 2


def test_terminal_lines_have_timestamps_and_no_secret(tmp_path: Path) -> None:
    out = run_logging(tmp_path, journal=False)
    assert "tok-123456789" not in out
    first = out.splitlines()[0]
    assert first.endswith("INFO    gateway.test: asking with token=<redacted>")
    assert first[:4].isdigit()


def test_redaction_is_applied_to_exceptions_too(caplog: object) -> None:
    from gateway import logs

    logs.register_secret("zz-secret-zz")
    formatter = logs._Formatter(journal=False)
    try:
        raise ValueError("bad token zz-secret-zz")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    assert "zz-secret-zz" not in formatter.format(record)


def test_no_escape_code_from_outside_reaches_the_log_even_unquoted() -> None:
    """The formatter's net under every call site: a VM's name or a page's text logged
    without untrusted() still cannot repaint the terminal that shows the journal, and a
    traceback keeps its lines."""
    from gateway import logs

    formatter = logs._Formatter(journal=True)
    record = logging.LogRecord(
        "x", logging.WARNING, __file__, 1, "pull said %s", ("\x1b]0;owned\x07\x1b[2J\u202e",), None
    )
    assert formatter.format(record) == "<4>x: pull said \\x1b]0;owned\\x07\\x1b[2J\\u202e"
    try:
        raise ValueError("two\nlines")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    lines = formatter.format(record).splitlines()
    assert lines[0] == "<3>x: failed" and lines[-2:] == ["<3>ValueError: two", "<3>lines"]
