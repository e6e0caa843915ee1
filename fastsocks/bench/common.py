"""What every ``fastsocks bench`` mode shares: bounds, the run's configuration, counters.

The bounds keep every loop finite in count as well as in time, whatever the
duration asked for.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
import sys
import time
from typing import Callable

from .._accel import new_event_loop
from ..net.client import SocksError

__all__ = [
    "Config",
    "Progress",
    "Stats",
    "percentile",
    "cpu_now",
    "cpu_split",
    "family",
    "new_event_loop",
]

BUFFER_SIZE = 1 << 20  # the 1 MiB preallocated send / receive buffer
PAYLOAD_SIZE = 64  # bytes echoed per handshake
IO_TIMEOUT = 10.0  # seconds any single blocking operation may take
MAX_HANDSHAKES = 50_000_000  # hard bound on loop iterations, whatever the duration
MAX_STREAMS = 256
MAX_CONCURRENCY = 4096
MAX_CONNECTIONS = 9000  # idle mode: the generator holds one fd per connection
MAX_DURATION = 3600.0
ENGINES = ("auto", "epoll", "uvloop", "asyncio", "threads")
MODES = ("throughput", "handshake", "idle", "udp-rtt", "udp-oneway")
# --target-name: what a name may be here (its ASCII form: SOCKS5 ATYP X'03', SOCKS4a and
# an HTTP request line all carry it as it is; RFC 1928 §5 bounds it at 255 octets).
_NAME = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?")
GiB = 1 << 30

UDP_RTT_SIZE = 64  # udp-rtt: payload bytes per datagram (after the SOCKS UDP header)
UDP_ONEWAY_SIZE = 1200  # udp-oneway: payload bytes per datagram
UDP_MAX_SIZE = 65000  # payload, leaving room for a SOCKS UDP header under 65,507
UDP_RTT_TIMEOUT = 0.5  # s: an echo not back by then is counted lost
UDP_MAX_ASSOCIATIONS = 1024  # udp-rtt: two fds each in the generator
UDP_MAX_RATE = 10_000_000  # udp-oneway --rate bound (datagrams/s)
UDP_MAX_DATAGRAMS = 2_000_000_000  # hard bound on datagrams sent in one run
UDP_SOCKET_BUFFER = 4 << 20  # SO_RCVBUF/SO_SNDBUF of the targets and the generator
UDP_PACE_BURST = 256  # paced sending: at most this many datagrams back to back


@dataclasses.dataclass
class Config:
    mode: str = "throughput"  # throughput | handshake | idle | udp-rtt | udp-oneway
    proxy: tuple[str, int] | None = None
    protocol: str = "socks5"  # socks5 | socks4 | http: how a TCP mode asks the proxy
    auth: tuple[str, str] | None = None
    target: tuple[str, int] | None = None  # None: start a local sink/echo
    target_name: str | None = None  # TCP modes: ask the proxy for this name, the target's port
    streams: int = 1
    concurrency: int = 1
    connections: int = 1000
    duration: float = 5.0
    engine: str = "auto"  # auto | uvloop | asyncio | threads (handshake, idle)
    local_target: str = "thread"  # thread | process (see the package docstring)
    server_pid: int | None = None
    progress: bool = False
    rate: float | None = None  # udp-oneway: datagrams/s; None: unpaced
    size: int | None = None  # UDP payload bytes; None: 64 (udp-rtt) or 1200 (udp-oneway)

    @property
    def udp(self) -> bool:
        return self.mode.startswith("udp-")

    @property
    def payload_size(self) -> int:
        if self.size is not None:
            return self.size
        return UDP_RTT_SIZE if self.mode == "udp-rtt" else UDP_ONEWAY_SIZE

    def asked(self, target: tuple[str, int]) -> tuple[str, int]:
        """What the proxy is asked to CONNECT to: ``target``, or the name with its port."""
        if self.target_name is None:
            return target
        return self.target_name, target[1]

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}")
        if self.target_name is not None:
            self._validate_name(self.target_name)
        if self.protocol not in ("socks5", "socks4", "http"):
            raise ValueError(f"unknown protocol {self.protocol!r}: socks5, socks4 or http")
        if self.protocol != "socks5" and self.udp:
            raise ValueError(f"--protocol {self.protocol} has no UDP: the udp modes are SOCKS5")
        if self.mode == "udp-rtt" and not 1 <= self.concurrency <= UDP_MAX_ASSOCIATIONS:
            raise ValueError(f"--concurrency must be 1..{UDP_MAX_ASSOCIATIONS} in udp-rtt mode "
                             "(one association, two fds, each)")
        if self.rate is not None and (self.mode != "udp-oneway"
                                      or not 1 <= self.rate <= UDP_MAX_RATE):
            raise ValueError(f"--rate is for udp-oneway only, 1..{UDP_MAX_RATE} datagrams/s")
        if self.size is not None and (not self.udp or not 16 <= self.size <= UDP_MAX_SIZE):
            raise ValueError(f"--size is for the UDP modes only, 16..{UDP_MAX_SIZE} bytes")
        if not 0 < self.duration <= MAX_DURATION:
            raise ValueError(f"--duration must be in (0, {MAX_DURATION:g}] seconds")
        if not 1 <= self.streams <= MAX_STREAMS:
            raise ValueError(f"--streams must be 1..{MAX_STREAMS}")
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise ValueError(f"--concurrency must be 1..{MAX_CONCURRENCY}")
        if not 1 <= self.connections <= MAX_CONNECTIONS:
            raise ValueError(f"--connections must be 1..{MAX_CONNECTIONS} (one fd each "
                             "in the generator, two in a relaying server)")
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}")

    def _validate_name(self, name: str) -> None:
        if self.udp:
            raise ValueError("--target-name is for the TCP modes (throughput, handshake, idle): "
                             "the udp modes address their datagrams to --target")
        if self.proxy is None:
            raise ValueError("--target-name is the name the proxy is asked for: it needs --proxy")
        try:
            ipaddress.ip_address(name)
        except ValueError:
            pass
        else:
            raise ValueError(f"--target-name {name}: an address, not a name; "
                             "an address goes in --target")
        if not _NAME.fullmatch(name) or len(name) > 255:
            raise ValueError(f"--target-name {name!r}: not a host name (letters, digits, '-', "
                             "'_' and dots, at most 255 octets; a non-ASCII name in its "
                             "xn-- form)")


class Progress:
    """A line on stderr, rewritten about once a second (only when enabled)."""

    def __init__(self, enabled: bool, total: float, text: Callable[[], str]) -> None:
        self.enabled, self.total, self.text = enabled, total, text
        self.start = time.monotonic()
        self.last = self.start
        self.shown = False

    def tick(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self.last < 1.0:
            return
        self.last = now
        elapsed = min(now - self.start, self.total)
        sys.stderr.write(f"\r\x1b[K{elapsed:5.1f}/{self.total:g} s  {self.text()}")
        sys.stderr.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


class Stats:
    """Latencies of the cycles that succeeded and a count of the errors, by kind."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}
        self.first_error: str | None = None

    def error(self, exc: BaseException) -> None:
        key = type(exc).__name__ + (f" X'{exc.reply:02X}'" if isinstance(exc, SocksError)
                                    and exc.reply is not None else "")
        self.errors[key] = self.errors.get(key, 0) + 1
        if self.first_error is None:
            self.first_error = f"{type(exc).__name__}: {exc}"


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


def cpu_now() -> float:
    return time.process_time()


def cpu_split() -> tuple[float, float]:
    """(user, system) CPU seconds of this process, all threads."""
    t = os.times()
    return t.user, t.system


def family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
