"""``--mode throughput``: bulk TCP streams through the proxy to a sink.

``--streams N`` streams CONNECT to the sink and send as fast as they can for
``--duration`` seconds.  Each stream is a blocking socket in its own thread
sending one preallocated 1 MiB buffer with ``sock.send`` (the GIL is released
during the system call, so the Python generator is not the bottleneck); a
second thread per stream drains whatever comes back (nothing from a sink), so
that the end of the relay is seen.  Gbit/s are counted from the bytes handed
to the kernel.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from .client import open_connection
from .common import BUFFER_SIZE, IO_TIMEOUT, GiB, Config, Progress, cpu_now
from .proc import ProcessTree

__all__ = ["measure"]


def measure(cfg: Config, target: tuple[str, int]) -> dict[str, Any]:
    socks_ = []
    try:
        for _ in range(cfg.streams):
            socks_.append(open_connection(cfg.proxy, cfg.asked(target), cfg.auth,
                                          protocol=cfg.protocol))
    except BaseException:
        for s in socks_:
            s.close()
        raise
    counts = [0] * cfg.streams
    ends = [0.0] * cfg.streams
    errors: list[str] = []
    received = [0] * cfg.streams
    start_barrier = threading.Barrier(cfg.streams + 1)
    deadline_box = [0.0]

    def sender(i: int, sock: socket.socket) -> None:
        buf = bytearray(BUFFER_SIZE)
        view = memoryview(buf)
        send = sock.send
        monotonic = time.monotonic
        try:
            start_barrier.wait(IO_TIMEOUT)
        except threading.BrokenBarrierError:
            return
        deadline = deadline_box[0]
        n = 0
        try:
            # Bounded by time and by count (no more than 1 TiB per stream).
            for _ in range(1 << 20):
                n += send(view)
                counts[i] = n
                if monotonic() >= deadline:
                    break
        except OSError as exc:
            errors.append(f"stream {i}: {exc!r}")
        ends[i] = time.monotonic()
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def drainer(i: int, sock: socket.socket) -> None:
        # Reads whatever the target sends back (nothing, for a sink) until EOF,
        # so an echo target works too and the end of the relay is seen.
        buf = bytearray(BUFFER_SIZE)
        for _ in range(1 << 24):
            try:
                n = sock.recv_into(buf)
            except socket.timeout:
                if deadline_box[0] and time.monotonic() < deadline_box[0] + IO_TIMEOUT:
                    continue  # a quiet sink during a long run
                break
            except OSError:
                break
            if not n:
                break
            received[i] += n

    senders = [threading.Thread(target=sender, args=(i, s), daemon=True)
               for i, s in enumerate(socks_)]
    drainers = [threading.Thread(target=drainer, args=(i, s), daemon=True)
                for i, s in enumerate(socks_)]
    progress = Progress(cfg.progress, cfg.duration, lambda: "")
    last = [0, time.monotonic()]

    def text() -> str:
        total, now = sum(counts), time.monotonic()
        rate = (total - last[0]) * 8 / max(now - last[1], 1e-9) / 1e9
        last[0], last[1] = total, now
        return f"{rate:7.2f} Gbit/s  {total / GiB:8.2f} GiB sent"

    progress.text = text
    cpu0, server0 = cpu_now(), None
    tree = ProcessTree(cfg.server_pid) if cfg.server_pid else None
    try:
        for t in senders + drainers:
            t.start()
        if tree is not None:
            server0 = tree.cpu_seconds()
        t0 = time.monotonic()
        deadline_box[0] = t0 + cfg.duration
        start_barrier.wait(IO_TIMEOUT)
        progress.start = t0
        for t in senders:
            while t.is_alive() and time.monotonic() < deadline_box[0] + IO_TIMEOUT * 2:
                t.join(0.2)
                progress.tick()
        progress.done()
        for t in drainers:
            t.join(IO_TIMEOUT)
        # Once every drainer saw EOF, the server has relayed every byte.
        server1 = tree.cpu_seconds() if tree is not None else None
        cpu1 = cpu_now()
    finally:
        for s in socks_:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in senders + drainers:
            t.join(IO_TIMEOUT)
        for s in socks_:
            s.close()
    stuck = [i for i, t in enumerate(senders + drainers) if t.is_alive()]
    if stuck:
        errors.append(f"{len(stuck)} threads did not finish")
    total = sum(counts)
    elapsed = max(ends) - t0 if total else cfg.duration
    result: dict[str, Any] = {
        "bytes": total,
        "seconds": round(elapsed, 4),
        "gbit_per_s": total * 8 / elapsed / 1e9 if elapsed > 0 else 0.0,
        "per_stream_gbit_per_s": [round(c * 8 / max(e - t0, 1e-9) / 1e9, 3)
                                  for c, e in zip(counts, ends)],
        "bytes_received": sum(received),
        "generator_cpu_s": round(cpu1 - cpu0, 3),
        "generator_cpu_s_per_gib": (cpu1 - cpu0) / (total / GiB) if total else None,
        "errors": errors,
    }
    if server0 is not None and server1 is not None:
        result["server_cpu_s"] = round(server1 - server0, 3)
        result["server_cpu_s_per_gib"] = (server1 - server0) / (total / GiB) if total else None
    return result
