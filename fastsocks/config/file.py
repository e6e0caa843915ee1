"""The TOML configuration file: load, validate, merge the command line, print.

``load_config(path, overrides)`` reads a file into ``Settings``; ``overrides``
(the flags actually given on the command line, as Settings field names) win
over the file.  Every problem is reported, not just the first, each as
``FILE: dotted.key: what is allowed, got VALUE``; unknown keys are errors.
Relative paths in the file (users, log.access) are relative to the file.
``render(settings)`` prints the effective configuration as TOML that loads
back to the same settings.

The schema (deploy/fastsocks.toml is the commented example)::

    listen = ["127.0.0.1:1080"]      users = "users.txt"     allow_open = false
    workers = CPUs   loop = "auto"   relay = "auto"   backlog = 4096
    [timeouts]  handshake connect idle bind drain
    [bind]      address
    [udp]       public_address reassembly
    [log]       level access access_format
    [metrics]   enabled listen
    [limits]    connections connections_per_ip connections_per_user
                handshake_rate_per_ip bandwidth_per_connection bandwidth_per_user
    [limits.users.NAME]  connections bandwidth
    [gssapi]    enabled keytab principal min_protection     [gssapi.principal_map]  "P@REALM" = "user"
    [groups]    NAME = ["user", ...]
    [[rules]]   action src dst domain ports users groups commands upstream source
    [proxy_protocol]   trusted listeners timeout
    [upstreams.NAME]   address user password
    [outbound]  address interface     [outbound.users]  NAME = "IP" or ["IPv4", "IPv6"]
"""

from __future__ import annotations

import difflib
import json
import math
import os
import sys
from typing import Any, Callable, Mapping

from . import Settings, cpu_count, is_loopback_host, parse_listen
from ..errors import ConfigError
from ..net.address import format_address
from ..control.limits import LimitSettings, UserLimits, format_rate, parse_rate
from ..control.rules import compile_rule
from ..net.upstream import MIN_PROXY_PROTOCOL_TIMEOUT, Upstream, _source_list

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["load_config", "render", "ConfigFileError", "DEFAULT_METRICS_LISTEN"]

DEFAULT_METRICS_LISTEN = "127.0.0.1:9180"

_LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigFileError(ConfigError):
    """One or more problems in a config file; ``errors`` lists each line."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def _show(value: Any) -> str:
    """A value as the operator wrote it (TOML-ish), for 'got ...'."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if value != value else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return "a table"
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(value)


# -- value checkers: each returns (value, None) or (None, what is allowed) ----------


Check = Callable[[Any], tuple[Any, "str | None"]]


def _seconds(positive: bool) -> Check:
    allowed = ("must be a positive number of seconds" if positive
               else "must be 0 (never) or a positive number of seconds")

    def check(value: Any) -> tuple[Any, str | None]:
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not math.isfinite(value) or value < 0 or (positive and value == 0)):
            return None, f"{allowed}, got {_show(value)}"
        return float(value), None

    return check


def _boolean(value: Any) -> tuple[Any, str | None]:
    if isinstance(value, bool):
        return value, None
    return None, f"must be true or false, got {_show(value)}"


def _choice(*choices: str) -> Check:
    def check(value: Any) -> tuple[Any, str | None]:
        if isinstance(value, str) and value in choices:
            return value, None
        return None, f"must be one of {', '.join(_show(c) for c in choices)}, got {_show(value)}"

    return check


def _integer(low: int, high: int, note: str = "") -> Check:
    def check(value: Any) -> tuple[Any, str | None]:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            return None, f"must be a whole number from {low} to {high}{note}, got {_show(value)}"
        return value, None

    return check


def _rate(value: Any) -> tuple[Any, str | None]:
    try:
        return parse_rate(value, "rate"), None
    except ConfigError:
        return None, ("must be bytes per second (0: no limit), or a string with a unit such as "
                      f"\"10MiB\", \"500kB\" or \"100Mbit\", got {_show(value)}")


