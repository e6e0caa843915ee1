"""Type stub of the Linux relay engine (``_engine.pyx``: epoll + splice(2))."""

from __future__ import annotations

from typing import Callable, Iterable

#: Why a pair ended, by the index the engine reports.
REASONS: tuple[str, ...]

#: What a negotiation may answer itself (``greet``; constants.Greet has the same).
GREET_NONE: int
GREET_OPEN: int
GREET_LOGIN: int
#: What the engine sent before a negotiation's report (``answered``; constants.Sent).
SENT_NOTHING: int
SENT_OPEN: int
SENT_METHOD: int
SENT_LOGIN: int

def login_mac(key: bytes, name: bytes, password: bytes) -> bytes:
    """BLAKE2s-256 under ``key`` of the RFC 1929 name and password, each after its
    length in 4 bytes, big-endian: how ``Engine.logins`` knows a login."""
    ...

def first_byte(fd: int) -> int:
    """The first byte queued on a fresh connection (MSG_PEEK), or -1."""
    ...

class Throttle:
    """A bandwidth limit (bytes per second, each direction) for engine pairs."""

    @property
    def rate(self) -> float: ...
    def __init__(self, rate: float) -> None: ...

class Engine:
    """One relay thread and the pairs it owns; call from the event loop thread.

    ``add()``'s callback gets ``(bytes_up, bytes_down, reason)``, and for a
    pair added with ``connect_timeout`` (its connect still in progress)
    ``(bytes_up, bytes_down, reason, err, connect_us)``: once with reason
    ``connected`` if the pair still relays at the engine's first scan after
    its connect (the pair goes on), then once when it ends.
    """

    #: How many more unfinished handshakes the quota leaves the engine (-1: no quota).
    handshake_room: int
    #: ``on_exhausted(errno)``: accepting paused, no descriptor (or memory) left.
    on_exhausted: Callable[[int], object] | None

    @property
    def active(self) -> int: ...
    @property
    def unseen(self) -> int:
        """Connections accepted here whose first report the loop has not had yet."""
        ...
    @property
    def shaking(self) -> int:
        """Of ``unseen``, those still in their handshake (not the quiet ones dialled)."""
        ...
    @property
    def bulk(self) -> str:
        """How a direction relays once bulk: "splice", "copy" or "auto" (copy
        where both sockets' TCP segment size is 16 KiB or more)."""
        ...
    @bulk.setter
    def bulk(self, mode: str) -> None: ...
    @property
    def bulk_switches(self) -> tuple[int, int]:
        """How many directions went bulk here: (by splice, by copying)."""
        ...
    @property
    def bulk_held(self) -> int:
        """Bulk buffers that short writes hold, in every engine of this process."""
        ...
    @property
    def bulk_held_max(self) -> int:
        """At most this many bulk buffers held at once in this process."""
        ...
    @bulk_held_max.setter
    def bulk_held_max(self, n: int) -> None: ...
    @property
    def done_fileno(self) -> int: ...
    def __init__(self) -> None: ...
    def start(self) -> None: ...
    def throttle(self, rate: float) -> Throttle: ...
    def add(
        self,
        client_fd: int,
        upstream_fd: int,
        to_upstream: bytes,
        to_client: bytes,
        idle_timeout: float,
        callback: Callable[..., object],
        throttles: tuple[Throttle, ...] = ...,
        *,
        nonblocking: bool = ...,
        connect_timeout: float = ...,
    ) -> int: ...
    def negotiate(self, client_fd: int, greet: int, callback: Callable[..., object],
                  dial_timeout: float = ..., idle_timeout: float = ...) -> int:
        """Take an accepted connection's SOCKS5 handshake (``callback(reason, data,
        answered, bytes_up, bytes_down, err, connect_us)``: ``request``, ``dialling``,
        ``handback``, then as a pair added connecting)."""
        ...
    def listen(self, fd: int, key: int, accepted: Callable[..., object], greet: int,
               dial_timeout: float = ..., idle_timeout: float = ..., slow: float = ...,
               ended: Callable[..., object] | None = ...) -> None:
        """Accept on the listening socket ``fd`` (the engine's own) and negotiate each
        connection; ``accepted(id, fd, peer, age, dialling)`` gives each one's callback
        with its first report.  With ``ended``, one dialled here that ends before its
        first scan is reported once, to ``ended(peer, data, answered, up, down, reason,
        handshake, duration)``.  ``fd`` -1: new settings for ``key``."""
        ...
    def unlisten(self, key: int) -> None: ...
    def logins(self, key: bytes | None = ..., macs: Iterable[bytes] = ...) -> None:
        """The RFC 1929 logins answered here (GREET_LOGIN): ``macs`` under ``key``."""
        ...
    def add_login(self, mac: bytes) -> None: ...
    def remember(self, name: bytes, address: bytes, until: float) -> None:
        """Dial a CONNECT by ``name`` here, to ``address`` (packed), until ``until``."""
        ...
    def forget(self) -> None:
        """Dial no name here until ``remember`` again."""
        ...
    @property
    def name_dials(self) -> int:
        """CONNECTs by name dialled here."""
        ...
    def pause_logins(self, until: float) -> None:
        """Every login goes to the loop until ``until`` (time.monotonic())."""
        ...
    def dial(
        self,
        pair_id: int,
        upstream_fd: int,
        to_upstream: bytes,
        to_client: bytes,
        idle_timeout: float,
        throttles: tuple[Throttle, ...] = ...,
        connect_timeout: float = ...,
    ) -> bool: ...
    def end(self, pair_id: int, last: bytes = ...) -> None: ...
    def close(self, pair_id: int, reason: str = ...) -> None: ...
    def close_all(self, reason: str = ...) -> None: ...
    def stop(self) -> None: ...
    def collect(self) -> int: ...
