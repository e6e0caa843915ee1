"""Upstream chaining: a CONNECT (or a UDP association) through another SOCKS5 or HTTP proxy.

An allow rule with ``upstream = "NAME"`` sends a CONNECT through the SOCKS5
proxy ``[upstreams.NAME]`` instead of dialling the target.  ``connect_via``
connects to the upstream (from the outbound address, like any other outgoing
connection) and runs the SOCKS5 client role of ``client.py`` on it (RFC 1928,
RFC 1929): it offers no authentication, or username/password too when the
upstream has a ``user``, sends CONNECT with the host as the client asked for
it (a name goes unresolved, so the upstream resolves it) and returns the
connected socket, which the session relays exactly as a direct connection.

What the client is told when chaining fails:

* the upstream answered the CONNECT with a failure: its reply code, passed
  through unchanged (X'05' refused, X'04' host unreachable, ...);
* the upstream itself could not be reached (refused, unreachable, timed out
  within the connect timeout), refused our authentication, or broke the
  protocol: X'01' general failure, since the target was never tried and any
  other code would say something false about it.  The log says which.

UDP ASSOCIATE is chained per datagram: the association sends a datagram
whose target an upstream rule allows to the upstream's own UDP ASSOCIATE
(``connect_via`` with ``Command.UDP_ASSOCIATE``, made when the first such
datagram comes; see udp.py), and the upstream's replies back to the client.
BIND is not chained: a BIND that an upstream rule allows is answered X'07'
(command not supported).

An upstream of ``type = "http"`` is an HTTP proxy: ``connect_via`` sends it
``CONNECT host:port HTTP/1.1`` (RFC 9110 §9.3.6; with ``Proxy-Authorization:
Basic`` when it has a ``user``, RFC 7617) and reads its answer's head, no
byte further (what the target sends first stays in the socket for the
relay).  A 2xx is success; 407 (our credentials refused) and anything
unparsable are X'01'; 403 is X'02'; 502 and 504 are X'04' host unreachable;
any other status X'01'.  It carries no UDP: a UDP association that a rule
sends to it fails like an unreachable upstream.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
from dataclasses import dataclass
from typing import Any, Sequence

from ..constants import Command, Reply
from .client import Negotiation, SocksError, negotiate_async
from .connector import Connector
from .resolver import ConnectError, resolve
from .address import format_address

__all__ = ["Upstream", "connect_via"]

log = logging.getLogger("fastsocks.upstream")

@dataclass(frozen=True)
class Upstream:
    """An upstream SOCKS5 proxy, ``[upstreams.NAME]`` in the config file."""

    name: str
    host: str
    port: int
    user: str | None = None
    password: str | None = None
    type: str = "socks5"  # or "http": an HTTP proxy that tunnels with CONNECT

    def __repr__(self) -> str:  # never show a password
        return (f"Upstream({self.name!r}, {self.host!r}, {self.port}, user={self.user!r}, "
                f"password={'<set>' if self.password is not None else None}, "
                f"type={self.type!r})")

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)


# -- through an upstream: a connection, then the SOCKS5 client role (client.py) -------


async def _connect_socket(loop: asyncio.AbstractEventLoop, addresses: list[Any], timeout: float,
                          sources: Sequence[Any], interface: str | None) -> socket.socket:
    done: asyncio.Future[Any] = loop.create_future()

    def on_done(sock: Any, error: ConnectError | None) -> None:
        if not done.done():
            done.set_result((sock, error))
        elif sock is not None:
            sock.close()

    connector = Connector(loop, addresses, timeout, on_done, sources, interface)
    connector.start()
    try:
        sock, error = await done
    except BaseException:
        connector.cancel()
        raise
    if error is not None:
        raise error
    if not isinstance(sock, socket.socket):  # the Connector's plain _socket.socket
        sock = socket.socket(sock.family, sock.type, fileno=sock.detach())
    sock.setblocking(False)  # the loop's sock_* calls need it (and the relay)
    return sock


async def connect_via(upstream: Upstream, host: str, port: int, timeout: float,
                      sources: Sequence[Any] = (), interface: str | None = None,
                      command: int = Command.CONNECT) -> tuple[socket.socket, str, int]:
    """CONNECT to ``host``:``port`` through ``upstream``, all within ``timeout`` seconds.

    Returns (socket, BND.ADDR, BND.PORT) as the upstream reported them, the
    socket connected and non-blocking, ready for the relay.  Raises
    ConnectError with the reply code for the client (see the module text).
    With ``command=Command.UDP_ASSOCIATE``, ``host``:``port`` is where our
    datagrams will come from, BND is the upstream's relay, and the socket is
    the association's control connection.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    where = f"upstream {upstream.name} ({upstream.address})"
    # RFC 1928 §3: username/password is offered only when we have credentials.
    auth = (upstream.user, upstream.password or "") if upstream.user is not None else None
    negotiation: Any
    if upstream.type == "http":
        if command != Command.CONNECT:
            raise ConnectError(Reply.GENERAL_FAILURE, f"{where} is an HTTP proxy: it carries "
                                                      "CONNECT only")
        negotiation = connect_request(host, port, auth)
    else:
        try:
            negotiation = Negotiation(host, port, command, auth)
        except ValueError as exc:  # nothing a SOCKS5 request can carry: do not even connect
            raise ConnectError(Reply.GENERAL_FAILURE, f"{where}: {exc}") from None
    try:
        addresses = await resolve(upstream.host, upstream.port)
    except ConnectError as exc:
        raise ConnectError(Reply.GENERAL_FAILURE, f"{where}: {exc.reason}") from None
    try:
        sock = await _connect_socket(loop, addresses, max(deadline - loop.time(), 0.001),
                                     sources, interface)
    except ConnectError as exc:
        raise ConnectError(Reply.GENERAL_FAILURE, f"{where}: {exc.reason}") from None
    try:
        if upstream.type == "http":
            bound = await asyncio.wait_for(_http_connect(loop, sock, negotiation, where),
                                           max(deadline - loop.time(), 0.001))
            return sock, bound[0], bound[1]
        bound = await asyncio.wait_for(negotiate_async(loop, sock, negotiation),
                                       max(deadline - loop.time(), 0.001))
    except asyncio.TimeoutError:
        sock.close()
        raise ConnectError(Reply.GENERAL_FAILURE, f"{where}: no answer within "
                                                  f"{timeout:g} s") from None
    except SocksError as exc:
        sock.close()
        if exc.reply is not None:
            # The upstream's own verdict on the target: passed through (codes
            # outside RFC 1928 §6 become X'01', which is all they can mean here).
            code = exc.reply if Reply.GENERAL_FAILURE <= exc.reply <= Reply.ATYP_NOT_SUPPORTED \
                else Reply.GENERAL_FAILURE
            raise ConnectError(code, f"{where} replied {exc.reply:#04x}") from None
        # The target was never tried: X'01' (see the module text).
        raise ConnectError(Reply.GENERAL_FAILURE, f"{where}: {exc}") from None
    except OSError as exc:
        sock.close()
        raise ConnectError(Reply.GENERAL_FAILURE, f"{where}: {exc.strerror or exc}") from None
    except BaseException:
        sock.close()
        raise
    return sock, bound[0], bound[1]


