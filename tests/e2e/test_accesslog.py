"""The access log: one line per connection, at close, as text or JSON.

Real ``fastsocks`` processes with ``--access-log FILE``; loopback targets only.
Lines are written in batches at most a second late, so each test polls the
file for its lines (bounded), and stops the server at the end to prove no
connection got a second line.
"""

from __future__ import annotations

import calendar
import json
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable


from procs import wait_lines


WAIT = 5.0  # seconds a line may take to reach the file (written at most 1 s late)

# time client user command target dialled reply up down duration reason [datagrams=U/D]
_LINE = re.compile(
    r"^(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (?P<client>\S+) (?P<user>\S+) "
    r"(?P<command>\S+) (?P<target>\S+) (?P<dialled>\S+) (?P<reply>\S+) (?P<up>\d+) "
    r"(?P<down>\d+) (?P<duration>\d+\.\d{3}) (?P<reason>\S+)(?: datagrams=(?P<dgrams>\d+/\d+))?$"
)

def _lines(path: Path, count: int, timeout: float = WAIT) -> list[str]:
    """Wait until ``path`` holds at least ``count`` lines; return them all."""
    return wait_lines(path, count, timeout)


def _parse(line: str) -> dict[str, str]:
    match = _LINE.match(line)
    assert match, f"not an access log line: {line!r}"
    return match.groupdict()


