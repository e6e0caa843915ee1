"""A UDP association's datagrams through an upstream SOCKS5 proxy.

A datagram whose target an access rule sends to an upstream
(``upstream = "NAME"``) goes through that upstream's own UDP ASSOCIATE
(RFC 1928 §7), opened for the association when the first such datagram comes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import TYPE_CHECKING, Any

from ..constants import Command
from ..datagram import Chain, tune_socket
from ..net.resolver import ConnectError, resolve
from ..net.upstream import connect_via

if TYPE_CHECKING:
    from .udp import UdpAssociation

__all__ = ["UpstreamLink", "MAX_UPSTREAM_PENDING", "UPSTREAM_RETRY"]

log = logging.getLogger("fastsocks.udp")

MAX_UPSTREAM_PENDING = 64  # datagrams waiting for an upstream's association to open
UPSTREAM_RETRY = 5.0  # seconds an upstream whose association failed or ended is left alone


class UpstreamLink:
    """One association's UDP ASSOCIATE at an upstream SOCKS5 proxy.

    Opened when the first datagram for it comes: a UDP socket of the
    upstream's address family (from the outbound address, as CONNECT's),
    then the control connection and the request (upstream.connect_via), which
    tells the upstream the port our datagrams come from.  The socket is then
    connected to the upstream's relay, so the kernel takes datagrams from it
    alone, and handed to the association's datagram path (``open_chain``).
    Up to ``MAX_UPSTREAM_PENDING`` datagrams wait while it opens.  Datagrams
    go out with the target as the client named it; replies go to the client
    with the upstream's header (its FRAG must be 0).  When the association
    cannot be opened, or the upstream ends it (closes the control
    connection), its datagrams are dropped for ``UPSTREAM_RETRY`` seconds,
    then it is opened again.

    On the C path, IP-literal targets are then ``route``d here in C: their
    datagrams go to the upstream without Python, both ways.
    """

    def __init__(self, assoc: UdpAssociation, upstream: Any) -> None:
        self.assoc = assoc
        self.upstream = upstream
        self.chain: Chain | None = None
        self.ctrl: socket.socket | None = None
        self.pending: list[tuple[bytes, int]] = []
        self.closed = False

    def send(self, datagram: bytes, payload_bytes: int) -> None:
        """A whole §7 datagram for the upstream's relay; queued while it opens."""
        if self.chain is None:
            if len(self.pending) >= MAX_UPSTREAM_PENDING:
                self.assoc._dropped += 1
            else:
                self.pending.append((datagram, payload_bytes))
            return
        self.chain.send(datagram, payload_bytes)

    def route(self, family: int, sockaddr: Any) -> None:
        """Let the datagram path send this target's next datagrams here itself."""
        if self.chain is not None:
            self.chain.route(family, sockaddr)

    async def open(self) -> None:
        assoc, upstream = self.assoc, self.upstream
        loop = assoc.loop
        sock: socket.socket | None = None
        ctrl: socket.socket | None = None
        try:
            family = (await resolve(upstream.host, upstream.port))[0][0]
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.bind(assoc._source(family) or ("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
            tune_socket(sock)
            ctrl, relay_host, relay_port = await connect_via(
                upstream, "::" if family == socket.AF_INET6 else "0.0.0.0",
                sock.getsockname()[1], assoc.connect_timeout, assoc.sources, assoc.interface,
                command=Command.UDP_ASSOCIATE)
            if self.closed:
                raise asyncio.CancelledError
            try:
                anywhere = ipaddress.ip_address(relay_host).is_unspecified
            except ValueError:  # a name
                anywhere = True
            if anywhere:  # "where you reached me": the control connection's peer
                relay_host = ctrl.getpeername()[0]
            sock.connect((relay_host, relay_port))
            if assoc.path is None:
                raise asyncio.CancelledError
            chain = await assoc.path.open_chain(sock)
            sock = None  # the chain's now
            if self.closed:
                chain.close()
                raise asyncio.CancelledError
            self.chain = chain
        except (ConnectError, OSError, asyncio.CancelledError) as exc:
            for s in (sock, ctrl):
                if s is not None:
                    s.close()
            if isinstance(exc, asyncio.CancelledError):
                if not self.closed:
                    raise
                return
            reason = exc.reason if isinstance(exc, ConnectError) else (exc.strerror or str(exc))
            self._fail(reason)
            return
        self.ctrl = ctrl
        log.debug("UDP from %s: upstream %s (%s) relays at %s port %d", assoc.client_host,
                  upstream.name, upstream.address, relay_host, relay_port)
        pending, self.pending = self.pending, []
        for datagram, payload_bytes in pending:
            self.send(datagram, payload_bytes)
        # The upstream's association lives as long as its control connection.
        try:
            while await loop.sock_recv(ctrl, 256):
                pass
            reason = "the upstream closed its UDP ASSOCIATE control connection"
        except OSError as exc:
            reason = f"its control connection failed: {exc.strerror or exc}"
        if not self.closed:
            self._fail(reason)

    def _fail(self, reason: str) -> None:
        assoc = self.assoc
        log.info("UDP from %s through upstream %s (%s): %s; its datagrams are dropped for "
                 "%g s", assoc.client_host, self.upstream.name, self.upstream.address, reason,
                 UPSTREAM_RETRY)
        assoc._dropped += len(self.pending)
        assoc._link_retry[self.upstream.name] = assoc.loop.time() + UPSTREAM_RETRY
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.pending = []
        if self.assoc._links.get(self.upstream.name) is self:
            del self.assoc._links[self.upstream.name]
        chain, self.chain = self.chain, None
        if chain is not None:
            chain.close()
        if self.ctrl is not None:
            self.ctrl.close()
