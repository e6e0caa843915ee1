"""Outbound connects (Happy Eyeballs, RFC 8305), with SOCKS reply codes for failures.

Names are looked up by ``dns.py`` (the cache, c-ares or the system
resolver); ``resolve`` is that lookup with the SOCKS answer for a name that
does not resolve (X'04').  ``Connector`` dials a list of addresses, or a
name as its addresses come in, racing the attempts as RFC 8305 says.
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import os
import socket
from collections import deque
from typing import Any, Callable, Iterable, Sequence

from ..constants import Reply
from . import dns
from .address import unmapped

__all__ = [
    "ConnectError",
    "source_addresses",
    "resolve",
    "resolve_cached",
    "resolve_and_cache",
    "Connector",
    "literal_addresses",
    "reply_for_errno",
    "unmapped",
    "Refused",
    "CONNECTION_ATTEMPT_DELAY",
]

Address = tuple[int, Any]  # (family, sockaddr)

# Which failure to report when several addresses failed differently: the one
# that says most about the target comes first.
_PRECEDENCE = (
    Reply.CONNECTION_REFUSED,
    Reply.HOST_UNREACHABLE,
    Reply.NETWORK_UNREACHABLE,
    Reply.NOT_ALLOWED,
    Reply.ATYP_NOT_SUPPORTED,
    Reply.GENERAL_FAILURE,
)

_ERRNO_REPLY = {
    errno.ECONNREFUSED: Reply.CONNECTION_REFUSED,
    errno.ENETUNREACH: Reply.NETWORK_UNREACHABLE,
    errno.ENETDOWN: Reply.NETWORK_UNREACHABLE,
    errno.EHOSTUNREACH: Reply.HOST_UNREACHABLE,
    errno.ETIMEDOUT: Reply.HOST_UNREACHABLE,
    errno.EAFNOSUPPORT: Reply.ATYP_NOT_SUPPORTED,
}
_IN_PROGRESS = (errno.EINPROGRESS, errno.EAGAIN, getattr(errno, "EWOULDBLOCK", errno.EAGAIN))
# Outbound sockets are made non-blocking by socket(2) itself where the flag
# exists (Linux): one ioctl less per connection than setblocking(False).
_SOCK_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)
_STREAM_NONBLOCKING = socket.SOCK_STREAM | _SOCK_NONBLOCK

if hasattr(errno, "EHOSTDOWN"):
    _ERRNO_REPLY[errno.EHOSTDOWN] = Reply.HOST_UNREACHABLE

# Linux: bind() to a source address without reserving a port; connect() picks
# the port, so the 4-tuple, not the source port alone, must be unique (many
# more outgoing connections from one address).  Python lacks the name.
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT",
                                   24 if os.uname().sysname == "Linux" else None)


class ConnectError(Exception):
    """Resolving or connecting failed; ``reply`` is the SOCKS code to send."""

    def __init__(self, reply: int, reason: str, timed_out: bool = False) -> None:
        super().__init__(reason)
        self.reply = reply
        self.reason = reason
        # The connect timeout ran out (X'04' either way; the access log and
        # the metrics tell it apart from an unreachable host).
        self.timed_out = timed_out


class Refused(ConnectError):
    """The access rules allowed none of a name's addresses (X'02').

    ``denial`` is the judge's reason for the first refused address (opaque
    here), ``address`` that address.
    """

    def __init__(self, denial: Any, address: str | None) -> None:
        super().__init__(Reply.NOT_ALLOWED, f"denied: {denial}")
        self.denial = denial
        self.address = address


def reply_for_errno(err: int | None) -> int:
    return _ERRNO_REPLY.get(err or 0, Reply.GENERAL_FAILURE)


def literal_addresses(host: str, port: int) -> list[Address] | None:
    """The address of an IP literal, without a lookup; None for a name."""
    if ":" not in host and not host[-1:].isdigit():
        return None  # a dotted IPv4 address ends in a digit, an IPv6 one has a colon
    try:
        socket.inet_pton(socket.AF_INET, host)
        return [(socket.AF_INET, (host, port))]
    except (OSError, ValueError):  # ValueError: a NUL in it (a name, then; none resolves)
        pass
    addr, _, scope = host.partition("%")
    try:
        socket.inet_pton(socket.AF_INET6, addr)
    except (OSError, ValueError):
        return None
    if scope:
        try:
            infos = socket.getaddrinfo(host, port, socket.AF_INET6, socket.SOCK_STREAM,
                                       flags=socket.AI_NUMERICHOST)
        except (OSError, ValueError):  # no such interface, or a scope no text names (idna)
            return None  # a name, then, which resolves to nothing: X'04' (issue 17)
        return [(socket.AF_INET6, infos[0][4])]
    return [(socket.AF_INET6, (addr, port, 0, 0))]


def source_addresses(addresses: Iterable[str]) -> tuple[Any, ...]:
    """(family, sockaddr with port 0) for each configured outbound address.

    ``[outbound] address`` (one IPv4 and/or one IPv6 address), per user
    (``[outbound.users]``) or per rule (``source``): the source address of
    outgoing connections, picked by the target's family (no address for
    that family: the system chooses).  ``[outbound] interface`` binds them
    to a device (SO_BINDTODEVICE; needs CAP_NET_RAW, i.e. root, on Linux).
    """
    out = []
    for text in addresses:
        literal = literal_addresses(text, 0)
        if literal:
            out.extend(literal)
    return tuple(out)



def _sockaddrs(family: int, addresses: Iterable[str], port: int) -> list[Address]:
    if family == socket.AF_INET6:
        return [(family, (a, port, 0, 0)) for a in addresses]
    return [(family, (a, port)) for a in addresses]


async def resolve(host: str, port: int) -> list[Address]:
    """``host``'s addresses, IPv6 first, from the cache or a lookup; raises only ConnectError."""
    try:
        literal = literal_addresses(host, port)
    except (ValueError, OSError) as exc:  # a NUL in the name, a bad scope
        raise ConnectError(Reply.HOST_UNREACHABLE, f"cannot resolve {host!r}: {exc}") from None
    if literal is not None:
        return literal
    loop = asyncio.get_running_loop()
    done: asyncio.Future[str | None] = loop.create_future()
    found: list[Address] = []

    def on_addresses(family: int, addresses: tuple[str, ...]) -> None:
        found.extend(_sockaddrs(family, addresses, port))

    def on_end(reason: str | None) -> None:
        if not done.done():
            done.set_result(reason)

    resolution = dns.Resolution(dns.CACHE, host, on_addresses, on_end)
    try:
        resolution.start()
        reason = await done
    finally:
        resolution.cancel()  # a cancelled caller leaves the lookup to finish alone
    if not found:
        raise ConnectError(Reply.HOST_UNREACHABLE, reason or f"cannot resolve {host!r}")
    found.sort(key=lambda entry: entry[0] != socket.AF_INET6)  # stable: IPv6 first
    return found


