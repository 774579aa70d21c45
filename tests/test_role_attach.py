"""The role's plain `tmux attach` for the login user, offline (docs/tmux-attach.md).

The tmux server stays the service user's; the users of colab_gateway_attach_users get a
/usr/local/bin/tmux wrapper that sends exactly `tmux attach` through sudo to a client
running as the service user, and a sudoers rule that allows exactly that client. Here the
role's own task file and templates run with ansible on this host (rendered into tmp_path);
the wrapper runs with recorders in place of sudo and tmux; visudo checks the rule. The
deploy test (tests/test_deploy.py) does the real attach in a booted machine.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.tunnel import TUNNEL_ONLY

from gateway.browser.evidence import Evidence
from gateway.cli import main

REPO = Path(__file__).resolve().parent.parent
ROLE = REPO / "ansible/roles/colab_gateway"
BIN = Path(sys.executable).parent
PLAYBOOK_LOCAL = (str(BIN / "ansible-playbook"), "-c", "local", "-i", "localhost,")
AD_HOC_LOCAL = (str(BIN / "ansible"), "localhost", "-c", "local", "-i", "localhost,")

# The variables tasks/user.yml has set by the time tasks/attach.yml runs.
USER_FACTS = {
    "_colab_gateway_login_user": {"stdout": "pi\n"},
    "_colab_gateway_user": "colab-gateway",
    "_colab_gateway_group": "colab-gateway",
}


def _ansible_env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "ANSIBLE_HOME": str(tmp_path / "ansible"),
        "ANSIBLE_REMOTE_TMP": str(tmp_path / "ansible-remote-tmp"),
        "ANSIBLE_LOCALHOST_WARNING": "0",
        "ANSIBLE_NOCOLOR": "1",
    }


def _needs_ansible(tool: str) -> None:
    if not (BIN / tool).exists():
        pytest.skip(f"needs {tool} in the venv (pip install -e '.[test]')")


def attach_users(tmp_path: Path, **variables: object) -> tuple[list[str] | None, str]:
    """Play tasks/attach-users.yml: (the users it resolved, or None if it failed; output)."""
    _needs_ansible("ansible-playbook")
    playbook = tmp_path / "attach-users.yml"
    playbook.write_text(
        json.dumps(
            [
                {
                    "hosts": "localhost",
                    "gather_facts": False,
                    "vars_files": [f"{ROLE}/defaults/main.yml"],
                    "tasks": [
                        {"ansible.builtin.import_tasks": f"{ROLE}/tasks/attach-users.yml"},
                        {
                            "ansible.builtin.copy": {
                                "content": "{{ _colab_gateway_attach | to_json }}",
                                "dest": str(tmp_path / "attach.json"),
                            }
                        },
                    ],
                }
            ]
        )
    )
    extra = {"ansible_python_interpreter": sys.executable, **USER_FACTS, **variables}
    result = subprocess.run(
        [*PLAYBOOK_LOCAL, str(playbook), "-e", json.dumps(extra)],
        capture_output=True,
        text=True,
        env=_ansible_env(tmp_path),
        timeout=180,
    )
    if result.returncode != 0:
        return None, result.stdout + result.stderr
    return json.loads((tmp_path / "attach.json").read_text()), result.stdout


def render(tmp_path: Path, template: str, **variables: object) -> Path:
    """One of the role's templates, rendered by ansible as the play does."""
    _needs_ansible("ansible")
    dest = tmp_path / template.removesuffix(".j2")
    extra = {
        "ansible_python_interpreter": sys.executable,
        "_colab_gateway_user": "colab-gateway",
        "_colab_gateway_attach": ["pi"],
        "_colab_gateway_tmux_binary": "/usr/bin/tmux",
        "_colab_gateway_sudo_binary": "/usr/bin/sudo",
        **variables,
    }
    result = subprocess.run(
        [
            *AD_HOC_LOCAL,
            *("-m", "ansible.builtin.template"),
            *("-a", f"src={ROLE}/templates/{template} dest={dest}"),
            *("-e", f"@{ROLE}/defaults/main.yml", "-e", json.dumps(extra)),
        ],
        capture_output=True,
        text=True,
        env=_ansible_env(tmp_path),
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return dest


# ---- who may attach --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({}, ["pi"]),  # the role's default: the user Ansible logs in as
        ({"colab_gateway_attach_users": ["", "alice", "pi"]}, ["pi", "alice"]),
        ({"colab_gateway_attach_users": []}, []),  # the opt-out
        # colab_gateway_user: "" (the login user runs the server): its own plain
        # `tmux attach` reaches it, no wrapper and no sudo rule.
        ({"_colab_gateway_user": "pi"}, []),
    ],
    ids=["default", "more-users", "nobody", "login-user-runs-the-server"],
)
def test_the_login_user_may_attach_by_default(
    tmp_path: Path, variables: dict[str, object], expected: list[str]
) -> None:
    users, output = attach_users(tmp_path, **variables)
    assert users == expected, output[-3000:]


