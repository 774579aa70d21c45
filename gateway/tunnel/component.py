"""The ``tunnel`` component: runs the endpoint and publishes what it sees into the State."""

from __future__ import annotations

import logging

from gateway.component import Context
from gateway.state import Health
from gateway.tunnel.bootstrap import endpoint_address
from gateway.tunnel.keys import KeyStore, secret_name
from gateway.tunnel.known_sources import FILE_NAME as KNOWN_SOURCES_FILE
from gateway.tunnel.server import Endpoint

log = logging.getLogger("gateway.tunnel")

ROTATION_CHECK = 1.0  # seconds between looks at the key files (rotation by the CLI)


class TunnelComponent:
    def __init__(self) -> None:
        self.endpoint: Endpoint | None = None

    async def run(self, ctx: Context) -> None:
        config = ctx.config
        store = KeyStore(ctx.paths.keys_dir)
        for path in store.ensure([s.name for s in config.sessions]):
            if path == store.host_key_path:
                log.info("generated the endpoint's host key %s", path)
            else:
                name = path.name.removeprefix("tunnel-")
                log.warning(
                    "generated the tunnel key of session %s (%s): store it in Colab as the "
                    "secret %r; `colab-gateway keys` shows how",
                    name,
                    path,
                    secret_name(name),
                )

        def publish(session: str) -> None:
            ctx.state.update_tunnel(session, **endpoint.facts(session))
            self._report(ctx, endpoint)

        endpoint = Endpoint(
            config,
            store,
            ctx.paths.known_hosts,
            publish,
            known_sources=ctx.paths.state_dir / KNOWN_SOURCES_FILE,
            counters=ctx.state,
        )
        self.endpoint = endpoint
        try:
            await endpoint.start()
        except OSError as exc:
            ctx.health(
                Health.FAILED,
                f"cannot listen on tunnel.listen={config.tunnel.listen}: "
                f"{exc.strerror or exc}; free the port or change tunnel.listen",
                brief="tunnel cannot listen",
            )
            raise
        try:
            for session in config.sessions:
                publish(session.name)
            self._report(ctx, endpoint)
            while True:
                endpoint.drop_rotated()
                await ctx.sleep(ROTATION_CHECK)
        finally:
            await endpoint.close()
            for session in config.sessions:
                ctx.state.update_tunnel(session.name, up=False, forwards=[], connections=0)
            self.endpoint = None

    def _report(self, ctx: Context, endpoint: Endpoint) -> None:
        config = ctx.config
        listen = f"{endpoint.host}:{endpoint.port}"
        if not config.sessions:
            ctx.health(Health.OK, f"listening on {listen}; no sessions configured", brief="")
            return
        down = [s.name for s in config.sessions if not endpoint.facts(s.name)["up"]]
        if not down:
            ctx.health(Health.OK, f"listening on {listen}; every session's tunnel is up", brief="")
            return
        host, port = endpoint_address(config)
        public = f"{host}:{port}" if host else f"port {port} (set tunnel.public_host)"
        waiting = ", ".join(f"{name} (secret {secret_name(name)})" for name in down)
        ctx.health(
            Health.DEGRADED,
            f"waiting for Colab to dial in on {listen}, public {public}: {waiting}; run the "
            "bootstrap cell from `colab-gateway snippet`",
            brief="tunnel waiting",
        )
