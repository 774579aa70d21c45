"""The ``metrics`` component: serves /metrics on ``metrics.listen`` and rewrites the
node_exporter textfile ``metrics.textfile``.

The HTTP server is prometheus_client's, in its own thread; each scrape reads a Snapshot
(``State.view()``), so no component ever waits on a scrape.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import threading
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, generate_latest, start_http_server

from gateway.atomic import atomic_write
from gateway.component import Context
from gateway.config import split_host_port
from gateway.metrics.collector import StateCollector
from gateway.vocabulary import Health

log = logging.getLogger("gateway.metrics")


def registry_for(ctx: Context) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(ctx.state.view))
    return registry


class MetricsComponent:
    def __init__(self) -> None:
        self.server: tuple[WSGIServer, threading.Thread] | None = None

    async def run(self, ctx: Context) -> None:
        config = ctx.config.metrics
        registry = registry_for(ctx)
        where = []
        if config.listen:
            host, port = split_host_port(config.listen)
            try:
                self.server = start_http_server(port, host, registry)
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
            server, thread = self.server
            server.shutdown()
            server.server_close()
            thread.join(5)
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
