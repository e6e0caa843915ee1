"""RFC 1929 where the splice engine negotiates: the users file's cache, in the engine.

A server started with a users file lets the engine answer X'05 02' and the
logins the users file's cache vouches for (``Users.mirror``); the first
login of a user, a wrong password, and every login while a source backs off
after its failures come back to the loop, which checks them in full.  These
tests hold what a client sees of that, and that a reload which changes a
password, or a back-off, is never bypassed by the engine's copy of the cache.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from launcher import FastsocksProcess
from procs import recv_exact

from fastsocks import codec as fcodec

if not sys.platform.startswith("linux"):
    pytest.skip("the splice engine is Linux-only", allow_module_level=True)

Start = Callable[..., FastsocksProcess]


def _login(server: FastsocksProcess, user: bytes, password: bytes,
           source: str = "127.0.0.1") -> tuple[socket.socket, bytes]:
    """A connection that offered both methods and sent its login: (it, the status)."""
    s = socket.socket()
    s.settimeout(10)
    s.bind((source, 0))
    s.connect(server.address)
    s.sendall(b"\x05\x02\x00\x02")
    assert recv_exact(s, 2) == b"\x05\x02"
    s.sendall(b"\x01" + bytes([len(user)]) + user + bytes([len(password)]) + password)
    try:
        return s, recv_exact(s, 2)
    except (ConnectionError, EOFError, AssertionError):
        return s, b""


def _relayed(s: socket.socket, target: tuple[str, int]) -> None:
    """The request after a good login, and a round trip through the relay."""
    s.sendall(b"\x05\x01\x00" + fcodec.encode_address(*target) + b"early")
    assert recv_exact(s, 10)[1] == 0
    assert recv_exact(s, 5) == b"early"
    s.sendall(b"ping")
    assert recv_exact(s, 4) == b"ping"


def _add_user(path: Path, name: str, password: bytes) -> None:
    subprocess.run([sys.executable, "-m", "fastsocks", "users", "add", str(path), name,
                    "--cost", "4"], input=password + b"\n", check=True, capture_output=True)


def test_logins_through_the_engine_keep_every_answer(fastsocks_server: Start, tmp_path: Path,
                                                     echo_target: Any) -> None:
    users = tmp_path / "users"
    _add_user(users, "alice", b"s3cret")
    log = tmp_path / "access.log"
    server = fastsocks_server("--users", str(users), "--access-log", str(log),
                              "--access-log-format", "json")
    baseline = server.fd_count()
    for _ in range(20):  # the first checked by the loop, the others by the engine
        s, status = _login(server, b"alice", b"s3cret")
        assert status == b"\x01\x00"
        _relayed(s, echo_target.address)
        s.close()
    for password in (b"wrong", b"s3cret!", b"S3CRET"):  # after a good one is cached
        s, status = _login(server, b"alice", password)
        assert status == b"\x01\x01" and s.recv(1) == b""
        s.close()
    s, status = _login(server, b"mallory", b"s3cret")
    assert status == b"\x01\x01"
    s.close()
    # BIND after a cached login: the engine hands the connection back, logged in.
    s, status = _login(server, b"alice", b"s3cret")
    assert status == b"\x01\x00"
    s.sendall(b"\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x00")
    assert recv_exact(s, 10)[1] == 0
    s.close()
    # A reload that changes the password: the old one no longer opens anything.
    _add_user(users, "alice", b"n3w")
    server.proc.send_signal(signal.SIGHUP)
    server.wait_log("configuration reloaded")
    s, status = _login(server, b"alice", b"s3cret")
    assert status == b"\x01\x01"
    s.close()
    for _ in range(3):
        s, status = _login(server, b"alice", b"n3w")
        assert status == b"\x01\x00"
        _relayed(s, echo_target.address)
        s.close()
    assert server.wait_for_fds(baseline, timeout=10) <= baseline
    assert server.stop() == 0
    records = [json.loads(line) for line in log.read_text().splitlines()]
    relayed = [r for r in records if r["command"] == "CONNECT" and r["reply"] == 0]
    assert len(relayed) == 23 and {r["user"] for r in relayed} == {"alice"}, \
        [(r["command"], r["user"], r["reply"], r["reason"]) for r in records]
    assert [r["user"] for r in records if r["reason"] == "auth_failed"] == \
        ["alice"] * 3 + ["mallory", "alice"], records
    assert [r["user"] for r in records if r["command"] == "BIND"] == ["alice"], records


def test_a_source_backing_off_is_refused_even_a_cached_login(fastsocks_server: Start,
                                                              tmp_path: Path,
                                                              echo_target: Any) -> None:
    users = tmp_path / "users"
    _add_user(users, "alice", b"s3cret")
    server = fastsocks_server("--users", str(users), "--auth-failures-per-ip", "3")
    for _ in range(2):  # the login is in the cache, the engine's too
        s, status = _login(server, b"alice", b"s3cret")
        assert status == b"\x01\x00"
        s.close()
    for _ in range(3):
        s, status = _login(server, b"alice", b"wrong")
        assert status == b"\x01\x01"
        s.close()
    # This address waits (1 s): the right, cached password gets X'01' at once.
    started = time.monotonic()
    s, status = _login(server, b"alice", b"s3cret")
    assert status == b"\x01\x01"
    assert time.monotonic() - started < 0.5
    s.close()
    # Another address is not held up (the loop answers it while the engine pauses).
    s, status = _login(server, b"alice", b"s3cret", source="127.0.0.2")
    assert status == b"\x01\x00"
    _relayed(s, echo_target.address)
    s.close()
    time.sleep(1.1)
    s, status = _login(server, b"alice", b"s3cret")
    assert status == b"\x01\x00"
    _relayed(s, echo_target.address)
    s.close()
    assert "limit auth_failures_per_ip reached" in server.log
