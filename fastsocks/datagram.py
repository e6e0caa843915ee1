"""UDP ASSOCIATE's data plane: the C datagram path when it is built, else the twin.

An association (``control.udp``) decides where each datagram goes; a *path*
moves them, behind one interface (``Path``):

* ``NativePath`` (Linux, ``_datagram`` built): plain non-blocking sockets
  whose readiness calls ``_datagram.Association``: recvmmsg/sendmmsg
  batches, the RFC 1928 §7 header parsed and built in C; only what needs a
  decision comes up (``slow``), and each decision is installed in the C table
  (``PEER``/``FAST``/``DENY``/``CHAIN``) so that the next datagram to that
  target stays in C.
* ``EndpointPath`` (``_datagram_py``): asyncio endpoints, every datagram
  comes up; the only path for protected (GSSAPI) datagrams.

Which one exists is ``_accel``'s decision (``FASTSOCKS_NO_EXTENSIONS=1``
forces the twin); which one an association takes is ``open_path``'s.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, Callable, Protocol

from . import _accel
from ._datagram_py import BUFFER_SIZE, MAX_PEERS, EndpointPath, tune_socket

__all__ = ["NATIVE", "BUFFER_SIZE", "MAX_PEERS", "Path", "Chain", "EndpointPath", "NativePath",
           "open_path", "tune_socket", "ip16"]

log = logging.getLogger("fastsocks.udp")

# The C datagram path: Linux and a compiled build only (NativePath uses it
# only when it is there, so the pure path never needs it).
_datagram: Any = _accel.compiled("_datagram")

#: True when this installation has the C datagram path.
NATIVE: bool = _datagram is not None


class Chain(Protocol):
    """One association's link to an upstream's relay (``Path.open_chain``)."""

    def send(self, datagram: bytes, payload_bytes: int) -> None: ...

    def route(self, family: int, sockaddr: Any) -> None: ...

    def close(self) -> None: ...


class Path(Protocol):
    """What an association asks of its datagram path."""

    @property
    def datagrams_up(self) -> int: ...
    @property
    def datagrams_down(self) -> int: ...
    @property
    def bytes_up(self) -> int: ...
    @property
    def bytes_down(self) -> int: ...
    @property
    def dropped(self) -> int: ...
    @property
    def activity(self) -> int: ...

    async def open(self, local_host: str) -> tuple[str, int]: ...

    def send(self, family: int, sockaddr: Any, payload: Any, fast: bool = False) -> None: ...

    def deny(self, family: int, sockaddr: Any) -> None: ...

    async def open_chain(self, sock: socket.socket) -> Chain: ...

    def close(self) -> None: ...


def open_path(
    loop: asyncio.AbstractEventLoop,
    client_host: str,
    client_port: int,
    slow: Callable[[bytes], None],
    source: Callable[[int], Any],
    native: bool = True,
    unwrap: Callable[[bytes], bytes | None] | None = None,
    wrap: Callable[[bytes], bytes | None] | None = None,
) -> Path:
    """The path for one association: the C one when ``native`` is asked for,
    this installation has it and no datagram needs wrapping (C sees only plain
    §7 headers); else asyncio endpoints."""
    if native and NATIVE and unwrap is None and wrap is None:
        return NativePath(loop, client_host, client_port, slow, source)
    return EndpointPath(loop, client_host, client_port, slow, source, unwrap, wrap)


class NativePath:
    """The sockets of one association, on the loop, with its C table.

    ``slow(datagram)`` gets each datagram C hands up (source already checked);
    ``source(family)``: the address to bind an outbound socket to, or None.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client_host: str,
        client_port: int,
        slow: Callable[[bytes], None],
        source: Callable[[int], Any],
    ) -> None:
        self.loop = loop
        self.client_host = client_host
        self.client_port = client_port
        self.slow = slow
        self.source = source
        self.c: Any = None  # the _datagram.Association, once open
        self.client_sock: socket.socket | None = None
        self.outbound: dict[int, socket.socket] = {}
        self.closed = False
        # Sends from Python (what came up); C counts its own (properties below).
        self._datagrams_up = 0
        self._bytes_up = 0
        self._dropped = 0

    @property
    def datagrams_up(self) -> int:
        return self._datagrams_up + (self.c.datagrams_up if self.c is not None else 0)

    @property
    def datagrams_down(self) -> int:
        return self.c.datagrams_down if self.c is not None else 0

    @property
    def bytes_up(self) -> int:
        return self._bytes_up + (self.c.bytes_up if self.c is not None else 0)

    @property
    def bytes_down(self) -> int:
        return self.c.bytes_down if self.c is not None else 0

    @property
    def dropped(self) -> int:
        return self._dropped + (self.c.dropped if self.c is not None else 0)

    @property
    def activity(self) -> int:
        return self.c.activity if self.c is not None else 0

    async def open(self, local_host: str) -> tuple[str, int]:
        """Bind the client-facing socket on ``local_host``; returns its address."""
        family = socket.AF_INET6 if ":" in local_host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind((local_host, 0))
            tune_socket(sock)
            self.c = _datagram.Association(sock.fileno(), ip16(self.client_host), self.client_port,
                                           self._from_c)
            self.loop.add_reader(sock.fileno(), self.c.client_readable)
        except BaseException:
            sock.close()
            self.c = None
            raise
        self.client_sock = sock
        log.debug("UDP association for %s: datagrams in C (recvmmsg/sendmmsg)", self.client_host)
        host, port = sock.getsockname()[:2]
        return host, port

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.c is not None:
            # Readers first: a descriptor leaves the loop before it is closed.
            self.c.close()
            for sock in (self.client_sock, *self.outbound.values()):
                if sock is not None:
                    self.loop.remove_reader(sock.fileno())
                    sock.close()
        self.client_sock = None
        self.outbound.clear()

    def _from_c(self, datagrams: list[bytes]) -> None:
        """One batch's datagrams that need Python."""
        for data in datagrams:
            if self.closed:
                return
            self.slow(data)

    def send(self, family: int, sockaddr: Any, payload: Any, fast: bool = False) -> None:
        """Send from Python, then let C handle this target: its replies may come
        back now, and with ``fast`` (an IP literal the rules allowed) its next
        datagrams go out without Python."""
        sock = self.outbound.get(family)
        if sock is None:
            try:
                sock = socket.socket(family, socket.SOCK_DGRAM)
                source = self.source(family)
                if source is not None:
                    sock.bind(source)
            except OSError as exc:
                log.debug("UDP outbound socket (family %d) failed: %s", family, exc)
                if sock is not None:
                    sock.close()
                self._dropped += 1
                return
            sock.setblocking(False)
            tune_socket(sock)
            ipv6 = family == socket.AF_INET6
            self.outbound[family] = sock
            self.c.set_outbound(ipv6, sock.fileno())
            self.loop.add_reader(sock.fileno(), self.c.target_readable, ipv6)
        try:
            sock.sendto(payload, sockaddr)
        except OSError as exc:  # a full buffer, an unreachable network: UDP loses it
            log.debug("UDP send to %s port %d failed: %s", sockaddr[0], sockaddr[1], exc)
            self._dropped += 1
            return
        self._datagrams_up += 1
        self._bytes_up += len(payload)
        self.install(family, sockaddr, _datagram.PEER | _datagram.FAST if fast else _datagram.PEER)

    def deny(self, family: int, sockaddr: Any) -> None:
        """The same literal is refused the same way next time: in C."""
        self.install(family, sockaddr, _datagram.DENY)

    def install(self, family: int, sockaddr: Any, flags: int, chain_fd: int = -1) -> None:
        try:
            packed = socket.inet_pton(family, sockaddr[0])
        except (OSError, ValueError):  # a scoped IPv6 name: stays with Python
            return
        self.c.install(packed, sockaddr[1], flags, chain_fd)

    async def open_chain(self, sock: socket.socket) -> _NativeChain:
        """Carry datagrams on ``sock``, connected to an upstream's relay (owned by
        the chain from now on): C sends its replies to the client as they came."""
        return _NativeChain(self, sock)


