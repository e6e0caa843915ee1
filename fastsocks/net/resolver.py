"""Where a request goes: addresses, lookups, and the SOCKS reply codes for failures.

Names are looked up by ``dns.py`` (the cache, c-ares or the system
resolver); ``resolve`` is that lookup with the SOCKS answer for a name that
does not resolve (X'04').  ``ConnectError`` carries the reply code of any
failure to resolve or connect; ``connector.py`` dials the addresses.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import Any, Iterable

from ..constants import Reply
from . import dns
from .address import unmapped

__all__ = [
    "ConnectError",
    "source_addresses",
    "resolve",
    "resolve_cached",
    "cached_only_address",
    "cached_until",
    "resolve_and_cache",
    "literal_addresses",
    "reply_for_errno",
    "Address",
    "sockaddrs",
    "unmapped",
    "Refused",
]

Address = tuple[int, Any]  # (family, sockaddr)

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



def sockaddrs(family: int, addresses: Iterable[str], port: int) -> list[Address]:
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
        found.extend(sockaddrs(family, addresses, port))

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
        out = sockaddrs(socket.AF_INET6, v6, port)
    if isinstance(v4, tuple):
        out += sockaddrs(socket.AF_INET, v4, port)
    if out:
        return out
    if isinstance(v6, str) and isinstance(v4, str):
        raise ConnectError(Reply.HOST_UNREACHABLE, v4)
    return None


def cached_only_address(host: str, port: int) -> Address | None:
    """The one address of a name the cache knows completely; None otherwise.

    Completely: one family cached with a single address and the other
    cached as having none (a negative answer, e.g. an IPv4-only name).  Then
    RFC 8305 has nothing to race, and the name is dialled like a literal.
    A miss in either family, or more than one address, is None: the
    Connector looks it up and races the attempts.
    """
    cache = dns.CACHE
    v6 = cache.get(host, socket.AF_INET6)
    if v6 is None:
        return None
    v4 = cache.get(host, socket.AF_INET)
    if isinstance(v6, str):
        family, only = socket.AF_INET, v4
    elif isinstance(v4, str):
        family, only = socket.AF_INET6, v6
    else:
        return None
    if not isinstance(only, tuple) or len(only) != 1:
        return None
    return sockaddrs(family, only, port)[0]


def cached_until(host: str) -> float:
    """Until when the cache knows ``host`` as it does now: the sooner expiry
    of its two families' answers (time.monotonic()); 0 when one is missing."""
    cache = dns.CACHE
    return min(cache.until(host, socket.AF_INET6), cache.until(host, socket.AF_INET))


async def resolve_and_cache(host: str, port: int) -> list[Address]:
    """``resolve()``: every lookup fills the cache that ``resolve_cached`` reads."""
    return await resolve(host, port)
