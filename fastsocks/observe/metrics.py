"""Prometheus metrics: what the sessions count, and how workers add up.

The session reports to ``Metrics`` at four points only: accept, request,
reply and close, each a few increments of plain integers (no label lookup, no
lock, no formatting), and only when ``--metrics`` is given; otherwise the
session sees ``server.metrics is None`` and pays one attribute test per point.
The integers reach prometheus_client's objects in batches (``flush()``).

Byte counts come from the relay, which reports them when a connection ends:
``fastsocks_bytes_total`` grows when a connection closes, so the bytes of a
long-lived connection appear when it ends, all at once.

Across workers (``--workers N``) prometheus_client's multiprocess mode keeps
the numbers right: the master points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh
temporary directory before forking, each worker writes its values to
memory-mapped files there, the master serves the sum of them all (a dead
worker's counters stay counted; its live gauges are dropped), and removes the
directory when it exits.

prometheus_client is imported lazily: whether its values live in memory or in
files is decided when it is first imported, so the master must set the
directory first.  ``observe/exporter.py`` serves the registry over HTTP.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import os
import shutil
import tempfile
import threading
from typing import Any

from ..control.limits import LIMIT_NAMES
from ..control.record import CloseReason, CloseRecord, Protocol

__all__ = ["Metrics", "get_metrics", "process_registry", "flush_local", "setup_multiprocess",
           "worker_exited", "cleanup_multiprocess", "NAMES"]

log = logging.getLogger("fastsocks.metrics")

#: Every metric fastsocks exports (counters without their ``_total`` suffix
#: are exposed with it, as Prometheus names counters).
NAMES = (
    "fastsocks_connections_total",
    "fastsocks_connections_active",
    "fastsocks_handshake_duration_seconds",
    "fastsocks_replies_total",
    "fastsocks_bytes_total",
    "fastsocks_auth_failures_total",
    "fastsocks_rule_denials_total",
    "fastsocks_timeouts_total",
    "fastsocks_udp_datagrams_total",
    "fastsocks_udp_dropped_total",
    "fastsocks_limit_rejections_total",
    "fastsocks_relay_bulk_total",
    "fastsocks_relay_bulk_buffers_held",
)

# fastsocks_connections_total{protocol, command}: the commands each protocol
# can carry (command 4 is Command.HTTP, an absolute-form request); "none":
# closed before a valid request.  Only these pairs exist as series.
_PROTOCOL_COMMANDS = (
    (Protocol.SOCKS5, ("none", "connect", "bind", "udp_associate")),
    (Protocol.SOCKS4, ("none", "connect", "bind")),
    (Protocol.HTTP, ("none", "connect", "http")),
)
_COMMAND_NUMBERS = {"none": 0, "connect": 1, "bind": 2, "udp_associate": 3, "http": 4}
_SOCKS5 = Protocol.SOCKS5
_SOCKS4 = Protocol.SOCKS4


def _command_slots() -> tuple[tuple[int, ...], ...]:
    """Per protocol (socks5, socks4, http), the slot of each command 0-4; a
    command the protocol cannot carry counts as its "none"."""
    rows = []
    slot = 0
    for _, names in _PROTOCOL_COMMANDS:
        row = [slot] * 5
        for name in names:
            row[_COMMAND_NUMBERS[name]] = slot
            slot += 1
        rows.append(tuple(row))
    return tuple(rows)


_CONNECTION_SLOTS = _command_slots()
# Seconds; a loopback handshake takes a few hundred microseconds, one that
# resolves a name and connects across the world tens to hundreds of ms.
_HANDSHAKE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                      1.0, 2.5, 5.0, 10.0)
# Close reasons that are timeouts, by kind (the label of fastsocks_timeouts_total).
_TIMEOUT_KINDS = {
    CloseReason.HANDSHAKE_TIMEOUT: "handshake",
    CloseReason.CONNECT_TIMEOUT: "connect",
    CloseReason.IDLE_TIMEOUT: "idle",
    CloseReason.BIND_TIMEOUT: "bind",
}

_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Slots of ``Metrics.counts``: connections by protocol and command (above),
# reply codes 0 to 8, then the single counters, the timeouts, the buckets.
_REPLY_CODES = 9
_REPLY = sum(len(names) for _, names in _PROTOCOL_COMMANDS)
_BYTES_UP = _REPLY + _REPLY_CODES
_BYTES_DOWN = _BYTES_UP + 1
_DGRAMS_UP = _BYTES_UP + 2
_DGRAMS_DOWN = _BYTES_UP + 3
_AUTH_FAILURES = _BYTES_UP + 4
_RULE_DENIALS = _BYTES_UP + 5
_DGRAMS_DROPPED = _BYTES_UP + 6
_TIMEOUT_SLOTS = {reason: _DGRAMS_DROPPED + 1 + i for i, reason in enumerate(_TIMEOUT_KINDS)}
_LIMIT_SLOTS = {name: _DGRAMS_DROPPED + 1 + len(_TIMEOUT_KINDS) + i
                for i, name in enumerate(LIMIT_NAMES)}
_BUCKET = _DGRAMS_DROPPED + 1 + len(_TIMEOUT_KINDS) + len(LIMIT_NAMES)


class Metrics:
    """The fastsocks metrics of this process.

    The event loop counts in plain Python integers (a list increment per
    event, well under a microsecond per connection); ``flush()`` moves what
    changed into the prometheus_client objects, under a lock: from a timer on
    the loop once a second, when the server stops, and (one process) right
    before each scrape, so a scrape sees every connection closed before it.
    In multiprocess mode the master cannot ask a worker to flush, so a scrape
    there may be up to a second behind, and a worker that crashes loses at
    most its last second of counts.
    """

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.connections_total = Counter(
            "fastsocks_connections_total", "Client connections accepted, by protocol "
            "(socks5 until the first byte says otherwise) and command (none: closed before a "
            "valid request)", ["protocol", "command"], registry=registry)
        self.connections_active = Gauge(
            "fastsocks_connections_active", "Client connections open now",
            registry=registry, multiprocess_mode="livesum")
        self.handshake_duration = Histogram(
            "fastsocks_handshake_duration_seconds", "From accepting a connection to the "
            "reply to its request (first reply for BIND)", buckets=_HANDSHAKE_BUCKETS,
            registry=registry)
        self.replies_total = Counter(
            "fastsocks_replies_total", "SOCKS5 replies sent, by reply code (RFC 1928 section 6)",
            ["code"], registry=registry)
        self.bytes_total = Counter(
            "fastsocks_bytes_total", "Payload bytes relayed (up: client to target; counted "
            "when a connection or UDP association ends)", ["direction"], registry=registry)
        self.auth_failures_total = Counter(
            "fastsocks_auth_failures_total", "Failed username/password authentications",
            registry=registry)
        self.rule_denials_total = Counter(
            "fastsocks_rule_denials_total", "Requests denied by an access rule (reply X'02')",
            registry=registry)
        self.timeouts_total = Counter(
            "fastsocks_timeouts_total", "Connections ended by a timeout, by kind",
            ["kind"], registry=registry)
        self.udp_datagrams_total = Counter(
            "fastsocks_udp_datagrams_total", "UDP ASSOCIATE datagrams relayed (counted when "
            "the association ends)", ["direction"], registry=registry)
        self.udp_dropped_total = Counter(
            "fastsocks_udp_dropped_total", "UDP ASSOCIATE datagrams dropped: from a source "
            "other than the client, a bad header, a target the rules refuse or that did not "
            "resolve, a reply from a target the client never sent to, a full buffer (counted "
            "when the association ends)", registry=registry)

        self.limit_rejections_total = Counter(
            "fastsocks_limit_rejections_total", "Connections refused by a limit, by limit "
            "(see [limits])", ["limit"], registry=registry)
        # The splice engine's own counts, read from it at each flush.
        self.relay_bulk_total = Counter(
            "fastsocks_relay_bulk_total", "Directions of relayed connections that went bulk "
            "in the splice engine (a full 16 KiB read), by how they move: splice or copy "
            "(relay_bulk)", ["mode"], registry=registry)
        self.relay_bulk_buffers_held = Gauge(
            "fastsocks_relay_bulk_buffers_held", "The splice engine's 4 MiB bulk buffers that "
            "short writes hold now, until their readers take the rest (at most 64 a process)",
            registry=registry, multiprocess_mode="livesum")
        self._bulk = [self.relay_bulk_total.labels("splice"), self.relay_bulk_total.labels("copy")]
        self._bulk_seen = [0, 0]

        # What each slot of ``counts`` feeds; binding every label child now
        # also makes every series visible (at 0) from the first scrape.
        children: list[Any] = [self.connections_total.labels(protocol.value, name)
                               for protocol, names in _PROTOCOL_COMMANDS for name in names]
        children += [self.replies_total.labels(str(code)) for code in range(_REPLY_CODES)]
        children += [self.bytes_total.labels("up"), self.bytes_total.labels("down"),
                     self.udp_datagrams_total.labels("up"),
                     self.udp_datagrams_total.labels("down"),
                     self.auth_failures_total, self.rule_denials_total,
                     self.udp_dropped_total]
        children += [self.timeouts_total.labels(kind) for kind in _TIMEOUT_KINDS.values()]
        children += [self.limit_rejections_total.labels(name) for name in LIMIT_NAMES]
        # The histogram takes whole bucket counts at a flush, through its own
        # per-bucket values (non-cumulative, as observe() keeps them); where a
        # prometheus_client lacks them, each handshake is observed directly.
        hist = self.handshake_duration
        buckets, hist_sum = getattr(hist, "_buckets", None), getattr(hist, "_sum", None)
        self._batch_histogram = (isinstance(buckets, list) and hasattr(hist_sum, "inc")
                                 and len(buckets) == len(_HANDSHAKE_BUCKETS) + 1)
        self._hist_sum: Any = hist_sum
        if self._batch_histogram and isinstance(buckets, list):
            children += buckets
        self._children = children
        self.counts = [0] * len(children)  # written by the event loop only
        self._flushed = [0] * len(children)
        self.handshake_sum = 0.0
        self._flushed_sum = 0.0
        self.active = 0
        # The relay engine: the connections it holds before the loop hears of
        # them (``Engine.unseen``) are open connections too, and its bulk
        # counts feed fastsocks_relay_bulk_*.
        self.engine: Any = None
        self._lock = threading.Lock()
        self._timer: Any = None

    # -- what a session reports: accept, request, reply, close ------------------

    def opened(self) -> None:
        self.active += 1

    def requested(self, command: int, protocol: Protocol = _SOCKS5) -> None:
        row = _CONNECTION_SLOTS[0 if protocol is _SOCKS5 else 1 if protocol is _SOCKS4 else 2]
        self.counts[row[command] if 0 < command <= 4 else row[0]] += 1

    def replied(self, code: int, handshake: float | None) -> None:
        """A reply went out; ``handshake``: seconds since accept, for the first reply only."""
        if code < _REPLY_CODES:
            self.counts[_REPLY + code] += 1
        else:  # not a code fastsocks sends; counted all the same
            self.replies_total.labels(str(code)).inc()
        if handshake is not None:
            seconds = handshake
            if self._batch_histogram:
                # The sum first: a flush in the scrape thread reads the counts
                # before the sum, so a handshake it counts has its time summed.
                self.handshake_sum += seconds
                # le: the first bucket whose bound is >= seconds (+Inf last).
                self.counts[_BUCKET + bisect.bisect_left(_HANDSHAKE_BUCKETS, seconds)] += 1
            else:
                self.handshake_duration.observe(seconds)

    def limited(self, limit: str) -> None:
        self.counts[_LIMIT_SLOTS[limit]] += 1

    def closed(self, record: CloseRecord) -> None:
        counts = self.counts
        self.active -= 1
        if record.command is None:
            protocol = record.protocol
            counts[_CONNECTION_SLOTS[0 if protocol is _SOCKS5 else 1 if protocol is _SOCKS4
                                     else 2][0]] += 1
        counts[_BYTES_UP] += record.bytes_up
        counts[_BYTES_DOWN] += record.bytes_down
        if record.datagrams_up is not None:
            counts[_DGRAMS_UP] += record.datagrams_up
            counts[_DGRAMS_DOWN] += record.datagrams_down or 0
            counts[_DGRAMS_DROPPED] += record.dropped or 0
        reason = record.reason
        slot = _TIMEOUT_SLOTS.get(reason)
        if slot is not None:
            counts[slot] += 1
        elif reason is CloseReason.AUTH_FAILED:
            counts[_AUTH_FAILURES] += 1
        elif reason is CloseReason.RULE_DENIED:
            counts[_RULE_DENIALS] += 1

    # -- into prometheus_client -------------------------------------------------

    def flush(self) -> None:
        """Move what changed since the last flush into the exported values."""
        with self._lock:
            counts, flushed = self.counts, self._flushed
            for i, child in enumerate(self._children):
                delta = counts[i] - flushed[i]
                if delta:
                    child.inc(delta)
                    flushed[i] += delta
            if self._batch_histogram:
                total = self.handshake_sum
                if total != self._flushed_sum:
                    self._hist_sum.inc(total - self._flushed_sum)
                    self._flushed_sum = total
            engine = self.engine
            self.connections_active.set(self.active + (engine.unseen if engine is not None else 0))
            if engine is not None:
                for i, switched in enumerate(engine.bulk_switches):
                    if switched > self._bulk_seen[i]:
                        self._bulk[i].inc(switched - self._bulk_seen[i])
                        self._bulk_seen[i] = switched
                self.relay_bulk_buffers_held.set(engine.bulk_held)

    def start_flushing(self, loop: asyncio.AbstractEventLoop, interval: float = 1.0) -> None:
        """Flush from a timer on ``loop`` until ``stop_flushing()``."""
        if self._timer is not None:
            return

        def tick() -> None:
            self.flush()
            self._timer = loop.call_later(interval, tick)

        self._timer = loop.call_later(interval, tick)

    def stop_flushing(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()


# -- one set of metrics per process -------------------------------------------

_metrics: Metrics | None = None
_registry: Any = None


def process_registry() -> Any:
    """The registry to serve from this process (aggregated in multiprocess mode)."""
    global _registry
    if _registry is None:
        from prometheus_client import (CollectorRegistry, ProcessCollector,
                                       disable_created_metrics, multiprocess)

        # No *_created series: half the exposition, and nothing a dashboard uses.
        disable_created_metrics()

        registry = CollectorRegistry()
        path = os.environ.get(_ENV)
        if path:
            multiprocess.MultiProcessCollector(registry, path=path)
        else:
            ProcessCollector(registry=registry)
        _registry = registry
    return _registry


def get_metrics() -> Metrics:
    """This process's metrics, created on first use (in a worker: after the fork)."""
    global _metrics
    if _metrics is None:
        # In multiprocess mode values live in files and the master aggregates
        # them; registering them here too would only serve this worker's part.
        _metrics = Metrics(None if os.environ.get(_ENV) else process_registry())
    return _metrics


def flush_local() -> None:
    """Bring this process's exported values up to date (one process: before a scrape)."""
    if _metrics is not None:
        _metrics.flush()


# -- multiprocess mode (the master of --workers N) ----------------------------


def setup_multiprocess() -> str:
    """Point prometheus_client at a fresh directory; before forking workers."""
    path = tempfile.mkdtemp(prefix="fastsocks-metrics-")
    os.environ[_ENV] = path
    from prometheus_client import values

    # If prometheus_client was imported before (by an embedding application),
    # its value class was chosen without the directory: choose again.
    values.ValueClass = values.get_value_class()
    return path


def worker_exited(pid: int) -> None:
    """A worker died: drop its live gauges (its counters stay in the totals)."""
    path = os.environ.get(_ENV)
    if path:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, path)


def cleanup_multiprocess(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
    if os.environ.get(_ENV) == path:
        del os.environ[_ENV]
