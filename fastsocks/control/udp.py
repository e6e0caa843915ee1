"""UDP ASSOCIATE (RFC 1928 §7): one association per request, and its decisions.

Each association has a client-facing UDP socket, bound on the address the
client reached the server on, and an outbound socket per address family,
created when first needed, so that datagrams from the client and from
targets can never be confused (even when both live on the same host).  A
datagram path of the data plane (``fastsocks.datagram``: the C one, or
asyncio endpoints) owns the sockets and moves the datagrams; this module
decides what it does with each:

* Client datagrams are accepted only from the TCP client's IP address, and
  from DST.PORT of the request when it is non-zero, else from the port of the
  first datagram; anything else is dropped silently (§7).  The path enforces
  it with the address and port given here.
* The UDP request header is parsed by the codec; a bad header drops that
  datagram only.  Domain targets are resolved off the loop and cached.
* Access rules judge each target (``targets``, a ``targets.TargetFilter``): a
  name first, then its addresses; a refused datagram is dropped (one INFO
  line per association).  An IP literal once judged is installed in the C
  table, so its next datagrams stay in C.
* Datagrams from targets go back with a header carrying the target's address.
  Only targets the client has sent to may answer ("address and port
  restricted"), so an association is no open door into the client.
* FRAG (§7): fragments are reassembled in a bounded queue (at most
  ``MAX_FRAGMENTS`` fragments and ``MAX_REASSEMBLY_BYTES`` bytes, abandoned
  after ``REASSEMBLY_TIMEOUT`` seconds or when a FRAG lower than the highest
  seen starts a new sequence); with reassembly off, FRAG ≠ 0 is dropped.
* A datagram whose target an access rule sends to an upstream proxy goes
  through that upstream's own UDP ASSOCIATE (``udp_upstream.UpstreamLink``).
* The association ends when its TCP connection closes, or after the idle
  timeout without a datagram either way; its sockets and state are freed.

An association whose datagrams are protected (GSSAPI, RFC 1961 §5) takes
``unwrap`` and ``wrap``: the first turns each client datagram into the plain
§7 datagram before its header is parsed, the second each reply after its
header is built; either returns None to drop that datagram.  Such an
association always takes the asyncio path (the C one sees only plain headers).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from .. import codec
from ..constants import Atyp
from ..datagram import Path, open_path
from ..errors import ProtocolError
from ..net.address import unmapped
from ..net.resolver import ConnectError, resolve_and_cache, resolve_cached
from .rulebook import Denial
from .udp_upstream import UpstreamLink

__all__ = ["UdpAssociation", "MAX_FRAGMENTS", "MAX_REASSEMBLY_BYTES", "REASSEMBLY_TIMEOUT"]

log = logging.getLogger("fastsocks.udp")

MAX_FRAGMENTS = 127  # FRAG positions are 1..127 (§7)
MAX_REASSEMBLY_BYTES = 65535
REASSEMBLY_TIMEOUT = 5.0  # the RFC's minimum
MAX_PENDING_RESOLVES = 64  # datagrams waiting on DNS per association

_parse_udp_header = codec.parse_udp_header
_build_udp_header = codec.build_udp_header


class UdpAssociation:
    """The decisions and state of one UDP ASSOCIATE.

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
        self.client_port = client_port  # DST.PORT of the request; 0: the first datagram's
        self.local_host = local_host
        self.idle_timeout = idle_timeout
        self.reassembly = reassembly
        self.on_idle = on_idle
        self.native = native
        self.unwrap = unwrap  # client datagram → plain §7 datagram, None: drop it
        self.wrap = wrap  # plain §7 reply → what the client gets, None: drop it
        self.path: Path | None = None  # the datagram path, once open
        # Drops decided here (bad header, refused target, no DNS answer); the
        # path counts the rest (properties below).
        self._dropped = 0
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
        # Access rules (a targets.TargetFilter), set by the session; None: none.
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
        self._links: dict[str, UpstreamLink] = {}
        self._link_retry: dict[str, float] = {}  # name → loop time of the next try

    # Totals, for the access log, metrics and the close line.
    @property
    def datagrams_up(self) -> int:
        return self.path.datagrams_up if self.path is not None else 0

    @property
    def datagrams_down(self) -> int:
        return self.path.datagrams_down if self.path is not None else 0

    @property
    def bytes_up(self) -> int:
        return self.path.bytes_up if self.path is not None else 0

    @property
    def bytes_down(self) -> int:
        return self.path.bytes_down if self.path is not None else 0

    @property
    def dropped(self) -> int:
        return self._dropped + (self.path.dropped if self.path is not None else 0)

    async def open(self) -> tuple[str, int]:
        """Bind the client-facing socket; returns its address."""
        path = open_path(self.loop, self.client_host, self.client_port, self._handle,
                         self._source, self.native, self.unwrap, self.wrap)
        self.path = path
        address = await path.open(self.local_host)
        if self.idle_timeout > 0:
            self._idle_timer = self.loop.call_later(self.idle_timeout / 4, self._tick)
        return address

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
        if self.path is not None:
            self.path.close()
        self._frags.clear()

    def _source(self, family: int) -> Any:
        """The configured outbound address of ``family`` (port 0), or None."""
        for source_family, sockaddr in self.sources:
            if source_family == family:
                return sockaddr[:2]
        return None

    # -- client → target ------------------------------------------------

    def _handle(self, data: bytes) -> None:
        """A datagram from the client (source checked, unwrapped) that needs a decision."""
        if self.closed:
            return
        try:
            header = _parse_udp_header(data)
        except ProtocolError as exc:
            self._dropped += 1
            level = logging.DEBUG if self._denials_logged else logging.INFO
            self._denials_logged = True  # one INFO line per association, then DEBUG
            if log.isEnabledFor(level):
                log.log(level, "UDP from %s dropped: %s", self.client_host, exc)
            return
        self._activity += 1
        if header.frag:
            self._fragment(header, data)
            return
        self._send(header.host, header.port, memoryview(data)[header.length:],
                   header.atyp != Atyp.DOMAIN)

    def _fragment(self, header: Any, data: bytes) -> None:
        if not self.reassembly:
            self._dropped += 1
            return
        # FRAG (§7): the low seven bits are the position, the high bit ends the sequence.
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
            self._send(first.host, first.port, whole, first.atyp != Atyp.DOMAIN)

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
        path = self.path
        if path is None:
            return
        targets = self.targets
        if targets is not None and not literal:
            # Access rules, pass 1, on the name: one denied whatever its
            # addresses is not looked up, and one that an upstream rule allows
            # goes there unresolved (the upstream resolves it).
            decision = targets.early(host, port)
            if isinstance(decision, Denial):
                self._denied(decision, host, port)
                return
            if self._chained(decision, host, port, payload):
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
            if not allowed.addresses:
                self._denied(allowed.denial, host, port)
                if literal:
                    # The same literal is refused the same way next time (in C).
                    path.deny(addresses[0][0], addresses[0][1])
                return
            addresses = allowed.addresses
            # A rule needed the address to decide: the upstream gets the allowed
            # address, not the name (as for CONNECT).
            if self._chained(allowed.rule, unmapped(addresses[0][1][0]), port, payload,
                             addresses[0] if literal else None):
                return
        family, sockaddr = addresses[0]
        path.send(family, sockaddr, payload, literal)

    def _denied(self, denial: Denial | None, host: str, port: int) -> None:
        """Drop a datagram the access rules refuse (silently: UDP has no reply)."""
        self._dropped += 1
        level = logging.DEBUG if self._denials_logged else logging.INFO
        self._denials_logged = True  # one INFO line per association, then DEBUG
        if log.isEnabledFor(level):
            log.log(level, "UDP from %s to %s port %d dropped: %s", self.client_host, host, port,
                    denial)

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
            link = self._links[name] = UpstreamLink(self, upstream)
            task = asyncio.ensure_future(link.open())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # The target as the client named it: a name goes unresolved.
        link.send(_build_udp_header(host, port) + bytes(payload), len(payload))
        if target is not None:
            link.route(target[0], target[1])
        return True

    # -- idle -------------------------------------------------------------

    def _tick(self) -> None:
        activity = self._activity + (self.path.activity if self.path is not None else 0)
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
