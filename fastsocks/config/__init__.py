"""Server settings: defaults, validation and the safe-by-default rule."""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..net.address import is_loopback_host, parse_listen
from ..control.limits import LimitSettings

__all__ = ["Settings", "parse_listen", "is_loopback_host", "DEFAULT_LISTEN", "cpu_count",
           "default_workers"]

DEFAULT_LISTEN = ("127.0.0.1", 1080)


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity: taskset, cgroup cpusets)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    """One worker per CPU where SO_REUSEPORT spreads connections (Linux), else one."""
    return cpu_count() if sys.platform.startswith("linux") else 1


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
    workers: int = field(default_factory=default_workers)
    log_level: str = "info"
    backlog: int = 4096
    # [log] access / access_format and [metrics] in the config file.
    access_log: str | None = None  # a path, "-" for stdout, or None: no access log
    access_log_format: str = "text"  # "text" or "json"
    metrics_listen: str | None = None  # HOST:PORT of the metrics listener, None: off
    # [[rules]] (compiled fastsocks.rules.Rule objects, in order) and [groups].
    rules: list[Any] = field(default_factory=list)
    groups: dict[str, list[str]] = field(default_factory=dict)
    # [limits]: connection counts, handshake rate, bandwidth (fastsocks/limits.py).
    limits: LimitSettings = field(default_factory=LimitSettings)
    # [proxy_protocol]: trusted balancer CIDRs (empty: off), which listeners
    # (None: all of them) and how long to wait for the header.
    proxy_protocol_from: list[str] = field(default_factory=list)
    proxy_protocol_listen: list[tuple[str, int]] | None = None
    proxy_protocol_timeout: float = 5.0
    # [upstreams.NAME] (fastsocks.upstream.Upstream) and [outbound]: source
    # addresses (one per family) globally and per user, and a device.
    upstreams: dict[str, Any] = field(default_factory=dict)
    outbound_address: list[str] = field(default_factory=list)
    outbound_users: dict[str, list[str]] = field(default_factory=dict)
    outbound_interface: str | None = None
    # [gssapi] (RFC 1961, fastsocks/gssapi.py): on or off, the keytab (None:
    # KRB5_KTNAME or the system's), the acceptor principal (None: any key in
    # the keytab), the lowest protection level accepted ("clear" is Dante's,
    # outside the RFC), and principal → user name exceptions.
    gssapi: bool = False
    gssapi_keytab: str | None = None
    gssapi_principal: str | None = None
    gssapi_min_protection: str = "integrity"
    gssapi_principal_map: dict[str, str] = field(default_factory=dict)
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
        self.limits.validate()
        if self.relay not in ("auto", "splice", "protocol"):
            raise ConfigError(f"relay {self.relay!r}: use auto, splice or protocol")
        if not self.listen:
            raise ConfigError("no listen address: give at least one --listen HOST:PORT")
        from ..net.upstream import check_outbound, check_proxy_protocol

        check_proxy_protocol(self)
        check_outbound(self)
        if self.gssapi_min_protection not in ("clear", "integrity", "confidentiality"):
            raise ConfigError(f"gssapi min_protection {self.gssapi_min_protection!r}: use "
                              "integrity, confidentiality, or clear (Dante's, no protection)")
        # GSSAPI is authentication too: with it on, clients that do not offer
        # it get no-auth only with --allow-open (session._on_greeting).
        if self.users_file is None and not self.allow_open and not self.gssapi:
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
    from .file import load_config as _load

    return _load(path, overrides)
