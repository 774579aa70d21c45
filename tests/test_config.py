"""Config: every class of bad input gets a message naming file, line, key and fix."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config import EX_CONFIG, ConfigError, SecretFile, load_config, load_config_text
from gateway.durations import format_duration, parse_duration

REPO = Path(__file__).resolve().parent.parent


QUIET = "\nbrowser: {enabled: false}\ntmux: {enabled: false}\n"  # no session needed


def problems_of(text: str, filename: str = "c.yaml", quiet: bool = True) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text + QUIET if quiet else text, filename)
    return [str(p) for p in info.value.problems]


def test_example_config_is_valid_and_documents_every_default() -> None:
    loaded = load_config(REPO / "config.example.yaml")
    assert loaded.config.sessions[0].name == "colab"
    assert loaded.warnings == []


def test_empty_file_means_every_default() -> None:
    config = load_config_text("tmux: {enabled: false}\nbrowser: {enabled: false}\n").config
    assert config.tunnel.listen == "0.0.0.0:10022"
    assert config.browser.reload_every == 1800
    assert config.daemon.stall_timeout == 90


def test_syntax_error_names_line_and_column() -> None:
    text = "tunnel:\n  listen: 0.0.0.0:1\n  enabled: [true\n"
    (problem,) = problems_of(text, quiet=False)
    assert problem.startswith("c.yaml:4:1: YAML syntax error")


def test_unknown_key_suggests_the_near_one() -> None:
    text = "tunnel:\n  enabled: false\n  login_timout: 20s\n"
    assert problems_of(text) == [
        "c.yaml:3:3: tunnel.login_timout: unknown key 'login_timout': did you mean 'login_timeout'?"
    ]


def test_unknown_key_without_a_near_one_lists_the_known() -> None:
    (problem,) = problems_of("frobnicate: 1\n")
    assert problem.startswith("c.yaml:1:1: frobnicate: unknown key 'frobnicate': known keys: ")
    assert "tunnel" in problem


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "tunnel: {keepalive_count_max: lots}\n",
            "c.yaml:1:31: tunnel.keepalive_count_max: 'lots' is not a whole number",
        ),
        ("tunnel: {enabled: maybe}\n", "c.yaml:1:19: tunnel.enabled: 'maybe' is not true or false"),
        (
            "tunnel: {login_timeout: 20}\n",
            "c.yaml:1:25: tunnel.login_timeout: 20 has no unit: write e.g. 20s, 20m or 20h",
        ),
        (
            "tunnel: {login_timeout: soon}\n",
            "c.yaml:1:25: tunnel.login_timeout: 'soon' is not a duration: write e.g. 500ms, 30s, "
            "5m, 2h or 1h30m",
        ),
        (
            "browser: {rerun: always}\n",
            "c.yaml:1:18: browser.rerun: 'always' is not one of: bootstrap | all | never",
        ),
        ("tunnel: [1, 2]\n", "c.yaml:1:9: tunnel: expected a mapping of settings, got a list"),
        (
            "tunnel: {listen: 'localhost:22'}\n",
            "c.yaml:1:18: tunnel.listen: 'localhost:22': listen on an IP address such as 0.0.0.0 "
            "or ::",
        ),
    ],
)
def test_wrong_type(text: str, expected: str) -> None:
    assert expected in problems_of(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "tunnel:\n  keepalive_count_max: 0\n",
            "c.yaml:2:24: tunnel.keepalive_count_max: 0 is out of range: "
            "expected between 1 and 100",
        ),
        (
            "browser:\n  enabled: false\n  reload_every: 10s\n",
            "c.yaml:3:17: browser.reload_every: 10s is out of range: expected at least 1m",
        ),
        (
            "sessions:\n  - name: colab\n    notebook_url: https://x/\n"
            "    forwards: {ssh: {colab: 22, local: 80}}\n",
            "c.yaml:4:40: sessions[0].forwards.ssh.local: 80 is out of range: expected between "
            "1024 and 65535",
        ),
    ],
)
def test_out_of_range(text: str, expected: str) -> None:
    assert expected in problems_of(text)


def test_every_problem_is_reported_at_once() -> None:
    text = "tunnel:\n  enabled: nope\n  listen: nowhere\nbrowser:\n  rerun: sometimes\n"
    assert [p.split(":")[1] for p in problems_of(text, quiet=False)] == ["2", "3", "5"]


def test_cross_field_rules_point_at_the_key() -> None:
    text = (
        "tmux: {enabled: false}\nbrowser: {enabled: false}\n"
        "ddns:\n  provider: cloudflare\n  hostname: home.example.net\n"
    )
    assert problems_of(text, quiet=False) == [
        "c.yaml:4:3: ddns.cloudflare: provider cloudflare needs cloudflare.api_token_file"
    ]


def test_sessions_must_be_named_well_and_uniquely() -> None:
    text = (
        "sessions:\n"
        "  - {name: colab, notebook_url: 'https://a/'}\n"
        "  - {name: Colab!, notebook_url: 'https://b/'}\n"
        "  - {name: colab, notebook_url: 'https://c/',"
        " forwards: {ssh: {colab: 22, local: 20023}}}\n"
    )
    assert any(
        "c.yaml:3:12: sessions[1].name: 'Colab!' is not a valid session name" in p
        for p in problems_of(text)
    )
    duplicate = text.replace("Colab!", "other").replace(
        "https://b/'}", "https://b/', forwards: {ssh: {colab: 22, local: 20024}}}"
    )
    assert problems_of(duplicate) == [
        "c.yaml:2:3: sessions: session names must be unique, got ['colab', 'other', 'colab']"
    ]


def test_missing_secret_file(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "tmux: {enabled: false}\nbrowser: {enabled: false}\n"
        "ddns:\n  provider: duckdns\n  hostname: home\n"
        "  duckdns:\n    token_file: duck.token\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(config)
    (problem,) = info.value.problems
    assert problem.line == 7
    assert f"secret file '{tmp_path / 'duck.token'}' does not exist" in problem.message
    assert problem.message.startswith("ddns.duckdns.token_file: ")


def test_world_readable_secret_draws_a_warning_and_stays_hidden(tmp_path: Path) -> None:
    secret = tmp_path / "duck.token"
    secret.write_text("s3cr3t-token-value\n")
    secret.chmod(0o644)
    config = tmp_path / "config.yaml"
    config.write_text(
        "tmux: {enabled: false}\nbrowser: {enabled: false}\n"
        f"ddns:\n  provider: duckdns\n  hostname: home\n  duckdns:\n    token_file: {secret}\n"
    )
    loaded = load_config(config)
    (warning,) = loaded.warnings
    assert warning.line == 7 and warning.warning
    assert f"readable by group or others (mode 0644): run chmod 600 {secret}" in str(warning)
    token = loaded.config.ddns.duckdns.token_file
    assert isinstance(token, SecretFile)
    assert token.reveal() == "s3cr3t-token-value"
    assert "s3cr3t" not in repr(loaded.config)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_check_config_exit_codes(tmp_path: Path) -> None:
    good = run_cli("check-config", "-c", str(REPO / "config.example.yaml"))
    assert good.returncode == 0, good.stderr
    bad_file = tmp_path / "bad.yaml"
    bad_file.write_text("tunnel:\n  listen: 1.2.3\n")
    bad = run_cli("check-config", "-c", str(bad_file))
    assert bad.returncode == EX_CONFIG
    assert bad.stderr.startswith(f"{bad_file}:2:11: tunnel.listen: '1.2.3' is not HOST:PORT")


def test_run_refuses_a_bad_config_with_ex_config(tmp_path: Path) -> None:
    bad_file = tmp_path / "bad.yaml"
    bad_file.write_text("daemon: {log_level: loud}\n")
    result = run_cli(
        "run",
        "-c",
        str(bad_file),
        "--state-dir",
        str(tmp_path / "s"),
        "--runtime-dir",
        str(tmp_path / "r"),
    )
    assert result.returncode == EX_CONFIG
    assert "daemon.log_level: 'loud' is not one of" in result.stderr


def test_missing_config_file_says_what_to_do(tmp_path: Path) -> None:
    result = run_cli("check-config", "-c", str(tmp_path / "nope.yaml"))
    assert result.returncode == EX_CONFIG
    assert "config file does not exist: copy config.example.yaml there" in result.stderr


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30), ("5m", 300), ("2h", 7200), ("1h30m", 5400), ("1d", 86400)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_duration_formatting() -> None:
    assert [format_duration(s) for s in (7, 200, 7980, 90000)] == ["7s", "3m20s", "2h13m", "1d1h"]


# -- files that are not a config at all: never a traceback, always exit 78 ------------------

# The loader must not need more: a bomb or /dev/zero must fail as a message, not by
# exhausting the test machine.
MEMORY_LIMIT = 2 << 30


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_bounded(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """The real CLI, with a memory cap and a deadline: a hang or a blow-up is a failure."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "gateway", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
            preexec_fn=_limited,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"colab-gateway {' '.join(args)} hung for {timeout}s") from exc


