"""--workers N: a master and N SO_REUSEPORT workers, supervised."""

from __future__ import annotations

import os
import signal
import socket
import time
from typing import Any, Callable, cast

import pytest
from launcher import FastsocksProcess
from procs import children as _children
from procs import sockets as _sockets

from fastsocks import codec as fcodec


class Workers(FastsocksProcess):
    """A master and its workers, with a client to try them."""

    def connect(self, target: tuple[str, int]) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        s.sendall(b"\x05\x01\x00" + b"\x05\x01\x00" + fcodec.encode_address(*target))
        reply = b""
        while len(reply) < 12:  # method selection (2) + IPv4 reply (10)
            chunk = s.recv(12 - len(reply))
            assert chunk, reply
            reply += chunk
        assert reply[:2] == b"\x05\x00" and reply[3] == 0, reply
        return s


@pytest.fixture
def echo(echo_target: Any) -> tuple[str, int]:
    return echo_target.address


@pytest.fixture
def start_workers(fastsocks_server: Callable[..., FastsocksProcess]) -> Callable[[int], Workers]:
    """``start_workers(n)``: a master with ``n`` workers on 127.0.0.1:0 (20 s to stop)."""

    def start(n: int) -> Workers:
        return cast(Workers, fastsocks_server("--workers", str(n), process_class=Workers, stop_timeout=20.0))

    return start


def test_connections_spread_over_workers_on_one_port(start_workers: Callable[[int], Workers],
                                                     echo: tuple[str, int]) -> None:
    w = start_workers(2)
    try:
        children = _children(w.proc.pid)
        assert len(children) == 2
        baseline = {pid: _sockets(pid) for pid in children}
        held = [w.connect(echo) for _ in range(40)]
        for s in held:
            s.sendall(b"ping")
            assert s.recv(4) == b"ping"
        gained = {pid: _sockets(pid) - baseline[pid] for pid in children}
        # Each held connection costs its worker two sockets; SO_REUSEPORT
        # hashes connections over both workers.
        assert sum(gained.values()) == 80
        assert all(g >= 10 for g in gained.values()), gained
        for s in held:
            s.close()
    finally:
        assert w.stop() == 0
    assert _children(w.proc.pid) == []


def test_a_dead_worker_is_replaced(start_workers: Callable[[int], Workers], echo: tuple[str, int]) -> None:
    w = start_workers(2)
    try:
        first, second = _children(w.proc.pid)
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            now = _children(w.proc.pid)
            if len(now) == 2 and first not in now:
                break
            time.sleep(0.05)
        now = _children(w.proc.pid)
        assert len(now) == 2 and first not in now and second in now
        for _ in range(20):  # every connection is served, whichever worker takes it
            s = w.connect(echo)
            s.sendall(b"x")
            assert s.recv(1) == b"x"
            s.close()
        assert any("killed by signal 9; restarting" in line for line in w.lines), w.lines
    finally:
        assert w.stop() == 0


def test_sigterm_stops_master_and_workers_with_relays_open(start_workers: Callable[[int], Workers],
                                                           echo: tuple[str, int]) -> None:
    w = start_workers(3)
    held = [w.connect(echo) for _ in range(10)]
    children = _children(w.proc.pid)
    assert len(children) == 3
    assert w.stop() == 0
    for pid in children:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    for s in held:
        s.settimeout(5)
        assert s.recv(1) == b""
        s.close()
    assert any("fastsocks stopped" in line for line in w.lines)
