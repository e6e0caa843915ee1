#!/usr/bin/env python3
"""fastsocks and microsocks side by side, each started once, their loads interleaved.

    python benchmarks/interleaved.py [--rounds 5] [--duration 3] [--concurrency 1]
                                     [--servers fastsocks,microsocks] [--ask address,name]
                                     [--target-name localhost] [--json PATH]

``run.py`` starts every server fresh for each of its rows, one after the
other, and at c=1 the order shows: microsocks asked by name has come out
faster than the same microsocks asked by address (RESULTS.md, "Names in
the engine").  Here each server is started once (as run.py starts it, one
worker for fastsocks), and every round runs ``fastsocks bench --mode
handshake`` against each (server, ask) pair in turn, the order rotated by
one each round, so that no pair always follows the same one.  ``address``
asks for the echo's IPv4 address, ``name`` for ``--target-name`` at its
port.  Prints each round and a table of medians: p50 and p99, handshakes/s,
server CPU-µs per handshake, and fastsocks over microsocks for each ask.
Loopback only; every run is bounded in time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402  (benchmarks/run.py: its starters and settle_time_wait)

from fastsocks import bench  # noqa: E402

STARTERS: dict[str, Callable[[tuple[str, int]], run.Server]] = {
    "fastsocks": run.start_fastsocks, "microsocks": run.start_microsocks}
ASKS = ("address", "name")
KEYS = ("p50_ms", "p99_ms", "per_s", "server_cpu_us_per_handshake")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--servers", default="fastsocks,microsocks")
    p.add_argument("--ask", default=",".join(ASKS))
    p.add_argument("--target-name", default=run.TARGET_NAME)
    p.add_argument("--time-wait", type=int, default=20000,
                   help="before each run, wait until fewer sockets are in TIME_WAIT")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    servers = [s for s in args.servers.split(",") if s]
    asks = [a for a in args.ask.split(",") if a]
    if not set(servers) <= set(STARTERS) or not set(asks) <= set(ASKS) or not servers or not asks:
        p.error(f"--servers from {','.join(STARTERS)}, --ask from {','.join(ASKS)}")
    if not 1 <= args.rounds <= 20 or not 0 < args.duration <= 30:
        p.error("--rounds must be 1..20 and --duration in (0, 30]")
    for name in servers:
        why = run.missing(name)
        if why:
            p.error(why)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    pairs = [(s, a) for s in servers for a in asks]
    results: dict[str, list[dict[str, Any]]] = {f"{s} {a}": [] for s, a in pairs}
    hosts = bench.name_hosts(args.target_name) if "name" in asks else ("127.0.0.1",)
    with bench.LocalTarget("echo", "process", hosts[0], hosts[1:]) as echo:
        started = {name: STARTERS[name](echo.address) for name in servers}
        try:
            for rnd in range(args.rounds):
                shift = rnd % len(pairs)
                for server, ask in pairs[shift:] + pairs[:shift]:
                    run.settle_time_wait(log, args.time_wait)
                    s = started[server]
                    result = bench.run(bench.Config(
                        mode="handshake", proxy=s.address, target=echo.address,
                        target_name=args.target_name if ask == "name" else None,
                        concurrency=args.concurrency, duration=args.duration,
                        server_pid=s.pid))
                    results[f"{server} {ask}"].append({k: result.get(k) for k in KEYS})
                    log(f"round {rnd + 1}: {server} by {ask}: p50 {result['p50_ms']:.3f} ms, "
                        f"{result['per_s']:.0f}/s, "
                        f"{result.get('server_cpu_us_per_handshake') or 0:.0f} CPU-µs"
                        + (f", errors {result['errors']}" if result["errors"] else ""))
        finally:
            for s in started.values():
                s.stop()

    def median(row: str, key: str) -> float:
        return statistics.median(r[key] for r in results[row] if r[key] is not None)

    print(f"c={args.concurrency}, {args.rounds} rounds of {args.duration:g} s, medians; "
          f"name = {args.target_name!r}\n")
    print("| server, asked by | p50 / p99 ms | handshakes/s | server CPU-µs/handshake |")
    print("|---|---|---|---|")
    for row in results:
        print(f"| {row} | {median(row, 'p50_ms'):.3f} / {median(row, 'p99_ms'):.3f} "
              f"| {median(row, 'per_s'):.0f} | {median(row, 'server_cpu_us_per_handshake'):.0f} |")
    if {"fastsocks", "microsocks"} <= set(servers):
        print("\n| asked by | p50, fastsocks / microsocks | rate | CPU |")
        print("|---|---|---|---|")
        for ask in asks:
            f, m = f"fastsocks {ask}", f"microsocks {ask}"
            print("| " + ask + "".join(
                f" | {median(f, k) / median(m, k):.2f}×"
                for k in ("p50_ms", "per_s", "server_cpu_us_per_handshake")) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
