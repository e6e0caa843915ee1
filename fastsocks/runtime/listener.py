"""Listeners whose connections the relay engine negotiates (no transport per connection).

Where the splice engine runs and a listener's SOCKS5 handshake needs
nothing but the engine can do (no authentication to choose, no PROXY
protocol header to read), the event loop does not build a transport for
each accepted connection.  ``EngineListener`` gives the engine a duplicate
of each listening socket: the engine thread accepts (accept4, non-blocking),
reads the greeting, answers X'05 00', reads the request and, where the
server's plan allows (``Server.engine_dials``), dials an IP literal itself.
The loop hears of a connection once, with its first report
(``Session.from_engine``): a CONNECT to decide, one being dialled, or one handed
back.  One the engine dials is quiet until the engine's next scan (within a
quarter second): if it ends before, its one report makes no session, only
the record of it (``report_quiet``: metrics, access log); else it is
introduced as "being dialled" then.  Everything the engine does not
finish (SOCKS4, HTTP, other methods and commands, a malformed message, a
handshake still unfinished after a quarter second) comes back with the
bytes read, and continues on an ordinary transport, under the handshake
limits and timeout.

Limits that admit or refuse a connection by its address before any byte
(``limits.connections``, ``connections_per_ip``, ``handshake_rate_per_ip``)
need the loop at accept: with any of them the loop accepts, as before, and
hands each descriptor to the engine to negotiate (``Session.accepted``; a
connection whose first byte is already in and is not 5 goes to a transport
at once).  A reload moves a listener between the two (``configure``).

The sockets are made as ``loop.create_server`` makes them (SO_REUSEADDR,
SO_REUSEPORT for workers, IPV6_V6ONLY), with TCP_NODELAY on the listening
socket, which accepted sockets inherit.  At the descriptor limit accepting
pauses for a moment (the server warns once per episode) instead of spinning
on a listener that stays readable.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import itertools
import logging
import os
import socket
from typing import TYPE_CHECKING, Any

from ..control.handoff import report_quiet
from ..control.session import Session
from ..relay import first_byte

if TYPE_CHECKING:
    from .server import Server

__all__ = ["EngineListener", "listening_sockets"]

log = logging.getLogger("fastsocks")

#: Connections taken per readiness callback: a burst is served in a few
#: callbacks, and other listeners and the engine's reports get their turn.
BATCH = 64
#: How long accepting pauses when no descriptor is left.
EXHAUSTED_PAUSE = 0.25
#: A handshake the engine has not finished after this long goes to the loop,
#: whose handshake limits and timeout then apply (the engine checks every 0.25 s).
SLOW_HANDSHAKE = 0.25

# The engine's names for the listening sockets it accepts on.
_KEYS = itertools.count(1)

_EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
# The connection went before it was accepted: on to the next one.
_GONE = (errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR)


async def listening_sockets(loop: Any, host: str, port: int, family: int, backlog: int,
                            reuse_port: bool) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for ``host``'s addresses, as create_server's."""
    infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for af, kind, proto, _, sockaddr in dict.fromkeys(infos):
            sock = socket.socket(af, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if af == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(sockaddr)
            except OSError as exc:
                raise OSError(exc.errno, f"error while attempting to bind on address "
                              f"{sockaddr!r}: {(exc.strerror or str(exc)).lower()}") from None
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            sock.listen(backlog)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class EngineListener:
    """One listen address's sockets, accepted raw; ``close``/``wait_closed``/``sockets``
    as an ``asyncio.Server``'s."""

    def __init__(self, server: Server, listener: tuple[str, int],
                 sockets: list[socket.socket]) -> None:
        self.server = server
        self.listener = listener
        self.sockets = sockets
        self.closed = False
        self.keys: list[int] = []  # the engine's, while it accepts; else the loop does
        self.engine = server.engine
        self.reading = False
        self.configure()

    def configure(self) -> None:
        """Who accepts, and what the engine may do (at start and after each reload)."""
        server, engine = self.server, self.server.engine
        if self.closed:
            return
        limits = server.limits
        at_accept = limits is not None and (limits.settings.connections
                                            or limits.settings.connections_per_ip
                                            or limits.settings.handshake_rate_per_ip)
        if engine is None or at_accept:
            if self.keys:
                for key in self.keys:
                    engine.unlisten(key)
                self.keys = []
            if not self.reading:
                self.reading = True
                for sock in self.sockets:
                    server.loop.add_reader(sock.fileno(), self._accept, sock)
            return
        if self.reading:
            self.reading = False
            for sock in self.sockets:
                server.loop.remove_reader(sock.fileno())
        plan = (server.engine_greets, server.engine_dials, server.settings.idle_timeout,
                min(SLOW_HANDSHAKE, server.settings.handshake_timeout),
                functools.partial(report_quiet, server))
        if self.keys:  # new settings for the same sockets
            for key in self.keys:
                engine.listen(-1, key, self._handed, *plan)
            return
        for sock in self.sockets:
            key = next(_KEYS)
            fd = os.dup(sock.fileno())
            try:
                engine.listen(fd, key, self._handed, *plan)
            except BaseException:
                os.close(fd)
                raise
            self.keys.append(key)

    def _handed(self, pair_id: int, fd: int, peer: Any, age: float, dialling: bool) -> Any:
        """The engine's first report of a connection it accepted: its session."""
        # The listener's engine: a stop introduces the pairs it ends (a connect
        # under way) after the server let go of it.
        return Session(self.server, self.listener).from_engine(
            self.engine, pair_id, fd, peer, age, dialling)

    def _accept(self, sock: socket.socket) -> None:
        server = self.server
        engine = server.engine
        peek = first_byte
        listener = self.listener
        accept = sock._accept  # type: ignore[attr-defined]  # (fd, address): no socket object
        for _ in range(BATCH):
            try:
                fd, peer = accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in _GONE:
                    continue
                if exc.errno in _EXHAUSTED:
                    server._descriptors_exhausted(exc)
                    self._pause(sock)
                    return
                log.warning("accept on %s failed: %s", sock.getsockname(), exc)
                self._pause(sock)
                return
            if engine is None or peek is None or self.closed:  # stopping: no engine
                socket.close(fd)
                continue
            # What the client sent already, if anything, says whether the
            # engine can help: SOCKS4 and HTTP go to a transport at once.
            first = peek(fd)
            Session(server, listener).accepted(fd, peer, engine, first == 5 or first < 0)

    def _pause(self, sock: socket.socket) -> None:
        loop = self.server.loop
        loop.remove_reader(sock.fileno())
        loop.call_later(EXHAUSTED_PAUSE, self._resume, sock)

    def _resume(self, sock: socket.socket) -> None:
        if not self.closed and self.reading:
            self.server.loop.add_reader(sock.fileno(), self._accept, sock)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        loop, engine = self.server.loop, self.server.engine
        if engine is not None:
            for key in self.keys:
                engine.unlisten(key)
        self.keys = []
        for sock in self.sockets:
            if self.reading:
                loop.remove_reader(sock.fileno())
            sock.close()
        self.reading = False

    async def wait_closed(self) -> None:
        await asyncio.sleep(0)
