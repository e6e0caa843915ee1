"""The Linux splice engine on its own: real TCP sockets on loopback, no server.

Each test builds client ⇄ [engine] ⇄ target from two connected TCP pairs and
hands the middle two descriptors to the engine, as the session does.
"""

from __future__ import annotations

import errno
import hashlib
import os
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator

import pytest

if not sys.platform.startswith("linux"):
    pytest.skip("the splice engine is Linux-only", allow_module_level=True)

if os.environ.get("FASTSOCKS_NO_EXTENSIONS"):
    pytest.skip("pure build: no engine", allow_module_level=True)

from fastsocks._engine import REASONS, Engine  # noqa: E402
from procs import recv_exact  # noqa: E402


BULK = ("splice", "copy")  # how a direction relays once bulk (Engine.bulk)


def _tcp_pair(mss: int = 0) -> tuple[socket.socket, socket.socket]:
    """Two connected TCP sockets on loopback; ``mss``: their segment size (else
    loopback's, about 32 KiB or more)."""
    with socket.socket() as listener:
        if mss:
            listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        a = socket.socket()
        if mss:
            a.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
        a.connect(listener.getsockname())
        b, _ = listener.accept()
    return a, b


class Bench:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.results: dict[int, tuple[int, int, str]] = {}

    def pair(self, to_upstream: bytes = b"", to_client: bytes = b"", idle: float = 0.0,
             upstream_sndbuf: int = 0, mss: int = 0) -> tuple[socket.socket, socket.socket, int]:
        client, proxy_client = _tcp_pair(mss)
        proxy_upstream, target = _tcp_pair(mss)
        if upstream_sndbuf:
            proxy_upstream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, upstream_sndbuf)
        holder: list[int] = []
        pair_id = self.engine.add(
            proxy_client.detach(), proxy_upstream.detach(), to_upstream, to_client, idle,
            lambda up, down, reason: self.results.__setitem__(holder[0], (up, down, reason)),
        )
        holder.append(pair_id)
        return client, target, pair_id

    def wait(self, pair_id: int, timeout: float = 10.0) -> tuple[int, int, str]:
        deadline = time.monotonic() + timeout
        while pair_id not in self.results:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "the engine never reported the pair"
            select.select([self.engine.done_fileno], [], [], remaining)
            self.engine.collect()
        return self.results[pair_id]


@pytest.fixture
def bench() -> Iterator[Bench]:
    engine = Engine()
    engine.start()
    yield Bench(engine)
    engine.stop()
    engine.collect()
    assert engine.active == 0


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def test_half_close_both_ways_with_handed_over_bytes(bench: Bench) -> None:
    client, target, pair_id = bench.pair(to_upstream=b"early", to_client=b"REPLY")
    payload = os.urandom(8 << 20)
    answer = os.urandom(1 << 20)
    seen: list[bytes] = []

    def serve() -> None:
        seen.append(_read_all(target))  # until the client's EOF arrives
        target.sendall(answer)
        target.close()

    thread = threading.Thread(target=serve)
    thread.start()
    sender = threading.Thread(target=lambda: (client.sendall(payload), client.shutdown(socket.SHUT_WR)))
    sender.start()
    received = _read_all(client)
    sender.join(30)
    thread.join(30)
    client.close()
    assert seen[0] == b"early" + payload
    assert received == b"REPLY" + answer
    up, down, reason = bench.wait(pair_id)
    assert (up, down, reason) == (len(payload) + 5, len(answer), "eof")


