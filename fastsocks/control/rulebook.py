"""Access rules, evaluated: ordered allow/deny, first match wins, and the SSRF-safe default.

The compiled form of ``[[rules]]`` (``Rule``, built by ``rules.compile_rule``)
and how a session's attempts are judged against it (``Policy``, bound to one
session as a ``TargetFilter``).  Decisions are values: a ``Denial`` saying
why, the allow ``Rule`` that decided (its upstream and outbound address), or
None (allowed by default, or undecided until the address is known).

Two passes
----------
The first match among the rules decides.  For a name, the answer may depend
on its addresses, so the request is judged twice:

1. On the request, before resolution, with the address unknown.  If the first
   rule that can match is a deny that does not depend on the address (it has
   no ``dst``), the request is denied without a DNS lookup.
2. For each resolved address, with the name *and* the address known: the
   first matching rule decides for that address.  Only allowed addresses are
   dialled; none allowed is a denial.

An IP-literal request is judged once, completely.  So ``allow domain
*.corp`` followed by ``deny dst 10.0.0.0/8`` lets names under corp reach
10/8 while an IP literal in 10/8 (or any other name resolving there) is
denied; put the deny first and nothing reaches 10/8, names included.

Defaults and the SSRF-safe default
----------------------------------
No rule matches: allowed.  But while any listener is on a non-loopback
address, destinations in loopback, link-local, private, shared (CGNAT) and
unspecified ranges (``PROTECTED``, in net/address.py) are denied unless an
*explicit* allow rule matches them: an allow rule with a ``dst`` or
``domain`` matcher.  An allow rule without either (``allow users = [...]``)
does not open them; it is skipped for such a destination and the search goes
on.  Deny rules apply as usual.  The SSRF default covers CONNECT and UDP
targets; BIND dials nothing, so its peer is judged by the rules only.

IPv6 forms that carry an IPv4 address (``net.address.embedded_ipv4``: NAT64,
6to4, Teredo, IPv4-compatible, -mapped and -translated) are judged by the
IPv4 inside as well: ``64:ff9b::7f00:1`` is a loopback destination and
``deny dst 10.0.0.0/8`` denies ``2002:a00:1::``.  Where a form carries two
(Teredo's server and client), a protected one makes it protected, a deny
rule matches when either matches and an allow rule only when both do.  A
``dst`` CIDR that covers the IPv6 address itself matches as usual.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping, Union

from ..constants import Command
from ..net.address import (EMBEDS_BELOW, PROTECTED, Bounds, IpKey, embedded_ipv4, ip_key,
                           protected_inside, protected_kind, ranges)
from ..tables import NAME_UNKNOWN, UNDECIDED, RuleTable, Spans
from .record import Protocol

__all__ = [
    "Rule",
    "Policy",
    "Subject",
    "Denial",
    "Decision",
    "UNKNOWN",
    "COMMANDS",
    "PROTECTED",
    "protected_kind",
    "normal_name",
    "describe_target",
]

# Denials are logged under this name whichever module logs them.
log = logging.getLogger("fastsocks.rules")

COMMANDS: dict[str, int] = {
    "connect": Command.CONNECT,
    "bind": Command.BIND,
    "udp": Command.UDP_ASSOCIATE,
    "http": Command.HTTP,  # an HTTP absolute-form request (an HTTP CONNECT is connect)
}
_COMMAND_NAMES = {value: name for name, value in COMMANDS.items()}

class _Unknown:
    """The value of an input not known yet (the address before resolution)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Any = _Unknown()


def normal_name(host: str) -> str:
    """A requested name as rules compare it: lower case, no trailing dot."""
    return host.lower().rstrip(".")


class Subject:
    """Who is asking: the client's address, the user and the user's groups, the
    protocol, and a SOCKS4 client's USERID (a claim, never the ``user``)."""

    __slots__ = ("client", "user", "groups", "protocol", "userid")

    def __init__(self, client: IpKey | None, user: str | None, groups: frozenset[str],
                 protocol: Protocol = Protocol.SOCKS5, userid: str | None = None) -> None:
        self.client = client
        self.user = user
        self.groups = groups
        self.protocol = protocol
        self.userid = userid


