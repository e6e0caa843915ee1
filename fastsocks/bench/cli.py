"""``fastsocks bench``: the command line (``main(argv)``) over ``measure.run``."""

from __future__ import annotations

import argparse
import json
import re
import sys

from ..net.address import format_peer
from ..net.client import SocksError
from .common import (
    ENGINES,
    MAX_CONNECTIONS,
    MAX_DURATION,
    MODES,
    UDP_ONEWAY_SIZE,
    UDP_RTT_SIZE,
    Config,
)
from .measure import run
from .proc import ProcessTree
from .report import format_table
from .targets import TARGET_KINDS, serve

__all__ = ["main"]


def _address(text: str) -> tuple[str, int]:
    match = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (IPv6 as [::1]:1080)")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"port {port} out of range")
    return host, port


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= MAX_DURATION:
        raise argparse.ArgumentTypeError(f"{text!r} must be in (0, {MAX_DURATION:g}]")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastsocks bench",
        description="Load generator for SOCKS5 servers: bulk throughput, handshake rate, "
        "idle connections, UDP ASSOCIATE round trips and one-way datagrams. Without --proxy "
        "it measures the direct path (the reference).",
        epilog="Loopback only: point --proxy and --target at addresses on this machine.")
    p.add_argument("--proxy", metavar="HOST:PORT", type=_address,
                   help="the SOCKS5 server under test (omit to connect directly)")
    p.add_argument("--protocol", choices=("socks5", "socks4", "http"), default="socks5",
                   help="how the TCP modes ask --proxy for the tunnel: SOCKS5 CONNECT (the "
                   "default), SOCKS4 (4a for a name; --user is the USERID) or HTTP CONNECT "
                   "(--user/--password as Proxy-Authorization: Basic)")
    p.add_argument("--user", help="RFC 1929 username")
    p.add_argument("--password", help="RFC 1929 password")
    p.add_argument("--target", metavar="HOST:PORT", type=_address,
                   help="where to CONNECT (or send datagrams): a sink (throughput), an echo "
                   "server (handshake, idle), a UDP echo (udp-rtt) or a UDP sink (udp-oneway); "
                   "omitted: start one on 127.0.0.1 port 0")
    p.add_argument("--target-name", metavar="NAME",
                   help="TCP modes: ask --proxy for NAME at the target's port instead of the "
                   "target's address (SOCKS5 ATYP X'03', SOCKS4a, HTTP CONNECT NAME:PORT), so "
                   "that the proxy resolves it (its DNS cache) on every connection; e.g. "
                   "localhost. Without --target the local target listens on every loopback "
                   "address NAME may lead to (127.0.0.1, ::1)")
    p.add_argument("--mode", choices=MODES, default="throughput")
    p.add_argument("--streams", type=int, default=1, help="throughput: parallel streams (1)")
    p.add_argument("--concurrency", type=int, default=1,
                   help="handshake: parallel workers (1); idle: connections opened at once; "
                   "udp-rtt: associations, each with one datagram in flight")
    p.add_argument("--connections", type=int, default=1000,
                   help=f"idle: connections to open and hold (1000, at most {MAX_CONNECTIONS})")
    p.add_argument("--duration", type=_positive_float, default=5.0,
                   help="seconds to send / loop / hold (5)")
    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help="handshake/idle client engine: uvloop where installed (auto)")
    p.add_argument("--rate", type=float, metavar="N",
                   help="udp-oneway: send N datagrams/s (paced); omitted: as fast as possible")
    p.add_argument("--size", type=int, metavar="BYTES",
                   help=f"UDP payload per datagram ({UDP_RTT_SIZE} for udp-rtt, "
                   f"{UDP_ONEWAY_SIZE} for udp-oneway)")
    p.add_argument("--local-target", choices=("thread", "process"),
                   help="without --target: run the sink/echo in a thread of this process "
                   "(default for TCP) or in a child process (default for UDP)")
    p.add_argument("--server-pid", type=int, metavar="PID",
                   help="also report this server's CPU and RSS from /proc "
                   "(the process, its threads and descendants)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--serve", choices=TARGET_KINDS, help=argparse.SUPPRESS)
    p.add_argument("--serve-host", default="127.0.0.1", help=argparse.SUPPRESS)
    return p



def main(argv: list[str] | None = None) -> int:
    """``fastsocks bench ARGS``; returns the exit status."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.serve:
        return serve(args.serve, args.serve_host)
    if (args.user is None) != (args.password is None):
        print("fastsocks bench: error: --user and --password go together", file=sys.stderr)
        return 2
    if args.user is not None and args.proxy is None:
        print("fastsocks bench: error: --user/--password need --proxy", file=sys.stderr)
        return 2
    local_target = args.local_target or ("process" if args.mode.startswith("udp-") else "thread")
    cfg = Config(
        mode=args.mode, proxy=args.proxy, protocol=args.protocol, rate=args.rate, size=args.size,
        auth=(args.user, args.password) if args.user is not None else None,
        target=args.target, target_name=args.target_name, streams=args.streams, concurrency=args.concurrency,
        connections=args.connections, duration=args.duration, engine=args.engine,
        local_target=local_target, server_pid=args.server_pid,
        progress=sys.stderr.isatty(),
    )
    try:
        cfg.validate()
        if cfg.server_pid is not None and not ProcessTree(cfg.server_pid).alive():
            raise ValueError(f"--server-pid {cfg.server_pid}: no such process in /proc")
        result = run(cfg)
    except ValueError as exc:
        print(f"fastsocks bench: error: {exc}", file=sys.stderr)
        return 2
    except (SocksError, OSError, RuntimeError) as exc:
        where = f"through {format_peer(cfg.proxy)}" if cfg.proxy else "directly"
        print(f"fastsocks bench: error connecting {where}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result))
    # Non-zero when nothing at all was measured (every attempt failed).
    return 0 if (result.get("handshakes") or result.get("opened") or result.get("bytes")
                 or result.get("round_trips") or result.get("received")
                 or (result["mode"] == "udp-oneway" and result.get("received") is None
                     and result.get("sent"))) else 1

