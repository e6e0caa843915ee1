"""Data plane, pure-Python twin of ``_datagram.pyx``: UDP ASSOCIATE's datagrams
on asyncio endpoints.

The path of every association where the C one is not built (not Linux, a
pure install), not wanted (``--relay protocol``) or cannot see the header
(datagrams protected by GSSAPI, RFC 1961 §5).  It moves one association's
datagrams and decides nothing: ``control.udp.UdpAssociation`` gives it the
client's address, gets every datagram the client sends (``slow``, after the
source check) and says where each one goes (``send``).

* client → association: datagrams only from the client's IP address, and
  from the locked port (DST.PORT of the request when it is non-zero, else the
  port of the first datagram); anything else is dropped silently (RFC 1928
  §7).  ``unwrap`` turns each into the plain §7 datagram (None: drop it).
* association → target: ``send`` sends the payload from an outbound endpoint
  of the target's family (created when first needed, bound to
  ``source(family)``) and remembers the target, so that its replies get
  through (address and port restricted, at most ``MAX_PEERS`` targets).
* target → client: datagrams from remembered targets only, behind a §7
  header naming the target (``codec.build_udp_header``), then ``wrap``.
* through an upstream proxy: ``open_chain`` puts an endpoint on a socket
  connected to the upstream's relay; what the relay sends back carries its
  §7 header already and goes to the client as it came (FRAG must be 0).

The counts (datagrams and payload bytes each way, drops, activity) mean what
``_datagram.Association``'s mean.  The socket tuning both paths use is here.
"""

from __future__ import annotations

import asyncio
import logging
import platform
import socket
import sys
from typing import Any, Callable

from . import codec
from .errors import ProtocolError

__all__ = ["IMPLEMENTATION", "MAX_PEERS", "BUFFER_SIZE", "EndpointPath", "tune_socket"]

IMPLEMENTATION = "py"

log = logging.getLogger("fastsocks.udp")

MAX_PEERS = 4096  # targets remembered per association for replies (the C table's size)
BUFFER_SIZE = 4 << 20  # socket buffers of the relay sockets (see tune_socket)

_build_udp_header = codec.build_udp_header
_parse_udp_header = codec.parse_udp_header


