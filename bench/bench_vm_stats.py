"""What one VM-facts sample costs, on the Pi and on the VM, against a fresh ssh login per
sample, measured in the same run.

A simulated Colab VM (its own network, mount and UTS namespaces, its own OpenSSH sshd, the
stand-in nvidia-smi printing a recorded T4 answer) is sampled from the Pi's namespace with
``gateway.vm_stats``'s own SAMPLE_SCRIPT and ssh options, two ways, interleaved:

- ours:  one ``ssh -M -N`` ControlMaster, opened once; each sample is ``ssh -S <socket>``
         (what ``gateway.vm_stats.sampler`` does);
- fresh: a new ``ssh`` login per sample (key exchange, authentication, a new sshd).

Per sample it measures:

- Pi CPU:   the sample's ssh client (user+system, from wait4's rusage: exact per process)
            plus what the ControlMaster ran meanwhile (ours only; /proc/PID/schedstat);
- VM CPU:   every process of the VM's sshd (the listener, each connection's processes and
            the shells and commands they reaped: utime+stime+cutime+cstime over the tree),
            the difference across the sample (/proc clock ticks: 10 ms, so it is summed
            over the run and divided);
- wall:     from starting the client to its exit.

The sample script alone is also timed inside the VM (``sh -c SAMPLE_SCRIPT``, wait4).
The VM's nvidia-smi here is a shell script printing a file: a real one costs more, the
same in both ways. The Pi's tunnel endpoint relays the bytes of both ways; not counted.

    make bench-vm-stats            (needs root: namespaces)
    python bench/bench_vm_stats.py --samples 50

Ends with  RESULT samples=N pi_cpu_ms=… fresh_pi_cpu_ms=… vm_cpu_ms=… fresh_vm_cpu_ms=…
wall_ms=… fresh_wall_ms=… pi_cpu_ratio=… vm_cpu_ratio=… wall_ratio=…  (ours ÷ fresh:
lower is better).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.sim import netns  # noqa: E402
from gateway.sim.vm import SSHD, SimNetwork, SimVM  # noqa: E402
from gateway.vm_stats.parse import SAMPLE_SCRIPT, parse  # noqa: E402

STANDIN_PATH = "/root/.colab-sim/bin:/usr/local/bin:/usr/bin:/bin"  # as sim/vm.py's logins
PORT = 2222  # the bench's sshd in the VM listens on the VM's end of the veth
T4 = (ROOT / "tests" / "vm_stats" / "fixtures" / "nvidia-smi-t4.csv").read_text()
# Measures the sample script alone inside the VM: N runs, the median CPU of each (wait4).
SCRIPT_ALONE = r"""
import os, statistics, sys
script, n = sys.argv[1], int(sys.argv[2])
cpu = []
for _ in range(n):
    pid = os.spawnvp(os.P_NOWAIT, "sh", ["sh", "-c", "{ " + script + "; } >/dev/null"])
    _, _, ru = os.wait4(pid, 0)
    cpu.append(ru.ru_utime + ru.ru_stime)
print(statistics.median(cpu) * 1000)
"""


def tree_cpu(root: psutil.Process) -> float:
    """Seconds of CPU of ``root`` and its living descendants, with what each reaped."""
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue  # ended meanwhile: its time is in its parent's children_* from now on
        total += t.user + t.system + t.children_user + t.children_system
    return total


def own_cpu(pid: int) -> float:
    """Seconds a living process ran, to the nanosecond (schedstat, not clock ticks)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9


