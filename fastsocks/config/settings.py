"""The Settings object: what a server runs with, its defaults and ``validate``.

The fields are typed here for the type checker and the reader; their
defaults and their checks come from the table (``table.py``), so that the
command line, the config file and the API agree.  ``validate`` checks each
setting by its kind, in table order, then what no single setting can know
(the PROXY protocol listeners, the safe-by-default rule); it raises the
first ConfigError, worded for the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..control.limits import LimitSettings
from ..control.record import Protocol
from ..errors import ConfigError
from ..net.address import format_address, is_loopback_host, is_trusted, trusted_ranges
from ..net.dns import HAVE_CARES
from .table import BY_NAME, COMPOSITES, SETTINGS

__all__ = ["Settings", "get", "assign"]


def _default(name: str) -> Any:
    setting = BY_NAME[name]
    return field(default_factory=setting.make_default)


def get(settings: Any, name: str) -> Any:
    """A setting's value: ``limits.connections`` is ``settings.limits.connections``."""
    head, _, rest = name.partition(".")
    value = getattr(settings, head)
    return getattr(value, rest) if rest else value


def assign(settings: Any, name: str, value: Any) -> None:
    head, _, rest = name.partition(".")
    setattr(getattr(settings, head) if rest else settings, rest or head, value)


@dataclass
class Settings:
    """Everything a server needs to run; the CLI or the config file fills it in.

    Each field is a setting of ``fastsocks.config.table`` (see it for what
    each means, its key in the config file and its flag); ``limits`` holds
    the ``[limits]`` settings, ``config_file`` where they came from.
    """

    listen: list[tuple[str, int]] = _default("listen")
    users_file: str | None = _default("users_file")
    allow_open: bool = _default("allow_open")
    # Which protocols each listener serves (None: by the listener's address;
    # see protocols_of), and who may use SOCKS4 where authentication is required.
    protocols: tuple[str, ...] | None = _default("protocols")
    listener_protocols: dict[tuple[str, int], tuple[str, ...]] = _default("listener_protocols")
    socks4_unauthenticated_from: list[str] = _default("socks4_unauthenticated_from")
    handshake_timeout: float = _default("handshake_timeout")
    connect_timeout: float = _default("connect_timeout")
    idle_timeout: float = _default("idle_timeout")
    bind_timeout: float = _default("bind_timeout")
    drain_timeout: float = _default("drain_timeout")
    bind_address: str | None = _default("bind_address")
    udp_public_address: str | None = _default("udp_public_address")
    udp_reassembly: bool = _default("udp_reassembly")
    loop: str = _default("loop")
    relay: str = _default("relay")
    relay_bulk: str = _default("relay_bulk")
    workers: int = _default("workers")
    log_level: str = _default("log_level")
    backlog: int = _default("backlog")
    access_log: str | None = _default("access_log")  # a path, "-" for stdout, None: none
    access_log_format: str = _default("access_log_format")
    metrics_listen: str | None = _default("metrics_listen")  # HOST:PORT, None: off
    rules: list[Any] = _default("rules")  # compiled fastsocks.control.rulebook.Rule, in order
    groups: dict[str, list[str]] = _default("groups")
    limits: LimitSettings = field(default_factory=LimitSettings)
    proxy_protocol_from: list[str] = _default("proxy_protocol_from")  # empty: off
    proxy_protocol_listen: list[tuple[str, int]] | None = _default("proxy_protocol_listen")
    proxy_protocol_timeout: float = _default("proxy_protocol_timeout")
    upstreams: dict[str, Any] = _default("upstreams")  # name → fastsocks.net.upstream.Upstream
    outbound_address: list[str] = _default("outbound_address")
    outbound_users: dict[str, list[str]] = _default("outbound_users")
    outbound_interface: str | None = _default("outbound_interface")
    dns_resolver: str = _default("dns_resolver")  # auto, c-ares or system (net/dns.py)
    dns_servers: list[str] = _default("dns_servers")  # empty: resolv.conf's
    dns_cache_size: int = _default("dns_cache_size")
    dns_min_ttl: float = _default("dns_min_ttl")
    dns_max_ttl: float = _default("dns_max_ttl")
    dns_negative_ttl: float = _default("dns_negative_ttl")
    gssapi: bool = _default("gssapi")
    gssapi_keytab: str | None = _default("gssapi_keytab")  # None: KRB5_KTNAME or the system's
    gssapi_principal: str | None = _default("gssapi_principal")  # None: any in the keytab
    gssapi_min_protection: str = _default("gssapi_min_protection")
    gssapi_principal_map: dict[str, str] = _default("gssapi_principal_map")
    config_file: str | None = None  # where these settings came from, if a file
    # Per-listener answers of protocols_of and the CIDRs of socks4_open_to,
    # worked out once per Settings (a reload brings a new Settings).
    _served: dict[Any, frozenset[Protocol]] = field(default_factory=dict, init=False,
                                                    repr=False, compare=False)
    _socks4_ranges: Any = field(default=None, init=False, repr=False, compare=False)

    def protocols_of(self, listener: tuple[str, int] | None) -> frozenset[Protocol]:
        """What the listener ``listener`` serves; a dict lookup after its first connection.

        Its own [listener_protocols] entry, else ``protocols``, else the
        default: every protocol on a loopback listener, SOCKS5 only on any
        other (a new protocol on a reachable address is the operator's choice).
        """
        served = self._served.get(listener)
        if served is None:
            own = self.listener_protocols
            names = None
            if own and listener is not None:
                names = own.get(listener) or own.get((listener[0], 0))
            if names is None:
                names = self.protocols
            if names is None:
                loopback = listener is not None and is_loopback_host(listener[0])
                names = ("socks5", "socks4", "http") if loopback else ("socks5",)
            served = self._served[listener] = frozenset(Protocol(n) for n in names)
        return served

    def socks4_open_to(self, host: str | None) -> bool:
        """True when a SOCKS4 client at ``host`` is served where authentication is required."""
        if not self.socks4_unauthenticated_from:
            return False
        if self._socks4_ranges is None:
            self._socks4_ranges = trusted_ranges(self.socks4_unauthenticated_from)
        return is_trusted(self._socks4_ranges, host)

    def dns_options(self) -> dict[str, Any]:
        """``[dns]`` as ``net.dns.configure`` takes it."""
        return {"resolver": self.dns_resolver, "servers": self.dns_servers,
                "cache_size": self.dns_cache_size, "min_ttl": self.dns_min_ttl,
                "max_ttl": self.dns_max_ttl, "negative_ttl": self.dns_negative_ttl}

    def validate(self) -> None:
        """Raise ConfigError for the first setting that is not allowed; may normalise some."""
        for setting in SETTINGS:
            if setting.name.partition(".")[0] in COMPOSITES:
                continue  # checked as a whole below
            assign(self, setting.name, setting.kind.validated(get(self, setting.name),
                                                              setting.validate_label))
        self.limits.validate()
        _check_proxy_listeners(self)
        for host, port in self.listener_protocols:
            if (host, port) not in self.listen:
                raise ConfigError(f"listener_protocols: {format_address(host, port)} is not one "
                                  "of the listen addresses; name listeners exactly as in listen")
        _check_dns(self)
        # GSSAPI is authentication too: with it on, clients that do not offer
        # it get no-auth only with --allow-open (session._on_greeting).
        exposed = exposed_listeners(self.listen, self.users_file, self.allow_open, self.gssapi)
        if exposed:
            raise ConfigError(
                f"refusing to listen on {', '.join(exposed)} without authentication: "
                "anyone who can reach it could use this proxy. Require a password with "
                "--users FILE (create one with 'fastsocks users add FILE NAME'), or pass "
                "--allow-open to run an open proxy knowingly."
            )


