"""``--mode udp-rtt``: UDP round trips through UDP ASSOCIATE (RFC 1928 §7).

``--concurrency N`` associations, each with its own UDP socket, each keeping
one 64-byte datagram (``--size``) in flight to a UDP echo target: send, wait
for the echo, send the next.  Reports round trips/s and p50/p99 latency in
µs.  A datagram not echoed within ``UDP_RTT_TIMEOUT`` is counted lost and the
next one is sent.  One thread drives every socket with a level-triggered
epoll loop.
"""

from __future__ import annotations

import os
import struct
import time
from typing import Any

from ..net.address import format_peer
from ..net.client import SocksError
from .client import UdpPath, parse_udp_reply
from .common import (
    MAX_HANDSHAKES,
    UDP_RTT_TIMEOUT,
    Config,
    Progress,
    Stats,
    cpu_now,
    cpu_split,
    percentile,
)
from .proc import ProcessTree

__all__ = ["measure", "open_paths"]


class _RttConn:
    __slots__ = ("path", "sock", "index", "seq", "t0", "expected")

    def __init__(self, path: UdpPath, index: int) -> None:
        self.path = path
        self.sock = path.sock
        self.index = index
        self.seq = 0
        self.t0 = 0.0
        self.expected = b""


def open_paths(cfg: Config, target: tuple[str, int], n: int) -> list[UdpPath]:
    paths: list[UdpPath] = []
    try:
        for _ in range(n):
            paths.append(UdpPath(cfg.proxy, target, cfg.auth))
    except BaseException:
        for path in paths:
            path.close()
        raise
    return paths


def measure(cfg: Config, target: tuple[str, int]) -> dict[str, Any]:
    """C associations, one datagram in flight on each, driven by one epoll loop."""
    import select

    size = cfg.payload_size
    filler = os.urandom(size - 12)
    stamp = struct.Struct(">IQ").pack  # association index, sequence number: 12 bytes
    paths = open_paths(cfg, target, cfg.concurrency)
    stats = Stats()
    latencies = stats.latencies
    perf, monotonic = time.perf_counter, time.monotonic
    conns: dict[int, _RttConn] = {}
    ep = select.epoll()
    counters = {"lost": 0, "late": 0}
    tree = ProcessTree(cfg.server_pid) if cfg.server_pid else None

    def send(c: _RttConn) -> None:
        c.seq += 1
        body = stamp(c.index, c.seq) + filler
        c.expected = c.path.reply_header + body
        c.t0 = perf()
        try:
            c.sock.send(c.path.header + body)
        except OSError as exc:  # e.g. ECONNREFUSED from an earlier ICMP error
            stats.error(exc)  # the timeout sends the next one

    def odd_reply(c: _RttConn, data: bytes) -> bool:
        """A datagram that is not the awaited echo verbatim: True if it still is it."""
        payload = data
        if c.path.control is not None:
            try:
                payload = parse_udp_reply(data)[2]
            except SocksError as exc:
                stats.error(exc)
                return False
        body = c.expected[len(c.path.reply_header):]
        if payload == body:
            # The relay writes the target's address in another (valid) form:
            # expect that form from now on.
            c.path.reply_header = data[:len(data) - len(payload)]
            return True
        if payload[:4] == body[:4] and payload[12:] == body[12:]:
            counters["late"] += 1  # an echo of a datagram already counted lost
        else:
            stats.error(SocksError("udp", "a datagram that is no echo of ours"))
        return False

    progress = Progress(cfg.progress, cfg.duration, lambda: "")
    last = [0, monotonic()]

    def text() -> str:
        n, now = len(latencies), monotonic()
        rate = (n - last[0]) / max(now - last[1], 1e-9)
        last[0], last[1] = n, now
        return f"{rate:9.0f} round trips/s  {n} done  {counters['lost']} lost"

    progress.text = text
    try:
        for i, path in enumerate(paths):
            path.sock.setblocking(False)
            conns[path.sock.fileno()] = _RttConn(path, i)
            ep.register(path.sock.fileno(), select.EPOLLIN)
        server0 = tree.cpu_seconds() if tree is not None else None
        cpu0, split0 = cpu_now(), cpu_split()
        t0 = monotonic()
        deadline = t0 + cfg.duration
        progress.start = t0
        for c in conns.values():
            send(c)
        next_check = t0 + 0.05
        now = t0
        while now < deadline and len(latencies) < MAX_HANDSHAKES:
            for fd, _ev in ep.poll(0.05):
                c = conns[fd]
                try:
                    data = c.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    stats.error(exc)
                    continue
                if data == c.expected or odd_reply(c, data):
                    latencies.append(perf() - c.t0)
                    send(c)
            now = monotonic()
            if now >= next_check:
                next_check = now + 0.05
                limit = perf() - UDP_RTT_TIMEOUT
                for c in conns.values():
                    if c.t0 < limit:
                        counters["lost"] += 1
                        send(c)
                progress.tick()
        elapsed = monotonic() - t0
        cpu1, split1 = cpu_now(), cpu_split()
        server1 = tree.cpu_seconds() if tree is not None else None
        progress.done()
    finally:
        ep.close()
        for path in paths:
            path.close()
    lat = sorted(latencies)
    n = len(lat)
    gen = cpu1 - cpu0
    result: dict[str, Any] = {
        "size": size,
        "relay": format_peer(paths[0].relay) if paths[0].relay else None,
        "round_trips": n,
        "seconds": round(elapsed, 4),
        "per_s": n / elapsed if elapsed > 0 else 0.0,
        "p50_us": percentile(lat, 50) * 1e6,
        "p99_us": percentile(lat, 99) * 1e6,
        "max_us": lat[-1] * 1e6 if lat else 0.0,
        "lost": counters["lost"],
        "late": counters["late"],
        "errors": stats.errors,
        "first_error": stats.first_error,
        "generator_cpu_s": round(gen, 3),
        "generator_cpu_us_per_round_trip": gen / n * 1e6 if n else None,
        "generator_cpu_share": gen / elapsed if elapsed > 0 else None,
        "generator_cpu_system_share": (split1[1] - split0[1]) / gen if gen > 0 else None,
    }
    if server0 is not None and server1 is not None:
        result["server_cpu_s"] = round(server1 - server0, 3)
        result["server_cpu_us_per_round_trip"] = (server1 - server0) / n * 1e6 if n else None
    return result