@pytest.mark.parametrize("bulk", BULK)
def test_both_directions_at_once_keep_integrity(bench: Bench, bulk: str) -> None:
    bench.engine.bulk = bulk
    client, target, pair_id = bench.pair()
    a, b = os.urandom(16 << 20), os.urandom(16 << 20)
    got: dict[str, bytes] = {}

    def side(sock: socket.socket, data: bytes, name: str) -> None:
        t = threading.Thread(target=lambda: (sock.sendall(data), sock.shutdown(socket.SHUT_WR)))
        t.start()
        got[name] = _read_all(sock)
        t.join(30)
        sock.close()

    threads = [threading.Thread(target=side, args=(client, a, "client")),
               threading.Thread(target=side, args=(target, b, "target"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert hashlib.sha256(got["target"]).digest() == hashlib.sha256(a).digest()
    assert hashlib.sha256(got["client"]).digest() == hashlib.sha256(b).digest()
    assert bench.wait(pair_id) == (len(a), len(b), "eof")
    assert bench.engine.bulk_switches == ((2, 0) if bulk == "splice" else (0, 2))
    assert bench.engine.bulk_held == 0


@pytest.mark.parametrize("bulk", BULK)
def test_slow_reader_stops_the_fast_writer(bench: Bench, bulk: str) -> None:
    """Backpressure: with the client not reading, the target soon cannot send."""
    bench.engine.bulk = bulk
    client, target, pair_id = bench.pair()
    target.setblocking(False)
    sent = 0
    chunk = b"x" * 65536
    deadline = time.monotonic() + 5
    stalled_at = None
    while time.monotonic() < deadline:
        try:
            sent += target.send(chunk)
        except BlockingIOError:
            if stalled_at is None:
                stalled_at = time.monotonic()
            if time.monotonic() - stalled_at > 0.5:
                break
            time.sleep(0.01)
        else:
            stalled_at = None
    assert stalled_at is not None, "the target never felt backpressure"
    # Socket buffers on both sides plus at most one pipe (or bulk buffer) hold the bytes.
    assert sent < 64 << 20
    assert bench.engine.bulk_held == (bulk == "copy")
    target.setblocking(True)
    target.shutdown(socket.SHUT_WR)
    client.shutdown(socket.SHUT_WR)
    assert len(_read_all(client)) == sent
    client.close()
    target.close()
    assert bench.wait(pair_id)[1:] == (sent, "eof")
    assert bench.engine.bulk_held == 0


def _pipes() -> int:
    """This process's pipe descriptors (the engine's pool is among them)."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{name}").startswith("pipe:")
        except FileNotFoundError:
            pass
    return count


@pytest.mark.parametrize("mode", BULK)
def test_small_exchanges_are_copied_and_bulk_goes_its_way(bench: Bench, mode: str) -> None:
    """A chatty pair never takes a pipe; the first full read makes the
    direction bulk: spliced (a pipe), or copied through the engine's buffer."""
    bench.engine.bulk = mode
    client, target, pair_id = bench.pair(to_client=b"REPLY")
    assert client.recv(5) == b"REPLY"
    before = _pipes()
    for i in range(50):
        message = b"%d:" % i + os.urandom(100 + i)
        client.sendall(message)
        assert recv_exact(target, len(message)) == message
        target.sendall(message[::-1])
        assert recv_exact(client, len(message)) == message[::-1]
    assert _pipes() == before, "copy mode took a pipe"
    bulk = os.urandom(4 << 20)
    sender = threading.Thread(target=client.sendall, args=(bulk,))
    sender.start()
    got = recv_exact(target, len(bulk))
    sender.join(30)
    assert hashlib.sha256(got).digest() == hashlib.sha256(bulk).digest()
    if mode == "splice":
        assert _pipes() > before, "bulk never switched to splice"
        assert bench.engine.bulk_switches == (1, 0)
    else:
        assert _pipes() == before, "bulk copying took a pipe"
        assert bench.engine.bulk_switches == (0, 1)
    # The last direction to end closes without a shutdown: the client still
    # gets every byte and a FIN (EOF), not a reset.
    target.sendall(b"bye")
    target.shutdown(socket.SHUT_WR)
    client.shutdown(socket.SHUT_WR)
    assert _read_all(client) == b"bye"
    assert _read_all(target) == b""
    client.close()
    target.close()
    up, down, reason = bench.wait(pair_id)
    assert reason == "eof" and up == sum(100 + i + len(b"%d:" % i) for i in range(50)) + len(bulk)


def test_short_writes_in_copy_mode_keep_every_byte(bench: Bench) -> None:
    """Small reads into a destination that fills: the rest waits for EPOLLOUT, in order."""
    client, target, pair_id = bench.pair(upstream_sndbuf=4096)
    target.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    sent = hashlib.sha256()
    total = 0

    def dribble() -> None:
        nonlocal total
        for i in range(200):  # ~800 KiB in writes of 1-7 KiB, each read alone
            chunk = os.urandom(1024 * (1 + i % 7))
            client.sendall(chunk)
            sent.update(chunk)
            total += len(chunk)
            time.sleep(0.001)
        client.shutdown(socket.SHUT_WR)

    thread = threading.Thread(target=dribble)
    thread.start()
    time.sleep(0.3)  # the target reads nothing yet: the engine's writes fall short
    got = hashlib.sha256()
    received = 0
    while chunk := target.recv(65536):
        got.update(chunk)
        received += len(chunk)
    thread.join(30)
    assert (received, got.digest()) == (total, sent.digest())
    target.close()
    assert _read_all(client) == b""
    client.close()
    assert bench.wait(pair_id) == (total, 0, "eof")


def _bulk_through(bench: Bench, mss: int = 0) -> None:
    client, target, pair_id = bench.pair(mss=mss)
    data = os.urandom(1 << 20)
    sender = threading.Thread(target=lambda: (client.sendall(data), client.shutdown(socket.SHUT_WR)))
    sender.start()
    assert _read_all(target) == data
    sender.join(30)
    target.close()
    assert _read_all(client) == b""
    client.close()
    assert bench.wait(pair_id) == (len(data), 0, "eof")


def test_auto_copies_on_loopbacks_segment_size_and_splices_below_16_kib(bench: Bench) -> None:
    """``auto``: both sockets' TCP_MAXSEG of 16 KiB or more (loopback's) copy;
    a smaller one (an Ethernet link's 1,448) splices."""
    assert bench.engine.bulk == "auto"
    _bulk_through(bench)
    assert bench.engine.bulk_switches == (0, 1)
    _bulk_through(bench, mss=1400)
    assert bench.engine.bulk_switches == (1, 1)


def test_bulk_mode_names() -> None:
    engine = Engine()
    for mode in ("splice", "copy", "auto"):
        engine.bulk = mode
        assert engine.bulk == mode
    with pytest.raises(ValueError, match="auto, splice, copy"):
        engine.bulk = "zero-copy"


def test_slow_readers_hold_no_more_bulk_buffers_than_the_cap(bench: Bench) -> None:
    """Each stalled copying direction holds its 4 MiB read until the reader
    takes it; past ``bulk_held_max`` the others read 16 KiB at a time, and
    every byte still arrives, in order."""
    bench.engine.bulk = "copy"
    was = bench.engine.bulk_held_max
    bench.engine.bulk_held_max = 2
    try:
        pairs = [bench.pair() for _ in range(4)]
        payloads = [os.urandom(12 << 20) for _ in pairs]
        senders = []
        for (client, target, _), data in zip(pairs, payloads):
            target.settimeout(30)
            sender = threading.Thread(
                target=lambda t=target, d=data: (t.sendall(d), t.shutdown(socket.SHUT_WR)))
            sender.start()
            senders.append(sender)
        deadline = time.monotonic() + 10
        while bench.engine.bulk_held < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # the clients read nothing yet: every pair is stalled
        assert bench.engine.bulk_held == 2
        for (client, target, pair_id), data, sender in zip(pairs, payloads, senders):
            assert hashlib.sha256(_read_all(client)).digest() == hashlib.sha256(data).digest()
            sender.join(30)
            client.close()
            target.close()
            assert bench.wait(pair_id) == (0, len(data), "eof")
        assert bench.engine.bulk_held == 0
    finally:
        bench.engine.bulk_held_max = was


def test_idle_pair_is_closed(bench: Bench) -> None:
    client, target, pair_id = bench.pair(idle=0.5)
    client.settimeout(5)
    started = time.monotonic()
    assert client.recv(10) == b""
    assert 0.4 < time.monotonic() - started < 2.0
    assert bench.wait(pair_id) == (0, 0, "idle_timeout")
    client.close()
    target.close()


def test_traffic_keeps_a_pair_alive_past_the_idle_timeout(bench: Bench) -> None:
    client, target, pair_id = bench.pair(idle=0.6)
    for _ in range(6):
        client.sendall(b"ping")
        assert target.recv(4) == b"ping"
        time.sleep(0.25)
    assert pair_id not in bench.results
    client.close()
    target.close()
    assert bench.wait(pair_id)[2] == "eof"


def test_client_reset_is_reported_and_target_closed(bench: Bench) -> None:
    client, target, pair_id = bench.pair()
    client.sendall(b"abc")
    assert target.recv(3) == b"abc"
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    target.settimeout(5)
    assert bench.wait(pair_id)[2] == "client_reset"
    with pytest.raises(OSError):  # reset or EOF, never a hang
        while target.recv(100):
            pass
        raise ConnectionResetError
    target.close()


def test_close_and_close_all(bench: Bench) -> None:
    pairs = [bench.pair() for _ in range(5)]
    bench.engine.close(pairs[0][2], "closed")
    assert bench.wait(pairs[0][2])[2] == "closed"
    bench.engine.close_all("shutdown")
    for client, target, pair_id in pairs[1:]:
        assert bench.wait(pair_id)[2] == "shutdown"
    for client, target, _ in pairs:
        client.settimeout(5)
        assert client.recv(1) == b""
        client.close()
        target.close()


def test_every_finished_pair_is_reported_once(bench: Bench) -> None:
    # Many pairs finishing in one engine batch (past any initial queue size):
    # each report was allocated with its pair, so none can be lost, and a
    # callback that raises does not cost the others theirs.
    order: list[int] = []
    ids = []
    sockets = []
    for i in range(300):
        client, proxy_client = _tcp_pair()
        proxy_upstream, target = _tcp_pair()
        sockets += [client, target]

        def report(up: int, down: int, reason: str, i: int = i) -> None:
            order.append(i)
            if i % 7 == 0:
                raise RuntimeError("a failing close callback")

        ids.append(bench.engine.add(proxy_client.detach(), proxy_upstream.detach(), b"", b"",
                                    0.0, report))
    bench.engine.close_all("shutdown")
    deadline = time.monotonic() + 10
    while len(order) < len(ids) and time.monotonic() < deadline:
        select.select([bench.engine.done_fileno], [], [], 1.0)
        bench.engine.collect()
    assert sorted(order) == list(range(300))
    assert bench.engine.active == 0
    for sock in sockets:
        sock.close()


def test_no_descriptor_left_behind(bench: Bench) -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        pairs = [bench.pair() for _ in range(50)]
        for client, target, _ in pairs:
            client.sendall(b"hello")
            assert target.recv(5) == b"hello"
            client.close()
            target.close()
        for _, _, pair_id in pairs:
            bench.wait(pair_id)
    # The pipe pool keeps at most a few pipes for reuse.
    assert len(os.listdir("/proc/self/fd")) <= before + 2 * 64


def test_reason_names() -> None:
    assert REASONS == ("eof", "client_reset", "upstream_reset", "idle_timeout", "closed",
                       "shutdown", "error", "connect_failed", "connect_timeout", "client_closed",
                       "connected", "request", "handback", "dialling")


# -- a pair handed over while its upstream connect is in progress ------------------------


class Dialled:
    """client ⇄ [engine] ⇄ a non-blocking connect() to ``address`` still in progress."""

    def __init__(self, bench: Bench, address: tuple[str, int], to_upstream: bytes = b"",
                 to_client: bytes = b"REPLY", timeout: float = 5.0) -> None:
        self.client, proxy_client = _tcp_pair()
        upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        err = upstream.connect_ex(address)
        assert err in (0, errno.EINPROGRESS), os.strerror(err)
        self.client_fd = proxy_client.detach()
        self.bench = bench
        self.results: list[tuple[int, int, str, int, int]] = []
        self.added = time.monotonic()
        self.pair_id = bench.engine.add(
            self.client_fd, upstream.detach(), to_upstream, to_client, 0.0,
            lambda *args: self.results.append(args), connect_timeout=timeout)

    def wait(self, timeout: float = 10.0) -> tuple[int, int, str, int, int]:
        """The pair's end; a "connected" report, if any, must have come before it."""
        deadline = time.monotonic() + timeout
        while not self.results or self.results[-1][2] == "connected":
            remaining = deadline - time.monotonic()
            assert remaining > 0, "the engine never reported the pair"
            select.select([self.bench.engine.done_fileno], [], [], remaining)
            self.bench.engine.collect()
        assert len(self.results) <= 2 and all(r[2] == "connected" for r in self.results[:-1])
        return self.results[-1]

    @property
    def connected(self) -> list[int]:
        """connect_us of the "connected" reports (one, at the engine's first scan after
        the connect, if the pair still relays then)."""
        return [r[4] for r in self.results if r[2] == "connected"]


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_a_connecting_pair_replies_once_connected_then_relays(bench: Bench) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        dialled = Dialled(bench, listener.getsockname(), to_upstream=b"early")
        target, _ = listener.accept()
    with dialled.client as client, target:
        client.settimeout(10)
        target.settimeout(10)
        # The reply comes first, then what the target says; the early bytes go first to it.
        target.sendall(b"banner")
        assert recv_exact(client, 11) == b"REPLYbanner"
        assert recv_exact(target, 5) == b"early"
        client.sendall(b"ping")
        assert recv_exact(target, 4) == b"ping"
        client.shutdown(socket.SHUT_WR)
        assert target.recv(1) == b""
        target.close()
        assert client.recv(1) == b""
    up, down, reason, err, connect_us = dialled.wait()
    assert (up, down, reason, err) == (9, 6, "eof", 0)
    assert 0 <= connect_us < 5_000_000
    # A pair that ends within a scan of its connect reports only its end.
    assert dialled.connected in ([], [connect_us])
    assert not _fd_open(dialled.client_fd)


def test_a_refused_connect_hands_the_client_back(bench: Bench, closed_port: int) -> None:
    dialled = Dialled(bench, ("127.0.0.1", closed_port), to_upstream=b"early")
    with dialled.client as client:
        up, down, reason, err, connect_us = dialled.wait()
        assert (reason, err, connect_us) == ("connect_failed", errno.ECONNREFUSED, -1)
        assert dialled.connected == []
        # Nothing was sent to the client; its descriptor is the caller's again, open.
        assert _fd_open(dialled.client_fd)
        os.write(dialled.client_fd, b"REFUSED")
        os.close(dialled.client_fd)
        client.settimeout(10)
        assert _read_all(client) == b"REFUSED"


def test_a_connect_past_its_timeout_hands_the_client_back(
        bench: Bench, blackhole: tuple[str, int]) -> None:
    dialled = Dialled(bench, blackhole, timeout=0.3)
    with dialled.client:
        up, down, reason, err, connect_us = dialled.wait()
        waited = time.monotonic() - dialled.added
        assert (reason, err, connect_us) == ("connect_timeout", errno.ETIMEDOUT, -1)
        # The quarter-second scan ends it: no sooner than asked, and soon after.
        assert 0.3 <= waited < 2.0
        assert _fd_open(dialled.client_fd)
        os.close(dialled.client_fd)


def test_a_client_that_leaves_during_the_connect_ends_it(
        bench: Bench, blackhole: tuple[str, int]) -> None:
    before = len(os.listdir("/proc/self/fd"))
    dialled = Dialled(bench, blackhole, timeout=30)
    dialled.client.close()
    up, down, reason, err, connect_us = dialled.wait(timeout=5)
    assert (up, down, reason, connect_us) == (0, 0, "client_closed", -1)
    # Both of the engine's descriptors are closed (the connect aborted with its socket).
    assert not _fd_open(dialled.client_fd)
    assert len(os.listdir("/proc/self/fd")) <= before


def test_bytes_and_a_fin_during_the_connect_are_relayed_after_it(
        bench: Bench) -> None:
    """printf ... | nc -N through a connect that takes a while: nothing is lost."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    # Fill the backlog so that the engine's connect waits until the test accepts.
    filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    filler.connect_ex(listener.getsockname())
    time.sleep(0.1)
    dialled = Dialled(bench, listener.getsockname(), to_upstream=b"handed ", timeout=30)
    with dialled.client as client:
        client.sendall(b"sent while connecting")
        client.shutdown(socket.SHUT_WR)
        time.sleep(0.3)
        assert not dialled.results  # still connecting: the client's FIN did not end it
        with listener:
            first, _ = listener.accept()
            first.close()
            filler.close()
            listener.settimeout(10)
            target, _ = listener.accept()  # the engine's SYN, retried, gets in now
        with target:
            target.settimeout(10)
            assert _read_all(target) == b"handed sent while connecting"
            target.sendall(b"answer")
            target.close()
            client.settimeout(10)
            assert _read_all(client) == b"REPLYanswer"
    up, down, reason, err, connect_us = dialled.wait()
    assert (up, down, reason) == (28, 6, "eof")
    assert connect_us > 0 and dialled.connected in ([], [connect_us])


def test_a_long_connection_is_reported_connected_while_it_lasts(bench: Bench) -> None:
    """The "connected" report reaches the loop on its own (the reply is counted then),
    within about half a second, not when the connection ends."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        dialled = Dialled(bench, listener.getsockname())
        target, _ = listener.accept()
    with dialled.client as client, target:
        client.settimeout(10)
        assert recv_exact(client, 5) == b"REPLY"
        deadline = time.monotonic() + 2.0
        while not dialled.connected:
            assert time.monotonic() < deadline, "no connected report while the pair lives"
            select.select([bench.engine.done_fileno], [], [], 0.1)
            bench.engine.collect()
        assert bench.engine.active == 1  # still relaying
        client.sendall(b"still")
        assert recv_exact(target, 5) == b"still"
    assert dialled.wait()[2] in ("eof", "client_reset", "upstream_reset")