class EndpointPath:
    """The datagrams of one UDP association, moved by asyncio endpoints.

    ``slow(datagram)``: gets each datagram from the client (header included);
    ``source(family)``: the address to bind an outbound socket to, or None.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client_host: str,
        client_port: int,
        slow: Callable[[bytes], None],
        source: Callable[[int], Any],
        unwrap: Callable[[bytes], bytes | None] | None = None,
        wrap: Callable[[bytes], bytes | None] | None = None,
    ) -> None:
        self.loop = loop
        # The forms the client's address takes in a sockaddr: a dual-stack
        # socket names an IPv4 client ::ffff:a.b.c.d.
        self._client_hosts = {client_host}
        if "." in client_host:
            self._client_hosts.add("::ffff:" + client_host)
        self.client_port = client_port  # 0 until the first datagram locks it
        self.client_addr: Any = None  # the full sockaddr replies go to
        self.slow = slow
        self.source = source
        self.unwrap = unwrap
        self.wrap = wrap
        self.transport: Any = None
        self.outbound: dict[int, Any] = {}  # family → transport
        self.peers: set[tuple[str, int]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False
        self.datagrams_up = 0
        self.datagrams_down = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.dropped = 0
        self.activity = 0

    async def open(self, local_host: str) -> tuple[str, int]:
        """Bind the client-facing socket on ``local_host``; returns its address."""
        family = socket.AF_INET6 if ":" in local_host else socket.AF_INET
        self.transport, _ = await self.loop.create_datagram_endpoint(
            lambda: _ClientSide(self), local_addr=(local_host, 0), family=family
        )
        _tune(self.transport)
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for task in list(self._tasks):
            task.cancel()
        if self.transport is not None:
            self.transport.close()
        for transport in self.outbound.values():
            transport.close()
        self.outbound.clear()
        self.peers.clear()

    # -- client → target ------------------------------------------------

    def _from_client(self, data: bytes, addr: Any) -> None:
        if self.closed:
            return
        if addr[0] not in self._client_hosts or (self.client_port and addr[1] != self.client_port):
            self.dropped += 1
            return
        if not self.client_port:
            self.client_port = addr[1]
        self.client_addr = addr
        if self.unwrap is not None:
            plain = self.unwrap(data)
            if plain is None:
                self.dropped += 1
                return
            data = plain
        self.slow(data)

    def send(self, family: int, sockaddr: Any, payload: Any, fast: bool = False) -> None:
        """Send ``payload`` to ``sockaddr`` and let it answer.  (``fast``: the C
        path's hint that the target may skip Python next time; here every
        datagram comes up.)"""
        transport = self.outbound.get(family)
        if transport is None:
            task = asyncio.ensure_future(self._open_outbound_then_send(family, sockaddr, bytes(payload)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        self._sendto(transport, payload, sockaddr)

    def deny(self, family: int, sockaddr: Any) -> None:
        """A refused target (nothing to remember: every datagram comes up)."""

    def _sendto(self, transport: Any, payload: Any, sockaddr: Any) -> None:
        if len(self.peers) < MAX_PEERS:
            self.peers.add((sockaddr[0], sockaddr[1]))
        self.datagrams_up += 1
        self.bytes_up += len(payload)
        transport.sendto(payload, sockaddr)

    async def _open_outbound_then_send(self, family: int, sockaddr: Any, payload: bytes) -> None:
        if family not in self.outbound:
            try:
                transport, _ = await self.loop.create_datagram_endpoint(
                    lambda: _TargetSide(self), family=family, local_addr=self.source(family)
                )
            except OSError as exc:
                log.debug("UDP outbound socket (family %d) failed: %s", family, exc)
                self.dropped += 1
                return
            if self.closed:
                transport.close()
                return
            _tune(transport)
            if family in self.outbound:  # another datagram raced us here
                transport.close()
            else:
                self.outbound[family] = transport
        if not self.closed:
            self._sendto(self.outbound[family], payload, sockaddr)

    # -- target → client ------------------------------------------------

    def _from_target(self, data: bytes, addr: Any) -> None:
        if self.closed or self.client_addr is None:
            return
        host, port = addr[0], addr[1]
        if (host, port) not in self.peers:
            self.dropped += 1
            return
        self.activity += 1
        if host.startswith("::ffff:") and "." in host:  # IPv4-mapped: answered as IPv4
            host = host[7:]
        self.to_client(_build_udp_header(host, port) + data, len(data))

    def to_client(self, reply: bytes, payload_bytes: int) -> None:
        """Send a §7 datagram (header and data) to the client, wrapped if it must be."""
        if self.wrap is not None:
            wrapped = self.wrap(reply)
            if wrapped is None:
                self.dropped += 1
                return
            reply = wrapped
        if self.client_addr is None:
            self.dropped += 1
            return
        self.transport.sendto(reply, self.client_addr)
        self.datagrams_down += 1
        self.bytes_down += payload_bytes

    # -- through an upstream proxy ----------------------------------------

    async def open_chain(self, sock: socket.socket) -> _Chain:
        """Carry datagrams on ``sock``, connected to an upstream's relay (it is
        owned by the chain from now on)."""
        chain = _Chain(self)
        await self.loop.create_datagram_endpoint(lambda: chain, sock=sock)
        return chain


class _ClientSide(asyncio.DatagramProtocol):
    __slots__ = ("path",)

    def __init__(self, path: EndpointPath) -> None:
        self.path = path

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.path._from_client(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP client socket error: %s", exc)


class _TargetSide(asyncio.DatagramProtocol):
    __slots__ = ("path",)

    def __init__(self, path: EndpointPath) -> None:
        self.path = path

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.path._from_target(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a target: nothing to tell the client in SOCKS5.
        log.debug("UDP target socket error: %s", exc)


class _Chain(asyncio.DatagramProtocol):
    """The endpoint on a socket connected to an upstream's relay."""

    def __init__(self, path: EndpointPath) -> None:
        self.path = path
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def send(self, datagram: bytes, payload_bytes: int) -> None:
        """A whole §7 datagram (header and payload) for the upstream's relay."""
        self.transport.sendto(datagram)
        self.path.datagrams_up += 1
        self.path.bytes_up += payload_bytes

    def route(self, family: int, sockaddr: Any) -> None:
        """A target whose datagrams go here (nothing to remember: they all come up)."""

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        path = self.path
        if path.closed:
            return
        try:
            header = _parse_udp_header(data)
        except ProtocolError:
            path.dropped += 1
            return
        if header.frag:  # fragments from the upstream are not reassembled
            path.dropped += 1
            return
        path.activity += 1
        path.to_client(data, len(data) - header.length)

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP upstream socket error: %s", exc)


def _tune(transport: Any) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        tune_socket(sock)


# SO_RCVBUFFORCE / SO_SNDBUFFORCE (Linux): past net.core.rmem_max, for root
# or CAP_NET_ADMIN only.  Python's socket module does not name them; 33 and 32
# are asm-generic's numbers (MIPS, SPARC, PA-RISC and Alpha differ: not tried there).
_FORCE = ({socket.SO_RCVBUF: 33, socket.SO_SNDBUF: 32}
          if sys.platform.startswith("linux") and platform.machine() in (
              "x86_64", "aarch64", "i686", "armv7l", "armv6l", "riscv64", "s390x", "ppc64le")
          else {})


def tune_socket(sock: Any) -> None:
    """Large socket buffers: bursts must not be dropped by a default-sized queue.

    Dante loses most of an unpaced stream at its relay socket's default
    receive buffer.  The forced option works as root whatever
    net.core.rmem_max says; otherwise the plain one (capped by rmem_max).
    """
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        force = _FORCE.get(option)
        if force is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, BUFFER_SIZE)
                continue
            except OSError:  # not privileged: fall back quietly
                pass
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, BUFFER_SIZE)
        except OSError:
            pass
