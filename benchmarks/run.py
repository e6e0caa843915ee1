#!/usr/bin/env python3
"""End-to-end benchmark: fastsocks against microsocks and Dante, direct TCP as the reference.

    python benchmarks/run.py [--quick]
                             [--servers fastsocks,fastsocks-name,fastsocks-login,fastsocks-socks4,
                                        fastsocks-http,fastsocks-splice,microsocks,
                                        microsocks-name,microsocks-login,dante,dante-name,
                                        floor]
                             [--only idle,throughput,handshake,udp]
                             [--target-name NAME] [--repeat N] [--json PATH]

Starts a sink and an echo target (TCP, and for the UDP rows a UDP echo and a
UDP sink) in their own processes, then, for each round (``--repeat``,
default 3) and each server (direct first), starts the server fresh on
loopback and measures with ``fastsocks.bench``:

* KiB of server memory per idle relayed connection (first, on the fresh server);
* Gbit/s with 1 and 8 streams, and server CPU-seconds per GiB relayed;
* handshakes/s with p50/p99 latency at concurrency 1 and 64, and server
  CPU-µs per handshake;
* UDP ASSOCIATE: 64-byte round trips/s with p50/p99 latency at 1 and 32
  associations and server CPU-µs per round trip; one association sending
  1,200-byte datagrams to a sink unpaced and paced (50,000/s): datagrams/s
  received by the sink, loss, server CPU-µs per datagram.  microsocks has no
  UDP ASSOCIATE (it replies X'07'), so it has no UDP row.

``fastsocks-socks4`` and ``fastsocks-http`` are the same fastsocks asked
for its tunnels in SOCKS4 and HTTP CONNECT (``fastsocks bench --protocol``):
their rows beside ``fastsocks`` (SOCKS5) measure what each protocol costs
per connection and in throughput, in the same run (TCP rows only).
``fastsocks-name`` is the same fastsocks asked for the echo by name
(``--target-name``, ``localhost`` unless told; ``fastsocks bench
--target-name``): SOCKS5 ATYP X'03', the name in the server's DNS cache
from the warm-up on, handshake rows only, with a table of its figures over
``fastsocks``' (the cost of the name path).  ``microsocks-name`` and
``dante-name`` ask microsocks and Dante for the same name (each resolves
it with the C library's resolver on every request, which for ``localhost``
reads /etc/hosts): the same table has a row for each, so fastsocks' name
path is set beside a C server's in one run.  ``fastsocks-login`` and
``microsocks-login`` log in with RFC 1929 on every connection (alice /
s3cret: a one-user bcrypt users file for fastsocks, whose first login is
checked and the rest answered from its cache; ``-u -P`` for microsocks,
which compares plain text), handshake rows only.  ``floor`` is
``benchmarks/floor.c`` (compiled with ``cc`` at the start): a one-thread
epoll SOCKS5 CONNECT relay in C with no policy, no logging and no
timeouts, the system calls any server must make and nothing else; its
server CPU-µs per handshake is what a short connection costs the kernel
here, the floor under every server's figure (TCP rows only).

``fastsocks-splice`` is fastsocks with ``--relay-bulk splice``: on loopback
``auto`` copies bulk through the engine's 4 MiB buffer, and this row, bulk
throughput only, measures the splice path beside it in the same run.

``--only`` picks some of these groups (e.g. ``--only udp``).  It prints
markdown tables of the medians with ratios to direct (and to microsocks),
plus the generator's and the targets' own CPU use as evidence that neither
was the bottleneck.  See benchmarks/README.md.

Loopback only.  fastsocks listens on 127.0.0.1 port 0; microsocks and Dante
need a port on their command line, so they get one below the ephemeral range
on 127.0.0.2 (never a fixed port in the ephemeral range).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import random
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from fastsocks import bench  # noqa: E402
from fastsocks.net.address import format_peer  # noqa: E402

SERVERS = ("fastsocks", "fastsocks-name", "fastsocks-login", "fastsocks-socks4", "fastsocks-http",
           "fastsocks-splice", "microsocks", "microsocks-name", "microsocks-login", "dante",
           "dante-name", "floor")
GROUPS = ("idle", "throughput", "handshake", "udp")
TCP_GROUPS = ("idle", "throughput", "handshake")
# Servers without UDP ASSOCIATE (checked: microsocks 1.0.3 answers X'07').
NO_UDP = {"microsocks": "no UDP ASSOCIATE (replies X'07', command not supported)",
          "fastsocks-socks4": "SOCKS4 has no UDP", "fastsocks-http": "HTTP CONNECT has no UDP",
          "fastsocks-name": "the name rows measure handshakes only",
          "microsocks-name": "the name rows measure handshakes only",
          "dante-name": "the name rows measure handshakes only",
          "fastsocks-login": "the login rows measure handshakes only",
          "microsocks-login": "the login rows measure handshakes only",
          "fastsocks-splice": "the splice row measures bulk throughput only",
          "floor": "CONNECT only (a measuring stick, benchmarks/floor.c)"}
# Rows that ask for the echo by name (fastsocks bench --target-name): handshakes only.
NAME_ROWS = ("fastsocks-name", "microsocks-name", "dante-name")
# Rows that log in with RFC 1929 (LOGIN, a users file / microsocks -u -P): handshakes only.
LOGIN_ROWS = ("fastsocks-login", "microsocks-login")
LOGIN = ("alice", "s3cret")
# Rows of fastsocks with its bulk forced to splice(2) (--relay-bulk): throughput only.
BULK_ROWS = ("fastsocks-splice",)
TARGET_NAME = "localhost"  # resolves to loopback through /etc/hosts (RFC 6761 §6.3)
UDP_RATE = 50_000.0  # datagrams/s of the paced one-way run
DANTED = "/usr/sbin/danted"
REF_HOST = "127.0.0.2"  # microsocks / Dante listen here, on a port below 32768
START_TIMEOUT = 15.0
# The UDP echo and sink of this invocation, once started ("echo", "sink"), for
# starters that need them (benchmarks/udp_paths.py's forwarder).
UDP_TARGETS: dict[str, tuple[str, int]] = {}
STOP_TIMEOUT = 5.0
SETUP_HINT = "install it with: bash benchmarks/setup.sh (Debian: apt-get install -y {pkg})"


# -- servers under test ---------------------------------------------------------------


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes] | None = None
    address: tuple[str, int] | None = None  # None: direct
    info: str = ""
    tmp: tempfile.TemporaryDirectory[str] | None = None
    log_path: Path | None = None
    extra_pids: list[int] = field(default_factory=list)
    # A plain UDP forwarder (benchmarks/udp_paths.py) is no SOCKS server: the
    # generator sends straight to it, at the front address for each target.
    udp_fronts: dict[tuple[str, int], tuple[str, int]] = field(default_factory=dict)
    # How the generator asks for a tunnel (fastsocks bench --protocol), and for
    # what: the echo's address, or a name at its port (--target-name).
    protocol: str = "socks5"
    target_name: str | None = None
    auth: tuple[str, str] | None = None  # RFC 1929 user and password (the login rows)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def log_tail(self, n: int = 15) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def stop(self) -> None:
        if self.proc is not None:
            tree = bench.ProcessTree(self.proc.pid)
            descendants = [p for p in tree.pids() if p != self.proc.pid]
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(STOP_TIMEOUT)
            # Forked workers (Dante's children) must not outlive their mother.
            deadline = time.monotonic() + STOP_TIMEOUT
            for pid in descendants:
                while _is_alive_child_of_ours(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if _is_alive_child_of_ours(pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
            self.proc = None
        if self.tmp is not None:
            self.tmp.cleanup()
            self.tmp = None


def _is_alive_child_of_ours(pid: int) -> bool:
    fields = bench.ProcessTree._stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _time_wait() -> int:
    """Sockets in TIME_WAIT on this machine (/proc/net/sockstat's and sockstat6's ``tw``)."""
    count = 0
    for path in ("/proc/net/sockstat", "/proc/net/sockstat6"):
        try:
            with open(path) as f:
                for line in f:
                    fields = line.split()
                    if fields and fields[0] in ("TCP:", "TCP6:") and "tw" in fields:
                        count += int(fields[fields.index("tw") + 1])
        except OSError:
            pass
    return count


def settle_time_wait(log: Callable[[str], None], at_most: int = 16000,
                     timeout: float = 60.0) -> None:
    """Wait (at most ``timeout`` s) until few sockets are left in TIME_WAIT.

    A handshake run closes tens of thousands of loopback connections, each
    leaving a socket in TIME_WAIT for 60 s; with the ephemeral ports all held
    by them, the next server cannot bind port 0 and the next clients get
    EADDRNOTAVAIL.  So every server starts on a machine that has let them go.
    """
    left = _time_wait()
    if left <= at_most:
        return
    log(f"  waiting for {left} sockets in TIME_WAIT to go (at most {timeout:g} s)")
    deadline = time.monotonic() + timeout
    while left > at_most and time.monotonic() < deadline:
        time.sleep(1.0)
        left = _time_wait()


def _free_port(host: str) -> int:
    """A free port below the ephemeral range (32768) on ``host``."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in 20000-32000 on {host}")


