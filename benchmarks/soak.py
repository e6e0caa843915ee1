#!/usr/bin/env python3
"""Mixed-load soak of one fastsocks process: does anything grow?

    python benchmarks/soak.py [--minutes 10] [--relay auto|splice|protocol]
                              [--loop auto|uvloop|asyncio] [--sample 30]

Starts fastsocks (127.0.0.1 port 0, handshake timeout 2 s) and an echo target
in its own process, then for ``--minutes`` runs all of these at once against
the one server, from this process (uvloop when installed):

* handshakes: 8 clients doing CONNECT + a 32-byte echo + close, in a loop;
* bulk: 2 clients each echoing 16 MiB through the proxy, SHA-256 checked;
* idle: 500 relayed connections held open, 50 of them replaced every 5 s;
* garbage: 4 clients sending random bytes, wrong versions, truncated
  requests, oversized NMETHODS, bad commands and address types, resets;
* slowloris: 200 clients that connect and say nothing or dribble a byte every
  0.5 s; each is cut at the handshake timeout and replaced;
* refused: 2 clients asking for a port nothing listens on (half of them
  sending bytes after the request): each must get X'05' (connection refused)
  and the close;
* stalled: 4 clients asking for a target whose accept queue is full, so the
  server's connect hangs: half wait for the connect timeout's X'04', half
  walk away during the connect.

It samples the server's RSS (VmRSS) and descriptors (/proc/PID/fd, sockets
and pipes apart) every ``--sample`` seconds and prints them, with the
operation counts, at the start (after a 20 s ramp), the middle and the end of
the load, and again after all clients are gone.  Loopback only; every loop is
bounded by the deadline.  Exits 1 if an integrity check failed, a well-behaved
client failed, the server died, or it logged an ERROR or a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import hashlib
import os
import platform
import random
import re
import resource
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HANDSHAKE_TIMEOUT = 2.0
CONNECT_TIMEOUT = 2.0
GREETING = b"\x05\x01\x00"
RAMP_SECONDS = 20.0

_ECHO_TARGET = r"""
import asyncio, resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
    def data_received(self, data):
        self.transport.write(data)
    def pause_writing(self):
        self.transport.pause_reading()
    def resume_writing(self):
        self.transport.resume_reading()
    def eof_received(self):
        return False

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, "127.0.0.1", 0, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()

