#!/usr/bin/env python3
"""UDP ASSOCIATE through an upstream proxy: what chaining costs the first server.

    python benchmarks/udp_chain.py [--repeat N] [--duration S]

Starts three fastsocks processes, one worker each, on loopback: B, the
upstream; A, whose one rule sends every target to B (``upstream = "next"``),
on the C datagram path; and A-py, the same with ``--relay protocol`` (the
Python path).  Then, for each round, interleaved: ``fastsocks bench --mode
udp-rtt --concurrency 32`` and ``--mode udp-oneway`` (unpaced) direct, through
B alone, through A (→ B) and through A-py (→ B).  Server CPU is the first
server's only (B alone, or A).  Prints the medians as a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")


def start(log: Path, *args: str) -> tuple[subprocess.Popen[bytes], str]:
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "fastsocks", "--listen", "127.0.0.1:0",
                                 "--workers", "1", "--log-level", "info", *args],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=env)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        match = _LISTENING.search(log.read_text(errors="replace"))
        if match:
            return proc, f"127.0.0.1:{match.group(1)}"
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"fastsocks did not start:\n{log.read_text(errors='replace')}")


def bench(mode: str, duration: float, proxy: str | None, pid: int | None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "fastsocks", "bench", "--mode", mode, "--duration",
           str(duration), "--json", "--local-target", "process"]
    if mode == "udp-rtt":
        cmd += ["--concurrency", "32"]
    if proxy is not None:
        cmd += ["--proxy", proxy, "--server-pid", str(pid)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration * 10 + 60)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr}")
    return json.loads(done.stdout)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=3, help="rounds (3)")
    p.add_argument("--duration", type=float, default=2.0, help="seconds per run (2)")
    args = p.parse_args()
    if not 1 <= args.repeat <= 20 or not 0 < args.duration <= 60:
        p.error("--repeat must be 1..20 and --duration in (0, 60]")
    rows: dict[str, list[tuple[Any, ...]]] = {}
    with tempfile.TemporaryDirectory(prefix="fastsocks-chain-bench-") as tmp:
        procs = []
        try:
            b, b_addr = start(Path(tmp) / "b.log")
            procs.append(b)
            conf = Path(tmp) / "a.toml"
            conf.write_text(f'[upstreams.next]\naddress = "{b_addr}"\n\n'
                            '[[rules]]\naction = "allow"\nupstream = "next"\n')
            a, a_addr = start(Path(tmp) / "a.log", "--config", str(conf))
            procs.append(a)
            a_py, a_py_addr = start(Path(tmp) / "a-py.log", "--config", str(conf),
                                    "--relay", "protocol")
            procs.append(a_py)
            paths = [("direct", None, None), ("B alone (C path)", b_addr, b.pid),
                     ("A → B, A on the C path", a_addr, a.pid),
                     ("A → B, A on the Python path", a_py_addr, a_py.pid)]
            for rnd in range(args.repeat):
                for name, proxy, pid in paths:
                    rtt = bench("udp-rtt", args.duration, proxy, pid)
                    one = bench("udp-oneway", args.duration, proxy, pid)
                    rows.setdefault(name, []).append((
                        rtt["per_s"], rtt.get("server_cpu_us_per_round_trip"),
                        one.get("received_per_s"), one.get("loss_pct"),
                        one.get("server_cpu_us_per_datagram")))
                    print(f"round {rnd + 1}: {name} done", file=sys.stderr, flush=True)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(10)

    def med(values: list[tuple[Any, ...]], k: int, fmt: str) -> str:
        got = [v[k] for v in values if v[k] is not None]
        return fmt.format(statistics.median(got)) if got else "—"

    print("| path | round trips/s c=32 | server CPU-µs/round trip | one-way unpaced "
          "received/s | loss | server CPU-µs/datagram |")
    print("|---|---|---|---|---|---|")
    for name, values in rows.items():
        print(f"| {name} | {med(values, 0, '{:,.0f}')} | {med(values, 1, '{:.1f}')} "
              f"| {med(values, 2, '{:,.0f}')} | {med(values, 3, '{:.1f} %')} "
              f"| {med(values, 4, '{:.2f}')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
