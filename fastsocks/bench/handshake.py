"""``--mode handshake``: connections per second, each a whole SOCKS5 CONNECT and one echo.

``--concurrency C`` workers each loop: connect, SOCKS5 greeting (and RFC 1929
username/password if given), CONNECT to an echo target, send 64 B, read the
64 B back, close.  The CONNECT names the target by its address, or by
``--target-name`` (ATYP X'03'): the proxy then resolves the name on every
connection, from its DNS cache after the first, and that path is measured.  Reports handshakes/s and p50/p99 latency (of the whole
cycle) in ms.  The default engine on Linux is a single-threaded
edge-triggered epoll loop with a small state machine per connection: it
costs a third to a half of the CPU per handshake of uvloop's ``sock_*``
coroutines (measured; benchmarks/README.md), so the generator keeps well
ahead of the servers it measures.  ``--engine uvloop|asyncio|threads``
select the others.  Every engine speaks SOCKS5 through the same client role
(``fastsocks.net.client``).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import threading
import time
from typing import Any

from ..net.client import SocksError
from .client import (connect_async, make_negotiation, open_connection, recv_exact,
                     recv_exact_async)
from .common import (
    IO_TIMEOUT,
    MAX_HANDSHAKES,
    PAYLOAD_SIZE,
    Config,
    Progress,
    Stats,
    cpu_now,
    cpu_split,
    family,
    new_event_loop,
    percentile,
)
from .proc import ProcessTree

__all__ = ["measure"]


def _handshake_async(cfg: Config, target: tuple[str, int], engine: str) -> tuple[Stats, float]:
    loop = new_event_loop(engine)
    stats = Stats()
    payload = os.urandom(PAYLOAD_SIZE)
    fam = family((cfg.proxy or target)[0])
    negotiation = make_negotiation(cfg.protocol, *cfg.asked(target), cfg.auth)
    latencies = stats.latencies
    perf = time.perf_counter
    state = {"deadline": 0.0, "count": 0}

    async def one() -> None:
        sock = socket.socket(fam, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await connect_async(loop, sock, cfg.proxy, target, negotiation)
            await loop.sock_sendall(sock, payload)
            echoed = await recv_exact_async(loop, sock, PAYLOAD_SIZE, "echo")
            if echoed != payload:
                raise SocksError("echo", "the echoed bytes differ from those sent")
        finally:
            sock.close()

    async def worker() -> None:
        deadline = state["deadline"]
        while state["count"] < MAX_HANDSHAKES:
            t = perf()
            if time.monotonic() >= deadline:
                return
            try:
                await one()
            except (OSError, SocksError) as exc:
                stats.error(exc)
                await asyncio.sleep(0.001)  # a failing server must not become a busy loop
                continue
            latencies.append(perf() - t)
            state["count"] += 1

    async def main_() -> float:
        progress = Progress(cfg.progress, cfg.duration, lambda: "")
        last = [0, time.monotonic()]

        def text() -> str:
            n, now = len(latencies), time.monotonic()
            rate = (n - last[0]) / max(now - last[1], 1e-9)
            last[0], last[1] = n, now
            return f"{rate:9.0f} handshakes/s  {n} done  {sum(stats.errors.values())} errors"

        progress.text = text
        t0 = time.monotonic()
        state["deadline"] = t0 + cfg.duration
        progress.start = t0
        tasks = [asyncio.ensure_future(worker()) for _ in range(cfg.concurrency)]
        try:
            hard_end = state["deadline"] + IO_TIMEOUT
            pending = set(tasks)
            while pending and time.monotonic() < hard_end:
                _, pending = await asyncio.wait(pending, timeout=0.25)
                progress.tick()
            progress.done()
            return time.monotonic() - t0
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    try:
        elapsed = loop.run_until_complete(main_())
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()
    return stats, elapsed


# The epoll engine: one thread, non-blocking sockets registered once,
# edge-triggered for both directions, and a small state machine per
# connection.  On this project's 2-core VM it costs the generator about a third
# of the CPU per handshake of uvloop's sock_* coroutines (futures and an
# epoll_ctl per wait), and most of what remains is the kernel's TCP set-up and
# tear-down, which any client pays (see benchmarks/README.md).

_S_CONNECT, _S_SOCKS, _S_ECHO = range(3)


class _Conn:
    __slots__ = ("sock", "state", "negotiation", "data", "t0", "out")

    def __init__(self, sock: socket.socket, t0: float) -> None:
        self.sock = sock
        self.state = _S_CONNECT
        self.negotiation: Any = None  # through a proxy: the SOCKS5 (SOCKS4, HTTP) part
        self.data = b""  # the echo so far
        self.t0 = t0
        self.out = b""


def _handshake_epoll(cfg: Config, target: tuple[str, int]) -> tuple[Stats, float]:
    import select

    stats = Stats()
    latencies = stats.latencies
    payload = os.urandom(PAYLOAD_SIZE)
    proxy = cfg.proxy
    first = proxy or target
    fam = family(first[0])
    # The messages are encoded once; each connection gets a fresh() copy.
    negotiation = make_negotiation(cfg.protocol, *cfg.asked(target), cfg.auth)
    perf = time.perf_counter
    monotonic = time.monotonic
    conns: dict[int, _Conn] = {}
    ep = select.epoll()
    flags = select.EPOLLIN | select.EPOLLOUT | select.EPOLLET | select.EPOLLRDHUP
    nodelay = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    started = [0]

    def start() -> None:
        started[0] += 1
        try:
            sock = socket.socket(fam, socket.SOCK_STREAM)
        except OSError as exc:  # e.g. out of file descriptors
            stats.error(exc)
            return
        conn = _Conn(sock, perf())
        fd = sock.fileno()
        conns[fd] = conn
        try:
            sock.setblocking(False)
            sock.setsockopt(*nodelay)
            ep.register(fd, flags)
            err = sock.connect_ex(first)
            if err not in (0, errno.EINPROGRESS):
                raise OSError(err, os.strerror(err))
        except OSError as exc:
            finish(fd, conn, exc)

    def finish(fd: int, conn: _Conn, exc: BaseException | None) -> None:
        del conns[fd]
        conn.sock.close()  # also drops it from the epoll set
        if exc is None:
            latencies.append(perf() - conn.t0)
        else:
            stats.error(exc)

    def write(conn: _Conn, data: bytes) -> None:
        n = conn.sock.send(data)
        if n < len(data):  # not seen with these sizes; EPOLLOUT sends the rest
            conn.out = data[n:]

    def advance(fd: int, conn: _Conn) -> bool:
        """Drive ``conn`` as far as its socket allows; True once it is done."""
        sock = conn.sock
        if conn.state == _S_CONNECT:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
            if proxy is None:
                conn.state = _S_ECHO
                write(conn, payload)
            else:
                conn.state = _S_SOCKS
                conn.negotiation = negotiation.fresh()
                write(conn, conn.negotiation.start())
        if conn.out:
            n = sock.send(conn.out)
            conn.out = conn.out[n:]
        for _ in range(4096):  # bounded; ends on EAGAIN (BlockingIOError) or done
            socks = conn.negotiation
            if conn.state == _S_SOCKS and socks is not None:
                # Reads stop at the end of each message: nothing of the echo
                # is taken for the reply.
                chunk = sock.recv(socks.want)
                if not chunk:
                    raise socks.closed()
                out = socks.receive(chunk)
                if out:
                    write(conn, out)
                if socks.done:
                    conn.state = _S_ECHO
                    write(conn, payload)
                continue
            chunk = sock.recv(PAYLOAD_SIZE - len(conn.data))
            if not chunk:
                raise SocksError("echo", f"server closed the connection (after {conn.data!r})")
            conn.data += chunk
            if len(conn.data) == PAYLOAD_SIZE:
                if conn.data != payload:
                    raise SocksError("echo", "the echoed bytes differ from those sent")
                return True
        return False

    progress = Progress(cfg.progress, cfg.duration, lambda: "")
    last = [0, monotonic()]

    def text() -> str:
        n, now = len(latencies), monotonic()
        rate = (n - last[0]) / max(now - last[1], 1e-9)
        last[0], last[1] = n, now
        return f"{rate:9.0f} handshakes/s  {n} done  {sum(stats.errors.values())} errors"

    progress.text = text
    t0 = monotonic()
    deadline = t0 + cfg.duration
    hard_end = deadline + IO_TIMEOUT
    progress.start = t0
    try:
        now = t0
        while (conns or now < deadline) and now < hard_end:
            # Keep C connections in flight until the deadline (bounded in count).
            while len(conns) < cfg.concurrency and now < deadline and started[0] < MAX_HANDSHAKES:
                start()
                if stats.errors and not conns:
                    break  # failing at once (refused, no fds): let poll() pace the retries
            for fd, _ev in ep.poll(0.25):
                conn = conns.get(fd)
                if conn is None:
                    continue
                try:
                    if advance(fd, conn):
                        finish(fd, conn, None)
                except BlockingIOError:
                    continue  # wait for the next edge
                except (OSError, SocksError) as exc:
                    finish(fd, conn, exc)
            now = monotonic()
            progress.tick()
        progress.done()
        elapsed = monotonic() - t0
    finally:
        for conn in conns.values():
            conn.sock.close()
        conns.clear()
        ep.close()
    return stats, elapsed


def _handshake_threads(cfg: Config, target: tuple[str, int]) -> tuple[Stats, float]:
    stats = Stats()
    payload = os.urandom(PAYLOAD_SIZE)
    lock = threading.Lock()
    t0 = time.monotonic()
    deadline = t0 + cfg.duration
    asked = cfg.asked(target)

    def worker() -> None:
        local: list[float] = []
        for _ in range(MAX_HANDSHAKES // cfg.concurrency):
            if time.monotonic() >= deadline:
                break
            t = time.perf_counter()
            try:
                with open_connection(cfg.proxy, asked, cfg.auth,
                                     protocol=cfg.protocol) as sock:
                    sock.sendall(payload)
                    if recv_exact(sock, PAYLOAD_SIZE, "echo") != payload:
                        raise SocksError("echo", "the echoed bytes differ from those sent")
            except (OSError, SocksError) as exc:
                with lock:
                    stats.error(exc)
                time.sleep(0.001)
                continue
            local.append(time.perf_counter() - t)
        with lock:
            stats.latencies.extend(local)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(cfg.concurrency)]
    for t in threads:
        t.start()
    progress = Progress(cfg.progress, cfg.duration, lambda: "running")
    for t in threads:
        while t.is_alive() and time.monotonic() < deadline + IO_TIMEOUT * 2:
            t.join(0.25)
            progress.tick()
    progress.done()
    return stats, time.monotonic() - t0


def measure(cfg: Config, target: tuple[str, int]) -> dict[str, Any]:
    engine = cfg.engine
    if engine == "auto":
        # epoll: measured cheapest per handshake (README); else uvloop, else threads.
        import select

        engine = "epoll" if hasattr(select, "epoll") else "uvloop"
        if engine == "uvloop":
            try:
                import uvloop  # noqa: F401
            except ImportError:
                engine = "threads"
    tree = ProcessTree(cfg.server_pid) if cfg.server_pid else None
    server0 = tree.cpu_seconds() if tree is not None else None
    cpu0 = cpu_now()
    split0 = cpu_split()
    if engine == "threads":
        stats, elapsed = _handshake_threads(cfg, target)
    elif engine == "epoll":
        stats, elapsed = _handshake_epoll(cfg, target)
    else:
        stats, elapsed = _handshake_async(cfg, target, engine)
    cpu1 = cpu_now()
    split1 = cpu_split()
    server1 = tree.cpu_seconds() if tree is not None else None
    lat = sorted(stats.latencies)
    n = len(lat)
    result: dict[str, Any] = {
        "engine": engine,
        "handshakes": n,
        "seconds": round(elapsed, 4),
        "per_s": n / elapsed if elapsed > 0 else 0.0,
        "p50_ms": percentile(lat, 50) * 1e3,
        "p99_ms": percentile(lat, 99) * 1e3,
        "max_ms": (lat[-1] * 1e3) if lat else 0.0,
        "errors": stats.errors,
        "first_error": stats.first_error,
        "generator_cpu_s": round(cpu1 - cpu0, 3),
        "generator_cpu_us_per_handshake": (cpu1 - cpu0) / n * 1e6 if n else None,
        "generator_cpu_share": (cpu1 - cpu0) / elapsed if elapsed > 0 else None,
        "generator_cpu_system_share": ((split1[1] - split0[1]) / (cpu1 - cpu0)
                                       if cpu1 > cpu0 else None),
    }
    if server0 is not None and server1 is not None:
        result["server_cpu_s"] = round(server1 - server0, 3)
        result["server_cpu_us_per_handshake"] = (server1 - server0) / n * 1e6 if n else None
    return result