asyncio.run(main())
"""


# -- the processes ---------------------------------------------------------------


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Server:
    def __init__(self, args: list[str], log_path: Path) -> None:
        self.log_path = log_path
        argv = [sys.executable, "-m", "fastsocks", "--listen", "127.0.0.1:0", "--workers", "1",
                "--handshake-timeout", str(HANDSHAKE_TIMEOUT),
                "--connect-timeout", str(CONNECT_TIMEOUT), *args]
        self.command = " ".join(argv[1:])
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=_env())
        deadline = time.monotonic() + 15
        while True:
            match = re.search(r"listening on 127\.0\.0\.1:(\d+) \((.*)\)", self.log)
            if match:
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise SystemExit(f"fastsocks did not start:\n{self.log}")
            time.sleep(0.05)
        self.address = ("127.0.0.1", int(match.group(1)))
        self.description = match.group(2)

    @property
    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def sample(self) -> dict[str, int]:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        rss = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE).group(1))
        kinds: collections.Counter[str] = collections.Counter()
        base = f"/proc/{self.proc.pid}/fd"
        for name in os.listdir(base):
            try:
                link = os.readlink(f"{base}/{name}")
            except FileNotFoundError:
                continue
            kinds[link.split(":", 1)[0] if ":" in link else "file"] += 1
        return {"rss_kib": rss, "fds": sum(kinds.values()), "sockets": kinds["socket"],
                "pipes": kinds["pipe"]}

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                return -9
        return self.proc.returncode


class Echo:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _ECHO_TARGET], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=_env())
        self.address = ("127.0.0.1", int(self.proc.stdout.readline()))

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc.stdout.close()


# -- clients ---------------------------------------------------------------------


def request(host: str, port: int, command: int = 1) -> bytes:
    return b"\x05" + bytes((command,)) + b"\x00\x01" + socket.inet_aton(host) + struct.pack(">H", port)


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 5)
    except (OSError, asyncio.TimeoutError):
        pass


async def until_closed(reader: asyncio.StreamReader, limit: int = 4096) -> bytes:
    """What the server sends until it closes (at most ``limit`` bytes)."""
    data = b""
    while len(data) < limit:
        chunk = await reader.read(limit - len(data))
        if not chunk:
            break
        data += chunk
    return data


async def socks_connect(proxy: tuple[str, int], target: tuple[str, int],
                        timeout: float = 10.0) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(*proxy), timeout)
    try:
        writer.write(GREETING + request(*target))
        reply = await asyncio.wait_for(reader.readexactly(12), timeout)
        if reply[:4] != b"\x05\x00\x05\x00":
            raise ConnectionError(f"reply {reply!r}")
    except BaseException:
        await close(writer)
        raise
    return reader, writer


class DeadEnds:
    """Two targets that fail: a port with no listener, and one whose accept queue is full.

    The first refuses every connect (RST); the second drops every SYN, so a
    connect to it stays in progress until the server's connect timeout.
    """

    def __init__(self) -> None:
        self.closed = socket.socket()
        self.closed.bind(("127.0.0.1", 0))  # bound, never listening: ECONNREFUSED
        self.stalled = socket.socket()
        self.stalled.bind(("127.0.0.1", 0))
        self.stalled.listen(0)
        self.fillers = []
        for _ in range(3):  # listen(0) queues one; the others' SYNs are dropped too
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(self.stalled.getsockname())
            self.fillers.append(filler)

    def close(self) -> None:
        for sock in (self.closed, self.stalled, *self.fillers):
            sock.close()


class Load:
    """All the clients, their counters, and the deadline they share."""

    def __init__(self, proxy: tuple[str, int], echo: tuple[str, int], deadline: float,
                 dead: DeadEnds) -> None:
        self.proxy = proxy
        self.echo = echo
        self.deadline = deadline
        self.dead = dead
        self.counts: collections.Counter[str] = collections.Counter()
        self.errors: list[str] = []
        self.rng = random.Random(1928)

    def running(self) -> bool:
        return time.monotonic() < self.deadline

    async def dial(self, who: str, pause: float
                   ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A plain TCP connection to the proxy; None (counted, after ``pause`` s) if it failed."""
        try:
            return await asyncio.wait_for(asyncio.open_connection(*self.proxy), 10)
        except (OSError, asyncio.TimeoutError) as exc:
            self.error(f"{who} connect: {exc!r}")
            await asyncio.sleep(pause)
            return None

    def error(self, what: str) -> None:
        self.counts["errors"] += 1
        if len(self.errors) < 50:
            self.errors.append(what)

    async def handshakes(self) -> None:
        while self.running():
            try:
                reader, writer = await socks_connect(self.proxy, self.echo)
                try:
                    payload = os.urandom(32)
                    writer.write(payload)
                    if await asyncio.wait_for(reader.readexactly(32), 10) != payload:
                        self.error("handshake echo mismatch")
                finally:
                    await close(writer)
                self.counts["handshakes"] += 1
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
                self.error(f"handshake: {exc!r}")
                await asyncio.sleep(0.1)

    async def bulk(self, size: int = 16 << 20) -> None:
        while self.running():
            data = self.rng.randbytes(size)
            try:
                reader, writer = await socks_connect(self.proxy, self.echo)
                try:
                    async def send() -> None:
                        for off in range(0, size, 256 * 1024):
                            writer.write(data[off:off + 256 * 1024])
                            await writer.drain()
                        writer.write_eof()

                    sender = asyncio.ensure_future(send())
                    h = hashlib.sha256()
                    total = 0
                    while True:
                        chunk = await asyncio.wait_for(reader.read(1 << 20), 60)
                        if not chunk:
                            break
                        h.update(chunk)
                        total += len(chunk)
                    await sender
                finally:
                    await close(writer)
                if (total, h.digest()) != (size, hashlib.sha256(data).digest()):
                    self.error(f"bulk integrity: {total} of {size} bytes, or a digest mismatch")
                else:
                    self.counts["bulk_bytes"] += 2 * size
                    self.counts["bulk_transfers"] += 1
            except (OSError, asyncio.TimeoutError) as exc:
                self.error(f"bulk: {exc!r}")
                await asyncio.sleep(0.1)

    async def idle(self, n: int = 500, churn: int = 50, every: float = 5.0) -> None:
        held: collections.deque[asyncio.StreamWriter] = collections.deque()

        async def one() -> None:
            try:
                _, writer = await socks_connect(self.proxy, self.echo)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
                self.error(f"idle: {exc!r}")
                return
            held.append(writer)
            self.counts["idle_opened"] += 1

        try:
            await asyncio.gather(*(one() for _ in range(n)))
            while self.running():
                await asyncio.sleep(every)
                old = [held.popleft() for _ in range(min(churn, len(held)))]
                await asyncio.gather(*(close(w) for w in old))
                await asyncio.gather(*(one() for _ in range(n - len(held))))
        finally:
            await asyncio.gather(*(close(w) for w in held))

    def _garbage(self) -> bytes:
        rng, req = self.rng, request(*self.echo)
        kind = rng.randrange(9)
        if kind == 0:
            return bytes((rng.choice([b for b in range(256) if b != 5]),)) + rng.randbytes(rng.randrange(600))
        if kind == 1:
            return b"\x04\x01\x00\x50\x7f\x00\x00\x01u\x00"
        if kind == 2:
            return b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        if kind == 3:
            return GREETING + req[:rng.randrange(1, len(req))]
        if kind == 4:
            return b"\x05\xff\x00\x01"
        if kind == 5:
            return GREETING + b"\x05\x09" + req[2:]
        if kind == 6:
            return GREETING + b"\x05\x01\x00\x09" + req[4:]
        if kind == 7:
            return b"\x05\x01\x02\x01\x05alice\x06s3cret"
        return GREETING + bytes((rng.choice([b for b in range(256) if b != 5]),)) + rng.randbytes(40)

    async def garbage(self) -> None:
        while self.running():
            opened = await self.dial("garbage", 0.1)
            if opened is None:
                continue
            reader, writer = opened
            try:
                writer.write(self._garbage())
                if self.rng.random() < 0.1:
                    writer.transport.get_extra_info("socket").setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                else:
                    while await asyncio.wait_for(reader.read(4096), HANDSHAKE_TIMEOUT + 5):
                        pass
                self.counts["garbage"] += 1
            except ConnectionError:
                self.counts["garbage"] += 1
            except asyncio.TimeoutError:
                self.error("garbage connection not closed by the server")
            finally:
                await close(writer)

    async def refused(self) -> None:
        """CONNECT to a port nothing listens on: X'05', then the close."""
        target = self.dead.closed.getsockname()
        while self.running():
            opened = await self.dial("refused", 0.1)
            if opened is None:
                continue
            reader, writer = opened
            try:
                early = os.urandom(16) if self.rng.random() < 0.5 else b""
                writer.write(GREETING + request(*target) + early)
                answer = await asyncio.wait_for(until_closed(reader), 10)
                if answer != b"\x05\x00\x05\x05\x00\x01" + bytes(6):
                    self.error(f"refused: got {answer!r}")
                else:
                    self.counts["refused"] += 1
            except (OSError, asyncio.TimeoutError) as exc:
                self.error(f"refused: {exc!r}")
            finally:
                await close(writer)

    async def stalled(self, walk_away: bool) -> None:
        """CONNECT to a target that never answers: the timeout's X'04', or leave first."""
        target = self.dead.stalled.getsockname()
        while self.running():
            opened = await self.dial("stalled", 0.1)
            if opened is None:
                continue
            reader, writer = opened
            start = time.monotonic()
            try:
                writer.write(GREETING + request(*target))
                if walk_away:
                    await asyncio.sleep(self.rng.uniform(0.05, CONNECT_TIMEOUT * 0.8))
                    self.counts["stalled_left"] += 1
                    continue
                answer = await asyncio.wait_for(until_closed(reader), CONNECT_TIMEOUT + 5)
                waited = time.monotonic() - start
                if answer != b"\x05\x00\x05\x04\x00\x01" + bytes(6):
                    self.error(f"stalled: got {answer!r}")
                elif not CONNECT_TIMEOUT - 0.1 <= waited <= CONNECT_TIMEOUT + 1.5:
                    self.error(f"stalled: refused after {waited:.2f} s")
                else:
                    self.counts["stalled_timed_out"] += 1
            except (OSError, asyncio.TimeoutError) as exc:
                self.error(f"stalled: {exc!r}")
            finally:
                await close(writer)

    async def slowloris(self, dribble: bool) -> None:
        greeting = b"\x05\xff" + bytes(range(255))
        while self.running():
            opened = await self.dial("slowloris", 0.5)
            if opened is None:
                continue
            reader, writer = opened
            start = time.monotonic()
            try:
                for i in range(len(greeting)):
                    if dribble:
                        writer.write(greeting[i:i + 1])
                    try:
                        if not await asyncio.wait_for(reader.read(1), 0.5):
                            break
                    except asyncio.TimeoutError:
                        if time.monotonic() - start > HANDSHAKE_TIMEOUT + 5:
                            self.error("slowloris client not cut at the handshake timeout")
                            break
            except ConnectionError:
                pass
            finally:
                await close(writer)
            self.counts["slowloris_cut"] += 1


