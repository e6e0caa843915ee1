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

Two paths move the datagrams.  Where the compiled ``_datagram`` module exists
(Linux) and the relay is not ``protocol``, the association's sockets are
plain non-blocking sockets whose readiness calls ``_datagram.Association``:
recvmmsg/sendmmsg batches, the §7 header parsed and built in C, and only what
needs a decision (a target not judged yet, a domain name, FRAG ≠ 0) comes up
to the Python below, which installs the decision in the C table so that the
next datagram to that target stays in C.  Elsewhere, asyncio datagram
endpoints call the Python below for every datagram.  Both behave the same.

A datagram whose target an access rule sends to an upstream proxy
(``upstream = "NAME"``) goes through that upstream's own UDP ASSOCIATE,
opened for this association when the first such datagram comes
(``_UpstreamLink``), and its replies come back to the client as the
upstream wrote their header.  On the C path an IP-literal target, once
judged, is chained in C (``F_CHAIN``) both ways.

An association whose datagrams are protected (GSSAPI, RFC 1961 §5) takes
``unwrap`` and ``wrap``: the first turns each client datagram into the plain
§7 datagram before its header is parsed, the second each reply after its
header is built; either returns None to drop that datagram.  Such an
association always takes the Python path (the C one sees only plain headers).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import platform
import socket
import sys
from typing import Any, Callable

from .. import _accel, codec
from ..constants import Command
from ..errors import ProtocolError
from ..net.address import unmapped
from ..net.resolver import ConnectError, resolve, resolve_and_cache, resolve_cached
from ..net.upstream import connect_via

# The C datagram path: Linux and a compiled build only (_accel decides).
_datagram: Any = _accel.compiled("_datagram")

__all__ = ["UdpAssociation", "MAX_FRAGMENTS", "MAX_REASSEMBLY_BYTES", "REASSEMBLY_TIMEOUT"]

log = logging.getLogger("fastsocks.udp")

MAX_FRAGMENTS = 127  # FRAG positions are 1..127 (§7)
MAX_REASSEMBLY_BYTES = 65535
REASSEMBLY_TIMEOUT = 5.0  # the RFC's minimum
MAX_PENDING_RESOLVES = 64  # datagrams waiting on DNS per association
MAX_PEERS = 4096  # targets remembered per association for replies
MAX_UPSTREAM_PENDING = 64  # datagrams waiting for an upstream's association to open
UPSTREAM_RETRY = 5.0  # seconds an upstream whose association failed or ended is left alone

