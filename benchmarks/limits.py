"""What limits cost and how exactly bandwidth limits hold.

    python benchmarks/limits.py [--repeat 3] [--duration 3]

In one invocation, alternating, on 127.0.0.1 port 0 with one worker:

* handshakes at concurrency 16 against a server without limits and one with
  every connection limit on (set high enough never to refuse, so each
  connection pays for the checks and counts): rate and server CPU per
  handshake, and the ratio limited / plain;
* one bulk stream through ``--bandwidth-per-connection RATE`` on the splice
  engine and on the protocol relay: the rate the target receives in the
  steady state (after the socket buffers have filled, from 1.5 s on) / the
  rate set, and the server CPU per GiB relayed;
* four streams of one user through ``--bandwidth-per-user RATE``: their sum
  at the target / the rate set.

Prints medians as JSON; benchmarks/RESULTS.md records them with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from workers import bench, start  # this directory's --workers benchmark

RATE = 20 * 1024 * 1024  # bytes/s for the bandwidth runs
LIMITS = ["--max-connections", "100000", "--max-connections-per-ip", "100000",
          "--max-connections-per-user", "100000", "--handshake-rate-per-ip", "1000000"]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def steady_rate(port: int, pid: int, streams: int, seconds: float,
                auth: tuple[str, str] | None = None) -> tuple[float, float]:
    """Bytes/s the target receives from 1.5 s on, and server CPU-s per GiB then."""
    sink = socket.socket()
    sink.bind(("127.0.0.1", 0))
    sink.listen(16)
    received = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + 1.5 + seconds + 1

    def drain(conn: socket.socket) -> None:
        conn.settimeout(1)
        while time.monotonic() < stop_at:
            try:
                n = len(conn.recv(1 << 20))
            except socket.timeout:
                continue
            except OSError:
                return
            if not n:
                return
            with lock:
                received[0] += n
        conn.close()

    def accept() -> None:
        sink.settimeout(1)
        for _ in range(streams):
            try:
                conn, _ = sink.accept()
            except OSError:
                return
            threading.Thread(target=drain, args=(conn,), daemon=True).start()

    def send() -> None:
        s = socket.create_connection(("127.0.0.1", port))
        if auth is None:
            s.sendall(b"\x05\x01\x00")
            s.recv(2)
        else:
            s.sendall(b"\x05\x01\x02")
            s.recv(2)
            u, p = auth[0].encode(), auth[1].encode()
            s.sendall(b"\x01" + bytes((len(u),)) + u + bytes((len(p),)) + p)
            s.recv(2)
        s.sendall(b"\x05\x01\x00\x01\x7f\x00\x00\x01" + sink.getsockname()[1].to_bytes(2, "big"))
        s.recv(10)
        block = bytes(1 << 20)
        s.settimeout(1)
        while time.monotonic() < stop_at:
            try:
                s.send(block)
            except socket.timeout:
                continue
            except OSError:
                break
        s.close()

    threading.Thread(target=accept, daemon=True).start()
    senders = [threading.Thread(target=send, daemon=True) for _ in range(streams)]
    for t in senders:
        t.start()
    time.sleep(1.5)
    with lock:
        start_bytes = received[0]
    start_cpu, start = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    with lock:
        end_bytes = received[0]
    end_cpu, end = cpu_seconds(pid), time.monotonic()
    for t in senders:
        t.join(5)
    sink.close()
    moved = end_bytes - start_bytes
    return moved / (end - start), (end_cpu - start_cpu) / (moved / 2 ** 30) if moved else 0.0


def start_logged(*args: str) -> tuple[subprocess.Popen[str], int]:
    return start(1, *args)


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--duration", type=float, default=3.0)
    args = p.parse_args()
    d = str(args.duration)
    rows: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        rows.setdefault(key, []).append(value)

    with tempfile.TemporaryDirectory() as tmp:
        users = os.path.join(tmp, "users")
        subprocess.run([sys.executable, "-m", "fastsocks", "users", "add", users, "u",
                        "--cost", "4"], input="p\n", text=True, check=True, capture_output=True)
        for _ in range(args.repeat):
            for name, extra in (("plain", []), ("limited", LIMITS)):
                proc, port = start_logged(*extra)
                try:
                    h = bench(port, proc.pid, "--mode", "handshake", "--concurrency", "16",
                              "--duration", d)
                finally:
                    stop(proc)
                add(f"handshake_per_s_{name}", h["per_s"])
                add(f"handshake_server_cpu_us_{name}", h["server_cpu_us_per_handshake"])
            for relay in ("splice", "protocol"):
                proc, port = start_logged("--relay", relay, "--bandwidth-per-connection",
                                          str(RATE))
                try:
                    rate, cpu = steady_rate(port, proc.pid, 1, args.duration)
                finally:
                    stop(proc)
                add(f"per_connection_rate_ratio_{relay}", rate / RATE)
                add(f"per_connection_server_cpu_s_per_gib_{relay}", cpu)
            proc, port = start_logged("--users", users, "--bandwidth-per-user", str(RATE))
            try:
                rate, cpu = steady_rate(port, proc.pid, 4, args.duration, ("u", "p"))
            finally:
                stop(proc)
            add("per_user_4_streams_rate_ratio", rate / RATE)
            add("per_user_server_cpu_s_per_gib", cpu)
    medians = {key: round(statistics.median(values), 4) for key, values in rows.items()}
    medians["handshake_rate_ratio_limited_over_plain"] = round(
        medians["handshake_per_s_limited"] / medians["handshake_per_s_plain"], 3)
    medians["handshake_cpu_ratio_limited_over_plain"] = round(
        medians["handshake_server_cpu_us_limited"] / medians["handshake_server_cpu_us_plain"], 3)
    print(json.dumps({"repeat": args.repeat, "duration": args.duration, "rate": RATE,
                      "medians": medians, "all": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
