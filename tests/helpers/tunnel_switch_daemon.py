"""`colab-gateway run` plus a test component that plays the tunnel's part in the State.

The real tunnel endpoint publishes ``update_tunnel(up=…)`` when the Colab VM's ``ssh -R``
comes and goes; here a test does it by sending ``up SESSION`` or ``down SESSION`` to
``<runtime_dir>/tunnel-switch.sock``, and gets ``ok`` back once the State has it.

    python tests/helpers/tunnel_switch_daemon.py -c CONFIG --state-dir DIR --runtime-dir DIR
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

from gateway import logs
from gateway.cli_support import add_path_options, load_or_report, paths_from
from gateway.component import ComponentSpec, Context
from gateway.daemon import Gateway
from gateway.registry import all_specs
from gateway.state import Health

SOCKET_NAME = "tunnel-switch.sock"


class TunnelSwitch:
    async def run(self, ctx: Context) -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.closing(writer):
                while line := await reader.readline():
                    verb, _, session = line.decode().strip().partition(" ")
                    ctx.state.update_tunnel(session, up=verb == "up")
                    writer.write(b"ok\n")
                    await writer.drain()

        path = ctx.paths.runtime_dir / SOCKET_NAME
        server = await asyncio.start_unix_server(handle, path=str(path))
        ctx.health(Health.OK, f"switch on {path}")
        try:
            while True:
                await ctx.sleep(5)
        finally:
            server.close()
            path.unlink(missing_ok=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    add_path_options(parser)
    args = parser.parse_args()
    paths = paths_from(args)
    loaded = load_or_report(paths)
    if loaded is None:
        return 78
    logs.setup("debug")
    specs = [
        *all_specs(),
        ComponentSpec("tunnel-switch", lambda c: True, lambda c: None, TunnelSwitch),
    ]
    return asyncio.run(Gateway(loaded, paths, specs).serve())


if __name__ == "__main__":
    sys.exit(main())
