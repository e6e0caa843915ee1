"""The hand-off: the success reply, then both sockets to the data plane.

With the splice engine (Linux, compiled build) both descriptors go to its
thread and the reply travels with them: the engine sends it first, then the
bytes the client sent early.  A CONNECT to an IP literal, or to a name
with one cached address, goes there before its connect is done
(``connect.py``): the engine waits for it, and a failure comes back here
(``_on_engine_dialled``) with the client's descriptor, which ``Returned``
lends the refusal.  Elsewhere, and under
GSSAPI wrapping (RFC 1961 §5, MTYP 3 both ways), an asyncio protocol pair
relays on the loop.  Either way the relay reports how the connection
ended, and the session reports it once to the observers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from time import monotonic as _monotonic
from typing import Any

from ..codec import Request, encode_reply, parse_reply
from ..constants import Reply, Sent
from ..net.address import format_peer
from ..net.resolver import ConnectError, reply_for_errno
from ..relay import Relay
from .gssrelay import GssRelay
from .limits import TokenBuckets
from .core import SessionCore, describe
from .record import CloseReason, CloseRecord, Protocol, State

__all__ = ["HandoffStage", "Held", "Returned", "dialled_request", "relay_reason", "report_quiet"]

log = logging.getLogger("fastsocks.session")

_REASONS = {reason.value: reason for reason in CloseReason}
_SOCKS5 = Protocol.SOCKS5


def relay_reason(text: str) -> CloseReason:
    """A relay's reason token (the engine's REASONS, the protocol relays') as a CloseReason."""
    return _REASONS.get(text, CloseReason.ERROR)


def dialled_request(data: bytes, answered: int) -> tuple[str | None, Any, tuple[str, int]]:
    """The user, the request and the address dialled, in the handshake the
    engine read and dialled itself.

    ``data`` is the greeting, the RFC 1929 login where the engine answered
    one (``answered`` ``Sent.LOGIN``), and the request; after a request by
    name (one the engine keeps, ``Engine.remember``), the address it
    dialled: ATYP X'01' or X'04' and the address.
    """
    at = 2 + data[1]  # past the greeting
    user = None
    if answered == Sent.LOGIN:  # past VER ULEN UNAME PLEN PASSWD
        end = at + 2 + data[at + 1]
        user = data[at + 2:end].decode("utf-8", "replace")
        at = end + 1 + data[end]
    # A request has the layout of a reply (RFC 1928 §4 and §6): VER CMD RSV
    # ATYP ADDR PORT, so the codec's reply parser reads it, the host written
    # as everywhere else.
    parsed = parse_reply(data[at:])
    request = Request(parsed.rep, parsed.atyp, parsed.host, parsed.port)
    dialled = data[at + parsed.length:]
    if not dialled:
        return user, request, (parsed.host, parsed.port)
    family = socket.AF_INET6 if dialled[0] == 4 else socket.AF_INET
    return user, request, (socket.inet_ntop(family, dialled[1:]), parsed.port)


def report_quiet(server: Any, peer: Any, data: bytes, answered: int, bytes_up: int,
                 bytes_down: int, reason: str, handshake: float, duration: float) -> None:
    """A connection the engine accepted, dialled and ended before the loop heard of it.

    The engine's one report of it (``Engine.listen``'s ``ended``): what a
    session would have recorded over its life (the request, the succeeded
    reply and its handshake time, the end), for the metrics, the access
    log and the debug log, at once and without a session.
    """
    metrics, access_log = server.metrics, server.access_log
    debug = log.isEnabledFor(logging.DEBUG)
    if metrics is None and access_log is None and not debug:
        return
    user, request, dialled = dialled_request(data, answered)
    record = CloseRecord(
        client=(peer[0], peer[1]) if peer else None, user=user, command=request.command,
        host=request.host, port=request.port, dialled=dialled,
        reply=Reply.SUCCEEDED, bytes_up=bytes_up, bytes_down=bytes_down, duration=duration,
        reason=relay_reason(reason))
    if metrics is not None:
        metrics.opened()
        metrics.requested(request.command, _SOCKS5)
        metrics.replied(Reply.SUCCEEDED, handshake)
        metrics.closed(record)
    if access_log is not None:
        access_log.write(record)
    if debug:
        _log_closed(peer, request, reason, bytes_up, bytes_down, duration)


def _log_closed(peer: Any, request: Any, reason: str, bytes_up: int, bytes_down: int,
                duration: float) -> None:
    log.debug("%s %s closed (%s): %d bytes up, %d bytes down, %.3f s", format_peer(peer),
              describe(request), reason, bytes_up, bytes_down, duration)