def resolve_cached(host: str, port: int) -> list[Address] | None:
    """Addresses from the literal or the cache, at once (a dict lookup); None on a miss.

    Raises ConnectError when the cache knows the name has no address.
    """
    literal = literal_addresses(host, port)
    if literal is not None:
        return literal
    cache = dns.CACHE
    v6 = cache.get(host, socket.AF_INET6)
    v4 = cache.get(host, socket.AF_INET)
    out: list[Address] = []
    if isinstance(v6, tuple):
        out = _sockaddrs(socket.AF_INET6, v6, port)
    if isinstance(v4, tuple):
        out += _sockaddrs(socket.AF_INET, v4, port)
    if out:
        return out
    if isinstance(v6, str) and isinstance(v4, str):
        raise ConnectError(Reply.HOST_UNREACHABLE, v4)
    return None


async def resolve_and_cache(host: str, port: int) -> list[Address]:
    """``resolve()``: every lookup fills the cache that ``resolve_cached`` reads."""
    return await resolve(host, port)


#: RFC 8305 §5: how long an attempt has before the next one starts beside it.
CONNECTION_ATTEMPT_DELAY = 0.25


class Connector:
    """Connect to the first of some addresses that answers, RFC 8305 (Happy Eyeballs v2).

    Attempts alternate between the families (§4; the first address's family
    first, IPv6 for a name); each next attempt starts ``CONNECTION_ATTEMPT_DELAY``
    after the last one, or at once when one fails (§5), while the earlier
    ones go on.  The first to connect wins: the others are closed.  The
    whole is bounded by ``timeout`` (from the constructor: a name's lookup
    counts too), reported as X'04' (host unreachable), like ETIMEDOUT.

    ``start()`` dials ``addresses``; ``resolve(host, port, judge)`` looks a
    name up (``dns.Resolution``: AAAA and A at once, §3) and dials each
    family's addresses as they come, after ``judge(addresses)`` returned
    (allowed, refusal): the access rules' pass 2.  None allowed in the end:
    ``Refused`` with the first refusal.

    Driven by callbacks (non-blocking connect() and writer callbacks), not a
    task per attempt: this is on every CONNECT's path.  ``on_done(sock,
    None)`` gets the connected socket (``sockaddr`` is what it connected
    to), ``on_done(None, error)`` the ConnectError; ``cancel()`` stops it
    and closes every socket in flight; ``on_done`` is then never called.

    ``sources`` are (family, sockaddr) source addresses (the outbound
    address): each socket is bound to the one of its target's family, if
    any, before connecting; ``interface`` binds it to a device.
    """

    __slots__ = ("loop", "queues", "on_done", "timeout", "failures", "attempts", "sockaddr",
                 "timer", "deadline", "sources", "interface", "next_family", "resolution",
                 "judge", "refusal", "over", "port", "admitted")

    def __init__(self, loop: asyncio.AbstractEventLoop, addresses: list[Address],
                 timeout: float, on_done: Callable[[Any, ConnectError | None], None],
                 sources: Sequence[Address] = (), interface: str | None = None) -> None:
        self.sources = sources
        self.interface = interface
        self.loop = loop
        self.on_done = on_done
        self.timeout = timeout
        self.queues: dict[int, deque[Any]] = {socket.AF_INET6: deque(), socket.AF_INET: deque()}
        self.next_family = addresses[0][0] if addresses else socket.AF_INET6
        for family, sockaddr in addresses:
            self.queues.setdefault(family, deque()).append(sockaddr)
        self.failures: list[tuple[int, str, bool]] = []  # (reply, why, timed out)
        self.attempts: dict[int, tuple[Any, Any]] = {}  # fd → (socket, sockaddr) in flight
        self.sockaddr: Any = None
        self.timer: asyncio.TimerHandle | None = None  # the next attempt (§5)
        self.deadline: asyncio.TimerHandle | None = None
        self.resolution: dns.Resolution | None = None  # the name's lookup, while it runs
        self.judge: Callable[[list[Address]], tuple[list[Address], Any]] | None = None
        self.refusal: tuple[Any, str] | None = None  # (denial, address) of the first refused
        self.over = False
        self.port = 0
        self.admitted = 0  # addresses the judge allowed so far

    def start(self) -> None:
        self.deadline = self.loop.call_later(self.timeout, self._timed_out)
        self._next()

    def resolve(self, host: str, port: int,
                judge: Callable[[list[Address]], tuple[list[Address], Any]] | None = None
                ) -> None:
        """Look ``host`` up and dial its addresses as they come (RFC 8305 §3)."""
        self.port = port
        self.judge = judge
        self.deadline = self.loop.call_later(self.timeout, self._timed_out)
        resolution = self.resolution = dns.Resolution(dns.CACHE, host, self._resolved,
                                                      self._resolution_ended)
        resolution.start()

    def _resolved(self, family: int, addresses: tuple[str, ...]) -> None:
        entries = _sockaddrs(family, addresses, self.port)
        if self.judge is not None:
            entries, refusal = self.judge(entries)
            if self.over:  # the judge ended the connection (or chains it)
                return
            if refusal is not None and self.refusal is None:
                self.refusal = refusal
        if not entries:
            return
        self.admitted += len(entries)
        queue = self.queues[family]
        queue.extend(sockaddr for _, sockaddr in entries)
        if not self.attempts or self.timer is None:
            # Nothing in flight, or the attempt delay ran out with nothing to start.
            self._next()

    def _resolution_ended(self, reason: str | None) -> None:
        self.resolution = None
        if reason is not None and not self.failures and self.refusal is None:
            self._finish(None, ConnectError(Reply.HOST_UNREACHABLE, reason))
        elif not self.attempts and not any(self.queues.values()):
            self._give_up()

    def _pop(self) -> tuple[int, Any] | None:
        """The next address: the other family than the last attempt's when it has one (§4)."""
        first = self.next_family
        for family in (first, socket.AF_INET if first == socket.AF_INET6 else socket.AF_INET6):
            queue = self.queues.get(family)
            if queue:
                self.next_family = socket.AF_INET if family == socket.AF_INET6 \
                    else socket.AF_INET6
                return family, queue.popleft()
        return None

    def _next(self) -> None:
        """Start the next attempt (and schedule the one after it); give up when none is left."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        while not self.over:
            entry = self._pop()
            if entry is None:
                if not self.attempts and self.resolution is None:
                    self._give_up()
                return
            family, sockaddr = entry
            self.sockaddr = sockaddr
            try:
                sock = _socket.socket(family, _STREAM_NONBLOCKING)
            except OSError as exc:
                self._failed(sockaddr, reply_for_errno(exc.errno), exc.strerror or str(exc))
                continue
            if not _SOCK_NONBLOCK:
                sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.sources or self.interface:
                try:
                    self._bind_source(sock, family)
                except OSError as exc:
                    sock.close()
                    self._failed(sockaddr, reply_for_errno(exc.errno),
                                 f"binding the outbound address: {exc.strerror or exc}")
                    continue
            err = sock.connect_ex(sockaddr)
            if err == 0:
                self._succeeded(sock, sockaddr)
                return
            if err not in _IN_PROGRESS:
                sock.close()
                self._failed(sockaddr, reply_for_errno(err), os.strerror(err))
                continue
            fd = sock.fileno()
            self.attempts[fd] = (sock, sockaddr)
            self.loop.add_writer(fd, self._writable, fd)
            if self.resolution is not None or any(self.queues.values()):
                self.timer = self.loop.call_later(CONNECTION_ATTEMPT_DELAY, self._delay_over)
            return

    def _delay_over(self) -> None:
        self.timer = None
        self._next()

    def _bind_source(self, sock: Any, family: int) -> None:
        if self.interface:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE,
                            self.interface.encode() + b"\0")
        for source_family, source in self.sources:
            if source_family == family:
                if _IP_BIND_ADDRESS_NO_PORT is not None:
                    try:
                        sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
                    except OSError:
                        pass  # an old kernel: bind() reserves a port, still correct
                sock.bind(source)
                return

    def cancel(self) -> None:
        """Stop: the lookup released, every socket in flight closed, no ``on_done``."""
        self.over = True
        self._stop(None)

    def _stop(self, keep: Any) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        if self.resolution is not None:
            self.resolution.cancel()
            self.resolution = None
        attempts, self.attempts = self.attempts, {}
        for fd, (sock, _) in attempts.items():
            self.loop.remove_writer(fd)
            if sock is not keep:
                sock.close()

    def _writable(self, fd: int) -> None:
        sock, sockaddr = self.attempts.pop(fd)
        self.loop.remove_writer(fd)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err == 0:
            self._succeeded(sock, sockaddr)
            return
        sock.close()
        self._failed(sockaddr, reply_for_errno(err), os.strerror(err))
        self._next()  # §5: a failed attempt starts the next one at once

    def _timed_out(self) -> None:
        self.deadline = None
        for _, sockaddr in self.attempts.values():
            self._failed(sockaddr, Reply.HOST_UNREACHABLE, "connect timed out", True)
        if self.resolution is not None and not self.failures and self.refusal is None:
            self._finish(None, ConnectError(Reply.HOST_UNREACHABLE,
                                            "name lookup timed out", True))
            return
        self._give_up()

    def _succeeded(self, sock: Any, sockaddr: Any) -> None:
        self.sockaddr = sockaddr
        self._finish(sock, None)

    def _finish(self, sock: Any, error: ConnectError | None) -> None:
        if self.over:
            return
        self.over = True
        self._stop(sock)
        self.on_done(sock, error)

    def _failed(self, sockaddr: Any, reply: int, reason: str, timed_out: bool = False) -> None:
        self.failures.append((reply, f"{sockaddr[0]} port {sockaddr[1]}: {reason}", timed_out))

    def _give_up(self) -> None:
        if not self.failures:
            if self.refusal is not None:
                self._finish(None, Refused(*self.refusal))
                return
            self._finish(None, ConnectError(Reply.HOST_UNREACHABLE, "connect timed out", True))
            return
        reply, reason, timed_out = min(
            self.failures, key=lambda f: _PRECEDENCE.index(f[0]) if f[0] in _PRECEDENCE else 99)
        self._finish(None, ConnectError(reply, reason, timed_out))
