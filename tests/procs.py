"""Small helpers shared by the tests that watch server processes and sockets."""

from __future__ import annotations

import os
import random
import select
import socket
import subprocess
import threading


def children(pid: int) -> list[int]:
    """The direct child processes of ``pid`` (a master's workers)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return sorted(int(p) for p in out.stdout.split())


def sockets(pid: int) -> int:
    """How many sockets ``pid`` holds open."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                n += 1
        except OSError:
            pass
    return n


def recv_exact(s: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes, or fail naming what arrived before the close."""
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        assert chunk, f"closed after {data!r}"
        data += chunk
    return data


def free_port(host: str) -> int:
    """A port on ``host`` outside the ephemeral range, free right now.

    For programs that need a number in their config (HAProxy, microsocks);
    bound and released at once, so a race is possible but unlikely.
    """
    rng = random.Random()
    for _ in range(50):
        port = rng.randrange(20000, 30000)
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free port on {host}")


class UdpEcho:
    """A UDP echo server on ``host`` port 0 in a thread; ``received`` lists what came."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                                  socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.running:
            if select.select([self.sock], [], [], 0.05)[0]:
                data, addr = self.sock.recvfrom(65535)
                self.received.append(data)
                self.sock.sendto(data, addr)

    def close(self) -> None:
        self.running = False
        self.thread.join(5)
        self.sock.close()
