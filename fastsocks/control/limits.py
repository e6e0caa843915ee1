"""Limits: how many connections, how fast they may come, how fast they may move.

Connection counts (in all, per source IP, per user) and the per-IP handshake
rate hold across worker processes, in memory they share
(``sharedcounts.SharedCounts``: lock-free, nothing a crashed worker can
leave held).  A check and the increment that follows are not
one atomic step across processes: two workers admitting at the same instant
may both take the last place (at most one extra connection per worker).

What a client sees when a limit is hit (README, "Limits"):

* ``connections`` / ``connections_per_ip`` / ``handshake_rate_per_ip``: the
  connection is closed at once, before the method-selection reply; under a
  flood that costs the server one accept and one close, nothing more;
* ``handshakes`` (unfinished handshakes; ``control/handshakes.py``): the
  connection is closed at once; under pressure, silent handshakes are cut
  after a short timeout so that clients that finish in time get in;
* ``password_checks`` / ``auth_failures_per_ip`` (``control/authgate.py``):
  the RFC 1929 failure status at once, without a password check;
* ``connections_per_user`` (and a user's own ``connections``): once the
  user has authenticated, the request is answered X'02' (not allowed by
  ruleset) and the connection closed;
* bandwidth (per connection, per user; each direction separately): the
  relay stops reading from the sender while the flow is over its rate, so
  TCP flow control slows the sender down; nothing is dropped.

Bandwidth is enforced in the data plane: by the splice engine's token
buckets outside the GIL (no Python per chunk), or by the protocol relay on
the portable path.  A per-user rate is shared by that user's connections in
one process; with several workers each enforces it on its own share.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from .authgate import PasswordGate
from .handshakes import DEFAULT_HANDSHAKES, HandshakeSlots
from .sharedcounts import SharedCounts

__all__ = ["LimitSettings", "UserLimits", "Limits", "SharedCounts", "TokenBucket", "TokenBuckets",
           "parse_rate", "format_rate", "LIMIT_NAMES"]

log = logging.getLogger("fastsocks.limits")

#: The ``limit`` label of fastsocks_limit_rejections_total.
LIMIT_NAMES = ("connections", "connections_per_ip", "handshake_rate_per_ip",
               "connections_per_user", "handshakes", "password_checks", "auth_failures_per_ip")

_RATE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)(?:/s)?\s*$")
_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000 ** 2, "gb": 1000 ** 3,
    "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3,
    "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3,
    "kbit": 125, "mbit": 125_000, "gbit": 125_000_000,
}


def parse_rate(value: Any, what: str) -> int:
    """Bytes per second from 1048576, "1MiB", "8Mbit", "500kB/s"; 0 is off."""
    if isinstance(value, bool):
        raise ConfigError(f"{what}: give a rate such as 1048576 (bytes/s), \"1MiB\" or "
                          f"\"100Mbit\", got {value!r}")
    if isinstance(value, int):
        number, unit = float(value), ""
    elif isinstance(value, float):
        number, unit = value, ""
    else:
        m = _RATE.match(str(value))
        if m is None or m.group(2).lower() not in _UNITS:
            raise ConfigError(f"{what}: give a rate such as 1048576 (bytes/s), \"1MiB\", "
                              f"\"500kB\" or \"100Mbit\", got {value!r}")
        number, unit = float(m.group(1)), m.group(2).lower()
    rate = number * _UNITS[unit]
    if not 0 <= rate < 2 ** 53:
        raise ConfigError(f"{what}: must be 0 (no limit) or a positive rate, got {value!r}")
    return int(rate)


def format_rate(rate: int) -> int | str:
    """A rate as the config file can take it back: "10MiB", or bytes/s."""
    for unit, size in (("GiB", 1024 ** 3), ("MiB", 1024 ** 2), ("KiB", 1024)):
        if rate >= size and rate % size == 0:
            return f"{rate // size}{unit}"
    return rate


@dataclass
class UserLimits:
    """One user's own limits; None: the default for all users applies."""

    connections: int | None = None
    bandwidth: int | None = None