def run_client(argv: list[str]) -> tuple[float, float, str]:
    """(CPU seconds of this client, wall seconds, its output)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    out = proc.stdout.read()
    proc.stdout.close()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} exited {proc.returncode}: {out[-300:]!r}")
    return usage.ru_utime + usage.ru_stime, wall, out.decode(errors="replace")


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-vmstats-"))
    try:
        measure(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(work: Path) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=50, help="per way (default 50)")
    args = parser.parse_args()
    netns.require_root("this benchmark")
    with SimNetwork() as network, SimVM(network, work / "vm", sshd=False) as vm:
        vm.set_nvidia_smi(T4)
        identity = work / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(identity)],
                       check=True)  # fmt: skip
        ssh_dir = vm.root_home / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        (ssh_dir / "authorized_keys").write_text(Path(f"{identity}.pub").read_text())
        (ssh_dir / "authorized_keys").chmod(0o600)
        sshd = vm.popen(
            [SSHD, "-D", "-e", "-f", "/etc/ssh/sshd_config",
             "-o", f"ListenAddress={network.vm_address}:{PORT}",
             "-o", f"SetEnv=PATH={STANDIN_PATH}"],
            name="bench-sshd",
        )  # fmt: skip
        known_hosts = work / "known_hosts"
        known_hosts.write_text(f"[{network.vm_address}]:{PORT} {vm.host_key()}\n")
        options = [
            "-F", "/dev/null", "-p", str(PORT), "-i", str(identity),
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=10",
        ]  # fmt: skip
        login = f"root@{network.vm_address}"
        socket = work / "vm.ctl"
        with network.entered_pi():
            deadline = time.monotonic() + 15
            probe = ["ssh", *options, login, "true"]
            quiet = {"stdin": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
            while subprocess.run(probe, **quiet, check=False).returncode:  # type: ignore[call-overload]
                if time.monotonic() > deadline or sshd.poll() is not None:
                    raise SystemExit(f"the VM's sshd did not let us in; see {vm.logs_dir}")
                time.sleep(0.1)
            started = psutil.Process(sshd.pid)  # ip netns exec / unshare / sh exec sshd
            listener = next(
                p
                for p in [started, *started.children(recursive=True)]
                if p.name() == "sshd" and p.parent() is not None and p.parent().name() != "sshd"
            )
            master = subprocess.Popen(
                ["ssh", *options, "-M", "-N", "-S", str(socket), "-o", "ControlPersist=no", login],
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
            while not socket.exists():
                if master.poll() is not None:
                    raise SystemExit("the ControlMaster did not start")
                time.sleep(0.02)
            ours_argv = ["ssh", *options, "-S", str(socket), "-o", "ControlMaster=no",
                         "-o", "ProxyCommand=false", login, SAMPLE_SCRIPT]  # fmt: skip
            fresh_argv = ["ssh", *options, login, SAMPLE_SCRIPT]
            figures: dict[str, dict[str, list[float]]] = {
                way: {"pi": [], "wall": [], "vm": [], "master": []} for way in ("ours", "fresh")
            }
            run_client(ours_argv)  # warm both (page cache, sshd's first session)
            run_client(fresh_argv)
            for _ in range(args.samples):
                for way, argv in (("ours", ours_argv), ("fresh", fresh_argv)):
                    vm_before, master_before = tree_cpu(listener), own_cpu(master.pid)
                    cpu, wall, out = run_client(argv)
                    sample = parse(out)
                    if sample.problems or not sample.gpus:
                        raise SystemExit(f"the sample did not parse: {sample.problems}")
                    figures[way]["pi"].append(cpu)
                    figures[way]["wall"].append(wall)
                    figures[way]["vm"].append(tree_cpu(listener) - vm_before)
                    figures[way]["master"].append(own_cpu(master.pid) - master_before)
            master.terminate()
            master.wait()
        alone = vm.run(
            ["python3", "-c", SCRIPT_ALONE, SAMPLE_SCRIPT, str(args.samples)],
            env={"PATH": STANDIN_PATH}, timeout=300,
        )  # fmt: skip
        script_ms = float(alone.stdout.strip() or "nan")
    ms = 1000.0
    n = args.samples
    ours, fresh = figures["ours"], figures["fresh"]
    # Pi: the client's exact CPU (median) plus the master's share (its total over the run / n)
    pi = statistics.median(ours["pi"]) * ms + sum(ours["master"]) / n * ms
    fresh_pi = statistics.median(fresh["pi"]) * ms
    vm_cpu = sum(ours["vm"]) / n * ms  # /proc ticks: the mean over the run
    fresh_vm = sum(fresh["vm"]) / n * ms
    wall = statistics.median(ours["wall"]) * ms
    fresh_wall = statistics.median(fresh["wall"]) * ms
    print(f"samples per way: {n} (interleaved), stand-in nvidia-smi printing a T4's answer")
    print(f"{'':24}{'ours (-S)':>12}{'fresh login':>14}")
    print(f"{'Pi CPU ms (client)':24}{statistics.median(ours['pi']) * ms:12.1f}{fresh_pi:14.1f}")
    print(f"{'Pi CPU ms (master)':24}{sum(ours['master']) / n * ms:12.1f}{'-':>14}")
    print(f"{'VM CPU ms (sshd tree)':24}{vm_cpu:12.1f}{fresh_vm:14.1f}")
    print(f"{'wall ms (median)':24}{wall:12.1f}{fresh_wall:14.1f}")
    print(f"the sample script alone in the VM: {script_ms:.1f} ms CPU (median of {n})")
    print(
        f"RESULT samples={n} pi_cpu_ms={pi:.1f} fresh_pi_cpu_ms={fresh_pi:.1f} "
        f"vm_cpu_ms={vm_cpu:.1f} fresh_vm_cpu_ms={fresh_vm:.1f} script_cpu_ms={script_ms:.1f} "
        f"wall_ms={wall:.1f} fresh_wall_ms={fresh_wall:.1f} "
        f"pi_cpu_ratio={pi / fresh_pi:.2f} vm_cpu_ratio={vm_cpu / fresh_vm:.2f} "
        f"wall_ratio={wall / fresh_wall:.2f}"
    )


if __name__ == "__main__":
    main()
