"""Kinds of structured settings: lists of addresses and tables of tables.

Same interface as the scalar kinds in ``kinds.py``; what sets these apart
is that one key holds many values (``listen[1]``, ``upstreams.corp.user``,
``limits.users.bob.bandwidth``), each checked and reported on its own, and
that some render as TOML sections of their own.  The kinds with
``empty`` set stand for a whole section (``[metrics]``, ``[groups]``,
``[[rules]]``, ``[upstreams.NAME]``): the loader hands them the section
even when the file has none, so that they always produce their value.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..control.limits import UserLimits, format_rate
from ..control.rules import compile_rule
from ..errors import ConfigError
from ..net.address import format_address, format_peer, parse_listen, parse_sources
from ..net.upstream import Upstream
from .kinds import INVALID, Invalid, Kind, Reading, leaf, put, show, toml_value
from .scalars import Boolean, Integer, Rate

__all__ = ["Listen", "Listeners", "Metrics", "UserLimitsTable", "Upstreams", "UserSources",
           "PrincipalMap", "Groups", "Rules", "Protocols", "ListenerProtocols",
           "DEFAULT_METRICS_LISTEN", "PROTOCOL_NAMES"]

DEFAULT_METRICS_LISTEN = "127.0.0.1:9180"


def _listen_flag(text: str) -> tuple[str, int]:
    try:
        return parse_listen(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _fields(kinds: dict[str, Kind], table: dict[str, Any], key: str,
            reading: Reading) -> dict[str, Any]:
    """The keys of a small fixed table (``[limits.users.NAME]``), each by its kind."""
    found: dict[str, Any] = {}
    for name, value in table.items():
        if name not in kinds:
            reading.unknown(f"{key}.{name}", name, list(kinds), f"[{key}]")
            continue
        converted = kinds[name].load(value, f"{key}.{name}", reading)
        if converted is not INVALID:
            found[name] = converted
    return found


class Listen(Kind):
    """Listen addresses, "HOST:PORT" (IPv6 in brackets); one string is a list of one."""

    def load(self, value: Any, key: str, reading: Reading) -> Any:
        items = value if isinstance(value, list) else [value]
        if not items:
            reading.problem(key, "must not be empty: give at least one \"HOST:PORT\", "
                                 "e.g. [\"127.0.0.1:1080\"]")
            return INVALID
        out = []
        for i, item in enumerate(items):
            where = f"{key}[{i}]" if isinstance(value, list) else key
            if not isinstance(item, str):
                reading.problem(where, "must be a \"HOST:PORT\" string such as \"127.0.0.1:1080\" "
                                       f"or \"[::1]:1080\", got {show(item)}")
                continue
            try:
                out.append(parse_listen(item))
            except ConfigError as exc:
                reading.problem(where, str(exc))
        return out if len(out) == len(items) else INVALID

    def argparse(self, flag: str) -> dict[str, Any]:
        return {"action": "append", "type": _listen_flag}

    def validated(self, value: Any, label: str) -> Any:
        if not value:
            raise ConfigError("no listen address: give at least one --listen HOST:PORT")
        return value

    def dump(self, value: Any) -> Any:
        return [format_address(h, p) for h, p in value]


class Listeners(Listen):
    """Which listeners a PROXY header is expected on (None: all of them)."""

    def load(self, value: Any, key: str, reading: Reading) -> Any:
        items = value if isinstance(value, list) else [value]
        out = []
        for i, item in enumerate(items):
            try:
                out.append(parse_listen(item if isinstance(item, str) else ""))
            except ConfigError:
                reading.problem(f"{key}[{i}]", "must be one of the listen addresses, "
                                               f"\"HOST:PORT\", got {show(item)}")
        return out

    def validated(self, value: Any, label: str) -> Any:
        return value

    def render(self, key: str, value: Any, settings: Any, unset: str) -> list[str]:
        if not settings.proxy_protocol_from:
            return []  # PROXY protocol off: nothing to say about listeners
        return [f"# {leaf(key)}: {unset}"] if value is None else put(leaf(key), self.dump(value))


#: What a listener can serve, told apart by the first byte (control/session.py).
PROTOCOL_NAMES = ("socks5", "socks4", "http")
_PROTOCOLS_WHY = "must name one or more of \"socks5\", \"socks4\", \"http\""


def _protocols_flag(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip().lower() for n in text.split(",") if n.strip()))
    bad = [n for n in names if n not in PROTOCOL_NAMES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: give a comma-separated list of "
                                         f"{', '.join(PROTOCOL_NAMES)}")
    return names


class Protocols(Kind):
    """Which protocols a listener serves: "socks5", "socks4", "http" (a string is a list of one)."""

    def load(self, value: Any, key: str, reading: Reading) -> Any:
        items = value if isinstance(value, list) else [value]
        if not items:
            reading.problem(key, f"{_PROTOCOLS_WHY}, e.g. [\"socks5\", \"http\"]; it must "
                                 "not be empty")
            return INVALID
        out = []
        for i, item in enumerate(items):
            if isinstance(item, str) and item in PROTOCOL_NAMES:
                out.append(item)
            else:
                reading.problem(f"{key}[{i}]" if isinstance(value, list) else key,
                                f"{_PROTOCOLS_WHY}, got {show(item)}")
        return tuple(dict.fromkeys(out)) if len(out) == len(items) else INVALID

    def argparse(self, flag: str) -> dict[str, Any]:
        return {"type": _protocols_flag}

    def validated(self, value: Any, label: str) -> Any:
        if value is None:
            return None
        items = [value] if isinstance(value, str) else list(value)
        if not items or any(item not in PROTOCOL_NAMES for item in items):
            raise ConfigError(f"{label} {value!r}: give one or more of "
                              f"{', '.join(PROTOCOL_NAMES)}")
        return tuple(dict.fromkeys(items))

    def dump(self, value: Any) -> Any:
        return list(value)


class ListenerProtocols(Kind):
    """``[listener_protocols]``: "HOST:PORT" = [protocols], one listener's own list."""

    empty: Any = {}

    def load(self, value: Any, key: str, reading: Reading) -> Any:
        out: dict[tuple[str, int], tuple[str, ...]] = {}
        for name, protocols in value.items():
            where = f"{key}.{toml_value(name)}"
            try:
                listener = parse_listen(name)
            except ConfigError as exc:
                reading.problem(where, f"must be one of the listen addresses, \"HOST:PORT\": {exc}")
                continue
            names = Protocols().load(protocols, where, reading)
            if names is not INVALID:
                out[listener] = names
        return out

    def validated(self, value: Any, label: str) -> Any:
        out = {}
        for listener, protocols in value.items():
            where = listener if isinstance(listener, str) else format_address(*listener)
            address = parse_listen(listener) if isinstance(listener, str) else tuple(listener)
            out[address] = Protocols().validated(protocols, f"{label} {where}")
        return out

    def render(self, key: str, value: Any, settings: Any, unset: str) -> list[str]:
        if not value:
            return []
        return ["", f"[{key}]"] + [f"{toml_value(format_address(*listener))} = "
                                   f"{toml_value(list(names))}"
                                   for listener, names in value.items()]


