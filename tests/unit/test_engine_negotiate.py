"""The engine's SOCKS5 handshake (``Engine.negotiate``/``dial``/``end``), no server.

Each test accepts a real loopback connection and gives the descriptor to the
engine, as ``runtime/listener.py`` does; what the engine must finish itself
(the greeting's X'05 00', a well-formed CONNECT) and what it must hand back
untouched is checked byte by byte, whole and split into single bytes.
"""

from __future__ import annotations

import os
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
from procs import engine_reports, recv_exact, send_split  # noqa: E402

from fastsocks import codec as fcodec  # noqa: E402

GREETING = b"\x05\x01\x00"


def _connect_request(port: int, host: str = "127.0.0.1") -> bytes:
    if ":" in host:
        return b"\x05\x01\x00\x04" + socket.inet_pton(socket.AF_INET6, host) + struct.pack(">H", port)
    return b"\x05\x01\x00\x01" + socket.inet_aton(host) + struct.pack(">H", port)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Rig:
    """A listening socket, the engine, and every report by pair id."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.target = socket.create_server(("127.0.0.1", 0))
        self.reports: dict[int, list[tuple[Any, ...]]] = {}

    def accept(self, greet: bool = True) -> tuple[socket.socket, int, int]:
        """A client connected to the engine: (client, pair id, the server-side fd)."""
        client = socket.create_connection(self.listener.getsockname())
        fd, _ = self.listener._accept()  # type: ignore[attr-defined]
        holder: list[int] = []
        pair_id = self.engine.negotiate(
            fd, greet, lambda *args: self.reports.setdefault(holder[0], []).append(args))
        holder.append(pair_id)
        return client, pair_id, fd

    def wait(self, pair_id: int, count: int = 1, timeout: float = 5.0) -> list[tuple[Any, ...]]:
        return engine_reports(self.engine, self.reports, pair_id,
                              lambda reports: len(reports) >= count, timeout)

    def wait_end(self, pair_id: int, timeout: float = 5.0) -> tuple[Any, ...]:
        """The pair's final report (a "connected" one comes only if it lived a scan)."""
        return engine_reports(self.engine, self.reports, pair_id, lambda reports: bool(
            reports) and reports[-1][0] not in ("request", "dialling", "connected"), timeout)[-1]

    def upstream(self) -> int:
        """A socket whose non-blocking connect to the target is in progress."""
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(self.target.getsockname())
        return sock.detach()

    def close(self) -> None:
        self.listener.close()
        self.target.close()


@pytest.fixture
def rig() -> Iterator[Rig]:
    engine = Engine()
    engine.start()
    rig = Rig(engine)
    yield rig
    engine.stop()
    engine.collect()
    rig.close()
    assert engine.active == 0


@pytest.mark.parametrize("split", [False, True], ids=["whole", "byte_by_byte"])
@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "name"])
def test_a_connect_is_answered_and_reported(rig: Rig, split: bool, host: str) -> None:
    client, pair_id, _ = rig.accept()
    if host == "name":
        request = b"\x05\x01\x00\x03\x09localhost\x00\x50"
    else:
        request = _connect_request(80, host)
    greeting = b"\x05\x02\x02\x00"  # X'00' offered second
    send_split(client, greeting, split)
    assert recv_exact(client, 2) == b"\x05\x00"
    send_split(client, request, split)
    reason, data, answered, *_ = rig.wait(pair_id)[0]
    assert (reason, data, answered) == ("request", greeting + request, True)
    rig.engine.end(pair_id)
    client.close()


