"""The engine accepting on a listening socket itself (``Engine.listen``), no server.

What ``runtime/listener.py`` relies on: each connection is accepted on the
engine thread and negotiated as ``negotiate`` would; the loop hears of it
once, with its first report, through the listener's ``accepted`` callback
(its id, descriptor, peer and age, and whether the engine dials); slow
handshakes come back; a refused introduction closes the connection; the
descriptor limit pauses accepting and says so; and nothing leaks.  With
``ended``, a connection the engine dials stays quiet until its first scan:
one that ends before is reported once, whole, and never introduced.
"""

from __future__ import annotations

import errno
import os
import resource
import select
import socket
import struct
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

if not sys.platform.startswith("linux"):
    pytest.skip("the splice engine is Linux-only", allow_module_level=True)

if os.environ.get("FASTSOCKS_NO_EXTENSIONS"):
    pytest.skip("pure build: no engine", allow_module_level=True)

from fastsocks._engine import Engine  # noqa: E402
from procs import recv_exact  # noqa: E402

GREETING = b"\x05\x01\x00"
FINAL = ("request", "dialling", "connected")  # reports that are not a pair's end


def _request(port: int, host: str = "127.0.0.1") -> bytes:
    if ":" in host:
        return b"\x05\x01\x00\x04" + socket.inet_pton(socket.AF_INET6, host) + struct.pack(">H", port)
    return b"\x05\x01\x00\x01" + socket.inet_aton(host) + struct.pack(">H", port)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Rig:
    """An engine accepting on one loopback listener; introductions and reports kept."""

    def __init__(self, engine: Engine, family: int = socket.AF_INET, greet: bool = True,
                 dial: float = 5.0, slow: float = 0.25, whole: bool = False) -> None:
        self.engine = engine
        host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
        self.listener = socket.create_server((host, 0), family=family)
        self.address = self.listener.getsockname()[:2]
        self.target = socket.create_server((host, 0), family=family)
        self.introduced: list[tuple[int, int, Any, float, bool]] = []
        self.reports: dict[int, list[tuple[Any, ...]]] = {}
        self.claim = True
        self.ended: list[tuple[Any, ...]] = []  # whole reports (``ended``)
        engine.listen(os.dup(self.listener.fileno()), 1, self._accepted, greet, dial, 0.0, slow,
                      (lambda *args: self.ended.append(args)) if whole else None)

    def _accepted(self, pair_id: int, fd: int, peer: Any, age: float, dialling: bool) -> Any:
        self.introduced.append((pair_id, fd, peer, age, dialling))
        if not self.claim:
            return None
        return lambda *args: self.reports.setdefault(pair_id, []).append(args)

    def connect(self) -> socket.socket:
        return socket.create_connection(self.address, timeout=10)

    def collect_until(self, done: Any, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"introduced {self.introduced}, reports {self.reports}"
            # Polled: an accept alone does not wake the loop (``unseen`` moves).
            select.select([self.engine.done_fileno], [], [], min(remaining, 0.01))
            self.engine.collect()

    def first(self, index: int = 0) -> tuple[int, int, Any, float, bool]:
        self.collect_until(lambda: len(self.introduced) > index)
        return self.introduced[index]

    def end(self, pair_id: int) -> tuple[Any, ...]:
        def ended() -> bool:
            reports = self.reports.get(pair_id, [])
            return bool(reports) and reports[-1][0] not in FINAL
        self.collect_until(ended)
        return self.reports[pair_id][-1]

    def close(self) -> None:
        self.listener.close()
        self.target.close()


@pytest.fixture
def engine() -> Iterator[Engine]:
    engine = Engine()
    engine.start()
    yield engine
    engine.stop()
    engine.collect()


def test_a_connect_to_a_literal_is_accepted_negotiated_and_dialled(engine: Engine) -> None:
    before = _fds()
    rig = Rig(engine)
    port = rig.target.getsockname()[1]
    with rig.connect() as client:
        client.sendall(GREETING + _request(port) + b"early")
        target, _ = rig.target.accept()
        with target:
            assert recv_exact(target, 5) == b"early"
            assert recv_exact(client, 2) == b"\x05\x00"
            reply = recv_exact(client, 10)
            assert reply[:4] == b"\x05\x00\x00\x01"
            assert (socket.inet_ntoa(reply[4:8]), struct.unpack(">H", reply[8:])[0]) \
                == target.getpeername()
            pair_id, fd, peer, age, dialling = rig.first()
            assert peer == client.getsockname() and dialling and 0 <= age < 5
            assert pair_id >= 1 << 62  # the engine's own ids, apart from the loop's
            assert rig.reports[pair_id][0][:3] == ("dialling", GREETING + _request(port), True)
            target.sendall(b"pong")
            assert recv_exact(client, 4) == b"pong"
    reason, _, _, up, down, _, connect_us = rig.end(pair_id)
    assert reason in ("eof", "client_reset", "upstream_reset") and up == 5 and connect_us >= 0
    assert engine.unseen == 0
    rig.close()
    engine.stop()
    engine.collect()
    assert _fds() == before


def test_an_ipv6_peer_is_given_as_socket_accept_gives_it(engine: Engine) -> None:
    rig = Rig(engine, socket.AF_INET6)
    port = rig.target.getsockname()[1]
    with rig.connect() as client:
        client.sendall(GREETING + _request(port, "::1"))
        target, _ = rig.target.accept()
        target.close()
        pair_id, _, peer, _, dialling = rig.first()
        assert peer == client.getsockname() and len(peer) == 4 and dialling
    rig.end(pair_id)
    rig.close()


def test_what_the_engine_does_not_finish_comes_back_with_its_bytes(engine: Engine) -> None:
    rig = Rig(engine)
    socks4 = b"\x04\x01\x00\x50\x7f\x00\x00\x01me\x00"
    with rig.connect() as client:
        client.sendall(socks4)
        pair_id, fd, peer, _, dialling = rig.first()
        assert not dialling and peer == client.getsockname()
        reason, data, answered, *_ = rig.end(pair_id)
        assert (reason, data, answered) == ("handback", socks4, False)
        # The descriptor is the loop's now, open, with nothing written to it.
        os.write(fd, b"back")
        assert recv_exact(client, 4) == b"back"
        os.close(fd)
    # A name is the loop's to resolve: reported as a request, greeting answered.
    request = b"\x05\x01\x00\x03\x09localhost\x00\x50"
    with rig.connect() as client:
        client.sendall(GREETING + request)
        assert recv_exact(client, 2) == b"\x05\x00"
        pair_id, _, _, _, dialling = rig.first(1)
        assert not dialling
        assert rig.reports[pair_id][0][:3] == ("request", GREETING + request, True)
        engine.end(pair_id, b"\x05\x02\x00\x01\x00\x00\x00\x00\x00\x00")
        assert recv_exact(client, 10)[1] == 2
        assert rig.end(pair_id)[0] == "closed"
    rig.close()


def test_a_slow_handshake_is_handed_back_with_what_came(engine: Engine) -> None:
    rig = Rig(engine, slow=0.1)
    with rig.connect() as client:
        client.sendall(GREETING)
        assert recv_exact(client, 2) == b"\x05\x00"
        started = time.monotonic()
        rig.collect_until(lambda: engine.unseen == 1, 2)
        pair_id, fd, _, age, dialling = rig.first()
        waited = time.monotonic() - started
        assert 0.1 <= age < 1.5 and waited < 1.5 and not dialling
        assert engine.unseen == 0
        reason, data, answered, *_ = rig.end(pair_id)
        assert (reason, data, answered) == ("handback", GREETING, True)
        os.close(fd)
    rig.close()


def test_a_connection_nobody_takes_is_closed(engine: Engine) -> None:
    before = _fds()
    rig = Rig(engine)
    rig.claim = False
    port = rig.target.getsockname()[1]
    with rig.connect() as client:
        client.sendall(GREETING + _request(port))
        rig.first()
        client.settimeout(5)
        data = b""
        while True:  # the greeting's answer, perhaps the reply, then the close
            chunk = client.recv(64)
            if not chunk:
                break
            data += chunk
        assert data.startswith(b"\x05\x00")
    with rig.connect() as client:
        client.sendall(b"\x04")  # handed back, and nobody takes it: closed
        rig.first(1)
        client.settimeout(5)
        assert client.recv(1) == b""
    rig.close()
    engine.stop()
    engine.collect()
    assert _fds() == before


def test_unlisten_and_stop_close_the_engines_descriptors(engine: Engine) -> None:
    before = _fds()
    rig = Rig(engine, slow=30)
    silent = rig.connect()  # negotiating in the engine when it stops
    rig.collect_until(lambda: engine.unseen == 1, 2)
    address = rig.address
    rig.close()  # the loop's socket; the engine's duplicate still listens
    with socket.create_connection(address, timeout=5):
        pass
    engine.unlisten(1)
    deadline = time.monotonic() + 5
    while True:
        try:
            socket.create_connection(address, timeout=5).close()
        except ConnectionRefusedError:
            break
        assert time.monotonic() < deadline, "still listening after unlisten"
        time.sleep(0.01)
    engine.stop()
    engine.collect()
    assert engine.unseen == 0
    silent.settimeout(5)
    assert silent.recv(1) == b""
    silent.close()
    assert _fds() == before


def test_settings_change_for_new_connections(engine: Engine) -> None:
    rig = Rig(engine)
    engine.listen(-1, 1, rig._accepted, False, 0.0, 0.0, 0.25)  # greet no more
    port = rig.target.getsockname()[1]
    with rig.connect() as client:
        client.sendall(GREETING + _request(port))
        pair_id, fd, _, _, dialling = rig.first()
        reason, data, answered, *_ = rig.end(pair_id)
        assert (reason, answered, dialling) == ("handback", False, False)
        assert data.startswith(GREETING)
        os.close(fd)
    rig.close()


def test_no_descriptor_left_pauses_accepting_and_says_so(engine: Engine) -> None:
    """At the descriptor limit the engine pauses (``on_exhausted``), then goes on."""
    exhausted: list[int] = []
    engine.on_exhausted = exhausted.append
    rig = Rig.__new__(Rig)
    rig.engine = engine
    rig.listener = socket.create_server(("127.0.0.1", 0), backlog=16)
    rig.address = rig.listener.getsockname()
    rig.target = socket.create_server(("127.0.0.1", 0))
    rig.introduced, rig.reports, rig.claim = [], {}, True
    clients = [rig.connect() for _ in range(6)]  # queued in the backlog
    for client in clients:
        client.sendall(b"\x04")  # each is handed back at once
    dup = os.dup(rig.listener.fileno())
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Room for two accepted descriptors at most: a new one's number must be
    # under the limit, and the lowest free number is the next one given.
    lowest = os.dup(0)
    os.close(lowest)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest + 2, hard))
    try:
        engine.listen(dup, 1, rig._accepted, True, 0.0, 0.0, 0.25)
        rig.collect_until(lambda: bool(exhausted), 5)
        assert exhausted[0] in (errno.EMFILE, errno.ENFILE)
        assert len(rig.introduced) <= 2
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    # Accepting resumes within about half a second and takes the rest.
    rig.collect_until(lambda: len(rig.introduced) == 6, 5)
    for pair_id, fd, *_ in rig.introduced:
        assert rig.end(pair_id)[0] == "handback"
        os.close(fd)
    for client in clients:
        client.close()
    rig.close()