@dataclass
class LimitSettings:
    """``[limits]``; 0 means no limit throughout."""

    connections: int = 0
    connections_per_ip: int = 0
    connections_per_user: int = 0
    handshake_rate_per_ip: float = 0.0  # new connections per second, sliding 1 s window
    bandwidth_per_connection: int = 0  # bytes per second, each direction
    bandwidth_per_user: int = 0
    users: dict[str, UserLimits] = field(default_factory=dict)
    # Unfinished handshakes (control/handshakes.py); None: half of
    # ``connections``, or DEFAULT_HANDSHAKES without it.
    handshakes: int | None = None
    handshake_pressure: int = 50  # percent of the quota: past it, the short timeout
    handshake_pressure_timeout: float = 2.0
    # Password checks (control/authgate.py), per worker.
    password_checks: int = 32
    auth_failures_per_ip: int = 10

    def validate(self) -> None:
        for name in ("connections", "connections_per_ip", "connections_per_user",
                     "bandwidth_per_connection", "bandwidth_per_user", "handshakes",
                     "password_checks", "auth_failures_per_ip"):
            value = getattr(self, name)
            if value is None and name == "handshakes":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"limits.{name} must be 0 (no limit) or a positive whole "
                                  f"number, got {value!r}")
        rate = self.handshake_rate_per_ip
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1e9:
            raise ConfigError("limits.handshake_rate_per_ip must be 0 (no limit) or a positive "
                              f"number of new connections per second, got {rate!r}")
        percent = self.handshake_pressure
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
            raise ConfigError("limits.handshake_pressure must be a percentage of "
                              f"limits.handshakes from 0 to 100, got {percent!r}")
        short = self.handshake_pressure_timeout
        if isinstance(short, bool) or not isinstance(short, (int, float)) or not short > 0:
            raise ConfigError("limits.handshake_pressure_timeout must be a positive number of "
                              f"seconds, got {short!r}")

    @property
    def handshake_quota(self) -> int:
        """The effective ``handshakes``: half of ``connections`` by default (0: no quota)."""
        if self.handshakes is not None:
            return self.handshakes
        return max(1, self.connections // 2) if self.connections else DEFAULT_HANDSHAKES

    @property
    def any(self) -> bool:
        return bool(self.connections or self.connections_per_ip or self.connections_per_user
                    or self.handshake_rate_per_ip or self.bandwidth_per_connection
                    or self.bandwidth_per_user or self.users or self.handshake_quota
                    or self.password_checks or self.auth_failures_per_ip)

    def user_connections(self, user: str) -> int:
        own = self.users.get(user)
        if own is not None and own.connections is not None:
            return own.connections
        return self.connections_per_user

    def user_bandwidth(self, user: str) -> int:
        own = self.users.get(user)
        if own is not None and own.bandwidth is not None:
            return own.bandwidth
        return self.bandwidth_per_user


# Keys of the shared counts: 62-bit hashes of tuples, never 0 (an empty slot).
def _key(*parts: Any) -> int:
    return (hash(parts) & 0x3FFF_FFFF_FFFF_FFFF) or 1


_GLOBAL = _key("connections")


# -- admission --------------------------------------------------------------------


class TokenBucket:
    """Bytes per second with a burst of a tenth of a second (at least 16 KiB).

    The protocol relay's throttle; the splice engine has the same in C.
    ``take(n)`` charges ``n`` bytes and returns how long to wait before
    reading again (0: go on).
    """

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: int) -> None:
        self.rate = float(rate)
        self.burst = max(rate / 10.0, 16384.0)
        self.tokens = self.burst
        self.stamp = time.monotonic()

    def take(self, n: int) -> float:
        now = time.monotonic()
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate) - n
        self.stamp = now
        self.tokens = tokens
        return -tokens / self.rate if tokens < 0 else 0.0


class TokenBuckets:
    """One rate, each direction on its own: the protocol relay's throttle."""

    __slots__ = ("up", "down")

    def __init__(self, rate: int) -> None:
        self.up = TokenBucket(rate)
        self.down = TokenBucket(rate)


class Held:
    """What one session counts against the limits, given back at its end."""

    __slots__ = ("owner", "keys", "user")

    def __init__(self, owner: Limits) -> None:
        self.owner = owner
        self.keys: list[int] = []
        self.user: str | None = None


