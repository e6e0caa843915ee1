# cython: language_level=3, embedsignature=True
"""Data plane in Cython; ``_relay_py.py`` is its pure-Python twin.

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

The per-chunk path (``data_received``) is C apart from the transport's own
``write()``: it creates no Python object.
"""

from cpython.bytes cimport PyBytes_GET_SIZE

IMPLEMENTATION = "c"

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
cdef enum:
    _IDLE_TICKS = 4


cdef class Half:
    """One direction: reads from ``transport`` and writes into the peer's."""

    def __cinit__(self, Relay relay, str name):
        self.relay = relay
        self.name = name
        self.transport = None
        self.peer = None
        self.nbytes = 0
        self.eof = False
        self.lost = False
        self.buckets = None
        self.held = False
        self.blocked = False

    def connection_made(self, transport):
        self.transport = transport
        self.relay._half_made(self)

    def data_received(self, data):
        self.nbytes += len(data)
        cdef Half peer = self.peer
        if peer is not None and not peer.lost:
            peer.transport.write(data)
        if self.buckets is not None:
            self._charge(len(data))

    cdef _charge(self, Py_ssize_t n):
        cdef double delay = 0.0, d
        for bucket in self.buckets:
            d = bucket.take(n)
            if d > delay:
                delay = d
        if delay > 0 and not self.held and not self.lost:
            self.held = True
            self.transport.pause_reading()
            self.relay.loop.call_later(delay, self._release)

    def _release(self):
        self.held = False
        if not self.lost and not self.eof and not self.blocked:
            self.transport.resume_reading()

    def eof_received(self):
        self.eof = True
        self.relay._half_eof(self)
        return True

    def connection_lost(self, exc):
        self.lost = True
        self.relay._half_lost(self, exc)

    def pause_writing(self):
        cdef Half peer = self.peer
        if peer is not None and not peer.lost:
            peer.blocked = True
            peer.transport.pause_reading()

    def resume_writing(self):
        cdef Half peer = self.peer
        if peer is not None:
            peer.blocked = False
            if not peer.lost and not peer.eof and not peer.held:
                peer.transport.resume_reading()


cdef class Relay:
    """Both directions of one proxied connection, and how it ended.

    ``upstream`` is the protocol to give ``loop.create_connection()``; its
    ``connection_made`` calls ``on_connected(relay)``, which is where the
    session sends its success reply and calls ``start()`` with the client
    transport.  ``on_close(relay)`` runs once, after both transports closed.
    """

    def __cinit__(self, loop, on_connected, on_close, double idle_timeout):
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
        self._timer = None
        self._idle_ticks = 0
        self._last_total = <unsigned long long>-1
        self._closed = False
        self.throttles = ()

    @property
    def bytes_up(self):
        """Bytes read from the client (and written towards the target)."""
        return self.client.nbytes

    @property
    def bytes_down(self):
        """Bytes read from the target (and written towards the client)."""
        return self.upstream.nbytes

    def start(self, client_transport, bytes pending=b""):
        """Take over the client transport; ``pending`` goes to the target first."""
        self.started = True
        client_transport.set_protocol(self.client)
        self.client.transport = client_transport
        client_transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        self.upstream.transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        if self.throttles:
            self.client.buckets = [t.up for t in self.throttles]
            self.upstream.buckets = [t.down for t in self.throttles]
        if PyBytes_GET_SIZE(pending):
            self.client.data_received(pending)
        client_transport.resume_reading()
        if self.idle_timeout > 0:
            self._timer = self.loop.call_later(self.idle_timeout / _IDLE_TICKS, self._tick)

    def close(self, str reason):
        """End the relay now (shutdown, idle timeout): abort both transports."""
        if not self.reason:
            self.reason = reason
        for half in (self.client, self.upstream):
            if (<Half>half).transport is not None and not (<Half>half).lost:
                (<Half>half).transport.abort()

    cdef _half_made(self, Half half):
        if half is self.upstream:
            self._on_connected(self)

    cdef _half_eof(self, Half half):
        cdef Half peer = half.peer
        if peer.lost or peer.transport is None:
            return
        if peer.eof:
            # Both directions ended: flush what is buffered and close.
            if not self.reason:
                self.reason = "eof"
            half.transport.close()
            peer.transport.close()
        elif peer.transport.can_write_eof():
            peer.transport.write_eof()
        else:
            if not self.reason:
                self.reason = "eof"
            peer.transport.close()

    cdef _half_lost(self, Half half, object exc):
        cdef Half peer = half.peer
        if not self.reason:
            if exc is not None:
                self.reason = half.name + "_reset"
            elif not half.eof:
                self.reason = half.name + "_closed"
        if peer.transport is not None and not peer.lost:
            if exc is not None:
                peer.transport.abort()
            else:
                peer.transport.close()
        elif peer.lost or peer.transport is None:
            self._finish()

    cdef _finish(self):
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

    cdef _release_all(self):
        # Nothing calls back once both transports are lost: the references
        # that make a cycle (the halves and the relay, each half and its
        # transport, the session's callbacks) go, so that a closed
        # connection is freed at once, not at the collector's next full pass.
        cdef Half half
        self._on_connected = self._on_close = None
        for half in (self.client, self.upstream):
            half.relay = None
            half.peer = None
            half.transport = None
            half.buckets = None

    def _tick(self):
        cdef unsigned long long total = self.client.nbytes + self.upstream.nbytes
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
