"""A protocol relay lets go of itself when it ends: no cycle for the collector.

The relay, its two halves and their transports referred to each other (and
to the session, through its callbacks), so every relayed connection that
ended stayed in memory until the collector's next full pass: under a steady
churn of connections RSS stepped up by megabytes between two passes
(tests/load's 10 000 idle connections over two processes saw +7 MiB from one
round to the next).  Once both transports are lost the relay drops those
references (``Relay._release_all``), so reference counting frees a closed
connection at once.  Checked here on each implementation this build has,
with the collector off: after the relay's end nothing of it is left alive.
The same for an HTTP tunnel's parser (llhttp's callbacks are the
``Inbound``'s bound methods), which the hand-off now releases, and for a
plain HTTP request forwarded to its origin: the session and its forwarder
let go of each other, and both parsers (the client's, the origin's) are
released when their connections end.
"""

from __future__ import annotations

import asyncio
import gc
import socket
from typing import Any, Iterator

import pytest

import fastsocks
from fastsocks import _accel, _relay_py
from fastsocks.control.httpforward import Forwarder
from fastsocks.control.httporigin import Origin
from fastsocks.control.httpparse import Inbound
from fastsocks.control.session import Session

from builds import HAVE_EXTENSION, RELAYS

IMPLEMENTATIONS = [_relay_py]
if HAVE_EXTENSION:
    from fastsocks import _relay

    IMPLEMENTATIONS.insert(0, _relay)


@pytest.fixture
def no_collector() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _alive(module: Any) -> list[Any]:
    return [o for o in gc.get_objects() if isinstance(o, (module.Relay, module.Half))]


async def _relay_once(module: Any, how: str) -> tuple[str, int, int]:
    """One relayed connection to a target that echoes, ended as ``how`` says."""
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[tuple[str, int, int]] = loop.create_future()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
        writer.close()

    def on_close(relay: Any) -> None:
        ended.set_result((relay.reason, relay.bytes_up, relay.bytes_down))

    def on_connected(relay: Any) -> None:
        ours, theirs[0] = socket.socketpair()
        loop.create_task(_start(relay, ours))

    async def _start(relay: Any, ours: socket.socket) -> None:
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
        transport.pause_reading()
        relay.start(transport, b"early")
        started.set()

    theirs: list[Any] = [None]
    started = asyncio.Event()
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    relay = module.Relay(loop, on_connected, on_close, 0.0)
    await loop.create_connection(lambda: relay.upstream, "127.0.0.1", port)
    await started.wait()
    client = theirs[0]
    client.setblocking(False)
    assert await loop.sock_recv(client, 5) == b"early"
    await loop.sock_sendall(client, b"ping")
    assert await loop.sock_recv(client, 4) == b"ping"
    if how == "eof":
        client.shutdown(socket.SHUT_WR)
        assert await loop.sock_recv(client, 1) == b""
    elif how == "close":
        relay.close("shutdown")
    client.close()
    del relay
    result = await asyncio.wait_for(ended, 5)
    server.close()
    await server.wait_closed()
    for _ in range(5):  # the transports' last callbacks
        await asyncio.sleep(0)
    return result


@pytest.mark.parametrize("module", IMPLEMENTATIONS, ids=lambda m: m.__name__.rpartition(".")[2])
@pytest.mark.parametrize("how", ["eof", "close"])
def test_an_ended_relay_is_freed_without_the_collector(module: Any, how: str,
                                                      no_collector: None) -> None:
    before = len(_alive(module))
    reason, up, down = asyncio.run(_relay_once(module, how))
    assert (reason, up, down) == ({"eof": "eof", "close": "shutdown"}[how], 9, 9)
    assert len(_alive(module)) == before, _alive(module)


def _inbounds() -> int:
    return sum(isinstance(o, Inbound) for o in gc.get_objects())


