"""Kinds of single values: durations, switches, choices, numbers, addresses, paths.

Each says, for its values, what the config file allows (and the fix when
it is not: "must be ..., got ..."), which argparse type or choices the
flag gets, and what ``Settings.validate`` accepts from the API (worded for
the command line: "loop 'x': use auto, uvloop or asyncio").  The
interface is ``Kind``'s (``kinds.py``).
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import socket
from typing import Any, Callable

from ..control.limits import format_rate, parse_rate
from ..errors import ConfigError
from ..net.address import parse_sources
from ..net.dns import parse_nameserver
from .kinds import INVALID, Invalid, Kind, Reading, cpu_count, leaf, put, show

__all__ = ["Seconds", "ProxyTimeout", "Boolean", "Choice", "Integer", "Workers", "Rate",
           "PerSecond", "IpAddress", "Path", "Principal", "Cidrs", "Sources", "Interface",
           "Nameservers", "MIN_PROXY_PROTOCOL_TIMEOUT"]

#: The PROXY protocol spec asks receivers to wait at least 3 s for the header.
MIN_PROXY_PROTOCOL_TIMEOUT = 3.0


def _or_list(words: tuple[str, ...]) -> str:
    return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]


def _number(value: Any) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float))
            and math.isfinite(value))


def _seconds_flag(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more seconds")
    return value


class Seconds(Kind):
    """A duration; ``zero`` says what 0 means, None: 0 is not allowed."""

    def __init__(self, zero: str | None = None) -> None:
        self.zero = zero
        self.allowed = (f"0 ({zero}) or a positive number of seconds" if zero
                        else "a positive number of seconds")

    def _ok(self, value: Any) -> bool:
        return _number(value) and (value >= 0 if self.zero else value > 0)

    def convert(self, value: Any, base: str) -> Any:
        if not self._ok(value):
            raise Invalid(f"must be {self.allowed}, got {show(value)}")
        return float(value)

    def argparse(self, flag: str) -> dict[str, Any]:
        return {"type": _seconds_flag}

    def validated(self, value: Any, label: str) -> Any:
        # inf is allowed here (a flag may say "never"); NaN fails both comparisons.
        if not (value >= 0 if self.zero else value > 0):
            raise ConfigError(f"{label} must be {self.allowed}")
        return value


class ProxyTimeout(Seconds):
    """How long a balancer has for the PROXY header: the spec's minimum or more."""

    def convert(self, value: Any, base: str) -> Any:
        seconds = super().convert(value, base)
        if seconds < MIN_PROXY_PROTOCOL_TIMEOUT:
            raise Invalid(f"must be at least {MIN_PROXY_PROTOCOL_TIMEOUT:g} seconds (the PROXY "
                          f"protocol spec's minimum), got {show(value)}")
        return seconds

    def validated(self, value: Any, label: str) -> Any:
        if not value >= MIN_PROXY_PROTOCOL_TIMEOUT:
            raise ConfigError(f"{label} {value:g}: the PROXY protocol spec asks for at least "
                              f"{MIN_PROXY_PROTOCOL_TIMEOUT:g} s")
        return value


class Boolean(Kind):
    """true or false; on the command line a switch (``--no-...`` turns it off)."""

    def convert(self, value: Any, base: str) -> Any:
        if isinstance(value, bool):
            return value
        raise Invalid(f"must be true or false, got {show(value)}")

    def argparse(self, flag: str) -> dict[str, Any]:
        # default None: a switch not given leaves the config file's value alone.
        return {"action": "store_false" if flag.startswith("--no-") else "store_true",
                "default": None}


class Choice(Kind):
    """One of a few words; ``fix`` words the API error's advice (default: the list)."""

    def __init__(self, *choices: str, fix: str | None = None) -> None:
        self.choices = choices
        self.fix = fix or f"use {_or_list(choices)}"

    def convert(self, value: Any, base: str) -> Any:
        if isinstance(value, str) and value in self.choices:
            return value
        raise Invalid(f"must be one of {', '.join(show(c) for c in self.choices)}, "
                      f"got {show(value)}")

    def argparse(self, flag: str) -> dict[str, Any]:
        return {"choices": self.choices}

    def validated(self, value: Any, label: str) -> Any:
        if value not in self.choices:
            raise ConfigError(f"{label} {value!r}: {self.fix}")
        return value


