"""Upstream chaining: a CONNECT (or a UDP association) through another SOCKS5 proxy.

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
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass
from typing import Any, Sequence

from ..constants import Command, Reply
from .client import Negotiation, SocksError, negotiate_async
from .resolver import Connector, ConnectError, resolve
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

    def __repr__(self) -> str:  # never show a password
        return (f"Upstream({self.name!r}, {self.host!r}, {self.port}, user={self.user!r}, "
                f"password={'<set>' if self.password is not None else None})")

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