@pytest.mark.parametrize(
    "variables",
    [
        {"colab_gateway_attach_users": ["pi'; reboot #"]},
        {"colab_gateway_tmux_session": "colab ALL"},
    ],
    ids=["user", "session"],
)
def test_names_that_would_break_the_wrapper_or_the_rule_are_refused(
    tmp_path: Path, variables: dict[str, object]
) -> None:
    users, output = attach_users(tmp_path, **variables)
    assert users is None
    assert "Correct the inventory" in output, output[-3000:]


def test_the_role_runs_the_attach_tasks() -> None:
    import yaml

    main_tasks = yaml.safe_load((ROLE / "tasks/main.yml").read_text())
    assert {"ansible.builtin.import_tasks": "attach.yml"} in [
        {k: v for k, v in task.items() if k != "name"} for task in main_tasks
    ]
    attach = yaml.safe_load((ROLE / "tasks/attach.yml").read_text())
    modules = {key for task in attach for key in task if key.startswith("ansible.builtin.")}
    assert "ansible.builtin.user" in modules  # the group membership
    group_task = next(t for t in attach if "ansible.builtin.user" in t)
    assert group_task["ansible.builtin.user"]["append"] is True
    assert group_task["ansible.builtin.user"]["groups"] == ["{{ _colab_gateway_group }}"]
    templates = {
        t["ansible.builtin.template"]["src"]: t["ansible.builtin.template"]
        for t in attach
        if "ansible.builtin.template" in t
    }
    assert templates["sudoers-attach.j2"]["validate"] == "visudo -cf %s"
    assert templates["sudoers-attach.j2"]["mode"] == "0440"
    assert templates["tmux-attach-wrapper.sh.j2"]["mode"] == "0755"


# ---- the wrapper ---------------------------------------------------------------------

RECORDER = """#!/bin/sh
printf '%s' "$(basename "$0")" >> "$RECORD"
for arg in "$@"; do printf ' [%s]' "$arg" >> "$RECORD"; done
printf ' cwd=%s\\n' "$(pwd)" >> "$RECORD"
"""


def wrapper_calls(
    tmp_path: Path, attach: list[str], args: list[str], tmux_env: str | None = None
) -> str:
    """What the rendered wrapper runs for ``tmux ARGS`` (a recorder stands for each)."""
    fakes = tmp_path / "fakes"
    fakes.mkdir(exist_ok=True)
    for name in ("sudo", "tmux"):
        (fakes / name).write_text(RECORDER)
        (fakes / name).chmod(0o755)
    wrapper = render(
        tmp_path,
        "tmux-attach-wrapper.sh.j2",
        _colab_gateway_attach=attach,
        _colab_gateway_tmux_binary=str(fakes / "tmux"),
        _colab_gateway_sudo_binary=str(fakes / "sudo"),
    )
    wrapper.chmod(0o755)
    record = tmp_path / "record"
    record.write_text("")
    env = {k: v for k, v in os.environ.items() if k != "TMUX"}
    if tmux_env is not None:
        env["TMUX"] = tmux_env
    subprocess.run(
        [str(wrapper), *args],
        env={**env, "RECORD": str(record)},
        cwd=tmp_path,
        check=True,
        timeout=30,
    )
    return record.read_text().replace(str(fakes) + "/", "")


