"""Small helpers shared by the tests that watch server processes and sockets."""

from __future__ import annotations

import os
import socket
import subprocess


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
