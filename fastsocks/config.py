"""Server settings: defaults, validation and the safe-by-default rule."""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

__all__ = ["Settings", "parse_listen", "is_loopback_host", "DEFAULT_LISTEN"]

DEFAULT_LISTEN = ("127.0.0.1", 1080)


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


@dataclass
class Settings:
    """Everything a server needs to run; the CLI fills it in."""

    listen: list[tuple[str, int]] = field(default_factory=lambda: [DEFAULT_LISTEN])
    users_file: str | None = None
    allow_open: bool = False
    handshake_timeout: float = 10.0
    connect_timeout: float = 10.0
    idle_timeout: float = 300.0
    bind_timeout: float = 60.0
    drain_timeout: float = 0.0
    bind_address: str | None = None
    udp_public_address: str | None = None
    udp_reassembly: bool = True
    loop: str = "auto"
    relay: str = "auto"
    workers: int = 1
    log_level: str = "info"
    backlog: int = 4096
    # [log] access / access_format and [metrics] in the config file.
    access_log: str | None = None  # a path, "-" for stdout, or None: no access log
    access_log_format: str = "text"  # "text" or "json"
    metrics_listen: str | None = None  # HOST:PORT of the metrics listener, None: off
    # [[rules]] (compiled fastsocks.rules.Rule objects, in order) and [groups].
    rules: list[Any] = field(default_factory=list)
    groups: dict[str, list[str]] = field(default_factory=dict)
    config_file: str | None = None  # where these settings came from, if a file

    def validate(self) -> None:
        if not self.drain_timeout >= 0:
            raise ConfigError("drain-timeout must be 0 (close at once) or a positive number of seconds")
        for name in ("handshake_timeout", "connect_timeout", "bind_timeout"):
            value = getattr(self, name)
            if not value > 0:
                raise ConfigError(f"{name.replace('_', '-')} must be a positive number of seconds")
        if self.idle_timeout < 0:
            raise ConfigError("idle-timeout must be 0 (never) or a positive number of seconds")
        if self.loop not in ("auto", "uvloop", "asyncio"):
            raise ConfigError(f"loop {self.loop!r}: use auto, uvloop or asyncio")
        for name in ("bind_address", "udp_public_address"):
            value = getattr(self, name)
            if value is not None:
                try:
                    ipaddress.ip_address(value)
                except ValueError:
                    raise ConfigError(f"{name.replace('_', '-')} {value!r}: give an IPv4 or IPv6 "
                                      "address, e.g. 203.0.113.7") from None
        if not 1 <= self.workers <= 1024:
            raise ConfigError(f"workers {self.workers}: use 1 to 1024 (0 on the command line: "
                              "one per CPU)")
        if self.workers > 1 and not (hasattr(os, "fork") and hasattr(socket, "SO_REUSEPORT")):
            raise ConfigError("workers > 1 needs fork() and SO_REUSEPORT, which this platform "
                              "lacks: use --workers 1")
        if self.relay not in ("auto", "splice", "protocol"):
            raise ConfigError(f"relay {self.relay!r}: use auto, splice or protocol")
        if not self.listen:
            raise ConfigError("no listen address: give at least one --listen HOST:PORT")
        if self.users_file is None and not self.allow_open:
            exposed = [f"{h}:{p}" for h, p in self.listen if not is_loopback_host(h)]
            if exposed:
                raise ConfigError(
                    f"refusing to listen on {', '.join(exposed)} without authentication: "
                    "anyone who can reach it could use this proxy. Require a password with "
                    "--users FILE (create one with 'fastsocks users add FILE NAME'), or pass "
                    "--allow-open to run an open proxy knowingly."
                )


def load_config(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> Settings:
    """Settings from a TOML config file, ``overrides`` (Settings fields) on top.

    Raises ConfigError naming the file, the key and what is allowed; see
    ``fastsocks.configfile`` for the schema.  Reusable for a reload.
    """
    from .configfile import load_config as _load

    return _load(path, overrides)
