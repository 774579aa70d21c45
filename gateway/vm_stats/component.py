"""The ``vm_stats`` component: every ``vm_stats.every``, asks each session's Colab VM for
its accelerator, GPU utilisation and memory, RAM, disk of /content and uptime, and
publishes them as the session's ``VmFacts``.

It learns from the State when a VM is reachable (the tunnel is up) and which VM it is
(the host key the tunnel pinned): a new VM gets a new connection, fresh facts, and its
own one warning if it answers garbage. Renderers (status, metrics, the tmux pane) and the
alerts' ``gpu_idle`` read the facts; nothing here talks to them.
"""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.component import Context
from gateway.config import SessionConfig
from gateway.durations import format_duration
from gateway.untrusted import untrusted
from gateway.vm_ssh import ssh_options
from gateway.vm_stats.parse import Sample, parse
from gateway.vm_stats.sampler import SampleFailed, VmSampler, control_path
from gateway.vocabulary import Health

log = logging.getLogger("gateway.vm_stats")

LOOK_EVERY = 1.0  # a tunnel that came up is noticed within this
# Below this utilisation the GPU counts as idle (notify.gpu_idle_after). Colab's own
# "not utilizing the GPU" notice comes for a GPU that does next to nothing.
GPU_IDLE_BELOW = 0.05


def facts_of(sample: Sample) -> dict[str, object]:
    """The VmFacts fields a sample gives; several GPUs are summed (memory) or averaged."""
    gpus = sample.gpus
    utilizations = [g.utilization for g in gpus if g.utilization is not None]
    used = [g.memory_used for g in gpus if g.memory_used is not None]
    total = [g.memory_total for g in gpus if g.memory_total is not None]
    names = [g.name for g in gpus if g.name]
    return {
        "accelerator": names[0] if names else None,
        "gpus": len(gpus),
        "gpu_utilization": sum(utilizations) / len(utilizations) if utilizations else None,
        "gpu_memory_used": sum(used) if used else None,
        "gpu_memory_total": sum(total) if total else None,
        "memory_used": sample.memory_used,
        "memory_total": sample.memory_total,
        "disk_used": sample.disk_used,
        "disk_total": sample.disk_total,
        "uptime_seconds": sample.uptime,
    }


class SessionStats:
    def __init__(self, ctx: Context, session: SessionConfig) -> None:
        self.ctx = ctx
        self.name = session.name
        self.every = float(ctx.config.vm_stats.every)
        self.sampler = VmSampler(
            ssh_options(ctx.config, session.name, ctx.paths),
            control_path(ctx.paths.runtime_dir, session.name),
        )
        self.vm: str | None = None  # the host key fingerprint of the VM being sampled
        self.warned_for: str | None = None
        self.idle_since: float | None = None
        self.next_at = 0.0
        self.stopping = False  # set by the component's stop: the loop ends at its next turn

    def publish(self, **facts: object) -> None:
        self.ctx.state.update_vm(self.name, **facts)

    async def run(self) -> None:
        version = -1
        try:
            while not self.stopping:
                session = self.ctx.state.view().sessions.get(self.name)
                tunnel = session.tunnel if session is not None else None
                vm = tunnel.hostkey_fingerprint if tunnel is not None and tunnel.up else None
                if vm is not None and vm != self.vm:
                    await self.new_vm(vm)
                now = time.monotonic()
                if vm is not None and now >= self.next_at:
                    self.next_at = now + self.every
                    await self.sample_once(vm)
                wait = LOOK_EVERY if vm is None else max(0.05, self.next_at - time.monotonic())
                version = await self.ctx.state.wait_changed(version, min(LOOK_EVERY, wait))
                self.ctx.progress()
        finally:
            await self.sampler.close()

    async def new_vm(self, vm: str) -> None:
        """A VM not sampled before: its own connection, no facts of the previous one."""
        await self.sampler.close()
        self.vm, self.idle_since, self.next_at = vm, None, 0.0
        self.publish(
            sampled_at=None, accelerator=None, gpus=0, gpu_utilization=None,
            gpu_memory_used=None, gpu_memory_total=None, memory_used=None,
            memory_total=None, disk_used=None, disk_total=None, uptime_seconds=None,
            gpu_idle_since=None, problem="",
        )  # fmt: skip

    def trouble(self, vm: str, message: str) -> None:
        """One warning per VM; the rest of its troubles go to the debug log."""
        message = untrusted(message, 300)
        if self.warned_for != vm:
            self.warned_for = vm
            log.warning("session %s: VM facts: %s (said once per VM)", self.name, message)
        else:
            log.debug("session %s: VM facts: %s", self.name, message)

    async def sample_once(self, vm: str) -> None:
        try:
            await self.sampler.ensure_master()
            output = await self.sampler.sample()
        except (SampleFailed, OSError) as exc:
            self.trouble(vm, str(exc))
            self.publish(problem=str(exc))
            self.ctx.health(Health.DEGRADED, f"session {self.name}: VM facts: {exc}")
            return
        sample = parse(output)
        problem = "; ".join(sample.problems)
        if problem:
            self.trouble(vm, problem)
        facts = facts_of(sample)
        now = time.time()
        utilization = facts["gpu_utilization"]
        if isinstance(utilization, float) and utilization < GPU_IDLE_BELOW:
            self.idle_since = self.idle_since or now
        else:
            self.idle_since = None
        self.publish(
            **facts,
            sampled_at=None if sample.empty else now,
            gpu_idle_since=self.idle_since,
            problem=problem,
        )
        self.ctx.health(Health.OK, self.healthy_words(), brief="")

    def healthy_words(self) -> str:
        return f"sampling the VMs every {format_duration(self.every)}"


class VmStatsComponent:
    async def run(self, ctx: Context) -> None:
        sessions = [SessionStats(ctx, s) for s in ctx.config.sessions]
        ctx.health(
            Health.OK,
            f"sampling the VMs every {format_duration(ctx.config.vm_stats.every)}",
            brief="",
        )
        tasks = [asyncio.ensure_future(s.run()) for s in sessions]
        try:
            while True:
                for task in tasks:
                    if task.done():
                        task.result()  # a crashed session crashes the component: restart
                await ctx.sleep(LOOK_EVERY)
        finally:
            await stop_all(sessions, tasks)


STOP_TRIES = 20  # cancellations, STOP_TRY apart: within the daemon's shutdown_timeout
STOP_TRY = 0.25


async def stop_all(sessions: list[SessionStats], tasks: list[asyncio.Task[None]]) -> None:
    """End every session's loop and its ssh master. Cancelled again until done: Python
    3.11's wait_for (under State.wait_changed) can swallow a cancellation that comes as
    the State changes, and a stop changes it a lot (the tunnel's ports released); the
    ``stopping`` flag ends such a loop at its next turn anyway."""
    for session in sessions:
        session.stopping = True
    pending = set(tasks)
    for _ in range(STOP_TRIES):
        if not pending:
            break
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=STOP_TRY)
