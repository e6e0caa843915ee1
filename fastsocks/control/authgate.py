"""Password checks under attack: a bounded queue, and a back-off per source address.

A bcrypt or argon2 check costs tens to hundreds of milliseconds of a thread
(``control/auth.py`` runs them in a pool of its own).  Hundreds of wrong
passwords sent at once would queue there, and every login that is not in the
cache would wait behind them (330 of them delayed one by 9.4 s).  So:

* **bounded queue** (``limits.password_checks`` checks queued or running per
  worker; 0: no bound): over it, or over a quarter of it from one source
  address, the client gets the RFC 1929 failure status (X'01' status) at
  once and is closed, without a check; counted as ``password_checks``.  A
  login that the cache vouches for never enters the queue: it answers in
  microseconds whatever the queue holds;
* **back-off per source** (``limits.auth_failures_per_ip`` failed logins
  free; 0: off): after that many failures, the address must wait 1 s, then
  2, 4, ... up to 60 s after each further failure; while it waits every
  login from it is answered X'01' at once (cache or not: a back-off the
  cheap path could bypass would not be one), counted as
  ``auth_failures_per_ip``.  Failures are forgotten after 10 minutes without
  one.  IPv6 sources count per /64 (one host can hold a whole /64).  The table
  is bounded (10,000 sources per worker; the least recently failed go first).

Both are **per worker**: the queue is the worker's own thread pool, and the
failures are seen by the worker that checked them.  With N workers a source
gets at most N times the free failures before all of them make it wait; that
is the price of not taking a lock between processes on every login.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from time import monotonic
from typing import Any, Callable

__all__ = ["PasswordGate", "MAX_SOURCES", "MAX_BACKOFF", "FORGET_AFTER"]

MAX_SOURCES = 10_000  # sources remembered per worker
MAX_BACKOFF = 60.0  # seconds, the longest wait after a failure
FORGET_AFTER = 600.0  # seconds without a failure before a source starts afresh


def source_of(ip: str | None) -> str | bytes:
    """The key of a client address: IPv4 as it is, IPv6 by its /64 (mapped IPv4 unmapped)."""
    if ip is None:
        return ""
    if ":" not in ip:
        return ip
    try:
        address = ipaddress.IPv6Address(ip.partition("%")[0])
    except ValueError:
        return ip
    mapped = address.ipv4_mapped
    return str(mapped) if mapped is not None else address.packed[:8]


class PasswordGate:
    """One worker's pending password checks and failed-login table."""

    __slots__ = ("checks", "per_source", "free", "pending", "reject", "on_wait", "_pending_by",
                 "_failures")

    def __init__(self, reject: Callable[[str, str | None, str | None], Any]) -> None:
        self.checks = 0  # 0: no bound
        self.per_source = 0
        self.free = 0  # 0: no back-off
        self.pending = 0
        self.reject = reject  # counts a refusal (Limits: metrics, rejected, warning)
        # Told when a source must wait (until then, monotonic): the splice engine
        # answers no login meanwhile (Engine.pause_logins), as this gate must judge it.
        self.on_wait: Callable[[float], Any] | None = None
        self._pending_by: dict[str | bytes, int] = {}
        # source -> [failures, last failure, must wait until]; least recent first
        self._failures: OrderedDict[str | bytes, list[float]] = OrderedDict()

    def configure(self, checks: int, failures_per_ip: int) -> None:
        self.checks = checks
        self.per_source = max(1, checks // 4)
        self.free = failures_per_ip

    def backing_off(self) -> bool:
        """Some source is backing off after its failures: ``waiting`` may refuse."""
        return bool(self.free and self._failures)

    def waiting(self, ip: str | None, user: str | None) -> str | None:
        """``auth_failures_per_ip`` when this source must still wait after its failures."""
        if not self.free or not self._failures:
            return None
        entry = self._failures.get(source_of(ip))
        if entry is None or monotonic() >= entry[2]:
            return None
        return self.reject("auth_failures_per_ip", ip, user)

    def enter(self, ip: str | None, user: str | None) -> str | None:
        """A check is about to be queued: None (go on) or the limit hit.

        With a bound set (``checks``), an admitted check must ``leave`` when done.
        """
        if not self.checks:
            return None
        source = source_of(ip)
        mine = self._pending_by.get(source, 0)
        if self.pending >= self.checks or mine >= self.per_source:
            return self.reject("password_checks", ip, user)
        self.pending += 1
        self._pending_by[source] = mine + 1
        return None

    def leave(self, ip: str | None) -> None:
        source = source_of(ip)
        mine = self._pending_by.get(source, 0)
        if mine <= 0:
            return  # defensive: nothing held for this source
        self.pending -= 1
        if mine > 1:
            self._pending_by[source] = mine - 1
        else:
            del self._pending_by[source]

    def failed(self, ip: str | None) -> None:
        """A login from ``ip`` failed: count it, and past the free ones make the source wait."""
        if not self.free:
            return
        now = monotonic()
        source = source_of(ip)
        table = self._failures
        entry = table.get(source)
        if entry is None or now - entry[1] > FORGET_AFTER:
            entry = [0.0, now, 0.0]
        entry[0] += 1
        entry[1] = now
        excess = entry[0] - self.free
        if excess >= 0:
            entry[2] = now + min(MAX_BACKOFF, 2.0 ** excess)
            if self.on_wait is not None:
                self.on_wait(entry[2])
        table[source] = entry
        table.move_to_end(source)
        while len(table) > MAX_SOURCES:
            table.popitem(last=False)
