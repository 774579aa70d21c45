"""The daemon's own idle cost: CPU share and memory of `colab-gateway run` with the tunnel
endpoint listening and nothing connected (no browser, no tmux: those are measured by
bench_browser.py and bench_tmux_reconnect.py).

    .venv/bin/python bench/bench_daemon_idle.py [--window 60]

Ends with `RESULT idle_cpu_percent=… pss_mb=… rss_mb=…` (CPU over the window after a
15 s settle, from the process's own utime+stime; PSS from smaps_rollup via psutil).
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

CONFIG = """\
sessions:
  - name: colab
    notebook_url: https://colab.research.google.com/drive/idle-measure
    forwards:
      ssh: {{colab: 22, local: {local}}}
tunnel:
  listen: 127.0.0.1:{listen}
  public_host: 127.0.0.1
browser: {{enabled: false}}
tmux: {{enabled: false}}
ssh: {{identity: {identity}}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--settle", type=float, default=15.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        identity = work / "id_ed25519"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(identity)], check=True
        )
        config = work / "config.yaml"
        config.write_text(CONFIG.format(local=free_port(), listen=free_port(), identity=identity))
        exe = Path(sys.executable).parent / "colab-gateway"
        with (work / "daemon.log").open("w") as log:
            daemon = subprocess.Popen(
                [str(exe), "run", "-c", str(config), "--state-dir", str(work / "state"),
                 "--runtime-dir", str(work / "run")],
                stderr=log,
            )  # fmt: skip
            try:
                time.sleep(args.settle)  # past start-up: imports, key generation
                proc = psutil.Process(daemon.pid)
                cpu0, wall0 = sum(proc.cpu_times()[:2]), time.monotonic()
                time.sleep(args.window)
                cpu1, wall1 = sum(proc.cpu_times()[:2]), time.monotonic()
                memory = proc.memory_full_info()
                print(
                    f"RESULT idle_cpu_percent={100 * (cpu1 - cpu0) / (wall1 - wall0):.2f} "
                    f"pss_mb={memory.pss / 2**20:.1f} rss_mb={memory.rss / 2**20:.1f} "
                    f"window_s={args.window:.0f}"
                )
            finally:
                daemon.terminate()
                daemon.wait(15)


if __name__ == "__main__":
    main()
