"""The table of settings: every setting once, with everything each source needs.

One ``Setting`` per value an operator can set: its name (the Settings
field; ``limits.X`` is field X of ``Settings.limits``), its kind (what
values are allowed and how each source spells them, ``kinds.py``), its
default, its key in the TOML file, its command-line flag and help, what
``fastsocks check`` says when it is unset, and whether a reload (SIGHUP)
may change it.  Everything else is generated from this table:

* ``settings.py``: the Settings defaults and ``Settings.validate``;
* ``toml.py``: the config file loader (known keys, unknown-key hints);
* ``render.py``: ``fastsocks check``'s effective configuration;
* ``args.py``: the ``fastsocks`` flags (``HELP_ORDER`` orders --help).

Sections come in ``SECTIONS`` order and, within one, settings in table
order; both orders are the config file's (and ``fastsocks check``'s).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..control.limits import LimitSettings
from .kinds import Kind, default_workers
from .scalars import (Boolean, Choice, Cidrs, Integer, Interface, IpAddress, Nameservers, Path,
                      PerSecond, Principal, ProxyTimeout, Rate, Seconds, Sources, Workers)
from .structured import (Groups, Listen, ListenerProtocols, Listeners, Metrics, PrincipalMap,
                         Protocols, Rules, Upstreams, UserLimitsTable, UserSources)

__all__ = ["Setting", "Section", "SETTINGS", "SECTIONS", "BY_NAME", "COMPOSITES",
           "DEFAULT_LISTEN", "LOG_LEVELS", "section_of", "not_reloadable"]

DEFAULT_LISTEN = ("127.0.0.1", 1080)

LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class Setting:
    """One setting, as every source knows it."""

    name: str  # the Settings field ("limits.connections": Settings.limits.connections)
    kind: Kind
    default: Any  # a value, or a function that makes one (lists, dicts, per-machine)
    key: str  # the TOML key, dotted below a section: "timeouts.connect"
    flags: tuple[str, ...] = ()  # command-line flags; () for file-only settings
    help: str | None = None  # --help text
    metavar: str | None = None
    reloadable: bool = True  # False: SIGHUP keeps the running value (a restart applies it)
    unset: str = ""  # fastsocks check, when the value is None: what that means
    label: str | None = None  # how Settings.validate names it (default: the flag)
    implies: str | None = None  # giving this flag turns that boolean setting on
    switch: bool = False  # a section's "enabled": on when the section has other keys
    requires: tuple[str, str] | None = None  # (key, why): given in a file only with that key

    def make_default(self) -> Any:
        return self.default() if callable(self.default) else self.default

    @property
    def toml_name(self) -> str:
        """The key within its section: "connect" for "timeouts.connect"."""
        return self.key.rpartition(".")[2]

    @property
    def validate_label(self) -> str:
        if self.label:
            return self.label
        return self.flags[0].removeprefix("--") if self.flags else self.key


@dataclass(frozen=True)
class Section:
    """A part of the config file; "" is the top level."""

    name: str
    header: str | None = None  # the line fastsocks check starts it with (None: none)
    title: str | None = None  # its own group in --help


S = Setting
_SECONDS = "SECONDS"

SETTINGS: tuple[Setting, ...] = (
    S("listen", Listen(), lambda: [DEFAULT_LISTEN], "listen", ("--listen",),
      "address to listen on; repeatable; IPv6 as [::1]:1080 (default 127.0.0.1:1080)",
      "HOST:PORT", reloadable=False),
    S("users_file", Path(), None, "users", ("--users",),
      "require username/password (RFC 1929) checked against FILE: 'name:hash' lines with "
      "bcrypt (htpasswd -B) or argon2id hashes", "FILE", unset="no authentication"),
    S("allow_open", Boolean(), False, "allow_open", ("--allow-open",),
      "allow listening on a non-loopback address without authentication"),
    S("protocols", Protocols(), None, "protocols", ("--protocols",),
      "what the listeners serve, told apart by each client's first byte: a comma-separated "
      "list of socks5, socks4, http (default: all three on loopback listeners, socks5 only "
      "on the others; [listener_protocols] gives one listener its own)", "LIST",
      unset="socks5, socks4 and http on loopback listeners, socks5 only on the others"),
    S("workers", Workers(), default_workers, "workers", ("--workers",),
      "worker processes, each with its own SO_REUSEPORT listeners and relay, supervised by a "
      "master that restarts one that dies (default and 0: one per CPU on Linux, else 1)", "N",
      reloadable=False),
    S("loop", Choice("auto", "uvloop", "asyncio"), "auto", "loop", ("--loop",),
      "event loop: uvloop where installed (auto), or force one", reloadable=False),
    S("relay", Choice("auto", "splice", "protocol"), "auto", "relay", ("--relay",),
      "data plane: the splice(2) engine thread where available (auto; Linux with the "
      "extension), or the asyncio protocol relay", reloadable=False),
    S("relay_bulk", Choice("auto", "splice", "copy"), "auto", "relay_bulk", ("--relay-bulk",),
      "splice engine: how a connection's bulk data moves, by splice(2) through a pipe or "
      "copied through the engine's 4 MiB buffer; auto copies where both sockets' TCP segment "
      "size is 16 KiB or more (loopback), where copying measured faster, and splices elsewhere"),
    S("backlog", Integer(1, 65535), 4096, "backlog", reloadable=False),
    # [timeouts]
    S("handshake_timeout", Seconds(), 10.0, "timeouts.handshake", ("--handshake-timeout",),
      "drop a client that has not sent a complete request in time (default 10)", _SECONDS),
    S("connect_timeout", Seconds(), 10.0, "timeouts.connect", ("--connect-timeout",),
      "give up connecting to a target after this long; the client gets X'04' host "
      "unreachable (default 10)", _SECONDS),
    S("idle_timeout", Seconds(zero="never"), 300.0, "timeouts.idle", ("--idle-timeout",),
      "close a relayed connection after this long without traffic in either direction; 0 "
      "disables (default 300)", _SECONDS),
    S("bind_timeout", Seconds(), 60.0, "timeouts.bind", ("--bind-timeout",),
      "BIND: how long to wait for the incoming connection; the client then gets X'06' "
      "(default 60)", _SECONDS),
    S("drain_timeout", Seconds(zero="close at once"), 0.0, "timeouts.drain", ("--drain-timeout",),
      "on SIGTERM/SIGINT stop accepting and let open connections finish for up to this long "
      "before closing them; a second signal closes at once (default 0: close at once)", _SECONDS),
    # [bind], [udp]
    S("bind_address", IpAddress(), None, "bind.address", ("--bind-address",),
      "BIND: listen on this address instead of the one the client reached", "IP",
      unset="the address the client reached"),
    S("udp_public_address", IpAddress(), None, "udp.public_address", ("--udp-public-address",),
      "UDP ASSOCIATE: advertise this address to clients (behind NAT)", "IP",
      unset="the address the client reached"),
    S("udp_reassembly", Boolean(), True, "udp.reassembly", ("--no-udp-reassembly",),
      "UDP ASSOCIATE: drop fragmented datagrams (FRAG != 0) instead of reassembling them"),
    # [socks4], [listener_protocols] (README "One port, three protocols")
    S("socks4_unauthenticated_from", Cidrs("a client network", "the client networks"), list,
      "socks4.unauthenticated_from", ("--socks4-unauthenticated-from",),
      "serve SOCKS4 to clients in CIDR even where authentication is required (SOCKS4 cannot "
      "authenticate: its USERID is a claim, not a login); repeatable (default: none, SOCKS4 "
      "gets 91 rejected there)", "CIDR",
      unset="none: where authentication is required SOCKS4 gets 91"),
    S("listener_protocols", ListenerProtocols(), dict, "listener_protocols"),
    # [log]
    S("log_level", Choice(*LOG_LEVELS), "info", "log.level", ("--log-level",),
      "log verbosity (default info)"),
    S("access_log", Path(dash=True), None, "log.access", ("--access-log",),
      "write one line per connection, when it ends, to PATH (appended), or to standard "
      "output with '-' (default: none)", "PATH|-", reloadable=False, unset="no access log"),
    S("access_log_format", Choice("text", "json"), "text", "log.access_format",
      ("--access-log-format",), "access log lines as space-separated text or as JSON objects "
      "(default text)", reloadable=False, label="access log format"),
    # [metrics]
    S("metrics_listen", Metrics(), None, "metrics", ("--metrics",),
      "serve Prometheus metrics on http://HOST:PORT/metrics and a health check on /healthz; "
      "keep it on loopback (default: off)", "HOST:PORT", reloadable=False),
    # [limits]: the fields of Settings.limits (a LimitSettings)
    S("limits.connections", Integer(0, 10 ** 9, " (0: no limit)"), 0, "limits.connections",
      ("--max-connections",), "connections open at once, in all (all workers together)", "N"),
    S("limits.connections_per_ip", Integer(0, 10 ** 9, " (0: no limit)"), 0,
      "limits.connections_per_ip", ("--max-connections-per-ip",),
      "connections open at once from one client address", "N"),
    S("limits.connections_per_user", Integer(0, 10 ** 9, " (0: no limit)"), 0,
      "limits.connections_per_user", ("--max-connections-per-user",),
      "connections open at once by one authenticated user", "N"),
    S("limits.handshake_rate_per_ip", PerSecond(), 0.0, "limits.handshake_rate_per_ip",
      ("--handshake-rate-per-ip",), "new connections per second from one client address (a "
      "sliding one-second window)", "N"),
    S("limits.bandwidth_per_connection", Rate(), 0, "limits.bandwidth_per_connection",
      ("--bandwidth-per-connection",), "bytes per second each way for one connection: "
      "1048576, 1MiB, 100Mbit", "RATE"),
    S("limits.bandwidth_per_user", Rate(), 0, "limits.bandwidth_per_user",
      ("--bandwidth-per-user",), "bytes per second each way for all of one user's connections "
      "(in each worker)", "RATE"),
    S("limits.handshakes", Integer(0, 10 ** 9, " (0: no limit)"), None, "limits.handshakes",
      ("--max-handshakes",), "unfinished handshakes at once, in all: past it a new connection "
      "is closed at once (default: half of --max-connections, or 1000 without it)", "N",
      unset="half of connections, or 1000 without it"),
    S("limits.handshake_pressure", Integer(0, 100, " (percent of handshakes)"), 50,
      "limits.handshake_pressure"),
    S("limits.handshake_pressure_timeout", Seconds(), 2.0, "limits.handshake_pressure_timeout",
      ("--handshake-pressure-timeout",), "the handshake timeout once more than "
      "handshake_pressure percent (50) of --max-handshakes are unfinished; older silent "
      "handshakes are then cut (default 2)", _SECONDS),
    S("limits.password_checks", Integer(0, 10 ** 9, " (0: no limit)"), 32,
      "limits.password_checks", ("--max-password-checks",), "password checks queued or "
      "running at once, per worker; past it (or a quarter of it from one address) a login "
      "gets the failure status at once (default 32)", "N"),
    S("limits.auth_failures_per_ip", Integer(0, 10 ** 9, " (0: no back-off)"), 10,
      "limits.auth_failures_per_ip", ("--auth-failures-per-ip",), "failed logins one client "
      "address may have before each further one makes it wait (1 s, doubling to 60 s) "
      "(default 10; 0: no back-off)", "N"),
    S("limits.users", UserLimitsTable(), dict, "limits.users"),
    # [proxy_protocol]
    S("proxy_protocol_from", Cidrs(), list, "proxy_protocol.trusted", ("--proxy-protocol-from",),
      "expect a PROXY protocol header (v1 or v2, e.g. HAProxy's send-proxy-v2) on every "
      "listener from balancers in CIDR, and take the client's address from it; repeatable; "
      "connections from elsewhere are refused (default: off)", "CIDR",
      unset="none (PROXY protocol off)"),
    S("proxy_protocol_listen", Listeners(), None, "proxy_protocol.listeners",
      unset="all of them", requires=("proxy_protocol.trusted", "missing: list the balancers' "
                                     "addresses, e.g. trusted = [\"10.0.0.0/8\"]; the header is "
                                     "only accepted from them")),
    S("proxy_protocol_timeout", ProxyTimeout(), 5.0, "proxy_protocol.timeout",
      ("--proxy-protocol-timeout",), "how long a balancer has to send the PROXY header "
      "(default 5, at least 3)", _SECONDS),
    # [upstreams.NAME]
    S("upstreams", Upstreams(), dict, "upstreams"),
    # [outbound]
    S("outbound_address", Sources(), list, "outbound.address", ("--outbound-address",),
      "source address of outgoing connections; repeatable: one IPv4 and one IPv6 address, "
      "each used for targets of its family (default: the system's choice)", "IP",
      unset="the system chooses"),
    S("outbound_interface", Interface(), None, "outbound.interface", ("--outbound-interface",),
      "bind outgoing connections to this network interface (SO_BINDTODEVICE; needs root)",
      "NAME", unset="any"),
    S("outbound_users", UserSources(), dict, "outbound.users"),
    # [dns] (net/dns.py; README "DNS")
    S("dns_resolver", Choice("auto", "c-ares", "system"), "auto", "dns.resolver",
      ("--dns-resolver",), "how names are looked up: c-ares with the records' TTLs, the "
      "system's getaddrinfo for /etc/hosts, localhost and single-label names (auto), c-ares "
      "for every name, or getaddrinfo for every name (system: nsswitch wins)"),
    S("dns_servers", Nameservers(), list, "dns.servers", ("--dns-server",),
      "a DNS server for c-ares, IP or IP:PORT; repeatable (default: resolv.conf's)",
      "IP[:PORT]", unset="resolv.conf's"),
    S("dns_cache_size", Integer(1, 10 ** 7), 10000, "dns.cache_size"),
    S("dns_min_ttl", Seconds(zero="the records' own TTL"), 1.0, "dns.min_ttl"),
    S("dns_max_ttl", Seconds(), 3600.0, "dns.max_ttl"),
    S("dns_negative_ttl", Seconds(zero="not kept"), 5.0, "dns.negative_ttl"),
    # [gssapi] (RFC 1961)
    S("gssapi", Boolean(), False, "gssapi.enabled", ("--gssapi",),
      "offer GSSAPI/Kerberos authentication (RFC 1961), preferred over username/password; "
      "clients that do not offer it then need --users or --allow-open; the keytab is "
      "KRB5_KTNAME's or the system's", switch=True),
    S("gssapi_keytab", Path(), None, "gssapi.keytab", ("--gssapi-keytab",),
      "the service's keytab (implies --gssapi)", "FILE",
      unset="KRB5_KTNAME or the system's keytab", implies="gssapi"),
    S("gssapi_principal", Principal(), None, "gssapi.principal", ("--gssapi-principal",),
      "accept tickets for this service principal only, e.g. socks/proxy.example.com@EXAMPLE.COM "
      "(implies --gssapi; default: any principal in the keytab)", "NAME",
      unset="any principal in the keytab", implies="gssapi"),
    S("gssapi_min_protection",
      Choice("integrity", "confidentiality", "clear",
             fix="use integrity, confidentiality, or clear (Dante's, no protection)"),
      "integrity", "gssapi.min_protection", ("--gssapi-min-protection",),
      "lowest per-message protection accepted (default integrity; clear is Dante's extension: "
      "Kerberos authentication, unprotected data)", label="gssapi min_protection"),
    S("gssapi_principal_map", PrincipalMap(), dict, "gssapi.principal_map"),
    # [groups], [[rules]]: after upstreams and groups, which rules name
    S("groups", Groups(), dict, "groups"),
    S("rules", Rules(), list, "rules",
      unset="none (everything allowed, but see the SSRF-safe default)"),
)

SECTIONS: tuple[Section, ...] = (
    Section(""),
    Section("timeouts", "[timeouts]"),
    Section("bind", "[bind]"),
    Section("udp", "[udp]"),
    Section("socks4", "[socks4]"),
    Section("listener_protocols"),  # "HOST:PORT" = [protocols], when any
    Section("log", "[log]"),
    Section("metrics", "[metrics]"),
    Section("limits", "[limits]  # 0: no limit",
            "limits (0: no limit; see 'Limits' in the README for what a client sees)"),
    Section("proxy_protocol", "[proxy_protocol]"),
    Section("upstreams"),  # one [upstreams.NAME] per upstream
    Section("outbound", "[outbound]"),
    Section("dns", "[dns]"),
    Section("gssapi", "[gssapi]"),
    Section("groups", "[groups]"),
    Section("rules"),  # one [[rules]] per rule
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}

#: Settings fields made of several settings: ``limits.X`` are the fields of a LimitSettings.
COMPOSITES: dict[str, Callable[..., Any]] = {"limits": LimitSettings}


def section_of(setting: Setting) -> str:
    """The section a setting belongs to ("" for the top level); a whole-section kind is its own."""
    if setting.kind.empty is not None:
        return setting.key
    return setting.key.rpartition(".")[0]


def not_reloadable() -> tuple[str, ...]:
    """The settings a reload cannot change while running (a restart applies them)."""
    return tuple(s.name for s in SETTINGS if not s.reloadable)
