"""What every stage of a session shares: its attributes, its replies, its end.

``SessionCore`` holds one connection's state (``state`` is the only state
flag) and the few ways a connection can answer and end: a reply recorded as
sent (``_reply_bytes``), a failure reply then close (``_refuse``, the one
place a failure reply is written), a last non-reply message then close
(``_end``), and ``_close``, which leaves exactly one ``CloseRecord`` for the
observers.  The stages (``proxyheader``, ``negotiate``, ``decide``,
``connect``, ``bind``, ``associate``, ``handoff``) subclass it; ``Session``
combines them.
"""

from __future__ import annotations

import asyncio
import logging
from time import monotonic as _monotonic
from typing import TYPE_CHECKING, Any

from .. import codec
from ..constants import Command
from ..net.address import format_peer
from .record import CloseReason, CloseRecord, Protocol, State

if TYPE_CHECKING:
    from ..runtime.server import Server
    from ..net.resolver import ConnectError
    from .udp import UdpAssociation

__all__ = ["SessionCore", "describe"]

log = logging.getLogger("fastsocks.session")

_ServerCodec = codec.ServerCodec
_CLOSED = State.CLOSED
_LOST = asyncio.Protocol()  # the protocol of a transport whose session has ended
_SOCKS5 = Protocol.SOCKS5
_SOCKS4 = Protocol.SOCKS4


def describe(request: Any) -> str:
    """A request as the logs name it: "CONNECT 192.0.2.1 port 80"."""
    return f"{Command(request.command).name} {request.host} port {request.port}"


