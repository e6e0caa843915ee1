"""The generator's side of a connection: straight to the target, or through the proxy.

Through a proxy, the SOCKS5 conversation is the client role of
``fastsocks.net.client`` (the one upstream chaining uses), driven here on
blocking sockets, on an event loop, or by the handshake mode's epoll engine.
UDP goes through an association (RFC 1928 §7): ``UdpPath``.
"""

from __future__ import annotations

import asyncio
import socket

from ..codec import ProtocolError, build_udp_header, parse_udp_header
from ..constants import Command
from ..net.client import Negotiation, SocksError, negotiate, negotiate_async
from .common import IO_TIMEOUT, UDP_SOCKET_BUFFER, family

__all__ = [
    "SocksError",
    "BenchNegotiation",
    "open_connection",
    "connect_async",
    "recv_exact",
    "recv_exact_async",
    "UdpPath",
    "udp_header",
    "parse_udp_reply",
]


class BenchNegotiation(Negotiation):
    """The client role, with the hint worded for this command line."""

    NO_METHOD_HINT = "; the server may need --user/--password"
    __slots__ = ()


def recv_exact(sock: socket.socket, n: int, step: str) -> bytes:
    """``n`` bytes from a blocking socket; SocksError naming ``step`` if they do not come."""
    data = b""
    while len(data) < n:
        try:
            chunk = sock.recv(n - len(data))
        except socket.timeout:
            raise SocksError(step, f"no answer within {sock.gettimeout()} s") from None
        if not chunk:
            raise SocksError(step, f"server closed the connection (after {data!r})")
        data += chunk
    return data


async def recv_exact_async(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int,
                           step: str) -> bytes:
    """The same on a non-blocking socket with the loop's ``sock_recv``."""
    data = b""
    while len(data) < n:
        chunk = await loop.sock_recv(sock, n - len(data))
        if not chunk:
            raise SocksError(step, f"server closed the connection (after {data!r})")
        data += chunk
    return data


def open_connection(proxy: tuple[str, int] | None, target: tuple[str, int],
                    auth: tuple[str, str] | None = None,
                    timeout: float = IO_TIMEOUT) -> socket.socket:
    """A blocking socket to ``target``, through the SOCKS5 ``proxy`` if given."""
    first = proxy or target
    sock = socket.socket(family(first[0]), socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.connect(first)
        if proxy is not None:
            negotiate(sock, BenchNegotiation(target[0], target[1], Command.CONNECT, auth))
    except BaseException:
        sock.close()
        raise
    return sock


async def connect_async(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                        proxy: tuple[str, int] | None, target: tuple[str, int],
                        negotiation: Negotiation | None) -> None:
    """Connect a non-blocking socket to ``target``, through ``proxy`` with ``negotiation``."""
    await loop.sock_connect(sock, proxy or target)
    if proxy is not None and negotiation is not None:
        await negotiate_async(loop, sock, negotiation.fresh())


# -- UDP through an association (RFC 1928 §7) -----------------------------------------


def udp_header(host: str, port: int) -> bytes:
    """RSV FRAG=0 ATYP DST.ADDR DST.PORT, the header of every datagram (RFC 1928 §7)."""
    return build_udp_header(host, port)


def parse_udp_reply(data: bytes) -> tuple[str, int, bytes]:
    """(source host, port, payload) of a datagram from the relay; SocksError if malformed."""
    try:
        header = parse_udp_header(data)
    except ProtocolError as exc:
        raise SocksError("udp", str(exc)) from None
    if header.frag:
        raise SocksError("udp", f"fragmented reply (FRAG {header.frag}) not expected here")
    return header.host, header.port, data[header.length:]


class UdpPath:
    """A UDP socket that reaches ``target`` directly or through a SOCKS5 association.

    ``sock`` is connected to the target (direct) or to the relay address of
    the association (BND.ADDR/BND.PORT, with an unspecified BND.ADDR replaced
    by the proxy's address, as clients do); ``header`` is what every datagram
    must start with (empty when direct); ``control`` is the association's TCP
    connection, which keeps it alive; ``relay`` is the relay address.
    """

    def __init__(self, proxy: tuple[str, int] | None, target: tuple[str, int],
                 auth: tuple[str, str] | None = None, timeout: float = IO_TIMEOUT) -> None:
        self.control: socket.socket | None = None
        self.header = b""
        self.reply_header = b""
        self.relay: tuple[str, int] | None = None
        first = proxy or target
        self.sock = socket.socket(family(first[0]), socket.SOCK_DGRAM)
        try:
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                try:
                    self.sock.setsockopt(socket.SOL_SOCKET, option, UDP_SOCKET_BUFFER)
                except OSError:
                    pass
            self.sock.bind((first[0], 0))
            if proxy is None:
                self.sock.connect(target)
                return
            self.control = socket.socket(family(proxy[0]), socket.SOCK_STREAM)
            self.control.settimeout(timeout)
            self.control.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.control.connect(proxy)
            # §4: DST.ADDR/DST.PORT of a UDP ASSOCIATE are where datagrams come from;
            # the association lives as long as the control connection.
            here = self.sock.getsockname()
            host, port = negotiate(self.control, BenchNegotiation(
                here[0], here[1], Command.UDP_ASSOCIATE, auth))
            if host in ("0.0.0.0", "::"):
                host = proxy[0]
            self.relay = (host, port)
            self.sock.connect(self.relay)
            # RFC 1928 §7: replies carry the target's address in the same form.
            self.header = self.reply_header = udp_header(target[0], target[1])
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.sock.close()
        if self.control is not None:
            self.control.close()

    def __enter__(self) -> UdpPath:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