class Returned:
    """The client's socket, back from the engine after a failed connect.

    What ``SessionCore._refuse`` and ``_close`` need of a transport: the
    refusal is a few bytes into an empty socket buffer, so one non-blocking
    write takes it.  Bytes the client sent early are read and dropped before
    the close, so that it sends a FIN, not an RST that could destroy the
    refusal before the client reads it.
    """

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def is_closing(self) -> bool:
        return self.fd < 0

    def write(self, data: bytes) -> None:
        try:
            os.write(self.fd, data)
        except OSError:
            pass  # the client is gone: nothing to tell it

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd < 0:
            return
        try:
            for _ in range(16):  # bounded: a client that keeps sending gets its RST
                if not os.read(fd, 65536):
                    break
        except OSError:
            pass  # EAGAIN: nothing more queued
        os.close(fd)

    abort = close

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


class Held:
    """The client's socket while the engine negotiates it (``Session.accepted``).

    What the stages need of a transport before the relay: a refusal is
    kept and goes out with the close, which the engine carries out
    (``Engine.end``: the bytes, unread input dropped, the close).  Before
    the engine has the descriptor (``id`` 0: refused at once by a limit)
    it is closed here, as after the engine handed it back (``id`` 0 again).
    """

    __slots__ = ("engine", "fd", "id", "peer", "out", "closing")

    def __init__(self, engine: Any, fd: int, peer: Any) -> None:
        self.engine = engine
        self.fd = fd
        self.id = 0
        self.peer = peer
        self.out = b""
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing

    def write(self, data: bytes) -> None:
        self.out += data

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        if self.id:
            self.engine.end(self.id, self.out)
        else:
            socket.close(self.fd)

    abort = close

    def release(self) -> None:
        """The descriptor has another owner now (a transport): closing is its to do."""
        self.closing = True

    def pause_reading(self) -> None:
        pass  # the engine reads nothing more until dial()

    def resume_reading(self) -> None:
        pass  # ... and watches for the client leaving meanwhile

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default


