"""``colab-gateway keys``, ``snippet`` and ``notebook``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gateway.atomic import atomic_write
from gateway.config import EX_CONFIG, Config, SessionConfig
from gateway.tunnel.bootstrap import (
    BootstrapError,
    params_for,
    render_bootstrap_script,
    render_cell,
    render_notebook,
)
from gateway.tunnel.keys import KeyStore, secret_name

EXIT_USAGE = 2


def register(sub: Any) -> None:
    from gateway.cli_support import add_path_options

    keys = sub.add_parser(
        "keys",
        help="show the endpoint's host key and each session's tunnel key (made if missing)",
    )
    add_path_options(keys)
    group = keys.add_mutually_exclusive_group()
    group.add_argument(
        "--rotate",
        metavar="SESSION",
        help="replace SESSION's tunnel key; the old one stops working at once",
    )
    group.add_argument(
        "--private",
        metavar="SESSION",
        help="print SESSION's tunnel private key as one line, the value of its Colab secret",
    )
    keys.set_defaults(handler=cmd_keys)

    for name, what in (
        ("snippet", "print the bootstrap notebook cell for SESSION"),
        ("notebook", "write a notebook whose first cell is the bootstrap"),
    ):
        parser = sub.add_parser(name, help=what)
        add_path_options(parser)
        parser.add_argument("session", nargs="?", help="session name (default: the first)")
        parser.add_argument("--host", help="address Colab dials (default: tunnel.public_host)")
        parser.add_argument("--port", type=int, help="port Colab dials (default: public_port)")
        parser.add_argument(
            "--inline-key",
            action="store_true",
            help="embed the tunnel private key in the cell instead of reading the Colab "
            "secret (anyone who can read the notebook can then open the tunnel)",
        )
        if name == "notebook":
            parser.add_argument("-o", "--output", required=True, metavar="FILE.ipynb")
        else:
            parser.add_argument(
                "--shell",
                action="store_true",
                help="print only the cell's shell part; its GW_* environment variables "
                "override the values rendered in (see gateway/tunnel/bootstrap.py)",
            )
        parser.set_defaults(handler=cmd_snippet, notebook=name == "notebook")


def _load(args: argparse.Namespace) -> tuple[Config, KeyStore] | None:
    from gateway.cli_support import load_or_report, paths_from

    paths = paths_from(args)
    loaded = load_or_report(paths)
    if loaded is None:
        return None
    store = KeyStore(paths.keys_dir)
    try:
        for path in store.ensure([s.name for s in loaded.config.sessions]):
            print(f"generated {path}", file=sys.stderr)
    except PermissionError as exc:
        print(
            f"cannot write keys in {paths.keys_dir}: {exc.strerror}; run this as the "
            "service's user (or with sudo), or pass --state-dir",
            file=sys.stderr,
        )
        return None
    return loaded.config, store


def _session(config: Config, name: str | None) -> SessionConfig | None:
    if name is None:
        if not config.sessions:
            print("no sessions configured: add one under sessions: in the config", file=sys.stderr)
            return None
        return config.sessions[0]
    try:
        return config.session(name)
    except KeyError as exc:
        print(exc.args[0], file=sys.stderr)
        return None


def cmd_keys(args: argparse.Namespace) -> int:
    loaded = _load(args)
    if loaded is None:
        return EX_CONFIG
    config, store = loaded
    if args.private:
        session = _session(config, args.private)
        if session is None:
            return EXIT_USAGE
        # One line and nothing else on stdout: it is pasted (or piped) as the secret's value.
        print(store.tunnel_secret(session.name))
        return 0
    if args.rotate:
        session = _session(config, args.rotate)
        if session is None:
            return EXIT_USAGE
        info = store.rotate(session.name)
        print(
            f"session {session.name}: new tunnel key {info.fingerprint}; the old key no longer "
            f"logs in. Update the Colab secret {secret_name(session.name)!r} with the output "
            f"of `colab-gateway keys --private {session.name}`."
        )
        return 0
    host = store.host_info()
    print(f"endpoint host key  {host.fingerprint}  {host.path}")
    for session in config.sessions:
        info = store.tunnel_key(session.name)
        print(
            f"session {session.name:<10} {info.fingerprint}  {info.path}  "
            f"Colab secret: {secret_name(session.name)}"
        )
    return 0


def cmd_snippet(args: argparse.Namespace) -> int:
    loaded = _load(args)
    if loaded is None:
        return EX_CONFIG
    config, store = loaded
    session = _session(config, args.session)
    if session is None:
        return EXIT_USAGE
    try:
        params = params_for(config, session, store, host=args.host, port=args.port)
        if getattr(args, "shell", False):
            sys.stdout.write(render_bootstrap_script(params))
            return 0
        inline = store.tunnel_secret(session.name) if args.inline_key else None
        cell = render_cell(params, session.name, inline)
    except BootstrapError as exc:
        print(f"colab-gateway: {exc}", file=sys.stderr)
        return 1
    if args.inline_key:
        print(
            "warning: the cell contains the tunnel private key; keep the notebook private, "
            f"and rotate with `colab-gateway keys --rotate {session.name}` if it leaks",
            file=sys.stderr,
        )
    if not args.notebook:
        sys.stdout.write(cell)
        return 0
    # With --inline-key the notebook holds a private key: private like every other secret.
    # Without, the service user's group may read it: the login user copies it to the
    # laptop (`scp pi:/tmp/gateway.ipynb .`, docs/install.md).
    mode = 0o600 if args.inline_key else 0o640
    atomic_write(args.output, render_notebook(cell, session.name), mode)
    print(f"wrote {args.output}: open it in Colab (File > Upload notebook) and run all")
    return 0