class SessionCore(asyncio.Protocol):
    """One client connection's state, replies and ending; the stages add the rest."""

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
        "shaking",
        "protocol",
        "early",
        "http",
        "fd",
        "handed",
        "replay",
        "answered",
    )

    def __init__(self, server: Server, listener: tuple[str, int] | None = None) -> None:
        self.server = server
        self.state = State.NEGOTIATING
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
        # What this connection counts against the limits (None: no limits), and
        # the handshake slots it holds until its request is in (control/handshakes.py).
        self.held: Any = None
        self.shaking: Any = None
        # What the client speaks (SOCKS5 unless its first byte says otherwise),
        # and, for the protocols whose parser is not the SOCKS5 codec, the bytes
        # that came after the request (they go to the target first).
        self.protocol = Protocol.SOCKS5
        self.early = b""
        # HTTP: the client's requests as llhttp parses them (control/http.py Inbound).
        self.http: Any = None
        # A CONNECT handed to the engine while connecting: the client's
        # descriptor there, and the seconds from accept to the hand-over.
        self.fd = -1
        self.handed = 0.0
        # The engine negotiated (runtime/listener.py): the bytes it read, for
        # the transport that takes over, and what it sent already (a Sent).
        self.replay = b""
        self.answered = 0

    @property
    def closed(self) -> bool:
        return self.state is _CLOSED

    if TYPE_CHECKING:
        # Each stage's entry points, named here so that the stages can call
        # one another through ``self`` (Session's method order resolves them).
        def _peer_known(self) -> None: ...
        def _advance(self) -> None: ...
        def _protect(self, data: bytes) -> bytes | None: ...
        def _on_request(self, request: Any) -> None: ...
        def _allowed(self, addresses: list[Any]) -> list[Any]: ...
        def _deny(self, denial: Any, address: str | None = None) -> None: ...
        def _start_connect(self, request: Any) -> None: ...
        def _connect_failed(self, error: ConnectError) -> None: ...
        def _sources(self) -> tuple[Any, ...]: ...
        async def _chain(self, host: str) -> None: ...
        async def _bind(self, request: Any) -> None: ...
        async def _udp_associate(self, request: Any) -> None: ...
        def _relay(self, sock: Any, reply_host: str, reply_port: int) -> None: ...
        def _engine_relay(self) -> Any: ...
        def _to_engine(self, engine: Any, sock: Any, reply_host: str, reply_port: int,
                       connect_timeout: float = 0.0) -> None: ...
        def _forward(self, request: Any) -> None: ...
        # The other protocols' replies (control/socks4.py, control/http.py).
        def _socks4_reply(self, code: int, host: str, port: int) -> bytes: ...
        def _http_reply(self, code: int, reason: CloseReason | None) -> bytes: ...

    # -- replies and endings ------------------------------------------------

    def _what(self) -> str:
        return describe(self.request)

    def _record_reply(self, code: int, handshake: float | None = None) -> None:
        """A reply to the request went out (access log, metrics).

        ``handshake``: the seconds from accept to this reply, where it went
        out earlier than now (the engine's, after its connect).
        """
        first = self.reply is None
        self.reply = code
        metrics = self.server.metrics
        if metrics is not None and first:
            metrics.replied(code, _monotonic() - self.started if handshake is None else handshake)
        elif metrics is not None:
            metrics.replied(code, None)

    def _encode_reply(self, code: int, host: str = "0.0.0.0", port: int = 0,
                      reason: CloseReason | None = None) -> bytes:
        """The reply to the request in the client's protocol.

        ``code`` is always a SOCKS5 reply code (RFC 1928 §6): the control
        plane decides in one vocabulary, and each protocol words it (SOCKS4:
        90-93; HTTP: a status line, ``reason`` telling a timeout's 504 apart).
        """
        protocol = self.protocol
        if protocol is _SOCKS5:
            if self.codec is None:  # a refusal after the engine's connect failed
                return codec.encode_reply(code, host, port)
            return self.codec.send_reply(code, host, port)
        if protocol is _SOCKS4:
            return self._socks4_reply(code, host, port)
        return self._http_reply(code, reason)

    def _take_pending(self) -> bytes:
        """The bytes the client sent after its request, for the target, first."""
        if self.protocol is _SOCKS5:
            return self.codec.trailing_data
        early, self.early = self.early, b""
        return early

    def _reply_bytes(self, code: int, host: str = "0.0.0.0", port: int = 0,
                     reason: CloseReason | None = None) -> bytes | None:
        """The reply (RFC 1928 §6) as the client must get it, recorded as sent.

        Under GSSAPI integrity or confidentiality it is wrapped (RFC 1961 §5);
        if wrapping fails the connection is closed and None returned: no
        reply, and no relay, since the client cannot read anything after it.
        """
        data = self._encode_reply(code, host, port, reason)
        if self.gss is not None:
            wrapped = self._protect(data)
            if wrapped is None:
                return None
            data = wrapped
        self._record_reply(code)
        return data

    def _refuse(self, code: int, reason: CloseReason, detail: str) -> None:
        """Send the failure reply ``code``, then close (RFC 1928 §6)."""
        if self.state is _CLOSED:
            return
        data = self._reply_bytes(code, reason=reason)
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

    def _cut_handshake(self) -> None:
        """Too many unfinished handshakes, and this one is past the short timeout."""
        self._close(CloseReason.HANDSHAKE_TIMEOUT, "handshake timeout (handshake slots under "
                    "pressure)")

    def _handshake_done(self) -> None:
        """The request is in: no more handshake timer, and the handshake slot is free."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.shaking is not None:
            self.shaking.leave(self)

    def _close(self, reason: CloseReason, detail: str) -> None:
        if self.state is _CLOSED:
            return
        self.state = _CLOSED
        self.server.sessions.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.shaking is not None:
            self.shaking.leave(self)
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

    def _let_go(self) -> None:
        """Break what would keep an ended session for the collector's full pass,
        so that reference counting frees it: llhttp's parser, whose callbacks
        are its ``Inbound``'s bound methods, and the transport while this
        session is its protocol.  uvloop's transport keeps its protocol's
        ``data_received`` after the connection is lost, and uvloop 0.23 was
        seen not to call ``connection_lost`` at all for transports adopted
        from the engine whose sessions answered an HTTP 400 or 502 and
        closed; a stateless stand-in takes the session's place (a closed
        session has nothing left to hear)."""
        if self.http is not None:
            self.http.release()
        transport = self.transport
        if getattr(transport, "get_protocol", None) is not None \
                and transport.get_protocol() is self:
            transport.set_protocol(_LOST)

    def _report(self, reason: CloseReason, bytes_up: int, bytes_down: int) -> None:
        """The connection ended: release its limits and the cycles it is in,
        one record to the observers."""
        server = self.server
        if self.held is not None:
            self.held.owner.release(self.held)
            self.held = None
        self._let_go()
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
            protocol=self.protocol,
            userid=request.userid if request is not None and self.protocol is _SOCKS4 else None,
        )
        if server.metrics is not None:
            server.metrics.closed(record)
        if server.access_log is not None:
            server.access_log.write(record)
