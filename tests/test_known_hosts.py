"""The gateway's known_hosts file: what the tunnel writes is what the tmux pane reads."""

from __future__ import annotations

from pathlib import Path

from gateway import known_hosts


def test_pinned_keys_ignores_comments_markers_and_other_hosts(tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(
        "# comment\n@revoked [localhost]:20022 ssh-ed25519 AAAArevoked\n"
        "[localhost]:20022,[127.0.0.1]:20022 ssh-ed25519 AAAAgood\nbroken\n"
    )
    assert known_hosts.pinned_keys(known, 20022) == ["ssh-ed25519 AAAAgood"]
    assert known_hosts.pinned_keys(tmp_path / "missing", 20022) == []


def test_pin_replaces_the_ports_keys_and_keeps_the_rest(tmp_path: Path) -> None:
    known = tmp_path / "state" / "known_hosts"
    known.parent.mkdir()
    known.write_text(
        "# kept\n[localhost]:20022 ssh-ed25519 AAAAold\n[localhost]:30000 ssh-rsa AAAAother\n"
    )
    known_hosts.pin(known, [20022, 20023], "ssh-ed25519 AAAAnew")
    assert known_hosts.pinned_keys(known, 20022) == ["ssh-ed25519 AAAAnew"]
    assert known_hosts.pinned_keys(known, 20023) == ["ssh-ed25519 AAAAnew"]
    assert known_hosts.pinned_keys(known, 30000) == ["ssh-rsa AAAAother"]
    assert known.read_text().startswith("# kept\n")
    assert known.stat().st_mode & 0o777 == 0o644
