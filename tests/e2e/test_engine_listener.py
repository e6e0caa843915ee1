"""A server whose handshakes the splice engine negotiates (runtime/listener.py).

Without authentication or a PROXY protocol listener, the engine reads the
greeting and the request itself (and, without a limit by address, accepts
too); these tests hold the server-level edges of that path: what it hands
back (SOCKS4, HTTP, UDP ASSOCIATE on the same port), the handshake timeout
and limits on a connection no transport holds, reloads that turn
authentication on and move accepting between the engine and the loop, and
the descriptors after all of it.
"""

from __future__ import annotations

import signal
import socket
import struct
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


def _open(server: FastsocksProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def _connect(server: FastsocksProcess, target: tuple[str, int]) -> tuple[socket.socket, bytes]:
    s = _open(server)
    s.sendall(b"\x05\x01\x00" + b"\x05\x01\x00" + fcodec.encode_address(*target))
    assert recv_exact(s, 2) == b"\x05\x00"
    return s, recv_exact(s, 10)


def _closed_without_a_byte(s: socket.socket, within: float) -> float:
    """Seconds until the server closed ``s``, asserting it sent nothing."""
    started = time.monotonic()
    s.settimeout(within)
    try:
        assert s.recv(16) == b""
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def test_engine_path_serves_every_protocol_on_the_port(fastsocks_server: Start,
                                                       echo_target: Any) -> None:
    server = fastsocks_server()
    if "splice engine" not in server.impl:
        pytest.skip("pure build: the loop negotiates")
    baseline = server.fd_count()
    host, port = echo_target.address
    # SOCKS5 CONNECT: the engine's path, with bytes sent before the reply.
    s, reply = _connect(server, (host, port))
    assert reply[1] == 0
    s.sendall(b"ping")
    assert recv_exact(s, 4) == b"ping"
    s.close()
    # SOCKS4 and HTTP CONNECT on the same port: handed back to the loop.
    s = _open(server)
    s.sendall(b"\x04\x01" + struct.pack(">H", port) + socket.inet_aton(host) + b"me\x00")
    assert recv_exact(s, 8)[1] == 90
    s.sendall(b"four")
    assert recv_exact(s, 4) == b"four"
    s.close()
    s = _open(server)
    s.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 200")
    s.sendall(b"http")
    assert recv_exact(s, 4) == b"http"
    s.close()
    # UDP ASSOCIATE: handed back after the engine's X'05 00'.
    s = _open(server)
    s.sendall(b"\x05\x01\x00\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00")
    assert recv_exact(s, 2) == b"\x05\x00"
    assert recv_exact(s, 10)[1] == 0
    s.close()
    # A refused connect: the engine hands the client back to be refused.
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        closed_port = spare.getsockname()[1]
    s, reply = _connect(server, ("127.0.0.1", closed_port))
    assert reply[1] == 5 and s.recv(1) == b""
    s.close()
    assert server.wait_for_fds(baseline, timeout=10) <= baseline


def test_handshake_timeout_and_limits_without_a_transport(fastsocks_server: Start,
                                                          echo_target: Any) -> None:
    server = fastsocks_server("--handshake-timeout", "0.5", "--max-connections-per-ip", "2")
    baseline = server.fd_count()
    silent = socket.create_connection(("127.0.0.1", server.port))
    half = socket.create_connection(("127.0.0.1", server.port))
    half.sendall(b"\x05\x01\x00\x05\x01")  # the greeting, half a request
    assert recv_exact(half, 2) == b"\x05\x00"
    time.sleep(0.1)
    # A third connection from this address: over the limit, closed at once.
    third = socket.create_connection(("127.0.0.1", server.port))
    assert _closed_without_a_byte(third, 2.0) < 1.0
    third.close()
    _both_time_out(server, silent, half, 0.2, echo_target.address, baseline)


def _both_time_out(server: FastsocksProcess, silent: socket.socket, half: socket.socket,
                   not_before: float, target: tuple[str, int], baseline: int) -> None:
    """Both handshakes end at the timeout, not before and not much after; the slots
    are free again (a CONNECT goes through), and no descriptor is left."""
    assert not_before < _closed_without_a_byte(silent, 5.0) < 3.0
    half.settimeout(5.0)
    assert half.recv(16) == b""
    silent.close()
    half.close()
    s, reply = _connect(server, target)
    assert reply[1] == 0
    s.close()
    assert server.wait_for_fds(baseline, timeout=10) <= baseline


def test_a_reload_that_turns_authentication_on(fastsocks_server: Start, echo_target: Any,
                                               tmp_path: Path) -> None:
    """The engine stops answering greetings: the loop chooses username/password."""
    config = tmp_path / "fastsocks.toml"
    config.write_text("")
    server = fastsocks_server("--config", str(config))
    s, reply = _connect(server, echo_target.address)
    assert reply[1] == 0
    s.close()
    users = tmp_path / "users.txt"
    subprocess.run([sys.executable, "-m", "fastsocks", "users", "add", str(users), "alice",
                    "--cost", "4"], input=b"secret\n", check=True, capture_output=True)
    config.write_text(f'users = "{users}"\n')
    server.proc.send_signal(signal.SIGHUP)
    server.wait_log("configuration reloaded")
    s = _open(server)
    s.sendall(b"\x05\x01\x00")
    assert recv_exact(s, 2) == b"\x05\xff"
    s.close()
    s = _open(server)
    s.sendall(b"\x05\x02\x00\x02")
    assert recv_exact(s, 2) == b"\x05\x02"
    s.sendall(b"\x01\x05alice\x06secret")
    assert recv_exact(s, 2) == b"\x01\x00"
    s.sendall(b"\x05\x01\x00" + fcodec.encode_address(*echo_target.address))
    assert recv_exact(s, 10)[1] == 0
    s.sendall(b"auth")
    assert recv_exact(s, 4) == b"auth"
    s.close()


def test_engine_accepted_handshakes_still_time_out(fastsocks_server: Start,
                                                   echo_target: Any) -> None:
    """The engine accepts (no limit by address): a silent or half handshake goes to the
    loop after a quarter second and ends at the handshake timeout all the same."""
    server = fastsocks_server("--handshake-timeout", "0.6")
    baseline = server.fd_count()
    silent = socket.create_connection(("127.0.0.1", server.port))
    half = socket.create_connection(("127.0.0.1", server.port))
    half.sendall(b"\x05\x01\x00\x05\x01")
    assert recv_exact(half, 2) == b"\x05\x00"
    _both_time_out(server, silent, half, 0.3, echo_target.address, baseline)


def test_a_reload_moves_accepting_between_the_engine_and_the_loop(
        fastsocks_server: Start, echo_target: Any, tmp_path: Path) -> None:
    """A limit by address needs the loop at accept; without one the engine accepts."""
    config = tmp_path / "fastsocks.toml"
    config.write_text("")
    server = fastsocks_server("--config", str(config))
    baseline = server.fd_count()
    first, reply = _connect(server, echo_target.address)
    second, reply2 = _connect(server, echo_target.address)
    assert reply[1] == reply2[1] == 0
    second.close()
    config.write_text("[limits]\nconnections_per_ip = 1\n")
    server.proc.send_signal(signal.SIGHUP)
    server.wait_log("configuration reloaded")
    # The loop admits by address now: one is counted, the next is over the limit.
    counted, reply = _connect(server, echo_target.address)
    assert reply[1] == 0
    over = _open(server)
    assert _closed_without_a_byte(over, 3.0) < 2.0
    over.close()
    first.sendall(b"kept")  # admitted before the limit: untouched
    assert recv_exact(first, 4) == b"kept"
    first.close()
    counted.close()
    time.sleep(0.2)
    s, reply = _connect(server, echo_target.address)
    assert reply[1] == 0
    s.close()
    config.write_text("")
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while server.log.count("configuration reloaded") < 2:
        assert time.monotonic() < deadline, server.log
        time.sleep(0.02)
    both = [_connect(server, echo_target.address) for _ in range(2)]
    assert all(reply[1] == 0 for _, reply in both)
    for s, _ in both:
        s.sendall(b"echo")
        assert recv_exact(s, 4) == b"echo"
        s.close()
    assert server.wait_for_fds(baseline, timeout=10) <= baseline
