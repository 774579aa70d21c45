"""The tunnel endpoint against a real OpenSSH sshd, side by side, in one run.

Both servers accept the same ``ssh -N -R 127.0.0.1:<port>:127.0.0.1:<target>`` from the
same OpenSSH client with the same key. Through each forwarded port we measure:

- upload:   the Pi side writes into the forwarded port for a while, the Colab-side target
            counts bytes (MB/s, until the target has read everything);
- download: the target writes, the Pi side reads (MB/s);
- rtt:      1 byte there and back, one at a time (p50, p99 in microseconds).

Once with each side's default negotiation (what a user gets) and once with the cipher
forced to the same one on both (``--cipher``). Trials of the two servers are interleaved so
that background load hits both alike; each figure is the median of ``--trials``.

The endpoint runs as the real daemon (``colab-gateway run``) in its own process; the
target and the Pi-side client are small Python processes (threads doing blocking socket
calls with large buffers, far faster than either server).

- cpu:      CPU seconds (user + system) per GB forwarded over the upload and download,
            of each server's whole process tree (psutil, from /proc/PID/stat): the daemon, and
            sshd's listener with its per-connection processes (see tree_cpu_seconds).

Ends with  RESULT upload_ratio=… download_ratio=… rtt_p50_ratio=… rtt_p99_ratio=…
cpu_per_gb_ratio=… (endpoint ÷ OpenSSH, default negotiation; throughput: higher is better,
RTT and CPU: lower) and cpu_per_gb_ratio_same_cipher=… (the forced-cipher comparison).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.sim.polling import free_port  # noqa: E402
from gateway.tunnel.keys import KeyStore  # noqa: E402

CHUNK = 256 * 1024
SSHD = "/usr/sbin/sshd"


# -- the Colab-side target ---------------------------------------------------------------------


def target_server(port: int) -> None:
    """U: read until EOF, answer with the byte count. D<n>: send n bytes. E: echo."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(64)
    payload = os.urandom(CHUNK)

    def handle(conn: socket.socket) -> None:
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            mode = conn.recv(1)
            if mode == b"U":
                total, buf = 0, bytearray(CHUNK)
                while n := conn.recv_into(buf):
                    total += n
                conn.sendall(struct.pack("!Q", total))
            elif mode == b"D":
                want = struct.unpack("!Q", _recv_exact(conn, 8))[0]
                view = memoryview(payload)
                while want > 0:
                    n = min(want, CHUNK)
                    conn.sendall(view[:n])
                    want -= n
            elif mode == b"E":
                while b := conn.recv(1):
                    conn.sendall(b)

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed early")
        data += chunk
    return data


def relay_server(port: int, target: int) -> None:
    """A bare asyncio TCP relay, no SSH, no crypto: the floor for any asyncio endpoint."""
    import asyncio

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        t_reader, t_writer = await asyncio.open_connection("127.0.0.1", target)
        for w in (writer, t_writer):
            w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(pipe(reader, t_writer), pipe(t_reader, writer))

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        await server.serve_forever()

    asyncio.run(main())


# -- the Pi-side measurements ------------------------------------------------------------------


def tree_cpu_seconds(root: int) -> tuple[float, float, int]:
    """CPU seconds (user, system) used so far by ``root`` and its descendants, and how
    many processes the tree has now.

    For each live process of the tree: its own utime + stime (all threads) plus cutime +
    cstime, the times of the children it has already waited for. sshd forks per connection
    (a privileged monitor and the unprivileged process that does the crypto), so those
    count while they run; a child that exits between two readings moves its time into its
    parent's cutime/cstime, so the sum only grows. (A process reparented out of the tree
    would be lost; neither server does that.)
    """
    try:
        top = psutil.Process(root)
        tree = [top, *top.children(recursive=True)]
    except psutil.Error:
        return 0.0, 0.0, 0
    user = system = 0.0
    alive = 0
    for proc in tree:
        with contextlib.suppress(psutil.Error):  # gone between listing and reading
            times = proc.cpu_times()  # /proc/PID/stat's utime, stime, cutime, cstime
            user += times.user + times.children_user
            system += times.system + times.children_system
            alive += 1
    return user, system, alive


