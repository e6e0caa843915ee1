"""UDP ASSOCIATE (RFC 1928 §7): one association per request.

Each association has a client-facing UDP socket, bound on the address the
client reached the server on, and an outbound socket per address family,
created when first needed, so that datagrams from the client and from
targets can never be confused (even when both live on the same host).

* Client datagrams are accepted only from the TCP client's IP address, and
  from DST.PORT of the request when it is non-zero, else from the port of the
  first datagram; anything else is dropped silently (§7).
* The UDP request header is parsed by the codec; a bad header drops that
  datagram only.  Domain targets are resolved off the loop and cached.
* Datagrams from targets go back with a header carrying the target's address.
  Only targets the client has sent to may answer ("address and port
  restricted"), so an association is no open door into the client.
* FRAG (§7): fragments are reassembled in a bounded queue (at most
  ``MAX_FRAGMENTS`` fragments and ``MAX_REASSEMBLY_BYTES`` bytes, abandoned
  after ``REASSEMBLY_TIMEOUT`` seconds or when a FRAG lower than the highest
  seen starts a new sequence); with reassembly off, FRAG ≠ 0 is dropped.
* The association ends when its TCP connection closes, or after the idle
  timeout without a datagram either way; its sockets and state are freed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, Callable

from . import codec
from .errors import ProtocolError
from .resolver import ConnectError, resolve_and_cache, resolve_cached, unmapped

__all__ = ["UdpAssociation", "MAX_FRAGMENTS", "MAX_REASSEMBLY_BYTES", "REASSEMBLY_TIMEOUT"]

log = logging.getLogger("fastsocks.udp")

MAX_FRAGMENTS = 127  # FRAG positions are 1..127 (§7)
MAX_REASSEMBLY_BYTES = 65535
REASSEMBLY_TIMEOUT = 5.0  # the RFC's minimum
MAX_PENDING_RESOLVES = 64  # datagrams waiting on DNS per association
MAX_PEERS = 4096  # targets remembered per association for replies

_parse_udp_header = codec.parse_udp_header
_build_udp_header = codec.build_udp_header


class _ClientSide(asyncio.DatagramProtocol):
    __slots__ = ("assoc",)

    def __init__(self, assoc: UdpAssociation) -> None:
        self.assoc = assoc

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.assoc._from_client(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP client socket error: %s", exc)


class _TargetSide(asyncio.DatagramProtocol):
    __slots__ = ("assoc",)

    def __init__(self, assoc: UdpAssociation) -> None:
        self.assoc = assoc

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.assoc._from_target(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a target: nothing to tell the client in SOCKS5.
        log.debug("UDP target socket error: %s", exc)


class UdpAssociation:
    """The sockets and state of one UDP ASSOCIATE."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client_host: str,
        client_port: int,
        local_host: str,
        idle_timeout: float,
        reassembly: bool,
        on_idle: Callable[[], None],
    ) -> None:
        self.loop = loop
        self.client_host = unmapped(client_host)
        self.client_port = client_port  # 0 until the first datagram fixes it
        self.local_host = local_host
        self.idle_timeout = idle_timeout
        self.reassembly = reassembly
        self.on_idle = on_idle
        self.client_transport: Any = None
        self.client_addr: Any = None  # the full sockaddr replies go to
        self.outbound: dict[int, Any] = {}
        self.peers: set[tuple[str, int]] = set()
        self.datagrams_up = 0
        self.datagrams_down = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.dropped = 0
        self.closed = False
        self._pending_resolves = 0
        self._activity = 0
        self._last_activity = -1
        self._idle_ticks = 0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._frags: list[bytes] = []
        self._frag_header: Any = None
        self._frag_bytes = 0
        self._frag_high = 0
        self._frag_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Access rules (a rules.TargetFilter), set by the session; None: none.
        self.targets: Any = None
        self._denials_logged = False

    async def open(self) -> tuple[str, int]:
        """Bind the client-facing socket; returns its address."""
        family = socket.AF_INET6 if ":" in self.local_host else socket.AF_INET
        self.client_transport, _ = await self.loop.create_datagram_endpoint(
            lambda: _ClientSide(self), local_addr=(self.local_host, 0), family=family
        )
        _tune(self.client_transport)
        if self.idle_timeout > 0:
            self._idle_timer = self.loop.call_later(self.idle_timeout / 4, self._tick)
        host, port = self.client_transport.get_extra_info("sockname")[:2]
        return host, port

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for timer in (self._idle_timer, self._frag_timer):
            if timer is not None:
                timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self.client_transport is not None:
            self.client_transport.close()
        for transport in self.outbound.values():
            transport.close()
        self.outbound.clear()
        self.peers.clear()
        self._frags.clear()

    # -- client → target ------------------------------------------------

    def _from_client(self, data: bytes, addr: Any) -> None:
        if self.closed:
            return
        if unmapped(addr[0]) != self.client_host or (self.client_port and addr[1] != self.client_port):
            self.dropped += 1
            return
        if not self.client_port:
            self.client_port = addr[1]
        self.client_addr = addr
        try:
            header = _parse_udp_header(data)
        except ProtocolError:
            self.dropped += 1
            return
        self._activity += 1
        if header.frag:
            self._fragment(header, data)
            return
        self._send(header.host, header.port, memoryview(data)[header.length:])

    def _fragment(self, header: Any, data: bytes) -> None:
        if not self.reassembly:
            self.dropped += 1
            return
        position = header.frag & 0x7F
        if position == 0 or position < self._frag_high or position != len(self._frags) + 1:
            # A lower FRAG starts a new sequence (§7); a gap can never complete.
            self._abandon_fragments()
            if position != 1:
                self.dropped += 1
                return
        payload = data[header.length:]
        if len(self._frags) >= MAX_FRAGMENTS or self._frag_bytes + len(payload) > MAX_REASSEMBLY_BYTES:
            self._abandon_fragments()
            self.dropped += 1
            return
        if not self._frags:
            self._frag_header = header
            self._frag_timer = self.loop.call_later(REASSEMBLY_TIMEOUT, self._abandon_fragments)
        self._frags.append(payload)
        self._frag_bytes += len(payload)
        self._frag_high = position
        if header.frag & 0x80:  # end of the sequence
            first = self._frag_header
            whole = b"".join(self._frags)
            self._abandon_fragments()
            self._send(first.host, first.port, whole)

    def _abandon_fragments(self) -> None:
        if self._frag_timer is not None:
            self._frag_timer.cancel()
            self._frag_timer = None
        self._frags = []
        self._frag_header = None
        self._frag_bytes = 0
        self._frag_high = 0

    def _send(self, host: str, port: int, payload: Any) -> None:
        try:
            addresses = resolve_cached(host, port)
        except ConnectError:
            self.dropped += 1
            return
        targets = self.targets
        if addresses is None:
            # Access rules, pass 1: a name denied whatever its addresses is not looked up.
            if targets is not None and self._denied(targets.early(host, port), host, port):
                return
            if self._pending_resolves >= MAX_PENDING_RESOLVES:
                self.dropped += 1
                return
            self._pending_resolves += 1
            task = asyncio.ensure_future(self._resolve_then_send(host, port, bytes(payload)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        if targets is not None:  # pass 2: only an allowed address is sent to
            addresses = targets.allowed(host, port, addresses)
            if not addresses:
                self._denied(targets.denial, host, port)
                return
        family, sockaddr = addresses[0]
        transport = self.outbound.get(family)
        if transport is None:
            task = asyncio.ensure_future(self._open_outbound_then_send(family, sockaddr, bytes(payload)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        self._sendto(transport, payload, sockaddr)

    def _denied(self, denial: Any, host: str, port: int) -> bool:
        """Drop a datagram the access rules refuse (silently: UDP has no reply)."""
        if denial is None:
            return False
        self.dropped += 1
        level = logging.DEBUG if self._denials_logged else logging.INFO
        self._denials_logged = True  # one INFO line per association, then DEBUG
        if log.isEnabledFor(level):
            log.log(level, "UDP from %s to %s port %d dropped: %s", self.client_host, host, port,
                    denial)
        return True

    def _sendto(self, transport: Any, payload: Any, sockaddr: Any) -> None:
        if len(self.peers) < MAX_PEERS:
            self.peers.add((sockaddr[0], sockaddr[1]))
        self.datagrams_up += 1
        self.bytes_up += len(payload)
        transport.sendto(payload, sockaddr)

    async def _resolve_then_send(self, host: str, port: int, payload: bytes) -> None:
        try:
            await resolve_and_cache(host, port)
        except ConnectError:
            self.dropped += 1
            return
        finally:
            self._pending_resolves -= 1
        if not self.closed:
            self._send(host, port, payload)

    async def _open_outbound_then_send(self, family: int, sockaddr: Any, payload: bytes) -> None:
        if family not in self.outbound:
            try:
                transport, _ = await self.loop.create_datagram_endpoint(
                    lambda: _TargetSide(self), family=family
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
        self._activity += 1
        self.datagrams_down += 1
        self.bytes_down += len(data)
        self.client_transport.sendto(_build_udp_header(unmapped(host), port) + data, self.client_addr)

    # -- idle -------------------------------------------------------------

    def _tick(self) -> None:
        if self._activity != self._last_activity:
            self._last_activity = self._activity
            self._idle_ticks = 0
        else:
            self._idle_ticks += 1
            if self._idle_ticks >= 4:
                self._idle_timer = None
                self.on_idle()
                return
        self._idle_timer = self.loop.call_later(self.idle_timeout / 4, self._tick)


def _tune(transport: Any) -> None:
    """Large socket buffers: bursts must not be dropped by a default-sized queue."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, 4 << 20)
        except OSError:
            pass