@pytest.mark.parametrize("first, answered", [
    (b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00", False),  # SOCKS4
    (b"CONNECT example.org:443 HTTP/1.1\r\n\r\n", False),  # HTTP
    (b"\x05\x01\x02", False),  # username/password only
    (b"\x05\x00", False),  # no method at all: the codec's error
    (b"\x16\x03\x01", False),  # not a proxy protocol
    (GREETING + b"\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50", True),  # BIND
    (GREETING + b"\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00", True),  # UDP ASSOCIATE
    (GREETING + b"\x04\x01\x00\x01\x7f\x00\x00\x01\x00\x50", True),  # wrong version
    (GREETING + b"\x05\x01\x01\x01\x7f\x00\x00\x01\x00\x50", True),  # reserved byte set
    (GREETING + b"\x05\x01\x00\x09\x7f\x00\x00\x01\x00\x50", True),  # unknown address type
    (GREETING + b"\x05\x01\x00\x03\x00\x00\x50", True),  # empty name
])
def test_what_the_engine_does_not_finish_comes_back_with_its_bytes(
        rig: Rig, first: bytes, answered: bool) -> None:
    client, pair_id, fd = rig.accept()
    client.sendall(first)
    reason, data, was_answered, *_ = rig.wait(pair_id)[0]
    assert (reason, data, was_answered) == ("handback", first, answered)
    # The descriptor is the caller's again, open and untouched.
    if answered:
        assert recv_exact(client, 2) == b"\x05\x00"
    os.write(fd, b"hi")
    assert recv_exact(client, 2) == b"hi"
    client.setblocking(False)
    with pytest.raises(BlockingIOError):
        client.recv(1)  # nothing else was written
    os.close(fd)
    client.close()


def test_without_greet_every_greeting_comes_back_unanswered(rig: Rig) -> None:
    client, pair_id, fd = rig.accept(greet=False)
    client.sendall(GREETING)
    assert rig.wait(pair_id)[0][:3] == ("handback", GREETING, False)
    client.setblocking(False)
    with pytest.raises(BlockingIOError):
        client.recv(1)
    os.close(fd)
    client.close()


def test_dial_connecting_relays_with_the_reply_first_and_early_bytes(rig: Rig) -> None:
    client, pair_id, _ = rig.accept()
    request = _connect_request(rig.target.getsockname()[1])
    client.sendall(GREETING + request + b"early")
    assert recv_exact(client, 2) == b"\x05\x00"
    reason, data, *_ = rig.wait(pair_id)[0]
    assert data == GREETING + request + b"early"
    reply = b"\x05\x00\x00\x01\x7f\x00\x00\x01\x12\x34"
    assert rig.engine.dial(pair_id, rig.upstream(), b"early", reply, 0.0, (), 5.0)
    target, _ = rig.target.accept()
    with target:
        assert recv_exact(target, 5) == b"early"
        assert recv_exact(client, 10) == reply
        assert rig.wait(pair_id, 2)[1][0] == "connected"
        target.sendall(b"pong")
        assert recv_exact(client, 4) == b"pong"
        client.sendall(b"ping")
        assert recv_exact(target, 4) == b"ping"
        client.shutdown(socket.SHUT_WR)  # half-close: the other way goes on
        assert target.recv(1) == b""
        target.sendall(b"last")
        target.close()
    assert recv_exact(client, 4) == b"last" and client.recv(1) == b""
    reason, _, _, up, down, err, connect_us = rig.wait(pair_id, 3)[2]
    assert (reason, up, down, err) == ("eof", 9, 8, 0) and connect_us >= 0
    client.close()


def test_dial_connected_relays_at_once(rig: Rig) -> None:
    client, pair_id, _ = rig.accept()
    client.sendall(GREETING + _connect_request(rig.target.getsockname()[1]))
    rig.wait(pair_id)
    upstream = socket.create_connection(rig.target.getsockname())
    target, _ = rig.target.accept()
    assert rig.engine.dial(pair_id, upstream.detach(), b"", b"REPLY", 0.0)
    assert recv_exact(client, 2 + 5) == b"\x05\x00REPLY"
    target.sendall(b"x")
    assert recv_exact(client, 1) == b"x"
    target.close()
    client.close()
    assert rig.wait(pair_id, 2)[1][0] in ("eof", "client_reset", "upstream_reset")


def test_a_failed_connect_hands_the_client_back_open(rig: Rig) -> None:
    client, pair_id, fd = rig.accept()
    client.sendall(GREETING + _connect_request(1))
    rig.wait(pair_id)
    closed = socket.socket()
    closed.setblocking(False)
    closed.connect_ex(("127.0.0.1", 1))  # nothing listens on port 1
    rig.engine.dial(pair_id, closed.detach(), b"", b"never sent", 0.0, (), 5.0)
    reason, _, _, _, _, err, _ = rig.wait(pair_id, 2)[1]
    assert reason == "connect_failed" and err == 111  # ECONNREFUSED
    os.write(fd, b"\x05\x05")  # the loop words the refusal itself
    assert recv_exact(client, 4) == b"\x05\x00\x05\x05"
    os.close(fd)
    client.close()


def test_end_sends_the_refusal_then_a_clean_close(rig: Rig) -> None:
    client, pair_id, _ = rig.accept()
    client.sendall(GREETING + _connect_request(80) + b"unread payload " * 100)
    rig.wait(pair_id)
    rig.engine.end(pair_id, b"\x05\x02\x00\x01\x00\x00\x00\x00\x00\x00")
    assert recv_exact(client, 12) == b"\x05\x00\x05\x02\x00\x01\x00\x00\x00\x00\x00\x00"
    assert client.recv(1) == b""  # a FIN, not an RST, although input was left unread
    assert rig.wait(pair_id, 2)[1][0] == "closed"
    client.close()


@pytest.mark.parametrize("when", ["greeting", "request", "waiting"])
def test_a_client_that_leaves_is_reported(rig: Rig, when: str) -> None:
    client, pair_id, _ = rig.accept()
    if when != "greeting":
        client.sendall(GREETING)
        recv_exact(client, 2)
    if when == "waiting":
        client.sendall(_connect_request(80))
        assert rig.wait(pair_id)[0][0] == "request"
    client.close()
    reports = rig.wait(pair_id, 2 if when == "waiting" else 1)
    assert reports[-1][0] == "client_closed"
    # dial() after the end: the upstream descriptor is closed, not leaked.
    before = _fds()
    assert rig.engine.dial(pair_id, socket.socket().detach(), b"", b"", 0.0) is False
    assert _fds() == before


def test_a_half_close_after_early_bytes_waits_for_the_relay(rig: Rig) -> None:
    client, pair_id, _ = rig.accept()
    client.sendall(GREETING + _connect_request(rig.target.getsockname()[1]) + b"data")
    client.shutdown(socket.SHUT_WR)  # printf ... | nc -N
    assert rig.wait(pair_id)[0][0] == "request"
    time.sleep(0.05)
    assert len(rig.reports[pair_id]) == 1  # not taken for a client that left
    rig.engine.dial(pair_id, rig.upstream(), b"data", b"R", 0.0, (), 5.0)
    target, _ = rig.target.accept()
    with target:
        assert recv_exact(target, 4) == b"data" and target.recv(1) == b""
    client.close()


def test_stop_ends_every_negotiation_and_leaks_nothing(rig: Rig) -> None:
    before = _fds()
    clients = []
    for i in range(50):
        client, pair_id, _ = rig.accept()
        if i % 2:
            client.sendall(GREETING + _connect_request(80))
        clients.append((client, pair_id))
    for client, pair_id in clients[1::2]:
        rig.wait(pair_id)
    rig.engine.stop()
    rig.engine.collect()
    assert rig.engine.active == 0
    for client, pair_id in clients:
        assert rig.reports[pair_id][-1][0] == "shutdown"
        client.close()
    assert _fds() <= before


def test_many_negotiations_end_to_end_leave_no_descriptor(rig: Rig) -> None:
    before = _fds()
    for _ in range(200):
        client, pair_id, _ = rig.accept()
        client.sendall(GREETING + _connect_request(rig.target.getsockname()[1]))
        rig.wait(pair_id)
        rig.engine.dial(pair_id, rig.upstream(), b"", b"R", 0.0, (), 5.0)
        target, _ = rig.target.accept()
        assert recv_exact(client, 3) == b"\x05\x00R"
        client.close()
        target.close()
        assert rig.wait_end(pair_id)[0] in ("eof", "client_reset", "upstream_reset")
    assert _fds() <= before
    assert rig.engine.active == 0


# -- the engine dials an IP literal itself (negotiate(..., dial_timeout)) ----------


def _dialling(rig: Rig, host: str, port: int, early: bytes = b"") -> tuple[socket.socket, int]:
    return _may_dial(rig, GREETING + _connect_request(port, host) + early)


def _may_dial(rig: Rig, handshake: bytes, split: bool = False) -> tuple[socket.socket, int]:
    """A client that sends ``handshake``, negotiated with dial_timeout (the engine may dial)."""
    client = socket.create_connection(rig.listener.getsockname())
    fd, _ = rig.listener._accept()  # type: ignore[attr-defined]
    holder: list[int] = []
    pair_id = rig.engine.negotiate(
        fd, True, lambda *args: rig.reports.setdefault(holder[0], []).append(args), 5.0, 0.0)
    holder.append(pair_id)
    send_split(client, handshake, split)
    return client, pair_id


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_the_engine_dials_a_literal_and_replies_with_its_bound_address(rig: Rig,
                                                                        host: str) -> None:
    target_server = rig.target if host == "127.0.0.1" else socket.create_server(
        ("::1", 0), family=socket.AF_INET6)
    port = target_server.getsockname()[1]
    client, pair_id = _dialling(rig, host, port, b"early")
    target, _ = target_server.accept()
    with target:
        assert recv_exact(target, 5) == b"early"
        assert recv_exact(client, 2) == b"\x05\x00"
        reply = fcodec.parse_reply(recv_exact(client, 10 if host == "127.0.0.1" else 22))
        assert reply.rep == 0 and (reply.host, reply.port) == target.getpeername()[:2]
        reports = rig.wait(pair_id, 2)
        assert reports[0][:3] == ("dialling", GREETING + _connect_request(port, host), True)
        assert reports[1][0] == "connected"
        target.sendall(b"pong")
        assert recv_exact(client, 4) == b"pong"
    assert client.recv(1) == b""
    client.shutdown(socket.SHUT_WR)
    reason, _, _, up, down, _, _ = rig.wait(pair_id, 3)[2]
    assert (reason, up, down) == ("eof", 5, 4)
    client.close()
    if target_server is not rig.target:
        target_server.close()


def test_a_connect_refused_later_hands_the_client_back(rig: Rig) -> None:
    with socket.socket() as spare:  # a port nothing listens on
        spare.bind(("127.0.0.1", 0))
        port = spare.getsockname()[1]
    client, pair_id = _dialling(rig, "127.0.0.1", port)
    reports = rig.wait(pair_id, 1)
    # Refused at once (loopback): the loop is asked, as without dial_timeout; or
    # refused after EINPROGRESS: the descriptor comes back with the errno.
    if reports[0][0] == "dialling":
        reason, *_, err, _ = rig.wait(pair_id, 2)[1]
        assert (reason, err) == ("connect_failed", 111)
    else:
        assert reports[0][0] == "request"
        rig.engine.end(pair_id)
    client.close()


def test_an_ipv4_mapped_address_and_a_name_go_to_the_loop(rig: Rig) -> None:
    client, pair_id = _dialling(rig, "::ffff:127.0.0.1", rig.target.getsockname()[1])
    assert rig.wait(pair_id)[0][0] == "request"
    rig.engine.end(pair_id)
    client.close()


# -- names the loop gave the engine (remember) ------------------------------------------


def _by_name(rig: Rig, name: bytes, port: int, early: bytes = b"",
             split: bool = False) -> tuple[socket.socket, int, bytes]:
    """A client whose CONNECT asks for ``name`` (``_may_dial``); returns the request too."""
    request = b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack(">H", port)
    return (*_may_dial(rig, GREETING + request + early, split), request)


@pytest.mark.parametrize("split", [False, True], ids=["whole", "byte_by_byte"])
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_a_remembered_name_is_dialled_here_and_reported_with_its_address(
        rig: Rig, host: str, split: bool) -> None:
    from fastsocks.control.handoff import dialled_request

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    target_server = rig.target if host == "127.0.0.1" else socket.create_server(
        (host, 0), family=family)
    port = target_server.getsockname()[1]
    rig.engine.remember(b"svc.test", socket.inet_pton(family, host), time.monotonic() + 60)
    client, pair_id, request = _by_name(rig, b"svc.test", port, b"early", split)
    target, _ = target_server.accept()
    with target:
        assert recv_exact(target, 5) == b"early"
        assert recv_exact(client, 2) == b"\x05\x00"
        reply = fcodec.parse_reply(recv_exact(client, 10 if family == socket.AF_INET else 22))
        assert reply.rep == 0 and (reply.host, reply.port) == target.getpeername()[:2]
        reason, data, answered, *_ = rig.wait(pair_id)[0]
        atyp = b"\x01" if family == socket.AF_INET else b"\x04"
        assert (reason, data, answered) == (
            "dialling", GREETING + request + atyp + socket.inet_pton(family, host), True)
        user, parsed, dialled = dialled_request(data, answered)
        assert (user, parsed.host, parsed.port, dialled) == (None, "svc.test", port, (host, port))
        target.sendall(b"pong")
        assert recv_exact(client, 4) == b"pong"
    assert rig.engine.name_dials == 1
    client.close()
    rig.wait_end(pair_id)
    if target_server is not rig.target:
        target_server.close()


@pytest.mark.parametrize("case", ["never", "expired", "forgotten", "other_case", "longer",
                                  "prefix", "mapped"])
def test_a_name_not_remembered_now_goes_to_the_loop(rig: Rig, case: str) -> None:
    port = rig.target.getsockname()[1]
    loopback, until = socket.inet_aton("127.0.0.1"), time.monotonic() + 60
    if case == "expired":
        rig.engine.remember(b"svc.test", loopback, time.monotonic() - 0.01)
    elif case == "mapped":  # an IPv4-mapped address: the loop decides its family
        rig.engine.remember(b"svc.test", socket.inet_pton(socket.AF_INET6, "::ffff:127.0.0.1"),
                            until)
    elif case != "never":
        rig.engine.remember({"other_case": b"SVC.test", "longer": b"svc.tes",
                             "prefix": b"svc.test.x"}.get(case, b"svc.test"), loopback, until)
    if case == "forgotten":
        rig.engine.forget()
    client, pair_id, request = _by_name(rig, b"svc.test", port, b"early")
    reason, data, answered, *_ = rig.wait(pair_id)[0]
    assert (reason, data, answered) == ("request", GREETING + request + b"early", True)
    assert rig.engine.name_dials == 0
    rig.engine.end(pair_id)
    client.close()


def _dialled_to_target(rig: Rig, name: bytes) -> bytes:
    """CONNECT by ``name``: the engine dials the rig's target (127.0.0.1) itself; the report."""
    client, pair_id, _ = _by_name(rig, name, rig.target.getsockname()[1])
    first = rig.wait(pair_id)[0]
    assert first[0] == "dialling"
    rig.target.accept()[0].close()
    client.close()
    rig.wait_end(pair_id)
    return bytes(first[1])


def test_remember_replaces_what_it_kept_for_a_name(rig: Rig) -> None:
    until = time.monotonic() + 60
    rig.engine.remember(b"svc.test", socket.inet_aton("127.0.0.9"), until)
    rig.engine.remember(b"svc.test", socket.inet_aton("127.0.0.1"), until)
    assert _dialled_to_target(rig, b"svc.test").endswith(b"\x01" + socket.inet_aton("127.0.0.1"))


def test_a_full_table_gives_up_the_names_that_expire_first(rig: Rig) -> None:
    until = time.monotonic() + 60
    # Far more names than the table holds (1,024), each kept a little longer
    # than the one before: where a window is full, the entry that expires first goes.
    for i in range(3000):
        rig.engine.remember(b"n%d.test" % i, socket.inet_aton("127.0.0.1"), until + i)
    kept = [i for i in range(3000) if _kept(rig, b"n%d.test" % i)]
    assert 900 <= len(kept) <= 1024 and kept[-1] == 2999
    assert sum(i >= 2000 for i in kept) >= 850  # mostly the latest thousand (899: the hash is fixed)
    assert _dialled_to_target(rig, b"n2999.test").endswith(socket.inet_aton("127.0.0.1"))


def _kept(rig: Rig, name: bytes) -> bool:
    """Whether the engine dials ``name`` now (the request is ended either way)."""
    client, pair_id, _ = _by_name(rig, name, rig.target.getsockname()[1])
    reason = rig.wait(pair_id)[0][0]
    if reason == "dialling":
        rig.target.accept()[0].close()
    else:
        rig.engine.end(pair_id)
    client.close()
    rig.wait_end(pair_id)
    return reason == "dialling"


@pytest.mark.parametrize("name, address", [
    (b"", b"\x7f\x00\x00\x01"), (b"x" * 256, b"\x7f\x00\x00\x01"), (b"svc.test", b"\x7f\x00\x00"),
    (b"svc.test", b"\x00" * 17)])
def test_remember_refuses_what_no_request_can_carry(rig: Rig, name: bytes,
                                                    address: bytes) -> None:
    with pytest.raises(ValueError):
        rig.engine.remember(name, address, time.monotonic() + 60)
