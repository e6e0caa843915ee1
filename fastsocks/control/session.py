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

Where the splice engine negotiates (runtime/listener.py), a session has no
transport until it needs one: the engine reads the greeting and the
request, and a CONNECT arrives here as the bytes of both, replayed through
the codec (the engine's X'05 00' already sent: ``answered``); its refusal or
its upstream goes back to the engine (``Held``).  What the engine hands back
goes on over an ordinary transport (``_adopt``), from the same bytes.  Where
the engine also accepts, the session is made with the connection's first
report (``from_engine``), and where it dials too, the session only records.

Any state can go to CLOSED.  Every failure ends in the reply code the RFCs
ask for (sent by ``_refuse``, the one place a failure reply is written) and
a closed connection; every connection ends in exactly one ``CloseRecord``
for the access log and the metrics.  Timers bound each wait: the whole
negotiation (handshake timeout), the outbound connect (connect timeout),
and the relay's silence (idle timeout).
"""

from __future__ import annotations

import asyncio
import socket
from time import monotonic as _monotonic
from typing import Any

from .associate import AssociateStage
from .bind import BindStage
from .connect import ConnectStage
from .decide import DecideStage
from .handoff import HandoffStage, Held, Returned, dialled_request, relay_reason
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
_RELAYING = State.RELAYING
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
        adopted = type(self.transport) is Held
        self.transport = transport
        if adopted:  # accepted raw (``accepted``): the handshake goes on here
            replay, self.replay = self.replay, b""
            self.pair_id = 0
            if replay:
                self.data_received(replay)
            return
        self._opened(transport.get_extra_info("peername"))

    def accepted(self, fd: int, peer: Any, engine: Any, negotiate: bool = True) -> None:
        """A connection accepted raw (runtime/listener.py): the engine negotiates.

        The session is opened as ``connection_made`` opens it (limits,
        handshake timer, metrics), on a ``Held`` transport, and the engine
        reads the handshake: a CONNECT comes back through
        ``_on_engine_event`` to be decided here, anything else with its
        descriptor, to go on over an ordinary transport.  Without
        ``negotiate`` (the client spoke first, not SOCKS5) it goes on over
        one at once.
        """
        held = self.transport = Held(engine, fd, peer)
        self._opened(peer)
        if self.closed:
            return
        if not negotiate:
            self.task = asyncio.ensure_future(self._adopt(fd))
            return
        server = self.server
        try:
            self.pair_id = held.id = engine.negotiate(
                fd, server.engine_greets, self._on_engine_event, server.engine_dials,
                server.settings.idle_timeout)
        except (OSError, MemoryError) as exc:
            self._close(CloseReason.ERROR, f"the engine could not take the connection: {exc}")

    def from_engine(self, engine: Any, pair_id: int, fd: int, peer: Any, age: float,
                    dialling: bool) -> Any:
        """A connection the engine accepted and negotiated, at its first report.

        Opened as ``accepted`` opens one, ``age`` seconds ago; where the
        engine is dialling, the handshake is over and takes no handshake
        slot or timer.  Returns the callback for the engine's reports.
        """
        held = self.transport = Held(engine, fd, peer)
        self.pair_id = held.id = pair_id
        self._opened(peer, age, dialling)
        return self._on_engine_event

    def _on_engine_event(self, reason: str, data: bytes, answered: int, bytes_up: int,
                         bytes_down: int, err: int, connect_us: int) -> None:
        """What the engine reports of a connection it negotiates (``Engine.negotiate``)."""
        if reason == "handback":
            held = self.transport
            held.id = 0  # the descriptor is the loop's again: a close now closes it
            if self.closed:  # before (a limit, a timeout): its ``end()`` found it handed back
                socket.close(held.fd)
            else:
                self.replay, self.answered = data, answered
                self.task = asyncio.ensure_future(self._adopt(held.fd))
            return
        if self.closed:
            return
        if reason == "request":
            self.answered = answered
            self.data_received(data)
        elif reason == "dialling":
            self._dialling(data, answered)
        elif self.state is _RELAYING:  # dial()ed: connected, refused or ended as any pair
            self._on_engine_dialled(bytes_up, bytes_down, reason, err, connect_us)
        elif reason == "client_closed":
            self._close(CloseReason.CLIENT_CLOSED, "client closed during handshake")
        else:
            self._close(relay_reason(reason), f"{reason} during handshake")

    def _dialling(self, data: bytes, answered: int) -> None:
        """The engine dials the request's IP literal itself (``Server.engine_dials``),
        or the one address of a name it keeps (``Engine.remember``).

        Nothing is left to decide: the request (and the user of a login the
        engine answered) is noted for the access log and the metrics, the
        handshake is over, and the session waits for the engine's report as
        after ``_dial_in_engine``.
        """
        user, request, self.dialled = dialled_request(data, answered)
        if user is not None:
            self.user = user
        self.request = request
        self._handshake_done()
        self.codec = None  # a refusal after a failed connect is encoded on its own
        self.state = _RELAYING
        self.fd = self.transport.fd
        metrics = self.server.metrics
        if metrics is not None:
            metrics.requested(request.command, _SOCKS5)
            self.handed = _monotonic() - self.started

    async def _adopt(self, fd: int) -> None:
        """An ordinary transport for a connection the engine handed back (or never took)."""
        if self.closed:  # meanwhile (its handshake timed out): ``Held`` closed it
            return
        sock = socket.socket(fileno=fd)
        self.transport.release()  # the descriptor is ``sock``'s now, closed by it alone
        try:
            await self.server.loop.connect_accepted_socket(lambda: self, sock)
            if self.task is asyncio.current_task():  # not a stage's own (BIND's) since
                self.task = None
        except OSError as exc:
            sock.close()
            self.transport = Returned(-1)
            self._close(CloseReason.ERROR, f"no transport for the connection: {exc}")
        except BaseException:
            sock.close()
            raise

    def _opened(self, peer: Any, age: float = 0.0, shaken: bool = False) -> None:
        """A new connection (``age`` seconds old; ``shaken``: its handshake is over)."""
        self.fresh = True
        self.peer = peer
        server = self.server
        # time.monotonic(), not loop.time(): uvloop's clock moves in whole
        # milliseconds, and a loopback handshake takes a fraction of one.
        self.started = _monotonic() - age
        server.sessions.add(self)
        if server.metrics is not None:
            server.metrics.opened()
        if shaken:
            self._peer_known()
            return
        timeout = server.settings.handshake_timeout - age
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
