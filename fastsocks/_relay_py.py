"""Data plane, pure-Python twin of ``_relay.pyx``.

A relay owns the two transports of an established CONNECT (or BIND) until
both are closed.  Each direction is a protocol object (``Half``) that writes
what its transport reads into the peer transport:

* backpressure: when a peer's write buffer passes the high-water mark, its
  ``pause_writing()`` pauses reading on the other transport, so memory per
  connection stays bounded by the two write buffers;
* half-close: EOF from one side becomes ``write_eof()`` (shutdown(SHUT_WR))
  on the other while the other direction keeps flowing; the relay ends when
  both directions have ended, or when either side resets;
* idle timeout: a timer ticks every quarter of the timeout and closes the
  pair once no byte has moved for four ticks, so the hot path touches only
  the byte counters;
* bandwidth limits (``Relay.throttles``, set before ``start()``): token
  buckets charged per chunk; a direction over its rate stops reading until
  its bucket has refilled (limits.TokenBucket says how long).
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

__all__ = ["IMPLEMENTATION", "Relay", "Half", "HIGH_WATER", "LOW_WATER"]

IMPLEMENTATION = "py"

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
_IDLE_TICKS = 4


class Half:
    """One direction: reads from ``transport`` and writes into the peer's."""

    __slots__ = ("relay", "transport", "peer", "nbytes", "eof", "lost", "name", "buckets",
                 "held", "blocked")

    peer: Half  # the other direction, linked by Relay as soon as both exist

    def __init__(self, relay: Relay, name: str) -> None:
        self.relay = relay
        self.name = name
        self.transport: Any = None
        self.nbytes = 0
        self.eof = False
        self.lost = False
        self.buckets: list[Any] | None = None  # rate limits on what this side sends
        self.held = False  # reading paused: over its rate
        self.blocked = False  # reading paused: the peer's write buffer is full

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.relay._half_made(self)

    def data_received(self, data: bytes) -> None:
        self.nbytes += len(data)
        peer = self.peer
        if not peer.lost:
            peer.transport.write(data)
        if self.buckets is not None:
            self._charge(len(data))

    def _charge(self, n: int) -> None:
        buckets = self.buckets
        if buckets is None:
            return
        delay = max(bucket.take(n) for bucket in buckets)
        if delay > 0 and not self.held and not self.lost:
            self.held = True
            self.transport.pause_reading()
            self.relay.loop.call_later(delay, self._release)

    def _release(self) -> None:
        self.held = False
        if not self.lost and not self.eof and not self.blocked:
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        self.eof = True
        self.relay._half_eof(self)
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True
        self.relay._half_lost(self, exc)

    def pause_writing(self) -> None:
        peer = self.peer
        if not peer.lost:
            peer.blocked = True
            peer.transport.pause_reading()

    def resume_writing(self) -> None:
        peer = self.peer
        peer.blocked = False
        if not peer.lost and not peer.eof and not peer.held:
            peer.transport.resume_reading()


class Relay:
    """Both directions of one proxied connection, and how it ended.

    ``upstream`` is the protocol to give ``loop.create_connection()``; its
    ``connection_made`` calls ``on_connected(relay)``, which is where the
    session sends its success reply and calls ``start()`` with the client
    transport.  ``on_close(relay)`` runs once, after both transports closed.
    """

    __slots__ = (
        "loop",
        "client",
        "upstream",
        "reason",
        "idle_timeout",
        "started",
        "_on_connected",
        "_on_close",
        "_timer",
        "_idle_ticks",
        "_last_total",
        "_closed",
        "throttles",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_connected: Callable[[Relay], None],
        on_close: Callable[[Relay], None],
        idle_timeout: float,
    ) -> None:
        self.loop = loop
        self.client = Half(self, "client")
        self.upstream = Half(self, "upstream")
        self.client.peer = self.upstream
        self.upstream.peer = self.client
        self.reason = ""
        self.idle_timeout = idle_timeout
        self.started = False
        self._on_connected = on_connected
        self._on_close = on_close
        self._timer: asyncio.TimerHandle | None = None
        self._idle_ticks = 0
        self._last_total = -1
        self._closed = False
        self.throttles: tuple[Any, ...] = ()  # limits.TokenBuckets, set before start()

    @property
    def bytes_up(self) -> int:
        """Bytes read from the client (and written towards the target)."""
        return self.client.nbytes

    @property
    def bytes_down(self) -> int:
        """Bytes read from the target (and written towards the client)."""
        return self.upstream.nbytes

    def start(self, client_transport: Any, pending: bytes = b"") -> None:
        """Take over the client transport; ``pending`` goes to the target first."""
        self.started = True
        client_transport.set_protocol(self.client)
        self.client.transport = client_transport
        for half in (self.client, self.upstream):
            half.transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        if self.throttles:
            self.client.buckets = [t.up for t in self.throttles]
            self.upstream.buckets = [t.down for t in self.throttles]
        if pending:
            self.client.data_received(pending)
        client_transport.resume_reading()
        if self.idle_timeout > 0:
            self._timer = self.loop.call_later(self.idle_timeout / _IDLE_TICKS, self._tick)

    def close(self, reason: str) -> None:
        """End the relay now (shutdown, idle timeout): abort both transports."""
        if not self.reason:
            self.reason = reason
        for half in (self.client, self.upstream):
            if half.transport is not None and not half.lost:
                half.transport.abort()

    def _half_made(self, half: Half) -> None:
        if half is self.upstream:
            self._on_connected(self)

    def _half_eof(self, half: Half) -> None:
        peer = half.peer
        if peer.lost or peer.transport is None:
            return
        if peer.eof:
            # Both directions ended: flush what is buffered and close.
            self.reason = self.reason or "eof"
            half.transport.close()
            peer.transport.close()
        elif peer.transport.can_write_eof():
            peer.transport.write_eof()
        else:
            self.reason = self.reason or "eof"
            peer.transport.close()

    def _half_lost(self, half: Half, exc: BaseException | None) -> None:
        if not self.reason:
            if exc is not None:
                self.reason = f"{half.name}_reset"
            elif not half.eof:
                self.reason = f"{half.name}_closed"
        peer = half.peer
        if peer.transport is not None and not peer.lost:
            if exc is not None:
                peer.transport.abort()
            else:
                peer.transport.close()
        elif peer.lost or peer.transport is None:
            self._finish()

    def _finish(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            self._on_close(self)
        finally:
            self._release_all()

    def _release_all(self) -> None:
        # Nothing calls back once both transports are lost: the references
        # that make a cycle (the halves and the relay, each half and its
        # transport, the session's callbacks) go, so that a closed
        # connection is freed at once, not at the collector's next full pass.
        # Deleted here, None in the Cython twin: none of them is read again.
        del self._on_connected, self._on_close
        for half in (self.client, self.upstream):
            del half.relay, half.peer
            half.transport = None
            half.buckets = None

    def _tick(self) -> None:
        total = self.client.nbytes + self.upstream.nbytes
        if total != self._last_total:
            self._last_total = total
            self._idle_ticks = 0
        else:
            self._idle_ticks += 1
            if self._idle_ticks >= _IDLE_TICKS:
                self._timer = None
                self.close("idle_timeout")
                return
        self._timer = self.loop.call_later(self.idle_timeout / _IDLE_TICKS, self._tick)