def _addr(sockname: Any) -> str:
    host, port = sockname[0], sockname[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _stop_and_count(server: Any, path: Path, expected: int) -> list[str]:
    """Stop the server (it flushes); exactly ``expected`` lines, no more."""
    assert server.stop() == 0, server.log
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == expected, "\n".join(lines)
    return lines


# -- CONNECT ------------------------------------------------------------------


def test_connect_line_has_every_field_and_the_bytes_sent(
        relay_path: tuple[tuple[str, ...], dict[str, str]], tmp_path: Path,
        fastsocks_server: Callable[..., Any], socks: Any,
        tcp_target: Callable[..., Any]) -> None:
    up, down = 150_000, 70_001  # more than one read's worth each way

    def handler(conn: socket.socket) -> None:
        got = 0
        while got < up:
            chunk = conn.recv(65536)
            assert chunk
            got += len(chunk)
        conn.sendall(b"d" * down)

    target = tcp_target(handler)
    log_path = tmp_path / "access.log"
    args, env = relay_path
    server = fastsocks_server("--access-log", str(log_path), *args, env=env)
    sock, (rep, _, _) = socks.connect(server.address, "127.0.0.1", target.address[1])
    client = sock.getsockname()
    assert rep == 0
    sock.sendall(b"u" * up)
    received = 0
    while received < down:
        chunk = sock.recv(65536)
        assert chunk
        received += len(chunk)
    assert socks.read_until_closed(sock) == b""
    sock.close()
    (line,) = _lines(log_path, 1)
    f = _parse(line)
    assert f["client"] == _addr(client)
    assert f["user"] == "-"
    assert f["command"] == "CONNECT"
    assert f["target"] == f"127.0.0.1:{target.address[1]}"
    assert f["dialled"] == f"127.0.0.1:{target.address[1]}"
    assert f["reply"] == "0"
    assert (int(f["up"]), int(f["down"])) == (up, down)
    assert f["reason"] == "eof"
    assert 0 <= float(f["duration"]) < 30
    stamp = calendar.timegm(time.strptime(f["time"][:19], "%Y-%m-%dT%H:%M:%S"))
    assert abs(stamp - time.time()) < 60  # UTC, and now
    _stop_and_count(server, log_path, 1)


def test_refused_target_logs_reply_5(tmp_path: Path, fastsocks_server: Callable[..., Any],
                                     socks: Any, closed_port: int) -> None:
    log_path = tmp_path / "access.log"
    server = fastsocks_server("--access-log", str(log_path))
    sock, (rep, _, _) = socks.connect(server.address, "127.0.0.1", closed_port)
    sock.close()
    assert rep == 5
    f = _parse(_lines(log_path, 1)[0])
    assert (f["command"], f["target"], f["dialled"], f["reply"]) == (
        "CONNECT", f"127.0.0.1:{closed_port}", "-", "5")
    assert (f["up"], f["down"], f["reason"]) == ("0", "0", "refused")
    _stop_and_count(server, log_path, 1)


def test_handshake_timeout_has_no_reply(tmp_path: Path, fastsocks_server: Callable[..., Any],
                                        socks: Any) -> None:
    log_path = tmp_path / "access.log"
    server = fastsocks_server("--access-log", str(log_path), "--handshake-timeout", "0.3")
    silent = socks.open(server.address)
    client = silent.getsockname()
    assert socks.read_until_closed(silent) == b""
    silent.close()
    f = _parse(_lines(log_path, 1)[0])
    assert f["client"] == _addr(client)
    assert (f["user"], f["command"], f["target"], f["dialled"], f["reply"]) == ("-",) * 5
    assert f["reason"] == "handshake_timeout"
    assert float(f["duration"]) >= 0.25
    _stop_and_count(server, log_path, 1)


def test_auth_failure_shows_the_user_never_a_password(
        tmp_path: Path, fastsocks_server: Callable[..., Any], socks: Any, users_file: Path,
        tcp_target: Callable[..., Any]) -> None:
    log_path = tmp_path / "access.log"
    server = fastsocks_server("--access-log", str(log_path), "--users", str(users_file),
                              "--log-level", "debug")
    bad = socks.open(server.address)
    bad.sendall(b"\x05\x01\x02")
    assert socks.recv_exact(bad, 2) == b"\x05\x02"
    bad.sendall(socks.userpass("alice", "Wr0ngPassw0rd"))
    assert socks.recv_exact(bad, 2) == b"\x01\x01"
    assert socks.read_until_closed(bad) == b""
    bad.close()
    # A user name with a space and a newline stays on one line, escaped.
    odd = socks.open(server.address)
    odd.sendall(b"\x05\x01\x02")
    assert socks.recv_exact(odd, 2) == b"\x05\x02"
    odd.sendall(socks.userpass("eve x\nforged line", "An0therSecret"))
    assert socks.recv_exact(odd, 2) == b"\x01\x01"
    odd.close()
    # And a good login is logged with its user.
    target = tcp_target(lambda conn: conn.sendall(b"hi"))
    sock, (rep, _, _) = socks.connect(server.address, "127.0.0.1", target.address[1],
                                      auth=("alice", "s3cret"))
    assert rep == 0 and socks.read_until_closed(sock) == b"hi"
    sock.close()
    lines = _lines(log_path, 3)
    fields = [_parse(line) for line in lines]
    failed = [f for f in fields if f["reason"] == "auth_failed"]
    assert sorted(f["user"] for f in failed) == ["alice", "eve\\x20x\\nforged\\x20line"]
    assert all((f["command"], f["reply"]) == ("-", "-") for f in failed)
    (good,) = [f for f in fields if f["reason"] != "auth_failed"]
    assert (good["user"], good["command"], good["reply"], good["down"]) == ("alice", "CONNECT",
                                                                          "0", "2")
    _stop_and_count(server, log_path, 3)
    for secret in ("Wr0ngPassw0rd", "An0therSecret", "s3cret"):
        assert secret not in log_path.read_text() and secret not in server.log


# -- BIND and UDP ASSOCIATE ---------------------------------------------------------


def _reply(sock: socket.socket, socks: Any) -> tuple[int, str, int]:
    return socks.read_reply(sock)


def test_bind_line_names_the_peer(tmp_path: Path, fastsocks_server: Callable[..., Any],
                                  socks: Any) -> None:
    log_path = tmp_path / "access.log"
    server = fastsocks_server("--access-log", str(log_path), "--bind-timeout", "5")
    ctrl = socks.open(server.address)
    ctrl.sendall(b"\x05\x01\x00")
    assert socks.recv_exact(ctrl, 2) == b"\x05\x00"
    ctrl.sendall(socks.request(0x02, "0.0.0.0", 0))
    rep, host, port = _reply(ctrl, socks)
    assert rep == 0
    peer = socket.create_connection((host, port), timeout=10)
    rep, peer_host, peer_port = _reply(ctrl, socks)
    peer_address = peer.getsockname()
    assert rep == 0 and (peer_host, peer_port) == peer_address
    ctrl.sendall(b"12345")
    assert socks.recv_exact(peer, 5) == b"12345"
    peer.sendall(b"abc")
    assert socks.recv_exact(ctrl, 3) == b"abc"
    peer.close()
    assert socks.read_until_closed(ctrl) == b""
    ctrl.close()
    f = _parse(_lines(log_path, 1)[0])
    assert (f["command"], f["target"], f["dialled"], f["reply"]) == (
        "BIND", "0.0.0.0:0", _addr(peer_address), "0")
    assert (f["up"], f["down"]) == ("5", "3")
    _stop_and_count(server, log_path, 1)


def test_udp_association_line_counts_datagrams(tmp_path: Path,
                                               fastsocks_server: Callable[..., Any],
                                               socks: Any) -> None:
    log_path = tmp_path / "access.log"
    server = fastsocks_server("--access-log", str(log_path))
    target = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ctrl = socks.open(server.address)
    try:
        target.bind(("127.0.0.1", 0))
        target.settimeout(5)
        client.bind(("127.0.0.1", 0))
        client.settimeout(5)
        ctrl.sendall(b"\x05\x01\x00")
        assert socks.recv_exact(ctrl, 2) == b"\x05\x00"
        ctrl.sendall(socks.request(0x03, "0.0.0.0", client.getsockname()[1]))
        rep, relay_host, relay_port = _reply(ctrl, socks)
        assert rep == 0
        header = b"\x00\x00\x00" + socks.encode_address(*target.getsockname())
        for payload in (b"one", b"second"):
            client.sendto(header + payload, (relay_host, relay_port))
            data, addr = target.recvfrom(100)
            assert data == payload
            target.sendto(payload.upper() + b"!", addr)
            answer, _ = client.recvfrom(100)
            assert answer.endswith(payload.upper() + b"!")
        ctrl.shutdown(socket.SHUT_WR)
        assert socks.read_until_closed(ctrl) == b""
    finally:
        ctrl.close()
        client.close()
        target.close()
    f = _parse(_lines(log_path, 1)[0])
    assert (f["command"], f["reply"], f["dialled"], f["reason"]) == (
        "UDP_ASSOCIATE", "0", "-", "eof")
    assert (f["up"], f["down"], f["dgrams"]) == ("9", "11", "2/2")
    _stop_and_count(server, log_path, 1)


# -- JSON, shutdown, standard output ---------------------------------------------------


def test_json_lines_parse(tmp_path: Path, fastsocks_server: Callable[..., Any], socks: Any,
                          closed_port: int, tcp_target: Callable[..., Any]) -> None:
    log_path = tmp_path / "access.jsonl"
    server = fastsocks_server("--access-log", str(log_path), "--access-log-format", "json")
    target = tcp_target(lambda conn: conn.sendall(b"hello"))
    sock, (rep, _, _) = socks.connect(server.address, "127.0.0.1", target.address[1],
                                      extra=b"xy")
    assert rep == 0 and socks.read_until_closed(sock) == b"hello"
    sock.close()
    sock, (rep, _, _) = socks.connect(server.address, "127.0.0.1", closed_port)
    sock.close()
    records = [json.loads(line) for line in _lines(log_path, 2)]
    keys = {"time", "client", "user", "command", "target", "dialled", "reply", "bytes_up",
            "bytes_down", "duration", "reason", "protocol"}
    assert all(set(r) == keys for r in records), records
    assert {r["protocol"] for r in records} == {"socks5"}
    ok = next(r for r in records if r["reply"] == 0)
    assert ok["user"] is None and ok["command"] == "CONNECT"
    assert (ok["bytes_up"], ok["bytes_down"]) == (2, 5)
    assert ok["dialled"] == f"127.0.0.1:{target.address[1]}"
    assert isinstance(ok["duration"], float) and ok["time"].endswith("Z")
    refused = next(r for r in records if r["reply"] == 5)
    assert refused["dialled"] is None and refused["reason"] == "refused"
    _stop_and_count(server, log_path, 2)


def test_open_relays_get_a_shutdown_line_when_the_server_stops(
        relay_path: tuple[tuple[str, ...], dict[str, str]], tmp_path: Path,
        fastsocks_server: Callable[..., Any], socks: Any,
        tcp_target: Callable[..., Any]) -> None:
    release = threading.Event()
    target = tcp_target(lambda conn: (conn.sendall(b"x"), release.wait(10)))
    log_path = tmp_path / "access.log"
    args, env = relay_path
    server = fastsocks_server("--access-log", str(log_path), *args, env=env)
    held = []
    try:
        for _ in range(3):
            sock, (rep, _, _) = socks.connect(server.address, "127.0.0.1", target.address[1])
            assert rep == 0 and socks.recv_exact(sock, 1) == b"x"
            held.append(sock)
        lines = _stop_and_count(server, log_path, 3)
    finally:
        release.set()
        for sock in held:
            sock.close()
    assert [_parse(line)["reason"] for line in lines] == ["shutdown"] * 3


def test_dash_writes_to_standard_output(tmp_path: Path, fastsocks_server: Callable[..., Any],
                                        socks: Any) -> None:
    server = fastsocks_server("--access-log", "-", "--handshake-timeout", "0.2")
    silent = socks.open(server.address)
    assert socks.read_until_closed(silent) == b""
    silent.close()
    assert server.stop() == 0
    lines = [line for line in server.log.splitlines() if _LINE.match(line)]
    assert len(lines) == 1 and lines[0].endswith(" handshake_timeout"), server.log


def test_unwritable_access_log_is_a_start_up_error(tmp_path: Path,
                                                   run_cli: Callable[..., Any]) -> None:
    result = run_cli("--listen", "127.0.0.1:0", "--access-log",
                     str(tmp_path / "no" / "such" / "dir" / "access.log"))
    assert result.returncode == 2
    assert b"access log" in result.stderr and b"no/such/dir" in result.stderr


def test_rule_denial_logs_reply_2(tmp_path: Path, fastsocks_server: Callable[..., Any],
                                  socks: Any) -> None:
    config = tmp_path / "fastsocks.toml"
    config.write_text('[[rules]]\naction = "deny"\nports = [9]\n')
    log_path = tmp_path / "access.log"
    server = fastsocks_server("--config", str(config), "--access-log", str(log_path))
    sock, (rep, _, _) = socks.connect(server.address, "127.0.0.1", 9)
    sock.close()
    assert rep == 2
    f = _parse(_lines(log_path, 1)[0])
    assert (f["command"], f["target"], f["dialled"], f["reply"], f["reason"]) == (
        "CONNECT", "127.0.0.1:9", "-", "2", "rule_denied")
    _stop_and_count(server, log_path, 1)
