"""The control plane of one client connection, as an explicit state machine.

A ``Session`` is the asyncio protocol of an accepted connection until its
request succeeds; then the relay (or the splice engine) takes the sockets
over.  ``state`` (a ``State``) says where it stands, and each stage lives in
a module of its own, mixed in here:

    PROXY_HEADER ─► NEGOTIATING ⇄ AUTHENTICATING / GSSAPI ─► DECIDING
      (proxyheader)   (negotiate)                          (decide)
                                                               │
                       ┌───────────────┬─────────────────┬─────┘
                       ▼               ▼                 ▼
                  CONNECTING        BINDING          ASSOCIATED
                  (connect)         (bind)           (associate)
                       └───────┬───────┘
                               ▼
                           RELAYING ─────────────────► CLOSED
                           (handoff)

Any state can go to CLOSED.  Every failure ends in the reply code the RFCs
ask for (sent by ``_refuse``, the one place a failure reply is written) and
a closed connection; every connection ends in exactly one ``CloseRecord``
for the access log and the metrics.  Timers bound each wait: the whole
negotiation (handshake timeout), the outbound connect (connect timeout),
and the relay's silence (idle timeout).
"""

from __future__ import annotations

import asyncio
import logging
from time import monotonic as _monotonic
from typing import TYPE_CHECKING, Any

from .. import codec
from ..constants import Command
from ..net.address import format_peer
from .associate import AssociateStage
from .bind import BindStage
from .connect import ConnectStage
from .decide import DecideStage
from .handoff import HandoffStage
from .negotiate import NegotiateStage
from .proxyheader import ProxyHeaderStage
from .record import CloseReason, CloseRecord, State

if TYPE_CHECKING:
    from ..runtime.server import Server
    from .udp import UdpAssociation

__all__ = ["Session", "State"]

log = logging.getLogger("fastsocks.session")

_ServerCodec = codec.ServerCodec
_CLOSED = State.CLOSED
_NEGOTIATING = State.NEGOTIATING
_GSSAPI = State.GSSAPI
_PROXY_HEADER = State.PROXY_HEADER
_ASSOCIATED = State.ASSOCIATED


