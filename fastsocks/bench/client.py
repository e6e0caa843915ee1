"""The generator's side of a connection: straight to the target, or through the proxy.

Through a proxy, the SOCKS5 conversation is the client role of
``fastsocks.net.client`` (the one upstream chaining uses), driven here on
blocking sockets, on an event loop, or by the handshake mode's epoll engine.
``--protocol socks4`` and ``http`` put the same sans-I/O shape around a
SOCKS4 request (4a for a name) and an HTTP ``CONNECT`` (``make_negotiation``),
so every TCP mode measures each protocol the same way.  UDP goes through an
association (RFC 1928 §7): ``UdpPath``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from typing import Any

from ..codec import ProtocolError, build_udp_header, parse_udp_header
from ..constants import Command
from ..net.client import Negotiation, SocksError, negotiate, negotiate_async
from ..net.upstream import MAX_HEAD, connect_request, connect_status
from .common import IO_TIMEOUT, UDP_SOCKET_BUFFER, family

__all__ = [
    "SocksError",
    "BenchNegotiation",
    "Socks4Negotiation",
    "HttpConnectNegotiation",
    "make_negotiation",
    "PROTOCOLS",
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


PROTOCOLS = ("socks5", "socks4", "http")


class Socks4Negotiation:
    """A SOCKS4 CONNECT (SOCKS4a for a name), in ``Negotiation``'s sans-I/O shape.

    VN=4 CD=1 DSTPORT DSTIP USERID NUL, and for 4a DSTIP 0.0.0.1 then the name
    and NUL; the answer is 8 octets, CD 90 granted.  ``auth``'s user goes in
    USERID (SOCKS4 has no password).
    """

    __slots__ = ("_request", "_buf", "bound")

    def __init__(self, host: str, port: int, command: int = Command.CONNECT,
                 auth: tuple[str, str] | None = None) -> None:
        userid = (auth[0] if auth else "").encode("utf-8") + b"\x00"
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        if address is not None and address.version == 6:
            raise ValueError("SOCKS4 has no IPv6: use a name (4a) or IPv4")
        head = struct.pack("!BBH", 4, command, port)
        if address is not None:
            self._request = head + address.packed + userid
        else:
            self._request = head + b"\x00\x00\x00\x01" + userid + host.encode("idna") + b"\x00"
        self._buf = b""
        self.bound: tuple[str, int] = ("", 0)

    def fresh(self) -> Socks4Negotiation:
        other = type(self).__new__(type(self))
        other._request, other._buf, other.bound = self._request, b"", ("", 0)
        return other

    def start(self) -> bytes:
        return self._request

    @property
    def done(self) -> bool:
        return len(self._buf) == 8

    step = "request"

    @property
    def want(self) -> int:
        return 8 - len(self._buf)

    def closed(self) -> SocksError:
        return SocksError("request", f"server closed the connection (after {self._buf!r})")

    def receive(self, data: bytes) -> bytes:
        buf = self._buf = self._buf + data
        if len(buf) < 8:
            return b""
        if buf[0] != 0 or buf[1] != 90:
            raise SocksError("request", f"SOCKS4 reply {buf[1]} (90 is granted)", buf[1])
        self.bound = (socket.inet_ntoa(buf[4:8]), struct.unpack("!H", buf[2:4])[0])
        return b""


class HttpConnectNegotiation:
    """An HTTP ``CONNECT host:port`` (RFC 9110 §9.3.6), in ``Negotiation``'s shape.

    The answer's head is read up to its blank line; the bench's targets
    never speak first, so nothing after it can arrive before the payload.
    """

    __slots__ = ("_request", "_buf", "bound")

    def __init__(self, host: str, port: int, command: int = Command.CONNECT,
                 auth: tuple[str, str] | None = None) -> None:
        if command != Command.CONNECT:
            raise ValueError("HTTP proxies tunnel CONNECT only")
        self._request = connect_request(host, port, auth)
        self._buf = b""
        self.bound: tuple[str, int] = ("", 0)

    def fresh(self) -> HttpConnectNegotiation:
        other = type(self).__new__(type(self))
        other._request, other._buf, other.bound = self._request, b"", ("", 0)
        return other

    def start(self) -> bytes:
        return self._request

    @property
    def done(self) -> bool:
        return self._buf.endswith(b"\r\n\r\n")

    step = "request"

    @property
    def want(self) -> int:
        return 4096

    def closed(self) -> SocksError:
        return SocksError("request", f"server closed the connection (after {self._buf!r})")

    def receive(self, data: bytes) -> bytes:
        buf = self._buf = self._buf + data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD:
                raise SocksError("request", "an answer head over 32 KiB")
            return b""
        if end + 4 != len(buf):
            raise SocksError("request", "bytes after the CONNECT answer before any were sent")
        try:
            status = connect_status(buf)
        except ValueError as exc:
            raise SocksError("request", f"a bad answer: {exc}") from None
        if status != 200:
            raise SocksError("request", f"CONNECT answered {status}"
                             + ("; the server may need --user/--password" if status == 407
                                else ""), status)
        return b""


def make_negotiation(protocol: str, host: str, port: int,
                     auth: tuple[str, str] | None = None) -> Any:
    """The CONNECT conversation of ``protocol`` (socks5, socks4 or http) to host:port."""
    if protocol == "socks4":
        return Socks4Negotiation(host, port, Command.CONNECT, auth)
    if protocol == "http":
        return HttpConnectNegotiation(host, port, Command.CONNECT, auth)
    return BenchNegotiation(host, port, Command.CONNECT, auth)


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
                    timeout: float = IO_TIMEOUT, protocol: str = "socks5") -> socket.socket:
    """A blocking socket to ``target``, through ``proxy`` (speaking ``protocol``) if given."""
    first = proxy or target
    sock = socket.socket(family(first[0]), socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.connect(first)
        if proxy is not None:
            negotiate(sock, make_negotiation(protocol, target[0], target[1], auth))
    except BaseException:
        sock.close()
        raise
    return sock


async def connect_async(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                        proxy: tuple[str, int] | None, target: tuple[str, int],
                        negotiation: Any) -> None:
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