def _wait_ready(server: Server, echo: tuple[str, int], parse: Callable[[str], Any] | None = None
                ) -> None:
    """Until the server answers a SOCKS CONNECT with an echo round trip (bounded)."""
    deadline = time.monotonic() + START_TIMEOUT
    last: BaseException | None = None
    assert server.proc is not None
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.proc.returncode} "
                               f"while starting; log:\n{server.log_tail()}")
        if server.address is None and parse is not None:
            parse(server.log_tail(50))
        if server.address is not None:
            try:
                with bench.open_connection(server.address, echo, timeout=2.0,
                                           auth=server.auth) as sock:
                    sock.sendall(b"r")
                    if sock.recv(1) == b"r":
                        return
            except (OSError, bench.SocksError) as exc:
                last = exc
        time.sleep(0.05)
    raise RuntimeError(f"{server.name} not ready within {START_TIMEOUT} s ({last!r}); "
                       f"log:\n{server.log_tail()}")


_LISTENING = re.compile(r"(fastsocks \S+) listening on (\[[^\]]+\]|[^\s:,]+):(\d+)(.*)$",
                        re.MULTILINE)


def start_fastsocks(echo: tuple[str, int], protocol: str = "socks5",
                    target_name: str | None = None, login: bool = False,
                    bulk: str | None = None) -> Server:
    tmp = tempfile.TemporaryDirectory(prefix="fastsocks-bench-")
    name = ("fastsocks-name" if target_name is not None else "fastsocks-login" if login else
            f"fastsocks-{bulk}" if bulk else
            "fastsocks" if protocol == "socks5" else f"fastsocks-{protocol}")
    server = Server(name, tmp=tmp, log_path=Path(tmp.name) / "fastsocks.log", protocol=protocol,
                    target_name=target_name, auth=LOGIN if login else None)
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    users: list[str] = []
    if login:  # one bcrypt user (the default cost), as `fastsocks users add` makes it
        users = ["--users", str(Path(tmp.name) / "users")]
        subprocess.run([sys.executable, "-m", "fastsocks", "users", "add", users[1], LOGIN[0]],
                       input=f"{LOGIN[1]}\n".encode(), env=env, check=True,
                       capture_output=True, timeout=60)
    # The "listening on" line is logged at INFO, so keep the default level;
    # nothing is logged per connection below DEBUG.
    with open(server.log_path, "wb") as log:  # type: ignore[arg-type]
        server.proc = subprocess.Popen(
            [sys.executable, "-m", "fastsocks", "--listen", "127.0.0.1:0", "--workers", "1",
             "--log-level", "info", *users, *(("--relay-bulk", bulk) if bulk else ())],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)

    def parse(text: str) -> None:
        match = _LISTENING.search(text)
        if match:
            server.address = (match.group(2).strip("[]"), int(match.group(3)))
            server.info = f"{match.group(1)} {match.group(4).strip()}"

    try:
        _wait_ready(server, echo, parse)
    except BaseException:
        server.stop()
        raise
    return server


def _start_on_port(name: str, echo: tuple[str, int], argv: Callable[[Path, int], list[str]],
                   info: str, auth: tuple[str, str] | None = None,
                   target_name: str | None = None) -> Server:
    """A server that takes its port on the command line: REF_HOST, a free port
    below the ephemeral range, another one if it was taken meanwhile.
    ``argv(tmp_dir, port)`` is its command line; its output goes to a log file."""
    last: BaseException | None = None
    for _ in range(5):
        port = _free_port(REF_HOST)
        tmp = tempfile.TemporaryDirectory(prefix=f"{name}-bench-")
        server = Server(name, tmp=tmp, address=(REF_HOST, port),
                        log_path=Path(tmp.name) / f"{name}.log", auth=auth,
                        target_name=target_name)
        command = argv(Path(tmp.name), port)
        with open(server.log_path, "wb") as log:  # type: ignore[arg-type]
            server.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                           stderr=subprocess.STDOUT)
        try:
            _wait_ready(server, echo)
        except RuntimeError as exc:  # e.g. the port was taken meanwhile: another one
            last = exc
            server.stop()
            continue
        server.info = info
        return server
    raise RuntimeError(f"{name} did not start: {last}")


