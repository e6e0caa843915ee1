"""The hand-off: the success reply, then both sockets to the data plane.

With the splice engine (Linux, compiled build) both descriptors go to its
thread and the reply travels with them: the engine sends it first, then the
bytes the client sent early.  Elsewhere, and under GSSAPI wrapping (RFC 1961
§5, MTYP 3 both ways), an asyncio protocol pair relays on the loop.  Either
way the relay reports how the connection ended, and the session reports it
once to the observers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from time import monotonic as _monotonic
from typing import Any

from ..constants import Reply
from ..net.address import format_peer
from ..relay import Relay
from .gssrelay import GssRelay
from .limits import TokenBuckets
from .core import SessionCore
from .record import CloseReason, State

__all__ = ["HandoffStage", "relay_reason"]

log = logging.getLogger("fastsocks.session")

_REASONS = {reason.value: reason for reason in CloseReason}


def relay_reason(text: str) -> CloseReason:
    """A relay's reason token (the engine's REASONS, the protocol relays') as a CloseReason."""
    return _REASONS.get(text, CloseReason.ERROR)


class HandoffStage(SessionCore):
    """The RELAYING state of a ``Session``."""

    __slots__ = ()

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
                self._refuse(Reply.GENERAL_FAILURE, CloseReason.GENERAL_FAILURE,
                             f"{self._what()}: hand-over failed: {exc}")
            return
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
        self.codec = None  # the negotiation is over; free its buffer
        self.state = State.RELAYING
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
        reply = self._encode_reply(Reply.SUCCEEDED, reply_host, reply_port)
        pending = self._take_pending()
        held = self.held
        throttles = held.owner.throttles(held, self.user, engine.throttle) if held else ()
        # The loop's transport socket is non-blocking (and its dup with it:
        # they share the file status); the outbound one says so itself.
        nonblocking = not sock.getblocking()
        try:
            upstream_fd = sock.detach()
            self.pair_id = engine.add(client_fd, upstream_fd, pending, reply,
                                      self.server.settings.idle_timeout, self._on_engine_closed,
                                      throttles, nonblocking=nonblocking)
        except BaseException:
            os.close(client_fd)
            raise
        self.codec = None
        self.task = None
        self.state = State.RELAYING
        self._record_reply(Reply.SUCCEEDED)  # the engine sends it first thing
        # The engine holds a duplicate; closing the transport's own descriptor
        # removes it from the event loop without touching the connection.
        transport.abort()

    def _on_engine_closed(self, bytes_up: int, bytes_down: int, reason: str) -> None:
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
            log.debug("%s %s closed (%s): %d bytes up, %d bytes down, %.3f s",
                      format_peer(self.peer), self._what(), reason, bytes_up, bytes_down,
                      _monotonic() - self.started)
        self._report(relay_reason(reason), bytes_up, bytes_down)
