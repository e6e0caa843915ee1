#!/usr/bin/env python3
"""Bulk relaying, one way or the other: fastsocks' ``--relay-bulk`` modes beside C relays.

    python benchmarks/bulk_paths.py [--repeat 3] [--duration 5] [--streams 1]
                                    [--paths direct,auto,splice,copy,c16k,c4m,csplice]

Every round starts each path fresh on loopback, in turn, and pushes
``--streams`` bulk streams through it to a sink for ``--duration`` seconds
with ``fastsocks bench --mode throughput`` (its own sink, in a thread);
the table gives the medians over the rounds, the ratio to direct TCP and
the server's CPU-seconds per GiB.

* ``auto``, ``splice``, ``copy``: fastsocks (one worker, the splice engine)
  with ``--relay-bulk`` set so;
* ``c16k``, ``c256k``, ``c1m``, ``c4m``: ``benchmarks/floor.c`` built with
  ``-DBUF=`` that many bytes (recv and send through one buffer per
  direction); ``csplice``, ``csplice64k``: the same with ``-DSPLICE=``
  1 MiB or 64 KiB (splice through a pipe per direction).  They do nothing
  but relay: how fast each way of moving bytes can go on this machine.

Loopback only.  RESULTS.md ("Bulk by copying") has a run and what it shows.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
C_PATHS = {"c16k": ["-DBUF=16384"], "c256k": ["-DBUF=262144"], "c1m": ["-DBUF=1048576"],
           "c4m": ["-DBUF=4194304"], "csplice": ["-DSPLICE=1048576"],
           "csplice64k": ["-DSPLICE=65536"]}
MODES = ("auto", "splice", "copy")
PATHS = ("direct", *MODES, *C_PATHS)
_LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(path: str, binaries: dict[str, Path], log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """The server of ``path`` on loopback, once it listens: (process, port)."""
    if path in MODES:
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "fastsocks", "--listen", "127.0.0.1:0", "--workers", "1",
                 "--relay-bulk", path], stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            match = _LISTENING.search(log.read_text(errors="replace"))
            if match:
                return proc, int(match.group(1))
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        proc.kill()
        raise RuntimeError(f"fastsocks --relay-bulk {path} did not start: {log.read_text()}")
    port = _free_port()
    proc = subprocess.Popen([str(binaries[path]), "127.0.0.1", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{path} did not listen on port {port}")


def _measure(args: argparse.Namespace, proxy: tuple[int, int] | None) -> dict[str, Any]:
    """One throughput run; ``proxy``: (server pid, port), None for direct."""
    command = [sys.executable, "-m", "fastsocks.bench", "--mode", "throughput", "--streams",
               str(args.streams), "--duration", str(args.duration), "--json"]
    if proxy is not None:
        command += ["--proxy", f"127.0.0.1:{proxy[1]}", "--server-pid", str(proxy[0])]
    done = subprocess.run(command, capture_output=True, timeout=args.duration + 60, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=3, help="rounds (3)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per run (5)")
    p.add_argument("--streams", type=int, default=1, help="parallel streams (1)")
    p.add_argument("--paths", default=",".join(p for p in PATHS if p != "c256k"),
                   help=f"comma-separated, from {', '.join(PATHS)}")
    args = p.parse_args(argv)
    paths = [x.strip() for x in args.paths.split(",") if x.strip()]
    unknown = [x for x in paths if x not in PATHS]
    if unknown or not 1 <= args.repeat <= 20 or not 0 < args.duration <= 60 \
            or not 1 <= args.streams <= 64:
        p.error(f"unknown paths {unknown}" if unknown else
                "--repeat 1..20, --duration up to 60 s, --streams 1..64")
    with tempfile.TemporaryDirectory(prefix="fastsocks-bulk-") as tmp:
        binaries: dict[str, Path] = {}
        for path in paths:
            if path in C_PATHS:
                if shutil.which("cc") is None:
                    p.error("a C compiler (cc) is needed for the C paths")
                binaries[path] = Path(tmp) / path
                subprocess.run(["cc", "-O2", *C_PATHS[path], "-o", str(binaries[path]),
                                str(ROOT / "benchmarks" / "floor.c")], check=True, timeout=120)
        runs: dict[str, list[dict[str, Any]]] = {path: [] for path in paths}
        for round_ in range(1, args.repeat + 1):
            for path in paths:
                server = None
                try:
                    if path != "direct":
                        server = _start(path, binaries, Path(tmp) / f"{path}.log")
                    result = _measure(args, None if server is None
                                      else (server[0].pid, server[1]))
                finally:
                    if server is not None:
                        server[0].terminate()
                        server[0].wait(10)
                runs[path].append(result)
                cpu = result.get("server_cpu_s_per_gib")
                print(f"round {round_}: {path} {result['gbit_per_s']:.2f} Gbit/s"
                      + (f", {cpu:.3f} CPU-s/GiB" if cpu is not None else ""),
                      file=sys.stderr, flush=True)
    direct = statistics.median(r["gbit_per_s"] for r in runs.get("direct", [])) \
        if "direct" in runs else None
    print(f"{args.streams} stream(s), {args.duration:g} s a run, medians of {args.repeat} "
          f"rounds; {os.cpu_count()} CPUs\n")
    print("| path | Gbit/s (vs direct) | rounds | server CPU-s/GiB |")
    print("|---|---|---|---|")
    for path, results in runs.items():
        rates = [r["gbit_per_s"] for r in results]
        cpus = [r["server_cpu_s_per_gib"] for r in results if r.get("server_cpu_s_per_gib")]
        rate = statistics.median(rates)
        ratio = f" ({rate / direct:.2f}×)" if direct else ""
        cpu = f"{statistics.median(cpus):.3f}" if cpus else "—"
        print(f"| {path} | {rate:.2f}{ratio} | {' / '.join(f'{x:.1f}' for x in rates)} | {cpu} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