def test_unlisten_while_the_loop_keeps_its_socket_then_listen_again(engine: Engine) -> None:
    """The loop's socket shares the file description with the engine's duplicate: the
    engine must leave epoll before closing it, or events would name a freed listener."""
    rig = Rig(engine)
    engine.unlisten(1)
    time.sleep(0.05)
    with rig.connect() as waiting:  # queued in the backlog: nobody accepts it now
        waiting.sendall(b"\x04")
        time.sleep(0.2)
        assert not rig.introduced and engine.unseen == 0
        engine.listen(os.dup(rig.listener.fileno()), 2, rig._accepted, True, 0.0, 0.0, 0.25)
        pair_id, fd, *_ = rig.first()
        assert rig.end(pair_id)[:2] == ("handback", b"\x04")
        os.close(fd)
    rig.close()


@pytest.mark.parametrize("source", ["127.0.0.1", "127.10.200.5", "127.99.9.250"])
def test_the_peer_is_written_as_socket_accept_writes_it(engine: Engine, source: str) -> None:
    rig = Rig(engine)
    with socket.socket() as client:
        client.bind((source, 0))
        client.connect(rig.address)
        client.sendall(b"\x04")
        pair_id, fd, peer, *_ = rig.first()
        assert peer == client.getsockname() == (source, peer[1])
        rig.end(pair_id)
        os.close(fd)
    rig.close()


