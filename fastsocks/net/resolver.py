"""Name resolution and outbound connects, with SOCKS reply codes for failures."""

from __future__ import annotations

import _socket
import asyncio
import errno
import os
import socket
from typing import Any, Callable, Iterable, Sequence

from ..constants import Reply
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
    "DNS_CACHE_TTL",
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


def reply_for_errno(err: int | None) -> int:
    return _ERRNO_REPLY.get(err or 0, Reply.GENERAL_FAILURE)


def literal_addresses(host: str, port: int) -> list[Address] | None:
    """The address of an IP literal, without a lookup; None for a name."""
    try:
        socket.inet_pton(socket.AF_INET, host)
        return [(socket.AF_INET, (host, port))]
    except OSError:
        pass
    addr, _, scope = host.partition("%")
    try:
        socket.inet_pton(socket.AF_INET6, addr)
    except OSError:
        return None
    if scope:
        infos = socket.getaddrinfo(host, port, socket.AF_INET6, socket.SOCK_STREAM,
                                   flags=socket.AI_NUMERICHOST)
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


async def resolve(host: str, port: int) -> list[Address]:
    """Addresses for ``host`` in the system's preferred order; off the loop."""
    literal = literal_addresses(host, port)
    if literal is not None:
        return literal
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConnectError(Reply.HOST_UNREACHABLE, f"cannot resolve {host!r}: {exc}") from None
    seen: set[Any] = set()
    out: list[Address] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6) and sockaddr not in seen:
            seen.add(sockaddr)
            out.append((family, sockaddr))
    if not out:
        raise ConnectError(Reply.HOST_UNREACHABLE, f"{host!r} has no IPv4 or IPv6 address")
    return out


# A small cache for the UDP path, where every datagram names its target:
# (host, port) → (expiry, addresses or the ConnectError to raise again).
DNS_CACHE_TTL = 60.0
DNS_NEGATIVE_TTL = 5.0
_CACHE_MAX = 4096
_cache: dict[tuple[str, int], tuple[float, list[Address] | ConnectError]] = {}


def resolve_cached(host: str, port: int) -> list[Address] | None:
    """Addresses from the literal or the cache; None on a miss."""
    literal = literal_addresses(host, port)
    if literal is not None:
        return literal
    entry = _cache.get((host, port))
    if entry is None:
        return None
    expiry, value = entry
    if expiry < asyncio.get_running_loop().time():
        del _cache[(host, port)]
        return None
    if isinstance(value, ConnectError):
        raise value
    return value


async def resolve_and_cache(host: str, port: int) -> list[Address]:
    """``resolve()`` and remember the answer (a failure for less long)."""
    loop = asyncio.get_running_loop()
    if len(_cache) >= _CACHE_MAX:
        _cache.pop(next(iter(_cache)))  # oldest first: dicts keep insertion order
    try:
        addresses = await resolve(host, port)
    except ConnectError as exc:
        _cache[(host, port)] = (loop.time() + DNS_NEGATIVE_TTL, exc)
        raise
    _cache[(host, port)] = (loop.time() + DNS_CACHE_TTL, addresses)
    return addresses


class Connector:
    """Connect to the first of ``addresses`` that answers within ``timeout``.

    Addresses are tried in order; each gets an equal share of what is left
    of the timeout (the last one all of it), so one black-holed address
    cannot use up the time of the others.  A timeout is reported as X'04'
    (host unreachable), like ETIMEDOUT from the kernel.

    Driven by callbacks (a non-blocking connect() and a writer callback), not
    a task per attempt: this is on every CONNECT's path.  ``on_done(sock,
    None)`` gets the connected socket, ``on_done(None, error)`` the
    ConnectError; ``cancel()`` stops it and closes the socket in flight.

    ``sources`` are (family, sockaddr) source addresses (the outbound
    address): each socket is bound to the one of its target's family, if
    any, before connecting; ``interface`` binds it to a device.
    """

    __slots__ = ("loop", "addresses", "on_done", "deadline", "index", "failures", "sock",
                 "sockaddr", "timer", "sources", "interface")

    def __init__(self, loop: asyncio.AbstractEventLoop, addresses: list[Address],
                 timeout: float, on_done: Callable[[Any, ConnectError | None], None],
                 sources: Sequence[Address] = (), interface: str | None = None) -> None:
        self.sources = sources
        self.interface = interface
        self.loop = loop
        self.addresses = addresses
        self.on_done = on_done
        self.deadline = loop.time() + timeout
        self.index = 0
        self.failures: list[tuple[int, str, bool]] = []  # (reply, why, timed out)
        self.sock: Any = None
        self.sockaddr: Any = None
        self.timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        addresses = self.addresses
        while self.index < len(addresses):
            remaining = self.deadline - self.loop.time()
            if remaining <= 0:
                break
            family, sockaddr = addresses[self.index]
            share = remaining / (len(addresses) - self.index)
            self.index += 1
            self.sockaddr = sockaddr
            try:
                sock = _socket.socket(family, socket.SOCK_STREAM)
            except OSError as exc:
                self._failed(reply_for_errno(exc.errno), exc.strerror or str(exc))
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.sources or self.interface:
                try:
                    self._bind_source(sock, family)
                except OSError as exc:
                    sock.close()
                    self._failed(reply_for_errno(exc.errno),
                                 f"binding the outbound address: {exc.strerror or exc}")
                    continue
            err = sock.connect_ex(sockaddr)
            if err == 0:
                self._succeeded(sock)
                return
            if err not in _IN_PROGRESS:
                sock.close()
                self._failed(reply_for_errno(err), os.strerror(err))
                continue
            self.sock = sock
            self.loop.add_writer(sock.fileno(), self._writable)
            self.timer = self.loop.call_later(share, self._timed_out)
            return
        self._give_up()

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
        self._drop()
        self.index = len(self.addresses)

    def _writable(self) -> None:
        sock = self.sock
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        self._drop(close=False)
        if err == 0:
            self._succeeded(sock)
            return
        sock.close()
        self._failed(reply_for_errno(err), os.strerror(err))
        self.start()

    def _timed_out(self) -> None:
        self.timer = None
        self._drop()
        self._failed(Reply.HOST_UNREACHABLE, "connect timed out", True)
        self.start()

    def _drop(self, close: bool = True) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        sock, self.sock = self.sock, None
        if sock is not None:
            self.loop.remove_writer(sock.fileno())
            if close:
                sock.close()

    def _succeeded(self, sock: Any) -> None:
        self.on_done(sock, None)

    def _failed(self, reply: int, reason: str, timed_out: bool = False) -> None:
        self.failures.append((reply, f"{self.sockaddr[0]} port {self.sockaddr[1]}: {reason}",
                              timed_out))

    def _give_up(self) -> None:
        if not self.failures:
            self.on_done(None, ConnectError(Reply.HOST_UNREACHABLE, "connect timed out", True))
            return
        reply, reason, timed_out = min(
            self.failures, key=lambda f: _PRECEDENCE.index(f[0]) if f[0] in _PRECEDENCE else 99)
        self.on_done(None, ConnectError(reply, reason, timed_out))
