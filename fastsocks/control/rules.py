"""Access rules, compiled: ``[[rules]]`` entries checked and turned into ``Rule``s.

What config uses: ``compile_rule`` (one entry, every problem reported as a
dotted key and a message that says the fix), ``RULE_KEYS``, and
``build_policy`` (the ``Policy`` for a server's settings).  Evaluation lives
in ``rulebook``.

What a rule sees
----------------
Every decision is about one attempt: the command (connect, bind, udp,
http), the protocol the client speaks (socks5, socks4, http), the client's
IP address, the authenticated user (None without authentication) and that
user's groups, a SOCKS4 client's USERID, the destination as requested (a name, or an IP
literal) and its port, and the IP address actually dialled.

A rule matches when every matcher it has matches (a missing matcher matches
anything; a list matches when any of its entries does):

* ``src``: the client's address is in one of the CIDRs.
* ``dst``: the address dialled is in one of the CIDRs.  For an IP-literal
  request that is the literal; for a name it is each address the name
  resolves to (so ``dst`` rules are judged after resolution); for BIND it is
  the peer that connects in; for UDP, each datagram's target.
* ``domain``: a name was requested and it equals an entry (``example.com``)
  or is a subdomain of a wildcard entry (``*.example.com``: ``a.example.com``
  and ``a.b.example.com``, not ``example.com`` itself).  Case-insensitive, a
  trailing dot ignored.  It never matches an IP-literal request, nor a name
  that is an IP literal written as text.
* ``ports``: the requested DST.PORT is one of the ports or in a range.
* ``users`` / ``groups``: the authenticated user is listed, or is a member of
  a listed group (``[groups]`` in the config).  Never matches without auth.
* ``commands``: connect, bind, udp, or http (an HTTP absolute-form request
  forwarded to its origin; an HTTP CONNECT is connect).
* ``protocols``: socks5, socks4 (SOCKS4 and 4a) or http.
* ``userids``: a SOCKS4 client sent one of these USERIDs (exactly; "" is
  the empty one).  It is what the client claims, not who it is: it never
  matches ``users``, and it never matches a SOCKS5 or HTTP client.

Addresses are compared in one form: an IPv4-mapped IPv6 address
(``::ffff:127.0.0.1``) is its IPv4 address, in rules and in traffic alike;
other IPv6 forms that carry an IPv4 address (NAT64, 6to4, Teredo, ...) match
a ``dst`` by the IPv4 inside as well (``rulebook``).
How the rules are then judged (two passes, the SSRF-safe default) is told in
``rulebook``.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Iterable, Mapping

from ..errors import ConfigError
from ..net.address import (Bounds, ip_key, ipv4_bounds, is_loopback_host, network_bounds,
                           normal_network, parse_sources)
from .record import Protocol
from .rulebook import (COMMANDS, Policy, Rule)

__all__ = ["RULE_KEYS", "compile_rule", "build_policy", "ssrf_default_applies",
           "describe_ssrf_default"]

RULE_KEYS = ("action", "src", "dst", "domain", "ports", "users", "groups", "commands",
             "protocols", "userids", "upstream", "source")

_COMMAND_NAMES = {value: name for name, value in COMMANDS.items()}
_PROTOCOLS = {p.value: p for p in Protocol}


def ssrf_default_applies(listen: Iterable[tuple[str, int]]) -> bool:
    """True when any listener is on a non-loopback address."""
    return any(not is_loopback_host(host) for host, _ in listen)


def describe_ssrf_default(listen: Iterable[tuple[str, int]]) -> str:
    """The start-up line: is the SSRF-safe default on, and why (the listeners)."""
    hosts = list(dict.fromkeys(host for host, _ in listen))
    outside = [host for host in hosts if not is_loopback_host(host)]
    if outside:
        return (f"SSRF-safe default on (listening on {', '.join(outside)}, not loopback): "
                "loopback, link-local, private, shared and unspecified destinations, IPv6 "
                "forms carrying them (NAT64, 6to4, Teredo, ...) included, are denied unless "
                "an allow rule with dst or domain matches")
    return (f"SSRF-safe default off (listening on loopback only: {', '.join(hosts)}): clients "
            "may reach loopback, link-local and private destinations unless [[rules]] deny them")


def build_policy(settings: Any) -> Policy | None:
    """The Policy for ``settings``, or None when there is nothing to check."""
    ssrf = ssrf_default_applies(settings.listen)
    if not settings.rules and not ssrf:
        return None
    return Policy(settings.rules, settings.groups, ssrf)


# -- compiling [[rules]] entries ------------------------------------------------------


def _show(value: Any) -> str:
    import json

    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(value)


def _network(text: str) -> tuple[Any, str | None]:
    """(network, None) or (None, why)."""
    try:
        return ipaddress.ip_network(text, strict=True), None
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None, (f"must be an IP address or a CIDR such as \"10.0.0.0/8\" or \"fd00::/8\", "
                      f"got {_show(text)}")
    return None, (f"{_show(text)} has host bits set: write the network, "
                  f"\"{loose.with_prefixlen}\"")


def _port_range(item: Any) -> tuple[tuple[int, int] | None, str | None]:
    why = f"must be a port (0-65535) or a range \"LOW-HIGH\" such as \"8000-8999\", got {_show(item)}"
    if isinstance(item, bool):
        return None, why
    if isinstance(item, int):
        return ((item, item), None) if 0 <= item <= 65535 else (None, why)
    if isinstance(item, str):
        low, sep, high = item.partition("-")
        try:
            lo = int(low.strip(), 10)
            hi = int(high.strip(), 10) if sep else lo
        except ValueError:
            return None, why
        if 0 <= lo <= hi <= 65535:
            return (lo, hi), None
        if 0 <= hi < lo <= 65535:
            return None, f"the range {_show(item)} is backwards: write \"{hi}-{lo}\""
    return None, why


_LABEL_OK = set("abcdefghijklmnopqrstuvwxyz0123456789-_")


def _domain(item: Any) -> tuple[list[str] | None, str | None]:
    """The normalised forms of a domain entry (Unicode and IDNA), or why not."""
    why = (f"must be a domain name (\"example.com\") or a wildcard for its subdomains "
           f"(\"*.example.com\"), got {_show(item)}")
    if not isinstance(item, str):
        return None, why
    text = item.strip().lower()
    if text.endswith("."):
        text = text[:-1]
    wildcard = text.startswith("*.")
    base = text[2:] if wildcard else text
    if not base or "*" in base:
        return None, why
    if ip_key(base) is not None or ip_key(base.strip("[]")) is not None:
        return None, f"{_show(item)} is an IP address: match addresses with dst instead"
    forms = [base]
    if not base.isascii():
        try:
            forms.append(base.encode("idna").decode("ascii"))
        except UnicodeError:
            return None, f"{_show(item)} is not a valid internationalised domain name"
    ascii_form = forms[-1]
    if len(ascii_form) > 253:
        return None, f"{_show(item)} is longer than 253 characters"
    for label in ascii_form.split("."):
        if not label or len(label) > 63 or not set(label) <= _LABEL_OK:
            return None, why
    prefix = "*." if wildcard else ""
    return [prefix + form for form in dict.fromkeys(forms)], None


def _list(value: Any, path: str, what: str, errors: list[tuple[str, str]]) -> list[Any] | None:
    """A matcher's value as a list (a single value is a list of one)."""
    if isinstance(value, (list, tuple)):
        if not value:
            errors.append((path, f"must not be empty (leave {path.rpartition('.')[2]} out "
                                 f"to match any {what})"))
            return None
        return list(value)
    if isinstance(value, dict):
        errors.append((path, f"must be a list of {what}s, got a table"))
        return None
    return [value]


