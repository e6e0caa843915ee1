"""--workers scaling: 8-stream throughput and handshake rate, N workers vs one.

    python benchmarks/workers.py [--workers 2] [--repeat 3] [--duration 3]

Starts fastsocks with one worker and with N workers, alternating, on
127.0.0.1 port 0, and measures each with `fastsocks bench` (8 bulk streams;
handshakes at concurrency 64) in the same invocation.  Prints the medians and
the ratio N workers / one.  On a machine with fewer cores than workers plus
the load generator, the ratio shows contention, not scaling: say which.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys


def start(workers: int, *args: str) -> tuple[subprocess.Popen[str], int]:
    """fastsocks on 127.0.0.1 port 0 with ``args``: the process and its port."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastsocks", "--listen", "127.0.0.1:0", "--workers", str(workers),
         "--log-level", "info", *args],
        stderr=subprocess.PIPE, text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        match = re.search(r"listening on 127\.0\.0\.1:(\d+) ", line)
        if match:
            return proc, int(match.group(1))
    raise RuntimeError("fastsocks did not start")


def bench(port: int, pid: int, *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "fastsocks.bench", "--proxy", f"127.0.0.1:{port}",
         "--server-pid", str(pid), "--json", *args],
        capture_output=True, text=True, timeout=300, check=True,
    )
    return json.loads(out.stdout)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--duration", type=float, default=3.0)
    args = p.parse_args()
    results: dict[int, dict[str, list[float]]] = {1: {}, args.workers: {}}
    for _ in range(args.repeat):
        for n in (1, args.workers):
            proc, port = start(n)
            try:
                t = bench(port, proc.pid, "--mode", "throughput", "--streams", "8",
                          "--duration", str(args.duration))
                h = bench(port, proc.pid, "--mode", "handshake", "--concurrency", "64",
                          "--duration", str(args.duration))
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
                assert proc.stderr is not None
                proc.stderr.close()
            r = results[n]
            r.setdefault("gbit", []).append(t["gbit_per_s"])
            r.setdefault("handshakes", []).append(h["per_s"])
            r.setdefault("cpu_us", []).append(h.get("server_cpu_us_per_handshake") or float("nan"))
    med = {n: {k: statistics.median(v) for k, v in r.items()} for n, r in results.items()}
    one, many = med[1], med[args.workers]
    print(f"cores: {os.cpu_count()}; {args.repeat} rounds of {args.duration:g} s; medians\n")
    print("| workers | 8 streams Gbit/s | handshakes/s c=64 | server CPU-µs/handshake |")
    print("|---|---|---|---|")
    for n in (1, args.workers):
        m = med[n]
        print(f"| {n} | {m['gbit']:.2f} | {m['handshakes']:.0f} | {m['cpu_us']:.0f} |")
    print(f"| ratio {args.workers}/1 | {many['gbit'] / one['gbit']:.2f}× | "
          f"{many['handshakes'] / one['handshakes']:.2f}× | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