class Session(ProxyHeaderStage, NegotiateStage, DecideStage, ConnectStage, BindStage,
              AssociateStage, HandoffStage, asyncio.Protocol):
    """One accepted client connection, from greeting to relay hand-over."""

    __slots__ = (
        "server",
        "state",
        "transport",
        "codec",
        "peer",
        "user",
        "request",
        "relay",
        "task",
        "timer",
        "started",
        "pair_id",
        "reply_to",
        "udp",
        "connector",
        "reply",
        "dialled",
        "targets",
        "rule",
        "gss",
        "held",
        "listener",
        "proxy_buf",
    )

    def __init__(self, server: Server, listener: tuple[str, int] | None = None) -> None:
        self.server = server
        self.state = _NEGOTIATING
        # The listen address that accepted this connection (for per-listener
        # settings), and the bytes of a PROXY protocol header still being read.
        self.listener = listener
        self.proxy_buf = b""
        self.transport: Any = None
        self.codec: Any = _ServerCodec()
        self.peer: Any = None  # the peername tuple; formatted only for logs
        self.user: str | None = None
        self.request: Any = None
        self.relay: Any = None
        self.task: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.started = 0.0
        self.pair_id = 0  # set once the splice engine owns the sockets
        self.reply_to: tuple[str, int] = ("0.0.0.0", 0)
        self.udp: UdpAssociation | None = None
        self.connector: Any = None
        # For the access log and metrics: the last reply code sent (None: none)
        # and the sockaddr connected to (CONNECT) or accepted from (BIND).
        self.reply: int | None = None
        self.dialled: Any = None
        # Access rules for this request (None: the server has no policy), and
        # the allow rule that decided it (its upstream, its source address).
        self.targets: Any = None
        self.rule: Any = None
        # The RFC 1961 exchange (control/gssapi.Conversation) once X'01' is chosen.
        self.gss: Any = None
        # What this connection counts against the limits (None: no limits).
        self.held: Any = None

    @property
    def closed(self) -> bool:
        return self.state is _CLOSED

    # -- asyncio protocol -------------------------------------------------

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        self.transport = transport
        self.peer = transport.get_extra_info("peername")
        server = self.server
        # time.monotonic(), not loop.time(): uvloop's clock moves in whole
        # milliseconds, and a loopback handshake takes a fraction of one.
        self.started = _monotonic()
        server.sessions.add(self)
        self.timer = server.loop.call_later(server.settings.handshake_timeout,
                                            self._handshake_timeout)
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
            self._close(CloseReason.LIMIT_REACHED, f"limit {denial} reached")
        else:
            self.held = held

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state is _PROXY_HEADER:
            self._on_proxy_data(data)
        elif state is _ASSOCIATED or state is _CLOSED:
            return  # a UDP association's TCP connection carries nothing more
        elif self.gss is not None and not self.gss.clear:
            self._on_gss_data(data)
        else:
            # Bytes after the request wait in the codec (trailing_data) for
            # the relay; uvloop may deliver them even while reading is paused.
            self.codec.receive_data(data)
            if state is _NEGOTIATING or state is _GSSAPI:
                self._advance()

    def eof_received(self) -> bool:
        # A client that half-closes before its request is answered has nothing
        # more to say: drop it (RFC 1928 has no use for a half-open handshake).
        self._client_gone(None)
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.state is not _CLOSED and not self.pair_id:
            self._client_gone(exc)

    def _client_gone(self, exc: BaseException | None) -> None:
        if exc is not None:
            self._close(CloseReason.CLIENT_RESET, f"client error: {exc}")
        elif self.state is _ASSOCIATED:
            # A UDP association's TCP connection closing is its normal end.
            self._close(CloseReason.EOF, "client closed the UDP association's control connection")
        else:
            self._close(CloseReason.CLIENT_CLOSED, "client closed during handshake")

    # -- replies and endings ------------------------------------------------

    def _what(self) -> str:
        request = self.request
        return f"{Command(request.command).name} {request.host} port {request.port}"

    def _record_reply(self, code: int) -> None:
        """A reply to the request went out (access log, metrics)."""
        first = self.reply is None
        self.reply = code
        metrics = self.server.metrics
        if metrics is not None:
            metrics.replied(code, _monotonic() - self.started if first else None)

    def _reply_bytes(self, code: int, host: str = "0.0.0.0", port: int = 0) -> bytes | None:
        """The reply (RFC 1928 §6) as the client must get it, recorded as sent.

        Under GSSAPI integrity or confidentiality it is wrapped (RFC 1961 §5);
        if wrapping fails the connection is closed and None returned: no
        reply, and no relay, since the client cannot read anything after it.
        """
        data = self.codec.send_reply(code, host, port)
        if self.gss is not None:
            data = self._protect(data)
            if data is None:
                return None
        self._record_reply(code)
        return data

    def _refuse(self, code: int, reason: CloseReason, detail: str) -> None:
        """Send the failure reply ``code``, then close (RFC 1928 §6)."""
        if self.state is _CLOSED:
            return
        data = self._reply_bytes(code)
        if data is not None and not self.transport.is_closing():
            self.transport.write(data)
        self._close(reason, detail)

    def _end(self, data: bytes, reason: CloseReason, detail: str) -> None:
        """Send a last message that is not a reply (05 FF, 01 01, GSS abort), then close."""
        if data and not self.transport.is_closing():
            self.transport.write(data)
        self._close(reason, detail)

    def _handshake_timeout(self) -> None:
        self.timer = None
        self._close(CloseReason.HANDSHAKE_TIMEOUT, "handshake timeout")

    def _close(self, reason: CloseReason, detail: str) -> None:
        if self.state is _CLOSED:
            return
        self.state = _CLOSED
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
        relay = self.relay
        if relay is not None:
            relay.close(reason.value)
        udp = self.udp
        if udp is not None:
            udp.close()
            log.debug("%s %s closed (%s): %d datagrams up, %d down, %d bytes up, %d down, "
                      "%d dropped", format_peer(self.peer), self._what(), detail,
                      udp.datagrams_up, udp.datagrams_down, udp.bytes_up, udp.bytes_down,
                      udp.dropped)
        self.transport.close()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s closed: %s", format_peer(self.peer), detail)
        if relay is None or not relay.started:  # else the relay reports
            self._report(reason, udp.bytes_up if udp else 0, udp.bytes_down if udp else 0)

    def _report(self, reason: CloseReason, bytes_up: int, bytes_down: int) -> None:
        """The connection ended: release its limits, one record to the observers."""
        server = self.server
        if self.held is not None:
            self.held.owner.release(self.held)
            self.held = None
        if server.metrics is None and server.access_log is None:
            return
        request, udp, peer, dialled = self.request, self.udp, self.peer, self.dialled
        record = CloseRecord(
            client=(peer[0], peer[1]) if peer else None,
            user=self.user,
            command=request.command if request is not None else None,
            host=request.host if request is not None else None,
            port=request.port if request is not None else None,
            dialled=(dialled[0], dialled[1]) if dialled else None,
            reply=self.reply,
            bytes_up=bytes_up,
            bytes_down=bytes_down,
            duration=_monotonic() - self.started,
            reason=reason,
            datagrams_up=udp.datagrams_up if udp is not None else None,
            datagrams_down=udp.datagrams_down if udp is not None else None,
            dropped=udp.dropped if udp is not None else None,
        )
        if server.metrics is not None:
            server.metrics.closed(record)
        if server.access_log is not None:
            server.access_log.write(record)

    def abort(self, reason: str) -> None:
        """Server shutdown: end this connection now, relay or not."""
        if self.pair_id:
            return  # the engine closes its pairs itself
        if self.relay is not None and self.relay.started:
            self.relay.close(reason)
        else:
            self._close(CloseReason(reason), reason)
            self.transport.abort()