def _per_second(value: Any) -> tuple[Any, str | None]:
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or not 0 <= value < 1e9):
        return None, f"must be 0 (no limit) or a positive number per second, got {_show(value)}"
    return float(value), None


def _ip(value: Any) -> tuple[Any, str | None]:
    import ipaddress

    try:
        if isinstance(value, str):
            ipaddress.ip_address(value)
            return value, None
    except ValueError:
        pass
    return None, f"must be an IPv4 or IPv6 address such as \"203.0.113.7\", got {_show(value)}"


def _cidr(value: Any) -> tuple[Any, str | None]:
    import ipaddress

    try:
        if isinstance(value, str):
            return ipaddress.ip_network(value.strip(), strict=True).with_prefixlen, None
    except ValueError:
        pass
    return None, ("must be a CIDR (a balancer's address or network) such as \"10.0.0.0/8\" or "
                  f"\"192.0.2.7/32\", host bits unset, got {_show(value)}")


def _principal(value: Any) -> tuple[Any, str | None]:
    if isinstance(value, str) and value.strip() and not any(c.isspace() for c in value):
        return value, None
    return None, ("must be a Kerberos principal such as \"socks/proxy.example.com@EXAMPLE.COM\" "
                  f"(leave it out to accept any principal in the keytab), got {_show(value)}")


def _principal_map(value: Any) -> tuple[Any, str | None]:
    why = ("must be a table of principal = user name, e.g. { \"alice@EXAMPLE.COM\" = "
           "\"alice\" }, each name 1 to 255 bytes")
    if not isinstance(value, dict):
        return None, f"{why}, got {_show(value)}"
    for principal, user in value.items():
        if not isinstance(user, str) or not 0 < len(user.encode("utf-8")) <= 255:
            return None, f"{why}; {principal!r} maps to {_show(user)}"
    return dict(value), None


def _host_port(value: Any) -> tuple[Any, str | None]:
    if not isinstance(value, str):
        return None, f"must be a \"HOST:PORT\" string such as \"127.0.0.1:9180\", got {_show(value)}"
    try:
        parse_listen(value)
    except ConfigError as exc:
        return None, f"must be HOST:PORT or [IPV6]:PORT: {exc}"
    return value, None


class _Path:
    """A path, relative to the config file's directory; ``dash`` also allows "-"."""

    def __init__(self, base: str, dash: bool = False) -> None:
        self.base = base
        self.dash = dash

    def __call__(self, value: Any) -> tuple[Any, str | None]:
        if not isinstance(value, str) or not value or "\0" in value:
            extra = " or \"-\" for standard output" if self.dash else ""
            return None, f"must be a file path{extra}, got {_show(value)}"
        if self.dash and value == "-":
            return value, None
        return os.path.join(self.base, os.path.expanduser(value)), None


# -- the loader -----------------------------------------------------------------


