"""The daemon's lifecycle: startup, main loop, reload, shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from gateway import logs, state_format
from gateway.component import ComponentSpec
from gateway.config import EX_CONFIG, ConfigError, LoadedConfig, load_config
from gateway.notify import Notifier
from gateway.paths import Paths
from gateway.secrets import register_secrets
from gateway.state import Health, State
from gateway.status_server import StatusServer
from gateway.supervisor import Supervisor

log = logging.getLogger("gateway")

# Not a component: the entry in the status that says a reload was refused, until the next
# good one.
CONFIG_STATUS = "config"
IDLE_TICK = 30.0  # the longest the main loop sleeps when nothing happens and no watchdog


class Gateway:
    def __init__(self, loaded: LoadedConfig, paths: Paths, specs: list[ComponentSpec]) -> None:
        self.loaded = loaded
        self.paths = paths
        self.state = State()
        self.notifier = Notifier()
        self.supervisor = Supervisor(self.state, paths, specs)
        self.status_server = StatusServer(self.state, paths.status_socket)
        self.should_exit = asyncio.Event()
        self.reload_requested = False
        self._last_ping = 0.0
        self._stall_reported: set[str] = set()

    async def serve(self) -> int:
        if not self.prepare_state():
            return EX_CONFIG
        await self.startup()
        try:
            await self.main_loop()
        finally:
            await self.shutdown()
        return 0

    def prepare_state(self) -> bool:
        """The state directory in this release's layout before any component reads it
        (gateway/state_format.py). False when it cannot be: a layout newer than this
        release (a rollback below the state) or a failed migration. Exit status 78 then:
        systemd does not retry (RestartPreventExitStatus), starting again would not help."""
        self.paths.ensure()
        try:
            prepared = state_format.prepare(self.paths.state_dir)
        except state_format.StateFormatError as exc:
            log.error("not starting: %s", exc)
            self.notifier.status(f"not started: {exc}")
            self.notifier.close()
            return False
        if prepared.migrated_from is not None:
            log.info(
                "state directory %s migrated from layout %d to %d",
                self.paths.state_dir,
                prepared.migrated_from,
                prepared.version,
            )
        return True

    async def startup(self) -> None:
        loop = asyncio.get_running_loop()
        self.state.attach(loop)
        # Handlers only set flags; the main loop does the work.
        loop.add_signal_handler(signal.SIGTERM, self.should_exit.set)
        loop.add_signal_handler(signal.SIGINT, self.should_exit.set)
        loop.add_signal_handler(signal.SIGHUP, self._request_reload)
        self.paths.ensure()
        await self.status_server.start()
        self._sync_sessions()
        self.supervisor.apply(self.loaded.config)
        await asyncio.sleep(0)  # let each component take its first step
        self.notifier.status(self.state.summary())
        # READY means "the service is up", also when a component can't do its job yet:
        # the STATUS line says what is wrong.
        self.notifier.ready()
        log.info("started (%s); status socket %s", self._enabled_names(), self.paths.status_socket)

    def _request_reload(self) -> None:
        self.reload_requested = True
        self.state.wake()  # the main loop does the reload

    def _enabled_names(self) -> str:
        return ", ".join(self.supervisor.running) or "no components enabled"

    def _sync_sessions(self) -> None:
        names = {s.name for s in self.loaded.config.sessions}
        for name in names:
            self.state.session(name)
        self.state.drop_sessions_except(names)

    async def main_loop(self) -> None:
        version = -1
        stop = asyncio.ensure_future(self.should_exit.wait())
        try:
            while not self.should_exit.is_set():
                if self.reload_requested:
                    self.reload_requested = False
                    await self.reload()
                self.tick()
                period = self.notifier.watchdog_period
                timeout = min(period, IDLE_TICK) if period else IDLE_TICK
                changed = asyncio.ensure_future(self.state.wait_changed(version, timeout))
                await asyncio.wait([changed, stop], return_when=asyncio.FIRST_COMPLETED)
                if changed.done():
                    version = changed.result()
                else:
                    changed.cancel()
        finally:
            stop.cancel()

    def tick(self) -> None:
        """Periodic duties: the STATUS line and the watchdog ping."""
        self.notifier.status(self.state.summary())
        period = self.notifier.watchdog_period
        if not period:
            return
        stalled = self.supervisor.stalled(self.loaded.config.daemon.stall_timeout)
        for name in set(stalled) - self._stall_reported:
            log.error(
                "%s shows no progress for %.0fs: stopping watchdog pings so that "
                "systemd restarts the service",
                name,
                self.loaded.config.daemon.stall_timeout,
            )
            self.state.set_health(name, Health.FAILED, "wedged: no progress")
        self._stall_reported = set(stalled)
        now = time.monotonic()
        if not stalled and now - self._last_ping >= period * 0.9:
            self.notifier.watchdog()
            self._last_ping = now

    async def reload(self) -> None:
        self.notifier.reloading()
        log.info("reloading %s", self.paths.config)
        try:
            # In a thread: a big file takes PyYAML seconds, and the tunnel must keep
            # serving meanwhile.
            loaded = await asyncio.to_thread(load_config, self.paths.config)
        except ConfigError as exc:
            log.error("new config rejected, keeping the running one:\n%s", exc)
            errors = [p for p in exc.problems if not p.warning] or exc.problems
            self._config_rejected([str(p) for p in errors])
        except Exception as exc:  # a loader bug must not take the running service down
            log.exception("new config rejected, keeping the running one")
            self._config_rejected([f"{self.paths.config}: {type(exc).__name__}: {exc}"])
        else:
            for warning in loaded.warnings:
                log.warning("%s", warning)
            register_secrets(loaded)
            logs.set_level(loaded.config.daemon.log_level)
            self.loaded = loaded
            self.state.remove_component(CONFIG_STATUS)
            self._sync_sessions()
            self.supervisor.apply(loaded.config)
        self.notifier.ready()

    def _config_rejected(self, problems: list[str]) -> None:
        """Say in the status (and so the STATUS line) why the new config is not in use."""
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        self.state.set_health(
            CONFIG_STATUS,
            Health.DEGRADED,
            f"new config rejected, still running the previous one: {problems[0]}{more}",
        )

    async def shutdown(self) -> None:
        self.notifier.stopping()
        log.info("stopping")
        timeout = self.loaded.config.daemon.shutdown_timeout
        stuck = await self.supervisor.stop_all(timeout)
        if stuck:
            log.warning("gave up waiting for %s after %.0fs", ", ".join(stuck), timeout)
        await self.status_server.stop()
        log.info("stopped")
        self.notifier.close()