class HandoffStage(SessionCore):
    """The RELAYING state of a ``Session``."""

    __slots__ = ()

    def _negotiated(self) -> None:
        """The negotiation is over: free its buffers (an HTTP tunnel's parser, ~3 KiB)."""
        if self.http is not None:
            self.http.release()
        self.codec = self.http = None

    def _relay(self, sock: Any, reply_host: str, reply_port: int) -> None:
        """Reply with (reply_host, reply_port), then relay the client and ``sock``."""
        if self.closed:
            sock.close()
            return
        engine = self._engine_relay()
        if engine is not None:
            self._to_engine(engine, sock, reply_host, reply_port)
            return
        wrapped = self.gss is not None and self.gss.wraps  # RFC 1961 §5: MTYP 3 both ways
        self.reply_to = (reply_host, reply_port)
        server = self.server
        if wrapped:
            self.relay = GssRelay(server.loop, self._on_upstream, self._on_relay_closed,
                                  server.settings.idle_timeout, self.gss,
                                  format_peer(self.peer))
        else:
            self.relay = Relay(server.loop, self._on_upstream, self._on_relay_closed,
                               server.settings.idle_timeout)
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
            self._refuse(Reply.GENERAL_FAILURE, CloseReason.GENERAL_FAILURE,
                         f"{self._what()}: {exc}")

    def _on_upstream(self, relay: Any) -> None:
        """The outbound transport exists: reply, then hand both to the relay."""
        if self.closed:
            relay.upstream.transport.abort()
            return
        reply = self._reply_bytes(Reply.SUCCEEDED, *self.reply_to)
        if reply is None:  # closed: the reply could not be wrapped
            relay.upstream.transport.abort()
            return
        self.transport.write(reply)
        pending = self._take_pending()
        self._negotiated()
        self.state = State.RELAYING
        relay.start(self.transport, pending)

    def _engine_relay(self) -> Any:
        """The splice engine, where it may take this connection; else None.

        Not under GSSAPI wrapping (RFC 1961 §5: MTYP 3 both ways), and only
        with nothing left in the client's write buffer (the engine writes first).
        """
        engine = self.server.engine
        if engine is None or (self.gss is not None and self.gss.wraps) \
                or self.transport.get_write_buffer_size():
            return None
        return engine

    def _to_engine(self, engine: Any, sock: Any, reply_host: str, reply_port: int,
                   connect_timeout: float = 0.0) -> None:
        try:
            self._hand_to_engine(engine, sock, reply_host, reply_port, connect_timeout)
        except OSError as exc:  # e.g. EMFILE from dup(): answer, don't crash
            sock.close()
            self._refuse(Reply.GENERAL_FAILURE, CloseReason.GENERAL_FAILURE,
                         f"{self._what()}: hand-over failed: {exc}")

    def _hand_to_engine(self, engine: Any, sock: socket.socket, reply_host: str,
                        reply_port: int, connect_timeout: float) -> None:
        """Give both descriptors to the splice engine; the reply goes with them.

        The client transport's write buffer is empty (checked by the caller),
        so nothing queued in it is lost: the engine sends the reply, then the
        bytes the client sent early go to the target before anything else.
        ``connect_timeout``: ``sock``'s connect is still in progress (an IP
        literal's CONNECT): the reply waits for it in the engine, and is
        recorded when the engine reports the pair connected.
        """
        transport = self.transport
        negotiated = type(transport) is Held  # the engine has the client already
        client_fd = (transport.fd if negotiated
                     else os.dup(transport.get_extra_info("socket").fileno()))
        pending = self._take_pending()
        if connect_timeout and self.protocol is _SOCKS5:
            # The reply may yet be a refusal: encoded outside the conversation.
            self.codec = None
            reply = encode_reply(Reply.SUCCEEDED, reply_host, reply_port)
        else:
            reply = self._encode_reply(Reply.SUCCEEDED, reply_host, reply_port)
        held = self.held
        throttles = held.owner.throttles(held, self.user, engine.throttle) if held else ()
        # The loop's transport socket is non-blocking (and its dup with it:
        # they share the file status); the outbound one says so itself.
        nonblocking = not sock.getblocking()
        idle = self.server.settings.idle_timeout
        if negotiated:
            engine.dial(self.pair_id, sock.detach(), pending, reply, idle, throttles,
                        connect_timeout)
        else:
            try:
                upstream_fd = sock.detach()
                callback = self._on_engine_dialled if connect_timeout else self._on_engine_closed
                self.pair_id = engine.add(client_fd, upstream_fd, pending, reply, idle, callback,
                                          throttles, nonblocking=nonblocking,
                                          connect_timeout=connect_timeout)
            except BaseException:
                os.close(client_fd)
                raise
        self._negotiated()
        self.task = None
        self.state = State.RELAYING
        if connect_timeout:
            # Kept for a refusal (the engine hands the descriptor back), and
            # the handshake's time so far, to which the connect's is added.
            self.fd = client_fd
            if self.server.metrics is not None:
                self.handed = _monotonic() - self.started
        else:
            self._record_reply(Reply.SUCCEEDED)  # the engine sends it first thing
        # The engine holds a duplicate; closing the transport's own descriptor
        # removes it from the event loop without touching the connection.
        if not negotiated:
            transport.abort()

    def _on_engine_closed(self, bytes_up: int, bytes_down: int, reason: str) -> None:
        self._relay_ended(reason, bytes_up, bytes_down)

    def _on_engine_dialled(self, bytes_up: int, bytes_down: int, reason: str, err: int,
                           connect_us: int) -> None:
        """A pair handed over while connecting: connected, or ended (see ``_hand_to_engine``)."""
        if reason == "connected":  # the reply went out: counted now, the pair goes on
            self._record_reply(Reply.SUCCEEDED, self.handed + connect_us / 1e6)
            return
        if reason == "connect_failed" or reason == "connect_timeout":
            # The client's descriptor is back, open: refused as on the loop.
            self.pair_id = 0
            self.transport = Returned(self.fd)
            self.state = State.CONNECTING
            dialled, self.dialled = self.dialled, None  # "dialled" means connected
            where = f"{dialled[0]} port {dialled[1]}"
            if reason == "connect_timeout":
                error = ConnectError(Reply.HOST_UNREACHABLE, f"{where}: connect timed out", True)
            else:
                error = ConnectError(reply_for_errno(err), f"{where}: {os.strerror(err)}")
            self._connect_failed(error)
            return
        if reason == "client_closed":  # it left before the connect was done: no reply
            self._close(CloseReason.CLIENT_CLOSED, "client closed during handshake")
            return
        if connect_us >= 0 and self.reply is None:  # it ended before its "connected" report
            self._record_reply(Reply.SUCCEEDED, self.handed + connect_us / 1e6)
        self._relay_ended(reason, bytes_up, bytes_down)

    def _on_relay_closed(self, relay: Any) -> None:
        if not relay.started:
            self._close(CloseReason.UPSTREAM_CLOSED, "target closed before the relay started")
            return
        self._relay_ended(relay.reason, relay.bytes_up, relay.bytes_down)

    def _relay_ended(self, reason: str, bytes_up: int, bytes_down: int) -> None:
        self.state = State.CLOSED
        self.server.sessions.discard(self)
        if log.isEnabledFor(logging.DEBUG):
            _log_closed(self.peer, self.request, reason, bytes_up, bytes_down,
                        _monotonic() - self.started)
        self._report(relay_reason(reason), bytes_up, bytes_down)
