"""Small helpers shared by the tests that watch server processes and sockets."""

from __future__ import annotations

import json
import os
import random
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from launcher import clean_env


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


def send_split(sock: socket.socket, data: bytes, split: bool) -> None:
    """All of ``data``, or one byte per segment (each of the server's reads sees a fragment)."""
    if not split:
        sock.sendall(data)
        return
    for i in range(len(data)):
        sock.send(data[i:i + 1])
        time.sleep(0.002)


def engine_reports(engine: Any, reports: dict[int, list[Any]], pair_id: int,
                   until: Any, timeout: float = 5.0) -> list[Any]:
    """The splice engine's reports of ``pair_id`` (its callbacks append to
    ``reports``), collected until ``until(them)`` holds; bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    while not until(reports.get(pair_id, [])):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"the engine reported {reports.get(pair_id)}"
        select.select([engine.done_fileno], [], [], remaining)
        engine.collect()
    return reports[pair_id]


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


# Echoes every connection until EOF, then closes it; raises its own descriptor
# limit so it can hold thousands.  Prints its port; exits when stdin closes.
_ECHO_PROCESS = r"""
import asyncio, resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
    def data_received(self, data):
        self.transport.write(data)
        if self.transport.get_write_buffer_size() > 1 << 20:
            self.transport.pause_reading()
    def pause_writing(self):
        self.transport.pause_reading()
    def resume_writing(self):
        self.transport.resume_reading()
    def eof_received(self):
        return False

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, "127.0.0.1", 0, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()

asyncio.run(main())
"""


class EchoProcess:
    """A TCP echo server on 127.0.0.1 in its own process (the ``echo_process`` fixture).

    Unlike the threaded ``echo_target`` it holds thousands of connections
    without taking descriptors or CPU from the test process.
    """

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _ECHO_PROCESS], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=clean_env())
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip().isdigit(), f"echo process did not start: {line!r}"
        self.address = ("127.0.0.1", int(line))

    def close(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc.stdout.close()


def terminate(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 5 s; reaped either way."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def wait_lines(path: Path, count: int, timeout: float = 5.0) -> list[str]:
    """Wait until the file at ``path`` holds at least ``count`` lines; return them all."""
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        lines = text.splitlines()
        if len(lines) >= count or time.monotonic() > deadline:
            assert len(lines) >= count, f"wanted {count} lines in {path}, got:\n{text}"
            return lines
        time.sleep(0.05)


def access_entries(path: Path, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The JSON access-log lines of ``path``, once there are ``count`` (they are
    flushed within a second), or what there is after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count or time.monotonic() > deadline:
            return [json.loads(line) for line in lines]
        time.sleep(0.05)
