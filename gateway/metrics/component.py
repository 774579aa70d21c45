"""The ``metrics`` component: serves /metrics on ``metrics.listen`` and rewrites the
node_exporter textfile ``metrics.textfile``.

The HTTP side is prometheus_client's WSGI app on the standard library's wsgiref server,
bounded (gateway/local_server.py): any local user can connect, and before the bounds a few
hundred idle connections took every file descriptor of the daemon, the tunnel endpoint's
included. It runs in its own thread; each scrape reads a Snapshot (``State.view()``), so no
component ever waits on a scrape.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import threading
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest, make_wsgi_app

from gateway.atomic import atomic_write
from gateway.component import Context
from gateway.config import split_host_port
from gateway.local_server import BoundedWSGIServer, QuietWSGIRequestHandler
from gateway.metrics.collector import StateCollector
from gateway.vocabulary import Health

log = logging.getLogger("gateway.metrics")

# Prometheus scrapes one connection at a time; a few more for a person's curl. More are
# closed at once, so a flood costs an accept and a close each.
MAX_CONNECTIONS = 8
READ_TIMEOUT = 5.0  # per read of the request
DEADLINE = 15.0  # the whole connection (Prometheus' default scrape_timeout is 10 s)


class MetricsHTTPServer(BoundedWSGIServer):
    name = "metrics"
    max_connections = MAX_CONNECTIONS
    read_timeout = READ_TIMEOUT
    deadline = DEADLINE


class MetricsHTTPServer6(MetricsHTTPServer):
    address_family = socket.AF_INET6


def serve_metrics(host: str, port: int, registry: CollectorRegistry) -> MetricsHTTPServer:
    """/metrics on host:port, served by its own thread until ``stop()``."""
    host = host.strip("[]")
    v6 = ipaddress.ip_address(host).version == 6
    server_class = MetricsHTTPServer6 if v6 else MetricsHTTPServer
    server = server_class((host, port), QuietWSGIRequestHandler)
    server.set_app(make_wsgi_app(registry))
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server


def registry_for(ctx: Context) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(ctx.state.view))
    return registry


class MetricsComponent:
    def __init__(self) -> None:
        self.server: MetricsHTTPServer | None = None

    async def run(self, ctx: Context) -> None:
        config = ctx.config.metrics
        registry = registry_for(ctx)
        where = []
        if config.listen:
            host, port = split_host_port(config.listen)
            try:
                self.server = serve_metrics(host, port, registry)
            except OSError as exc:
                ctx.health(
                    Health.FAILED,
                    f"cannot listen on metrics.listen={config.listen}: {exc.strerror or exc}; "
                    "free the port or change metrics.listen",
                    brief="metrics cannot listen",
                )
                raise
            where.append(f"http://{config.listen}/metrics")
            log.info("metrics on http://%s/metrics", config.listen)
        if config.textfile:
            where.append(config.textfile)
        try:
            while True:
                problem = await self._write_textfile(ctx, registry) if config.textfile else None
                if problem:
                    ctx.health(Health.DEGRADED, problem, brief="metrics textfile failing")
                else:
                    ctx.health(Health.OK, "metrics on " + " and ".join(where), brief="")
                await ctx.sleep(config.textfile_every if config.textfile else 30.0)
        finally:
            self.stop()

    async def _write_textfile(self, ctx: Context, registry: CollectorRegistry) -> str | None:
        path = ctx.config.metrics.textfile
        try:
            # In a thread: atomic_write fsyncs, which an SD card can take its time over.
            await asyncio.to_thread(atomic_write, path, generate_latest(registry), 0o644)
        except OSError as exc:
            return textfile_problem(path, exc)
        return None

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


def textfile_problem(path: str, exc: OSError) -> str:
    problem = f"cannot write metrics.textfile={path}: {exc.strerror or exc}"
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        # The unit's ProtectSystem=strict makes most of / read-only for the service.
        problem += (
            "; let the service write there with a drop-in (systemctl edit colab-gateway): "
            f"[Service] ReadWritePaths={Path(path).parent}"
        )
    return problem