def exposed_listeners(listen: list[tuple[str, int]], users_file: str | None, allow_open: bool,
                      gssapi: bool) -> list[str]:
    """The safe-by-default rule: listeners off loopback that nothing authenticates."""
    if users_file is not None or allow_open or gssapi:
        return []
    return [format_address(h, p) for h, p in listen if not is_loopback_host(h)]


def _check_proxy_listeners(settings: Settings) -> None:
    listeners = settings.proxy_protocol_listen
    if listeners is None:
        return
    if not settings.proxy_protocol_from:
        raise ConfigError("proxy_protocol.listeners is set but no trusted source is: add "
                          "proxy_protocol.trusted = [\"CIDR\", ...] (the balancers' addresses)")
    for host, port in listeners:
        if (host, port) not in settings.listen:
            raise ConfigError(f"proxy_protocol.listeners: {format_address(host, port)} is not one "
                              "of the listen addresses; name listeners exactly as in listen")


def _check_dns(settings: Settings) -> None:
    if settings.dns_min_ttl > settings.dns_max_ttl:
        raise ConfigError(f"dns.min_ttl ({settings.dns_min_ttl:g} s) is above dns.max_ttl "
                          f"({settings.dns_max_ttl:g} s): lower min_ttl or raise max_ttl")
    if settings.dns_resolver == "c-ares" and not HAVE_CARES:
        raise ConfigError("dns.resolver \"c-ares\" needs aiodns (pip install aiodns), which "
                          "is not installed: install it, or use \"auto\" or \"system\"")
    if settings.dns_servers and (settings.dns_resolver == "system" or not HAVE_CARES):
        raise ConfigError("dns.servers is set but names are looked up by the system resolver, "
                          "which reads /etc/resolv.conf: leave servers out or use resolver "
                          "\"auto\" or \"c-ares\" (aiodns installed)")