def start_microsocks(echo: tuple[str, int], login: bool = False,
                     target_name: str | None = None) -> Server:
    binary = shutil.which("microsocks")
    assert binary
    # microsocks logs every connection to stderr; it goes to a file, as
    # Dante's and fastsocks' logs do.  With -u/-P every connection logs in
    # (RFC 1929), its password compared as plain text.
    auth = ["-u", LOGIN[0], "-P", LOGIN[1]] if login else []
    name = "microsocks-login" if login else "microsocks-name" if target_name else "microsocks"
    return _start_on_port(name, echo,
                          lambda tmp, port: [binary, "-i", REF_HOST, "-p", str(port), *auth],
                          "microsocks (Debian package)" + (", -u -P" if login else ""),
                          LOGIN if login else None, target_name)


DANTE_CONF = """\
# Generated by benchmarks/run.py: loopback only, no authentication.
logoutput: stderr
internal: {host} port = {port}
external: 127.0.0.1
socksmethod: none
clientmethod: none
user.privileged: {user}
user.unprivileged: {user}
client pass {{
    from: 127.0.0.0/8 to: 127.0.0.0/8
}}
socks pass {{
    from: 127.0.0.0/8 to: 127.0.0.0/8
    # Every command, spelled out: UDP ASSOCIATE and the datagrams coming back
    # (udpreply) must be allowed for the UDP rows.
    command: bind connect udpassociate bindreply udpreply
}}
"""


def start_dante(echo: tuple[str, int], target_name: str | None = None) -> Server:
    import pwd

    user = pwd.getpwuid(os.getuid()).pw_name
    last: BaseException | None = None
    for _ in range(5):
        port = _free_port(REF_HOST)
        tmp = tempfile.TemporaryDirectory(prefix="dante-bench-")
        conf = Path(tmp.name) / "danted.conf"
        conf.write_text(DANTE_CONF.format(host=REF_HOST, port=port, user=user))
        server = Server("dante-name" if target_name else "dante", tmp=tmp,
                        address=(REF_HOST, port), log_path=Path(tmp.name) / "danted.log",
                        target_name=target_name)
        with open(server.log_path, "wb") as log:  # type: ignore[arg-type]
            # Foreground (no -D); its pid file goes to the temp dir, not /var/run.
            server.proc = subprocess.Popen(
                [DANTED, "-f", str(conf), "-p", str(Path(tmp.name) / "danted.pid")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_ready(server, echo)
        except RuntimeError as exc:
            last = exc
            server.stop()
            continue
        server.info = _dante_version()
        return server
    raise RuntimeError(f"Dante did not start: {last}")


def _dante_version() -> str:
    try:
        out = subprocess.run([DANTED, "-v"], capture_output=True, timeout=5).stdout.decode()
    except (OSError, subprocess.TimeoutExpired):
        return "Dante"
    return out.split(".  ")[0].strip() or "Dante"


def start_floor(echo: tuple[str, int]) -> Server:
    compiler = shutil.which("cc")
    assert compiler

    def build(tmp: Path, port: int) -> list[str]:
        binary = tmp / "floor"
        subprocess.run([compiler, "-O2", "-o", str(binary),
                        str(ROOT / "benchmarks" / "floor.c")], check=True, timeout=120)
        return [str(binary), REF_HOST, str(port)]

    return _start_on_port("floor", echo, build, "benchmarks/floor.c (cc -O2), one thread, epoll")


STARTERS: dict[str, Callable[[tuple[str, int]], Server]] = {
    "fastsocks": start_fastsocks,
    "fastsocks-name": lambda echo: start_fastsocks(echo, target_name=TARGET_NAME),
    "fastsocks-login": lambda echo: start_fastsocks(echo, login=True),
    "fastsocks-socks4": lambda echo: start_fastsocks(echo, "socks4"),
    "fastsocks-http": lambda echo: start_fastsocks(echo, "http"),
    "fastsocks-splice": lambda echo: start_fastsocks(echo, bulk="splice"),
    "microsocks": start_microsocks,
    "microsocks-name": lambda echo: start_microsocks(echo, target_name=TARGET_NAME),
    "microsocks-login": lambda echo: start_microsocks(echo, login=True),
    "dante": start_dante,
    "dante-name": lambda echo: start_dante(echo, target_name=TARGET_NAME),
    "floor": start_floor,
}


def missing(name: str) -> str | None:
    """Why ``name`` cannot be benchmarked here, or None."""
    if name.startswith("microsocks") and shutil.which("microsocks") is None:
        return "microsocks is not installed; " + SETUP_HINT.format(pkg="microsocks")
    if name.startswith("dante") and not os.access(DANTED, os.X_OK):
        return f"Dante ({DANTED}) is not installed; " + SETUP_HINT.format(pkg="dante-server")
    if name == "floor" and shutil.which("cc") is None:
        return "a C compiler (cc) is needed to build benchmarks/floor.c; " + SETUP_HINT.format(
            pkg="gcc")
    return None


# -- measurements ----------------------------------------------------------------------


@dataclass
class Plan:
    duration: float
    repeat: int
    idle_connections: int
    idle_hold: float
    pause: float = 0.3
    groups: tuple[str, ...] = GROUPS
    udp_rate: float = UDP_RATE


def _target_cpu(target: bench.LocalTarget) -> float:
    return bench.ProcessTree(target.pid).cpu_seconds()


def _busy_ticks() -> tuple[int, int]:
    """Clock ticks of the whole machine (/proc/stat): (user+nice+system, irq+softirq).

    Interrupt and softirq time (much of loopback TCP's receive path) is not
    charged to any process, so it is kept apart instead of counted as others'.
    """
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:8]]
    return v[0] + v[1] + v[2], v[5] + v[6]