def _relayed(rig: Rig, last: float = 0.0) -> tuple[Any, bytes]:
    """One CONNECT through the engine, relayed both ways, open for ``last`` seconds, closed:
    the client's address and the handshake it sent."""
    port = rig.target.getsockname()[1]
    client = rig.connect()
    request = _request(port)
    with client:
        client.sendall(GREETING + request + b"early")
        target, _ = rig.target.accept()
        with target:
            assert recv_exact(target, 5) == b"early"
            assert recv_exact(client, 12)[:4] == b"\x05\x00\x05\x00"
            # Dialled, not yet introduced: open, and no longer a handshake.
            assert rig.engine.unseen >= 1 and rig.engine.shaking == 0
            target.sendall(b"pong!")
            assert recv_exact(client, 5) == b"pong!"
            time.sleep(last)
        return client.getsockname(), GREETING + request


def test_a_short_connection_dialled_here_is_reported_once_whole(engine: Engine) -> None:
    before = _fds()
    rig = Rig(engine, whole=True)
    # The engine's scan (every quarter second) introduces a quiet pair: one
    # connection of a few milliseconds may meet it, twenty in a row do not.
    for attempt in range(20):
        name, handshake = _relayed(rig)
        rig.collect_until(lambda: len(rig.ended) + len(rig.introduced) > attempt)
        if rig.ended:
            break
        rig.end(rig.introduced[-1][0])
    assert len(rig.ended) == 1
    peer, data, answered, up, down, reason, shaken, lasted = rig.ended[0]
    assert peer == name and data == handshake and answered == 1
    assert (up, down) == (5, 5) and reason in ("eof", "client_reset")
    assert 0 < shaken < lasted < 5
    assert engine.unseen == 0 and engine.shaking == 0
    rig.close()
    engine.stop()
    engine.collect()
    assert _fds() == before


