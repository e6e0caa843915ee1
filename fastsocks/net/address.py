"""Addresses: formatting (once), listen addresses, IP keys and ranges, what is protected.

Everything here is pure and cheap; the control plane, the configuration and
the observers all format and compare addresses through it, so an address
reads the same in a log line, an error and ``fastsocks check``.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, Iterable, Union

from ..errors import ConfigError
from ..tables import RangeSet

__all__ = [
    "format_address",
    "format_peer",
    "parse_listen",
    "parse_sources",
    "is_loopback_host",
    "unmapped",
    "IpKey",
    "RangeSet",
    "ip_key",
    "embedded_ipv4",
    "EMBEDS_BELOW",
    "PROTECTED",
    "protected_kind",
    "protected_inside",
    "normal_network",
    "Bounds",
    "network_bounds",
    "ipv4_bounds",
    "ranges",
    "trusted_ranges",
    "is_trusted",
]

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
IpKey = tuple[int, int]  # (4 or 6, the address as an integer)

_inet_pton = socket.inet_pton
_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6
_MAPPED = b"\0" * 10 + b"\xff\xff"


def format_address(host: str, port: int) -> str:
    """``host:port``, with IPv6 in brackets: ``[::1]:1080``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def format_peer(peer: Any) -> str:
    """A sockaddr tuple (or None, before it is known) for a log line."""
    if not peer:
        return "?"
    return format_address(peer[0], peer[1])


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPV6]:PORT`` into (host, port)."""
    fix = "use HOST:PORT, e.g. 127.0.0.1:1080, or [IPV6]:PORT, e.g. [::1]:1080"
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ConfigError(f"listen address {value!r}: {fix}")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host.partition("%")[0])
        except ValueError:
            raise ConfigError(f"listen address {value!r}: {host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep or not host:
            raise ConfigError(f"listen address {value!r}: {fix}")
        if ":" in host:
            raise ConfigError(f"listen address {value!r}: put IPv6 addresses in brackets, e.g. [::1]:1080")
    try:
        port = int(port_text, 10)
    except ValueError:
        raise ConfigError(f"listen address {value!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"listen address {value!r}: port must be 0 to 65535")
    return host, port


def parse_sources(value: Any, key: str) -> list[str]:
    """Source addresses of outgoing connections: one IP, or at most one of each family.

    ``[outbound] address``, ``[outbound.users]`` and a rule's ``source``;
    ConfigError ``KEY: what is wrong`` otherwise.
    """
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise ConfigError(f"{key}: give an IP address, or one IPv4 and one IPv6 address, e.g. "
                          f"[\"192.0.2.10\", \"2001:db8::10\"], got {value!r}")
    seen: set[int] = set()
    out = []
    for item in items:
        try:
            ip = ipaddress.ip_address(item.partition("%")[0]) if isinstance(item, str) else None
        except ValueError:
            ip = None
        if ip is None:
            raise ConfigError(f"{key}: {item!r} is not an IPv4 or IPv6 address")
        if ip.version in seen:
            raise ConfigError(f"{key}: more than one IPv{ip.version} address; give at most one "
                              "of each family")
        seen.add(ip.version)
        out.append(item)
    return out


def is_loopback_host(host: str) -> bool:
    """True when every address ``host`` names is a loopback address."""
    try:
        return ipaddress.ip_address(host.partition("%")[0]).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(infos) and all(
        ipaddress.ip_address(str(info[4][0]).partition("%")[0]).is_loopback for info in infos
    )


def unmapped(host: str) -> str:
    """``::ffff:1.2.3.4`` → ``1.2.3.4``: compare addresses in one form."""
    return host[7:] if host.startswith("::ffff:") and "." in host else host


def ip_key(host: str) -> IpKey | None:
    """``(4, int)`` or ``(6, int)`` for an IP literal, None for anything else.

    IPv4-mapped IPv6 (``::ffff:a.b.c.d``) becomes IPv4; a scope (``%eth0``) is
    dropped.  Strict forms only: ``127.1`` is a name here (the resolver turns
    it into 127.0.0.1, and the second pass judges that address).
    """
    if ":" not in host and not host[-1:].isdigit():
        return None  # a name (every IPv4 literal ends in a digit, every IPv6 one has a colon)
    try:
        return (4, int.from_bytes(_inet_pton(_AF_INET, host), "big"))
    except (OSError, ValueError):
        pass
    try:
        packed = _inet_pton(_AF_INET6, host.partition("%")[0])
    except (OSError, ValueError):
        return None
    if packed[:12] == _MAPPED:
        return (4, int.from_bytes(packed[12:], "big"))
    return (6, int.from_bytes(packed, "big"))


_NONE: tuple[int, ...] = ()

#: No IPv6 address from 2003:: up carries an IPv4 address: a caller on a hot
#: path skips ``embedded_ipv4`` for those (most of the address space) with one
#: comparison.
EMBEDS_BELOW = 0x2003 << 112


def embedded_ipv4(n: int) -> tuple[int, ...]:
    """The IPv4 address(es) an IPv6 address (as an integer) carries inside, or ().

    A target written in one of these forms reaches (or is meant to reach) the
    IPv4 address inside, so destinations are judged by it as well:

    * 6to4, 2002:V4ADDR::/48 (RFC 3056 §2): bits 16-47;
    * Teredo, 2001::/32 (RFC 4380 §4): the server in bits 32-63 and the
      client, obfuscated (every bit inverted), in bits 96-127: both;
    * NAT64, the well-known prefix 64:ff9b::/96 (RFC 6052 §2.1) and the
      local-use 64:ff9b:1::/48 (RFC 8215): the last 32 bits (the /96 layout
      of RFC 6052 §2.2, the one NAT64 deployments use);
    * IPv4-compatible ::a.b.c.d (::/96, RFC 4291 §2.5.5.1; not :: and ::1),
      IPv4-mapped ::ffff:a.b.c.d (§2.5.5.2; ``ip_key`` already makes those
      IPv4) and IPv4-translated ::ffff:0:a.b.c.d (SIIT, RFC 2765 §2.1):
      the last 32 bits.

    Cheap on purpose (judged IPv6 targets below ``EMBEDS_BELOW`` pass here):
    an address outside these prefixes costs a shift and one comparison from
    2003:: up, three in the rest of 2001::/16.
    """
    high = n >> 96  # the first 32 bits
    if high > 0x2002_FFFF:
        return _NONE  # 2003:: and above: most of the address space
    if high >= 0x2002_0000:
        return ((n >> 80) & 0xFFFF_FFFF,)  # 6to4
    if high > 0x2001_0000:
        return _NONE  # the rest of 2001::/16
    if high == 0x2001_0000:  # Teredo: the server, and the client de-obfuscated
        return ((n >> 64) & 0xFFFF_FFFF, (n & 0xFFFF_FFFF) ^ 0xFFFF_FFFF)
    if high == 0x0064_FF9B:
        if n >> 32 == 0x0064_FF9B << 64 or n >> 80 == 0x0064_FF9B_0001:
            return (n & 0xFFFF_FFFF,)  # NAT64, well-known or local-use prefix
        return _NONE
    if high == 0:
        first96 = n >> 32
        if first96 == 0:
            return (n,) if n > 1 else _NONE  # IPv4-compatible; :: and ::1 are themselves
        if first96 == 0xFFFF or first96 == 0xFFFF_0000:
            return (n & 0xFFFF_FFFF,)  # IPv4-mapped, IPv4-translated
    return _NONE


def normal_network(net: Network) -> Network:
    """``::ffff:10.0.0.0/104`` → ``10.0.0.0/8``: rules and traffic in one form."""
    if (isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96
            and net.network_address.ipv4_mapped is not None):
        return ipaddress.IPv4Network((net.network_address.ipv4_mapped, net.prefixlen - 96))
    return net


#: A network as (4 or 6, its first address, its last address), as integers.
Bounds = tuple[int, int, int]


def network_bounds(net: Network) -> Bounds:
    return net.version, int(net.network_address), int(net.broadcast_address)


def ipv4_bounds(text: str) -> tuple[Bounds, str] | None:
    """A strict IPv4 CIDR or address as its bounds and canonical text, quickly.

    None for anything else (IPv6, host bits set, not an address at all):
    ``ipaddress`` parses those and explains the errors.  A list of 100 000
    networks compiles in a fraction of the time ``ip_network`` needs.
    """
    address, slash, prefix = text.partition("/")
    if slash:
        if not (prefix.isascii() and prefix.isdigit()) or int(prefix) > 32:
            return None
        length = int(prefix)
    else:
        length = 32
    try:
        packed = _inet_pton(_AF_INET, address)
    except (OSError, ValueError):
        return None
    low = int.from_bytes(packed, "big")
    host = (1 << (32 - length)) - 1
    if low & host:
        return None
    return (4, low, low | host), f"{socket.inet_ntop(_AF_INET, packed)}/{length}"


def ranges(networks: Iterable[Bounds]) -> RangeSet:
    """Networks (``Bounds``) as a ``RangeSet``: merged, IPv4 and IPv6 apart, looked
    up by bisection (``contains(ip_key)``), so its size costs a lookup little."""
    v4: list[tuple[int, int]] = []
    v6: list[tuple[int, int]] = []
    for version, low, high in networks:
        (v4 if version == 4 else v6).append((low, high))
    return RangeSet(v4, v6)


# -- what the SSRF-safe default protects (control/rulebook decides with it) -------------

# Destinations the SSRF-safe default (control/rulebook) protects: (network, what
# it is).  An IPv6 address that carries an IPv4 address (embedded_ipv4) is
# protected when either is.
PROTECTED: tuple[tuple[str, str], ...] = (
    ("127.0.0.0/8", "loopback"),
    ("::1/128", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("fe80::/10", "link-local"),
    ("10.0.0.0/8", "private"),
    ("172.16.0.0/12", "private"),
    ("192.168.0.0/16", "private"),
    ("fc00::/7", "private"),
    ("fec0::/10", "private (site-local)"),
    ("100.64.0.0/10", "shared address space"),
    ("0.0.0.0/8", "unspecified"),
    ("::/128", "unspecified"),
)


def _protected_table(version: int) -> tuple[tuple[int, int, str], ...]:
    out = []
    for text, what in PROTECTED:
        net = ipaddress.ip_network(text)
        if net.version == version:
            out.append((int(net.network_address), int(net.broadcast_address), what))
    return tuple(out)


_PROTECTED_V4 = _protected_table(4)
_PROTECTED_V6 = _protected_table(6)


def protected_kind(key: IpKey, inner: tuple[int, ...] | None = None) -> str | None:
    """What kind of protected destination ``key`` is, or None.

    An IPv6 key is also judged by the IPv4 address(es) it carries (``inner``:
    ``embedded_ipv4(key[1])``, computed here unless the caller has it).
    """
    n = key[1]
    if key[0] == 4:
        for lo, hi, what in _PROTECTED_V4:
            if lo <= n <= hi:
                return what
        return None
    for lo, hi, what in _PROTECTED_V6:
        if lo <= n <= hi:
            return what
    for v4 in embedded_ipv4(n) if inner is None else inner:
        kind = _v4_kind(v4)
        if kind is not None:
            return kind
    return None


def _v4_kind(n: int) -> str | None:
    for lo, hi, what in _PROTECTED_V4:
        if lo <= n <= hi:
            return what
    return None


def protected_inside(inner: tuple[int, ...]) -> str | None:
    """The protected IPv4 address inside, as text (for the denial's message)."""
    for v4 in inner:
        if _v4_kind(v4) is not None:
            return str(ipaddress.IPv4Address(v4))
    return None


# -- PROXY protocol trust: is the peer one of the balancers? ---------------------------


def trusted_ranges(cidrs: Iterable[str]) -> RangeSet:
    """``proxy_protocol.trusted`` as ranges (fast membership tests per connection)."""
    return ranges(network_bounds(normal_network(ipaddress.ip_network(c, strict=False))) for c in cidrs)


def is_trusted(table: RangeSet, host: str | None) -> bool:
    key = ip_key(host) if host else None
    return key is not None and table.contains(key)
