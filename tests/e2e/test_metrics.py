"""Prometheus metrics on ``--metrics HOST:PORT``: /metrics and /healthz.

Real ``fastsocks`` processes, scraped over HTTP with http.client and parsed
with prometheus_client's own exposition parser; loopback only.  Counters of a
relayed connection move when it closes, so checks poll (bounded).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from builds import HAVE_ENGINE, UDP_PATH_ARGS
from procs import children as _children, sockets as _sockets
from prometheus_client.parser import text_string_to_metric_families

from fastsocks.observe.exporter import is_loopback
from fastsocks.observe.metrics import NAMES

WAIT = 10.0

_METRICS_RE = re.compile(r"metrics on http://(?:\[(?P<v6>[^\]]+)\]|(?P<v4>[^:/]+)):(?P<port>\d+)/metrics")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _metrics_address(server: Any) -> tuple[str, int]:
    match = _METRICS_RE.search(server.log)
    assert match, server.log
    return match.group("v6") or match.group("v4"), int(match.group("port"))


def _get(address: tuple[str, int], path: str) -> tuple[int, str, str]:
    conn = http.client.HTTPConnection(*address, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read().decode()
    finally:
        conn.close()


def _scrape(address: tuple[str, int]) -> Samples:
    status, content_type, body = _get(address, "/metrics")
    assert status == 200 and content_type.startswith("text/plain"), (status, content_type)
    out: Samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@contextlib.contextmanager
def _held(socks: Any, proxy: tuple[str, int], target: tuple[str, int],
          count: int) -> Iterator[list[socket.socket]]:
    """``count`` CONNECTs to ``target``, each answered X'00', open until the block ends."""
    held: list[socket.socket] = []
    try:
        for _ in range(count):
            sock, (rep, _, _) = socks.connect(proxy, *target)
            assert rep == 0
            held.append(sock)
        yield held
    finally:
        for sock in held:
            sock.close()


def _until(address: tuple[str, int], check: Callable[[Samples], bool],
           timeout: float = WAIT) -> Samples:
    """Scrape until ``check(samples)`` holds (bounded); the last samples."""
    deadline = time.monotonic() + timeout
    while True:
        samples = _scrape(address)
        if check(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def _echo_once(socks: Any, proxy: tuple[str, int], target: tuple[str, int], payload: bytes) -> None:
    sock, (rep, _, _) = socks.connect(proxy, *target)
    try:
        assert rep == 0
        sock.sendall(payload)
        assert socks.recv_exact(sock, len(payload)) == payload
    finally:
        sock.close()


def test_counters_move_after_traffic(fastsocks_server: Callable[..., Any], socks: Any,
                                     echo_target: Any, closed_port: int) -> None:
    server = fastsocks_server("--metrics", "127.0.0.1:0", "--handshake-timeout", "0.3")
    address = _metrics_address(server)
    before = _scrape(address)
    assert _value(before, "fastsocks_connections_total", protocol="socks5", command="connect") == 0
    for _ in range(3):
        _echo_once(socks, server.address, echo_target.address, b"p" * 100)
    sock, (rep, _, _) = socks.connect(server.address, "127.0.0.1", closed_port)
    sock.close()
    assert rep == 5
    silent = socks.open(server.address)
    assert socks.read_until_closed(silent) == b""
    silent.close()

    def settled(s: Samples) -> bool:
        return (_value(s, "fastsocks_bytes_total", direction="down") == 300
                and _value(s, "fastsocks_connections_active") == 0
                and _value(s, "fastsocks_timeouts_total", kind="handshake") == 1)

    s = _until(address, settled)
    assert _value(s, "fastsocks_connections_total", protocol="socks5", command="connect") == 4
    assert _value(s, "fastsocks_connections_total", protocol="socks5", command="none") == 1
    assert _value(s, "fastsocks_replies_total", code="0") == 3
    assert _value(s, "fastsocks_replies_total", code="5") == 1
    assert _value(s, "fastsocks_bytes_total", direction="up") == 300
    assert _value(s, "fastsocks_bytes_total", direction="down") == 300
    assert _value(s, "fastsocks_handshake_duration_seconds_count") == 4
    assert 0 < _value(s, "fastsocks_handshake_duration_seconds_sum") < 4 * 10
    assert _value(s, "fastsocks_timeouts_total", kind="handshake") == 1
    assert _value(s, "fastsocks_timeouts_total", kind="connect") == 0
    assert _value(s, "fastsocks_connections_active") == 0
    assert _value(s, "fastsocks_auth_failures_total") == 0


def test_connections_by_protocol(fastsocks_server: Callable[..., Any], socks: Any,
                                 echo_target: Any, users_file: Any) -> None:
    """fastsocks_connections_total{protocol, command}: SOCKS4 counted apart from SOCKS5."""
    server = fastsocks_server("--metrics", "127.0.0.1:0")
    address = _metrics_address(server)
    first = _scrape(address)
    series = {labels for name, labels in first if name == "fastsocks_connections_total"}
    assert series == {(("command", c), ("protocol", p)) for p, cs in (
        ("socks5", ("none", "connect", "bind", "udp_associate")),
        ("socks4", ("none", "connect", "bind")), ("http", ("none", "connect", "http")))
        for c in cs}  # only the pairs that can happen, each at 0 from the start
    request = b"\x04\x01" + echo_target.address[1].to_bytes(2, "big") + b"\x7f\x00\x00\x01u\x00"
    for _ in range(2):
        with socket.create_connection(server.address, timeout=10) as sock:
            sock.sendall(request + b"ping")
            assert socks.recv_exact(sock, 8)[1] == 90 and socks.recv_exact(sock, 4) == b"ping"
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(b"\x04\x01\x00")  # SOCKS4, then gone before a request
    _echo_once(socks, server.address, echo_target.address, b"five")

    def settled(s: Samples) -> bool:  # a short CONNECT is counted at its end, when the engine says
        return (_value(s, "fastsocks_connections_total", protocol="socks4", command="none") == 1
                and _value(s, "fastsocks_connections_total", protocol="socks5",
                           command="connect") == 1)

    s = _until(address, settled)
    assert _value(s, "fastsocks_connections_total", protocol="socks4", command="connect") == 2
    assert _value(s, "fastsocks_connections_total", protocol="socks4", command="none") == 1
    assert _value(s, "fastsocks_connections_total", protocol="socks5", command="connect") == 1
    assert _value(s, "fastsocks_connections_total", protocol="socks5", command="none") == 0
    # A SOCKS4 request refused where authentication is required is counted too.
    locked = fastsocks_server("--metrics", "127.0.0.1:0", "--users", str(users_file))
    with socket.create_connection(locked.address, timeout=10) as sock:
        sock.sendall(request)
        assert socks.read_until_closed(sock)[:2] == b"\x00\x5b"
    s = _until(_metrics_address(locked), lambda s: _value(
        s, "fastsocks_connections_total", protocol="socks4", command="connect") == 1)
    assert _value(s, "fastsocks_connections_total", protocol="socks4", command="connect") == 1
    assert _value(s, "fastsocks_replies_total", code="1") == 1


def test_active_gauge_counts_open_connections(fastsocks_server: Callable[..., Any], socks: Any,
                                             echo_target: Any) -> None:
    server = fastsocks_server("--metrics", "127.0.0.1:0", "--relay", "protocol")
    address = _metrics_address(server)
    with _held(socks, server.address, echo_target.address, 5):
        s = _scrape(address)
        assert _value(s, "fastsocks_connections_active") == 5
        assert _value(s, "fastsocks_connections_total", protocol="socks5", command="connect") == 5
    s = _until(address, lambda s: _value(s, "fastsocks_connections_active") == 0)
    assert _value(s, "fastsocks_connections_active") == 0


def test_success_replies_counted_while_the_connections_last(
        fastsocks_server: Callable[..., Any], socks: Any, echo_target: Any) -> None:
    """The splice engine dials an IP literal and sends the reply itself: it is counted
    (reply code and handshake time) while the connection lasts, not when it ends."""
    server = fastsocks_server("--metrics", "127.0.0.1:0")
    address = _metrics_address(server)
    with _held(socks, server.address, echo_target.address, 3):
        s = _until(address, lambda s: _value(s, "fastsocks_replies_total", code="0") == 3)
        assert _value(s, "fastsocks_replies_total", code="0") == 3
        assert _value(s, "fastsocks_handshake_duration_seconds_count") == 3
        assert _value(s, "fastsocks_connections_active") == 3
    s = _until(address, lambda s: _value(s, "fastsocks_connections_active") == 0)
    assert _value(s, "fastsocks_replies_total", code="0") == 3  # not counted again


def test_healthz_and_names(fastsocks_server: Callable[..., Any]) -> None:
    server = fastsocks_server("--metrics", "[::1]:0", "--listen", "[::1]:0")
    address = _metrics_address(server)
    assert address[0] == "::1"
    assert _get(address, "/healthz")[::2] == (200, "ok\n")
    assert _get(address, "/nothing")[0] == 404
    status, content_type, body = _get(address, "/metrics")
    assert status == 200 and "version=0.0.4" in content_type
    families = {f.name: f for f in text_string_to_metric_families(body)}
    ours = {name for name in families if name.startswith("fastsocks")}
    # The parser names counter families without their _total suffix.
    expected = {name[:-len("_total")] if name.endswith("_total") else name for name in NAMES}
    assert ours == expected, ours ^ expected
    assert families["fastsocks_connections"].type == "counter"
    assert families["fastsocks_connections_active"].type == "gauge"
    assert families["fastsocks_handshake_duration_seconds"].type == "histogram"
    for family in families.values():
        for sample in family.samples:
            # No per-user or per-destination labels.
            assert set(sample.labels) <= {"command", "code", "direction", "kind", "le", "limit",
                                             "mode", "protocol"}, sample
    assert "_created" not in body


def test_auth_failures_counted(fastsocks_server: Callable[..., Any], socks: Any,
                               users_file: Path) -> None:
    server = fastsocks_server("--metrics", "127.0.0.1:0", "--users", str(users_file))
    address = _metrics_address(server)
    for _ in range(2):
        bad = socks.open(server.address)
        bad.sendall(b"\x05\x01\x02" + socks.userpass("alice", "wrong"))
        assert socks.recv_exact(bad, 4) == b"\x05\x02\x01\x01"
        bad.close()
    s = _until(address, lambda s: _value(s, "fastsocks_auth_failures_total") == 2)
    assert _value(s, "fastsocks_auth_failures_total") == 2
    assert _value(s, "fastsocks_connections_total", protocol="socks5", command="none") == 2


def test_bind_timeout_and_udp_datagrams(fastsocks_server: Callable[..., Any], socks: Any,
                                        udp_path: str) -> None:
    server = fastsocks_server("--metrics", "127.0.0.1:0", "--bind-timeout", "0.3",
                              *UDP_PATH_ARGS[udp_path])
    address = _metrics_address(server)
    ctrl = socks.open(server.address)
    ctrl.sendall(b"\x05\x01\x00" + socks.request(0x02, "0.0.0.0", 0))
    assert socks.recv_exact(ctrl, 2) == b"\x05\x00"
    assert socks.read_reply(ctrl)[0] == 0
    assert socks.read_reply(ctrl)[0] == 6
    ctrl.close()
    target = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ctrl = socks.open(server.address)
    try:
        target.bind(("127.0.0.1", 0))
        client.bind(("127.0.0.1", 0))
        client.settimeout(5)
        target.settimeout(5)
        ctrl.sendall(b"\x05\x01\x00" + socks.request(0x03, "0.0.0.0", client.getsockname()[1]))
        assert socks.recv_exact(ctrl, 2) == b"\x05\x00"
        rep, host, port = socks.read_reply(ctrl)
        assert rep == 0
        header = b"\x00\x00\x00" + socks.encode_address(*target.getsockname())
        for _ in range(3):
            client.sendto(header + b"ping", (host, port))
            data, addr = target.recvfrom(100)
            target.sendto(b"pong!", addr)
            assert client.recvfrom(100)[0].endswith(b"pong!")
        # Dropped: a bad header (ATYP 9), a datagram from another port, a
        # "reply" from a target the client never sent to.
        client.sendto(b"\x00\x00\x00\x09junk", (host, port))
        other.bind(("127.0.0.1", 0))
        other.sendto(header + b"intruder", (host, port))
        other.sendto(b"unasked", addr)
        # One more round trip: the three were read before the association ends.
        client.sendto(header + b"ping", (host, port))
        data, addr = target.recvfrom(100)
        assert data == b"ping"
        target.sendto(b"pong!", addr)
        assert client.recvfrom(100)[0].endswith(b"pong!")
    finally:
        ctrl.close()
        client.close()
        target.close()
        other.close()
    s = _until(address, lambda s: _value(s, "fastsocks_udp_datagrams_total", direction="up") == 4)
    assert _value(s, "fastsocks_timeouts_total", kind="bind") == 1
    assert _value(s, "fastsocks_replies_total", code="6") == 1
    assert _value(s, "fastsocks_connections_total", protocol="socks5", command="bind") == 1
    assert _value(s, "fastsocks_connections_total", protocol="socks5", command="udp_associate") == 1
    assert _value(s, "fastsocks_udp_datagrams_total", direction="up") == 4
    assert _value(s, "fastsocks_udp_datagrams_total", direction="down") == 4
    assert _value(s, "fastsocks_udp_dropped_total") == 3
    assert _value(s, "fastsocks_bytes_total", direction="up") == 16
    assert _value(s, "fastsocks_bytes_total", direction="down") == 20


def test_rule_denials_counted(fastsocks_server: Callable[..., Any], socks: Any,
                              tmp_path: Path) -> None:
    config = tmp_path / "fastsocks.toml"
    config.write_text('[[rules]]\naction = "deny"\nports = [9]\n')
    server = fastsocks_server("--config", str(config), "--metrics", "127.0.0.1:0")
    address = _metrics_address(server)
    sock, (rep, _, _) = socks.connect(server.address, "127.0.0.1", 9)
    sock.close()
    assert rep == 2
    s = _until(address, lambda s: _value(s, "fastsocks_rule_denials_total") == 1)
    assert _value(s, "fastsocks_rule_denials_total") == 1
    assert _value(s, "fastsocks_replies_total", code="2") == 1


# -- --workers N: one registry over all workers ------------------------------------


def test_workers_aggregate(fastsocks_server: Callable[..., Any], socks: Any, echo_target: Any,
                           tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    server = fastsocks_server("--metrics", "127.0.0.1:0", "--workers", "2",
                              env={"TMPDIR": str(tmp)})
    address = _metrics_address(server)
    assert len(os.listdir(tmp)) == 1  # the master's multiprocess directory
    workers = _children(server.pid)
    assert len(workers) == 2
    assert _get(address, "/healthz")[::2] == (200, "ok\n")

    # 20 connections, held open so both workers are seen serving some.
    baseline = {pid: _sockets(pid) for pid in workers}
    held = []
    try:
        for _ in range(20):
            sock, (rep, _, _) = socks.connect(server.address, *echo_target.address)
            assert rep == 0
            sock.sendall(b"12345")
            assert socks.recv_exact(sock, 5) == b"12345"
            held.append(sock)
        served = {pid: (_sockets(pid) - baseline[pid]) // 2 for pid in workers}
        assert sum(served.values()) == 20 and all(served.values()), served
        # Workers hand their counts over once a second.
        s = _until(address, lambda s: _value(s, "fastsocks_connections_active") == 20)
        assert _value(s, "fastsocks_connections_active") == 20
        assert _value(s, "fastsocks_connections_total", protocol="socks5", command="connect") == 20
    finally:
        for sock in held:
            sock.close()
    s = _until(address, lambda s: _value(s, "fastsocks_bytes_total", direction="down") == 100)
    assert _value(s, "fastsocks_connections_total", protocol="socks5", command="connect") == 20
    assert _value(s, "fastsocks_replies_total", code="0") == 20
    assert _value(s, "fastsocks_handshake_duration_seconds_count") == 20
    assert _value(s, "fastsocks_bytes_total", direction="up") == 100
    assert _value(s, "fastsocks_connections_active") == 0

    # A worker killed with connections open: its live gauge goes, its counts stay.
    baseline = {pid: _sockets(pid) for pid in workers}
    with _held(socks, server.address, echo_target.address, 10):
        victim = max(workers, key=lambda pid: _sockets(pid) - baseline[pid])
        lost = (_sockets(victim) - baseline[victim]) // 2
        assert lost > 0
        s = _until(address, lambda s: _value(s, "fastsocks_connections_active") == 10)
        assert _value(s, "fastsocks_connections_active") == 10
        os.kill(victim, signal.SIGKILL)
        s = _until(address, lambda s: _value(s, "fastsocks_connections_active") == 10 - lost)
        assert _value(s, "fastsocks_connections_active") == 10 - lost
        assert _value(s, "fastsocks_connections_total", protocol="socks5", command="connect") == 30
        deadline = time.monotonic() + WAIT
        while len(_children(server.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(_children(server.pid)) == 2  # restarted
    s = _until(address, lambda s: _value(s, "fastsocks_connections_active") == 0)
    assert _value(s, "fastsocks_connections_active") == 0
    assert server.stop() == 0
    assert "Traceback" not in server.log and " ERROR " not in server.log, server.log
    assert os.listdir(tmp) == []  # the multiprocess directory is gone


def test_metrics_address_in_use_is_a_start_up_error(run_cli: Callable[..., Any]) -> None:
    taken = socket.socket()
    try:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        for workers in ("1", "2"):
            result = run_cli("--listen", "127.0.0.1:0", "--workers", workers,
                             "--metrics", f"127.0.0.1:{port}", timeout=20)
            assert result.returncode == 2, result.stderr
            assert b"metrics listen 127.0.0.1:" in result.stderr, result.stderr
    finally:
        taken.close()


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("192.0.2.1", False),
])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


# -- a listener that clients cannot tie up (issue 17) --------------------------------


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def _closed_within(sock: socket.socket, timeout: float) -> float:
    """Seconds until the server closed ``sock`` (EOF or reset); fails after ``timeout``."""
    start = time.monotonic()
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except socket.timeout:
        raise AssertionError(f"still open after {timeout} s") from None
    return time.monotonic() - start


def test_idle_connections_do_not_stop_a_scrape(fastsocks_server: Callable[..., Any]) -> None:
    """Hundreds of connections that say nothing (and some that dribble) cost
    no thread each, and a scrape still gets its answer at once."""
    server = fastsocks_server("--metrics", "127.0.0.1:0")
    address = _metrics_address(server)
    _scrape(address)
    baseline = _threads(server.pid)
    idle: list[socket.socket] = []
    try:
        for i in range(300):
            sock = socket.create_connection(address, timeout=5)
            if i % 10 == 0:
                sock.sendall(b"GET /metrics HTTP/1.1\r\n")  # and never the rest
            idle.append(sock)
        time.sleep(0.3)
        for _ in range(3):
            started = time.monotonic()
            samples = _scrape(address)
            assert time.monotonic() - started < 3
            assert ("fastsocks_connections_active", ()) in samples
        status, _, body = _get(address, "/healthz")
        assert (status, body) == (200, "ok\n")
        # One thread may answer each request at once, and no more than 16.
        assert _threads(server.pid) <= baseline + 16, (_threads(server.pid), baseline)
    finally:
        for sock in idle:
            sock.close()


def test_silent_and_dribbling_clients_are_cut(fastsocks_server: Callable[..., Any]) -> None:
    """The request head must be in within 5 s of connecting, however it trickles."""
    server = fastsocks_server("--metrics", "127.0.0.1:0")
    address = _metrics_address(server)
    silent = socket.create_connection(address, timeout=5)
    dribbler = socket.create_connection(address, timeout=5)
    with silent, dribbler:
        request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: y\r\n" * 20
        start = time.monotonic()
        for i, byte in enumerate(request):  # one byte every 0.1 s: 3.5 s of it, then 20 more
            try:
                dribbler.sendall(bytes((byte,)))
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.1)
            if time.monotonic() - start > 8:
                break
        cut_after = time.monotonic() - start + _closed_within(dribbler, 3)
        assert 4 < cut_after < 7, cut_after
        assert _closed_within(silent, 3) + (time.monotonic() - start) < 10
    # Still serving.
    status, _, body = _get(address, "/healthz")
    assert (status, body) == (200, "ok\n")


def test_connections_the_engine_holds_are_active(fastsocks_server: Callable[..., Any],
                                                 socks: Any, echo_target: Any) -> None:
    """fastsocks_connections_active counts the connections the relay engine holds
    before the loop hears of them: a handshake, and a CONNECT it dialled itself."""
    server = fastsocks_server("--metrics", "127.0.0.1:0")
    if "splice engine" not in server.impl:
        pytest.skip("pure build: the loop holds every connection")
    address = _metrics_address(server)
    with socket.create_connection(server.address, timeout=10):  # silent: in its handshake
        sock, (rep, _, _) = socks.connect(server.address, *echo_target.address)
        assert rep == 0
        assert _value(_scrape(address), "fastsocks_connections_active") == 2
        sock.close()
    s = _until(address, lambda s: _value(s, "fastsocks_connections_active") == 0)
    assert _value(s, "fastsocks_connections_active") == 0


@pytest.mark.skipif(not HAVE_ENGINE, reason="--relay-bulk is the splice engine's (Linux, compiled)")
@pytest.mark.parametrize("mode", ["splice", "copy"])
def test_bulk_directions_counted_by_mode(fastsocks_server: Callable[..., Any], both_ways: Any,
                                         mode: str) -> None:
    server = fastsocks_server("--metrics", "127.0.0.1:0", "--relay-bulk", mode, "--workers", "1")
    address = _metrics_address(server)
    samples = _scrape(address)
    assert _value(samples, "fastsocks_relay_bulk_total", mode=mode) == 0
    both_ways(server.address, 4 << 20)  # both directions go bulk
    other = "copy" if mode == "splice" else "splice"
    deadline = time.monotonic() + 5
    while _value(samples, "fastsocks_relay_bulk_total", mode=mode) < 2 \
            and time.monotonic() < deadline:
        time.sleep(0.1)
        samples = _scrape(address)
    assert _value(samples, "fastsocks_relay_bulk_total", mode=mode) == 2
    assert _value(samples, "fastsocks_relay_bulk_total", mode=other) == 0
    assert _value(samples, "fastsocks_relay_bulk_buffers_held") == 0


@pytest.mark.skipif(not HAVE_ENGINE, reason="--relay-bulk is the splice engine's (Linux, compiled)")
def test_held_bulk_buffers_are_a_gauge(fastsocks_server: Callable[..., Any], tcp_target: Any,
                                       socks: Any) -> None:
    """A client that stops reading a flood: its direction holds a bulk buffer
    while it stalls, and none once the connection is gone."""
    server = fastsocks_server("--metrics", "127.0.0.1:0", "--relay-bulk", "copy", "--workers", "1")
    address = _metrics_address(server)
    stop = threading.Event()

    def flood(conn: socket.socket) -> None:
        conn.settimeout(10)
        with contextlib.suppress(OSError):
            while not stop.is_set():
                conn.sendall(b"x" * 65536)

    target = tcp_target(flood)

    def held() -> float:
        return _value(_scrape(address), "fastsocks_relay_bulk_buffers_held")

    def wait_for(value: float) -> float:
        deadline = time.monotonic() + 10
        while (seen := held()) != value and time.monotonic() < deadline:
            time.sleep(0.1)
        return seen

    try:
        sock, (rep, _, _) = socks.connect(server.address, *target.address, timeout=10)
        with sock:
            assert rep == 0
            assert wait_for(1) == 1
    finally:
        stop.set()
    assert wait_for(0) == 0