class Denial:
    """Why an attempt was denied: ``rule`` is the index in [[rules]], None for the SSRF default."""

    __slots__ = ("rule", "kind", "inside")

    def __init__(self, rule: int | None, kind: str | None = None,
                 inside: str | None = None) -> None:
        self.rule = rule
        self.kind = kind  # for the SSRF default: "loopback", "private", ...
        self.inside = inside  # the protected IPv4 inside an IPv6 destination

    def __str__(self) -> str:
        if self.rule is not None:
            return f"denied by rules[{self.rule}]"
        inside = f": IPv4 {self.inside} inside the IPv6 address" if self.inside else ""
        return (f"denied by the SSRF-safe default ({self.kind} destination{inside}; "
                "an allow rule with dst or domain can permit it)")

    def __repr__(self) -> str:
        return f"Denial({self.rule!r}, {self.kind!r}, {self.inside!r})"


class Rule:
    """One compiled ``[[rules]]`` entry."""

    __slots__ = ("index", "allow", "src", "dst", "exact", "suffixes", "has_domain", "ports",
                 "users", "groups", "commands", "protocols", "userids", "explicit", "subjective",
                 "spec", "upstream", "source")

    def __init__(
        self,
        index: int,
        allow: bool,
        *,
        src: Iterable[Bounds] | None = None,
        dst: Iterable[Bounds] | None = None,
        domains: Iterable[str] | None = None,
        ports: Iterable[tuple[int, int]] | None = None,
        users: Iterable[str] | None = None,
        groups: Iterable[str] | None = None,
        commands: Iterable[int] | None = None,
        protocols: Iterable[Protocol] | None = None,
        userids: Iterable[str] | None = None,
        spec: Mapping[str, Any] | None = None,
        upstream: str | None = None,
        source: Iterable[str] | None = None,
    ) -> None:
        # What an allow rule does besides allowing: the upstream proxy to go
        # through ([upstreams.NAME]) and the outbound address(es) to dial from.
        self.upstream = upstream
        self.source = None if source is None else tuple(source)
        self.index = index
        self.allow = allow
        self.src = None if src is None else ranges(src)
        self.dst = None if dst is None else ranges(dst)
        self.has_domain = domains is not None
        exact: set[str] = set()
        suffixes: set[str] = set()
        for domain in domains or ():
            if domain.startswith("*."):
                suffixes.add(domain[2:])
            else:
                exact.add(domain)
        self.exact = frozenset(exact)
        self.suffixes = frozenset(suffixes)
        self.ports = None if ports is None else Spans(ports)
        self.users = None if users is None else frozenset(users)
        self.groups = None if groups is None else frozenset(groups)
        self.commands = None if commands is None else frozenset(commands)
        self.protocols = None if protocols is None else frozenset(protocols)
        self.userids = None if userids is None else frozenset(userids)
        # Only a rule that names the destination may open a protected one.
        self.explicit = self.dst is not None or self.has_domain
        # Conditions on who asks (besides the client's address).
        self.subjective = (users, groups, protocols, userids) != (None,) * 4
        self.spec = dict(spec or {"action": "allow" if allow else "deny"})

    def __repr__(self) -> str:
        return f"<Rule rules[{self.index}] {self.spec!r}>"

    def domain_matches(self, name: str) -> bool:
        if name in self.exact:
            return True
        suffixes = self.suffixes
        if suffixes:
            i = name.find(".")
            while i >= 0:
                if name[i + 1:] in suffixes:
                    return True
                i = name.find(".", i + 1)
        return False

    def match(self, command: int, subject: Subject, name: Any, ip: Any, port: Any,
              inner: tuple[int, ...] = ()) -> bool | None:
        """True, False, or None when the answer depends on an input still UNKNOWN.

        ``name`` is the normalised requested name, None for an IP-literal
        request, or UNKNOWN; ``ip`` an ``ip_key`` or UNKNOWN; ``port`` an int
        or UNKNOWN; ``inner`` the IPv4 addresses an IPv6 ``ip`` carries
        (``embedded_ipv4``).
        """
        if self.commands is not None and command not in self.commands:
            return False
        if self.src is not None and (subject.client is None or not self.src.contains(subject.client)):
            return False
        if self.subjective and not self.admits(subject):
            return False
        undecided = False
        if self.ports is not None:
            if port is UNKNOWN:
                undecided = True
            elif not self.ports.has(port):
                return False
        if self.has_domain:
            if name is UNKNOWN:
                undecided = True
            elif name is None or not self.domain_matches(name):
                return False
        if self.dst is not None:
            if ip is UNKNOWN:
                undecided = True
            elif not self.dst.contains(ip):
                if not inner or not self._inner_match(self.dst.v4, inner):
                    return False
        return None if undecided else True

    def admits(self, subject: Subject) -> bool:
        """Whether ``subject`` meets this rule's conditions on users, groups, protocol, USERID."""
        return ((self.users is None or subject.user in self.users)
                and (self.groups is None or not self.groups.isdisjoint(subject.groups))
                and (self.protocols is None or subject.protocol in self.protocols)
                and (self.userids is None or subject.userid in self.userids))

    def _inner_match(self, v4: Spans, inner: tuple[int, ...]) -> bool:
        """``dst`` against the IPv4 inside an IPv6 address: a deny matches when
        any of them is in range, an allow only when all are (Teredo carries two)."""
        for n in inner:
            if not v4.has(n):
                if self.allow:
                    return False  # one outside: the allow does not cover it
                continue
            if not self.allow:
                return True  # one inside: the deny matches
        return self.allow


