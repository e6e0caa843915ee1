"""Embedding: ``fastsocks.Server`` in the test's own event loop, with the
authentication and access hooks an application plugs its backends into.

Clients are python-socks (asyncio) and raw sockets; targets are loopback
echo servers in the same loop.  Runs on the stdlib loop and on uvloop.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import runpy
from pathlib import Path
from typing import Any

import pytest
from python_socks import ProxyError
from python_socks.async_.asyncio import Proxy

import fastsocks

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "embed.py"
LOOPS = ["asyncio"] + (["uvloop"] if importlib.util.find_spec("uvloop") else [])


def _run(loop_name: str, coro: Any) -> Any:
    if loop_name == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


async def _echo_server() -> tuple[asyncio.AbstractServer, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _settings(**extra: Any) -> fastsocks.Settings:
    return fastsocks.Settings(listen=[("127.0.0.1", 0)], **extra)


def _port(server: Any) -> int:
    return int(server.addresses[0].rsplit(":", 1)[1])


async def _through(port: int, target_port: int, user: str | None = None,
                   password: str | None = None, host: str = "127.0.0.1") -> bytes:
    proxy = Proxy.from_url(f"socks5://{user}:{password}@127.0.0.1:{port}" if user
                           else f"socks5://127.0.0.1:{port}")
    sock = await proxy.connect(host, target_port, timeout=10)
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(b"ping")
    data = await reader.readexactly(4)
    writer.close()
    return data


@pytest.mark.parametrize("loop_name", LOOPS)
def test_hooks_decide_who_and_what(loop_name: str) -> None:
    seen: list[Any] = []

    async def authenticate(username: str, password: str, client: tuple[str, int]) -> bool | str:
        await asyncio.sleep(0.01)  # a backend round trip
        seen.append(("auth", username, client[0]))
        if username == "alice" and password == "right":
            return "alice@corp"  # mapped name
        return username == "bob" and password == "builder"

    async def authorize(request: fastsocks.RequestInfo) -> bool:
        await asyncio.sleep(0.01)
        seen.append(("authorize", request.user, request.command, request.host, request.port))
        return request.user != "bob"

    async def main() -> None:
        target, target_port = await _echo_server()
        async with fastsocks.Server(_settings(), authenticate=authenticate,
                                    authorize=authorize) as server:
            port = _port(server)
            assert await _through(port, target_port, "alice", "right") == b"ping"
            with pytest.raises(ProxyError):  # wrong password: RFC 1929 failure
                await _through(port, target_port, "alice", "wrong")
            with pytest.raises(ProxyError) as denied:  # authenticated, refused by authorize
                await _through(port, target_port, "bob", "builder")
            assert "not allowed" in str(denied.value).lower()
            with pytest.raises(ProxyError):  # no credentials: no acceptable method
                await _through(port, target_port)
        target.close()
        assert ("authorize", "alice@corp", "connect", "127.0.0.1", target_port) in seen
        assert ("authorize", "bob", "connect", "127.0.0.1", target_port) in seen
        assert ("auth", "alice", "127.0.0.1") in seen

    _run(loop_name, main())


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_failing_or_silent_hook_refuses(loop_name: str, caplog: pytest.LogCaptureFixture) -> None:
    async def authorize(request: fastsocks.RequestInfo) -> bool:
        if request.port == 1:
            raise RuntimeError("policy service down")
        if request.port == 2:
            await asyncio.sleep(3600)
        return True

    async def request(port: int, target_port: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x05\x01\x00")
        assert await reader.readexactly(2) == b"\x05\x00"
        writer.write(b"\x05\x01\x00\x01\x7f\x00\x00\x01" + target_port.to_bytes(2, "big"))
        reply = await asyncio.wait_for(reader.readexactly(10), 10)
        assert await asyncio.wait_for(reader.read(1), 5) == b""  # closed after a failure
        writer.close()
        return reply

    async def main() -> None:
        async with fastsocks.Server(_settings(handshake_timeout=0.5),
                                    authorize=authorize) as server:
            port = _port(server)
            assert (await request(port, 1))[1] == 0x01  # general failure
            assert (await request(port, 2))[1] == 0x01

    with caplog.at_level(logging.ERROR, logger="fastsocks"):
        _run(loop_name, main())
    text = caplog.text
    assert "policy service down" in text
    assert "did not answer within 0.5 s" in text


def test_a_hook_returning_garbage_fails_authentication(caplog: pytest.LogCaptureFixture) -> None:
    async def authenticate(username: str, password: str, client: tuple[str, int]) -> Any:
        return 42

    async def main() -> None:
        target, target_port = await _echo_server()
        async with fastsocks.Server(_settings(), authenticate=authenticate) as server:
            with pytest.raises(ProxyError):
                await _through(_port(server), target_port, "alice", "x")
        target.close()

    with caplog.at_level(logging.ERROR, logger="fastsocks"):
        asyncio.run(main())
    assert "return True, False or a user name" in caplog.text


def test_embedded_server_stops_cleanly_with_relays_open() -> None:
    async def main() -> None:
        target, target_port = await _echo_server()
        server = fastsocks.Server(_settings())
        await server.start()
        proxy = Proxy.from_url(f"socks5://127.0.0.1:{_port(server)}")
        sock = await proxy.connect("127.0.0.1", target_port, timeout=10)
        server.stop()
        await asyncio.wait_for(server.wait_stopped(), 10)
        await server.close_observers()
        sock.setblocking(True)
        sock.settimeout(5)
        try:
            assert sock.recv(1) == b""  # the relay was closed with the server
        except ConnectionResetError:
            pass
        sock.close()
        target.close()

    asyncio.run(main())


def test_the_embedding_example_runs() -> None:
    namespace = runpy.run_path(str(EXAMPLE))  # defines, does not start (__name__ differs)

    async def main() -> None:
        target, target_port = await _echo_server()
        settings = _settings()
        async with fastsocks.Server(settings, authenticate=namespace["check_password"],
                                    authorize=namespace["may_connect"]) as server:
            port = _port(server)
            assert await _through(port, target_port, "alice", "wonderland") == b"ping"
            with pytest.raises(ProxyError) as denied:  # refused before dialling port 25
                await _through(port, 25, "alice", "wonderland")
            assert "not allowed" in str(denied.value).lower()
        target.close()

    asyncio.run(main())
