"""Two source trees of fastsocks, one handshake load, rounds alternated: before and after.

    python benchmarks/ab.py OLD_TREE NEW_TREE [--rounds 3] [--duration 6]
                            [--server-args "--users FILE"] [-- BENCH ARGS...]

A change to the per-connection path is judged on this machine's noise only
when both trees run in the same invocation, one after the other, round by
round.  Each round starts a fresh one-worker server from OLD_TREE, then one
from NEW_TREE (``PYTHONPATH``: each tree's package, its compiled modules
built in place; the other way round in even rounds, since whichever runs
second meets the first one's TIME_WAIT sockets and a warmer machine), and
runs ``fastsocks bench --mode handshake
--concurrency 64`` against it with ``--server-pid`` (server CPU per
handshake, from /proc) to one echo target started once.  Before each server
it waits until fewer than ``--time-wait`` sockets are in TIME_WAIT (the
loopback ports a run leaves behind).  Prints each round and the medians as
JSON: server CPU-µs per handshake, handshakes/s, p50, and NEW/OLD, and the
server's CPU split by thread and by user/kernel time (``loop_user``,
``loop_kernel``: the event loop's thread; ``engine_user``,
``engine_kernel``: the relay engine's), from /proc/PID/task/*/stat over the
whole run.  The kernel's share of a short connection is most of it and most
of the noise; the loop's user time is the control plane's Python.
Every process runs in its own tree: ``python -m`` puts the working
directory first on ``sys.path``, before ``PYTHONPATH``, so a run started
from one tree would otherwise load that tree for both servers.
Anything after ``--`` goes to ``fastsocks bench`` (``--target-name
localhost``, ``--protocol socks4``, ``--user alice --password s3cret``).
Loopback only; every run is bounded in time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import socket
import statistics
import subprocess
import sys
import time


def time_wait() -> int:
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                fields = line.split()
                return int(fields[fields.index("tw") + 1])
    return 0


def thread_times(pid: int) -> dict[str, tuple[float, float]]:
    """(user, kernel) CPU seconds of each thread: ``loop`` (the main one), ``engine``
    (the other: the relay engine's), from /proc/PID/task/*/stat."""
    tick = os.sysconf("SC_CLK_TCK")
    times: dict[str, tuple[float, float]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        name = "loop" if tid == str(pid) else "engine"
        user, kernel = times.get(name, (0.0, 0.0))
        times[name] = (user + int(fields[11]) / tick, kernel + int(fields[12]) / tick)
    return times


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(proc: subprocess.Popen[bytes], log: str, pattern: str,
                   timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(log) as f:
            found = re.search(pattern, f.read())
        if found:
            return found.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    with open(log) as f:
        raise SystemExit(f"did not start ({log}):\n{f.read()[-2000:]}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=6.0)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--server-args", default="", help="extra arguments for both servers")
    p.add_argument("--time-wait", type=int, default=3000)
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = p.parse_args(argv[:cut])
    extra = argv[cut + 1:]  # for fastsocks bench
    trees = {"old": os.path.abspath(args.old), "new": os.path.abspath(args.new)}
    logs = "/tmp/fastsocks-ab"
    os.makedirs(logs, exist_ok=True)
    echo_log = f"{logs}/echo.log"
    echo = subprocess.Popen([sys.executable, "-m", "fastsocks", "bench", "--serve", "echo"],
                            stdout=open(echo_log, "w"), stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONPATH=trees["new"]), cwd=trees["new"])
    rounds: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    try:
        target = wait_listening(echo, echo_log, r"(127\.0\.0\.1:\d+)")
        for r in range(args.rounds):
            order = list(trees.items())
            for name, tree in order if r % 2 == 0 else order[::-1]:
                deadline = time.monotonic() + 180
                while time_wait() > args.time_wait and time.monotonic() < deadline:
                    time.sleep(1)
                env = dict(os.environ, PYTHONPATH=tree)
                port = free_port()
                log = f"{logs}/server-{name}.log"
                server = subprocess.Popen(
                    [sys.executable, "-m", "fastsocks", "--listen", f"127.0.0.1:{port}",
                     "--workers", "1", *shlex.split(args.server_args)],
                    stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, cwd=tree)
                try:
                    wait_listening(server, log, r"listening on (127\.0\.0\.1:\d+)")
                    before = thread_times(server.pid)
                    out = subprocess.run(
                        [sys.executable, "-m", "fastsocks", "bench", "--proxy",
                         f"127.0.0.1:{port}", "--target", target, "--mode", "handshake",
                         "--concurrency", str(args.concurrency), "--duration",
                         str(args.duration), "--server-pid", str(server.pid), "--json", *extra],
                        env=env, cwd=tree, capture_output=True, timeout=args.duration + 120,
                        check=True)
                    after = thread_times(server.pid)
                finally:
                    server.terminate()
                    server.wait(10)
                result = json.loads(out.stdout)
                row = {"server_cpu_us": round(result["server_cpu_us_per_handshake"], 1),
                       **{f"{thread}_{kind}": round(
                           (after[thread][i] - before.get(thread, (0.0, 0.0))[i])
                           / max(result["handshakes"], 1) * 1e6, 1)
                          for thread in after for i, kind in enumerate(("user", "kernel"))},
                       "per_s": round(result["per_s"]), "p50_ms": round(result["p50_ms"], 3),
                       "errors": sum(result["errors"].values())}
                rounds[name].append(row)
                print(json.dumps({"round": r + 1, "tree": name, **row}), flush=True)
    finally:
        echo.terminate()
        echo.wait(10)
    medians = {name: {key: statistics.median(row[key] for row in rows)
                      for key in rows[0]}
               for name, rows in rounds.items()}
    print(json.dumps({"medians": medians,
                      "new/old": {key: round(medians["new"][key] / medians["old"][key], 3)
                                  for key in medians["new"] if medians["old"][key]}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
