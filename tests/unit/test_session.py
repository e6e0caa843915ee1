"""A session driven in-process through its states, with a fake client transport.

No fastsocks process: a ``Server`` is built inside the test's event loop
(never started, so no listener and no splice engine), a ``Session`` is
given a transport that records what it is sent, and the test feeds it
bytes and watches ``session.state``, the bytes on the wire and the one
``CloseRecord`` it leaves.  Targets are real sockets on loopback.  Every
case runs on both codec implementations (``impl``: c and py), whole and
one byte at a time.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from types import ModuleType
from typing import Any, Awaitable, Callable

import pytest

from fastsocks.config import Settings
from fastsocks.control import core, negotiate
from fastsocks.control.record import CloseReason, CloseRecord, State, reason_for_reply
from fastsocks.control.session import Session
from fastsocks.runtime.server import Server

CLIENT = ("127.0.0.1", 40000)
LISTENER = ("127.0.0.1", 1080)
DEADLINE = 5.0  # seconds any one wait may take


class FakeTransport(asyncio.Transport):
    """The client's side as the session sees it: writes recorded, close reported."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        self.protocol: Any = None
        self.written = bytearray()
        self.closing = False
        self.paused = False
        self.eof_written = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": CLIENT, "sockname": LISTENER}.get(name, default)

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_protocol(self) -> Any:
        return self.protocol

    def write(self, data: Any) -> None:
        assert not self.closing, "written after close"
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.loop.call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def is_reading(self) -> bool:
        return not self.paused

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True


class Records:
    """Stands in for the access log: keeps every CloseRecord."""

    def __init__(self) -> None:
        self.records: list[CloseRecord] = []

    def write(self, record: CloseRecord) -> None:
        self.records.append(record)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def greeting(*methods: int) -> bytes:
    return bytes((5, len(methods), *methods))


def request(command: int, host: str, port: int) -> bytes:
    return b"\x05" + bytes((command, 0, 1)) + socket.inet_aton(host) + struct.pack("!H", port)


def reply_code(data: bytes, offset: int) -> int:
    assert data[offset] == 5, data
    return data[offset + 1]


def run(impl: ModuleType, monkeypatch: pytest.MonkeyPatch,
        body: Callable[..., Awaitable[None]], **settings: Any) -> None:
    """Run ``body(server, session, transport, records)`` with the codec ``impl``."""
    # The session's core and its negotiation stage name the codec's classes once, at
    # import: swap them all, so events and codec come from the same module.
    monkeypatch.setattr(core, "_ServerCodec", impl.ServerCodec)
    for name, value in (("_NEED_DATA", impl.NEED_DATA), ("_Greeting", impl.Greeting),
                        ("_UserPass", impl.UserPass), ("_Request", impl.Request),
                        ("_GSS_ABORT", impl.GSS_ABORT)):
        monkeypatch.setattr(negotiate, name, value)
    hooks = {k: settings.pop(k) for k in ("authenticate", "authorize") if k in settings}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        config = Settings(listen=[LISTENER], relay="protocol", **settings)
        server = Server(config, **hooks)
        records = Records()
        server.access_log = records  # type: ignore[assignment]
        session = Session(server, LISTENER)
        transport = FakeTransport(loop)
        transport.set_protocol(session)
        session.connection_made(transport)
        try:
            await asyncio.wait_for(body(server, session, transport, records), DEADLINE * 2)
        finally:
            if not session.closed:
                session.abort("shutdown")
            await asyncio.sleep(0)

    asyncio.run(main())


