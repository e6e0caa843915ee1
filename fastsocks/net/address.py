"""Addresses: formatting (once), listen addresses, IP keys and ranges.

Everything here is pure and cheap; the control plane, the configuration and
the observers all format and compare addresses through it, so an address
reads the same in a log line, an error and ``fastsocks check``.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, Iterable, Union

from ..errors import ConfigError

__all__ = [
    "format_address",
    "format_peer",
    "parse_listen",
    "parse_sources",
    "is_loopback_host",
    "unmapped",
    "IpKey",
    "Ranges",
    "ip_key",
    "normal_network",
    "ranges",
    "in_ranges",
    "trusted_ranges",
    "is_trusted",
]

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
IpKey = tuple[int, int]  # (4 or 6, the address as an integer)
Ranges = tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]  # (IPv4, IPv6)

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


def normal_network(net: Network) -> Network:
    """``::ffff:10.0.0.0/104`` → ``10.0.0.0/8``: rules and traffic in one form."""
    if (isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96
            and net.network_address.ipv4_mapped is not None):
        return ipaddress.IPv4Network((net.network_address.ipv4_mapped, net.prefixlen - 96))
    return net


def ranges(networks: Iterable[Network]) -> Ranges:
    """Networks as (low, high) integer bounds, IPv4 and IPv6 apart."""
    v4: list[tuple[int, int]] = []
    v6: list[tuple[int, int]] = []
    for net in networks:
        bounds = (int(net.network_address), int(net.broadcast_address))
        (v4 if net.version == 4 else v6).append(bounds)
    return tuple(v4), tuple(v6)


def in_ranges(table: Ranges, key: IpKey) -> bool:
    n = key[1]
    for lo, hi in table[0] if key[0] == 4 else table[1]:
        if lo <= n <= hi:
            return True
    return False


# -- PROXY protocol trust: is the peer one of the balancers? ---------------------------


def trusted_ranges(cidrs: Iterable[str]) -> Ranges:
    """``proxy_protocol.trusted`` as ranges (fast membership tests per connection)."""
    return ranges(normal_network(ipaddress.ip_network(c, strict=False)) for c in cidrs)


def is_trusted(table: Ranges, host: str | None) -> bool:
    key = ip_key(host) if host else None
    return key is not None and in_ranges(table, key)
