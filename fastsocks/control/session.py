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

The first byte a client sends says what it speaks (``_detected``): 5 is
SOCKS5 (the codec and the stages above), 4 is SOCKS4 or 4a (``socks4``: its
request then joins at DECIDING), an upper-case ASCII letter is an HTTP
method; each listener serves the protocols its settings name
(``Settings.protocols_of``).

Any state can go to CLOSED.  Every failure ends in the reply code the RFCs
ask for (sent by ``_refuse``, the one place a failure reply is written) and
a closed connection; every connection ends in exactly one ``CloseRecord``
for the access log and the metrics.  Timers bound each wait: the whole
negotiation (handshake timeout), the outbound connect (connect timeout),
and the relay's silence (idle timeout).
"""

from __future__ import annotations

from time import monotonic as _monotonic
from typing import Any

from .associate import AssociateStage
from .bind import BindStage
from .connect import ConnectStage
from .decide import DecideStage
from .handoff import HandoffStage
from .http import HttpStage
from .negotiate import NegotiateStage
from .proxyheader import ProxyHeaderStage
from .record import CloseReason, Protocol, State
from .socks4 import Socks4Stage

__all__ = ["Session", "State"]

_CLOSED = State.CLOSED
_NEGOTIATING = State.NEGOTIATING
_GSSAPI = State.GSSAPI
_PROXY_HEADER = State.PROXY_HEADER
_ASSOCIATED = State.ASSOCIATED
_SOCKS5 = Protocol.SOCKS5
_SOCKS4 = Protocol.SOCKS4
_HTTP = Protocol.HTTP


class Session(ProxyHeaderStage, NegotiateStage, Socks4Stage, HttpStage, DecideStage,
              ConnectStage, BindStage, AssociateStage, HandoffStage):
    """One accepted client connection, from greeting to relay hand-over."""

    # fresh: no byte of the client's protocol has come yet (the first one says which).
    __slots__ = ("fresh",)

    # -- asyncio protocol -------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.fresh = True
        self.transport = transport
        self.peer = transport.get_extra_info("peername")
        server = self.server
        # time.monotonic(), not loop.time(): uvloop's clock moves in whole
        # milliseconds, and a loopback handshake takes a fraction of one.
        self.started = _monotonic()
        server.sessions.add(self)
        if server.metrics is not None:
            server.metrics.opened()
        timeout = server.settings.handshake_timeout
        limits = server.limits
        if limits is not None and limits.handshakes.quota:
            # Unfinished handshakes have a quota of their own, and a shorter
            # timeout under pressure (control/handshakes.py).
            shorter = limits.handshakes.enter(self, self.peer[0] if self.peer else None, timeout)
            if shorter is None:
                self._close(CloseReason.LIMIT_REACHED, "limit handshakes reached")
                return
            timeout = shorter
        self.timer = server.loop.call_later(timeout, self._handshake_timeout)
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
        if state is _NEGOTIATING and self.fresh:
            self.fresh = False
            if self._detected(data):
                return
        if state is _PROXY_HEADER:
            self._on_proxy_data(data)
        elif state is _ASSOCIATED or state is _CLOSED:
            return  # a UDP association's TCP connection carries nothing more
        elif self.protocol is _SOCKS4:
            self._on_socks4_data(data)
        elif self.protocol is _HTTP:
            self._on_http_data(data)
        elif self.gss is not None and not self.gss.clear:
            self._on_gss_data(data)
        else:
            # Bytes after the request wait in the codec (trailing_data) for
            # the relay; uvloop may deliver them even while reading is paused.
            self.codec.receive_data(data)
            if state is _NEGOTIATING or state is _GSSAPI:
                self._advance()
            else:  # early bytes for the target (CONNECTING reads for EOF): keep, read no more
                self.transport.pause_reading()

    def _detected(self, data: bytes) -> bool:
        """The first byte says what the client speaks; True when it was handled here.

        5: SOCKS5, on to the codec.  4: SOCKS4 or 4a, to its stage where the
        listener serves it; elsewhere the SOCKS5 codec answers it with a
        SOCKS4 rejection (91), as it always did.  An upper-case ASCII letter
        starts an HTTP method.  Anything else goes to the SOCKS5 codec,
        which refuses it: closed, a protocol error.
        """
        first = data[0]
        served = self.server.settings.protocols_of(self.listener)
        if first == 5:
            if _SOCKS5 in served:
                return False
            # RFC 1928 §3: "no acceptable methods", the one thing a SOCKS5 client reads.
            self._end(b"\x05\xff", CloseReason.PROTOCOL_ERROR,
                      "SOCKS5 is not served on this listener (protocols)")
            return True
        if first == 4 and _SOCKS4 in served:
            self._start_socks4(data)
            return True
        if 0x41 <= first <= 0x5A and _HTTP in served:  # an HTTP method (control/http.py)
            self._start_http(data)
            return True
        return False

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

    def abort(self, reason: str) -> None:
        """Server shutdown: end this connection now, relay or not."""
        if self.pair_id:
            return  # the engine closes its pairs itself
        if self.relay is not None and self.relay.started:
            self.relay.close(reason)
        else:
            self._close(CloseReason(reason), reason)
            self.transport.abort()
