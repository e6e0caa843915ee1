"""``--mode udp-oneway``: datagrams one way through UDP ASSOCIATE, and where they are lost.

One association sends 1,200-byte datagrams (``--size``) to a UDP sink for
``--duration`` seconds: as fast as a blocking ``send`` loop goes (unpaced),
or ``--rate N`` datagrams per second (paced in small bursts).  Reports
datagrams/s sent and received by the sink (which it asks), and the loss,
split where /proc/net/udp can tell (the sink's socket, the proxy's relay
socket).
"""

from __future__ import annotations

import os
import time
from typing import Any

from ..net.address import format_peer
from .client import UdpPath
from .common import (
    UDP_MAX_DATAGRAMS,
    UDP_PACE_BURST,
    Config,
    Progress,
    cpu_now,
    cpu_split,
)
from .proc import ProcessTree, socket_key, udp_socket_drops
from .udp_targets import udp_sink_stats

__all__ = ["measure", "sink_settled"]


def sink_settled(target: tuple[str, int], seen: tuple[int, int] | None,
                  timeout: float = 3.0) -> tuple[int, int] | None:
    """The sink's counters once they stop moving (datagrams still queued in a proxy land)."""
    if seen is None:
        return None
    deadline = time.monotonic() + timeout
    last = udp_sink_stats(target)
    while last is not None and time.monotonic() < deadline:
        time.sleep(0.1)
        now = udp_sink_stats(target)
        if now == last:
            break
        last = now
    return last


def measure(cfg: Config, target: tuple[str, int]) -> dict[str, Any]:
    """One association sending datagrams to a sink, unpaced or at ``cfg.rate``."""
    size = cfg.payload_size
    tree = ProcessTree(cfg.server_pid) if cfg.server_pid else None
    with UdpPath(cfg.proxy, target, cfg.auth) as path:
        packet = path.header + os.urandom(size)
        watched = [target] + ([path.relay] if path.relay else [])
        before = udp_sink_stats(target)
        drops0 = udp_socket_drops(watched)
        server0 = tree.cpu_seconds() if tree is not None else None
        cpu0, split0 = cpu_now(), cpu_split()
        send = path.sock.send
        monotonic = time.monotonic
        sent = errors = 0
        first_error: str | None = None
        progress = Progress(cfg.progress, cfg.duration, lambda: f"{sent} datagrams sent")
        t0 = monotonic()
        deadline = t0 + cfg.duration
        progress.start = t0
        if cfg.rate is None:
            # As fast as one blocking send() loop goes (the GIL is released in it).
            while sent < UDP_MAX_DATAGRAMS:
                for _ in range(64):
                    try:
                        send(packet)
                        sent += 1
                    except OSError as exc:  # ENOBUFS, or ECONNREFUSED from an ICMP error
                        errors += 1
                        first_error = first_error or repr(exc)
                if monotonic() >= deadline:
                    break
                progress.tick()
        else:
            # Paced: send what is due, in bursts of at most UDP_PACE_BURST, and
            # sleep until the next one is due (sleeps are ~60 µs at the least,
            # so at 50,000/s a burst is a few datagrams).
            rate = cfg.rate
            while sent < UDP_MAX_DATAGRAMS:
                now = monotonic()
                if now >= deadline:
                    break
                due = int((now - t0) * rate) + 1
                if due > sent:
                    for _ in range(min(due - sent, UDP_PACE_BURST)):
                        try:
                            send(packet)
                            sent += 1
                        except OSError as exc:
                            errors += 1
                            first_error = first_error or repr(exc)
                            sent += 1  # counted as sent and lost: keep the pace
                else:
                    time.sleep(max(0.0, t0 + sent / rate - now))
                progress.tick()
        t1 = monotonic()
        progress.done()
        after = sink_settled(target, before)
        cpu1, split1 = cpu_now(), cpu_split()
        server1 = tree.cpu_seconds() if tree is not None else None
        drops1 = udp_socket_drops(watched)
        relay = path.relay
    elapsed = t1 - t0
    received = (after[0] - before[0]) if (before is not None and after is not None) else None
    gen = cpu1 - cpu0

    def dropped(address: tuple[str, int]) -> int | None:
        key = socket_key(address)
        if key is not None and key in drops0 and key in drops1:
            return drops1[key] - drops0[key]
        return None

    result: dict[str, Any] = {
        "size": size,
        "rate": cfg.rate,
        "relay": format_peer(relay) if relay else None,
        "seconds": round(elapsed, 4),
        "sent": sent,
        "send_errors": errors,
        "first_error": first_error,
        "sent_per_s": sent / elapsed if elapsed > 0 else 0.0,
        "received": received,
        "received_per_s": received / elapsed if received is not None and elapsed > 0 else None,
        "loss_pct": (100.0 * (sent - received) / sent) if received is not None and sent else None,
        "dropped_at_sink": dropped(target),
        "dropped_at_relay": dropped(relay) if relay else None,
        "generator_cpu_s": round(gen, 3),
        "generator_cpu_us_per_datagram": gen / sent * 1e6 if sent else None,
        "generator_cpu_share": gen / elapsed if elapsed > 0 else None,
        "generator_cpu_system_share": (split1[1] - split0[1]) / gen if gen > 0 else None,
        "errors": {"OSError": errors} if errors else {},
    }
    if server0 is not None and server1 is not None:
        result["server_cpu_s"] = round(server1 - server0, 3)
        result["server_cpu_us_per_datagram"] = ((server1 - server0) / received * 1e6
                                                if received else None)
    return result