class Limits:
    """The admission checks of one process, over the shared counts."""

    __slots__ = ("_settings", "counts", "rejected", "_window", "_rate_keys", "_warned",
                 "_user_throttles", "_user_conns", "metrics", "handshakes", "passwords")

    def __init__(self, settings: LimitSettings, counts: SharedCounts | None = None) -> None:
        self.counts = counts if counts is not None else SharedCounts(1)
        self.handshakes = HandshakeSlots(self.counts, self._reject)
        self.passwords = PasswordGate(self._reject)
        self.settings = settings
        self.rejected = dict.fromkeys(LIMIT_NAMES, 0)
        self._window = -1
        self._rate_keys: dict[int, list[int]] = {}  # window -> keys this process wrote
        self._warned: dict[str, tuple[float, int]] = {}
        # user -> {factory: (rate, throttle)}: shared by the user's relays, one
        # per kind of relay (a connection whose reply is still being written
        # goes to the protocol relay even where the splice engine runs).
        self._user_throttles: dict[str, dict[Any, Any]] = {}
        self._user_conns: dict[str, int] = {}  # user -> this process's relays with it
        self.metrics: Any = None

    @property
    def settings(self) -> LimitSettings:
        return self._settings

    @settings.setter
    def settings(self, settings: LimitSettings) -> None:
        """New numbers (at start, on reload); what is held stays held."""
        self._settings = settings
        self.handshakes.configure(settings.handshake_quota, settings.handshake_pressure,
                                  settings.handshake_pressure_timeout)
        self.passwords.configure(settings.password_checks, settings.auth_failures_per_ip)

    def admit(self, ip: str | None) -> tuple[Held | None, str | None]:
        """A new connection from ``ip``: (what it holds, None) or (None, the limit hit)."""
        s = self.settings
        held = Held(self)
        if s.handshake_rate_per_ip and ip is not None:
            denial = self._rate(ip, s.handshake_rate_per_ip)
            if denial:
                return None, self._reject(denial, ip)
        if s.connections and not self._take(held, _GLOBAL, s.connections):
            return None, self._reject("connections", ip)
        if s.connections_per_ip and ip is not None:
            if not self._take(held, _key("ip", ip), s.connections_per_ip):
                self.release(held)
                return None, self._reject("connections_per_ip", ip)
        return held, None

    def admit_user(self, held: Held | None, user: str, ip: str | None) -> str | None:
        """The session authenticated as ``user``: None, or the limit it is over."""
        limit = self.settings.user_connections(user)
        if not limit or held is None:
            return None
        if not self._take(held, _key("user", user), limit):
            return self._reject("connections_per_user", ip, user)
        return None

    def _take(self, held: Held, key: int, limit: int) -> bool:
        """Count one more under ``key`` unless that is over ``limit``."""
        counts = self.counts
        own = counts.add(key, 1)
        if own is None:  # the table is full: admitted, not counted
            return True
        if own > limit or (counts.tables > 1 and own + counts.get(key, others=True) > limit):
            counts.add(key, -1)
            return False
        held.keys.append(key)
        return True

    def release(self, held: Held | None) -> None:
        if held is None:
            return
        counts = self.counts
        for key in held.keys:
            counts.add(key, -1)
        held.keys.clear()
        user = held.user
        if user is not None:
            held.user = None
            left = self._user_conns.get(user, 1) - 1
            if left:
                self._user_conns[user] = left
            else:
                self._user_conns.pop(user, None)
                self._user_throttles.pop(user, None)

    def throttles(self, held: Held | None, user: str | None, make: Any) -> tuple[Any, ...]:
        """The rate limiters for a new relay: its own, and its user's shared one.

        ``make(rate)`` builds one for the relay in use (an engine throttle or a
        TokenBucket pair).  The user's is shared by that user's relays in
        this process and dropped with the last of them.
        """
        s = self.settings
        found: list[Any] = []
        if s.bandwidth_per_connection:
            found.append(make(s.bandwidth_per_connection))
        if user is not None and held is not None:
            rate = s.user_bandwidth(user)
            if rate:
                kinds = self._user_throttles.setdefault(user, {})
                shared = kinds.get(make)
                if shared is None or shared[0] != rate:  # new, or changed by a reload
                    shared = kinds[make] = (rate, make(rate))
                found.append(shared[1])
                held.user = user
                self._user_conns[user] = self._user_conns.get(user, 0) + 1
        return tuple(found)

    def _rate(self, ip: str, rate: float) -> str | None:
        """Sliding 1 s window: this window's count plus the last one's, weighted."""
        now = time.monotonic()
        window = int(now)
        counts = self.counts
        if window != self._window:
            self._expire(window)
        current = _key("rate", ip, window)
        previous = counts.get(_key("rate", ip, window - 1))
        estimate = counts.get(current) + previous * (1.0 - (now - window))
        if estimate >= rate:
            return "handshake_rate_per_ip"
        if counts.add(current, 1) == 1:  # new this window: expire it with the window
            self._rate_keys.setdefault(window, []).append(current)
        return None

    def _expire(self, window: int) -> None:
        self._window = window
        counts = self.counts
        for old in [w for w in self._rate_keys if w < window - 1]:
            for key in self._rate_keys.pop(old):
                counts.drop(key)

    def _reject(self, limit: str, ip: str | None, user: str | None = None) -> str:
        self.rejected[limit] += 1
        if self.metrics is not None:
            self.metrics.limited(limit)
        if limit == "handshakes":
            return limit  # one warning per episode: HandshakeSlots says it
        # One warning per limit per 10 s, with how many were refused since.
        now = time.monotonic()
        since, count = self._warned.get(limit, (0.0, 0))
        if now - since >= 10.0:
            who = f"user {user!r}" if user is not None else (ip or "?")
            more = f" (and {count} more refused since the last warning)" if count else ""
            log.warning("limit %s reached: refused a connection from %s%s", limit, who, more)
            self._warned[limit] = (now, 0)
        else:
            self._warned[limit] = (since, count + 1)
        return limit