class Policy:
    """The compiled rules, the groups, and whether the SSRF default is on.

    A server without rules whose listeners are all loopback has no Policy
    at all (``build_policy`` returns None), so sessions pay one attribute
    test.
    """

    __slots__ = ("rules", "ssrf", "user_groups", "table", "everyone", "admitted", "domain_rules",
                 "named", "unknown_name")

    def __init__(self, rules: Iterable[Rule], groups: Mapping[str, Iterable[str]] | None = None,
                 ssrf: bool = False) -> None:
        self.rules = tuple(rules)
        self.ssrf = ssrf
        user_groups: dict[str, set[str]] = {}
        for group, members in (groups or {}).items():
            for member in members:
                user_groups.setdefault(member, set()).add(group)
        self.user_groups = {user: frozenset(g) for user, g in user_groups.items()}
        # A judgement is one C loop (tables.RuleTable).  The asker's part of
        # each rule comes as one byte per rule, the same for everyone when no
        # rule has such conditions, else cached per asker; the name's part
        # (domain) likewise, cached per name (NAME_UNKNOWN bytes before the
        # name is known).  Both caches are bounded.
        self.table = RuleTable(table_entries(self.rules))
        self.everyone = None if any(r.subjective for r in self.rules) else b"\1" * len(self.rules)
        self.admitted: dict[tuple[Any, ...], bytes] = {}
        self.domain_rules = [i for i, r in enumerate(self.rules) if r.has_domain]
        self.named: dict[str, bytes] = {}
        self.unknown_name = bytes([NAME_UNKNOWN]) * len(self.rules)

    def passes(self, subject: Subject) -> bytes:
        """Per rule, b"\\1" where ``subject`` meets its conditions on who asks."""
        passes = self.everyone
        if passes is None:
            key = (subject.user, subject.groups, subject.protocol, subject.userid)
            passes = self.admitted.get(key)
            if passes is None:
                if len(self.admitted) >= 4096:
                    self.admitted.clear()
                passes = self.admitted[key] = bytes(r.admits(subject) for r in self.rules)
        return passes

    def _names(self, name: Any) -> bytes | None:
        """Per rule, b"\\1" where the (normalised) ``name`` matches its ``domain``;
        None for no name (or no rule with a domain), all NAME_UNKNOWN for UNKNOWN."""
        if name is None or not self.domain_rules:
            return None
        if name is UNKNOWN:
            return self.unknown_name
        named = self.named.get(name)
        if named is None:
            mask = bytearray(len(self.rules))
            for i in self.domain_rules:
                mask[i] = self.rules[i].domain_matches(name)
            if len(self.named) >= 4096:
                self.named.clear()
            named = self.named[name] = bytes(mask)
        return named

    def subject(self, client_host: str | None, user: str | None,
                protocol: Protocol = Protocol.SOCKS5, userid: str | None = None) -> Subject:
        client = ip_key(client_host) if client_host else None
        groups = self.user_groups.get(user, frozenset()) if user is not None else frozenset()
        return Subject(client, user, groups, protocol, userid)

    def check(self, command: int, subject: Subject, name: Any, ip: Any, port: Any) -> Denial | None:
        """The first match decides; None: allowed (or not denied before the address is known)."""
        decision = self.decide(command, subject, name, ip, port)
        return decision if type(decision) is Denial else None

    def decide(self, command: int, subject: Subject, name: Any, ip: Any, port: Any,
               by_rule: bool = False) -> Decision:
        """Like ``check``, but an allow by a rule returns that rule (its upstream, source).

        One C loop (``tables.RuleTable``) decides; ``by_rule``: ``Rule.match``
        rule by rule in Python instead, the reference the C loop is held to in
        the tests and the benchmark.
        """
        protected = None
        inner: tuple[int, ...] = ()
        if ip is not UNKNOWN:
            # NAT64, 6to4, ...: the IPv4 inside is judged too (two comparisons
            # for the rest: from 2003:: up, no form carries one).
            if ip[0] == 6 and ip[1] < EMBEDS_BELOW:
                inner = embedded_ipv4(ip[1])
            if self.ssrf and command != Command.BIND:
                protected = protected_kind(ip, inner)
        if not by_rule:
            i = self.table.first(command, subject.client, self.passes(subject), self._names(name),
                                 None if ip is UNKNOWN else ip, -1 if port is UNKNOWN else port,
                                 protected is not None, inner)
            if i >= 0:
                rule = self.rules[i]
                return rule if rule.allow else Denial(rule.index)
            if i == UNDECIDED:
                return None  # depends on what is not known yet: judged again then
        else:
            for rule in self.rules:
                matched = rule.match(command, subject, name, ip, port, inner)
                if matched is False:
                    continue
                if matched is None:
                    return None  # depends on the address: judged again once it is known
                if rule.allow:
                    if protected is not None and not rule.explicit:
                        continue  # only an allow that names the destination opens it
                    return rule
                return Denial(rule.index)
        if protected is not None:
            return Denial(None, protected, protected_inside(inner) if inner else None)
        return None

    def check_request(self, command: int, subject: Subject, host: str,
                      port: Any) -> Decision:
        """Pass 1, on the request as sent: complete for an IP literal, early for a name.

        A Denial, the allow Rule that decided, or None (allowed by default, or
        undecided until the address is known).
        """
        key = ip_key(host)
        if key is not None:
            return self.decide(command, subject, None, key, port)
        return self.decide(command, subject, normal_name(host), UNKNOWN, port)

    def check_address(self, command: int, subject: Subject, host: str, address: str,
                      port: Any) -> Decision:
        """Pass 2: ``host`` as requested, now dialling ``address`` (an IP literal)."""
        key = ip_key(address)
        if key is None:  # not an IP: nothing a dst rule or the SSRF default can judge
            return Denial(None, "unparsable")
        name = None if ip_key(host) is not None else normal_name(host)
        return self.decide(command, subject, name, key, port)


def table_entries(rules: Iterable[Rule]) -> list[tuple[Any, ...]]:
    """The rules as ``tables.RuleTable`` entries."""
    return [(-1 if r.commands is None else sum(1 << c for c in r.commands), r.src, r.dst, r.ports,
             r.has_domain, r.subjective, r.allow, r.explicit) for r in rules]


#: What a judgement returns: why it was denied, the allow rule that decided, or
#: None (allowed by default, or undecided until the address is known).
Decision = Union[Denial, Rule, None]


def describe_target(command: int, host: str, port: int, address: str | None = None) -> str:
    """``CONNECT example.com port 443 (10.0.0.5)`` for log lines."""
    name = Command(command).name if command in _COMMAND_NAMES else str(command)
    text = f"{name} {host} port {port}"
    if address is not None and address != host:
        text += f" ({address})"
    return text