def measure_round(server: Server, sink: bench.LocalTarget, echo: bench.LocalTarget,
                  plan: Plan, log: Callable[[str], None],
                  udp_echo: bench.LocalTarget | None = None,
                  udp_sink: bench.LocalTarget | None = None) -> list[dict[str, Any]]:
    """Every measurement of ``plan.groups`` once for ``server``; a list of raw results."""
    out: list[dict[str, Any]] = []
    proxy = server.address
    pid = server.pid
    name = server.target_name
    # A name or login row measures the handshake only (the relay after it is another
    # row's); a bulk row, throughput only.
    groups = tuple(g for g in plan.groups if g == "handshake") if name or server.auth \
        else tuple(g for g in plan.groups if g == "throughput") if server.name in BULK_ROWS \
        else plan.groups
    asked = (name, echo.address[1]) if name else echo.address

    tree = bench.ProcessTree(pid) if pid else None

    def one(key: str, cfg: bench.Config, target: bench.LocalTarget) -> dict[str, Any] | None:
        # Everything on the machine during the run, to tell how much of it was
        # someone else's load (this machine is shared and noisy).
        t_cpu0, busy0, wall0 = _target_cpu(target), _busy_ticks(), time.monotonic()
        gen0, srv0 = time.process_time(), tree.cpu_seconds() if tree else 0.0
        try:
            result = bench.run(cfg)
        except (OSError, bench.SocksError, RuntimeError) as exc:
            log(f"  {server.name} {key}: FAILED: {exc}")
            out.append({"server": server.name, "measurement": key, "run_error": str(exc)})
            return None
        wall = time.monotonic() - wall0
        target_cpu = _target_cpu(target) - t_cpu0
        ours = (time.process_time() - gen0 + target_cpu
                + ((tree.cpu_seconds() - srv0) if tree else 0.0))
        busy1 = _busy_ticks()
        busy = (busy1[0] - busy0[0]) / bench.CLK_TCK
        irq = (busy1[1] - busy0[1]) / bench.CLK_TCK
        result["target_cpu_s"] = round(target_cpu, 3)
        result["machine_busy_cores"] = round(busy / wall, 3)
        result["machine_irq_cores"] = round(irq / wall, 3)
        result["other_load_cores"] = round(max(0.0, busy - ours) / wall, 3)
        result["server"] = server.name
        result["measurement"] = key
        out.append(result)
        time.sleep(plan.pause)
        return result

    if proxy is not None:
        # Warm the server up (lazy imports, first allocations; a name row's
        # name into the DNS cache), then measure memory per idle connection
        # before bulk runs leave freed-but-kept heap.
        try:
            for _ in range(20):
                with bench.open_connection(proxy, asked, protocol=server.protocol,
                                           auth=server.auth) as sock:
                    sock.sendall(b"w")
                    sock.recv(1)
        except (OSError, bench.SocksError) as exc:
            log(f"  {server.name} warm-up: FAILED: {exc}")
            return [{"server": server.name, "measurement": "warm-up", "run_error": str(exc)}]
        time.sleep(plan.pause)
    if proxy is not None and "idle" in groups:
        r = one("idle", bench.Config(mode="idle", proxy=proxy, protocol=server.protocol,
                                     target=echo.address,
                                     connections=plan.idle_connections, concurrency=32,
                                     duration=plan.idle_hold, server_pid=pid), echo)
        if r:
            log(f"  {server.name} idle: {r['opened']}/{r['requested']} open, "
                f"{_f(r.get('server_kib_per_connection'), '{:.2f}')} KiB/conn RSS, "
                f"{_f(r.get('server_pss_kib_per_connection'), '{:.2f}')} KiB/conn PSS")
    for streams in (1, 8) if "throughput" in groups else ():
        r = one(f"throughput{streams}", bench.Config(
            mode="throughput", proxy=proxy, protocol=server.protocol, target=sink.address,
            streams=streams,
            duration=plan.duration, server_pid=pid), sink)
        if r:
            log(f"  {server.name} {streams} stream(s): {r['gbit_per_s']:.2f} Gbit/s"
                + (f", {_f(r.get('server_cpu_s_per_gib'), '{:.3f}')} CPU-s/GiB" if pid else ""))
    for conc in (1, 64) if "handshake" in groups else ():
        r = one(f"handshake{conc}", bench.Config(
            mode="handshake", proxy=proxy, protocol=server.protocol, target=echo.address,
            target_name=name, concurrency=conc, auth=server.auth,
            duration=plan.duration, server_pid=pid), echo)
        if r:
            log(f"  {server.name} c={conc}: {r['per_s']:.0f} handshakes/s, p50 "
                f"{r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms"
                + (f", {_f(r.get('server_cpu_us_per_handshake'), '{:.0f}')} CPU-µs/handshake"
                   if pid else "")
                + (f", errors {r['errors']}" if r["errors"] else ""))
    if "udp" not in groups or udp_echo is None or udp_sink is None \
            or server.name in NO_UDP:
        return out
    for conc in (1, 32):
        r = one(f"udp_rtt{conc}", bench.Config(
            mode="udp-rtt", proxy=proxy, concurrency=conc,
            target=server.udp_fronts.get(udp_echo.address, udp_echo.address),
            duration=plan.duration, server_pid=pid), udp_echo)
        if r:
            log(f"  {server.name} UDP c={conc}: {r['per_s']:.0f} round trips/s, p50 "
                f"{r['p50_us']:.0f} µs, p99 {r['p99_us']:.0f} µs, {r['lost']} lost"
                + (f", {_f(r.get('server_cpu_us_per_round_trip'), '{:.1f}')} CPU-µs/round trip"
                   if pid else "")
                + (f", errors {r['errors']}" if r["errors"] else ""))
    for rate in (None, plan.udp_rate):
        r = one("udp_oneway" if rate is None else "udp_paced", bench.Config(
            mode="udp-oneway", proxy=proxy, rate=rate,
            target=server.udp_fronts.get(udp_sink.address, udp_sink.address),
            duration=plan.duration, server_pid=pid), udp_sink)
        if r and server.udp_fronts:
            # The generator's "target" was the forwarder's front socket: drops
            # counted there were the relay's, and the sink's are not known.
            r["dropped_at_relay"], r["dropped_at_sink"] = r.get("dropped_at_sink"), None
        if r:
            log(f"  {server.name} UDP one-way {'unpaced' if rate is None else f'{rate:g}/s'}: "
                f"sent {r['sent_per_s']:.0f}/s, received {_f(r.get('received_per_s'), '{:.0f}')}/s"
                f", loss {_f(r.get('loss_pct'), '{:.2f}')} % (at the relay's socket "
                f"{r.get('dropped_at_relay')}, at the sink's {r.get('dropped_at_sink')})"
                + (f", {_f(r.get('server_cpu_us_per_datagram'), '{:.2f}')} CPU-µs/datagram"
                   if pid else ""))
    return out


def _f(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)


# -- summary -------------------------------------------------------------------------------


def _values(runs: list[dict[str, Any]], server: str, key: str,
            getter: Callable[[dict[str, Any]], float | None]) -> list[float]:
    vals = []
    for r in runs:
        if r.get("server") == server and r.get("measurement") == key and "run_error" not in r:
            v = getter(r)
            if v is not None:
                vals.append(float(v))
    return vals


