"""The control plane of one client connection: negotiation, auth, CONNECT.

A ``Session`` is the asyncio protocol of an accepted connection until the
request succeeds; then the relay takes the transport over.  It feeds bytes to
the codec and acts on its events; every failure ends in the reply code the
RFCs ask for and a closed connection.  Timers bound each wait: the whole
negotiation (handshake timeout), the outbound connect (connect timeout), and
the relay's silence (idle timeout).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from time import monotonic as _monotonic
from typing import TYPE_CHECKING, Any

from .. import codec
from ..observe.accesslog import close_reason
from ..constants import Command, Method, Phase, Reply
from ..errors import ProtocolError
from .gssapi import GssFailure
from .gssrelay import GssRelay
from ..hooks import RequestInfo
from .limits import TokenBuckets
from ..relay import Relay
from ..net.address import format_peer as _format_peer, unmapped
from ..net.resolver import ConnectError, Connector, literal_addresses, resolve
from .rules import UNKNOWN, TargetFilter, describe_target
from .rules import log as rules_log
from .udp import UdpAssociation
from ..net.upstream import connect_via, is_trusted, source_addresses

if TYPE_CHECKING:
    from ..runtime.server import Server

__all__ = ["Session"]

log = logging.getLogger("fastsocks.session")

_NEED_DATA = codec.NEED_DATA
_Greeting = codec.Greeting
_UserPass = codec.UserPass
_Request = codec.Request
_ServerCodec = codec.ServerCodec
_GSS_ABORT = codec.GSS_ABORT
_PHASE_GSSAPI = Phase.GSSAPI
_PHASE_REQUEST = Phase.REQUEST
_parse_proxy_header = codec.parse_proxy_header


_COMMAND_NAMES = {Command.CONNECT: "connect", Command.BIND: "bind",
                  Command.UDP_ASSOCIATE: "udp_associate"}


class Session(asyncio.Protocol):
    """One accepted client connection, from greeting to relay hand-over."""

    __slots__ = (
        "server",
        "transport",
        "codec",
        "peer",
        "user",
        "request",
        "relay",
        "task",
        "timer",
        "closed",
        "started",
        "pair_id",
        "reply_to",
        "udp",
        "connector",
        "reply",
        "dialled",
        "targets",
        "gss",
        "held",
        "listener",
        "proxy_buf",
    )

    def __init__(self, server: Server, listener: tuple[str, int] | None = None) -> None:
        self.server = server
        # The listen address that accepted this connection (for per-listener
        # settings), and the bytes of a PROXY protocol header still being read
        # (None: no header expected, or it has been read).
        self.listener = listener
        self.proxy_buf: bytes | None = None
        self.transport: Any = None
        self.codec = _ServerCodec()
        self.peer: Any = None  # the peername tuple; formatted only for logs
        self.user: str | None = None
        self.request: Any = None
        self.relay: Any = None
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.closed = False
        self.started = 0.0
        self.pair_id = 0  # set once the splice engine owns the sockets
        self.reply_to: tuple[str, int] = ("0.0.0.0", 0)
        self.udp: UdpAssociation | None = None
        self.connector: Connector | None = None
        # For the access log and metrics: the last reply code sent (None: none)
        # and the sockaddr connected to (CONNECT) or accepted from (BIND).
        self.reply: int | None = None
        self.dialled: Any = None
        # Access rules for this request (None: the server has no policy).
        self.targets: TargetFilter | None = None
        # The RFC 1961 exchange (fastsocks/gssapi.Conversation) once X'01' is chosen.
        self.gss: Any = None
        # What this connection counts against the limits (None: no limits).
        self.held: Any = None

    # -- asyncio protocol -------------------------------------------------

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        self.transport = transport
        self.peer = transport.get_extra_info("peername")
        server = self.server
        # time.monotonic(), not loop.time(): uvloop's clock moves in whole
        # milliseconds, and a loopback handshake takes a fraction of one.
        self.started = _monotonic()
        server.sessions.add(self)
        self.timer = server.loop.call_later(server.settings.handshake_timeout, self._handshake_timeout)
        if server.metrics is not None:
            server.metrics.opened()
        if server.settings.proxy_protocol_from and self._awaits_proxy_header():
            return  # behind a balancer: who the client is comes first
        self._peer_known()

    def _peer_known(self) -> None:
        """The client's address is known: the limits on connections and their rate.

        Called with the TCP peer from ``connection_made``, or, behind a load
        balancer, once a PROXY protocol header has said who the client is.
        Over a limit, the connection is closed at once: no SOCKS byte has
        been exchanged yet and, under a flood, answering would cost more.
        """
        limits = self.server.limits
        if limits is None:
            return
        held, denial = limits.admit(self.peer[0] if self.peer else None)
        if denial is not None:
            self._close(f"limit {denial} reached")
        else:
            self.held = held

    def data_received(self, data: bytes) -> None:
        if self.proxy_buf is not None:
            self._on_proxy_data(data)
            return
        if self.codec is None:
            return  # UDP ASSOCIATE: the TCP connection carries nothing more
        if self.gss is not None and not self.gss.clear:
            self._on_gss_data(data)
            return
        self.codec.receive_data(data)
        self._advance()

    def eof_received(self) -> bool:
        # A client that half-closes before its request is answered has nothing
        # more to say: drop it (RFC 1928 has no use for a half-open handshake).
        self._close(self._client_closed())
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.closed and not self.pair_id:
            self._close(self._client_closed() if exc is None else f"client error: {exc}")

    def _client_closed(self) -> str:
        # A UDP association's TCP connection closing is its normal end.
        if self.udp is not None and self.reply == 0:
            return "client closed the UDP association's control connection"
        return "client closed during handshake"

    # -- PROXY protocol (behind a load balancer) -----------------------------

    def _awaits_proxy_header(self) -> bool:
        """True when this connection must start with a PROXY header (or was refused).

        The header is required from the trusted balancers and refused from
        anyone else: the spec forbids guessing whether it is there, since
        that would let any client claim any address.
        """
        settings = self.server.settings
        only = settings.proxy_protocol_listen
        # With workers, a listener configured on port 0 runs on the port the
        # master fixed: an entry with port 0 names the listener on that host.
        if (only is not None and self.listener not in only
                and (self.listener is None or (self.listener[0], 0) not in only)):
            return False
        if not is_trusted(self.server.proxy_trusted, self.peer[0] if self.peer else None):
            log.info("%s: refused: this listener expects the PROXY protocol and %s is not a "
                     "trusted balancer (proxy_protocol.trusted)", _format_peer(self.peer),
                     self.peer[0] if self.peer else "the peer")
            self._close("PROXY protocol: not from a trusted balancer")
            return True
        self.proxy_buf = b""
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.server.loop.call_later(settings.proxy_protocol_timeout,
                                                 self._proxy_timeout)
        return True

    def _on_proxy_data(self, data: bytes) -> None:
        buf = self.proxy_buf + data
        try:
            header = _parse_proxy_header(buf)
        except ProtocolError as exc:
            # Nothing valid was said: close without a SOCKS reply.
            self.proxy_buf = None
            log.info("%s: %s", _format_peer(self.peer), exc)
            self._close(f"PROXY protocol error: {exc}")
            return
        if header is _NEED_DATA:
            self.proxy_buf = buf
            return
        self.proxy_buf = None
        # LOCAL (a health check), v1 UNKNOWN, or no IP address in the header:
        # the spec says to use the connection's own endpoints, so the client
        # is the balancer itself, judged by the rules like any client.
        if not header.local and header.src_host is not None:
            self.peer = (header.src_host, header.src_port)
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.server.loop.call_later(self.server.settings.handshake_timeout,
                                                 self._handshake_timeout)
        self._peer_known()  # limits per source address: the real client's
        rest = buf[header.length:]
        if rest and not self.closed:
            self.codec.receive_data(rest)
            self._advance()

    def _proxy_timeout(self) -> None:
        self.timer = None
        log.info("%s: no PROXY protocol header within %g s", _format_peer(self.peer),
                 self.server.settings.proxy_protocol_timeout)
        self._close("PROXY protocol header timeout")

    # -- negotiation ----------------------------------------------------

    def _advance(self) -> None:
        """Act on every event the buffered bytes make up, in order."""
        while not self.closed:
            try:
                event = self.codec.next_event()
            except ProtocolError as exc:
                self._fail(self.codec.send_error(), f"protocol error: {exc}")
                return
            if event is _NEED_DATA:
                return
            kind = type(event)
            if kind is _Greeting:
                self._on_greeting(event)
            elif kind is _UserPass:
                self.transport.pause_reading()
                self.task = asyncio.ensure_future(self._authenticate(event))
                return
            elif kind is _Request:
                self._on_request(event)
                return

    def _on_greeting(self, event: Any) -> None:
        # Preference: GSSAPI (when configured and offered), then username/
        # password (when configured), then no authentication — which, with
        # GSSAPI on, only --allow-open permits.
        gssapi = self.server.gssapi
        if gssapi is not None and Method.GSSAPI in event.methods:
            method = Method.GSSAPI
        elif self.server.users is not None or self.server.authenticate is not None:
            method = Method.USERPASS if Method.USERPASS in event.methods else Method.NO_ACCEPTABLE
        elif gssapi is not None and not self.server.settings.allow_open:
            method = Method.NO_ACCEPTABLE
        else:
            method = Method.NO_AUTH if Method.NO_AUTH in event.methods else Method.NO_ACCEPTABLE
        data = self.codec.send_method(method)
        if method == Method.NO_ACCEPTABLE:
            self._fail(data, "no acceptable authentication method")
        else:
            self.transport.write(data)
            if method == Method.GSSAPI:
                self._start_gssapi(gssapi)

    # -- GSSAPI (RFC 1961; fastsocks/gssapi.py) ------------------------------

    def _start_gssapi(self, acceptor: Any) -> None:
        try:
            self.gss = acceptor.conversation()
        except Exception as exc:  # python-gssapi failing outright: refuse, stay up
            log.warning("%s GSSAPI context could not be created: %s", _format_peer(self.peer),
                        exc)
            self._fail(_GSS_ABORT, "authentication failed: GSSAPI unavailable")
            return
        self._on_gss_data(self.codec.take_trailing_data())

    def _on_gss_data(self, data: bytes) -> None:
        """RFC 1961 messages from the client: context, protection level, the request."""
        gss = self.gss
        gss.receive_data(data)
        phase = self.codec.phase
        if phase != _PHASE_GSSAPI and phase != _PHASE_REQUEST:
            return  # the request is in: what follows is the relay's, still wrapped
        try:
            out, plain = gss.advance()
        except GssFailure as exc:
            self._gss_refuse(str(exc))
            return
        if out:
            self.transport.write(out)
        if phase == _PHASE_GSSAPI and gss.established:
            self.codec.gssapi_established()
            self.user = gss.user
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s GSSAPI: %s as user %r, protection %s", _format_peer(self.peer),
                          gss.principal, gss.user, gss.level_name)
        if plain:
            self.codec.receive_data(plain)
            self._advance()

    def _gss_refuse(self, reason: str) -> None:
        """RFC 1961 §3.8: the abort message, then close; the cause goes to the log."""
        log.info("%s GSSAPI authentication refused: %s", _format_peer(self.peer), reason)
        if self.gss is not None and self.gss.user:
            self.user = self.gss.user  # for the access log: the session ends here
        self._fail(_GSS_ABORT, f"authentication failed: GSSAPI: {reason}")

    def _protect(self, data: bytes) -> bytes:
        """What the server sends, as the client must get it (RFC 1961 §5 at levels 1, 2)."""
        gss = self.gss
        if gss is None or data == _GSS_ABORT:
            return data
        try:
            return gss.wrap(data)
        except GssFailure as exc:
            log.warning("%s GSSAPI: %s", _format_peer(self.peer), exc)
            return b""

    async def _authenticate(self, event: Any) -> None:
        name = event.username.decode("utf-8", "replace")
        hook = self.server.authenticate
        try:
            if hook is None:
                ok = await self.server.users.verify(event.username, event.password)
            else:
                ok = await self._ask_authenticate(hook, name, event.password)
                if isinstance(ok, str):
                    name, ok = ok, True
        except Exception:  # a broken hash (or hook) must not take the server down
            log.exception("credential check for user %r failed", name)
            ok = False
        if self.closed:
            return
        data = self.codec.send_auth_status(ok)
        if not ok:
            self.user = name  # only for the access log: the session ends here
            self._fail(data, f"authentication failed for user {name!r}")
            return
        self.user = name
        self.transport.write(data)
        self.transport.resume_reading()
        self._advance()  # the request may already be buffered

    async def _ask_authenticate(self, hook: Any, name: str, password: bytes) -> bool | str:
        """The embedding application's authentication hook, bounded in time."""
        peer = self.peer
        client = (peer[0], peer[1]) if peer else ("", 0)
        result = await asyncio.wait_for(hook(name, password.decode("utf-8", "replace"), client),
                                        self.server.settings.handshake_timeout)
        if isinstance(result, str) and result:
            return result
        if not isinstance(result, bool):
            raise TypeError(f"the authenticate hook returned {result!r}: return True, False "
                            "or a user name")
        return result

    async def _authorize(self, request: Any) -> None:
        """The embedding application's access hook: True goes on, False is X'02'."""
        peer = self.peer
        info = RequestInfo((peer[0], peer[1]) if peer else ("", 0), self.user,
                           _COMMAND_NAMES.get(request.command, "?"), request.host, request.port)
        try:
            allowed = await asyncio.wait_for(self.server.authorize(info),
                                             self.server.settings.handshake_timeout)
        except Exception as exc:
            if self.closed:
                return
            if isinstance(exc, asyncio.TimeoutError):
                log.error("the authorize hook did not answer within %g s for %s",
                          self.server.settings.handshake_timeout, self._what())
            else:
                log.exception("the authorize hook failed for %s", self._what())
            self._fail(self.codec.send_reply(Reply.GENERAL_FAILURE),
                       f"{self._what()}: authorize hook failed")
            return
        if self.closed:
            return
        if not allowed:
            if rules_log.isEnabledFor(logging.INFO):
                rules_log.info("%s %s: denied by the authorize hook", _format_peer(self.peer),
                               self._what())
            self._fail(self.codec.send_reply(Reply.NOT_ALLOWED),
                       f"{self._what()}: denied by the authorize hook")
            return
        self._dispatch(request)

    def _on_request(self, request: Any) -> None:
        self.request = request
        self.transport.pause_reading()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        command = request.command
        if self.server.metrics is not None:
            self.server.metrics.requested(command)
        if self.user is not None and self.held is not None:
            denial = self.held.owner.admit_user(self.held, self.user,
                                                self.peer[0] if self.peer else None)
            if denial is not None:  # the user is known: a SOCKS answer, X'02'
                self._fail(self.codec.send_reply(Reply.NOT_ALLOWED), f"limit {denial} reached")
                return
        policy = self.server.policy
        if policy is not None and not self._admit(policy, request):
            return
        if self.server.authorize is not None:
            self.task = asyncio.ensure_future(self._authorize(request))
            return
        self._dispatch(request)

    def _dispatch(self, request: Any) -> None:
        """Carry out a request the rules (and the authorize hook) allowed."""
        command = request.command
        rule = self.targets.rule if self.targets is not None else None
        # A UDP association is chained per datagram target (udp.py), not here.
        if rule is not None and rule.upstream is not None \
                and command != Command.UDP_ASSOCIATE:
            if command != Command.CONNECT:  # BIND is not chained (fastsocks/upstream.py)
                self._fail(self.codec.send_reply(Reply.COMMAND_NOT_SUPPORTED),
                           f"{self._what()}: rules[{rule.index}] sends it to upstream "
                           f"{rule.upstream}, which only carries CONNECT and UDP datagrams")
                return
            # The name goes to the upstream unresolved: it resolves it.
            self.task = asyncio.ensure_future(self._chain(request.host))
            return
        if command == Command.CONNECT:
            addresses = literal_addresses(request.host, request.port)
            if addresses is None:
                self.task = asyncio.ensure_future(self._resolve_then_connect(request))
            else:
                self._connect(addresses)
        elif command == Command.BIND:
            self.task = asyncio.ensure_future(self._bind(request))
        else:
            self.task = asyncio.ensure_future(self._udp_associate(request))

    def _what(self) -> str:
        request = self.request
        return f"{Command(request.command).name} {request.host} port {request.port}"

    # -- access rules (fastsocks/rules.py has the semantics) ------------------

    def _admit(self, policy: Any, request: Any) -> bool:
        """Pass 1 on the request; False when denied (X'02' sent, closing).

        An IP literal is judged completely here; a name again per resolved
        address (``_allowed``).  A BIND to 0.0.0.0 (any peer) and a UDP
        ASSOCIATE name no destination yet: their peer and each datagram's
        target are judged when they are known.
        """
        peer = self.peer
        command = request.command
        targets = self.targets = TargetFilter(
            policy, policy.subject(peer[0] if peer else None, self.user), command)
        if command == Command.UDP_ASSOCIATE:  # DST is where the client sends from
            denial = targets.decide(UNKNOWN, UNKNOWN, UNKNOWN)
        elif command == Command.BIND and request.host in ("0.0.0.0", "::"):
            denial = targets.decide(None, UNKNOWN, request.port)
        else:
            denial = targets.early(request.host, request.port)
        if denial is None:
            return True
        self._deny(denial)
        return False

    def _allowed(self, addresses: list[Any]) -> list[Any]:
        """Pass 2: the resolved addresses the rules allow; none: denied (X'02')."""
        request = self.request
        targets = self.targets
        allowed = targets.allowed(request.host, request.port, addresses)
        if not allowed:
            self._deny(targets.denial, addresses[0][1][0] if addresses else None)
        return allowed

    def _deny(self, denial: Any, address: str | None = None) -> None:
        """A rule or the SSRF default refused: log at INFO, reply X'02', close."""
        request = self.request
        what = describe_target(request.command, request.host, request.port, address)
        if rules_log.isEnabledFor(logging.INFO):
            user = f" user {self.user!r}" if self.user is not None else ""
            rules_log.info("%s%s %s: %s", _format_peer(self.peer), user, what, denial)
        self._fail(self.codec.send_reply(Reply.NOT_ALLOWED), f"{what}: {denial}")

    # -- CONNECT ----------------------------------------------------------

    async def _resolve_then_connect(self, request: Any) -> None:
        try:
            addresses = await resolve(request.host, request.port)
        except ConnectError as exc:
            if not self.closed:
                self._fail(self.codec.send_reply(exc.reply), f"{self._what()}: {exc.reason}")
            return
        if not self.closed:
            if self.targets is not None:
                addresses = self._allowed(addresses)
                if not addresses:
                    return
                rule = self.targets.rule
                if rule is not None and rule.upstream is not None:
                    # A rule needed the address to decide: the upstream is
                    # given the address the rules allowed, not the name.
                    await self._chain(unmapped(addresses[0][1][0]))
                    return
            self._connect(addresses)

    def _connect(self, addresses: list[Any]) -> None:
        settings = self.server.settings
        self.connector = Connector(self.server.loop, addresses, settings.connect_timeout,
                                   self._on_connected, self._sources(),
                                   settings.outbound_interface)
        self.connector.start()

    def _sources(self) -> tuple[Any, ...]:
        """The outbound address(es): the allow rule's, else the user's, else the global ones."""
        settings = self.server.settings
        rule = self.targets.rule if self.targets is not None else None
        if rule is not None and rule.source is not None:
            chosen = rule.source
        elif self.user is not None and self.user in settings.outbound_users:
            chosen = settings.outbound_users[self.user]
        else:
            chosen = settings.outbound_address
        return source_addresses(chosen) if chosen else ()

    async def _chain(self, host: str) -> None:
        """CONNECT through the rule's upstream SOCKS5 proxy, then relay as usual."""
        settings = self.server.settings
        name = self.targets.rule.upstream
        upstream = settings.upstreams.get(name)
        if upstream is None:  # a reload removed it since the rules were read
            self._fail(self.codec.send_reply(Reply.GENERAL_FAILURE),
                       f"{self._what()}: upstream {name} is no longer configured")
            return
        try:
            sock, bound_host, bound_port = await connect_via(
                upstream, host, self.request.port, settings.connect_timeout, self._sources(),
                settings.outbound_interface)
        except ConnectError as exc:
            if not self.closed:
                self._fail(self.codec.send_reply(exc.reply), f"{self._what()}: {exc.reason}")
            return
        if self.closed:
            sock.close()
            return
        try:
            self.dialled = sock.getpeername()  # the access log's "dialled": the upstream
        except OSError:
            self.dialled = None
        self._relay(sock, bound_host, bound_port)

    def _on_connected(self, sock: Any, error: ConnectError | None) -> None:
        connector, self.connector = self.connector, None
        if error is None and connector is not None:
            self.dialled = connector.sockaddr
        if error is not None:
            if not self.closed:
                self._fail(self.codec.send_reply(error.reply), f"{self._what()}: {error.reason}")
            return
        bound = sock.getsockname()
        self._relay(sock, bound[0], bound[1])

    # -- BIND (RFC 1928 §4) ---------------------------------------------

    async def _bind(self, request: Any) -> None:
        """Listen, reply with where; accept one peer, reply with who; relay.

        When DST.ADDR is not all zeros, only a peer from (one of the
        addresses of) DST.ADDR is accepted; DST.PORT is not checked, since
        the peer's source port is rarely known in advance (FTP's data
        connection comes from another port than the control connection).
        A peer from elsewhere gets the client X'02'; no peer within the
        BIND timeout gets X'06' (TTL expired: the time ran out).
        """
        settings = self.server.settings
        loop = self.server.loop
        expected: set[str] | None = None
        try:
            if request.host not in ("0.0.0.0", "::"):
                expected = {unmapped(sockaddr[0]) for _, sockaddr in
                            await resolve(request.host, request.port)}
        except ConnectError as exc:
            if not self.closed:
                self._fail(self.codec.send_reply(exc.reply), f"{self._what()}: {exc.reason}")
            return
        local = settings.bind_address or self.transport.get_extra_info("sockname")[0]
        try:
            listener = socket.socket(socket.AF_INET6 if ":" in local else socket.AF_INET)
        except OSError as exc:
            self._fail(self.codec.send_reply(Reply.GENERAL_FAILURE), f"{self._what()}: {exc}")
            return
        try:
            listener.setblocking(False)
            listener.bind((local, 0))
            listener.listen(1)
            host, port = listener.getsockname()[:2]
            reply = self.codec.send_reply(Reply.SUCCEEDED, unmapped(host), port)
            self.transport.write(self._protect(reply))
            self._replied(Reply.SUCCEEDED)
            sock, peer = await asyncio.wait_for(loop.sock_accept(listener), settings.bind_timeout)
            self.dialled = peer
            if expected is not None and unmapped(peer[0]) not in expected:
                sock.close()
                self._fail(self.codec.send_reply(Reply.NOT_ALLOWED),
                           f"{self._what()}: refused a connection from {peer[0]} port {peer[1]}")
                return
            if self.targets is not None:  # access rules: dst is the peer for BIND
                denial = self.targets.judge(request.host, request.port, peer[0])
                if denial is not None:
                    sock.close()
                    self._deny(denial, unmapped(peer[0]))
                    return
        except asyncio.TimeoutError:
            if not self.closed:
                self._fail(self.codec.send_reply(Reply.TTL_EXPIRED),
                           f"{self._what()}: no connection within {settings.bind_timeout:g} s")
            return
        except OSError as exc:
            if not self.closed:
                self._fail(self.codec.send_reply(Reply.GENERAL_FAILURE), f"{self._what()}: {exc}")
            return
        finally:
            listener.close()
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._relay(sock, unmapped(peer[0]), peer[1])

    # -- UDP ASSOCIATE (RFC 1928 §7) ------------------------------------

    async def _udp_associate(self, request: Any) -> None:
        settings = self.server.settings
        # RFC 1961 §5: under integrity or confidentiality every datagram
        # either way is one MTYP 3 message (Python path only, see udp.py).
        gss = self.gss if self.gss is not None and self.gss.wraps else None
        # The client's real address (behind a balancer: from the PROXY header).
        client = self.peer
        local = self.transport.get_extra_info("sockname")[0]
        # DST.PORT, when given, is the port the client will send from; its
        # DST.ADDR is ignored: datagrams must come from the TCP client's IP.
        self.udp = UdpAssociation(self.server.loop, client[0], request.port, local,
                                  settings.idle_timeout, settings.udp_reassembly,
                                  lambda: self._close("UDP association idle"),
                                  native=settings.relay != "protocol",  # C datagram path
                                  unwrap=gss.unwrap_datagram if gss is not None else None,
                                  wrap=gss.wrap_datagram if gss is not None else None)
        self.udp.targets = self.targets  # access rules per datagram target
        self.udp.sources = self._sources()  # the outbound address, as for CONNECT
        # Datagrams an upstream rule allows go through that upstream.
        self.udp.upstreams = settings.upstreams
        self.udp.connect_timeout = settings.connect_timeout
        self.udp.interface = settings.outbound_interface
        try:
            host, port = await self.udp.open()
        except OSError as exc:
            if not self.closed:
                self._fail(self.codec.send_reply(Reply.GENERAL_FAILURE), f"{self._what()}: {exc}")
            return
        if self.closed:
            return
        advertised = settings.udp_public_address or unmapped(host)
        reply = self.codec.send_reply(Reply.SUCCEEDED, advertised, port)
        self.transport.write(self._protect(reply))
        self._replied(Reply.SUCCEEDED)
        self.codec = None
        self.task = None
        # The TCP connection now only says how long the association lives.
        self.transport.resume_reading()

    # -- relaying ---------------------------------------------------------

    def _relay(self, sock: Any, reply_host: str, reply_port: int) -> None:
        """Reply with (reply_host, reply_port), then relay the client and ``sock``."""
        if self.closed:
            sock.close()
            return
        engine = self.server.engine
        wrapped = self.gss is not None and self.gss.wraps  # RFC 1961 §5: MTYP 3 both ways
        if engine is not None and not wrapped and self.transport.get_write_buffer_size() == 0:
            try:
                self._hand_to_engine(engine, sock, reply_host, reply_port)
            except OSError as exc:  # e.g. EMFILE from dup(): answer, don't crash
                sock.close()
                if not self.closed:
                    self._fail(self.codec.send_reply(Reply.GENERAL_FAILURE),
                               f"{self._what()}: hand-over failed: {exc}")
            return
        self.reply_to = (reply_host, reply_port)
        if wrapped:
            self.relay = GssRelay(self.server.loop, self._on_upstream, self._on_relay_closed,
                                  self.server.settings.idle_timeout, self.gss,
                                  _format_peer(self.peer))
        else:
            self.relay = Relay(self.server.loop, self._on_upstream, self._on_relay_closed,
                               self.server.settings.idle_timeout)
        held = self.held
        if held is not None:
            self.relay.throttles = held.owner.throttles(held, self.user, TokenBuckets)
        self.task = asyncio.ensure_future(self._relay_protocol(sock))

    async def _relay_protocol(self, sock: Any) -> None:
        if not isinstance(sock, socket.socket):  # the Connector's plain _socket.socket
            sock = socket.socket(sock.family, sock.type, fileno=sock.detach())
        try:
            await self.server.loop.create_connection(lambda: self.relay.upstream, sock=sock)
            self.task = None  # done: an idle relay should not keep it alive
        except OSError as exc:
            sock.close()
            if not self.closed:
                self._fail(self.codec.send_reply(Reply.GENERAL_FAILURE), f"{self._what()}: {exc}")

    def _on_upstream(self, relay: Any) -> None:
        """The outbound transport exists: reply, then hand both to the relay."""
        if self.closed:
            relay.upstream.transport.abort()
            return
        self.transport.write(self._protect(self.codec.send_reply(Reply.SUCCEEDED,
                                                                 *self.reply_to)))
        self._replied(Reply.SUCCEEDED)
        pending = self.codec.trailing_data
        self.codec = None  # the negotiation is over; free its buffer
        relay.start(self.transport, pending)

    def _hand_to_engine(self, engine: Any, sock: socket.socket, reply_host: str,
                        reply_port: int) -> None:
        """Give both descriptors to the splice engine; the reply goes with them.

        The client transport's write buffer is empty (checked by the caller),
        so nothing queued in it is lost: the engine sends the reply, then the
        bytes the client sent early go to the target before anything else.
        """
        transport = self.transport
        client_fd = os.dup(transport.get_extra_info("socket").fileno())
        reply = self.codec.send_reply(Reply.SUCCEEDED, reply_host, reply_port)
        pending = self.codec.trailing_data
        self.codec = None
        self.task = None
        held = self.held
        throttles = held.owner.throttles(held, self.user, engine.throttle) if held else ()
        try:
            upstream_fd = sock.detach()
            self.pair_id = engine.add(client_fd, upstream_fd, pending, reply,
                                      self.server.settings.idle_timeout, self._on_engine_closed,
                                      throttles)
        except BaseException:
            os.close(client_fd)
            raise
        self._replied(Reply.SUCCEEDED)  # the engine sends it first thing
        # The engine holds a duplicate; closing the transport's own descriptor
        # removes it from the event loop without touching the connection.
        transport.abort()

    def _on_engine_closed(self, bytes_up: int, bytes_down: int, reason: str) -> None:
        self.closed = True
        self.server.sessions.discard(self)
        self._log_relayed(reason, bytes_up, bytes_down)
        self._report(reason, bytes_up, bytes_down)

    def _log_relayed(self, reason: str, bytes_up: int, bytes_down: int) -> None:
        if not log.isEnabledFor(logging.DEBUG):
            return
        log.debug(
            "%s %s closed (%s): %d bytes up, %d bytes down, %.3f s",
            _format_peer(self.peer), self._what(), reason, bytes_up, bytes_down,
            _monotonic() - self.started,
        )

    def _on_relay_closed(self, relay: Any) -> None:
        if not relay.started:
            self._close("target closed before the relay started")
            return
        self.closed = True
        self.server.sessions.discard(self)
        self._log_relayed(relay.reason, relay.bytes_up, relay.bytes_down)
        self._report(relay.reason, relay.bytes_up, relay.bytes_down)

    def _replied(self, code: int) -> None:
        """A reply to the request went out (access log, metrics)."""
        first = self.reply is None
        self.reply = code
        metrics = self.server.metrics
        if metrics is not None:
            metrics.replied(self, code, first)

    def _report(self, reason: str, bytes_up: int, bytes_down: int) -> None:
        """The connection ended: one access log line, the metrics; only where configured."""
        server = self.server
        if self.held is not None:
            self.held.owner.release(self.held)
            self.held = None
        if server.metrics is not None:
            server.metrics.closed(self, close_reason(self, reason), bytes_up, bytes_down)
        if server.access_log is not None:
            server.access_log.write(self, reason, bytes_up, bytes_down)

    # -- ending -----------------------------------------------------------

    def _handshake_timeout(self) -> None:
        self.timer = None
        self._close("handshake timeout")

    def _fail(self, data: bytes, reason: str) -> None:
        """Send the failure answer, if any, then close (RFC 1928 §6)."""
        if data and not self.transport.is_closing():
            self.transport.write(self._protect(data) if self.gss is not None else data)
        if len(data) >= 10 and data[0] == 5:  # a SOCKS5 reply, not 05 FF or 01 01
            self._replied(data[1])
        self._close(reason)

    def _close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.server.sessions.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.connector is not None:
            self.connector.cancel()
            self.connector = None
        task = self.task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
        self.task = None
        if self.relay is not None:
            self.relay.close(reason)
        if self.udp is not None:
            udp = self.udp
            udp.close()
            log.debug("%s %s closed (%s): %d datagrams up, %d down, %d bytes up, %d down, "
                      "%d dropped", _format_peer(self.peer), self._what(), reason, udp.datagrams_up,
                      udp.datagrams_down, udp.bytes_up, udp.bytes_down, udp.dropped)
        self.transport.close()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s closed: %s", _format_peer(self.peer), reason)
        if self.relay is None or not self.relay.started:  # else the relay reports
            udp = self.udp
            self._report(reason, udp.bytes_up if udp else 0, udp.bytes_down if udp else 0)

    def abort(self, reason: str) -> None:
        """Server shutdown: end this connection now, relay or not."""
        if self.pair_id:
            return  # the engine closes its pairs itself
        if self.relay is not None and self.relay.started:
            self.relay.close(reason)
        else:
            self._close(reason)
            self.transport.abort()