def laughs(levels: int = 9) -> str:
    """Billion laughs: nine lines that stand for 9**9 strings once the aliases expand."""
    lines = ["lol0: &lol0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels + 1):
        lines.append(f"lol{i}: &lol{i} [" + ", ".join([f"*lol{i - 1}"] * 9) + "]")
    return "".join(f"  {line}\n" for line in lines)


def _aliased_sessions() -> str:
    # Quadratic through the schema: 350 uses of one session with 350 forwards.
    forwards = ", ".join(f"f{i}: {{colab: 22, local: {20000 + i}}}" for i in range(350))
    session = "&s {name: colab, notebook_url: 'https://x/', forwards: {ssh: {colab: 22, "
    session += f"local: 30000}}, {forwards}}}}}"
    return f"sessions:\n  - {session}\n" + "  - *s\n" * 349


BAD_FILES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "utf-16": (
        lambda d: _write(d, "tunnel: {enabled: false}\n".encode("utf-16")),
        "{f}: is UTF-16 text: save it as UTF-8",
    ),
    "binary": (
        lambda d: _write(d, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))),
        "{f}:3:1: a NUL byte: this is binary, or UTF-16/UTF-32 text; save it as UTF-8",
    ),
    "invalid-utf-8": (
        lambda d: _write(d, b"tunnel:\n  listen: caf\xe9\n"),
        "{f}:2:14: byte 0xe9 is not UTF-8: save it as UTF-8",
    ),
    "control-character": (
        lambda d: _write(d, b"tunnel:\n  listen: a\x07b\n"),
        "{f}:2:12: character #x0007 is not allowed in YAML",
    ),
    "deep-nesting": (
        lambda d: _write(d, b"[" * 100_000 + b"]" * 100_000),
        "{f}:1:33: YAML syntax error: nested more than 32 levels deep",
    ),
    "deep-block-nesting": (
        lambda d: _write(d, "".join(f"{' ' * i}k{i}:\n" for i in range(500)).encode()),
        "{f}:32:32: YAML syntax error: nested more than 32 levels deep",
    ),
    "billion-laughs-key": (
        lambda d: _write(
            d, f"x-lol:\n{laughs()}browser:\n  selectors:\n    ? *lol9\n    : x\n".encode()
        ),
        # An alias has no position of its own: the anchored value is shown.
        "{f}:11:9: browser.selectors: keys must be plain names",
    ),
    "aliases-past-the-bound": (
        lambda d: _write(d, _aliased_sessions().encode()),
        "once aliases (*name) are expanded: is this a YAML bomb?",
    ),
    "huge": (
        lambda d: _write(d, b"# padding\n" * 200_000),
        "{f}: is 2000000 bytes, more than the 262144 allowed: the config is a YAML file",
    ),
    "dev-zero": (lambda d: Path("/dev/zero"), "{f}: is a character device, not a regular file"),
    "fifo": (lambda d: _fifo(d / "config.yaml"), "{f}: is a FIFO (named pipe), not a regular"),
    "directory": (lambda d: d, "{f}: is a directory, not a regular file"),
}