def _median(vals: list[float]) -> float | None:
    return statistics.median(vals) if vals else None


METRICS: dict[str, tuple[str, Callable[[dict[str, Any]], float | None]]] = {
    "gbit_1": ("throughput1", lambda r: r["gbit_per_s"]),
    "gbit_8": ("throughput8", lambda r: r["gbit_per_s"]),
    "cpu_s_per_gib_1": ("throughput1", lambda r: r.get("server_cpu_s_per_gib")),
    "cpu_s_per_gib_8": ("throughput8", lambda r: r.get("server_cpu_s_per_gib")),
    "hs_1": ("handshake1", lambda r: r["per_s"]),
    "hs_1_p50_ms": ("handshake1", lambda r: r["p50_ms"]),
    "hs_1_p99_ms": ("handshake1", lambda r: r["p99_ms"]),
    "hs_64": ("handshake64", lambda r: r["per_s"]),
    "hs_64_p50_ms": ("handshake64", lambda r: r["p50_ms"]),
    "hs_64_p99_ms": ("handshake64", lambda r: r["p99_ms"]),
    "cpu_us_per_hs_1": ("handshake1", lambda r: r.get("server_cpu_us_per_handshake")),
    "cpu_us_per_hs_64": ("handshake64", lambda r: r.get("server_cpu_us_per_handshake")),
    "idle_kib_rss": ("idle", lambda r: r.get("server_kib_per_connection")),
    "idle_kib_pss": ("idle", lambda r: r.get("server_pss_kib_per_connection")),
    "idle_opened": ("idle", lambda r: r.get("opened")),
    # Evidence: what the generator and the targets themselves used.
    "gen_share_8": ("throughput8", lambda r: r["generator_cpu_s"] / r["seconds"]),
    "gen_cpu_s_per_gib_8": ("throughput8", lambda r: r.get("generator_cpu_s_per_gib")),
    "sink_share_8": ("throughput8", lambda r: r["target_cpu_s"] / r["seconds"]),
    "gen_share_1": ("throughput1", lambda r: r["generator_cpu_s"] / r["seconds"]),
    "sink_share_1": ("throughput1", lambda r: r["target_cpu_s"] / r["seconds"]),
    "gen_share_hs64": ("handshake64", lambda r: r.get("generator_cpu_share")),
    "gen_us_per_hs64": ("handshake64", lambda r: r.get("generator_cpu_us_per_handshake")),
    "gen_sys_share_hs64": ("handshake64", lambda r: r.get("generator_cpu_system_share")),
    "echo_us_per_hs64": ("handshake64", lambda r: (r["target_cpu_s"] / r["handshakes"] * 1e6)
                         if r["handshakes"] else None),
    "hs_errors": ("handshake64", lambda r: sum(r["errors"].values())),
    "other_load": ("throughput8", lambda r: r.get("other_load_cores")),
    "other_load_hs64": ("handshake64", lambda r: r.get("other_load_cores")),
    # UDP ASSOCIATE
    "udp_rtt_1": ("udp_rtt1", lambda r: r["per_s"]),
    "udp_rtt_1_p50_us": ("udp_rtt1", lambda r: r["p50_us"]),
    "udp_rtt_1_p99_us": ("udp_rtt1", lambda r: r["p99_us"]),
    "udp_rtt_32": ("udp_rtt32", lambda r: r["per_s"]),
    "udp_rtt_32_p50_us": ("udp_rtt32", lambda r: r["p50_us"]),
    "udp_rtt_32_p99_us": ("udp_rtt32", lambda r: r["p99_us"]),
    "udp_rtt_32_lost": ("udp_rtt32", lambda r: r["lost"]),
    "cpu_us_per_rtt_1": ("udp_rtt1", lambda r: r.get("server_cpu_us_per_round_trip")),
    "cpu_us_per_rtt_32": ("udp_rtt32", lambda r: r.get("server_cpu_us_per_round_trip")),
    "udp_ow_sent": ("udp_oneway", lambda r: r["sent_per_s"]),
    "udp_ow_recv": ("udp_oneway", lambda r: r.get("received_per_s")),
    "udp_ow_loss": ("udp_oneway", lambda r: r.get("loss_pct")),
    "udp_ow_relay_drops": ("udp_oneway", lambda r: r.get("dropped_at_relay")),
    "udp_ow_sink_drops": ("udp_oneway", lambda r: r.get("dropped_at_sink")),
    "cpu_us_per_dgram_ow": ("udp_oneway", lambda r: r.get("server_cpu_us_per_datagram")),
    "udp_paced_sent": ("udp_paced", lambda r: r["sent_per_s"]),
    "udp_paced_recv": ("udp_paced", lambda r: r.get("received_per_s")),
    "udp_paced_loss": ("udp_paced", lambda r: r.get("loss_pct")),
    "cpu_us_per_dgram_paced": ("udp_paced", lambda r: r.get("server_cpu_us_per_datagram")),
    "gen_share_rtt32": ("udp_rtt32", lambda r: r.get("generator_cpu_share")),
    "gen_us_per_rtt32": ("udp_rtt32", lambda r: r.get("generator_cpu_us_per_round_trip")),
    "echo_us_per_rtt32": ("udp_rtt32", lambda r: (r["target_cpu_s"] / r["round_trips"] * 1e6)
                          if r["round_trips"] else None),
    "gen_share_ow": ("udp_oneway", lambda r: r.get("generator_cpu_share")),
    "gen_us_per_dgram_ow": ("udp_oneway", lambda r: r.get("generator_cpu_us_per_datagram")),
    "sink_share_ow": ("udp_oneway", lambda r: r["target_cpu_s"] / r["seconds"]),
    "gen_share_paced": ("udp_paced", lambda r: r.get("generator_cpu_share")),
    "other_load_rtt32": ("udp_rtt32", lambda r: r.get("other_load_cores")),
    "other_load_ow": ("udp_oneway", lambda r: r.get("other_load_cores")),
}