class Metrics(Kind):
    """``[metrics]``: enabled and listen, one setting: where metrics are served, or None."""

    empty: Any = {}

    def load(self, value: Any, key: str, reading: Reading) -> Any:
        found = _fields({"enabled": Boolean(), "listen": _HostPort()}, value, key, reading)
        if "listen" in value and "listen" not in found:
            return INVALID  # reported
        enabled = found.get("enabled", "listen" in value)
        return found.get("listen", DEFAULT_METRICS_LISTEN) if enabled else None

    def argparse(self, flag: str) -> dict[str, Any]:
        return {"type": _listen_flag}

    def from_flag(self, value: Any) -> Any:
        return format_peer(value)

    def validated(self, value: Any, label: str) -> Any:
        if value:
            parse_listen(value)  # a bad address is a start-up error
        return value

    def render(self, key: str, value: Any, settings: Any, unset: str) -> list[str]:
        return put("enabled", value is not None) + ([] if value is None else put("listen", value))


class _HostPort(Kind):
    def convert(self, value: Any, base: str) -> Any:
        if not isinstance(value, str):
            raise Invalid(f"must be a \"HOST:PORT\" string such as \"127.0.0.1:9180\", got {show(value)}")
        try:
            parse_listen(value)
        except ConfigError as exc:
            raise Invalid(f"must be HOST:PORT or [IPV6]:PORT: {exc}") from None
        return value