def upload(port: int, seconds: float) -> tuple[float, int]:
    """MB/s and bytes the target received."""
    payload = memoryview(os.urandom(CHUNK))
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"U")
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        total = struct.unpack("!Q", _recv_exact(s, 8))[0]
        elapsed = time.perf_counter() - start
    return total / elapsed / 1e6, total


def download(port: int, nbytes: int) -> float:
    buf = bytearray(CHUNK)
    with socket.create_connection(("127.0.0.1", port)) as s:
        start = time.perf_counter()
        s.sendall(b"D" + struct.pack("!Q", nbytes))
        got = 0
        while got < nbytes:
            n = s.recv_into(buf)
            if not n:
                raise ConnectionError(f"download ended after {got} of {nbytes} bytes")
            got += n
        elapsed = time.perf_counter() - start
    return nbytes / elapsed / 1e6


def rtt(port: int, count: int) -> tuple[float, float]:
    samples = []
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(b"E")
        for _ in range(50):  # warm up
            s.sendall(b"x")
            s.recv(1)
        for _ in range(count):
            t = time.perf_counter()
            s.sendall(b"x")
            if s.recv(1) != b"x":
                raise ConnectionError("echo broke")
            samples.append((time.perf_counter() - t) * 1e6)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


# -- the two servers -----------------------------------------------------------------------------


