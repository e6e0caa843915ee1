"""Name resolution and outbound connects, with SOCKS reply codes for failures."""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import Any

from .constants import Reply

__all__ = [
    "ConnectError",
    "resolve",
    "resolve_cached",
    "resolve_and_cache",
    "open_connection",
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
if hasattr(errno, "EHOSTDOWN"):
    _ERRNO_REPLY[errno.EHOSTDOWN] = Reply.HOST_UNREACHABLE


class ConnectError(Exception):
    """Resolving or connecting failed; ``reply`` is the SOCKS code to send."""

    def __init__(self, reply: int, reason: str) -> None:
        super().__init__(reason)
        self.reply = reply
        self.reason = reason


def unmapped(host: str) -> str:
    """``::ffff:1.2.3.4`` → ``1.2.3.4``: compare addresses in one form."""
    return host[7:] if host.startswith("::ffff:") and "." in host else host


def reply_for_errno(err: int | None) -> int:
    return _ERRNO_REPLY.get(err or 0, Reply.GENERAL_FAILURE)


def _literal(host: str, port: int) -> list[Address] | None:
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


async def resolve(host: str, port: int) -> list[Address]:
    """Addresses for ``host`` in the system's preferred order; off the loop."""
    literal = _literal(host, port)
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
    literal = _literal(host, port)
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


async def _connect_one(family: int, sockaddr: Any, timeout: float) -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.wait_for(loop.sock_connect(sock, sockaddr), timeout)
    except BaseException:
        sock.close()
        raise
    return sock


async def open_connection(addresses: list[Address], timeout: float) -> socket.socket:
    """Connect to the first address that answers within ``timeout`` in all.

    Addresses are tried in order; each gets an equal share of what is left
    of the timeout (the last one all of it), so one black-holed address
    cannot use up the time of the others.  A timeout is reported as X'04'
    (host unreachable), like ETIMEDOUT from the kernel.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    failures: list[tuple[int, str]] = []
    for index, (family, sockaddr) in enumerate(addresses):
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        share = remaining / (len(addresses) - index)
        try:
            return await _connect_one(family, sockaddr, share)
        except asyncio.TimeoutError:
            failures.append((Reply.HOST_UNREACHABLE, f"{sockaddr[0]} port {sockaddr[1]}: connect timed out"))
        except OSError as exc:
            failures.append((reply_for_errno(exc.errno), f"{sockaddr[0]} port {sockaddr[1]}: {exc.strerror or exc}"))
    if not failures:
        raise ConnectError(Reply.HOST_UNREACHABLE, "connect timed out")
    reply, reason = min(failures, key=lambda f: _PRECEDENCE.index(f[0]) if f[0] in _PRECEDENCE else 99)
    raise ConnectError(reply, reason)