# -- an HTTP proxy upstream: CONNECT (RFC 9110 §9.3.6) ---------------------------------

MAX_HEAD = 32 * 1024  # octets of the upstream's answer head


def connect_request(host: str, port: int, auth: tuple[str, str] | None = None) -> bytes:
    """``CONNECT host:port HTTP/1.1`` with Host, and Basic credentials (RFC 7617) if any."""
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if any(ord(c) < 0x21 or ord(c) > 0x7E for c in authority):
        raise ConnectError(Reply.GENERAL_FAILURE, f"{host!r} cannot go in an HTTP request line")
    lines = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode("ascii")
        lines += f"Proxy-Authorization: Basic {token}\r\n"
    return (lines + "\r\n").encode("ascii")


def connect_status(head: bytes) -> int:
    """The status of an HTTP proxy's answer head to CONNECT (llhttp parses it)."""
    import httptools  # only where an HTTP upstream is used

    parser = httptools.HttpResponseParser(None)
    try:
        parser.feed_data(head)
    except httptools.HttpParserError as exc:
        raise ValueError(str(exc)) from None
    return int(parser.get_status_code())


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


async def read_head(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    """The answer's head, up to its blank line and not one byte further.

    MSG_PEEK shows what has come; only the head is taken off the socket, so
    what the target says first (a server that speaks first) stays there.
    """
    head = b""
    while True:
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(sock.fileno(), _wake, ready)
        try:
            await ready
        finally:
            loop.remove_reader(sock.fileno())
        peeked = sock.recv(65536, socket.MSG_PEEK)
        if not peeked:
            raise OSError("closed before its answer")
        seen = head + peeked
        end = seen.find(b"\r\n\r\n", max(0, len(head) - 3))
        take = len(peeked) if end < 0 else end + 4 - len(head)
        head += sock.recv(take)
        if end >= 0:
            return head
        if len(head) > MAX_HEAD:
            raise OSError(f"an answer head over {MAX_HEAD} octets")


_HTTP_REPLY = {403: Reply.NOT_ALLOWED, 502: Reply.HOST_UNREACHABLE, 504: Reply.HOST_UNREACHABLE}


async def _http_connect(loop: asyncio.AbstractEventLoop, sock: socket.socket, request: bytes,
                        where: str) -> tuple[str, int]:
    await loop.sock_sendall(sock, request)
    head = await read_head(loop, sock)
    try:
        status = connect_status(head)
    except ValueError as exc:
        raise ConnectError(Reply.GENERAL_FAILURE, f"{where}: a bad answer: {exc}") from None
    if 200 <= status < 300:
        return "0.0.0.0", 0  # an HTTP proxy does not say where it connected from
    if status == 407:
        raise ConnectError(Reply.GENERAL_FAILURE, f"{where} refused our credentials (407)")
    raise ConnectError(_HTTP_REPLY.get(status, Reply.GENERAL_FAILURE),
                       f"{where} answered {status}")
