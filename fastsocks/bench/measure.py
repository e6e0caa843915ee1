"""One measurement: a local target if none was given, a probe, the mode, the result.

``run()`` is what ``fastsocks bench`` and benchmarks/run.py call; it returns
the result as a JSON-able dict (``report.format_table`` prints it).  With
``--target-name`` every request (the probe's too) asks for the name at the
target's port, and the local target listens wherever the name may lead on
loopback (``targets.name_hosts``).
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Callable

from ..net.address import format_peer
from ..net.client import SocksError
from . import handshake, idle, throughput, udp_oneway, udp_rtt
from .client import UdpPath, open_connection, parse_udp_reply, recv_exact
from .common import Config
from .targets import LocalTarget, name_hosts
from .udp_targets import udp_sink_stats

__all__ = ["run"]


def run(cfg: Config, on_hold: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run one measurement; returns the result as a JSON-able dict.

    ``on_hold`` (idle mode) is called with the partial result while the
    connections are open and idle, e.g. to read the server's memory.
    Raises SocksError (or OSError) if even the first connection fails.
    """
    cfg.validate()
    local: LocalTarget | None = None
    target = cfg.target
    if target is None:
        kind = {"throughput": "sink", "udp-rtt": "udp-echo",
                "udp-oneway": "udp-sink"}.get(cfg.mode, "echo")
        hosts = name_hosts(cfg.target_name) if cfg.target_name is not None else ("127.0.0.1",)
        local = LocalTarget(kind, cfg.local_target, hosts[0], hosts[1:])
        local.start()
        target = local.address
    try:
        _probe(cfg, target)
        if cfg.mode == "throughput":
            data = throughput.measure(cfg, target)
        elif cfg.mode == "handshake":
            data = handshake.measure(cfg, target)
        elif cfg.mode == "udp-rtt":
            data = udp_rtt.measure(cfg, target)
        elif cfg.mode == "udp-oneway":
            data = udp_oneway.measure(cfg, target)
        else:
            data = idle.measure(cfg, target, on_hold)
    finally:
        if local is not None:
            local.close()
    return {
        "mode": cfg.mode,
        "proxy": format_peer(cfg.proxy) if cfg.proxy else None,
        "target": format_peer(target),
        # The name the proxy was asked for (SOCKS5 ATYP X'03', SOCKS4a, HTTP host:port);
        # None: the target's address itself.
        "target_name": cfg.target_name,
        "target_listens": ([format_peer((h, target[1])) for h in local.hosts]
                           if local is not None else None),
        "auth": cfg.auth is not None,
        "protocol": cfg.protocol,
        "streams": cfg.streams if cfg.mode == "throughput" else None,
        "concurrency": cfg.concurrency if cfg.mode not in ("throughput", "udp-oneway") else None,
        "connections": cfg.connections if cfg.mode == "idle" else None,
        "duration": cfg.duration,
        "local_target": cfg.local_target if local is not None else None,
        **data,
    }


def _probe(cfg: Config, target: tuple[str, int]) -> None:
    """One connection (and, for an echo target, one round trip) before the run.

    A wrong address, a refused CONNECT or a target that does not echo is then
    one clear error instead of thousands of counted failures.
    """
    if cfg.udp:
        _probe_udp(cfg, target)
        return
    asked = cfg.asked(target)
    with open_connection(cfg.proxy, asked, cfg.auth, protocol=cfg.protocol) as sock:
        if cfg.mode != "throughput":
            sock.sendall(b"p")
            if recv_exact(sock, 1, "echo") != b"p":
                raise SocksError("echo", f"the target {format_peer(asked)} does not echo")


def _probe_udp(cfg: Config, target: tuple[str, int]) -> None:
    """One association and one datagram: echoed (udp-rtt) or counted by the sink."""
    with UdpPath(cfg.proxy, target, cfg.auth) as path:
        path.sock.settimeout(0.5)
        if cfg.mode == "udp-rtt":
            body = b"probe" + os.urandom(11)
            for _ in range(4):  # a datagram may be lost: a few tries, 2 s in all
                path.sock.send(path.header + body)
                try:
                    data = path.sock.recv(65536)
                except socket.timeout:
                    continue
                payload = parse_udp_reply(data)[2] if path.control is not None else data
                if payload != body:
                    raise SocksError("udp", f"the target {format_peer(target)} does not echo datagrams")
                return
            raise SocksError("udp", f"no echo from {format_peer(target)} within 2 s"
                             + (f" through the relay at {format_peer(path.relay)}" if path.relay else ""))
        before = udp_sink_stats(target)
        if before is None:
            return  # not a fastsocks-bench sink: what it receives cannot be told
        for _ in range(4):
            path.sock.send(path.header + b"probe")
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline:
                now = udp_sink_stats(target)
                if now is not None and now[0] > before[0]:
                    return
                time.sleep(0.02)
        raise SocksError("udp", f"the sink {format_peer(target)} received nothing within 2 s"
                         + (f" through the relay at {format_peer(path.relay)}" if path.relay else ""))
