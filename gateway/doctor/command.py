"""The check list, the runner that never lets a check raise, and the ``doctor`` subcommand."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from gateway import logs
from gateway.config import ConfigError, LoadedConfig, load_config
from gateway.doctor import browser_checks, network_checks, service_checks, system_checks
from gateway.doctor.env import SERVICE, Env
from gateway.doctor.report import Finding, Result, exit_code, fail, render, skip, warn
from gateway.paths import Paths


@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[Env], Finding]
    needs_config: bool = True


# In the order a user fixes things: what is installed, then what is set up, then what runs.
CHECKS = (
    Check("chromium", browser_checks.check_chromium),
    Check("chromedriver", browser_checks.check_chromedriver),
    Check("profile", browser_checks.check_profile),
    Check("sandbox", browser_checks.check_sandbox),
    Check("tmux", system_checks.check_tmux, needs_config=False),
    Check("ssh identity", system_checks.check_ssh_identity),
    Check("tunnel keys", service_checks.check_tunnel_keys),
    Check("endpoint", network_checks.check_endpoint),
    Check("ddns", network_checks.check_ddns),
    Check("public port", network_checks.check_public_port),
    Check("disk", system_checks.check_disk, needs_config=False),
    Check("daemon", service_checks.check_daemon, needs_config=False),
)
NAME_WIDTH = max(len(c.name) for c in CHECKS)


def load(paths: Paths) -> tuple[LoadedConfig | None, list[str]]:
    try:
        return load_config(paths.config), []
    except ConfigError as exc:
        return None, [str(p) for p in exc.problems]


def run_check(check: Check, env: Env) -> Result:
    if check.needs_config and env.loaded is None:
        return Result(check.name, skip("skipped: needs a valid config (see the config line)"))
    try:
        return Result(check.name, check.run(env))
    except PermissionError as exc:
        return Result(
            check.name,
            warn(
                f"permission denied reading {exc.filename or exc}",
                f"run the doctor as the service's user (`systemctl show -p User {SERVICE}`)",
            ),
        )
    except Exception as exc:  # a check's own bug must not hide the other checks
        return Result(
            check.name,
            fail(
                f"the {check.name} check crashed: {type(exc).__name__}: {exc}",
                "report it as a bug of colab-gateway doctor, with this line",
            ),
        )


def run_all(env: Env, problems: list[str], checks: tuple[Check, ...] = CHECKS) -> Iterator[Result]:
    """The config first, then every check, each result as soon as it is known."""
    yield Result("config", service_checks.check_config(env, problems))
    for check in checks:
        yield run_check(check, env)


def cmd_doctor(args: argparse.Namespace) -> int:
    from gateway.cli_support import paths_from
    from gateway.secrets import register_secrets

    paths = paths_from(args)
    loaded, problems = load(paths)
    if loaded is not None:
        register_secrets(loaded)  # no token from the config ever reaches the terminal
    env = Env(paths=paths, loaded=loaded)
    results = []
    # Printed as they come: the network checks may each take a few seconds.
    for result in run_all(env, problems):
        results.append(result)
        print(logs.redact(render([result], NAME_WIDTH)[0]), flush=True)
        if result.check == "config":
            for problem in problems:
                print(logs.redact(f"  {problem}"), flush=True)
    return exit_code(results)


def register(sub: Any) -> None:
    from gateway.cli_support import add_path_options

    doctor = sub.add_parser(
        "doctor",
        help="check everything the gateway needs, one line each with the fix; exit 1 if "
        "anything fails",
    )
    add_path_options(doctor)
    doctor.set_defaults(handler=cmd_doctor)
