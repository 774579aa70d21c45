"""What one collection of a VM's outbox (gw-notify, gw-run) costs the VM and the Pi, in CPU.

The setup is bench_sync's: the endpoint (``colab-gateway run``, tunnel only), a stand-in
VM's OpenSSH sshd on this machine, the bootstrap's ``ssh -N -R`` tunnel between them, and
the product's ssh options (``gateway.vm_ssh``). The collection is the daemon's own code
(``gateway.alerts.vm_outbox.Collector``). Per run:

- empty:        the listing of an empty outbox (what every collection costs while no job
                has sent anything: one ssh login, ``sh``);
- one message:  the listing of an outbox holding one gw-notify file, plus the removal of it
                (in the daemon these are two collections: read and sent, then removed);

each twice: with a login of its own (what a collection costs with ``vm_stats.every: 0``),
and over the kept connection of the VM facts (gateway/vm_stats' ControlMaster, which the
collection uses whenever it is up: ``vm_ssh.over_kept_connection``).

CPU seconds (user + system) are read from /proc: on the VM, its sshd with every session
it forked (sh, head, base64, rm) and the VM's tunnel client; on the Pi, this process (the
collector's Python), the ssh clients it ran, and the endpoint daemon's process (which
forwards the connection; over the kept connection also the master ssh). Ends with
RESULT vm_empty_ms=… pi_empty_ms=… vm_one_ms=… pi_one_ms=… (a login each) and the same
with ``kept_`` (over the kept connection), medians of ``--runs``, and the ratios
kept / login of the one-message case.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sync import SyncBench  # noqa: E402
from bench_tunnel import tree_cpu_seconds  # noqa: E402

from gateway.alerts.events import Alert  # noqa: E402
from gateway.alerts.vm_outbox import Collector  # noqa: E402
from gateway.config import load_config_text  # noqa: E402
from gateway.paths import Paths  # noqa: E402
from gateway.vm_ssh import (  # noqa: E402
    VM_LOGIN,
    kept_connection,
    over_kept_connection,
    ssh_options,
)
from gateway.vm_stats.sampler import VmSampler  # noqa: E402


def cpu(pid: int) -> float:
    user, system, _ = tree_cpu_seconds(pid)
    return user + system


def own() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


def reaped_children() -> float:
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # the ssh clients, once reaped
    return kids.ru_utime + kids.ru_stime


def write_message(outbox: Path, n: int) -> str:
    """One file as gw-notify writes it (a gw-run report of 20 output lines)."""
    name = f"{time.time_ns()}-{n:08x}"
    lines = [f"epoch {i} loss 0.{i:02d} acc 0.9{i % 10}" for i in range(20)]
    message = "python train.py failed with exit 1 after 2h03m.\n" + "\n".join(lines)
    record = {"id": name, "at": time.time(), "host": "colab-bench", "title": "train.py: failed",
              "message": message}  # fmt: skip
    (outbox / f"{name}.json").write_text(json.dumps(record))
    return name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-vm-messages-") as tmp_name:
        tmp = Path(tmp_name)
        bench = SyncBench(tmp)
        bench.start()
        try:
            return measure(bench, tmp, args.runs)
        finally:
            bench.stop()


def measure(bench: SyncBench, tmp: Path, runs: int) -> int:
    outbox = tmp / "outbox"
    outbox.mkdir(mode=0o700)
    config = load_config_text(
        textwrap.dedent(f"""\
        sessions:
          - name: bench
            notebook_url: https://colab.research.google.com/drive/bench
            forwards: {{ssh: {{colab: 22, local: {bench.local["endpoint"]}}}}}
        ssh: {{identity: {bench.pi_key}}}
        browser: {{enabled: false}}
        tmux: {{enabled: false}}
        """)
    ).config
    paths = Paths(config=tmp / "config.yaml", state_dir=tmp / "pi-state", runtime_dir=tmp)
    options = ssh_options(config, "bench", paths)
    kept = kept_connection(paths.runtime_dir, "bench")
    if kept is None:
        raise SystemExit(f"{tmp} is too long a directory for a control socket")
    collectors = {
        "login": Collector("bench", ["ssh", *options, VM_LOGIN], tmp / "delivered.json",
                           host="pi", outbox=str(outbox)),
        "kept": Collector("bench",
                          ["ssh", *options, *over_kept_connection(tmp, "bench"), VM_LOGIN],
                          tmp / "delivered-kept.json", host="pi", outbox=str(outbox)),
    }  # fmt: skip
    master = VmSampler(options, kept)
    vm_sshd = next(p.pid for p in bench.procs if "vm-sshd" in " ".join(map(str, p.args)))
    endpoint = bench.daemon.pid
    queued: list[Alert] = []
    # Per run: the VM, the Pi, and the Pi's parts (ssh clients, endpoint, collector, master).
    cases = [(way, what) for way in collectors for what in ("empty", "one message")]
    figures: dict[tuple[str, str], list[tuple[float, ...]]] = {case: [] for case in cases}
    loop = asyncio.new_event_loop()
    with bench.tunnel("endpoint", None):
        tunnel_client = next(
            c.pid for c in psutil.Process().children() if "-R" in c.cmdline() and c.name() == "ssh"
        )
        loop.run_until_complete(master.ensure_master())
        assert master.master is not None
        master_pid = master.master.pid

        def reading() -> tuple[float, ...]:
            vm = cpu(vm_sshd) + cpu(tunnel_client)
            parts = (reaped_children(), cpu(endpoint), own(), cpu(master_pid))
            return (vm, sum(parts), *parts)

        try:
            for collector in collectors.values():  # warm: imports, caches, the first session
                loop.run_until_complete(collector.read())
            for n in range(runs):
                for way, what in cases:  # interleaved: the machine's noise hits both ways
                    collector = collectors[way]
                    name = write_message(outbox, n) if what == "one message" else ""
                    before = reading()
                    messages = loop.run_until_complete(collector.read())
                    if name:
                        collector.hand_over(messages, queued.append)
                        loop.run_until_complete(collector.remove([name]))
                    after = reading()
                    figures[(way, what)].append(
                        tuple(b - a for a, b in zip(before, after, strict=True))
                    )
                    if [m.id for m in messages] != ([name] if name else []):
                        raise SystemExit(f"{way} {what}: read {[m.id for m in messages]}")
                    if list(outbox.glob("*.json")):
                        raise SystemExit(f"{way} {what}: the outbox still holds files")
        finally:
            loop.run_until_complete(master.close())
            loop.close()
    result: dict[str, float] = {}
    print(f"{runs} runs each, CPU milliseconds (user + system), median (min-max):")
    sides = ("VM", "Pi", "Pi: ssh client", "Pi: endpoint", "Pi: collector", "Pi: master")
    for (way, what), samples in figures.items():
        label = f"{way}, {what}"
        for index, side in enumerate(sides):
            values = [s[index] * 1000 for s in samples]
            median = statistics.median(values)
            print(f"  {label:<20} {side + ':':<16} {median:6.1f} ms "
                  f"({min(values):.1f}-{max(values):.1f})")  # fmt: skip
            if index < 2:
                prefix = "kept_" if way == "kept" else ""
                case = "empty" if what == "empty" else "one"
                result[f"{prefix}{side.lower()}_{case}_ms"] = median
    for side in ("vm", "pi"):
        login = result[f"{side}_one_ms"]
        result[f"{side}_one_kept_ratio"] = result[f"kept_{side}_one_ms"] / login if login else 0
    print(f"(on {os.cpu_count()} CPUs; the VM and the Pi are this same machine)")
    print("RESULT " + " ".join(f"{k}={v:.2f}" if "ratio" in k else f"{k}={v:.1f}"
                               for k, v in result.items()))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