def _count_flag(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 (no limit) or more")
    return value


class Integer(Kind):
    """A whole number from ``low`` to ``high``; ``note`` says what 0 means."""

    def __init__(self, low: int, high: int, note: str = "",
                 flag_type: Callable[[str], int] = _count_flag) -> None:
        self.low, self.high, self.note = low, high, note
        self.flag_type = flag_type

    def convert(self, value: Any, base: str) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or not self.low <= value <= self.high:
            raise Invalid(f"must be a whole number from {self.low} to {self.high}{self.note}, "
                          f"got {show(value)}")
        return value

    def argparse(self, flag: str) -> dict[str, Any]:
        return {"type": self.flag_type}


class Workers(Integer):
    """Worker processes: 0 in the file or on the command line is one per CPU."""

    def __init__(self) -> None:
        super().__init__(0, 1024, " (0: one per CPU)", flag_type=int)

    def convert(self, value: Any, base: str) -> Any:
        return super().convert(value, base) or cpu_count()

    def from_flag(self, value: Any) -> Any:
        return value or cpu_count()

    def validated(self, value: Any, label: str) -> Any:
        if not 1 <= value <= 1024:
            raise ConfigError(f"{label} {value}: use 1 to 1024 (0 on the command line: one per CPU)")
        if value > 1 and not (hasattr(os, "fork") and hasattr(socket, "SO_REUSEPORT")):
            raise ConfigError("workers > 1 needs fork() and SO_REUSEPORT, which this platform "
                              "lacks: use --workers 1")
        return value


def _rate_flag(text: str) -> int:
    try:
        return parse_rate(text, text)
    except ConfigError:
        raise argparse.ArgumentTypeError(f"{text!r}: give bytes per second, or a unit as in "
                                         "10MiB, 500kB or 100Mbit") from None


class Rate(Kind):
    """Bytes per second (0: no limit), in the file also "10MiB", "100Mbit"."""

    def convert(self, value: Any, base: str) -> Any:
        try:
            return parse_rate(value, "rate")
        except ConfigError:
            raise Invalid("must be bytes per second (0: no limit), or a string with a unit such "
                          f"as \"10MiB\", \"500kB\" or \"100Mbit\", got {show(value)}") from None

    def argparse(self, flag: str) -> dict[str, Any]:
        return {"type": _rate_flag}

    def dump(self, value: Any) -> Any:
        return format_rate(value)


def _per_second_flag(text: str) -> float:
    value = _seconds_flag(text.removesuffix("/s"))
    if value >= 1e9:
        raise argparse.ArgumentTypeError(f"{text!r} is too large")
    return value


class PerSecond(Kind):
    """Events per second (0: no limit)."""

    def convert(self, value: Any, base: str) -> Any:
        if not _number(value) or not 0 <= value < 1e9:
            raise Invalid(f"must be 0 (no limit) or a positive number per second, got {show(value)}")
        return float(value)

    def argparse(self, flag: str) -> dict[str, Any]:
        return {"type": _per_second_flag}


class IpAddress(Kind):
    """One IPv4 or IPv6 address."""

    def convert(self, value: Any, base: str) -> Any:
        try:
            if isinstance(value, str):
                ipaddress.ip_address(value)
                return value
        except ValueError:
            pass
        raise Invalid(f"must be an IPv4 or IPv6 address such as \"203.0.113.7\", got {show(value)}")

    def validated(self, value: Any, label: str) -> Any:
        if value is not None:
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise ConfigError(f"{label} {value!r}: give an IPv4 or IPv6 address, "
                                  "e.g. 203.0.113.7") from None
        return value


class Path(Kind):
    """A file path, relative to the config file's directory; ``dash`` also allows "-"."""

    def __init__(self, dash: bool = False) -> None:
        self.dash = dash

    def convert(self, value: Any, base: str) -> Any:
        if not isinstance(value, str) or not value or "\0" in value:
            extra = " or \"-\" for standard output" if self.dash else ""
            raise Invalid(f"must be a file path{extra}, got {show(value)}")
        if self.dash and value == "-":
            return value
        return os.path.join(base, os.path.expanduser(value))


class Principal(Kind):
    """A Kerberos principal name."""

    def convert(self, value: Any, base: str) -> Any:
        if isinstance(value, str) and value.strip() and not any(c.isspace() for c in value):
            return value
        raise Invalid("must be a Kerberos principal such as \"socks/proxy.example.com@EXAMPLE.COM\" "
                      f"(leave it out to accept any principal in the keytab), got {show(value)}")


class Cidrs(Kind):
    """A list of networks (one string in the file is a list of one); normalised.

    ``what`` names whose addresses they are, for the errors (default: balancers').
    """

    def __init__(self, what: str = "a balancer's address or network",
                 whose: str = "the balancers' addresses") -> None:
        self.what = what
        self.whose = whose

    def load(self, value: Any, key: str, reading: Reading) -> Any:
        items = value if isinstance(value, list) else [value]
        nets = []
        for i, item in enumerate(items):
            try:
                if isinstance(item, str):
                    nets.append(ipaddress.ip_network(item.strip(), strict=True).with_prefixlen)
                    continue
            except ValueError:
                pass
            reading.problem(f"{key}[{i}]" if isinstance(value, list) else key,
                            f"must be a CIDR ({self.what}) such as "
                            f"\"10.0.0.0/8\" or \"192.0.2.7/32\", host bits unset, got {show(item)}")
        return nets

    def argparse(self, flag: str) -> dict[str, Any]:
        return {"action": "append"}

    def validated(self, value: Any, label: str) -> Any:
        normal = []
        for text in value:
            try:
                net = ipaddress.ip_network(str(text), strict=True)
            except ValueError:
                raise ConfigError(f"{label} {text!r}: give {self.whose} as CIDRs, e.g. "
                                  "10.0.0.0/8 or 192.0.2.7/32 (host bits unset)") from None
            normal.append(net.with_prefixlen)
        return normal

    def render(self, key: str, value: Any, settings: Any, unset: str) -> list[str]:
        return [f"# {leaf(key)}: {unset}"] if not value else put(leaf(key), value)


class Sources(Kind):
    """Source addresses of outgoing connections: at most one per family."""

    def load(self, value: Any, key: str, reading: Reading) -> Any:
        try:
            return parse_sources(value, key)
        except ConfigError as exc:
            reading.problem(key, str(exc).partition(": ")[2])
            return INVALID

    def argparse(self, flag: str) -> dict[str, Any]:
        return {"action": "append"}

    def validated(self, value: Any, label: str) -> Any:
        return parse_sources(value, label) if value else value

    def render(self, key: str, value: Any, settings: Any, unset: str) -> list[str]:
        return put(leaf(key), value or None, unset)


class Interface(Kind):
    """A network interface name, for SO_BINDTODEVICE."""

    def convert(self, value: Any, base: str) -> Any:
        if not isinstance(value, str) or not value:
            raise Invalid(f"must be a network interface name such as \"eth1\", got {show(value)}")
        return value

    def validated(self, value: Any, label: str) -> Any:
        if value is None:
            return value
        if (not isinstance(value, str) or not value or len(value) >= 16 or "/" in value
                or any(c.isspace() for c in value)):
            raise ConfigError(f"{label} {value!r}: give a network interface name such as eth1 "
                              "(at most 15 characters)")
        if not hasattr(socket, "SO_BINDTODEVICE"):
            raise ConfigError(f"{label} needs SO_BINDTODEVICE (Linux); leave it out here")
        return value


class Nameservers(Kind):
    """DNS servers for c-ares: "IP", "IP:PORT" or "[IPv6]:PORT"; one string is a list of one."""

    def load(self, value: Any, key: str, reading: Reading) -> Any:
        items = value if isinstance(value, list) else [value]
        out = []
        for i, item in enumerate(items):
            try:
                out.append(parse_nameserver(item))
            except (ValueError, AttributeError):
                reading.problem(f"{key}[{i}]" if isinstance(value, list) else key,
                                "must be a DNS server's address such as \"192.0.2.53\", "
                                f"\"192.0.2.53:5353\" or \"[2001:db8::53]:53\", got {show(item)}")
        return out if len(out) == len(items) else INVALID

    def argparse(self, flag: str) -> dict[str, Any]:
        return {"action": "append"}

    def validated(self, value: Any, label: str) -> Any:
        out = []
        for text in value:
            try:
                out.append(parse_nameserver(text))
            except (ValueError, AttributeError):
                raise ConfigError(f"{label} {text!r}: give a DNS server's address, e.g. "
                                  "192.0.2.53 or 192.0.2.53:5353") from None
        return out

    def render(self, key: str, value: Any, settings: Any, unset: str) -> list[str]:
        return put(leaf(key), value or None, unset)
