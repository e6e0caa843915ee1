"""Small helpers shared by the tests that watch server processes and sockets."""

from __future__ import annotations

import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any


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


class ServerProcess:
    """``python -m fastsocks ARGS`` whose log (stderr) is read in a thread.

    Returns once the server logged its "listening on" line; ``ports`` are the
    ports of that line in order, ``lines`` every log line so far.  For tests
    that signal the process themselves (the ``fastsocks_server`` fixture of
    conftest.py stops its servers for the test).
    """

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "fastsocks", *args],
                                     stderr=subprocess.PIPE, text=True, env=env)
        assert self.proc.stderr is not None
        self.lines: list[str] = []
        while True:
            line = self.proc.stderr.readline()
            assert line, "".join(self.lines)
            self.lines.append(line)
            if " listening on " in line:
                break
        listening = line.split(" listening on ", 1)[1].split(" (", 1)[0]
        self.ports = [int(a.rpartition(":")[2]) for a in listening.split(", ")]
        self.port = self.ports[0]
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_log(self, text: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log:
            assert time.monotonic() < deadline, f"{text!r} never logged:\n{self.log}"
            time.sleep(0.02)

    def wait(self, timeout: float) -> int:
        """The exit status, once the log is read to its end."""
        code = self.proc.wait(timeout)
        self._reader.join(5)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        return code

    def stop(self, timeout: float = 20.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)


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