class UserLimitsTable(Kind):
    """``[limits.users.NAME]``: one user's own connections and bandwidth."""

    def load(self, value: Any, key: str, reading: Reading) -> Any:
        if not isinstance(value, dict):
            reading.problem(key, f"must be a table of [limits.users.NAME] sections, got {show(value)}")
            return {}
        kinds = {"connections": Integer(0, 10 ** 9, " (0: no limit)"), "bandwidth": Rate()}
        users: dict[str, UserLimits] = {}
        for name, own in value.items():
            where = f"{key}.{name}"
            if not isinstance(own, dict):
                reading.problem(where, "must be a table with connections and/or bandwidth, e.g. "
                                       f"{{ connections = 10, bandwidth = \"1MiB\" }}, got {show(own)}")
                continue
            users[name] = UserLimits(**_fields(kinds, own, where, reading))
        return users

    def render(self, key: str, value: Any, settings: Any, unset: str) -> list[str]:
        lines: list[str] = []
        for name, own in value.items():
            lines += ["", f"[{key}.{toml_value(name)}]"]
            if own.connections is not None:
                lines += put("connections", own.connections)
            if own.bandwidth is not None:
                lines += put("bandwidth", format_rate(own.bandwidth))
        return lines


class Upstreams(Kind):
    """``[upstreams.NAME]``: SOCKS5 (or HTTP CONNECT) proxies that rules may send traffic through."""

    empty: Any = {}

    def load(self, value: Any, key: str, reading: Reading) -> Any:
        upstreams: dict[str, Upstream] = {}
        for name, own in value.items():
            where = f"{key}.{name}"
            if not isinstance(own, dict):
                reading.problem(where, "must be a table: [upstreams.NAME] with address, and user "
                                       f"and password for RFC 1929, got {show(own)}")
                continue
            fields: dict[str, Any] = {}
            for field_name, item in own.items():
                if field_name == "address":
                    if not isinstance(item, str):
                        reading.problem(f"{where}.address", "must be \"HOST:PORT\" such as "
                                                            f"\"10.0.0.2:1080\", got {show(item)}")
                        continue
                    try:
                        fields["host"], fields["port"] = parse_listen(item)
                    except ConfigError as exc:
                        reading.problem(f"{where}.address", str(exc))
                elif field_name in ("user", "password"):
                    if not isinstance(item, str) or not item or len(item.encode("utf-8")) > 255:
                        reading.problem(f"{where}.{field_name}", "must be 1 to 255 bytes of text "
                                                                 f"(RFC 1929), got {show(item)}")
                    else:
                        fields[field_name] = item
                elif field_name == "type":
                    if item not in ("socks5", "http"):
                        reading.problem(f"{where}.type", "must be \"socks5\" (the default) or "
                                                         "\"http\" (an HTTP proxy that tunnels "
                                                         f"with CONNECT), got {show(item)}")
                    else:
                        fields["type"] = item
                else:
                    reading.unknown(f"{where}.{field_name}", field_name,
                                    ["address", "user", "password", "type"], f"[{where}]")
            if "address" not in own:
                reading.problem(f"{where}.address", "missing: where the upstream SOCKS5 proxy "
                                                    "listens, e.g. address = \"10.0.0.2:1080\"")
            elif ("user" in own) != ("password" in own):
                reading.problem(where, "give both user and password, or neither")
            elif "host" in fields:
                upstreams[name] = Upstream(name, **fields)
            if name not in upstreams:
                upstreams[name] = Upstream(name, "0.0.0.0", 0)  # known: rules get no second error
        return upstreams

    def render(self, key: str, value: Any, settings: Any, unset: str) -> list[str]:
        lines: list[str] = []
        for name, upstream in value.items():
            lines += ["", f"[{key}.{toml_value(name)}]"]
            lines += put("address", upstream.address)
            if upstream.type != "socks5":
                lines += put("type", upstream.type)
            if upstream.user is not None:
                lines += put("user", upstream.user) + put("password", upstream.password)
        return lines