def _write(directory: Path, data: bytes) -> Path:
    path = directory / "config.yaml"
    path.write_bytes(data)
    return path


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("command", ["check-config", "run"])
@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_file_that_is_no_config_gives_a_message_and_78(
    tmp_path: Path, case: str, command: str
) -> None:
    make, expected = BAD_FILES[case]
    path = make(tmp_path)
    extra = ["--state-dir", str(tmp_path / "s"), "--runtime-dir", str(tmp_path / "r")]
    result = run_bounded(command, "-c", str(path), *(extra if command == "run" else []))
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == EX_CONFIG, result.stderr
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith(f"{path}:") for line in lines), lines
    assert all(len(line) < 400 for line in lines), "messages, not a dump of the file"
    wanted = expected.format(f=path)
    if wanted.startswith(str(path)):
        assert any(line.startswith(wanted) for line in lines), lines
    else:
        assert any(wanted in line for line in lines), lines


SECRET_CONFIG = (
    "tmux: {enabled: false}\nbrowser: {enabled: false}\n"
    "ddns:\n  provider: duckdns\n  hostname: home\n  duckdns:\n    token_file: {secret}\n"
)

BAD_SECRETS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "dev-zero": (lambda d: Path("/dev/zero"), "is a character device, not a regular file"),
    "fifo": (lambda d: _fifo(d / "token"), "is a FIFO (named pipe), not a regular file"),
    "directory": (lambda d: d / "tokens", "is a directory, not a regular file"),
    "over-64-kib": (
        lambda d: _secret(d, b"x" * (64 * 1024 + 1)),
        "is 65537 bytes, more than the 65536 allowed",
    ),
    "not-utf-8": (lambda d: _secret(d, b"tok\xff\xfeen\n"), "is not UTF-8 text"),
}


def _secret(directory: Path, data: bytes) -> Path:
    path = directory / "token"
    path.write_bytes(data)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("case", list(BAD_SECRETS))
def test_a_secret_file_must_be_a_small_regular_file(tmp_path: Path, case: str) -> None:
    (tmp_path / "tokens").mkdir()
    make, expected = BAD_SECRETS[case]
    secret = make(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(SECRET_CONFIG.replace("{secret}", str(secret)))
    result = run_bounded("check-config", "-c", str(config))
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == EX_CONFIG, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"{config}:7:17: ddns.duckdns.token_file: secret file '{secret}' ")
    assert expected in line, line
    assert "\\xff" not in line and "'tok" not in line, "the secret is never quoted"


def test_a_secret_file_of_64_kib_is_accepted(tmp_path: Path) -> None:
    secret = _secret(tmp_path, b"y" * (64 * 1024 - 1) + b"\n")
    config = tmp_path / "config.yaml"
    config.write_text(SECRET_CONFIG.replace("{secret}", str(secret)))
    assert load_config(config).config.ddns.duckdns.token_file == SecretFile("y" * (64 * 1024 - 1))
