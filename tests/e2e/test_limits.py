"""Limits: connections in all, per source address and per user; the handshake
rate per address; bandwidth per connection and per user.

Unit tests for the shared count tables and the rate parser, then real
``fastsocks`` processes: each limit lets the last allowed connection through
and refuses the one over it the way the README says (closed before any
SOCKS byte, or X'02' once the user is known), a slot frees when its
connection ends, counts hold across two workers, and a rate-limited transfer
cannot finish faster than its rate allows (a lower bound: a limit that is not
enforced fails it; a slow machine cannot).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import socket
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastsocks.errors import ConfigError
from fastsocks.control.limits import Limits, LimitSettings, SharedCounts, TokenBucket, parse_rate

from procs import recv_exact



# -- the shared count tables ----------------------------------------------------------


class _Tiny(SharedCounts):
    SLOTS = 16  # collisions and wrap-around on every few keys


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 40), st.sampled_from([1, -1])), max_size=300))
def test_counts_match_a_dict_through_collisions_and_deletions(ops: list[tuple[int, int]]) -> None:
    counts = _Tiny(1)
    model: dict[int, int] = {}
    for key, delta in ops:
        if delta < 0 and not model.get(key):
            continue  # a release always follows an admission
        if delta > 0 and key not in model and len(model) >= 12:
            assert counts.add(key, delta) is None  # full at three quarters: refused, not lost
            continue
        assert counts.add(key, delta) == model.get(key, 0) + delta  # the new count
        model[key] = model.get(key, 0) + delta
        if not model[key]:
            del model[key]
        for k in range(1, 41):
            assert counts.get(k) == model.get(k, 0), (k, model)
    assert counts.used == len(model)


def test_counts_sum_over_every_workers_table() -> None:
    counts = SharedCounts(3)
    for index, n in ((0, 2), (1, 5), (2, 1)):
        counts.attach(index)
        for _ in range(n):
            counts.add(12345, 1)
    assert counts.get(12345) == 8
    counts.attach(1)  # a restarted worker wipes its predecessor's counts
    assert counts.get(12345) == 3


def test_counts_are_shared_with_forked_processes() -> None:
    counts = SharedCounts(2)
    counts.attach(0)
    counts.add(7, 4)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        counts.attach(1)
        counts.add(7, 3)
        os._exit(0 if counts.get(7) == 7 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert counts.get(7) == 7


def test_gauges_are_per_worker_and_summed() -> None:
    counts = SharedCounts(2)
    counts.attach(0)
    counts.set_gauge(0, 3)
    counts.set_gauge(1, 9)  # another gauge: apart
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        counts.attach(1)
        counts.set_gauge(0, 4)
        os._exit(0 if (counts.gauge(0), counts.gauge(0, others=True)) == (7, 3) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert (counts.gauge(0), counts.gauge(0, others=True), counts.gauge(1)) == (7, 4, 9)
    counts.attach(1)  # a restarted worker wipes its predecessor's gauges
    assert counts.gauge(0) == 3


@pytest.mark.parametrize("text, rate", [
    (1048576, 1048576), ("1048576", 1048576), ("1MiB", 1048576), ("10 MiB/s", 10485760),
    ("500kB", 500_000), ("100Mbit", 12_500_000), ("1.5GiB", 1610612736), ("2M", 2097152),
    (0, 0), ("0", 0),
])
def test_rates(text: Any, rate: int) -> None:
    assert parse_rate(text, "bandwidth") == rate


@pytest.mark.parametrize("text", ["fast", "-1", "1 parsec", True, "", "1e400MiB"])
def test_bad_rates_name_the_key(text: Any) -> None:
    with pytest.raises(ConfigError, match="limits.bandwidth_per_user"):
        parse_rate(text, "limits.bandwidth_per_user")


def test_token_bucket_waits_for_what_is_owed() -> None:
    bucket = TokenBucket(100_000)
    assert bucket.take(10_000) == 0  # within the 16 KiB burst
    wait = bucket.take(100_000)
    assert 0.9 < wait < 1.0  # ~93,616 bytes owed at 100 kB/s


def test_per_ip_limit_and_release_in_process() -> None:
    limits = Limits(LimitSettings(connections_per_ip=2, connections=3))
    a, why = limits.admit("10.0.0.1")
    b, _ = limits.admit("10.0.0.1")
    assert why is None and a is not None and b is not None
    assert limits.admit("10.0.0.1") == (None, "connections_per_ip")
    c, _ = limits.admit("10.0.0.2")
    assert c is not None
    assert limits.admit("10.0.0.3") == (None, "connections")  # 3 in all
    limits.release(a)
    limits.release(a)  # twice is harmless
    d, why = limits.admit("10.0.0.1")
    assert why is None and d is not None
    for held in (b, c, d):
        limits.release(held)
    assert limits.counts.used == 0
    assert limits.rejected["connections_per_ip"] == 1 and limits.rejected["connections"] == 1


# -- against a real server ------------------------------------------------------------


def _open_from(socks: Any, proxy: tuple[str, int], source: str = "127.0.0.1") -> socket.socket:
    return socks.open(proxy, source=source)


def _connect(socks: Any, proxy: tuple[str, int], target: tuple[str, int], source: str = "127.0.0.1",
             auth: tuple[str, str] | None = None) -> socket.socket:
    """A relayed connection to ``target`` (asserts success)."""
    sock, reply = socks.connect(proxy, *target, auth=auth, source=source)
    assert reply[0] == 0, reply
    return sock


def _refused_before_reply(socks: Any, proxy: tuple[str, int], source: str = "127.0.0.1") -> bool:
    """True when the server closes the connection without a method-selection reply."""
    sock = _open_from(socks, proxy, source)
    try:
        sock.sendall(b"\x05\x01\x00")
        return sock.recv(2) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    finally:
        sock.close()


def _held_open(target_factory: Callable[..., Any]) -> Any:
    """A target that keeps each connection open until the client closes it."""

    def handler(conn: socket.socket) -> None:
        while conn.recv(65536):
            pass

    return target_factory(handler)


def test_connections_per_ip(fastsocks_server: Callable[..., Any],
                            tcp_target: Callable[..., Any], socks: Any) -> None:
    target = _held_open(tcp_target)
    server = fastsocks_server("--max-connections-per-ip", "2")
    first = _connect(socks, server.address, target.address)
    second = _connect(socks, server.address, target.address)
    assert _refused_before_reply(socks, server.address)
    other = _connect(socks, server.address, target.address, source="127.0.0.2")  # another address
    first.close()
    deadline = time.monotonic() + 5
    while True:  # the slot frees once the server has seen the close
        sock = _open_from(socks, server.address)
        sock.sendall(b"\x05\x01\x00")
        try:
            if sock.recv(2) == b"\x05\x00":
                break
        except ConnectionResetError:
            pass
        finally:
            sock.close()
        assert time.monotonic() < deadline, "the slot was not freed"
        time.sleep(0.05)
    for s in (second, other):
        s.close()
    assert "limit connections_per_ip reached" in server.log


def test_connections_in_all_hold_across_two_workers(
        fastsocks_server: Callable[..., Any], tcp_target: Callable[..., Any],
        tmp_path: Path, socks: Any) -> None:
    from procs import children, sockets

    target = _held_open(tcp_target)
    server = fastsocks_server("--workers", "2", "--max-connections", "40")
    workers = children(server.pid)
    assert len(workers) == 2
    before = [sockets(pid) for pid in workers]
    # From 40 source addresses: SO_REUSEPORT spreads them over both workers
    # (all on one: a chance of 2 in 2**40).
    open_ = [_connect(socks, server.address, target.address, source=f"127.0.1.{i}") for i in range(40)]
    after = [sockets(pid) for pid in workers]
    assert all(a > b for a, b in zip(after, before)), (before, after)
    for i in range(4):
        assert _refused_before_reply(socks, server.address, source=f"127.0.2.{i}")
    open_.pop().close()
    deadline = time.monotonic() + 5
    while _refused_before_reply(socks, server.address, source="127.0.2.9"):
        assert time.monotonic() < deadline, "the slot was not freed"
        time.sleep(0.05)
    for s in open_:
        s.close()


def test_connections_per_user_get_x02(fastsocks_server: Callable[..., Any],
                                      tcp_target: Callable[..., Any], users_file: Path,
                                      tmp_path: Path, socks: Any) -> None:
    target = _held_open(tcp_target)
    log = tmp_path / "access.log"
    server = fastsocks_server("--users", str(users_file), "--max-connections-per-user", "1",
                              "--access-log", str(log))
    first = _connect(socks, server.address, target.address, auth=("alice", "s3cret"))
    sock = _open_from(socks, server.address)
    sock.sendall(b"\x05\x01\x02")
    assert recv_exact(sock, 2) == b"\x05\x02"
    sock.sendall(b"\x01\x05alice\x06s3cret")
    assert recv_exact(sock, 2) == b"\x01\x00"
    sock.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(target.host) + target.port.to_bytes(2, "big"))
    reply = recv_exact(sock, 10)
    assert reply[1] == 0x02  # connection not allowed by ruleset
    assert sock.recv(1) == b""
    sock.close()
    first.close()
    assert server.stop() == 0
    lines = log.read_text().splitlines()
    assert any(" alice " in line and line.endswith(" limit_reached") for line in lines), lines


def test_handshake_rate_per_ip(fastsocks_server: Callable[..., Any], socks: Any) -> None:
    rate = 5
    server = fastsocks_server("--handshake-rate-per-ip", str(rate))
    start = time.monotonic()
    admitted = refused = 0
    for _ in range(30):
        if _refused_before_reply(socks, server.address):
            refused += 1
        else:
            admitted += 1
    elapsed = time.monotonic() - start
    # A sliding one-second window: at most `rate` per second, plus the
    # window the run started in.
    assert admitted <= rate * (elapsed + 1) + 1, (admitted, elapsed)
    assert refused >= 30 - (rate * (elapsed + 1) + 1)
    assert admitted >= 1
    # Another address has its own budget.
    assert not _refused_before_reply(socks, server.address, source="127.0.0.3")


def _sink_and_source(tcp_target: Callable[..., Any], size: int) -> Any:
    """A target that reads ``size`` bytes, answers with their sha256 and ``size`` bytes."""

    def handler(conn: socket.socket) -> None:
        digest = hashlib.sha256()
        got = 0
        while got < size:
            chunk = conn.recv(min(1 << 20, size - got))
            if not chunk:
                return
            digest.update(chunk)
            got += len(chunk)
        conn.sendall(digest.digest())
        block = bytes(range(256)) * 256
        sent = 0
        while sent < size:
            n = min(len(block), size - sent)
            conn.sendall(block[:n])
            sent += n
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)

    return tcp_target(handler)


def _transfer(sock: socket.socket, size: int) -> tuple[float, float]:
    """Send ``size`` bytes up, then read ``size`` down; seconds for each."""
    payload = random.Random(size).randbytes(size)
    start = time.monotonic()
    sock.sendall(payload)
    assert recv_exact(sock, 32) == hashlib.sha256(payload).digest()
    up = time.monotonic() - start
    start = time.monotonic()
    got = 0
    while got < size:
        chunk = sock.recv(1 << 20)
        assert chunk, f"closed after {got} bytes"
        got += len(chunk)
    return up, time.monotonic() - start


def test_bandwidth_per_connection(relay_path: tuple[tuple[str, ...], dict[str, str]],
                                  fastsocks_server: Callable[..., Any],
                                  tcp_target: Callable[..., Any], socks: Any) -> None:
    args, env = relay_path
    rate, size = 2 * 1024 * 1024, 3 * 1024 * 1024
    target = _sink_and_source(tcp_target, size)
    server = fastsocks_server("--bandwidth-per-connection", "2MiB", *args, env=env)
    sock = _connect(socks, server.address, target.address)
    sock.settimeout(30)
    up, down = _transfer(sock, size)
    sock.close()
    # No faster than the rate after the burst (a tenth of a second's worth);
    # unthrottled, loopback moves 3 MiB in a few milliseconds.
    floor = (size - rate / 10 - 65536) / rate
    assert up >= floor * 0.9, (up, floor)
    assert down >= floor * 0.9, (down, floor)
    assert up < 20 and down < 20


def test_bandwidth_per_user_is_shared_by_their_connections(
        fastsocks_server: Callable[..., Any], tcp_target: Callable[..., Any],
        users_file: Path, socks: Any) -> None:
    rate, size = 2 * 1024 * 1024, 2 * 1024 * 1024
    target = _sink_and_source(tcp_target, size)
    server = fastsocks_server("--users", str(users_file), "--bandwidth-per-user", "2MiB")
    socks_ = [_connect(socks, server.address, target.address, auth=("alice", "s3cret"))
              for _ in range(2)]
    times: list[tuple[float, float]] = []
    threads = [threading.Thread(target=lambda s=s: times.append(_transfer(s, size)))
               for s in socks_]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    elapsed = time.monotonic() - start
    for s in socks_:
        s.close()
    assert len(times) == 2
    # 2 x 2 MiB each way through one 2 MiB/s budget per direction.
    floor = 2 * (2 * size - rate / 10 - 65536) / rate
    assert elapsed >= floor * 0.9, (elapsed, floor, times)


def test_limit_rejections_are_in_the_metrics(fastsocks_server: Callable[..., Any], socks: Any) -> None:
    server = fastsocks_server("--max-connections-per-ip", "1", "--metrics", "127.0.0.1:0")
    match = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", server.log)
    assert match, server.log
    metrics_port = int(match.group(1))
    held = _open_from(socks, server.address)
    held.sendall(b"\x05\x01\x00")
    assert recv_exact(held, 2) == b"\x05\x00"
    assert _refused_before_reply(socks, server.address)
    assert _refused_before_reply(socks, server.address)
    held.close()
    deadline = time.monotonic() + 5
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        if 'fastsocks_limit_rejections_total{limit="connections_per_ip"} 2.0' in text:
            break
        assert time.monotonic() < deadline, text
        time.sleep(0.1)


def test_reload_applies_new_limits_to_new_connections(
        fastsocks_server: Callable[..., Any], tcp_target: Callable[..., Any],
        tmp_path: Path, socks: Any) -> None:
    import signal

    target = _held_open(tcp_target)
    config = tmp_path / "fastsocks.toml"
    config.write_text("[limits]\nconnections_per_ip = 0\n")
    server = fastsocks_server("--config", str(config))
    conns = [_connect(socks, server.address, target.address) for _ in range(3)]
    config.write_text("[limits]\nconnections_per_ip = 2\n")
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while "configuration reloaded" not in server.log:
        assert time.monotonic() < deadline, server.log
        time.sleep(0.05)
    # Established connections are untouched; new ones are limited.  The
    # three from before the reload were not counted, so two more fit.
    extra = [_connect(socks, server.address, target.address) for _ in range(2)]
    assert _refused_before_reply(socks, server.address)
    for s in conns + extra:
        s.sendall(b"x")
        s.close()


@pytest.mark.parametrize("text, message", [
    ("[limits]\nconnections = -1\n", "limits.connections: must be a whole number"),
    ("[limits]\nbandwidth_per_user = \"fast\"\n", "limits.bandwidth_per_user: must be bytes"),
    ("[limits]\nhandshake_rate_per_ip = \"5\"\n", "limits.handshake_rate_per_ip: must be 0"),
    ("[limits]\nconections = 5\n", "did you mean 'connections'"),
    ("[limits.users.bob]\nbandwith = 5\n", "limits.users.bob.bandwith: unknown key"),
    ("[limits.users]\nbob = 5\n", "limits.users.bob: must be a table"),
])
def test_limit_config_errors_name_the_key(run_cli: Callable[..., Any], tmp_path: Path,
                                          text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = run_cli("check", str(path))
    assert result.returncode == 2
    assert message in result.stderr.decode(), result.stderr.decode()
    assert str(path) in result.stderr.decode()
