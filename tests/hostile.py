"""Client-side helpers for the adversarial and load tests (tests/e2e/test_adversarial.py,
tests/load/): SOCKS5 over asyncio streams and blocking sockets, and the
descriptor baselines a leak check compares against.

Not a test module.  Figures are printed with the prefix ``adversarial:``
(``pytest -s`` shows them).
"""

from __future__ import annotations

import asyncio
import collections
import random
import socket
import struct

from launcher import FastsocksProcess

MiB = 1 << 20
HANDSHAKE_TIMEOUT = 2.0
# The splice engine pools up to 64 empty pipes (two fds each) for reuse; they
# are not per-connection state, so leak checks count sockets, and pipes only
# against this bound.
PIPE_POOL_FDS = 2 * 64


def say(text: str) -> None:
    print(f"adversarial: {text}", flush=True)


# -- SOCKS5 on the client side ---------------------------------------------------


def request(host: str, port: int, command: int = 1) -> bytes:
    """VER CMD RSV ATYP DST.ADDR DST.PORT for an IPv4 literal or a name."""
    try:
        addr = b"\x01" + socket.inet_aton(host)
        assert host.count(".") == 3
    except (OSError, AssertionError):
        name = host.encode()
        addr = b"\x03" + bytes((len(name),)) + name
    return b"\x05" + bytes((command,)) + b"\x00" + addr + struct.pack(">H", port)


GREETING = b"\x05\x01\x00"


async def read_reply(reader: asyncio.StreamReader) -> int:
    """The method selection and the CONNECT reply; returns REP."""
    method = await reader.readexactly(2)
    assert method == b"\x05\x00", method
    head = await reader.readexactly(4)
    assert head[0] == 5 and head[2] == 0, head
    atyp = head[3]
    size = {1: 4, 4: 16}.get(atyp)
    if size is None:
        assert atyp == 3, head
        size = (await reader.readexactly(1))[0]
    await reader.readexactly(size + 2)
    return head[1]


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 5)
    except (OSError, asyncio.TimeoutError):
        pass


async def socks_connect(proxy: tuple[str, int], target: tuple[str, int], *,
                        timeout: float = 10.0) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
    """Greeting and CONNECT in one packet; returns the streams and REP.
    The caller closes the writer (also after a failure reply)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(*proxy), timeout)
    try:
        writer.write(GREETING + request(*target))
        rep = await asyncio.wait_for(read_reply(reader), timeout)
    except BaseException:
        await close_writer(writer)
        raise
    return reader, writer, rep


def sync_connect(proxy: tuple[str, int], host: str, port: int, timeout: float = 10.0,
                 rcvbuf: int | None = None) -> tuple[socket.socket, int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if rcvbuf is not None:
            # Before connect: shrinking it later would not shrink the window
            # already offered, and the kernel would drop data (retransmit stalls).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        sock.connect(proxy)
        sock.sendall(GREETING + request(host, port))
        data = b""
        while len(data) < 12:  # 05 00 + IPv4 reply (fastsocks replies with IPv4 here)
            chunk = sock.recv(12 - len(data))
            if not chunk:
                raise AssertionError(f"closed after {data!r}")
            data += chunk
        assert data[:2] == b"\x05\x00" and data[2] == 5, data
        return sock, data[3]
    except BaseException:
        sock.close()
        raise


def pattern(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def recv_until_closed(sock: socket.socket, timeout: float) -> tuple[int, str]:
    """Read until EOF or reset: (bytes, how it ended); AssertionError on a hang."""
    sock.settimeout(timeout)
    total = 0
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except ConnectionResetError:
            return total, "reset"
        except socket.timeout:
            raise AssertionError(f"still open after {timeout} s ({total} bytes read)") from None
        if not chunk:
            return total, "eof"
        total += len(chunk)


# -- descriptors ------------------------------------------------------------------


def settle_sockets(proxy: FastsocksProcess, base: collections.Counter[str]) -> collections.Counter[str]:
    after = proxy.wait_sockets(base["socket"], timeout=10)
    assert after["socket"] <= base["socket"], (dict(base), dict(after))
    assert after["pipe"] <= base["pipe"] + PIPE_POOL_FDS, (dict(base), dict(after))
    return after


def baseline(proxy: FastsocksProcess, echo: tuple[str, int]) -> collections.Counter[str]:
    """Descriptors after one warm-up relay (lazily made state, such as pooled
    pipes, exists by then), once its sockets are gone again."""
    idle = proxy.fds()
    sock, rep = sync_connect(proxy.address, *echo)
    with sock:
        assert rep == 0
        sock.sendall(b"warm")
        assert sock.recv(4) == b"warm"
    base = proxy.wait_sockets(idle["socket"])
    assert base["socket"] == idle["socket"], (dict(idle), dict(base))
    return base
