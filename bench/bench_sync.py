"""The sync's rsync through the tunnel endpoint against the same through a real OpenSSH
sshd, side by side, in one run.

A stand-in Colab VM is an OpenSSH sshd on this machine (the VM's sshd) holding a tree of
mixed files: a few large ones and many small ones, random bytes (nothing compresses). A
reverse tunnel (``ssh -N -R``, the bootstrap's client) makes that sshd reachable on the
Pi's loopback, once through the endpoint (``colab-gateway run``) and once through an
OpenSSH sshd; the sync's own code (``gateway.sync.pull``: dry run, pull with
``--link-dest``, settle check, restore) runs over each with the product's ssh options
(``gateway.vm_ssh``). Per trial and server:

- first pull:        the whole tree into an empty snapshot store;
- incremental pull:  after 1 % of the bytes changed (small files rewritten, a block of
                     each large file overwritten);
- restore:           the VM's tree deleted, the newest snapshot pushed back (and checked).

Trials of the two servers are interleaved; each figure is the median of ``--trials``.
Ends with  RESULT first_pull_ratio=… incremental_ratio=… restore_ratio=…  (time, endpoint ÷
OpenSSH: lower is better; 1.00 is a tie).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_tunnel import SSHD, Servers, _wait_port, free_port, write_sshd_dir  # noqa: E402

from gateway.config import SyncConfig, load_config_text  # noqa: E402
from gateway.paths import Paths  # noqa: E402
from gateway.sync import pull  # noqa: E402
from gateway.sync.rsync import Remote  # noqa: E402
from gateway.sync.snapshots import SnapshotStore  # noqa: E402
from gateway.vm_ssh import VM_LOGIN, ssh_options  # noqa: E402

LARGE_SHARE = 0.7  # of the bytes in a few large files, the rest in small ones
SMALL = (4 * 1024, 64 * 1024)


def make_tree(root: Path, total: int, rng: random.Random) -> None:
    """Large files (checkpoints) and many small ones (logs, sources), random content."""
    large = int(total * LARGE_SHARE)
    for n in range(4):
        with (root / f"ckpt-{n}.bin").open("wb") as out:
            left = large // 4
            while left:
                chunk = min(left, 8 << 20)
                out.write(os.urandom(chunk))
                left -= chunk
    small_left = total - large
    n = 0
    while small_left > 0:
        size = min(small_left, rng.randint(*SMALL))
        sub = root / f"d{n // 200:03d}"
        sub.mkdir(exist_ok=True)
        (sub / f"f{n:05d}.dat").write_bytes(os.urandom(size))
        small_left -= size
        n += 1


def change_one_percent(root: Path, total: int, rng: random.Random) -> int:
    """Rewrite small files and overwrite a block of each large file: 1 % of the bytes."""
    budget = total // 100
    changed = 0
    for path in sorted(root.glob("ckpt-*.bin")):
        block = budget // 8
        with path.open("r+b") as out:
            out.seek(rng.randrange(0, max(1, path.stat().st_size - block)))
            out.write(os.urandom(block))
        changed += block
    smalls = sorted(root.glob("d*/f*.dat"))
    rng.shuffle(smalls)
    for path in smalls:
        if changed >= budget:
            break
        size = path.stat().st_size
        path.write_bytes(os.urandom(size))
        changed += size
    return changed


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


class SyncBench(Servers):
    """bench_tunnel's two tunnel servers, forwarding to a VM's sshd instead of a counter."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp, None)
        self.target = free_port()  # the VM's sshd
        self.pi_key = tmp / "pi_key"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.pi_key)], check=True
        )

    def start(self) -> None:
        self._start_endpoint()
        self._start_sshd()
        self._start_vm_sshd()
        _wait_port(self.endpoint_port)
        _wait_port(self.sshd_port)
        _wait_port(self.target)

    def _start_vm_sshd(self) -> None:
        d = self.tmp / "vm-sshd"
        write_sshd_dir(d, self.target, Path(f"{self.pi_key}.pub").read_text())
        self._spawn([SSHD, "-D", "-e", "-f", str(d / "sshd_config")])
        host = (d / "host.pub").read_text().split()
        # The pinned key of the VM, as the tunnel writes it for the session's ssh port.
        (self.tmp / "pi-state").mkdir(exist_ok=True)
        (self.tmp / "pi-state" / "known_hosts").write_text(
            "".join(f"[localhost]:{port} {host[0]} {host[1]}\n" for port in self.local.values())
        )

    def remote(self, which: str) -> Remote:
        config = load_config_text(
            textwrap.dedent(f"""\
            sessions:
              - name: bench
                notebook_url: https://colab.research.google.com/drive/bench
                forwards: {{ssh: {{colab: 22, local: {self.local[which]}}}}}
            ssh: {{identity: {self.pi_key}}}
            browser: {{enabled: false}}
            tmux: {{enabled: false}}
            """)
        ).config
        paths = Paths(
            config=self.tmp / "config.yaml",
            state_dir=self.tmp / "pi-state",
            runtime_dir=self.tmp / "run",
        )
        return Remote(("ssh", *ssh_options(config, "bench", paths)), VM_LOGIN)


