"""Handshake slots: unfinished handshakes get a quota of their own (OpenSSH's MaxStartups).

A connection holds a handshake slot from its accept until its request is in
(the session leaves PROXY_HEADER, NEGOTIATING, AUTHENTICATING and GSSAPI) or
it closes.  Without a quota of their own, connections that say nothing hold
their places for the whole handshake timeout: 100 silent clients fill
``max_connections = 100`` and lock everyone out for 10 s.  So:

* **quota** (``limits.handshakes``; by default half of ``limits.connections``,
  or 1000 without it; 0: none): at the quota a new connection is closed at
  once, unless the oldest silent handshake is already past the short timeout,
  which is cut to make room; the refusal is counted (``handshakes`` in
  fastsocks_limit_rejections_total, ``limit_reached`` in the access log);
* **pressure** (more than ``limits.handshake_pressure`` percent of the quota
  unfinished): new connections get the short handshake timeout
  (``limits.handshake_pressure_timeout``, 2 s) instead of the normal one, and
  a sweep cuts the unfinished handshakes already older than that, oldest
  first.  Sessions waiting on the server (a password check) are left to
  their own timer: it is the client that is silent that gets cut;
* one WARNING when the quota is first hit, one INFO line when the pressure is
  over, with how many were refused and cut: one episode, two lines.

Established connections and clients that finish their handshake in time keep
working: a flood can hold at most the quota, never ``max_connections``.

Across workers the count is **shared**: each worker publishes how many
handshakes it holds in a gauge of the shared counts (``SharedCounts``: one
word per worker, which cannot be refused for a full table), and the quota and
the pressure are judged on the sum, so ``handshakes`` means the same as
``connections`` (all workers together), whichever worker SO_REUSEPORT gave
each connection to.  The cuts are each worker's own (a worker can only close
its own sockets); the kernel spreads a flood over the workers, so each holds
its share of the silent ones.  Two workers admitting at the same instant may
both take the last slot (one extra per worker at most), as with the other counts.

Where the relay engine accepts (runtime/listener.py), a connection's
handshake runs in the engine before this process's loop hears of it: those
count too (``Engine.shaking``: not those it dialled already), in the total
and in the published gauge (republished every 50 ms while the engine is
attached), and the engine is told how much room the quota leaves it
(``Engine.handshake_room``): a connection accepted beyond that comes to the
loop at once, unread, and is refused here as any other.
"""

from __future__ import annotations

import asyncio
import logging
from time import monotonic
from typing import Any, Callable

from .record import State
from .sharedcounts import SharedCounts

__all__ = ["HandshakeSlots", "DEFAULT_HANDSHAKES", "GAUGE"]

log = logging.getLogger("fastsocks.limits")

#: The quota without ``limits.handshakes`` and without ``limits.connections``.
DEFAULT_HANDSHAKES = 1000
#: This process's unfinished handshakes, in the shared counts' gauges.
GAUGE = 0

_AUTHENTICATING = State.AUTHENTICATING