def _suggest(key: str, allowed: Iterable[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(allowed), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def compile_rule(index: int, table: Any, groups: Mapping[str, Any],
                 errors: list[tuple[str, str]],
                 upstreams: Mapping[str, Any] | None = None) -> Rule | None:
    """Compile ``rules[index]``; problems go to ``errors`` as (dotted key, message)."""
    here = f"rules[{index}]"
    if not isinstance(table, dict):
        errors.append((here, f"must be a table with an action, got {_show(table)}"))
        return None
    before = len(errors)
    for key in table:
        if key not in RULE_KEYS:
            errors.append((f"{here}.{key}", f"unknown key{_suggest(key, RULE_KEYS)}; a rule has "
                                            f"{', '.join(RULE_KEYS)}"))
    action = table.get("action")
    if action is None:
        errors.append((f"{here}.action", "missing: every rule needs action = \"allow\" or \"deny\""))
    elif action not in ("allow", "deny"):
        errors.append((f"{here}.action", f"must be \"allow\" or \"deny\", got {_show(action)}"))
    spec: dict[str, Any] = {"action": action}
    kwargs: dict[str, Any] = {}

    for key in ("src", "dst"):
        if key not in table:
            continue
        items = _list(table[key], f"{here}.{key}", "CIDR", errors)
        if items is None:
            continue
        nets: list[Bounds] = []
        texts: list[str] = []
        for i, item in enumerate(items):
            if not isinstance(item, str):
                errors.append((f"{here}.{key}[{i}]", "must be a CIDR string such as "
                                                     f"\"10.0.0.0/8\", got {_show(item)}"))
                continue
            fast = ipv4_bounds(item.strip())  # most lists: IPv4, and long
            if fast is not None:
                nets.append(fast[0])
                texts.append(fast[1])
                continue
            net, why = _network(item.strip())
            if why is not None:
                errors.append((f"{here}.{key}[{i}]", why))
            else:
                net = normal_network(net)
                nets.append(network_bounds(net))
                texts.append(net.with_prefixlen)
        kwargs[key] = nets
        spec[key] = texts

    if "domain" in table:
        items = _list(table["domain"], f"{here}.domain", "domain", errors)
        if items is not None:
            domains: list[str] = []
            for i, item in enumerate(items):
                forms, why = _domain(item)
                if why is not None:
                    errors.append((f"{here}.domain[{i}]", why))
                else:
                    domains.extend(forms or ())
            kwargs["domains"] = domains
            spec["domain"] = list(dict.fromkeys(domains))

    if "ports" in table:
        items = _list(table["ports"], f"{here}.ports", "port", errors)
        if items is not None:
            ports: list[tuple[int, int]] = []
            for i, item in enumerate(items):
                bounds, why = _port_range(item)
                if why is not None:
                    errors.append((f"{here}.ports[{i}]", why))
                elif bounds is not None:
                    ports.append(bounds)
            kwargs["ports"] = ports
            spec["ports"] = [lo if lo == hi else f"{lo}-{hi}" for lo, hi in ports]

    if "users" in table:
        items = _list(table["users"], f"{here}.users", "user name", errors)
        if items is not None:
            for i, item in enumerate(items):
                if not isinstance(item, str) or not item:
                    errors.append((f"{here}.users[{i}]", f"must be a user name, got {_show(item)}"))
            kwargs["users"] = items
            spec["users"] = items

    if "groups" in table:
        items = _list(table["groups"], f"{here}.groups", "group", errors)
        if items is not None:
            for i, item in enumerate(items):
                if not isinstance(item, str) or item not in groups:
                    defined = ", ".join(sorted(groups)) or "none"
                    errors.append((f"{here}.groups[{i}]",
                                   f"must name a group defined in [groups] (defined: {defined}), "
                                   f"got {_show(item)}"))
            kwargs["groups"] = items
            spec["groups"] = items

    if "commands" in table:
        items = _list(table["commands"], f"{here}.commands", "command", errors)
        if items is not None:
            commands = []
            for i, item in enumerate(items):
                if item not in COMMANDS:
                    errors.append((f"{here}.commands[{i}]", "must be \"connect\", \"bind\", "
                                                            f"\"udp\" or \"http\", got "
                                                            f"{_show(item)}"))
                else:
                    commands.append(COMMANDS[item])
            kwargs["commands"] = commands
            spec["commands"] = [_COMMAND_NAMES[c] for c in commands]

    if "protocols" in table:
        items = _list(table["protocols"], f"{here}.protocols", "protocol", errors)
        if items is not None:
            protocols = []
            for i, item in enumerate(items):
                if not isinstance(item, str) or item not in _PROTOCOLS:
                    errors.append((f"{here}.protocols[{i}]", "must be \"socks5\", \"socks4\" or "
                                                             f"\"http\", got {_show(item)}"))
                else:
                    protocols.append(_PROTOCOLS[item])
            kwargs["protocols"] = protocols
            spec["protocols"] = list(dict.fromkeys(p.value for p in protocols))

    if "userids" in table:
        items = _list(table["userids"], f"{here}.userids", "SOCKS4 USERID", errors)
        if items is not None:
            for i, item in enumerate(items):
                if (not isinstance(item, str) or len(item.encode("utf-8", "replace")) > 255
                        or not (item.isprintable() or item == "")):
                    errors.append((f"{here}.userids[{i}]", "must be a SOCKS4 USERID: text of at "
                                                           "most 255 bytes without control "
                                                           f"characters (\"\": none sent), got "
                                                           f"{_show(item)}"))
            kwargs["userids"] = items
            spec["userids"] = items

    if "upstream" in table:
        name = table["upstream"]
        defined = ", ".join(sorted(upstreams or ())) or "none"
        if action == "deny":
            errors.append((f"{here}.upstream", "only an allow rule can send traffic to an "
                                               "upstream; remove upstream or make it allow"))
        elif not isinstance(name, str) or name not in (upstreams or {}):
            errors.append((f"{here}.upstream", f"must name an [upstreams.NAME] section "
                                               f"(defined: {defined}), got {_show(name)}"))
        else:
            kwargs["upstream"] = name
            spec["upstream"] = name

    if "source" in table:
        if action == "deny":
            errors.append((f"{here}.source", "only an allow rule dials out; remove source or "
                                             "make it allow"))
        else:
            try:
                sources = parse_sources(table["source"], f"{here}.source")
            except ConfigError as exc:
                errors.append((f"{here}.source", str(exc).partition(": ")[2]))
            else:
                kwargs["source"] = sources
                spec["source"] = sources

    if len(errors) > before:
        return None
    return Rule(index, action == "allow", spec=spec, **kwargs)
