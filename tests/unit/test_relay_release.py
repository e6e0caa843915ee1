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
``Inbound``'s bound methods), which the hand-off now releases.
"""

from __future__ import annotations

import asyncio
import gc
import socket
from typing import Any, Iterator

import pytest

from fastsocks import _relay_py
from fastsocks.control.httpparse import Inbound

from builds import HAVE_EXTENSION

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