def test_an_http_tunnels_parser_is_freed_without_the_collector(no_collector: None) -> None:
    head = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\nearly"
    before = _inbounds()
    kept = Inbound()  # the control: without release() the cycle keeps it
    kept.feed(head)
    del kept
    assert _inbounds() == before + 1
    gc.collect()
    inbound = Inbound()
    inbound.feed(head)
    assert inbound.tunnel and inbound.events[0].early == b"early"
    inbound.release()
    inbound.feed(b"more")  # nothing is parsed after it
    del inbound
    assert _inbounds() == before


def _http_objects() -> dict[str, int]:
    kinds = (Session, Forwarder, Origin, Inbound)
    alive = {kind.__name__: 0 for kind in kinds}
    for o in gc.get_objects():
        for kind in kinds:
            if isinstance(o, kind):
                alive[kind.__name__] += 1
    return alive


def _ask_through(proxy: tuple[str, int], origin: tuple[str, int], closed_port: int,
                 count: int) -> None:
    """``count`` times each: a request forwarded (200), one refused before any
    origin (a relative URL: 400), one to an origin that refuses (502)."""
    asks = [(b"GET http://%s:%d/ HTTP/1.1" % (origin[0].encode(), origin[1]), b"200"),
            (b"GET /relative HTTP/1.1", b"400"),
            (b"GET http://127.0.0.1:%d/ HTTP/1.1" % closed_port, b"502")]
    for _ in range(count):
        for line, status in asks:
            with socket.create_connection(proxy, timeout=5) as s:
                s.sendall(line + b"\r\nHost: x\r\nConnection: close\r\n\r\n")
                response = b""
                while chunk := s.recv(65536):
                    response += chunk
                assert response.startswith(b"HTTP/1.1 " + status), response[:60]


async def _forwarded(relay: str, closed_port: int, count: int
                     ) -> tuple[dict[str, int], dict[str, int]]:
    """Plain HTTP requests through an in-process server, one connection each:
    the session objects alive before and after they ended."""
    loop = asyncio.get_running_loop()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
        await writer.drain()
        writer.close()

    async def ended(server: Any) -> None:
        for _ in range(200):
            if not server.sessions:
                break
            await asyncio.sleep(0.01)
        for _ in range(5):  # the transports' last callbacks
            await asyncio.sleep(0)

    origin = await asyncio.start_server(answer, "127.0.0.1", 0)
    where = origin.sockets[0].getsockname()
    settings = fastsocks.Settings(listen=[("127.0.0.1", 0)], relay=relay)
    async with fastsocks.Server(settings, None) as server:
        proxy = ("127.0.0.1", int(server.addresses[0].rsplit(":", 1)[1]))
        # The first round warms up what stays (caches, pools, the engine's buffers).
        await loop.run_in_executor(None, _ask_through, proxy, where, closed_port, 1)
        await ended(server)
        before = _http_objects()
        await loop.run_in_executor(None, _ask_through, proxy, where, closed_port, count)
        await ended(server)
        after = _http_objects()
    origin.close()
    await origin.wait_closed()
    return before, after


def _run(coro: Any) -> Any:
    loop = _accel.new_event_loop("uvloop" if _accel.have_uvloop() else "asyncio")
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


@pytest.mark.parametrize("relay", RELAYS)
def test_plain_http_sessions_are_freed_without_the_collector(
        relay: str, closed_port: int, no_collector: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """On uvloop where installed, whose transports keep their protocol's
    ``data_received``; through the engine's accept (``splice``), whose HTTP
    connections come back to the loop over an adopted transport."""
    before, after = _run(_forwarded(relay, closed_port, 5))
    assert after == before
    # The control: while the client's parser is kept, its cycle keeps the
    # Inbound of each of the fifteen connections alive.
    monkeypatch.setattr(Inbound, "release", lambda self: None)
    before, after = _run(_forwarded(relay, closed_port, 5))
    assert after["Inbound"] == before["Inbound"] + 15
