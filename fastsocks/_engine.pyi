"""Type stub of the Linux relay engine (``_engine.pyx``: epoll + splice(2))."""

from __future__ import annotations

from typing import Callable

#: Why a pair ended, by the index the engine reports.
REASONS: tuple[str, ...]

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
    ``connected`` when the connect is done (the pair goes on), then once
    when it ends.
    """

    @property
    def active(self) -> int: ...
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
    def negotiate(self, client_fd: int, greet: bool, callback: Callable[..., object]) -> int:
        """Take an accepted connection's SOCKS5 handshake (``callback(reason, data,
        answered, bytes_up, bytes_down, err, connect_us)``: ``request``, ``handback``,
        then as a pair added connecting)."""
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
