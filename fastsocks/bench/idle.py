"""``--mode idle``: memory per idle relayed connection.

Opens ``--connections N`` relayed connections (``--concurrency`` at a time),
does one 1-byte echo round trip on each, and holds them idle for
``--duration`` seconds; with ``--server-pid`` the server's RSS and PSS are
read while they are held.  A sample still echoes after the hold, which
proves the connections were relayed all along.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any, Callable, Iterator

from ..net.client import SocksError
from .client import connect_async, make_negotiation, recv_exact_async
from .common import IO_TIMEOUT, Config, Progress, Stats, family, new_event_loop
from .proc import ProcessTree

__all__ = ["measure"]


def measure(cfg: Config, target: tuple[str, int],
            on_hold: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    # Opening the connections is not what is measured here: any loop will do.
    engine = cfg.engine if cfg.engine in ("uvloop", "asyncio") else "auto"
    loop = new_event_loop(engine)
    held: list[socket.socket] = []
    stats = Stats()
    fam = family((cfg.proxy or target)[0])
    negotiation = make_negotiation(cfg.protocol, *cfg.asked(target), cfg.auth)
    tree = ProcessTree(cfg.server_pid) if cfg.server_pid else None
    result: dict[str, Any] = {"requested": cfg.connections}

    async def open_one() -> None:
        sock = socket.socket(fam, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await connect_async(loop, sock, cfg.proxy, target, negotiation)
            await loop.sock_sendall(sock, b"i")
            if await recv_exact_async(loop, sock, 1, "echo") != b"i":
                raise SocksError("echo", "the echoed byte differs")
        except BaseException:
            sock.close()
            raise
        held.append(sock)

    async def opener(todo: Iterator[int]) -> None:
        for _ in todo:
            try:
                await asyncio.wait_for(open_one(), IO_TIMEOUT)
            except (OSError, SocksError, asyncio.TimeoutError) as exc:
                stats.error(exc)

    async def main_() -> None:
        todo = iter(range(cfg.connections))
        width = max(1, min(cfg.concurrency if cfg.concurrency > 1 else 32, 256))
        t0 = time.monotonic()
        await asyncio.gather(*(opener(todo) for _ in range(width)))
        result["open_seconds"] = round(time.monotonic() - t0, 3)
        result["opened"] = len(held)
        result["failed"] = sum(stats.errors.values())
        result["errors"] = stats.errors
        result["first_error"] = stats.first_error
        # Let the server settle (buffers freed, lazy work done) before measuring.
        await asyncio.sleep(min(0.5, cfg.duration / 2))
        if tree is not None:
            result["server_rss_kib_held"] = tree.rss_kib()
            result["server_pss_kib_held"] = tree.pss_kib()
            result["server_processes"] = len(tree.pids())
        if on_hold is not None:
            on_hold(result)
        progress = Progress(cfg.progress, cfg.duration, lambda: f"holding {len(held)} connections")
        hold_end = time.monotonic() + cfg.duration
        while time.monotonic() < hold_end:
            await asyncio.sleep(min(0.25, max(0.0, hold_end - time.monotonic())))
            progress.tick()
        progress.done()
        # One more round trip on a sample proves the connections were still relayed.
        alive = 0
        for sock in held[:: max(1, len(held) // 20)]:
            try:
                await loop.sock_sendall(sock, b"j")
                if await asyncio.wait_for(recv_exact_async(loop, sock, 1, "echo"), IO_TIMEOUT) == b"j":
                    alive += 1
            except (OSError, SocksError, asyncio.TimeoutError):
                pass
        result["sampled_alive_after_hold"] = alive
        result["sampled"] = len(held[:: max(1, len(held) // 20)])
        result["held_seconds"] = cfg.duration

    rss0 = tree.rss_kib() if tree is not None else None
    pss0 = tree.pss_kib() if tree is not None else None
    try:
        loop.run_until_complete(main_())
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        for sock in held:
            sock.close()
        loop.close()
    if rss0 is not None and "server_rss_kib_held" in result:
        result["server_rss_kib_before"] = rss0
        delta = result["server_rss_kib_held"] - rss0
        result["server_rss_kib_delta"] = delta
        result["server_kib_per_connection"] = delta / result["opened"] if result["opened"] else None
        pss1 = result.get("server_pss_kib_held")
        if pss0 is not None and pss1 is not None and result["opened"]:
            result["server_pss_kib_before"] = pss0
            result["server_pss_kib_per_connection"] = (pss1 - pss0) / result["opened"]
    return result