_parse_udp_header = codec.parse_udp_header
_build_udp_header = codec.build_udp_header
_ATYP_DOMAIN = 3
BUFFER_SIZE = 4 << 20  # socket buffers of the relay sockets (see _tune)
# What the C table remembers of a target (_datagram.pxd).
_PEER, _FAST, _DENY, _CHAIN = 1, 2, 4, 8


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
    """The sockets and state of one UDP ASSOCIATE.

    ``native``: use the C datagram path when this installation has it (the
    session passes False for ``--relay protocol``).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client_host: str,
        client_port: int,
        local_host: str,
        idle_timeout: float,
        reassembly: bool,
        on_idle: Callable[[], None],
        native: bool = True,
        unwrap: Callable[[bytes], bytes | None] | None = None,
        wrap: Callable[[bytes], bytes | None] | None = None,
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
        self.outbound: dict[int, Any] = {}  # family → transport, or socket on the C path
        self.peers: set[tuple[str, int]] = set()
        # Counts of the Python side; the C side keeps its own (properties below).
        self._datagrams_up = 0
        self._datagrams_down = 0
        self._bytes_up = 0
        self._bytes_down = 0
        self._dropped = 0
        self.closed = False
        self.native: Any = None  # the _datagram.Association, on the C path
        self._use_native = native and _datagram is not None and unwrap is None and wrap is None
        self.unwrap = unwrap  # client datagram → plain §7 datagram, None: drop it
        self.wrap = wrap  # plain §7 reply → what the client gets, None: drop it
        self._client_sock: socket.socket | None = None
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
        # The outbound source addresses, (family, sockaddr) as the session
        # chose them (rule, user, global); set by the session; none: any.
        self.sources: tuple[Any, ...] = ()
        self._denials_logged = False
        # Chaining (set by the session): the configured upstreams by name, and
        # how to reach them, as for CONNECT.
        self.upstreams: dict[str, Any] = {}
        self.connect_timeout = 10.0
        self.interface: str | None = None
        self._links: dict[str, _UpstreamLink] = {}
        self._link_retry: dict[str, float] = {}  # name → loop time of the next try

    # Totals of both sides, for the access log, metrics and the close line.
    @property
    def datagrams_up(self) -> int:
        native = self.native
        return self._datagrams_up + (native.datagrams_up if native is not None else 0)

    @property
    def datagrams_down(self) -> int:
        native = self.native
        return self._datagrams_down + (native.datagrams_down if native is not None else 0)

    @property
    def bytes_up(self) -> int:
        native = self.native
        return self._bytes_up + (native.bytes_up if native is not None else 0)

    @property
    def bytes_down(self) -> int:
        native = self.native
        return self._bytes_down + (native.bytes_down if native is not None else 0)

    @property
    def dropped(self) -> int:
        native = self.native
        return self._dropped + (native.dropped if native is not None else 0)

    async def open(self) -> tuple[str, int]:
        """Bind the client-facing socket; returns its address."""
        family = socket.AF_INET6 if ":" in self.local_host else socket.AF_INET
        if self._use_native:
            return self._open_native(family)
        self.client_transport, _ = await self.loop.create_datagram_endpoint(
            lambda: _ClientSide(self), local_addr=(self.local_host, 0), family=family
        )
        _tune(self.client_transport)
        if self.idle_timeout > 0:
            self._idle_timer = self.loop.call_later(self.idle_timeout / 4, self._tick)
        host, port = self.client_transport.get_extra_info("sockname")[:2]
        return host, port

    def _open_native(self, family: int) -> tuple[str, int]:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind((self.local_host, 0))
            _tune_socket(sock)
            self.native = _datagram.Association(sock.fileno(), _ip16(self.client_host),
                                                self.client_port, self._from_native)
            self.loop.add_reader(sock.fileno(), self.native.client_readable)
        except BaseException:
            sock.close()
            self.native = None
            raise
        self._client_sock = sock
        log.debug("UDP association for %s: datagrams in C (recvmmsg/sendmmsg)", self.client_host)
        if self.idle_timeout > 0:
            self._idle_timer = self.loop.call_later(self.idle_timeout / 4, self._tick)
        host, port = sock.getsockname()[:2]
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
        for link in list(self._links.values()):
            link.close()
        if self.client_transport is not None:
            self.client_transport.close()
        if self.native is not None:
            # Readers first: a descriptor leaves the loop before it is closed.
            self.native.close()
            for sock in (self._client_sock, *self.outbound.values()):
                if sock is not None:
                    self.loop.remove_reader(sock.fileno())
                    sock.close()
            self._client_sock = None
        else:
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
            self._dropped += 1
            return
        if not self.client_port:
            self.client_port = addr[1]
        self.client_addr = addr
        if self.unwrap is not None:
            plain = self.unwrap(data)
            if plain is None:
                self._dropped += 1
                return
            data = plain
        self._handle(data)

    def _from_native(self, datagrams: list[bytes]) -> None:
        """The datagrams the C path hands up (source already checked)."""
        for data in datagrams:
            if self.closed:
                return
            self._handle(data)

    def _handle(self, data: bytes) -> None:
        try:
            header = _parse_udp_header(data)
        except ProtocolError:
            self._dropped += 1
            return
        self._activity += 1
        if header.frag:
            self._fragment(header, data)
            return
        self._send(header.host, header.port, memoryview(data)[header.length:],
                   header.atyp != _ATYP_DOMAIN)

    def _fragment(self, header: Any, data: bytes) -> None:
        if not self.reassembly:
            self._dropped += 1
            return
        position = header.frag & 0x7F
        if position == 0 or position < self._frag_high or position != len(self._frags) + 1:
            # A lower FRAG starts a new sequence (§7); a gap can never complete.
            self._abandon_fragments()
            if position != 1:
                self._dropped += 1
                return
        payload = data[header.length:]
        if len(self._frags) >= MAX_FRAGMENTS or self._frag_bytes + len(payload) > MAX_REASSEMBLY_BYTES:
            self._abandon_fragments()
            self._dropped += 1
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
            self._send(first.host, first.port, whole, first.atyp != _ATYP_DOMAIN)

    def _abandon_fragments(self) -> None:
        if self._frag_timer is not None:
            self._frag_timer.cancel()
            self._frag_timer = None
        self._frags = []
        self._frag_header = None
        self._frag_bytes = 0
        self._frag_high = 0

    def _send(self, host: str, port: int, payload: Any, literal: bool = False) -> None:
        """Send to (host, port) if the access rules allow it.  ``literal``: the
        client named an IP address, so the decision may be kept in the C table."""
        targets = self.targets
        if targets is not None and not literal:
            # Access rules, pass 1, on the name: one denied whatever its
            # addresses is not looked up, and one that an upstream rule allows
            # goes there unresolved (the upstream resolves it).
            if self._denied(targets.early(host, port), host, port):
                return
            if self._chained(targets.rule, host, port, payload):
                return
        try:
            addresses = resolve_cached(host, port)
        except ConnectError:
            self._dropped += 1
            return
        if addresses is None:
            if self._pending_resolves >= MAX_PENDING_RESOLVES:
                self._dropped += 1
                return
            self._pending_resolves += 1
            task = asyncio.ensure_future(self._resolve_then_send(host, port, bytes(payload)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        if targets is not None:  # pass 2: only an allowed address is sent to
            allowed = targets.allowed(host, port, addresses)
            if not allowed:
                self._denied(targets.denial, host, port)
                if literal and self.native is not None:
                    # The same literal is refused the same way next time: in C.
                    self._install(addresses[0][0], addresses[0][1], _DENY)
                return
            addresses = allowed
            # A rule needed the address to decide: the upstream gets the allowed
            # address, not the name (as for CONNECT).
            if self._chained(targets.rule, unmapped(addresses[0][1][0]), port, payload,
                             addresses[0] if literal and self.native is not None else None):
                return
        family, sockaddr = addresses[0]
        if self.native is not None:
            self._send_native(family, sockaddr, payload, literal)
            return
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
        self._dropped += 1
        level = logging.DEBUG if self._denials_logged else logging.INFO
        self._denials_logged = True  # one INFO line per association, then DEBUG
        if log.isEnabledFor(level):
            log.log(level, "UDP from %s to %s port %d dropped: %s", self.client_host, host, port,
                    denial)
        return True

    def _sendto(self, transport: Any, payload: Any, sockaddr: Any) -> None:
        if len(self.peers) < MAX_PEERS:
            self.peers.add((sockaddr[0], sockaddr[1]))
        self._datagrams_up += 1
        self._bytes_up += len(payload)
        transport.sendto(payload, sockaddr)

    def _send_native(self, family: int, sockaddr: Any, payload: Any, literal: bool) -> None:
        """Send from Python on the C path, then let C handle this target."""
        sock = self.outbound.get(family)
        if sock is None:
            try:
                sock = socket.socket(family, socket.SOCK_DGRAM)
                source = self._source(family)
                if source is not None:
                    sock.bind(source)
            except OSError as exc:
                log.debug("UDP outbound socket (family %d) failed: %s", family, exc)
                if sock is not None:
                    sock.close()
                self._dropped += 1
                return
            sock.setblocking(False)
            _tune_socket(sock)
            ipv6 = family == socket.AF_INET6
            self.outbound[family] = sock
            self.native.set_outbound(ipv6, sock.fileno())
            self.loop.add_reader(sock.fileno(), self.native.target_readable, ipv6)
        try:
            sock.sendto(payload, sockaddr)
        except OSError as exc:  # a full buffer, an unreachable network: UDP loses it
            log.debug("UDP send to %s port %d failed: %s", sockaddr[0], sockaddr[1], exc)
            self._dropped += 1
            return
        self._datagrams_up += 1
        self._bytes_up += len(payload)
        # Replies may come back now; a literal the rules allowed goes by C from now on.
        self._install(family, sockaddr, _PEER | _FAST if literal else _PEER)

    def _source(self, family: int) -> Any:
        """The configured outbound address of ``family`` (port 0), or None."""
        for source_family, sockaddr in self.sources:
            if source_family == family:
                return sockaddr[:2]
        return None

    def _install(self, family: int, sockaddr: Any, flags: int, chain_fd: int = -1) -> None:
        try:
            packed = socket.inet_pton(family, sockaddr[0])
        except (OSError, ValueError):  # a scoped IPv6 name: stays with Python
            return
        self.native.install(packed, sockaddr[1], flags, chain_fd)

    async def _resolve_then_send(self, host: str, port: int, payload: bytes) -> None:
        try:
            await resolve_and_cache(host, port)
        except ConnectError:
            self._dropped += 1
            return
        finally:
            self._pending_resolves -= 1
        if not self.closed:
            self._send(host, port, payload)

    async def _open_outbound_then_send(self, family: int, sockaddr: Any, payload: bytes) -> None:
        if family not in self.outbound:
            try:
                transport, _ = await self.loop.create_datagram_endpoint(
                    lambda: _TargetSide(self), family=family, local_addr=self._source(family)
                )
            except OSError as exc:
                log.debug("UDP outbound socket (family %d) failed: %s", family, exc)
                self._dropped += 1
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
            self._dropped += 1
            return
        self._activity += 1
        self._to_client(_build_udp_header(unmapped(host), port) + data, len(data))

    def _to_client(self, reply: bytes, payload_bytes: int) -> None:
        """Send a §7 datagram (header and data) to the client, wrapped if it must be.
        (The Python path's; on the C path, replies reach the client in C.)"""
        if self.wrap is not None:
            wrapped = self.wrap(reply)
            if wrapped is None:
                self._dropped += 1
                return
            reply = wrapped
        if self.client_addr is None:
            self._dropped += 1
            return
        self.client_transport.sendto(reply, self.client_addr)
        self._datagrams_down += 1
        self._bytes_down += payload_bytes

    # -- through an upstream proxy ------------------------------------------

    def _chained(self, rule: Any, host: str, port: int, payload: Any,
                 target: Any = None) -> bool:
        """True when ``rule`` sends this datagram to an upstream (and it went there).

        ``target``: the (family, sockaddr) of an IP literal the client named,
        which the C path may then send on without Python."""
        if rule is None or rule.upstream is None:
            return False
        name = rule.upstream
        link = self._links.get(name)
        if link is None:
            upstream = self.upstreams.get(name)
            if upstream is None or self.loop.time() < self._link_retry.get(name, 0.0):
                if upstream is None:  # a reload removed it since the rules were read
                    log.debug("UDP from %s to %s port %d dropped: upstream %s is not "
                              "configured", self.client_host, host, port, name)
                self._dropped += 1
                return True
            link = self._links[name] = _UpstreamLink(self, upstream)
            task = asyncio.ensure_future(link.open())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # The target as the client named it: a name goes unresolved.
        link.send(_build_udp_header(host, port) + bytes(payload), len(payload))
        if target is not None and link.sock is not None:
            self._install(target[0], target[1], _CHAIN, link.sock.fileno())
        return True

    # -- idle -------------------------------------------------------------

    def _tick(self) -> None:
        activity = self._activity + (self.native.activity if self.native is not None else 0)
        if activity != self._last_activity:
            self._last_activity = activity
            self._idle_ticks = 0
        else:
            self._idle_ticks += 1
            if self._idle_ticks >= 4:
                self._idle_timer = None
                self.on_idle()
                return
        self._idle_timer = self.loop.call_later(self.idle_timeout / 4, self._tick)


class _UpstreamLink(asyncio.DatagramProtocol):
    """One association's UDP ASSOCIATE at an upstream SOCKS5 proxy.

    Opened when the first datagram for it comes: a UDP socket of the
    upstream's address family (from the outbound address, as CONNECT's),
    then the control connection and the request (upstream.connect_via), which
    tells the upstream the port our datagrams come from.  The socket is then
    connected to the upstream's relay, so the kernel takes datagrams from it
    alone.  Up to ``MAX_UPSTREAM_PENDING`` datagrams wait while it opens.
    Datagrams go out with the target as the client named it; replies go to
    the client with the upstream's header (its FRAG must be 0).  When the
    association cannot be opened, or the upstream ends it (closes the control
    connection), its datagrams are dropped for ``UPSTREAM_RETRY`` seconds,
    then it is opened again.

    On the C path the socket is a plain one whose readiness calls
    ``Association.chain_readable``, and IP-literal targets are installed
    with ``F_CHAIN``: their datagrams then go to the upstream without Python,
    both ways.  Elsewhere an asyncio datagram endpoint carries them.
    """

    def __init__(self, assoc: UdpAssociation, upstream: Any) -> None:
        self.assoc = assoc
        self.upstream = upstream
        self.transport: Any = None  # the Python path's endpoint
        self.sock: socket.socket | None = None  # the C path's socket
        self.ctrl: socket.socket | None = None
        self.pending: list[tuple[bytes, int]] = []
        self.closed = False

    @property
    def ready(self) -> bool:
        return self.transport is not None or self.sock is not None

    def send(self, datagram: bytes, payload_bytes: int) -> None:
        assoc = self.assoc
        if not self.ready:
            if len(self.pending) >= MAX_UPSTREAM_PENDING:
                assoc._dropped += 1
            else:
                self.pending.append((datagram, payload_bytes))
            return
        if self.sock is not None:
            try:
                self.sock.send(datagram)
            except OSError:  # a full buffer, an ICMP error: UDP loses it
                assoc._dropped += 1
                return
        else:
            self.transport.sendto(datagram)
        assoc._datagrams_up += 1
        assoc._bytes_up += payload_bytes

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
            _tune_socket(sock)
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
            if assoc.native is not None:
                loop.add_reader(sock.fileno(), assoc.native.chain_readable, sock.fileno())
                self.sock = sock
            else:
                self.transport, _ = await loop.create_datagram_endpoint(lambda: self, sock=sock)
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
        if self.transport is not None:
            self.transport.close()
        sock, self.sock = self.sock, None
        if sock is not None:
            # Out of the C table and the loop before the descriptor is closed.
            native = self.assoc.native
            if native is not None:
                native.unchain(sock.fileno())
            self.assoc.loop.remove_reader(sock.fileno())
            sock.close()
        if self.ctrl is not None:
            self.ctrl.close()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        assoc = self.assoc
        if assoc.closed:
            return
        try:
            header = _parse_udp_header(data)
        except ProtocolError:
            assoc._dropped += 1
            return
        if header.frag:  # fragments from the upstream are not reassembled
            assoc._dropped += 1
            return
        assoc._activity += 1
        assoc._to_client(data, len(data) - header.length)

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP upstream socket error: %s", exc)


def _tune(transport: Any) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        _tune_socket(sock)


# SO_RCVBUFFORCE / SO_SNDBUFFORCE (Linux): past net.core.rmem_max, for root
# or CAP_NET_ADMIN only.  Python's socket module does not name them; 33 and 32
# are asm-generic's numbers (MIPS, SPARC, PA-RISC and Alpha differ: not tried there).
_FORCE = ({socket.SO_RCVBUF: 33, socket.SO_SNDBUF: 32}
          if sys.platform.startswith("linux") and platform.machine() in (
              "x86_64", "aarch64", "i686", "armv7l", "armv6l", "riscv64", "s390x", "ppc64le")
          else {})


def _tune_socket(sock: Any) -> None:
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


def _ip16(host: str) -> bytes:
    """An address as 16 bytes, IPv4 as ::ffff:a.b.c.d (the C path's form)."""
    host = host.partition("%")[0]
    if ":" in host:
        return socket.inet_pton(socket.AF_INET6, host)
    return b"\0" * 10 + b"\xff\xff" + socket.inet_pton(socket.AF_INET, host)