class _Loader:
    def __init__(self, filename: str) -> None:
        self.file = filename
        self.base = os.path.dirname(os.path.abspath(filename))
        self.errors: list[str] = []
        self.values: dict[str, Any] = {}

    def error(self, key: str, message: str) -> None:
        self.errors.append(f"{self.file}: {key}: {message}")

    def unknown(self, key: str, name: str, allowed: list[str], where: str) -> None:
        close = difflib.get_close_matches(name, allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        self.error(key, f"unknown key{hint}; {where} allows {', '.join(allowed)}")

    def table(self, doc: Mapping[str, Any], name: str) -> dict[str, Any]:
        value = doc.get(name, {})
        if not isinstance(value, dict):
            self.error(name, f"must be a table (a [{name}] section), got {_show(value)}")
            return {}
        return value

    def fields(self, section: str, table: Mapping[str, Any],
               schema: Mapping[str, tuple[str, Check]]) -> None:
        """Check each key of ``table`` against ``schema``: key → (Settings field, checker)."""
        for key, value in table.items():
            dotted = f"{section}.{key}" if section else key
            if key not in schema:
                where = f"[{section}]" if section else "the top level"
                self.unknown(dotted, key, list(schema), where)
                continue
            field_name, check = schema[key]
            converted, why = check(value)
            if why is not None:
                self.error(dotted, why)
            else:
                self.values[field_name] = converted

    def listen(self, value: Any) -> None:
        items = value if isinstance(value, list) else [value]
        if not items:
            self.error("listen", "must not be empty: give at least one \"HOST:PORT\", "
                                 "e.g. [\"127.0.0.1:1080\"]")
            return
        out = []
        for i, item in enumerate(items):
            key = f"listen[{i}]" if isinstance(value, list) else "listen"
            if not isinstance(item, str):
                self.error(key, f"must be a \"HOST:PORT\" string such as \"127.0.0.1:1080\" or "
                                f"\"[::1]:1080\", got {_show(item)}")
                continue
            try:
                out.append(parse_listen(item))
            except ConfigError as exc:
                self.error(key, str(exc))
        if len(out) == len(items):
            self.values["listen"] = out

    def groups(self, table: Mapping[str, Any]) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for name, members in table.items():
            key = f"groups.{name}"
            if not isinstance(members, list):
                self.error(key, f"must be a list of user names, e.g. [\"alice\", \"bob\"], "
                                f"got {_show(members)}")
                groups[name] = []  # known, so rules naming it report no second error
                continue
            ok = True
            for i, member in enumerate(members):
                if not isinstance(member, str) or not member:
                    self.error(f"{key}[{i}]", f"must be a user name, got {_show(member)}")
                    ok = False
            if ok:
                groups[name] = list(members)
            else:
                groups[name] = []  # known, so rules naming it report no second error
        return groups

    def metrics(self, table: Mapping[str, Any]) -> None:
        schema = {"enabled": ("_metrics_enabled", _boolean), "listen": ("_metrics_listen", _host_port)}
        self.fields("metrics", table, schema)
        enabled = self.values.pop("_metrics_enabled", None)
        listen = self.values.pop("_metrics_listen", None)
        if "listen" in table and listen is None:
            return  # reported
        if enabled is None:
            enabled = "listen" in table
        self.values["metrics_listen"] = (listen or DEFAULT_METRICS_LISTEN) if enabled else None

    def proxy_protocol(self, table: Mapping[str, Any]) -> None:
        for key, value in table.items():
            dotted = f"proxy_protocol.{key}"
            if key == "trusted":
                items = value if isinstance(value, list) else [value]
                nets = []
                for i, item in enumerate(items):
                    net, why = _cidr(item)
                    if why is not None:
                        self.error(f"{dotted}[{i}]" if isinstance(value, list) else dotted, why)
                    else:
                        nets.append(net)
                self.values["proxy_protocol_from"] = nets
            elif key == "listeners":
                items = value if isinstance(value, list) else [value]
                out = []
                for i, item in enumerate(items):
                    try:
                        out.append(parse_listen(item if isinstance(item, str) else ""))
                    except ConfigError:
                        self.error(f"{dotted}[{i}]", "must be one of the listen addresses, "
                                                     f"\"HOST:PORT\", got {_show(item)}")
                self.values["proxy_protocol_listen"] = out
            elif key == "timeout":
                seconds, why = _seconds(True)(value)
                if why is None and seconds < MIN_PROXY_PROTOCOL_TIMEOUT:
                    why = (f"must be at least {MIN_PROXY_PROTOCOL_TIMEOUT:g} seconds (the PROXY "
                           f"protocol spec's minimum), got {_show(value)}")
                if why is not None:
                    self.error(dotted, why)
                else:
                    self.values["proxy_protocol_timeout"] = seconds
            else:
                self.unknown(dotted, key, ["trusted", "listeners", "timeout"], "[proxy_protocol]")
        if "listeners" in table and "trusted" not in table:
            self.error("proxy_protocol.trusted", "missing: list the balancers' addresses, e.g. "
                                                 "trusted = [\"10.0.0.0/8\"]; the header is "
                                                 "only accepted from them")

    def gssapi(self, table: Mapping[str, Any]) -> None:
        """[gssapi]: RFC 1961 authentication; on when the section has keys, unless enabled = false."""
        schema: dict[str, tuple[str, Check]] = {
            "enabled": ("gssapi", _boolean),
            "keytab": ("gssapi_keytab", _Path(self.base)),
            "principal": ("gssapi_principal", _principal),
            "min_protection": ("gssapi_min_protection",
                               _choice("integrity", "confidentiality", "clear")),
            "principal_map": ("gssapi_principal_map", _principal_map),
        }
        self.fields("gssapi", table, schema)
        if table and "enabled" not in table:
            self.values["gssapi"] = True

    def upstreams(self, table: Mapping[str, Any]) -> dict[str, Upstream]:
        upstreams: dict[str, Upstream] = {}
        for name, own in table.items():
            key = f"upstreams.{name}"
            if not isinstance(own, dict):
                self.error(key, "must be a table: [upstreams.NAME] with address, and user and "
                                f"password for RFC 1929, got {_show(own)}")
                continue
            fields: dict[str, Any] = {}
            for field_name, value in own.items():
                if field_name == "address":
                    if not isinstance(value, str):
                        self.error(f"{key}.address", "must be \"HOST:PORT\" such as "
                                                     f"\"10.0.0.2:1080\", got {_show(value)}")
                        continue
                    try:
                        fields["host"], fields["port"] = parse_listen(value)
                    except ConfigError as exc:
                        self.error(f"{key}.address", str(exc))
                elif field_name in ("user", "password"):
                    if (not isinstance(value, str) or not value
                            or len(value.encode("utf-8")) > 255):
                        self.error(f"{key}.{field_name}", "must be 1 to 255 bytes of text "
                                                          f"(RFC 1929), got {_show(value)}")
                    else:
                        fields[field_name] = value
                else:
                    self.unknown(f"{key}.{field_name}", field_name,
                                 ["address", "user", "password"], f"[{key}]")
            if "address" not in own:
                self.error(f"{key}.address", "missing: where the upstream SOCKS5 proxy listens, "
                                             "e.g. address = \"10.0.0.2:1080\"")
            elif ("user" in own) != ("password" in own):
                self.error(key, "give both user and password, or neither")
            elif "host" in fields:
                upstreams[name] = Upstream(name, **fields)
            if name not in upstreams:
                upstreams[name] = Upstream(name, "0.0.0.0", 0)  # known: rules get no second error
        self.values["upstreams"] = upstreams
        return upstreams

    def outbound(self, table: Mapping[str, Any]) -> None:
        for key, value in table.items():
            dotted = f"outbound.{key}"
            if key == "address":
                try:
                    self.values["outbound_address"] = _source_list(value, dotted)
                except ConfigError as exc:
                    self.error(dotted, str(exc).partition(": ")[2])
            elif key == "interface":
                if not isinstance(value, str) or not value:
                    self.error(dotted, f"must be a network interface name such as \"eth1\", "
                                       f"got {_show(value)}")
                else:
                    self.values["outbound_interface"] = value
            elif key == "users":
                if not isinstance(value, dict):
                    self.error(dotted, "must be a table of NAME = \"IP\" (or [\"IPv4\", "
                                       f"\"IPv6\"]), got {_show(value)}")
                    continue
                users = {}
                for user, sources in value.items():
                    try:
                        users[user] = _source_list(sources, f"{dotted}.{user}")
                    except ConfigError as exc:
                        self.error(f"{dotted}.{user}", str(exc).partition(": ")[2])
                self.values["outbound_users"] = users
            else:
                self.unknown(dotted, key, ["address", "interface", "users"], "[outbound]")

    def limits(self, table: Mapping[str, Any]) -> None:
        count = _integer(0, 10 ** 9, " (0: no limit)")
        schema: dict[str, tuple[str, Check]] = {
            "connections": ("connections", count),
            "connections_per_ip": ("connections_per_ip", count),
            "connections_per_user": ("connections_per_user", count),
            "handshake_rate_per_ip": ("handshake_rate_per_ip", _per_second),
            "bandwidth_per_connection": ("bandwidth_per_connection", _rate),
            "bandwidth_per_user": ("bandwidth_per_user", _rate),
            "users": ("users", lambda v: (v, None)),
        }
        saved, self.values = self.values, {}
        self.fields("limits", table, schema)
        found, self.values = self.values, saved
        users: dict[str, UserLimits] = {}
        given = found.pop("users", {})
        if not isinstance(given, dict):
            self.error("limits.users", "must be a table of [limits.users.NAME] sections, "
                                       f"got {_show(given)}")
            given = {}
        for name, own in given.items():
            key = f"limits.users.{name}"
            if not isinstance(own, dict):
                self.error(key, "must be a table with connections and/or bandwidth, e.g. "
                                f"{{ connections = 10, bandwidth = \"1MiB\" }}, got {_show(own)}")
                continue
            saved, self.values = self.values, {}
            self.fields(key, own, {"connections": ("connections", count),
                                   "bandwidth": ("bandwidth", _rate)})
            fields, self.values = self.values, saved
            users[name] = UserLimits(**fields)
        self.values["limits"] = LimitSettings(**found, users=users)


_TOP_LEVEL = ["listen", "users", "allow_open", "workers", "loop", "relay", "backlog",
              "timeouts", "bind", "udp", "log", "metrics", "limits", "groups", "rules",
              "proxy_protocol", "upstreams", "outbound", "gssapi"]


def _parse(path: str) -> tuple[dict[str, Any], _Loader]:
    loader = _Loader(path)
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise ConfigFileError([f"{path}: cannot read the config file: {exc.strerror or exc}"]) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigFileError([f"{path}: not valid TOML: {exc}"]) from None

    top: dict[str, tuple[str, Check]] = {
        "users": ("users_file", _Path(loader.base)),
        "allow_open": ("allow_open", _boolean),
        "workers": ("workers", _integer(0, 1024, " (0: one per CPU)")),
        "loop": ("loop", _choice("auto", "uvloop", "asyncio")),
        "relay": ("relay", _choice("auto", "splice", "protocol")),
        "backlog": ("backlog", _integer(1, 65535)),
    }
    sections = ("timeouts", "bind", "udp", "log", "metrics", "limits", "groups", "rules",
                "proxy_protocol", "upstreams", "outbound", "gssapi")
    for key, value in doc.items():
        if key == "listen":
            loader.listen(value)
        elif key in top:
            loader.fields("", {key: value}, top)
        elif key not in sections:
            loader.unknown(key, key, _TOP_LEVEL, "the top level")

    loader.fields("timeouts", loader.table(doc, "timeouts"), {
        "handshake": ("handshake_timeout", _seconds(True)),
        "connect": ("connect_timeout", _seconds(True)),
        "idle": ("idle_timeout", _seconds(False)),
        "bind": ("bind_timeout", _seconds(True)),
        "drain": ("drain_timeout", _seconds(False)),
    })
    loader.fields("bind", loader.table(doc, "bind"), {"address": ("bind_address", _ip)})
    loader.fields("udp", loader.table(doc, "udp"), {
        "public_address": ("udp_public_address", _ip),
        "reassembly": ("udp_reassembly", _boolean),
    })
    loader.fields("log", loader.table(doc, "log"), {
        "level": ("log_level", _choice(*_LOG_LEVELS)),
        "access": ("access_log", _Path(loader.base, dash=True)),
        "access_format": ("access_log_format", _choice("text", "json")),
    })
    loader.metrics(loader.table(doc, "metrics"))
    loader.limits(loader.table(doc, "limits"))
    loader.proxy_protocol(loader.table(doc, "proxy_protocol"))
    upstreams = loader.upstreams(loader.table(doc, "upstreams"))
    loader.outbound(loader.table(doc, "outbound"))
    loader.gssapi(loader.table(doc, "gssapi"))
    groups = loader.groups(loader.table(doc, "groups"))
    loader.values["groups"] = groups

    rules_value = doc.get("rules", [])
    rules = []
    if not isinstance(rules_value, list):
        loader.error("rules", "must be an array of tables: write each rule as a [[rules]] "
                              f"section, got {_show(rules_value)}")
    else:
        problems: list[tuple[str, str]] = []
        for index, table in enumerate(rules_value):
            rule = compile_rule(index, table, groups, problems, upstreams)
            if rule is not None:
                rules.append(rule)
        for key, message in problems:
            loader.error(key, message)
    loader.values["rules"] = rules

    if loader.values.get("workers") == 0:
        loader.values["workers"] = cpu_count()
    return loader.values, loader


def load_config(path: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None) -> Settings:
    """Settings from the TOML file at ``path``, with ``overrides`` (Settings fields) on top.

    Raises ConfigFileError (a ConfigError) listing every problem found.
    """
    filename = os.fspath(path)
    values, loader = _parse(filename)
    errors = loader.errors
    overrides = dict(overrides or {})
    values.update(overrides)
    if not errors and "listen" not in overrides:
        # The safe-by-default rule, worded for the file when the file decides it.
        listen = values.get("listen", Settings().listen)
        users = values.get("users_file")
        allow_open = values.get("allow_open", False)
        exposed = [format_address(h, p) for h, p in listen if not is_loopback_host(h)]
        if exposed and users is None and not allow_open and not values.get("gssapi"):
            key = "listen" if "listen" in values else "listen (default 127.0.0.1:1080)"
            loader.error(key, f"refusing to listen on {', '.join(exposed)} without authentication: "
                              "anyone who can reach it could use this proxy. Set users = \"FILE\" "
                              "(create one with 'fastsocks users add FILE NAME'), or "
                              "allow_open = true to run an open proxy knowingly")
    if errors:
        raise ConfigFileError(errors)
    settings = Settings(**values, config_file=filename)
    try:
        settings.validate()
    except ConfigError as exc:
        raise ConfigFileError([f"{filename}: {exc}"]) from None
    return settings


# -- printing ---------------------------------------------------------------------


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def render(settings: Settings) -> str:
    """The effective configuration as TOML (loads back to the same settings)."""
    lines: list[str] = []
    if settings.config_file:
        lines.append(f"# effective configuration, from {settings.config_file}")

    def put(key: str, value: Any, unset: str = "") -> None:
        if value is None:
            lines.append(f"# {key}: not set{(' (' + unset + ')') if unset else ''}")
        else:
            lines.append(f"{key} = {_toml(value)}")

    put("listen", [format_address(h, p) for h, p in settings.listen])
    put("users", settings.users_file, "no authentication")
    put("allow_open", settings.allow_open)
    put("workers", settings.workers)
    put("loop", settings.loop)
    put("relay", settings.relay)
    put("backlog", settings.backlog)
    lines += ["", "[timeouts]"]
    put("handshake", settings.handshake_timeout)
    put("connect", settings.connect_timeout)
    put("idle", settings.idle_timeout)
    put("bind", settings.bind_timeout)
    put("drain", settings.drain_timeout)
    lines += ["", "[bind]"]
    put("address", settings.bind_address, "the address the client reached")
    lines += ["", "[udp]"]
    put("public_address", settings.udp_public_address, "the address the client reached")
    put("reassembly", settings.udp_reassembly)
    lines += ["", "[log]"]
    put("level", settings.log_level)
    put("access", settings.access_log, "no access log")
    put("access_format", settings.access_log_format)
    lines += ["", "[metrics]"]
    put("enabled", settings.metrics_listen is not None)
    if settings.metrics_listen is not None:
        put("listen", settings.metrics_listen)
    limits = settings.limits
    lines += ["", "[limits]  # 0: no limit"]
    put("connections", limits.connections)
    put("connections_per_ip", limits.connections_per_ip)
    put("connections_per_user", limits.connections_per_user)
    put("handshake_rate_per_ip", limits.handshake_rate_per_ip)
    put("bandwidth_per_connection", format_rate(limits.bandwidth_per_connection))
    put("bandwidth_per_user", format_rate(limits.bandwidth_per_user))
    for name, own in limits.users.items():
        lines += ["", f"[limits.users.{_toml(name)}]"]
        if own.connections is not None:
            put("connections", own.connections)
        if own.bandwidth is not None:
            put("bandwidth", format_rate(own.bandwidth))
    lines += ["", "[proxy_protocol]"]
    if not settings.proxy_protocol_from:
        lines.append("# trusted: none (PROXY protocol off)")
    else:
        put("trusted", settings.proxy_protocol_from)
        if settings.proxy_protocol_listen is None:
            lines.append("# listeners: all of them")
        else:
            put("listeners", [format_address(h, p) for h, p in settings.proxy_protocol_listen])
    put("timeout", settings.proxy_protocol_timeout)
    for name, upstream in settings.upstreams.items():
        lines += ["", f"[upstreams.{_toml(name)}]"]
        put("address", upstream.address)
        if upstream.user is not None:
            put("user", upstream.user)
            put("password", upstream.password)
    lines += ["", "[outbound]"]
    put("address", settings.outbound_address or None, "the system chooses")
    put("interface", settings.outbound_interface, "any")
    if settings.outbound_users:
        lines += ["", "[outbound.users]"]
        for user, sources in settings.outbound_users.items():
            lines.append(f"{_toml(user)} = {_toml(sources)}")
    lines += ["", "[gssapi]"]
    put("enabled", settings.gssapi)
    put("keytab", settings.gssapi_keytab, "KRB5_KTNAME or the system's keytab")
    put("principal", settings.gssapi_principal, "any principal in the keytab")
    put("min_protection", settings.gssapi_min_protection)
    if settings.gssapi_principal_map:
        lines += ["", "[gssapi.principal_map]"]
        for principal, user in settings.gssapi_principal_map.items():
            lines.append(f"{_toml(principal)} = {_toml(user)}")
    lines += ["", "[groups]"]
    for name, members in settings.groups.items():
        lines.append(f"{_toml(name)} = {_toml(members)}")
    if not settings.rules:
        lines += ["", "# rules: none (everything allowed, but see the SSRF-safe default)"]
    for rule in settings.rules:
        lines += ["", f"[[rules]]  # rules[{rule.index}]"]
        for key, value in rule.spec.items():
            put(key, value)
    return "\n".join(lines) + "\n"


def check_main(argv: list[str]) -> int:
    """``fastsocks check CONFIG``: 0 and the effective config, or 2 and the errors."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="fastsocks check",
        description="Validate a TOML config file and print the effective configuration.")
    parser.add_argument("config", metavar="CONFIG", help="the TOML config file")
    args = parser.parse_args(argv)
    try:
        settings = load_config(args.config)
        known: set[str] | None = None
        if settings.users_file:
            from ..control.auth import Users

            try:
                known = set(Users.load(settings.users_file).hashes)
            except ConfigError as exc:
                raise ConfigFileError([f"{args.config}: users: {exc}"]) from None
    except ConfigFileError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        print(f"fastsocks check: {args.config}: {len(exc.errors)} "
              f"error{'s' if len(exc.errors) != 1 else ''}", file=sys.stderr)
        return 2
    for warning in _warnings(settings, known):
        print(f"{args.config}: warning: {warning}", file=sys.stderr)
    sys.stdout.write(render(settings))
    return 0


def _warnings(settings: Settings, known: set[str] | None) -> list[str]:
    """Legal but probably not meant: users that cannot match."""
    named = [(f"groups.{group}[{i}]", user) for group, members in settings.groups.items()
             for i, user in enumerate(members)]
    named += [(f"rules[{rule.index}].users[{i}]", user) for rule in settings.rules
              for i, user in enumerate(rule.spec.get("users", ()))]
    if known is None:
        uses = [f"rules[{rule.index}]" for rule in settings.rules
                if "users" in rule.spec or "groups" in rule.spec]
        if uses:
            return [f"{', '.join(uses)}: users and groups never match without authentication "
                    "(no users file is set)"]
        return []
    return [f"{key}: user {user!r} is not in the users file {settings.users_file}"
            for key, user in named if user not in known]