def test_a_connection_past_the_scan_is_introduced_as_dialling(engine: Engine) -> None:
    rig = Rig(engine, whole=True)
    _, handshake = _relayed(rig, last=0.6)
    pair_id, _, _, _, dialling = rig.first()
    assert dialling
    reason, _, _, up, down, _, connect_us = rig.end(pair_id)
    assert (up, down) == (5, 5) and connect_us >= 0 and not rig.ended
    reports = rig.reports[pair_id]
    assert reports[0][:3] == ("dialling", handshake, 1)
    assert [r[0] for r in reports[1:-1]] in ([], ["connected"])  # the reply, counted
    assert engine.unseen == 0
    rig.close()


def test_a_failed_connect_is_introduced_before_its_refusal(engine: Engine) -> None:
    rig = Rig(engine, whole=True)
    with socket.socket() as gone:
        gone.bind(("127.0.0.1", 0))
        port = gone.getsockname()[1]  # closed: refused
    with rig.connect() as client:
        client.sendall(GREETING + _request(port))
        pair_id, fd, _, _, dialling = rig.first()
        reasons = [r[0] for r in rig.reports.get(pair_id, [])]
        if dialling:  # the engine's connect failed: the descriptor is back, for the refusal
            reason = rig.end(pair_id)[0]
            assert reason == "connect_failed" and reasons[0] == "dialling"
        else:  # it failed at once: the loop dials and refuses
            assert reasons == ["request"]
            engine.end(pair_id)
            rig.end(pair_id)
        assert not rig.ended
    if dialling:
        os.close(fd)
    assert engine.unseen == 0
    rig.close()


