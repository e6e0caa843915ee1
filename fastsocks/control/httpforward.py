"""Forwarding HTTP/1.1 absolute-form requests to their origin (RFC 9110 §7.6, RFC 9112).

A client of an HTTP proxy sends ``GET http://host/path HTTP/1.1``.  Each
request is judged like any other (``Command.HTTP``: the limits, the rules,
the authorize hook), then sent to the origin in origin-form
(``GET /path HTTP/1.1`` with ``Host``), and the response is sent back:

* **one origin at a time**: a connection is dialled by the same Connector
  (or upstream chaining) as CONNECT, and kept for the next request when it
  goes to the same origin and both sides allow it (keep-alive); another
  origin closes it and dials anew;
* **hop-by-hop fields** (RFC 9110 §7.6.1) are removed both ways:
  ``Connection`` and the fields it names, ``Keep-Alive``,
  ``Proxy-Connection``, ``Proxy-Authorization``, ``Proxy-Authenticate``,
  ``TE``, ``Trailer``, ``Transfer-Encoding``, ``Upgrade``; ``Via: 1.1
  fastsocks`` is added (§7.6.3); a body is re-framed: ``Content-Length``
  passes, chunked is parsed and chunked again, a body that ends at the
  origin's close is chunked for an HTTP/1.1 client (so its connection
  stays open) and ends with the connection for an HTTP/1.0 one;
* **streamed with backpressure**: body bytes go on as they come; a full
  origin pauses the client's reading, a full client pauses the origin's;
  no body is ever held whole (at most 64 KiB queued per direction);
* **in order**: pipelined requests are answered one after the other;
* **errors** are answers while no byte of a response went out (400, 403,
  502, 504), else the client's connection is closed mid-response.

The connection is idle-timed like a relay (``idle_timeout``): no byte either
way for that long, between requests too, closes it.  It leaves one access
log record, with the last request and all the bytes.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from ..constants import Command, Reply
from ..net.address import format_peer
from .httpparse import END, HttpError, HttpRequest, Inbound, error_response, request_head
from .httporigin import HIGH, Origin
from .record import CloseReason, State

__all__ = ["Forwarder"]

log = logging.getLogger("fastsocks.session")

_MAX_EVENTS = 32  # pipelined events queued before the client's reading pauses

_RELAYING = State.RELAYING
_CONNECTING = State.CONNECTING


class Forwarder:
    """One client connection's forwarded requests; stands in ``session.relay``.

    Like a relay it ``close``\\ s with a reason and reports the bytes once
    (``started``: it reports, not the session).
    """

    __slots__ = ("session", "inbound", "origin", "request", "started", "closed", "busy",
                 "sending", "request_done", "response_done", "up_paused", "close_after",
                 "answered", "active", "bytes_up", "bytes_down")

    def __init__(self, session: Any, inbound: Inbound) -> None:
        self.session = session
        self.inbound = inbound
        self.origin: Origin | None = None
        self.request: HttpRequest | None = None
        self.started = False
        self.closed = False
        self.busy = False  # a request is in: until it is sent and answered
        self.sending = False  # its head went to the origin: body bytes may follow
        self.request_done = False
        self.response_done = False
        self.up_paused = False  # the origin's write buffer is full
        self.close_after = False  # the response's framing ends the client's connection
        self.answered = False  # a response head went to the client for this request
        self.active = True  # a byte moved since the idle timer last looked
        self.bytes_up = 0
        self.bytes_down = 0

    # -- the client's requests, in order ---------------------------------------

    def pump(self) -> None:
        """Take the client's events as far as the origin and the order allow."""
        self.active = True
        inbound = self.inbound
        events = inbound.events
        session = self.session
        while events and not self.closed and not session.closed:
            event = events[0]
            kind = type(event)
            if kind is HttpRequest:
                if self.busy:
                    break
                events.popleft()
                self._next(event)
                continue
            if kind is HttpError:
                if event.in_body and self.busy and not self.request_done:
                    self._broken(f"bad request body: {event.text}")
                    return
                if self.busy:
                    break
                events.popleft()
                session._http_error(event)
                return
            if not self.sending or self.up_paused:
                break
            events.popleft()
            origin = self.origin
            if event is END:
                self.request_done = True
                if self.request is not None and self.request.chunked and origin is not None:
                    origin.write(b"0\r\n\r\n")  # RFC 9112 §7.1: the last chunk, no trailers
                self._maybe_done()
            else:
                inbound.queued -= len(event)
                if origin is not None:
                    origin.send_body(event)
        self._flow()

    def _flow(self) -> None:
        """Read from the client while there is room for what it sends."""
        session = self.session
        if self.closed or session.closed:
            return
        inbound = self.inbound
        if (session.state is _RELAYING or session.state is _CONNECTING) \
                and inbound.queued <= HIGH and len(inbound.events) <= _MAX_EVENTS \
                and not inbound.stopped and not inbound.tunnel:
            session.transport.resume_reading()
        else:
            session.transport.pause_reading()

    def _next(self, request: HttpRequest) -> None:
        """A request after the first on this connection: judged like the first."""
        session = self.session
        if request.command != Command.HTTP:  # a CONNECT after forwarded requests: the tunnel takes over
            self._detach()
            session.early = request.early
            self.inbound.events.clear()
        elif not session._http_same_credentials(request):
            return
        self._begin(request)
        session.request = request
        session.state = State.DECIDING
        session.transport.pause_reading()
        server = session.server
        if server.metrics is not None:
            server.metrics.requested(request.command, session.protocol)
        policy = server.policy
        if policy is not None and not session._admit(policy, request):
            return
        if server.authorize is not None:
            session.task = asyncio.ensure_future(session._authorize(server.authorize, request))
            return
        session._dispatch(request)

    def _begin(self, request: HttpRequest) -> None:
        self.request = request
        self.busy = True
        self.sending = self.request_done = self.response_done = False
        self.answered = self.close_after = False

    def dispatch(self, request: HttpRequest) -> None:
        """The request is allowed: to the origin kept from before, or to a new one."""
        if self.request is not request:
            self._begin(request)
        session = self.session
        rule = session.rule
        via = rule.upstream if rule is not None else None
        key = (request.host.lower(), request.port, via)
        origin = self.origin
        if origin is not None:
            if origin.key == key and origin.idle:
                session.state = _RELAYING
                self._send_head()
                return
            origin.close()
            self.origin = None
        session.state = _CONNECTING
        if via is not None:
            session.task = asyncio.ensure_future(session._chain(request.host))
        else:
            session._start_connect(request)

    def connected(self, sock: Any) -> None:
        """The origin (or the upstream's tunnel to it) is connected."""
        session = self.session
        request = self.request
        assert request is not None
        rule = session.rule
        origin = self.origin = Origin(self, (request.host.lower(), request.port,
                                             rule.upstream if rule is not None else None))
        session.task = asyncio.ensure_future(self._attach(sock, origin))

    async def _attach(self, sock: Any, origin: Origin) -> None:
        session = self.session
        if not isinstance(sock, socket.socket):  # the Connector's plain _socket.socket
            sock = socket.socket(sock.family, sock.type, fileno=sock.detach())
        try:
            await session.server.loop.create_connection(lambda: origin, sock=sock)
        except OSError as exc:
            sock.close()
            session._refuse(Reply.GENERAL_FAILURE, CloseReason.GENERAL_FAILURE,
                            f"{session._what()}: {exc}")
            return
        session.task = None

    def origin_ready(self, origin: Origin) -> None:
        if self.closed or origin is not self.origin:
            origin.close()
            return
        if not self.started:
            self.started = True
            session = self.session
            session.timer = session.server.loop.call_later(
                session.server.settings.idle_timeout, self._tick)
        self.session.state = _RELAYING
        self._send_head()

    def _send_head(self) -> None:
        request, origin = self.request, self.origin
        assert request is not None and origin is not None
        origin.begin(request)
        origin.write(request_head(request))
        self.sending = True
        self.pump()

    # -- the origin's responses -----------------------------------------------

    def client_write(self, data: bytes) -> None:
        self.active = True
        self.bytes_down += len(data)
        self.session.transport.write(data)

    def response_complete(self) -> None:
        self.response_done = True
        self._maybe_done()

    def _maybe_done(self) -> None:
        if not (self.request_done and self.response_done):
            return
        self.busy = self.sending = False
        request = self.request
        origin = self.origin
        if origin is not None and not origin.keep:
            origin.close()
            self.origin = None
        if self.close_after or request is None or not request.keep_alive:
            # The last request (the client's Connection: close, HTTP/1.0, or a
            # body that ended with the origin's connection): close once sent.
            self.session._close(CloseReason.EOF, "HTTP: the last response is sent")
            return
        self.pump()

    def origin_failed(self, why: str) -> None:
        """The origin broke off: an error answer when none began, else the client is cut."""
        session = self.session
        if self.closed or session.closed:
            return
        if log.isEnabledFor(logging.INFO):
            log.info("%s %s: origin: %s", format_peer(session.peer), session._what(), why)
        if self.busy and not self.answered:
            session._refuse(Reply.GENERAL_FAILURE, CloseReason.UPSTREAM_CLOSED, why)
        else:
            session._close(CloseReason.UPSTREAM_CLOSED, f"HTTP origin: {why}")

    def origin_gone(self, origin: Origin) -> None:
        """A kept connection the origin closed while no request used it."""
        if origin is self.origin:
            self.origin = None

    def _broken(self, why: str) -> None:
        session = self.session
        log.info("%s HTTP: %s", format_peer(session.peer), why)
        if self.answered:
            session._close(CloseReason.PROTOCOL_ERROR, why)
        else:
            session._end(error_response(400, why), CloseReason.PROTOCOL_ERROR, why)

    # -- flow control, time, the end ------------------------------------------------

    def origin_paused(self, paused: bool) -> None:
        self.up_paused = paused
        if not paused:
            self.pump()

    def client_paused(self, paused: bool) -> None:
        origin = self.origin
        if origin is not None and origin.transport is not None:
            if paused:
                origin.transport.pause_reading()
            else:
                origin.transport.resume_reading()

    def _tick(self) -> None:
        """The idle timeout, as a relay's: no byte either way for that long closes it."""
        session = self.session
        if self.closed or session.closed:
            return
        if self.active or session.state is not _RELAYING:
            self.active = False
            session.timer = session.server.loop.call_later(
                session.server.settings.idle_timeout, self._tick)
            return
        session.timer = None
        session._close(CloseReason.IDLE_TIMEOUT, "HTTP: idle timeout")

    def _detach(self) -> Any:
        """Leave the session (a CONNECT follows on the same connection, or the
        end): the origin closed, the idle timer cancelled, no report.  The
        session lets go of this forwarder, so that the two make no cycle."""
        self.closed = True
        if self.origin is not None:
            self.origin.close()
            self.origin = None
        session = self.session
        if session.timer is not None:
            session.timer.cancel()
            session.timer = None
        session.relay = None
        return session

    def close(self, reason: str) -> None:
        """End it (the session closed, or the server stops): close both, report once."""
        if self.closed:
            return
        session = self._detach()
        session.transport.close()
        if self.started:
            session._relay_ended(reason, self.bytes_up, self.bytes_down)