def test_the_wrapper_sends_a_plain_attach_to_a_client_of_the_service_user(
    tmp_path: Path,
) -> None:
    me = pwd.getpwuid(os.getuid()).pw_name
    client = (
        f"sudo [-n] [-u] [colab-gateway] [{tmp_path}/fakes/tmux] [attach-session] [-t] [colab]"
        " cwd=/\n"
    ).replace(f"{tmp_path}/fakes/", "")
    for args in (["attach"], ["a"], ["attach-session"], ["at"], ["attach", "-t", "colab"]):
        assert wrapper_calls(tmp_path, [me], args) == client, args


@pytest.mark.parametrize(
    ("args", "attach", "tmux_env"),
    [
        (["attach", "-t", "mine"], None, None),  # another session: the user's own server
        (["new", "-s", "mine"], None, None),
        ([], None, None),
        (["attach", "-d"], None, None),
        (["attach"], ["somebody-else"], None),  # not an attach user (the daemon, root)
        (["attach"], None, "/tmp/tmux-1000/default,1,0"),  # inside a pane: tmux's own rule
    ],
    ids=["other-session", "new", "no-args", "other-flags", "other-user", "inside-tmux"],
)
def test_the_wrapper_leaves_everything_else_to_tmux(
    tmp_path: Path, args: list[str], attach: list[str] | None, tmux_env: str | None
) -> None:
    me = pwd.getpwuid(os.getuid()).pw_name
    calls = wrapper_calls(tmp_path, attach or [me], args, tmux_env)
    assert calls == "tmux" + "".join(f" [{a}]" for a in args) + f" cwd={tmp_path}\n"


# ---- the sudo rule ------------------------------------------------------------------


def test_the_sudo_rule_allows_exactly_the_client_with_a_pty_of_its_own(tmp_path: Path) -> None:
    rule = render(tmp_path, "sudoers-attach.j2", _colab_gateway_attach=["pi", "alice"])
    lines = [line for line in rule.read_text().splitlines() if line and not line.startswith("#")]
    assert lines == [
        "Cmnd_Alias COLAB_GATEWAY_ATTACH = /usr/bin/tmux attach-session -t colab",
        "Defaults!COLAB_GATEWAY_ATTACH use_pty",
        'Defaults!COLAB_GATEWAY_ATTACH env_keep += "LANG LANGUAGE LC_ALL LC_CTYPE COLORTERM"',
        "pi ALL=(colab-gateway) NOPASSWD: COLAB_GATEWAY_ATTACH",
        "alice ALL=(colab-gateway) NOPASSWD: COLAB_GATEWAY_ATTACH",
    ]
    visudo = shutil.which("visudo")
    if visudo is None:
        pytest.skip("no visudo here to check the rule's syntax (the role validates with it)")
    check = subprocess.run([visudo, "-cf", str(rule)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


# ---- what the login user copies to the laptop ----------------------------------------


def test_the_notebook_is_group_readable_unless_it_holds_the_key(tmp_path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "id")], check=True
    )
    config = tmp_path / "config.yaml"
    config.write_text(
        "sessions:\n  - name: colab\n    notebook_url: https://colab.research.google.com/drive/a\n"
        "tunnel:\n  public_host: home.example.net\n  public_port: 443\n"
        f"ssh:\n  identity: {tmp_path / 'id'}\n" + TUNNEL_ONLY
    )
    common = ["-c", str(config), "--state-dir", str(tmp_path / "state")]
    plain, inline = tmp_path / "gateway.ipynb", tmp_path / "inline.ipynb"
    old = os.umask(0o077)  # the service's UMask: the mode must not depend on it
    try:
        assert main(["notebook", *common, "colab", "-o", str(plain)]) == 0
        assert main(["notebook", *common, "colab", "-o", str(inline), "--inline-key"]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(plain.stat().st_mode) == 0o640
    assert stat.S_IMODE(inline.stat().st_mode) == 0o600


def test_screenshots_are_group_readable_under_the_units_umask(tmp_path: Path) -> None:
    directory = tmp_path / "state" / "screenshots"
    old = os.umask(0o077)  # colab-gateway.service's UMask
    try:
        saved = Evidence(directory, keep=3).save("colab", "signed-out", {"url": "x"})
    finally:
        os.umask(old)
    assert saved is not None
    assert stat.S_IMODE(directory.stat().st_mode) == 0o750
    assert stat.S_IMODE(Path(saved).stat().st_mode) == 0o640