def summarize(runs: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for name in names:
        row: dict[str, Any] = {}
        for metric, (key, getter) in METRICS.items():
            vals = _values(runs, name, key, getter)
            row[metric] = _median(vals)
            row[metric + "_all"] = [round(v, 4) for v in vals]
        summary[name] = row
    return summary


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return ""
    return f"{a / b:.2f}×"


def _num(v: float | None, fmt: str) -> str:
    return "—" if v is None else fmt.format(v)


def markdown(summary: dict[str, dict[str, Any]], names: list[str]) -> str:
    direct = summary["direct"]
    micro = summary.get("microsocks")
    vs = "vs direct / vs microsocks" if micro is not None else "vs direct"
    head = ("| server | 1 stream Gbit/s (vs direct) | 8 streams Gbit/s (vs direct) "
            f"| handshakes/s c=1 ({vs}) | p50 / p99 ms c=1 "
            f"| handshakes/s c=64 ({vs}) | p50 / p99 ms c=64 "
            "| server CPU-s/GiB 1 / 8 streams | server CPU-µs/handshake c=64 "
            "| server KiB/idle conn RSS (PSS) |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for name in names:
        s = summary[name]

        def gb(k: str) -> str:
            r = _ratio(s[k], direct[k]) if name != "direct" else "1.00×"
            return f"{_num(s[k], '{:.2f}')} ({r})" if s[k] is not None else "—"

        def hs(k: str) -> str:
            if s[k] is None:
                return "—"
            vs_direct = "1.00×" if name == "direct" else _ratio(s[k], direct[k])
            if micro is None:
                return f"{s[k]:.0f} ({vs_direct})"
            vs_micro = _ratio(s[k], micro[k]) if name != "direct" else "—"
            return f"{s[k]:.0f} ({vs_direct} / {vs_micro or '—'})"

        def lat(c: int) -> str:
            return f"{_num(s[f'hs_{c}_p50_ms'], '{:.2f}')} / {_num(s[f'hs_{c}_p99_ms'], '{:.2f}')}"

        if name == "direct":
            cpu, cpu_hs, idle = "—", "—", "—"
        else:
            cpu = f"{_num(s['cpu_s_per_gib_1'], '{:.3f}')} / {_num(s['cpu_s_per_gib_8'], '{:.3f}')}"
            cpu_hs = _num(s["cpu_us_per_hs_64"], "{:.0f}")
            idle = (f"{_num(s['idle_kib_rss'], '{:.2f}')} "
                    f"({_num(s['idle_kib_pss'], '{:.2f}')})")
        lines.append(f"| {name} | {gb('gbit_1')} | {gb('gbit_8')} | {hs('hs_1')} | {lat(1)} "
                     f"| {hs('hs_64')} | {lat(64)} | {cpu} | {cpu_hs} | {idle} |")
    return "\n".join(lines)


def name_markdown(summary: dict[str, dict[str, Any]], target_name: str) -> str:
    """Each server asked by name beside by address, from the same run: the name
    path's cost, and fastsocks' name path beside microsocks' (both by name)."""
    bases = [b for b in ("fastsocks", "microsocks", "dante") if f"{b}-name" in summary]
    empty: dict[str, Any] = {key: None for key in METRICS}
    head = "| handshake, CONNECT to the echo |"
    for base in bases:
        cached = ", cached" if base == "fastsocks" else ""
        head += f" {base} (IPv4 address) | {base}-name ({target_name}{cached}) | name / address |"
    versus = "fastsocks-name" in summary and "microsocks-name" in summary
    if versus:
        head += " fastsocks-name / microsocks-name |"
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for label, key, fmt in (
            ("handshakes/s c=1", "hs_1", "{:.0f}"),
            ("handshakes/s c=64", "hs_64", "{:.0f}"),
            ("p50 / p99 ms c=1", "hs_1_p50_ms", "{:.3f}"),
            ("p50 / p99 ms c=64", "hs_64_p50_ms", "{:.3f}"),
            ("server CPU-µs/handshake c=1", "cpu_us_per_hs_1", "{:.0f}"),
            ("server CPU-µs/handshake c=64", "cpu_us_per_hs_64", "{:.0f}")):
        def cell(s: dict[str, Any]) -> str:
            text = _num(s[key], fmt)
            if key.endswith("_p50_ms"):
                text += " / " + _num(s[key.replace("p50", "p99")], fmt)
            return text

        line = f"| {label} |"
        for base in bases:
            by_address, by_name = summary.get(base, empty), summary[f"{base}-name"]
            line += (f" {cell(by_address)} | {cell(by_name)} "
                     f"| {_ratio(by_name[key], by_address[key]) or '—'} |")
        if versus:
            ratio = _ratio(summary["fastsocks-name"][key], summary["microsocks-name"][key])
            line += f" {ratio or '—'} |"
        lines.append(line)
    return "\n".join(lines)


def evidence_markdown(summary: dict[str, dict[str, Any]], names: list[str]) -> str:
    head = ("| path | generator CPU, 1 / 8 streams (cores) | sink CPU, 1 / 8 streams (cores) "
            "| generator CPU-s/GiB, 8 streams | generator CPU c=64 (cores) "
            "| generator CPU-µs/handshake c=64 (kernel share) | echo CPU-µs/handshake c=64 "
            "| other processes' load, 8 streams / c=64 (cores) |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for name in names:
        s = summary[name]
        lines.append(
            f"| {name} | {_num(s['gen_share_1'], '{:.2f}')} / {_num(s['gen_share_8'], '{:.2f}')} "
            f"| {_num(s['sink_share_1'], '{:.2f}')} / {_num(s['sink_share_8'], '{:.2f}')} "
            f"| {_num(s['gen_cpu_s_per_gib_8'], '{:.3f}')} "
            f"| {_num(s['gen_share_hs64'], '{:.2f}')} "
            f"| {_num(s['gen_us_per_hs64'], '{:.0f}')} ({_num(s['gen_sys_share_hs64'], '{:.0%}')}) "
            f"| {_num(s['echo_us_per_hs64'], '{:.0f}')} "
            f"| {_num(s['other_load'], '{:.2f}')} / {_num(s['other_load_hs64'], '{:.2f}')} |")
    return "\n".join(lines)


def udp_markdown(summary: dict[str, dict[str, Any]], names: list[str], rate: float) -> str:
    direct = summary["direct"]
    head = ("| server | round trips/s c=1 (vs direct) | p50 / p99 µs c=1 (p50 vs direct) "
            "| round trips/s c=32 (vs direct) | p50 / p99 µs c=32 "
            "| server CPU-µs/round trip c=1 / c=32 "
            "| one-way unpaced: sent/s → received/s (received vs direct) | loss unpaced "
            f"| paced {rate:,.0f}/s: received/s | loss paced "
            "| server CPU-µs/datagram unpaced / paced |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for name in names:
        if name in NO_UDP:
            lines.append(f"| {name} | {NO_UDP[name]} |" + " — |" * (head.count(" | ") - 1))
            continue
        s = summary[name]

        def vs(k: str) -> str:
            if s[k] is None:
                return "—"
            r = "1.00×" if name == "direct" else (_ratio(s[k], direct[k]) or "—")
            return f"{s[k]:,.0f} ({r})"

        def lat(c: int) -> str:
            return (f"{_num(s[f'udp_rtt_{c}_p50_us'], '{:.0f}')} / "
                    f"{_num(s[f'udp_rtt_{c}_p99_us'], '{:.0f}')}")

        p50_delta = ""
        if name != "direct" and s["udp_rtt_1_p50_us"] is not None \
                and direct["udp_rtt_1_p50_us"] is not None:
            p50_delta = f" ({s['udp_rtt_1_p50_us'] - direct['udp_rtt_1_p50_us']:+.0f})"
        ow = (f"{_num(s['udp_ow_sent'], '{:,.0f}')} → {vs('udp_ow_recv')}"
              if s["udp_ow_sent"] is not None else "—")
        if name == "direct":
            cpu_rtt, cpu_dg = "—", "—"
        else:
            cpu_rtt = (f"{_num(s['cpu_us_per_rtt_1'], '{:.1f}')} / "
                       f"{_num(s['cpu_us_per_rtt_32'], '{:.1f}')}")
            cpu_dg = (f"{_num(s['cpu_us_per_dgram_ow'], '{:.2f}')} / "
                      f"{_num(s['cpu_us_per_dgram_paced'], '{:.2f}')}")
        lines.append(
            f"| {name} | {vs('udp_rtt_1')} | {lat(1)}{p50_delta} | {vs('udp_rtt_32')} | {lat(32)} "
            f"| {cpu_rtt} | {ow} | {_num(s['udp_ow_loss'], '{:.1f} %')} "
            f"| {_num(s['udp_paced_recv'], '{:,.0f}')} | {_num(s['udp_paced_loss'], '{:.2f} %')} "
            f"| {cpu_dg} |")
    return "\n".join(lines)


def udp_evidence_markdown(summary: dict[str, dict[str, Any]], names: list[str]) -> str:
    head = ("| path | generator CPU c=32 (cores) | generator CPU-µs/round trip c=32 "
            "| echo CPU-µs/round trip c=32 | generator CPU unpaced / paced (cores) "
            "| generator CPU-µs/datagram unpaced | sink CPU unpaced (cores) "
            "| unpaced loss at the relay's / the sink's socket (datagrams) "
            "| other processes' load c=32 / unpaced (cores) |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for name in names:
        if name in NO_UDP:
            continue
        s = summary[name]
        lines.append(
            f"| {name} | {_num(s['gen_share_rtt32'], '{:.2f}')} "
            f"| {_num(s['gen_us_per_rtt32'], '{:.1f}')} | {_num(s['echo_us_per_rtt32'], '{:.1f}')} "
            f"| {_num(s['gen_share_ow'], '{:.2f}')} / {_num(s['gen_share_paced'], '{:.2f}')} "
            f"| {_num(s['gen_us_per_dgram_ow'], '{:.2f}')} | {_num(s['sink_share_ow'], '{:.2f}')} "
            f"| {_num(s['udp_ow_relay_drops'], '{:,.0f}')} "
            f"/ {_num(s['udp_ow_sink_drops'], '{:,.0f}')} "
            f"| {_num(s['other_load_rtt32'], '{:.2f}')} / {_num(s['other_load_ow'], '{:.2f}')} |")
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------


def _machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "python": platform.python_version(),
            "loadavg": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="short runs (1 s, 1 round, 300 idle connections) to check the set-up")
    p.add_argument("--servers", default=",".join(SERVERS),
                   help=f"comma-separated subset of {','.join(SERVERS)} (all)")
    p.add_argument("--repeat", type=int, help="rounds; each figure is the median (3; --quick 1)")
    p.add_argument("--duration", type=float,
                   help="seconds per throughput / handshake run (3; --quick 1)")
    p.add_argument("--idle-connections", type=int,
                   help="idle relayed connections held per server (2000; --quick 300; "
                   f"at most {bench.MAX_CONNECTIONS})")
    p.add_argument("--only", metavar="LIST", default=",".join(GROUPS),
                   help=f"comma-separated subset of {','.join(GROUPS)} (all): which rows "
                   "to measure, e.g. --only udp")
    p.add_argument("--udp-rate", type=float, default=UDP_RATE,
                   help=f"datagrams/s of the paced UDP one-way run ({UDP_RATE:g})")
    p.add_argument("--target-name", metavar="NAME", default=TARGET_NAME,
                   help=f"the name the fastsocks-name row asks for ({TARGET_NAME}); it must "
                   "lead to loopback (the echo listens on each loopback address it has)")
    p.add_argument("--time-wait", metavar="N", type=int, default=16000,
                   help="before each server starts, wait (at most 60 s) until at most N "
                        "sockets are in TIME_WAIT (16000: enough for port 0 to bind; lower "
                        "is fairer to the rows that run later, and slower)")
    p.add_argument("--json", metavar="PATH", help="also write every raw result as JSON here")
    args = p.parse_args(argv)
    groups = tuple(g.strip() for g in args.only.split(",") if g.strip())
    if not groups or any(g not in GROUPS for g in groups):
        p.error(f"--only takes a comma-separated subset of {','.join(GROUPS)}")
    if not 1 <= args.udp_rate <= bench.UDP_MAX_RATE:
        p.error(f"--udp-rate must be 1..{bench.UDP_MAX_RATE}")

    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    unknown = [n for n in names if n not in SERVERS]
    if unknown:
        p.error(f"unknown server(s) {unknown}; choose from {','.join(SERVERS)}")
    plan = Plan(
        duration=args.duration or (1.0 if args.quick else 3.0),
        repeat=args.repeat or (1 if args.quick else 3),
        idle_connections=args.idle_connections or (300 if args.quick else 2000),
        idle_hold=0.5 if args.quick else 1.0,
        groups=groups,
        udp_rate=args.udp_rate,
    )
    if not 1 <= plan.repeat <= 20 or not 0 < plan.duration <= 60:
        p.error("--repeat must be 1..20 and --duration in (0, 60]")
    if not 1 <= plan.idle_connections <= bench.MAX_CONNECTIONS:
        p.error(f"--idle-connections must be 1..{bench.MAX_CONNECTIONS}")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    notes: list[str] = []
    active: list[str] = []
    for name in names:
        why = missing(name)
        if name in NO_UDP and not any(g in TCP_GROUPS for g in groups):
            why = f"{NO_UDP[name]}, and only UDP rows were asked for"
        if (name in NAME_ROWS or name in LOGIN_ROWS) and "handshake" not in groups \
                or name in BULK_ROWS and "throughput" not in groups:
            why = f"{NO_UDP[name]}, and --only leaves them out"
        if why:
            notes.append(f"{name} skipped: {why}")
            log(f"NOTE: {name} skipped: {why}")
        else:
            active.append(name)
    command = "python benchmarks/run.py" + ("" if argv is None and len(sys.argv) <= 1 else
                                           " " + shlex.join(sys.argv[1:] if argv is None else argv))
    started = datetime.datetime.now(datetime.timezone.utc)
    loadavg_start = os.getloadavg()
    runs: list[dict[str, Any]] = []
    infos: dict[str, str] = {}
    t_start = time.monotonic()
    target_name = args.target_name
    starters = {**STARTERS,
                "fastsocks-name": lambda echo: start_fastsocks(echo, target_name=target_name),
                "microsocks-name": lambda echo: start_microsocks(echo, target_name=target_name),
                "dante-name": lambda echo: start_dante(echo, target_name=target_name)}
    echo_hosts: tuple[str, ...] = ("127.0.0.1",)
    if any(n in NAME_ROWS for n in active):
        try:  # wherever the name leads on loopback (127.0.0.1, ::1), the echo answers
            bench.Config(mode="handshake", proxy=("127.0.0.1", 1),
                         target_name=target_name).validate()
            echo_hosts = bench.name_hosts(target_name)
        except ValueError as exc:
            p.error(str(exc))
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(bench.LocalTarget("sink", "process"))
        echo = stack.enter_context(bench.LocalTarget("echo", "process", echo_hosts[0],
                                                     echo_hosts[1:]))
        log(f"targets: sink {sink.address[0]}:{sink.address[1]} (pid {sink.pid}), "
            f"echo {', '.join(format_peer((h, echo.address[1])) for h in echo.hosts)} "
            f"(pid {echo.pid})")
        udp_echo = udp_sink = None
        if "udp" in groups:
            # In their own processes: in a thread of this one, a UDP target
            # shares the GIL with the generator on every datagram (measured
            # slower; benchmarks/README.md).
            udp_echo = stack.enter_context(bench.LocalTarget("udp-echo", "process"))
            udp_sink = stack.enter_context(bench.LocalTarget("udp-sink", "process"))
            UDP_TARGETS.update(echo=udp_echo.address, sink=udp_sink.address)
            log(f"UDP targets: echo {format_peer(udp_echo.address)} (pid {udp_echo.pid}), "
                f"sink {format_peer(udp_sink.address)} (pid {udp_sink.pid})")
        for rnd in range(plan.repeat):
            for name in ["direct", *active]:
                log(f"round {rnd + 1}/{plan.repeat}: {name}")
                settle_time_wait(log, args.time_wait)
                if name == "direct":
                    server = Server("direct")
                else:
                    try:
                        server = starters[name](echo.address)
                    except RuntimeError as exc:
                        log(f"  {name}: could not start: {exc}")
                        notes.append(f"{name} round {rnd + 1}: could not start: {exc}")
                        continue
                    infos[name] = server.info
                try:
                    for r in measure_round(server, sink, echo, plan, log, udp_echo, udp_sink):
                        r["round"] = rnd + 1
                        runs.append(r)
                        if "run_error" in r:
                            notes.append(f"{name} round {rnd + 1} {r['measurement']}: "
                                         f"{r['run_error']}")
                        elif r.get("errors"):
                            notes.append(f"{name} round {rnd + 1} {r['measurement']}: errors "
                                         f"{r['errors']} (first: {r.get('first_error')})")
                        if r.get("measurement") == "idle" and "run_error" not in r and \
                                r.get("opened", 0) < r.get("requested", 0):
                            notes.append(f"{name} round {rnd + 1} idle: only {r['opened']} of "
                                         f"{r['requested']} connections opened")
                finally:
                    server.stop()
    elapsed = time.monotonic() - t_start

    shown = ["direct", *active]
    summary = summarize(runs, shown)
    tcp = any(g in TCP_GROUPS for g in groups)
    udp = "udp" in groups
    print(f"## SOCKS5 servers on loopback: {', '.join(active) or 'none'} vs direct "
          f"{'TCP' if not udp else 'UDP' if not tcp else 'TCP and UDP'}\n")
    print(f"Command: `{command}`  ")
    m = _machine()
    print(f"Machine: {m['cpus']} CPUs ({m['cpu_model']}), Linux {m['kernel']}, "
          f"Python {m['python']}; {started:%Y-%m-%d %H:%M} UTC, took {elapsed:.0f} s.  ")
    print(f"Each figure is the median of {plan.repeat} round(s); {plan.duration:g} s per "
          f"throughput/handshake/UDP run"
          + (f"; {plan.idle_connections} idle connections" if "idle" in groups else "")
          + f"; rows measured: {', '.join(groups)}.  ")
    for name in active:
        print(f"{name}: {infos.get(name, '?')}  ")
    print()
    if tcp:
        print(markdown(summary, shown))
        print()
        if any(n in NAME_ROWS for n in active) and "handshake" in groups:
            print(f"By name: each server asked for the echo as {target_name!r} (SOCKS5 ATYP "
                  f"X'03'; in fastsocks' DNS cache from the warm-up on, resolved on every "
                  f"request by microsocks and Dante; the echo listens on "
                  f"{', '.join(echo_hosts)}) beside its IPv4 address:\n")
            print(name_markdown(summary, target_name))
            print()
        print("Generator and targets (evidence that the load generator is not the limit; "
              "CPU in cores = CPU-seconds per second of the run):\n")
        print(evidence_markdown(summary, shown))
        print()
    if udp:
        udp_names = shown + [n for n in names if n in NO_UDP and n not in shown]
        print(f"UDP ASSOCIATE: {bench.UDP_RTT_SIZE}-byte round trips to a UDP echo (c "
              f"associations, one datagram in flight each); one association sending "
              f"{bench.UDP_ONEWAY_SIZE}-byte datagrams to a UDP sink, unpaced and paced; "
              "received = counted by the sink; server CPU per datagram received:\n")
        print(udp_markdown(summary, [n for n in udp_names if n in summary or n in NO_UDP],
                           plan.udp_rate))
        print()
        print("UDP generator and targets (CPU in cores = CPU-seconds per second of the run):\n")
        print(udp_evidence_markdown(summary, shown))
    if notes:
        print("\nNotes:\n")
        for note in notes:
            print(f"- {note}")
    if args.json:
        data = {
            "command": command,
            "started_utc": started.isoformat(),
            "seconds": round(elapsed, 1),
            "machine": {**m, "loadavg_start": loadavg_start},
            "plan": plan.__dict__,
            "servers": {"direct": "no proxy", **infos},
            "notes": notes,
            "summary": summary,
            "runs": runs,
        }
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
        log(f"raw results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