class UserSources(Kind):
    """``[outbound.users]``: NAME = source address(es) of that user's connections."""

    def load(self, value: Any, key: str, reading: Reading) -> Any:
        if not isinstance(value, dict):
            reading.problem(key, "must be a table of NAME = \"IP\" (or [\"IPv4\", \"IPv6\"]), "
                                 f"got {show(value)}")
            return INVALID
        users = {}
        for user, sources in value.items():
            try:
                users[user] = parse_sources(sources, f"{key}.{user}")
            except ConfigError as exc:
                reading.problem(f"{key}.{user}", str(exc).partition(": ")[2])
        return users

    def validated(self, value: Any, label: str) -> Any:
        for user, sources in value.items():
            value[user] = parse_sources(sources, f"{label}.{user}")
        return value

    def render(self, key: str, value: Any, settings: Any, unset: str) -> list[str]:
        if not value:
            return []
        return ["", f"[{key}]"] + [f"{toml_value(u)} = {toml_value(s)}" for u, s in value.items()]


class PrincipalMap(UserSources):
    """``[gssapi.principal_map]``: Kerberos principal = user name exceptions."""

    def load(self, value: Any, key: str, reading: Reading) -> Any:
        why = ("must be a table of principal = user name, e.g. { \"alice@EXAMPLE.COM\" = "
               "\"alice\" }, each name 1 to 255 bytes")
        if not isinstance(value, dict):
            reading.problem(key, f"{why}, got {show(value)}")
            return INVALID
        for principal, user in value.items():
            if not isinstance(user, str) or not 0 < len(user.encode("utf-8")) <= 255:
                reading.problem(key, f"{why}; {principal!r} maps to {show(user)}")
                return INVALID
        return dict(value)

    def validated(self, value: Any, label: str) -> Any:
        return value


class Groups(Kind):
    """``[groups]``: NAME = [user, ...], for rules."""

    empty: Any = {}

    def load(self, value: Any, key: str, reading: Reading) -> Any:
        groups: dict[str, list[str]] = {}
        for name, members in value.items():
            where = f"{key}.{name}"
            groups[name] = []  # known even when wrong, so rules naming it report no second error
            if not isinstance(members, list):
                reading.problem(where, "must be a list of user names, e.g. [\"alice\", \"bob\"], "
                                       f"got {show(members)}")
                continue
            bad = [i for i, m in enumerate(members) if not isinstance(m, str) or not m]
            for i in bad:
                reading.problem(f"{where}[{i}]", f"must be a user name, got {show(members[i])}")
            if not bad:
                groups[name] = list(members)
        return groups

    def render(self, key: str, value: Any, settings: Any, unset: str) -> list[str]:
        return [f"{toml_value(name)} = {toml_value(members)}" for name, members in value.items()]


class Rules(Kind):
    """``[[rules]]``: compiled by ``fastsocks.control.rules``, after groups and upstreams."""

    empty: Any = []

    def load(self, value: Any, key: str, reading: Reading) -> Any:
        if not isinstance(value, list):
            reading.problem(key, "must be an array of tables: write each rule as a [[rules]] "
                                 f"section, got {show(value)}")
            return []
        groups = reading.values.get("groups", {})
        upstreams = reading.values.get("upstreams", {})
        rules = []
        problems: list[tuple[str, str]] = []
        for index, table in enumerate(value):
            rule = compile_rule(index, table, groups, problems, upstreams)
            if rule is not None:
                rules.append(rule)
        reading.problems.extend(problems)
        return rules

    def render(self, key: str, value: Any, settings: Any, unset: str) -> list[str]:
        if not value:
            return ["", f"# {key}: {unset}"]
        lines: list[str] = []
        for rule in value:
            lines += ["", f"[[{key}]]  # {key}[{rule.index}]"]
            for name, item in rule.spec.items():
                lines += put(name, item)
        return lines