async def _run(args: argparse.Namespace, server: Server, echo: Echo,
               dead: DeadEnds) -> dict[str, Any]:
    seconds = args.minutes * 60
    t0 = time.monotonic()
    load = Load(server.address, echo.address, t0 + seconds, dead)
    tasks = [asyncio.ensure_future(load.handshakes()) for _ in range(8)]
    tasks += [asyncio.ensure_future(load.bulk()) for _ in range(2)]
    tasks += [asyncio.ensure_future(load.idle())]
    tasks += [asyncio.ensure_future(load.garbage()) for _ in range(4)]
    tasks += [asyncio.ensure_future(load.slowloris(i % 2 == 1)) for i in range(200)]
    tasks += [asyncio.ensure_future(load.refused()) for _ in range(2)]
    tasks += [asyncio.ensure_future(load.stalled(i % 2 == 1)) for i in range(4)]
    samples: list[tuple[float, dict[str, int], dict[str, int], float]] = []
    marks: dict[str, tuple[float, dict[str, int], dict[str, int]]] = {}
    targets = {"start": min(RAMP_SECONDS, seconds * 0.1), "middle": seconds / 2,
               "end": max(seconds - 2, 0)}
    next_sample = 0.0
    print(f"{'t (s)':>7} {'RSS MiB':>8} {'fds':>6} {'sockets':>8} {'pipes':>6} "
          f"{'handshakes':>11} {'bulk GiB':>9} {'idle':>6} {'garbage':>8} {'slow cut':>9} {'errors':>7}",
          flush=True)
    while time.monotonic() < load.deadline:
        now = time.monotonic() - t0
        for name, at in targets.items():
            if name not in marks and now >= at:
                marks[name] = (now, server.sample(), dict(load.counts))
        if now >= next_sample:
            s = server.sample()
            c = load.counts
            samples.append((now, s, dict(c), server.cpu_seconds()))
            print(f"{now:7.0f} {s['rss_kib'] / 1024:8.1f} {s['fds']:6d} {s['sockets']:8d} {s['pipes']:6d} "
                  f"{c['handshakes']:11d} {c['bulk_bytes'] / (1 << 30):9.2f} {c['idle_opened']:6d} "
                  f"{c['garbage']:8d} {c['slowloris_cut']:9d} {c['errors']:7d}", flush=True)
            next_sample += args.sample
        if server.proc.poll() is not None:
            load.error(f"fastsocks exited with {server.proc.returncode}")
            break
        await asyncio.sleep(0.5)
    if "end" not in marks:
        marks["end"] = (time.monotonic() - t0, server.sample(), dict(load.counts))
    done, pending = await asyncio.wait(tasks, timeout=HANDSHAKE_TIMEOUT + 70)
    for task in pending:
        task.cancel()
        load.error("a load task did not finish after the deadline")
    await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            load.error(f"load task failed: {task.exception()!r}")
    # All clients gone: the server should drop back to its idle descriptor set.
    deadline = time.monotonic() + 15
    after = server.sample()
    while after["sockets"] > 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        after = server.sample()
    return dict(load=load, marks=marks, after=after, samples=samples,
                seconds=time.monotonic() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--relay", choices=("auto", "splice", "protocol"), default="auto")
    parser.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto")
    parser.add_argument("--sample", type=float, default=30.0, help="seconds between samples")
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    log_dir = Path(tempfile.mkdtemp(prefix="fastsocks-soak-"))
    echo = Echo()
    dead = DeadEnds()
    server = Server(["--relay", args.relay, "--loop", args.loop], log_dir / "fastsocks.log")
    started = datetime.datetime.now(datetime.timezone.utc)
    print(f"# soak: {args.minutes:g} min, {started:%Y-%m-%d %H:%M} UTC, {platform.node()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"# server: {server.command}")
    print(f"# server says: {server.description}")
    print(f"# log: {server.log_path}")
    try:
        import uvloop

        runner = uvloop.run
        client_loop = f"uvloop {uvloop.__version__}"
    except ImportError:
        runner = asyncio.run
        client_loop = "asyncio"
    print(f"# clients: this process, {client_loop}")
    try:
        out = runner(_run(args, server, echo, dead))
    finally:
        cpu = server.cpu_seconds() if server.proc.poll() is None else float("nan")
        code = server.stop()
        echo.close()
        dead.close()
    load: Load = out["load"]
    c = load.counts
    print()
    print("| point | t (s) | RSS (MiB) | fds | sockets | pipes | handshakes | bulk (GiB) | errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in ("start", "middle", "end"):
        if name not in out["marks"]:
            continue
        t, s, counts = out["marks"][name]
        print(f"| {name} | {t:.0f} | {s['rss_kib'] / 1024:.1f} | {s['fds']} | {s['sockets']} | "
              f"{s['pipes']} | {counts.get('handshakes', 0)} | "
              f"{counts.get('bulk_bytes', 0) / (1 << 30):.2f} | {counts.get('errors', 0)} |")
    a = out["after"]
    print(f"| all clients gone | {out['seconds']:.0f} | {a['rss_kib'] / 1024:.1f} | {a['fds']} | "
          f"{a['sockets']} | {a['pipes']} | {c['handshakes']} | {c['bulk_bytes'] / (1 << 30):.2f} | "
          f"{c['errors']} |")
    print()
    start, end = out["marks"]["start"][1], out["marks"]["end"][1]
    print(f"RSS start -> end of load: {start['rss_kib'] / 1024:.1f} -> {end['rss_kib'] / 1024:.1f} MiB "
          f"({(end['rss_kib'] - start['rss_kib']) / 1024:+.1f} MiB); max over all samples "
          f"{max(s[1]['rss_kib'] for s in out['samples']) / 1024:.1f} MiB")
    print(f"totals: {c['handshakes']} handshakes, {c['bulk_transfers']} bulk transfers "
          f"({c['bulk_bytes'] / (1 << 30):.2f} GiB relayed, SHA-256 checked), {c['idle_opened']} idle "
          f"connections opened, {c['garbage']} garbage clients, {c['slowloris_cut']} slowloris clients cut, "
          f"{c['refused']} refused, {c['stalled_timed_out']} connects timed out, "
          f"{c['stalled_left']} clients left during the connect; "
          f"server CPU {cpu:.1f} s")
    errors_logged = [line for line in server.log.splitlines()
                     if " ERROR " in line or "Traceback" in line or " CRITICAL " in line]
    print(f"server: exit status {code} after SIGTERM; {len(errors_logged)} ERROR/traceback lines in its log")
    print(f"client errors: {c['errors']}" + ("".join(f"\n  {e}" for e in load.errors[:20])))
    ok = code == 0 and not errors_logged and c["errors"] == 0
    print("result: " + ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
