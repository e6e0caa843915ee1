"""What a reload (SIGHUP) costs the connections being served meanwhile.

    python benchmarks/reload.py [--networks 100000] [--seconds 6]

Starts fastsocks (one worker) with an empty config and a TCP target on
127.0.0.1 that accepts and closes; a probe makes one SOCKS5 CONNECT after
another (c=1, to the target's IP literal) for ``--seconds``; after 2 s the
config is replaced by a deny rule of ``--networks`` networks (none of them
loopback) and the server gets SIGHUP.  Prints, as JSON: the CONNECTs made,
their median and longest latency, the longest in the window between the
SIGHUP and the server's ``configuration reloaded`` line, and that window.
Loopback only; every loop is bounded in time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time


def deny_config(path: str, count: int) -> None:
    nets = [f'"{10 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}.0/24"' for i in range(count)]
    with open(path, "w") as f:
        f.write('[[rules]]\naction = "deny"\ndst = [\n' + ",\n".join(nets) + "\n]\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--networks", type=int, default=100_000)
    p.add_argument("--seconds", type=float, default=6.0)
    args = p.parse_args()

    target = socket.socket()
    target.bind(("127.0.0.1", 0))
    target.listen(512)
    target.settimeout(0.5)
    tport = target.getsockname()[1]
    running = True

    def accept_and_close() -> None:
        while running:
            try:
                target.accept()[0].close()
            except socket.timeout:
                pass

    threading.Thread(target=accept_and_close, daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp:
        config = os.path.join(tmp, "fastsocks.toml")
        open(config, "w").close()
        proc = subprocess.Popen([sys.executable, "-m", "fastsocks", "--config", config, "--listen",
                                 "127.0.0.1:0", "--workers", "1", "--log-level", "info"],
                                stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        port = 0
        for line in proc.stderr:
            match = re.search(r"listening on 127\.0\.0\.1:(\d+) ", line)
            if match:
                port = int(match.group(1))
                break
        reloaded: list[float] = []

        def watch() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                if "configuration reloaded" in line:
                    reloaded.append(time.monotonic())

        threading.Thread(target=watch, daemon=True).start()
        request = b"\x05\x01\x00\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack(">H", tport)
        latencies: list[tuple[float, float]] = []
        sent = 0.0
        start = time.monotonic()
        try:
            while time.monotonic() - start < args.seconds:
                if not sent and time.monotonic() - start > 2:
                    deny_config(config, args.networks)
                    sent = time.monotonic()
                    proc.send_signal(signal.SIGHUP)
                began = time.monotonic()
                with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                    s.sendall(request)
                    got = b""
                    while len(got) < 12:
                        chunk = s.recv(64)
                        if not chunk:
                            break
                        got += chunk
                    assert got[:4] == b"\x05\x00\x05\x00", got  # method 00, then succeeded
                latencies.append((began, time.monotonic() - began))
        finally:
            running = False
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    done = reloaded[0] if reloaded else float("nan")
    during = [lat for began, lat in latencies if sent <= began + lat and began <= done]
    print(json.dumps({
        "networks": args.networks,
        "connects": len(latencies),
        "median_ms": round(statistics.median(lat for _, lat in latencies) * 1000, 2),
        "longest_ms": round(max(lat for _, lat in latencies) * 1000, 1),
        "longest_during_reload_ms": round(max(during, default=0.0) * 1000, 1),
        "sighup_to_reloaded_ms": round((done - sent) * 1000),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