class _NativeChain:
    """A socket connected to an upstream's relay, read by C (``chain_readable``)."""

    def __init__(self, path: NativePath, sock: socket.socket) -> None:
        self.path = path
        self.sock: socket.socket | None = sock
        path.loop.add_reader(sock.fileno(), path.c.chain_readable, sock.fileno())

    def send(self, datagram: bytes, payload_bytes: int) -> None:
        """A whole §7 datagram (header and payload) for the upstream's relay."""
        if self.sock is None:
            return
        try:
            self.sock.send(datagram)
        except OSError:  # a full buffer, an ICMP error: UDP loses it
            self.path._dropped += 1
            return
        self.path._datagrams_up += 1
        self.path._bytes_up += payload_bytes

    def route(self, family: int, sockaddr: Any) -> None:
        """Datagrams to this IP-literal target go here from C, both ways (``CHAIN``)."""
        if self.sock is not None:
            self.path.install(family, sockaddr, _datagram.CHAIN, self.sock.fileno())

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is None:
            return
        # Out of the C table and the loop before the descriptor is closed.
        path = self.path
        if not path.closed:
            path.c.unchain(sock.fileno())
        path.loop.remove_reader(sock.fileno())
        sock.close()


def ip16(host: str) -> bytes:
    """An address as 16 bytes, IPv4 as ::ffff:a.b.c.d (the C path's form)."""
    host = host.partition("%")[0]
    if ":" in host:
        return socket.inet_pton(socket.AF_INET6, host)
    return b"\0" * 10 + b"\xff\xff" + socket.inet_pton(socket.AF_INET, host)