async def until(check: Callable[[], bool]) -> None:
    """Let the loop run until ``check()`` holds (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not check():
        assert loop.time() < deadline, "timed out waiting"
        await asyncio.sleep(0.001)


def feed(session: Session, data: bytes, by_byte: bool) -> None:
    if by_byte:
        for i in range(len(data)):
            session.data_received(data[i:i + 1])
    else:
        session.data_received(data)


@pytest.fixture(params=[False, True], ids=["whole", "bytewise"])
def by_byte(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


async def _echo_server() -> tuple[asyncio.base_events.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- CONNECT ---------------------------------------------------------------------------


def test_connect_relays_then_shutdown(impl: ModuleType, monkeypatch: pytest.MonkeyPatch,
                                      by_byte: bool) -> None:
    async def body(server: Server, session: Session, transport: FakeTransport,
                   records: Records) -> None:
        echo, port = await _echo_server()
        assert session.state is State.NEGOTIATING
        feed(session, greeting(0), by_byte)
        assert bytes(transport.written) == b"\x05\x00"
        assert session.state is State.NEGOTIATING
        # The request and early payload in one go: the payload waits in the codec.
        feed(session, request(1, "127.0.0.1", port) + b"early", by_byte)
        assert session.state in (State.CONNECTING, State.RELAYING)
        await until(lambda: session.state is State.RELAYING)
        assert reply_code(bytes(transport.written), 2) == 0
        # The echo sends the early bytes back through the relay to the client.
        await until(lambda: transport.written.endswith(b"early"))
        transport.protocol.data_received(b"+more")
        await until(lambda: transport.written.endswith(b"+more"))
        session.abort("shutdown")
        await until(lambda: bool(records.records))
        record = records.records[0]
        assert record.reason is CloseReason.SHUTDOWN
        assert (record.command, record.host, record.port, record.reply) == (
            1, "127.0.0.1", port, 0)
        assert record.dialled == ("127.0.0.1", port)
        assert (record.bytes_up, record.bytes_down) == (10, 10)
        assert record.client == CLIENT and record.user is None
        assert session.closed and not server.sessions
        echo.close()

    run(impl, monkeypatch, body)


def test_connect_refused(impl: ModuleType, monkeypatch: pytest.MonkeyPatch,
                         by_byte: bool) -> None:
    port = _closed_port()

    async def body(server: Server, session: Session, transport: FakeTransport,
                   records: Records) -> None:
        feed(session, greeting(0) + request(1, "127.0.0.1", port), by_byte)
        await until(lambda: session.closed)
        assert reply_code(bytes(transport.written), 2) == 5
        assert transport.closing
        (record,) = records.records
        assert (record.reason, record.reply) == (CloseReason.REFUSED, 5)

    run(impl, monkeypatch, body)


# -- negotiation failures ---------------------------------------------------------------


def test_no_acceptable_method(impl: ModuleType, monkeypatch: pytest.MonkeyPatch,
                              by_byte: bool) -> None:
    async def body(server: Server, session: Session, transport: FakeTransport,
                   records: Records) -> None:
        feed(session, greeting(2), by_byte)  # username/password only; none configured
        await until(lambda: bool(records.records))
        assert bytes(transport.written) == b"\x05\xff"
        (record,) = records.records
        assert (record.reason, record.reply, record.command) == (
            CloseReason.NO_ACCEPTABLE_METHOD, None, None)

    run(impl, monkeypatch, body)


def test_bad_address_type_gets_reply_8(impl: ModuleType, monkeypatch: pytest.MonkeyPatch,
                                       by_byte: bool) -> None:
    async def body(server: Server, session: Session, transport: FakeTransport,
                   records: Records) -> None:
        feed(session, greeting(0) + b"\x05\x01\x00\x09" + b"\x00" * 6, by_byte)
        await until(lambda: bool(records.records))
        assert reply_code(bytes(transport.written), 2) == 8
        (record,) = records.records
        assert (record.reason, record.reply) == (CloseReason.PROTOCOL_ERROR, 8)

    run(impl, monkeypatch, body)


def test_handshake_timeout(impl: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(server: Server, session: Session, transport: FakeTransport,
                   records: Records) -> None:
        session.data_received(greeting(0))
        await until(lambda: session.closed)
        (record,) = records.records
        assert record.reason is CloseReason.HANDSHAKE_TIMEOUT

    run(impl, monkeypatch, body, handshake_timeout=0.05)


def test_client_closes_before_request(impl: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(server: Server, session: Session, transport: FakeTransport,
                   records: Records) -> None:
        session.data_received(greeting(0) + b"\x05\x01")
        assert session.eof_received() is False
        await until(lambda: bool(records.records))
        assert records.records[0].reason is CloseReason.CLIENT_CLOSED

    run(impl, monkeypatch, body)


# -- RFC 1929 through the authenticate hook, the authorize hook --------------------------


def test_authentication_states(impl: ModuleType, monkeypatch: pytest.MonkeyPatch,
                               by_byte: bool) -> None:
    release = asyncio.Event()
    seen: list[tuple[str, str]] = []

    async def authenticate(user: str, password: str, client: tuple[str, int]) -> bool:
        seen.append((user, password))
        await release.wait()
        return password == "right"

    async def body(server: Server, session: Session, transport: FakeTransport,
                   records: Records) -> None:
        feed(session, greeting(0, 2), by_byte)
        assert bytes(transport.written) == b"\x05\x02"
        feed(session, b"\x01\x05alice\x05wrong", by_byte)
        assert session.state is State.AUTHENTICATING and transport.paused
        await until(lambda: bool(seen))
        release.set()
        await until(lambda: session.closed)
        assert bytes(transport.written) == b"\x05\x02\x01\x01"
        (record,) = records.records
        assert (record.reason, record.user, record.reply) == (
            CloseReason.AUTH_FAILED, "alice", None)
        assert seen == [("alice", "wrong")]

    run(impl, monkeypatch, body, authenticate=authenticate)


def test_authorize_hook_denies(impl: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[Any] = []

    async def authorize(info: Any) -> bool:
        asked.append(info)
        return False

    async def body(server: Server, session: Session, transport: FakeTransport,
                   records: Records) -> None:
        session.data_received(greeting(0) + request(1, "127.0.0.2", 9))
        assert session.state is State.DECIDING
        await until(lambda: session.closed)
        assert reply_code(bytes(transport.written), 2) == 2
        (record,) = records.records
        assert (record.reason, record.reply) == (CloseReason.RULE_DENIED, 2)
        assert (asked[0].command, asked[0].host, asked[0].port) == ("connect", "127.0.0.2", 9)

    run(impl, monkeypatch, body, authorize=authorize)


# -- UDP ASSOCIATE ------------------------------------------------------------------------


def test_udp_association_ends_with_its_connection(impl: ModuleType,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(server: Server, session: Session, transport: FakeTransport,
                   records: Records) -> None:
        session.data_received(greeting(0) + request(3, "0.0.0.0", 0))
        await until(lambda: session.state is State.ASSOCIATED)
        data = bytes(transport.written)
        assert reply_code(data, 2) == 0
        udp_port = struct.unpack("!H", data[-2:])[0]
        assert udp_port > 0 and not transport.paused
        session.data_received(b"ignored")  # the TCP connection carries nothing more
        session.eof_received()
        await until(lambda: bool(records.records))
        record = records.records[0]
        assert (record.reason, record.command, record.datagrams_up) == (CloseReason.EOF, 3, 0)

    run(impl, monkeypatch, body)


def test_every_failure_reply_has_a_reason() -> None:
    names = {reason_for_reply(code).value for code in range(1, 9)}
    assert names == {"general_failure", "rule_denied", "network_unreachable",
                     "host_unreachable", "refused", "bind_timeout", "command_not_supported",
                     "address_type_not_supported"}
    assert reason_for_reply(0x42) is CloseReason.ERROR


# -- RFC 1961: a reply that cannot be wrapped ---------------------------------------------


class _UnwrappableGss:
    """A GSSAPI conversation at integrity level whose wrap fails (a broken context)."""

    wraps = True
    clear = False

    def wrap(self, data: bytes) -> bytes:
        from fastsocks.control.gssapi import GssFailure

        raise GssFailure("cannot wrap data: the context expired")


def test_unwrappable_reply_closes_without_relaying(impl: ModuleType,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(server: Server, session: Session, transport: FakeTransport,
                   records: Records) -> None:
        echo, port = await _echo_server()
        session.data_received(greeting(0))
        session.data_received(request(1, "127.0.0.1", port))
        # The conversation breaks while the target is dialled: the success reply
        # cannot reach the client readable, so nothing may be relayed either.
        session.gss = _UnwrappableGss()
        await until(lambda: bool(records.records))
        assert bytes(transport.written) == b"\x05\x00"  # the method choice, no reply
        assert session.closed and session.state is not State.RELAYING
        (record,) = records.records
        assert (record.reason, record.reply) == (CloseReason.ERROR, None)
        echo.close()

    run(impl, monkeypatch, body)


# -- handshake slots (control/handshakes.py) ----------------------------------------------


def _another(server: Server) -> tuple[Session, FakeTransport]:
    session = Session(server, LISTENER)
    transport = FakeTransport(asyncio.get_running_loop())
    transport.set_protocol(session)
    session.connection_made(transport)
    return session, transport


def test_handshake_quota_and_pressure(impl: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastsocks.control.limits import LimitSettings

    async def body(server: Server, session: Session, transport: FakeTransport,
                   records: Records) -> None:
        slots = server.limits.handshakes  # type: ignore[union-attr]
        assert list(slots.open) == [session] and session.timer is not None
        # The second makes more than half the quota unfinished: the short timeout.
        second, _ = _another(server)
        assert list(slots.open) == [session, second]
        assert second.timer is not None and second.timer.when() - server.loop.time() <= 0.3
        # At the quota, closed at once: no byte written, reason limit_reached.
        third, third_transport = _another(server)
        assert third.closed and bytes(third_transport.written) == b""
        await until(lambda: len(records.records) == 1)
        assert records.records[0].reason is CloseReason.LIMIT_REACHED
        # Under pressure, the first (10 s timeout) is cut once past the short one.
        await until(lambda: session.closed and second.closed)
        assert not slots.open and session.shaking is None
        await until(lambda: len(records.records) == 3)
        assert [r.reason for r in records.records[1:]] == [CloseReason.HANDSHAKE_TIMEOUT] * 2
        assert server.limits.rejected["handshakes"] == 1  # type: ignore[union-attr]

    run(impl, monkeypatch, body,
        limits=LimitSettings(handshakes=2, handshake_pressure_timeout=0.2))


def test_request_in_frees_the_handshake_slot(impl: ModuleType,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from fastsocks.control.limits import LimitSettings

    async def body(server: Server, session: Session, transport: FakeTransport,
                   records: Records) -> None:
        slots = server.limits.handshakes  # type: ignore[union-attr]
        session.data_received(greeting(0) + request(3, "0.0.0.0", 0))
        await until(lambda: session.state is State.ASSOCIATED)
        assert not slots.open and session.shaking is None and session.timer is None
        other, _ = _another(server)  # the one slot is free again
        assert not other.closed and list(slots.open) == [other]
        other.abort("shutdown")
        assert not slots.open

    run(impl, monkeypatch, body, limits=LimitSettings(handshakes=1))