def test_stop_reports_a_quiet_connection_whole() -> None:
    for _ in range(5):  # until the stop finds it quiet (a scan may introduce it first)
        engine = Engine()
        engine.start()
        rig = Rig(engine, whole=True)
        port = rig.target.getsockname()[1]
        with rig.connect() as client:
            client.sendall(GREETING + _request(port))
            target, _ = rig.target.accept()
            assert recv_exact(client, 12)[:4] == b"\x05\x00\x05\x00"
            engine.stop()
            engine.collect()
            target.close()
        assert engine.unseen == 0
        rig.close()
        if rig.ended:
            break
        assert rig.introduced and rig.reports[rig.introduced[0][0]][-1][0] == "shutdown"
    assert len(rig.ended) == 1 and rig.ended[0][5] == "shutdown"


def test_quiet_connections_leave_the_handshake_room_free(engine: Engine) -> None:
    rig = Rig(engine, whole=True)
    port = rig.target.getsockname()[1]
    engine.handshake_room = 1
    with rig.connect() as first:
        first.sendall(GREETING + _request(port))
        target, _ = rig.target.accept()
        assert recv_exact(first, 12)[:4] == b"\x05\x00\x05\x00"
        assert engine.shaking == 0  # uncollected: still unseen, still quiet
        with rig.connect() as second:  # room for its handshake: answered, not handed back
            second.sendall(GREETING)
            assert recv_exact(second, 2) == b"\x05\x00"
        target.close()
    rig.close()


def test_settings_without_ended_keep_it_for_the_pairs_already_quiet() -> None:
    for _ in range(10):  # until the new settings find the pair quiet (a scan may come first)
        engine = Engine()
        engine.start()
        try:
            rig = Rig(engine, whole=True)
            port = rig.target.getsockname()[1]
            with rig.connect() as client:
                client.sendall(GREETING + _request(port))
                target, _ = rig.target.accept()
                with target:
                    assert recv_exact(client, 12)[:4] == b"\x05\x00\x05\x00"
                    # A reload's settings without ``ended``: loud from now on.
                    engine.listen(-1, 1, rig._accepted, True, 5.0, 0.0, 0.25, None)
            rig.collect_until(lambda: engine.unseen == 0 and (
                rig.ended or bool(rig.introduced and rig.reports.get(rig.introduced[0][0]))))
            if rig.introduced:  # the scan was first: introduced, not quiet
                rig.close()
                continue
            assert len(rig.ended) == 1 and rig.ended[0][3:5] == (0, 0)
            # A connection after them is introduced as it is dialled.
            with rig.connect() as client:
                client.sendall(GREETING + _request(port))
                target, _ = rig.target.accept()
                target.close()
            pair_id, _, _, _, dialling = rig.first()
            assert dialling and rig.end(pair_id)[3:5] == (0, 0) and len(rig.ended) == 1
            rig.close()
            return
        finally:
            engine.stop()
            engine.collect()
    raise AssertionError("the engine's scan introduced the pair ten times before new settings")
