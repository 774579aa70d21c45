"""The ``sync`` component: keeps each session's files (``sessions[].sync``) on the Pi and
puts them back into every new VM before its shell starts.

It learns everything from the State: the tunnel's facts say when a session's VM is
reachable and which VM it is (the host key the tunnel pinned: a new key is a new VM); the
browser's runtime facts say when Colab shows signs of ending (a dialog on the page). It
publishes ``SyncFacts`` back; the tmux pane waits for ``ready_for`` to name the VM before
it starts the VM's shell, and shows the restore while it waits.

Order for a new VM: restore the newest snapshot, run ``resume``, only then pull: a pull
of a VM that was not restored yet would make an empty snapshot the newest.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import time
from collections.abc import Awaitable
from typing import TypeVar

from gateway.atomic import atomic_write
from gateway.backoff import Backoff
from gateway.component import Context
from gateway.config import SessionConfig
from gateway.durations import format_duration
from gateway.sizes import format_size
from gateway.sync import pull as pulling
from gateway.sync.rsync import Remote
from gateway.sync.snapshots import SnapshotStore
from gateway.vm_ssh import VM_LOGIN, ssh_options
from gateway.vocabulary import Health, RestoreState, SyncNow

log = logging.getLogger("gateway.sync")

T = TypeVar("T")

LOOK_EVERY = 1.0  # a pull requested by command is noticed within this
PROGRESS_EVERY = 5.0  # a long rsync still proves to the watchdog that sync is alive
RESUME_LOG = "/root/.colab-gateway/resume.log"
RESUME_TIMEOUT = 30.0
VM_FILE = "vm"  # the VM whose files are in place (restored, or seen first): no restore again


def remote_for(ctx: Context, session: str) -> Remote:
    return Remote(("ssh", *ssh_options(ctx.config, session, ctx.paths)), VM_LOGIN)


def store_for(ctx: Context, session: str) -> SnapshotStore:
    return SnapshotStore(ctx.paths.sync_dir / session)


def resume_script(command: str) -> str:
    """Start ``command`` detached on the VM, its output appended to RESUME_LOG."""
    log_dir = RESUME_LOG.rsplit("/", 1)[0]
    return (
        f"mkdir -p {log_dir} && cd ~ && "
        f'echo "== $(date -u +%FT%TZ) resume after restore" >>{RESUME_LOG} && '
        f"nohup sh -c {shlex.quote(command)} >>{RESUME_LOG} 2>&1 </dev/null &"
    )


class SessionSync:
    def __init__(self, ctx: Context, session: SessionConfig) -> None:
        self.ctx = ctx
        self.session = session
        self.name = session.name
        self.sync = session.sync
        self.store = store_for(ctx, session.name)
        self.pull_requested: str | None = None
        self.ready_for: str | None = None
        self.restore_backoff = Backoff(2.0, 120.0, jitter="equal")
        self.restore_not_before = 0.0
        self.next_pull = 0.0
        self.problem = ""
        self.restore_problem = ""

    # -- facts ---------------------------------------------------------------------------------

    def publish(self, **facts: object) -> None:
        self.ctx.state.update_sync(self.name, **facts)

    async def publish_store(self) -> None:
        infos = await asyncio.to_thread(self.store.infos)
        disk = await asyncio.to_thread(self.store.disk_bytes)
        newest = self.store.newest()
        newest_info = next((i for i in infos if i.id == newest), None)
        self.publish(
            enabled=True,
            snapshots=len(infos),
            disk_bytes=disk,
            newest=newest,
            newest_at=newest_info.taken_at if newest_info else None,
        )

    def known_vm(self) -> str | None:
        try:
            return (self.store.root / VM_FILE).read_text().strip() or None
        except OSError:
            return None

    def remember_vm(self, fingerprint: str) -> None:
        self.store.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(self.store.root / VM_FILE, fingerprint + "\n", mode=0o600)

    async def busy(self, work: Awaitable[T]) -> T:
        """Await ``work``, proving progress to the watchdog while it runs."""
        task = asyncio.ensure_future(work)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=PROGRESS_EVERY)
                self.ctx.progress()
                if done:
                    return task.result()
        finally:
            task.cancel()

    # -- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        await self.publish_store()
        self.publish(ready_for=None, restore=RestoreState.IDLE, pulling=False, problem="")
        version = -1
        while True:
            facts = self.ctx.state.view().sessions.get(self.name)
            now = time.monotonic()
            if facts is not None:
                tunnel = facts.tunnel
                vm = tunnel.hostkey_fingerprint if tunnel.up else None
                if vm is not None and vm != self.ready_for and now >= self.restore_not_before:
                    await self.arrive(vm)
                elif (
                    vm is not None
                    and vm == self.ready_for
                    and (self.pull_requested or now >= self.next_pull)
                ):
                    await self.pull(
                        vm, self.pull_requested or f"every {format_duration(self.sync.every)}"
                    )
            version = await self.ctx.state.wait_changed(version, LOOK_EVERY)
            self.ctx.progress()

    async def watch_for_the_end(self) -> None:
        """Ask for one more pull when Colab shows signs of ending the runtime: a dialog on
        the page ("Are you still there?"), as the browser keep-alive reports it
        (``runtime.dialog_at``: kept after the dialog is answered, so none is missed while
        a pull runs)."""
        version = -1
        seen: float | None = None
        first = True
        while True:
            version = await self.ctx.state.wait_changed(version, LOOK_EVERY)
            facts = self.ctx.state.view().sessions.get(self.name)
            dialog_at = facts.runtime.dialog_at if facts is not None else None
            if dialog_at is not None and dialog_at != seen and not first:
                log.info("session %s: Colab shows a dialog; one more pull", self.name)
                self.pull_requested = self.pull_requested or "Colab shows a dialog"
                self.ctx.state.wake()
            seen, first = dialog_at, False

    async def arrive(self, vm: str) -> None:
        """A VM is reachable that we have not made ready: restore into it if it is new."""
        if vm == self.known_vm():
            log.info("session %s: VM %s already has its files; no restore", self.name, vm)
            self.make_ready(vm, RestoreState.DONE, "this VM was restored before")
            return
        newest = self.store.newest()
        if newest is None:
            log.info("session %s: new VM %s, no snapshot to restore yet", self.name, vm)
            self.remember_vm(vm)
            self.make_ready(vm, RestoreState.NOTHING, "no snapshot yet")
            return
        info = await asyncio.to_thread(self.store.info, newest)
        self.publish(
            restore=RestoreState.RESTORING,
            restore_snapshot=newest,
            restore_snapshot_at=info.taken_at,
            restore_bytes=info.bytes,
            restore_message="",
        )
        log.info("session %s: restoring snapshot %s (%s) into new VM %s",
                 self.name, newest, format_size(info.bytes), vm)  # fmt: skip
        started = time.monotonic()
        try:
            await self.busy(
                pulling.restore(
                    self.store, newest, self.sync.paths,
                    remote_for(self.ctx, self.name), self.sync.bandwidth_bytes,
                )
            )  # fmt: skip
            resume = self.sync.resume
            if resume.command and resume.where == "background":
                self.publish(restore=RestoreState.RESUMING)
                await self.busy(self.run_resume(resume.command))
        except (pulling.Failed, OSError) as exc:
            wait = self.restore_backoff.failure()
            self.restore_not_before = time.monotonic() + wait
            message = f"{exc}; trying again in {wait:.0f}s"
            log.warning("session %s: restore of %s failed: %s", self.name, newest, message)
            self.publish(restore=RestoreState.FAILED, restore_message=message)
            self.ctx.health(Health.DEGRADED, f"session {self.name}: restore failed: {message}")
            return
        took = time.monotonic() - started
        self.restore_backoff.reset()
        self.remember_vm(vm)
        message = f"snapshot {newest} restored in {took:.1f}s"
        log.info("session %s: %s", self.name, message)
        window = bool(self.sync.resume.command) and self.sync.resume.where == "window"
        self.make_ready(vm, RestoreState.DONE, message, resume_in_window=window)

    def make_ready(
        self, vm: str, state: RestoreState, message: str, *, resume_in_window: bool = False
    ) -> None:
        self.ready_for = vm
        # Pull soon, not at once: the VM just came up with what it had.
        self.next_pull = time.monotonic() + self.sync.every
        # One update: the pane must see "ready" and "run resume in the window" together.
        facts: dict[str, object] = {"ready_for": vm, "restore": state, "restore_message": message}
        if resume_in_window:
            facts["resume_window_for"] = vm
        self.publish(**facts)
        self.ctx.health(Health.OK, "keeping sessions' files", brief="")

    async def run_resume(self, command: str) -> None:
        argv = ["ssh", *ssh_options(self.ctx.config, self.name, self.ctx.paths), VM_LOGIN]
        await pulling.start_resume([*argv, resume_script(command)], RESUME_TIMEOUT)
        log.info("session %s: resume.command started; output in %s on the VM",
                 self.name, RESUME_LOG)  # fmt: skip

    async def pull(self, vm: str, reason: str) -> None:
        self.pull_requested = None
        self.next_pull = time.monotonic() + self.sync.every
        plan = pulling.PullPlan(
            paths=self.sync.paths,
            excludes=self.sync.exclude,
            bandwidth=self.sync.bandwidth_bytes,
            max_bytes=self.sync.max_bytes,
            disk_floor=self.ctx.config.sync.disk_floor_bytes,
            vm=vm,
            max_entries=self.sync.max_entries,
            inode_floor=self.ctx.config.sync.inode_floor,
        )
        self.publish(pulling=True)
        started = time.time()
        log.debug("session %s: pull (%s)", self.name, reason)
        try:
            info = await self.busy(pulling.pull(self.store, remote_for(self.ctx, self.name), plan))
        except (pulling.Refused, pulling.Failed, OSError) as exc:
            refused = isinstance(exc, pulling.Refused)
            message = str(exc)
            log.warning("session %s: pull %s: %s", self.name,
                        "refused" if refused else "failed", message)  # fmt: skip
            self.publish(pulling=False, problem=message, last_attempt_at=started)
            self.ctx.health(Health.DEGRADED, f"session {self.name}: pull: {message}")
            return
        removed = await asyncio.to_thread(self.store.prune, self.sync.keep)
        if removed:
            log.info("session %s: removed snapshots %s (keep %d)", self.name,
                     ", ".join(removed), self.sync.keep)  # fmt: skip
        if info.kept_previous:
            log.info("session %s: changed during the pull, previous copy kept: %s",
                     self.name, ", ".join(info.kept_previous[:10]))  # fmt: skip
        self.publish(
            pulling=False,
            problem="",
            last_pull_at=time.time(),
            last_attempt_at=started,
            last_pull_bytes=info.bytes,
            last_pull_seconds=info.seconds,
            last_pull_reason=reason,
        )
        await self.publish_store()
        self.ctx.health(Health.OK, "keeping sessions' files", brief="")


class SyncComponent:
    async def run(self, ctx: Context) -> None:
        sessions = {s.name: SessionSync(ctx, s) for s in ctx.config.sessions if s.sync.enabled}
        ctx.health(Health.OK, f"keeping the files of {', '.join(sessions)}", brief="")
        tasks = [asyncio.ensure_future(s.run()) for s in sessions.values()]
        tasks += [asyncio.ensure_future(s.watch_for_the_end()) for s in sessions.values()]
        try:
            while True:
                for task in tasks:
                    if task.done():
                        task.result()  # a crashed session crashes the component: restart
                command = await ctx.next_command(LOOK_EVERY)
                if isinstance(command, SyncNow):
                    target = sessions.get(command.session)
                    if target is None:
                        log.warning("sync requested for %r, which has no sync.paths",
                                    command.session)  # fmt: skip
                        continue
                    target.pull_requested = command.reason
                    ctx.state.wake()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