def one_trial(
    bench: SyncBench, which: str, data: Path, total: int, rng: random.Random
) -> dict[str, float]:
    store = SnapshotStore(bench.tmp / f"store-{which}")
    shutil.rmtree(store.root, ignore_errors=True)
    remote = bench.remote(which)
    # The product's default limits: with max_entries set, the pull is watched (statvfs
    # every tick, walks of the partial snapshot) as it is in the daemon.
    defaults = SyncConfig()
    plan = pull.PullPlan(paths=[str(data)], max_entries=defaults.max_entries)
    times: dict[str, float] = {}
    with bench.tunnel(which, None):
        start = time.monotonic()
        asyncio.run(pull.pull(store, remote, plan))
        times["first_pull"] = time.monotonic() - start
        change_one_percent(data, total, rng)
        start = time.monotonic()
        asyncio.run(pull.pull(store, remote, plan))
        times["incremental"] = time.monotonic() - start
        expected = tree_digest(data)
        shutil.rmtree(data)
        newest = store.newest()
        assert newest is not None
        start = time.monotonic()
        asyncio.run(pull.restore(store, newest, [str(data)], remote))
        times["restore"] = time.monotonic() - start
    if tree_digest(data) != expected:
        raise SystemExit(f"{which}: the restored tree differs from the VM's")
    shutil.rmtree(store.root, ignore_errors=True)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=1024, help="size of the VM's tree (MiB)")
    parser.add_argument("--trials", type=int, default=2)
    args = parser.parse_args()
    for program in ("ssh", "rsync"):
        if not shutil.which(program):
            print(f"needs {program} (make system-deps)", file=sys.stderr)
            return 1
    if not Path(SSHD).exists():
        print("needs openssh-server (make system-deps)", file=sys.stderr)
        return 1
    started = time.monotonic()
    rng = random.Random(15)
    total = args.mb * 1024 * 1024
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
        bench = SyncBench(Path(tmp))
        data = Path(tmp) / "vm" / "content" / "outputs"
        data.mkdir(parents=True)
        make_tree(data, total, rng)
        files = sum(1 for p in data.rglob("*") if p.is_file())
        print(f"VM tree: {args.mb} MiB in {files} files ({LARGE_SHARE:.0%} in 4 large ones)")
        results: dict[str, dict[str, list[float]]] = {"endpoint": {}, "openssh": {}}
        try:
            bench.start()
            for trial in range(args.trials):
                order = ("endpoint", "openssh") if trial % 2 == 0 else ("openssh", "endpoint")
                for which in order:
                    times = one_trial(bench, which, data, total, rng)
                    for key, value in times.items():
                        results[which].setdefault(key, []).append(value)
                    shown = ", ".join(f"{k} {v:.2f}s" for k, v in times.items())
                    print(f"trial {trial + 1} {which:<8}: {shown}", flush=True)
        finally:
            bench.stop()
    ratios = {}
    print(f"\n{'':<12}{'endpoint':>10}{'OpenSSH':>10}{'ratio':>8}   (median seconds)")
    for key in ("first_pull", "incremental", "restore"):
        ours = statistics.median(results["endpoint"][key])
        theirs = statistics.median(results["openssh"][key])
        ratios[key] = ours / theirs
        print(f"{key:<12}{ours:>10.2f}{theirs:>10.2f}{ratios[key]:>8.2f}")
    print(f"\n(took {time.monotonic() - started:.0f}s on {os.cpu_count()} CPUs, {args.mb} MiB)")
    print(
        f"RESULT first_pull_ratio={ratios['first_pull']:.2f} "
        f"incremental_ratio={ratios['incremental']:.2f} restore_ratio={ratios['restore']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