def write_sshd_dir(d: Path, port: int, authorized: str, extra: tuple[str, ...] = ()) -> Path:
    """A directory with a host key, authorized_keys and an sshd_config for an unprivileged
    OpenSSH sshd on 127.0.0.1:``port`` (key-only, like the endpoint); returns the config."""
    d.mkdir()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host")], check=True
    )
    (d / "authorized_keys").write_text(authorized)
    lines = [
        f"Port {port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {d / 'host'}",
        f"PidFile {d / 'sshd.pid'}",
        f"AuthorizedKeysFile {d / 'authorized_keys'}",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "UsePAM no",
        "StrictModes no",
        *extra,
    ]
    config = d / "sshd_config"
    config.write_text("\n".join(lines) + "\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
    return config


class Servers:
    def __init__(self, tmp: Path, profile: str | None) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.keys = KeyStore(tmp / "state" / "keys")
        self.keys.ensure(["bench"])
        self.key = tmp / "tunnel_key"
        self.key.write_text(self.keys.tunnel_private_text("bench"))
        self.key.chmod(0o600)
        self.target = free_port()
        self.endpoint_port = free_port()
        self.sshd_port = free_port()
        self.local = {"endpoint": free_port(), "openssh": free_port()}
        self.profile = profile
        self.tunnel_extra = ""
        self.endpoint_env: dict[str, str] = {}

    def start(self) -> None:
        self._spawn(
            [sys.executable, "-c", f"import bench_tunnel as b; b.target_server({self.target})"],
            cwd=Path(__file__).parent,
        )
        self.relay = free_port()
        self._spawn(
            [
                sys.executable,
                "-c",
                f"import bench_tunnel as b; b.relay_server({self.relay}, {self.target})",
            ],
            cwd=Path(__file__).parent,
        )
        self._start_endpoint()
        self._start_sshd()
        _wait_port(self.target)
        _wait_port(self.endpoint_port)
        _wait_port(self.sshd_port)

    def _spawn(self, args: list[str], cwd: Path | None = None) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            args,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.procs.append(proc)
        return proc

    def _start_endpoint(self) -> None:
        config = self.tmp / "config.yaml"
        config.write_text(
            textwrap.dedent(f"""\
            sessions:
              - name: bench
                notebook_url: https://colab.research.google.com/drive/bench
                forwards:
                  ssh: {{colab: 22, local: {self.local["endpoint"]}}}
            tunnel:
              listen: 127.0.0.1:{self.endpoint_port}
              public_host: 127.0.0.1
              {self.tunnel_extra}
            browser: {{enabled: false}}
            tmux: {{enabled: false}}
            daemon: {{log_level: warning}}
            """)
        )
        daemon = [sys.executable]
        if self.profile:
            daemon += ["-m", "cProfile", "-o", self.profile]
        daemon += [
            "-m",
            "gateway",
            "run",
            "-c",
            str(config),
            "--state-dir",
            str(self.tmp / "state"),
            "--runtime-dir",
            str(self.tmp / "run"),
        ]
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        env.update(self.endpoint_env)
        proc = subprocess.Popen(
            daemon,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.procs.append(proc)
        self.daemon = proc

    def _start_sshd(self) -> None:
        d = self.tmp / "sshd"
        write_sshd_dir(
            d,
            self.sshd_port,
            self.keys.tunnel_key("bench").public + "\n",
            extra=("AllowTcpForwarding remote", "GatewayPorts no"),
        )
        self.sshd = self._spawn([SSHD, "-D", "-e", "-f", str(d / "sshd_config")])
        self.sshd_host = (d / "host.pub").read_text().split()

    @contextlib.contextmanager
    def tunnel(self, which: str, cipher: str | None) -> Iterator[int]:
        port = self.endpoint_port if which == "endpoint" else self.sshd_port
        hostkey = self.keys.host_info().public.split() if which == "endpoint" else self.sshd_host
        known = self.tmp / f"known_{which}"
        known.write_text(f"[127.0.0.1]:{port} {hostkey[0]} {hostkey[1]}\n")
        local = self.local[which]
        args = [
            "ssh",
            "-F",
            "/dev/null",
            "-N",
            "-p",
            str(port),
            "-i",
            str(self.key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            f"UserKnownHostsFile={known}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "ExitOnForwardFailure=yes",
            "-o",
            "ServerAliveInterval=15",
            "-R",
            f"127.0.0.1:{local}:127.0.0.1:{self.target}",
        ]
        if cipher:
            args += ["-c", cipher]
        user = "colab" if which == "endpoint" else "root"
        proc = subprocess.Popen(
            [*args, f"{user}@127.0.0.1"], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            _wait_port(local, proc)
            yield local
        finally:
            proc.terminate()
            proc.wait(10)
            if proc.stderr:
                proc.stderr.close()
            _wait_free(local)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            if proc.stderr:
                err = proc.stderr.read().decode(errors="replace").strip()
                proc.stderr.close()
                if err and proc.returncode not in (0, -signal.SIGTERM, 255):
                    print(
                        f"[{proc.args[0]} exited {proc.returncode}] {err[-2000:]}", file=sys.stderr
                    )


def _wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"{proc.args} exited {proc.returncode}: {err}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


def _wait_free(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return
            except OSError:
                time.sleep(0.05)


Results = dict[str, dict[str, list[float]]]


def measure(servers: Servers, cipher: str | None, args: argparse.Namespace) -> Results:
    """Per side, one value per trial of: upload and download MB/s, RTT p50/p99 µs, and CPU
    seconds per GB forwarded (server process tree, over the upload and download)."""
    results: Results = {
        w: {"up": [], "down": [], "p50": [], "p99": [], "cpu": [], "sys": [], "procs": []}
        for w in ("endpoint", "openssh")
    }
    roots = {"endpoint": servers.daemon.pid, "openssh": servers.sshd.pid}
    for trial in range(args.trials):
        order = ("endpoint", "openssh") if trial % 2 == 0 else ("openssh", "endpoint")
        for which in order:
            with servers.tunnel(which, cipher) as port:
                upload(port, 0.3)  # warm up the path (and TCP windows)
                user_before, sys_before, procs = tree_cpu_seconds(roots[which])
                up, up_bytes = upload(port, args.seconds)
                down_bytes = args.download_mb * 1_000_000
                down = download(port, down_bytes)
                user_after, sys_after, _ = tree_cpu_seconds(roots[which])
                r = results[which]
                r["up"].append(up)
                r["down"].append(down)
                gb = (up_bytes + down_bytes) / 1e9
                r["cpu"].append((user_after - user_before + sys_after - sys_before) / gb)
                r["sys"].append((sys_after - sys_before) / gb)
                r["procs"].append(procs)
                p50, p99 = rtt(port, args.rtt_count)
                r["p50"].append(p50)
                r["p99"].append(p99)
    return results


def _spread(values: list[float]) -> str:
    return f"{min(values):.2f}–{max(values):.2f}"


def report(title: str, res: Results) -> dict[str, float]:
    med = {w: {k: statistics.median(v) for k, v in r.items()} for w, r in res.items()}
    e, o = med["endpoint"], med["openssh"]
    print(f"\n{title}")
    print(
        f"  {'':10} {'upload MB/s':>12} {'download MB/s':>14} {'rtt p50 µs':>11} "
        f"{'rtt p99 µs':>11} {'CPU s/GB':>9} {'(all trials)':>12} {'of it sys':>9} "
        f"{'processes':>9}"
    )
    for name, r in (("endpoint", e), ("openssh", o)):
        print(
            f"  {name:10} {r['up']:12.1f} {r['down']:14.1f} {r['p50']:11.0f} {r['p99']:11.0f} "
            f"{r['cpu']:9.2f} {_spread(res[name]['cpu']):>12} {r['sys']:9.2f} {r['procs']:9.0f}"
        )
    # Trial i of each side ran back to back, so their ratio shares the machine's load.
    paired = [a / b for a, b in zip(res["endpoint"]["cpu"], res["openssh"]["cpu"], strict=True)]
    ratios = {
        "upload_ratio": e["up"] / o["up"],
        "download_ratio": e["down"] / o["down"],
        "rtt_p50_ratio": e["p50"] / o["p50"],
        "rtt_p99_ratio": e["p99"] / o["p99"],
        "cpu_per_gb_ratio": e["cpu"] / o["cpu"],
    }
    print("  ratios   " + " ".join(f"{k}={v:.2f}" for k, v in ratios.items()))
    print(f"  cpu_per_gb_ratio of each trial pair: {', '.join(f'{x:.2f}' for x in paired)}")
    return ratios


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="per upload trial")
    parser.add_argument("--download-mb", type=int, default=200, help="per download trial")
    parser.add_argument("--rtt-count", type=int, default=2000)
    parser.add_argument(
        "--cipher",
        default="aes128-gcm@openssh.com",
        help="the cipher forced on both for the second comparison",
    )
    parser.add_argument("--profile", metavar="FILE", help="run the daemon under cProfile")
    parser.add_argument("--only-default", action="store_true")
    parser.add_argument(
        "--endpoint-tunnel",
        default="",
        metavar="YAML",
        help="extra tunnel: settings for the endpoint, e.g. 'max_packet: 65536'",
    )
    parser.add_argument(
        "--endpoint-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment for the daemon, e.g. OPENSSL_ia32cap=~0x200000200000000 (no AES-NI)",
    )
    args = parser.parse_args()
    if not shutil.which("ssh") or not Path(SSHD).exists():
        print("needs openssh-client and openssh-server (make system-deps)", file=sys.stderr)
        return 1
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-tunnel-") as tmp:
        servers = Servers(Path(tmp), args.profile)
        servers.tunnel_extra = "\n              ".join(
            part.strip() for part in args.endpoint_tunnel.split(";") if part.strip()
        )
        servers.endpoint_env = dict(item.split("=", 1) for item in args.endpoint_env)
        try:
            servers.start()
            default = report(
                "default negotiation (each side's own choice)", measure(servers, None, args)
            )
            _wait_port(servers.relay)
            floor = rtt(servers.relay, args.rtt_count)
            print(
                f"\nfloor: a bare asyncio TCP relay (no SSH, no crypto) between the same two "
                f"sockets: rtt p50 {floor[0]:.0f} µs, p99 {floor[1]:.0f} µs"
            )
            if not args.only_default:
                same = report(
                    f"same cipher forced: {args.cipher}", measure(servers, args.cipher, args)
                )
                default["cpu_per_gb_ratio_same_cipher"] = same["cpu_per_gb_ratio"]
        finally:
            servers.stop()
    print(f"\n(took {time.monotonic() - started:.0f}s on {os.cpu_count()} CPUs)")
    print("RESULT " + " ".join(f"{k}={v:.2f}" for k, v in default.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