class HandshakeSlots:
    """The unfinished handshakes of one process, oldest first, with the quota and pressure."""

    __slots__ = ("counts", "quota", "pressure_at", "short", "open", "reject", "_sweep",
                 "_episode", "_refused", "_cut", "engine", "_publisher")

    def __init__(self, counts: SharedCounts, reject: Callable[[str, str | None], Any]) -> None:
        self.counts = counts
        self.quota = 0  # 0: no quota (nothing tracked)
        self.pressure_at = 0  # under pressure when more are unfinished than this
        self.short = 2.0  # the handshake timeout under pressure
        # session -> when it started; dicts keep insertion order, so the
        # first entry is the oldest handshake (the sweep stops at a young one).
        self.open: dict[Any, float] = {}
        self.reject = reject  # counts a refusal (Limits: metrics, rejected)
        self._sweep: asyncio.TimerHandle | None = None
        self._episode = False
        self._refused = 0
        self._cut = 0
        self.engine: Any = None  # the relay engine, where it accepts (``attach``)
        self._publisher: asyncio.TimerHandle | None = None

    def configure(self, quota: int, percent: int, short: float) -> None:
        """The numbers (at start and on reload); handshakes under way keep their slots."""
        self.quota = quota
        self.pressure_at = quota * percent // 100
        self.short = short

    def total(self) -> int:
        """Unfinished handshakes in all workers (the engine's included)."""
        counts = self.counts
        own = len(self.open) + (self.engine.shaking if self.engine is not None else 0)
        return own + counts.gauge(GAUGE, others=True) if counts.tables > 1 else own

    def attach(self, engine: Any) -> None:
        """The engine accepts (or no more, ``None``): its handshakes count here."""
        if self.engine is not None and engine is not self.engine:
            self.engine.handshake_room = -1
        self.engine = engine
        if self._publisher is not None:
            self._publisher.cancel()
            self._publisher = None
        if engine is not None:
            self._publish_now()

    def _publish(self) -> None:
        """This process's handshakes to the other workers; the engine's room to it."""
        engine = self.engine
        own = len(self.open)
        if engine is None:
            self.counts.set_gauge(GAUGE, own)
            return
        self.counts.set_gauge(GAUGE, own + engine.shaking)
        if not self.quota:
            engine.handshake_room = -1
        else:
            others = self.counts.gauge(GAUGE, others=True) if self.counts.tables > 1 else 0
            engine.handshake_room = max(0, self.quota - others - own)

    def _publish_now(self) -> None:
        self._publish()
        self._publisher = asyncio.get_running_loop().call_later(0.05, self._publish_now)

    def enter(self, session: Any, ip: str | None, timeout: float) -> float | None:
        """A new connection: its handshake timeout, or None when it must be closed (quota)."""
        open_ = self.open
        now = monotonic()
        total = self.total()
        if total >= self.quota:
            if not self._evict(now):
                self._refuse(ip)
                return None
            total -= 1
        open_[session] = now
        session.shaking = self
        self._publish()
        if total >= self.pressure_at:  # this one makes more than pressure_at
            if self._sweep is None:
                self._schedule(now, now)
            return min(timeout, self.short)
        return timeout

    def leave(self, session: Any) -> None:
        """The handshake is over (request in, or closed)."""
        session.shaking = None
        open_ = self.open
        if open_.pop(session, None) is not None:
            self._publish()
            if self._episode and self.total() <= self.pressure_at:
                self._calm()

    def _evict(self, now: float) -> bool:
        """Cut the oldest silent handshake if it is past the short timeout: room was made."""
        limit = now - self.short
        for session, started in self.open.items():
            if started > limit:
                return False
            if session.state is not _AUTHENTICATING:
                self._cut += 1
                session._cut_handshake()
                return True
        return False

    def _refuse(self, ip: str | None) -> None:
        self.reject("handshakes", ip)
        self._refused += 1
        if not self._episode:
            self._episode = True
            log.warning("limit handshakes reached: %d unfinished handshakes (all workers): "
                        "new connections are closed at once, and handshakes older than %g s "
                        "are cut, until fewer than %d are unfinished (refused a connection "
                        "from %s)", self.quota, self.short, self.pressure_at + 1, ip or "?")

    def _calm(self) -> None:
        self._episode = False
        log.info("handshake pressure over: %d connections refused, %d silent handshakes cut",
                 self._refused, self._cut)
        self._refused = self._cut = 0

    def _schedule(self, now: float, oldest: float) -> None:
        delay = max(0.05, oldest + self.short - now)
        self._sweep = asyncio.get_running_loop().call_later(delay, self._sweep_now)

    def _sweep_now(self) -> None:
        """Under pressure, cut the handshakes older than the short timeout, oldest first."""
        self._sweep = None
        if self.total() <= self.pressure_at:
            if self._episode:
                self._calm()
            return
        now = monotonic()
        limit = now - self.short
        victims = []
        young: float | None = None
        for session, started in self.open.items():
            if started > limit:
                young = started
                break
            if session.state is not _AUTHENTICATING:
                victims.append(session)
        self._cut += len(victims)
        for session in victims:
            session._cut_handshake()
        if self.open:
            self._schedule(now, young if young is not None else now)
