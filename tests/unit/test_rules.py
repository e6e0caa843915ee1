"""Access rules: matching (table-driven), the two passes, the SSRF-safe default, end to end.

Loopback only; no real name is ever resolved: "localhost" and IP literals,
and names that must not be looked up carry a 64-character label, so that a
lookup (a bug) would fail locally instead of asking a DNS server.
"""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from procs import UdpEcho

from fastsocks.config import Settings
from fastsocks.constants import Command
from fastsocks.control.record import Protocol
from fastsocks.control.rulebook import UNKNOWN, Denial, Policy, protected_kind
from fastsocks.control.targets import TargetFilter
from fastsocks.control.rules import build_policy, compile_rule
from fastsocks.net.address import embedded_ipv4, ip_key

NOT_ALLOWED = 0x02
LONG_LABEL = "l" * 64  # longer than DNS allows (63): resolving it fails without a query

CMD = {"connect": Command.CONNECT, "bind": Command.BIND, "udp": Command.UDP_ASSOCIATE,
       "http": Command.HTTP}


def make_policy(*rules: dict[str, Any], groups: dict[str, list[str]] | None = None,
                ssrf: bool = False) -> Policy:
    errors: list[tuple[str, str]] = []
    compiled = [compile_rule(i, rule, groups or {}, errors) for i, rule in enumerate(rules)]
    assert not errors, errors
    return Policy([r for r in compiled if r is not None], groups or {}, ssrf)


def decide(policy: Policy, host: str, port: int = 443, *, command: str = "connect",
           client: str = "192.0.2.10", user: str | None = None,
           resolved: list[str] | None = None, protocol: str = "socks5",
           userid: str | None = None) -> Any:
    """The whole decision for one attempt, as the session makes it.

    Returns "allow", or the denial as ("rule", N) / ("ssrf", kind); for a name,
    ``resolved`` are the addresses it resolves to (pass 2 judges each; the
    result is "allow" when any is allowed, with the list of those).
    """
    targets = TargetFilter(policy, policy.subject(client, user, Protocol(protocol), userid),
                           CMD[command])
    first = targets.early(host, port)
    if isinstance(first, Denial):
        return _verdict(first)
    if ip_key(host) is not None:
        return "allow"
    assert resolved is not None, f"{host!r} is a name: give its addresses"
    entries = [(socket.AF_INET6 if ":" in a else socket.AF_INET, (a, port)) for a in resolved]
    allowed = targets.allowed(host, port, entries).addresses
    if allowed:
        return "allow" if len(allowed) == len(entries) else ("allow", [e[1][0] for e in allowed])
    return _verdict(targets.allowed(host, port, entries).denial)


def _verdict(denial: Any) -> Any:
    return ("rule", denial.rule) if denial.rule is not None else ("ssrf", denial.kind)


# -- addresses ----------------------------------------------------------------------------


@pytest.mark.parametrize("text, key", [
    ("127.0.0.1", (4, 0x7F000001)),
    ("::ffff:127.0.0.1", (4, 0x7F000001)),
    ("::FFFF:10.1.2.3", (4, 0x0A010203)),
    ("::1", (6, 1)),
    ("fe80::1%eth0", (6, 0xFE80 << 112 | 1)),
    ("0.0.0.0", (4, 0)),
    ("127.1", None),  # not a strict literal: a name for the resolver (pass 2 judges it)
    ("2130706433", None),
    ("localhost", None),
    ("1.2.3.4\0", None),
    ("é", None),
])
def test_ip_key(text, key):
    assert ip_key(text) == key


@pytest.mark.parametrize("address, kind", [
    ("127.0.0.1", "loopback"), ("127.255.255.254", "loopback"), ("::1", "loopback"),
    ("::ffff:127.0.0.1", "loopback"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"), ("febf::1", "link-local"),
    ("10.0.0.1", "private"), ("172.16.0.1", "private"), ("172.31.255.255", "private"),
    ("192.168.1.1", "private"), ("fc00::1", "private"), ("fd12:3456::1", "private"),
    ("::ffff:192.168.0.1", "private"), ("::ffff:169.254.169.254", "link-local"),
    ("100.64.0.1", "shared address space"), ("100.127.255.255", "shared address space"),
    ("0.0.0.0", "unspecified"), ("0.1.2.3", "unspecified"), ("::", "unspecified"),
    ("8.8.8.8", None), ("172.32.0.1", None), ("172.15.255.255", None), ("100.128.0.1", None),
    ("192.169.0.1", None), ("2001:db8::1", None), ("fec0::1", "private (site-local)"),
    ("::ffff:8.8.8.8", None), ("11.0.0.1", None),
])
def test_protected_ranges(address, kind):
    key = ip_key(address)
    assert key is not None
    assert protected_kind(key) == kind


# IPv6 forms that carry an IPv4 address (issue 17): the address, what it carries.
TEREDO = "2001:0:4136:e378:8000:63bf:3fff:fdd2"  # RFC 4380 §4's example
EMBEDDED = [
    ("64:ff9b::7f00:1", ["127.0.0.1"]),  # NAT64 well-known prefix, RFC 6052
    ("64:ff9b::a9fe:a9fe", ["169.254.169.254"]),
    ("64:ff9b:1::a00:1", ["10.0.0.1"]),  # NAT64 local-use prefix, RFC 8215
    ("64:ff9b:1:abcd::c0a8:1", ["192.168.0.1"]),
    ("2002:7f00:1::", ["127.0.0.1"]),  # 6to4, RFC 3056
    ("2002:a00:1:ffff::5", ["10.0.0.1"]),
    ("::127.0.0.1", ["127.0.0.1"]),  # IPv4-compatible
    ("::ffff:0:127.0.0.1", ["127.0.0.1"]),  # IPv4-translated (SIIT)
    ("::ffff:10.1.2.3", ["10.1.2.3"]),  # IPv4-mapped (ip_key makes it IPv4 first)
    (TEREDO, ["65.54.227.120", "192.0.2.45"]),  # Teredo: server, client
    # Not forms that carry one:
    ("::1", []), ("::", []), ("2001:db8::1", []), ("2001:1::7f00:1", []), ("2003::7f00:1", []),
    ("64:ff9b:2::7f00:1", []), ("64:ff9a::7f00:1", []), ("::1:0:7f00:1", []),
    ("fe80::7f00:1", []), ("2a00:1450::7f00:1", []), ("ffff:ffff::7f00:1", []),
]


@pytest.mark.parametrize("address, inside", EMBEDDED, ids=[a for a, _ in EMBEDDED])
def test_embedded_ipv4(address, inside):
    n = int.from_bytes(socket.inet_pton(socket.AF_INET6, address), "big")
    assert [socket.inet_ntoa(v4.to_bytes(4, "big")) for v4 in embedded_ipv4(n)] == inside


@pytest.mark.parametrize("address, kind", [
    ("64:ff9b::7f00:1", "loopback"), ("64:ff9b::a9fe:a9fe", "link-local"),
    ("64:ff9b:1::a00:1", "private"), ("2002:7f00:1::", "loopback"),
    ("2002:6440:1::", "shared address space"), ("::127.0.0.1", "loopback"),
    ("::ffff:0:127.0.0.1", "loopback"), ("::ffff:0:192.168.9.9", "private"),
    ("::0.0.0.2", "unspecified"),
    # Teredo: either address protected makes it protected
    ("2001:0:7f00:1:8000:63bf:3fff:fdd2", "loopback"),  # the server 127.0.0.1
    ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "private"),  # the client 10.0.0.1
    (TEREDO, None), ("64:ff9b::808:808", None), ("2002:808:808::", None), ("::8.8.8.8", None),
    ("64:ff9b:2::7f00:1", None),
])
def test_protected_embedded(address, kind):
    key = ip_key(address)
    assert key is not None and key[0] == 6
    assert protected_kind(key) == kind


# -- matchers, one at a time ---------------------------------------------------------------


@pytest.mark.parametrize("rule, attempt, matches", [
    # src: the client's address
    ({"src": ["192.0.2.0/24"]}, {"client": "192.0.2.99"}, True),
    ({"src": ["192.0.2.0/24"]}, {"client": "198.51.100.1"}, False),
    ({"src": ["2001:db8::/32"]}, {"client": "2001:db8::7"}, True),
    ({"src": ["2001:db8::/32"]}, {"client": "192.0.2.1"}, False),
    ({"src": ["192.0.2.1"]}, {"client": "::ffff:192.0.2.1"}, True),  # a mapped client
    ({"src": ["::ffff:192.0.2.0/120"]}, {"client": "192.0.2.5"}, True),  # a mapped rule
    # dst: the address dialled (an IP literal here)
    ({"dst": ["203.0.113.0/24"]}, {"host": "203.0.113.9"}, True),
    ({"dst": ["203.0.113.0/24"]}, {"host": "203.0.114.9"}, False),
    ({"dst": ["203.0.113.0/24"]}, {"host": "::ffff:203.0.113.9"}, True),
    ({"dst": ["::ffff:203.0.113.0/120"]}, {"host": "203.0.113.9"}, True),
    ({"dst": ["2001:db8:1::/48"]}, {"host": "2001:db8:1:2::3"}, True),
    ({"dst": ["2001:db8:1::/48"]}, {"host": "2001:db8:2::3"}, False),
    ({"dst": ["0.0.0.0/0"]}, {"host": "2001:db8::1"}, False),  # families do not mix
    ({"dst": ["::/0"]}, {"host": "2001:db8::1"}, True),
    ({"dst": ["198.51.100.7"]}, {"host": "198.51.100.7"}, True),
    ({"dst": ["198.51.100.7"]}, {"host": "198.51.100.8"}, False),
    # domain: exact, wildcard, case, trailing dot; never an IP request
    ({"domain": ["example.com"]}, {"host": "example.com", "resolved": ["203.0.113.1"]}, True),
    ({"domain": ["example.com"]}, {"host": "EXAMPLE.com.", "resolved": ["203.0.113.1"]}, True),
    ({"domain": ["Example.COM."]}, {"host": "example.com", "resolved": ["203.0.113.1"]}, True),
    ({"domain": ["example.com"]}, {"host": "www.example.com", "resolved": ["203.0.113.1"]}, False),
    ({"domain": ["*.example.com"]}, {"host": "www.example.com", "resolved": ["203.0.113.1"]}, True),
    ({"domain": ["*.example.com"]}, {"host": "a.b.EXAMPLE.com", "resolved": ["203.0.113.1"]}, True),
    ({"domain": ["*.example.com"]}, {"host": "example.com", "resolved": ["203.0.113.1"]}, False),
    ({"domain": ["*.example.com"]}, {"host": "badexample.com", "resolved": ["203.0.113.1"]}, False),
    ({"domain": ["*.example.com"]}, {"host": "example.com.evil", "resolved": ["203.0.113.1"]}, False),
    ({"domain": ["example.com"]}, {"host": "203.0.113.1"}, False),
    ({"domain": ["bücher.example"]}, {"host": "xn--bcher-kva.example", "resolved": ["203.0.113.1"]}, True),
    # ports
    ({"ports": [443]}, {"port": 443}, True),
    ({"ports": [443]}, {"port": 444}, False),
    ({"ports": ["8000-8999"]}, {"port": 8000}, True),
    ({"ports": ["8000-8999"]}, {"port": 8999}, True),
    ({"ports": ["8000-8999"]}, {"port": 9000}, False),
    ({"ports": [22, "80-81"]}, {"port": 81}, True),
    ({"ports": "25"}, {"port": 25}, True),
    # users and groups: only with authentication
    ({"users": ["alice"]}, {"user": "alice"}, True),
    ({"users": ["alice"]}, {"user": "bob"}, False),
    ({"users": ["alice"]}, {"user": None}, False),
    ({"groups": ["admins"]}, {"user": "alice"}, True),
    ({"groups": ["admins"]}, {"user": "carol"}, False),
    ({"groups": ["admins", "ops"]}, {"user": "dave"}, True),
    ({"groups": ["admins"]}, {"user": None}, False),
    # commands
    ({"commands": ["connect"]}, {}, True),
    ({"commands": ["bind"]}, {}, False),
    ({"commands": ["bind", "connect"]}, {}, True),
    ({"commands": ["udp"]}, {"command": "udp"}, True),
    ({"commands": ["http"]}, {"command": "http", "protocol": "http"}, True),
    ({"commands": ["http"]}, {"protocol": "http"}, False),  # an HTTP CONNECT is connect
    ({"commands": ["connect"]}, {"command": "http", "protocol": "http"}, False),
    # protocols: what the client speaks
    ({"protocols": ["socks4"]}, {"protocol": "socks4"}, True),
    ({"protocols": ["socks4"]}, {}, False),
    ({"protocols": ["socks5", "http"]}, {"protocol": "http"}, True),
    ({"protocols": "socks5"}, {}, True),
    # userids: a SOCKS4 client's claim, never a user
    ({"userids": ["alice"]}, {"protocol": "socks4", "userid": "alice"}, True),
    ({"userids": ["alice"]}, {"protocol": "socks4", "userid": "bob"}, False),
    ({"userids": [""]}, {"protocol": "socks4", "userid": ""}, True),
    ({"userids": ["alice"]}, {"user": "alice"}, False),
    ({"users": ["alice"]}, {"protocol": "socks4", "userid": "alice"}, False),
    # several matchers: all must match
    ({"src": ["192.0.2.0/24"], "ports": [443], "users": ["alice"]}, {"user": "alice"}, True),
    ({"src": ["192.0.2.0/24"], "ports": [443], "users": ["alice"]}, {"user": "alice", "port": 80}, False),
    ({}, {}, True),  # no matcher: everything
])
def test_matcher(rule, attempt, matches):
    groups = {"admins": ["alice", "bob"], "ops": ["dave"]}
    policy = make_policy({"action": "deny", **rule}, groups=groups)
    args = {"host": "203.0.113.50", "port": 443, **attempt}
    host = args.pop("host")
    port = args.pop("port")
    assert decide(policy, host, port, **args) == (("rule", 0) if matches else "allow")


# -- order, passes, names -----------------------------------------------------------------


def test_first_match_wins():
    policy = make_policy(
        {"action": "allow", "dst": ["203.0.113.7"]},
        {"action": "deny", "dst": ["203.0.113.0/24"]},
        {"action": "allow", "dst": ["203.0.113.8"]},  # never reached for .8
    )
    assert decide(policy, "203.0.113.7") == "allow"
    assert decide(policy, "203.0.113.8") == ("rule", 1)
    assert decide(policy, "198.51.100.1") == "allow"  # no match: allowed


def test_domain_allow_then_dst_deny():
    """allow *.corp, deny 10/8: names under corp may reach 10/8, nothing else may."""
    policy = make_policy({"action": "allow", "domain": ["*.corp"]},
                         {"action": "deny", "dst": ["10.0.0.0/8"]})
    assert decide(policy, "git.corp", resolved=["10.1.2.3"]) == "allow"
    assert decide(policy, "10.1.2.3") == ("rule", 1)
    assert decide(policy, "rebind.example", resolved=["10.1.2.3"]) == ("rule", 1)
    assert decide(policy, "www.example", resolved=["203.0.113.1"]) == "allow"


def test_dst_deny_before_domain_allow():
    policy = make_policy({"action": "deny", "dst": ["10.0.0.0/8"]},
                         {"action": "allow", "domain": ["*.corp"]})
    assert decide(policy, "git.corp", resolved=["10.1.2.3"]) == ("rule", 0)
    assert decide(policy, "git.corp", resolved=["203.0.113.1"]) == "allow"


def test_each_resolved_address_is_judged():
    policy = make_policy({"action": "deny", "dst": ["127.0.0.0/8", "::1/128"]})
    assert decide(policy, "localhost", resolved=["::1", "127.0.0.1"]) == ("rule", 0)
    assert decide(policy, "mixed.example", resolved=["127.0.0.1", "203.0.113.5"]) == \
        ("allow", ["203.0.113.5"])
    assert decide(policy, "mapped.example", resolved=["::ffff:127.0.0.1"]) == ("rule", 0)


def test_domain_and_dst_in_one_rule():
    policy = make_policy({"action": "deny", "domain": ["*.example"], "dst": ["10.0.0.0/8"]})
    assert decide(policy, "a.example", resolved=["10.0.0.1"]) == ("rule", 0)
    assert decide(policy, "a.example", resolved=["203.0.113.1"]) == "allow"
    assert decide(policy, "10.0.0.1") == "allow"  # not a name request


def test_pass_one_denies_a_name_before_resolution():
    """A deny that does not depend on the address refuses a name without a lookup."""
    policy = make_policy({"action": "deny", "domain": ["*.blocked.test"]},
                         {"action": "deny", "dst": ["203.0.113.0/24"]})
    subject = policy.subject("192.0.2.1", None)
    assert policy.check_request(Command.CONNECT, subject, "a.blocked.test", 80).rule == 0
    # A dst rule needs the address: pass 1 leaves it to pass 2.
    assert policy.check_request(Command.CONNECT, subject, "other.test", 80) is None
    assert policy.check_address(Command.CONNECT, subject, "other.test", "203.0.113.1", 80).rule == 1


def test_pass_one_stops_at_a_rule_that_needs_the_address():
    policy = make_policy({"action": "allow", "dst": ["203.0.113.0/24"]},
                         {"action": "deny", "domain": ["*.example"]})
    subject = policy.subject("192.0.2.1", None)
    assert policy.check_request(Command.CONNECT, subject, "a.example", 80) is None
    assert decide(policy, "a.example", resolved=["203.0.113.1"]) == "allow"
    assert decide(policy, "a.example", resolved=["198.51.100.1"]) == ("rule", 1)


def test_udp_association_request_and_datagrams():
    """UDP ASSOCIATE names no destination: only rules without dst/domain/ports decide it."""
    policy = make_policy({"action": "deny", "users": ["mallory"], "commands": ["udp"]},
                         {"action": "deny", "dst": ["203.0.113.0/24"], "commands": ["udp"]})
    mallory = policy.subject("192.0.2.1", "mallory")
    alice = policy.subject("192.0.2.1", "alice")
    udp = Command.UDP_ASSOCIATE
    assert policy.check(udp, mallory, UNKNOWN, UNKNOWN, UNKNOWN).rule == 0
    assert policy.check(udp, alice, UNKNOWN, UNKNOWN, UNKNOWN) is None
    assert decide(policy, "203.0.113.4", 53, command="udp", user="alice") == ("rule", 1)
    assert decide(policy, "198.51.100.4", 53, command="udp", user="alice") == "allow"
    assert decide(policy, "203.0.113.4", 53, command="connect", user="alice") == "allow"


def test_bind_peer_and_no_ssrf_default():
    """For BIND, dst is the peer; the SSRF default does not apply (nothing is dialled)."""
    policy = make_policy({"action": "deny", "dst": ["198.51.100.0/24"], "commands": ["bind"]},
                         ssrf=True)
    subject = policy.subject("192.0.2.1", None)
    bind = Command.BIND
    assert policy.check(bind, subject, None, UNKNOWN, 0) is None  # DST.ADDR 0.0.0.0: any peer
    assert policy.check_address(bind, subject, "0.0.0.0", "198.51.100.3", 0).rule == 0
    assert policy.check_address(bind, subject, "0.0.0.0", "127.0.0.1", 0) is None
    assert decide(policy, "198.51.100.3", 21, command="bind") == ("rule", 0)


# -- the SSRF-safe default -------------------------------------------------------------------


PROTECTED_TARGETS = ["127.0.0.1", "::1", "::ffff:127.0.0.1", "169.254.169.254",
                     "::ffff:169.254.169.254", "fe80::1", "10.0.0.1", "172.16.5.4",
                     "192.168.0.1", "fc00::1", "fd00::1", "100.64.0.1", "0.0.0.0", "::",
                     # IPv4 inside IPv6 (issue 17): NAT64, 6to4, compatible, SIIT, Teredo
                     "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b:1::a00:1",
                     "2002:7f00:1::", "::127.0.0.1", "::ffff:0:127.0.0.1",
                     "2001:0:7f00:1:8000:63bf:3fff:fdd2"]


@pytest.mark.parametrize("target", PROTECTED_TARGETS)
def test_ssrf_default_on(target):
    policy = make_policy(ssrf=True)
    verdict = decide(policy, target)
    assert verdict[0] == "ssrf", verdict
    # UDP targets too
    assert decide(policy, target, 53, command="udp")[0] == "ssrf"


@pytest.mark.parametrize("target", PROTECTED_TARGETS)
def test_ssrf_default_off_on_loopback_listeners(target):
    assert decide(make_policy(ssrf=False), target) == "allow"


def test_ssrf_default_sees_the_ipv4_inside():
    """Issue 17: an IPv6 form that carries a protected IPv4 address is that address."""
    policy = make_policy(ssrf=True)
    subject = policy.subject("192.0.2.1", None)
    denial = policy.check_request(Command.CONNECT, subject, "64:ff9b::7f00:1", 80)
    assert isinstance(denial, Denial) and denial.kind == "loopback"
    assert str(denial) == ("denied by the SSRF-safe default (loopback destination: IPv4 "
                           "127.0.0.1 inside the IPv6 address; an allow rule with dst or "
                           "domain can permit it)")
    # a name resolving to such an address, for CONNECT and for a UDP datagram's target
    for command in ("connect", "udp"):
        assert decide(policy, "nat64.example", command=command,
                      resolved=["64:ff9b::7f00:1"]) == ("ssrf", "loopback")
        assert decide(policy, "nat64.example", command=command,
                      resolved=["64:ff9b::a9fe:a9fe", "64:ff9b::808:808"]) == \
            ("allow", ["64:ff9b::808:808"])
    # outside the prefixes nothing changes
    for target in ("64:ff9b::808:808", "2002:808:808::", TEREDO, "2001:db8::7f00:1",
                   "64:ff9b:2::7f00:1"):
        assert decide(policy, target) == "allow", target


def test_dst_rules_see_the_ipv4_inside():
    """``deny dst 10.0.0.0/8`` also denies 64:ff9b::a00:1 and the other forms, for
    CONNECT, UDP and BIND; an IPv6 CIDR still matches the IPv6 address itself."""
    policy = make_policy({"action": "deny", "dst": ["10.0.0.0/8"]},
                         {"action": "deny", "dst": ["2002:c000:200::/40"]})
    for target in ("64:ff9b::a00:1", "64:ff9b:1::a00:1", "2002:a00:1::", "::10.0.0.1",
                   "::ffff:0:10.0.0.1", "2001:0:4136:e378:8000:63bf:f5ff:fffe"):
        for command in ("connect", "udp", "bind"):
            assert decide(policy, target, command=command) == ("rule", 0), (target, command)
        assert decide(policy, "x.example", resolved=[target]) == ("rule", 0)
    assert decide(policy, "2002:c000:201::") == ("rule", 1)  # the IPv6 CIDR, as before
    assert decide(policy, "64:ff9b::b00:1") == "allow"
    # BIND's peer (pass 2 on the address that connected in)
    bind = policy.check_address(Command.BIND, policy.subject("192.0.2.1", None), "0.0.0.0",
                                "64:ff9b::a00:7", 0)
    assert isinstance(bind, Denial) and bind.rule == 0


def test_explicit_allow_and_teredo_pairs():
    """An allow rule opens an embedded form when the IPv4 inside (both, for Teredo)
    is in its dst, or when its dst covers the IPv6 address itself."""
    teredo_lo = "2001:0:7f00:1:8000:63bf:3fff:fdd2"  # server 127.0.0.1, client 192.0.2.45
    policy = make_policy({"action": "allow", "dst": ["127.0.0.0/8"]},
                         {"action": "allow", "dst": ["64:ff9b:1::/48"]}, ssrf=True)
    assert decide(policy, "64:ff9b::7f00:1") == "allow"
    assert decide(policy, "2002:7f00:1::") == "allow"
    assert decide(policy, teredo_lo) == ("ssrf", "loopback")  # 192.0.2.45 is not in 127/8
    assert decide(policy, "64:ff9b:1::a00:1") == "allow"  # by the IPv6 CIDR
    assert decide(policy, "64:ff9b::a00:1") == ("ssrf", "private")
    both = make_policy({"action": "allow", "dst": ["127.0.0.0/8", "192.0.2.0/24"]}, ssrf=True)
    assert decide(both, teredo_lo) == "allow"
    # a deny matches when either is in range
    deny = make_policy({"action": "deny", "dst": ["192.0.2.45/32"]})
    assert decide(deny, teredo_lo) == ("rule", 0)


def test_ssrf_default_for_names_resolving_inside():
    policy = make_policy(ssrf=True)
    assert decide(policy, "localhost", resolved=["127.0.0.1", "::1"]) == ("ssrf", "loopback")
    assert decide(policy, "127.1", resolved=["127.0.0.1"]) == ("ssrf", "loopback")
    assert decide(policy, "metadata.example", resolved=["169.254.169.254"]) == \
        ("ssrf", "link-local")
    assert decide(policy, "www.example", resolved=["203.0.113.1"]) == "allow"
    assert decide(policy, "8.8.8.8") == "allow"


def test_ssrf_default_lifted_only_by_explicit_allow():
    policy = make_policy(
        {"action": "allow", "users": ["alice"]},  # not explicit: skipped for 127/8
        {"action": "allow", "dst": ["127.0.0.1/32"], "ports": [8080]},
        {"action": "allow", "domain": ["intranet.example"]},
        ssrf=True,
    )
    assert decide(policy, "127.0.0.1", 8080) == "allow"
    assert decide(policy, "127.0.0.1", 8081, user="alice") == ("ssrf", "loopback")
    assert decide(policy, "::ffff:127.0.0.1", 8080) == "allow"
    assert decide(policy, "intranet.example", resolved=["10.9.8.7"]) == "allow"
    assert decide(policy, "other.example", resolved=["10.9.8.7"]) == ("ssrf", "private")
    assert decide(policy, "203.0.113.1", user="alice") == "allow"


def test_ssrf_default_deny_rules_still_apply():
    policy = make_policy({"action": "deny", "users": ["bob"]},
                         {"action": "allow", "dst": ["10.0.0.0/8"]}, ssrf=True)
    assert decide(policy, "10.0.0.1", user="bob") == ("rule", 0)
    assert decide(policy, "10.0.0.1", user="alice") == "allow"


def test_ssrf_off_switch():
    """The documented way to turn the default off: allow everything explicitly, last."""
    policy = make_policy({"action": "deny", "dst": ["169.254.169.254"]},
                         {"action": "allow", "dst": ["0.0.0.0/0", "::/0"]}, ssrf=True)
    assert decide(policy, "127.0.0.1") == "allow"
    assert decide(policy, "::1") == "allow"
    assert decide(policy, "169.254.169.254") == ("rule", 0)


@pytest.mark.parametrize("listen, policy", [
    ([("127.0.0.1", 1080)], None),
    ([("127.0.0.2", 0), ("::1", 0)], None),
    ([("localhost", 0)], None),
    ([("0.0.0.0", 0)], "ssrf"),
    ([("127.0.0.1", 0), ("::", 0)], "ssrf"),
    ([("192.0.2.1", 0)], "ssrf"),
])
def test_build_policy(listen, policy):
    built = build_policy(Settings(listen=listen, allow_open=True))
    if policy is None:
        assert built is None  # the hot path: one attribute test, nothing else
    else:
        assert built is not None and built.ssrf and not built.rules


def test_build_policy_with_rules_on_loopback():
    errors: list[tuple[str, str]] = []
    rule = compile_rule(0, {"action": "deny", "ports": [25]}, {}, errors)
    built = build_policy(Settings(rules=[rule]))
    assert built is not None and not built.ssrf and built.rules == (rule,)


# -- end to end: a real fastsocks process ------------------------------------------------------


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "fastsocks.toml"
    path.write_text(text)
    return str(path)


def _connect(socks, server_address, host, port, auth=None):
    """CONNECT through the proxy; (reply code, socket or None once it is closed)."""
    sock, (rep, _, _) = socks.connect(server_address, host, port, auth=auth)
    if rep != 0:
        try:
            assert socks.read_until_closed(sock) == b""  # X'02', then the server closes
        finally:
            sock.close()
        return rep, None
    return rep, sock


def _echo_works(sock) -> bool:
    with sock:
        sock.sendall(b"ping")
        return sock.recv(4) == b"ping"


def test_e2e_deny_rule(fastsocks_server, socks, echo_target, tmp_path):
    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    other.listen(1)
    try:
        config = _config(tmp_path, f"""
[[rules]]
action = "allow"
dst = ["127.0.0.1/32"]
ports = [{other.getsockname()[1]}]

[[rules]]
action = "deny"
dst = ["127.0.0.0/8"]
ports = [{echo_target.port}]
""")
        server = fastsocks_server("--config", config)
        rep, sock = _connect(socks, server.address, *echo_target.address)
        assert rep == NOT_ALLOWED and sock is None
        rep, sock = _connect(socks, server.address, *other.getsockname())
        assert rep == 0
        sock.close()
    finally:
        other.close()
    assert server.stop() == 0
    log = server.log
    assert f"CONNECT 127.0.0.1 port {echo_target.port}: denied by rules[1]" in log, log
    assert " INFO fastsocks.rules: " in log


def test_e2e_allow_only_a_domain(fastsocks_server, socks, echo_target, tmp_path):
    config = _config(tmp_path, """
[[rules]]
action = "allow"
domain = ["localhost"]

[[rules]]
action = "deny"
""")
    server = fastsocks_server("--config", config)
    rep, sock = _connect(socks, server.address, "localhost", echo_target.port)
    assert rep == 0 and _echo_works(sock)
    for host in ("127.0.0.1", "::ffff:127.0.0.1", f"{LONG_LABEL}.localhost"):
        rep, sock = _connect(socks, server.address, host, echo_target.port)
        assert rep == NOT_ALLOWED, host


def test_e2e_recheck_after_resolution(fastsocks_server, socks, echo_target, tmp_path):
    """'localhost' is not denied by name, but every address it resolves to is."""
    config = _config(tmp_path, """
[[rules]]
action = "deny"
dst = ["127.0.0.0/8", "::1/128"]
""")
    server = fastsocks_server("--config", config)
    rep, sock = _connect(socks, server.address, "localhost", echo_target.port)
    assert rep == NOT_ALLOWED and sock is None
    assert server.stop() == 0
    assert f"CONNECT localhost port {echo_target.port}" in server.log
    assert "denied by rules[0]" in server.log


def test_e2e_denied_name_is_not_looked_up(fastsocks_server, socks, tmp_path):
    """Pass 1 denies the name itself: X'02', not X'04' from a failed lookup."""
    config = _config(tmp_path, """
[[rules]]
action = "deny"
domain = ["*.blocked.test"]
""")
    server = fastsocks_server("--config", config)
    rep, _ = _connect(socks, server.address, f"{LONG_LABEL}.blocked.test", 80)
    assert rep == NOT_ALLOWED
    rep, _ = _connect(socks, server.address, f"{LONG_LABEL}.other.test", 80)
    assert rep == 0x04  # not denied: looked up, and that fails locally


def test_e2e_ssrf_default(fastsocks_server, socks, echo_target, echo_target6, tmp_path):
    """Listening on 0.0.0.0 (reached via 127.0.0.1): inside destinations are X'02'."""
    server = fastsocks_server("--listen", "0.0.0.0:0", "--allow-open")
    proxy = ("127.0.0.1", server.port)
    for host, port in [echo_target.address, ("::ffff:127.0.0.1", echo_target.port),
                       ("localhost", echo_target.port), ("127.1", echo_target.port),
                       echo_target6.address, ("169.254.169.254", 80), ("10.0.0.1", 80)]:
        rep, sock = _connect(socks, proxy, host, port)
        assert rep == NOT_ALLOWED, (host, port)
    assert server.stop() == 0
    assert "denied by the SSRF-safe default (loopback destination" in server.log


def test_e2e_ssrf_default_lifted_by_an_allow_rule(fastsocks_server, socks, echo_target, tmp_path):
    config = _config(tmp_path, f"""
[[rules]]
action = "allow"
dst = ["127.0.0.1/32"]
ports = [{echo_target.port}]
""")
    server = fastsocks_server("--listen", "0.0.0.0:0", "--allow-open", "--config", config)
    proxy = ("127.0.0.1", server.port)
    rep, sock = _connect(socks, proxy, *echo_target.address)
    assert rep == 0 and _echo_works(sock)
    rep, sock = _connect(socks, proxy, "localhost", echo_target.port)  # ::1 denied, 127.0.0.1 not
    assert rep == 0 and _echo_works(sock)
    rep, _ = _connect(socks, proxy, "127.0.0.2", echo_target.port)
    assert rep == NOT_ALLOWED


def test_e2e_ssrf_default_off_on_loopback(fastsocks_server, socks, echo_target):
    server = fastsocks_server()  # 127.0.0.1:0, no config: no policy at all
    rep, sock = _connect(socks, server.address, *echo_target.address)
    assert rep == 0 and _echo_works(sock)


def test_e2e_users_and_groups(fastsocks_server, socks, echo_target, users_file, tmp_path):
    config = _config(tmp_path, f"""
users = "{users_file}"

[groups]
staff = ["alice"]

[[rules]]
action = "deny"
groups = ["staff"]
ports = [{echo_target.port}]
""")
    server = fastsocks_server("--config", config)
    rep, _ = _connect(socks, server.address, *echo_target.address, auth=("alice", "s3cret"))
    assert rep == NOT_ALLOWED
    assert server.stop() == 0
    assert f"user 'alice' CONNECT 127.0.0.1 port {echo_target.port}: denied by rules[0]" in server.log
    assert "s3cret" not in server.log


def _socks_request(socks, proxy, command: int, host: str, port: int) -> tuple[socket.socket, tuple]:
    sock = socks.open(proxy)
    sock.sendall(b"\x05\x01\x00")
    assert socks.recv_exact(sock, 2) == b"\x05\x00"
    sock.sendall(socks.request(command, host, port))
    return sock, socks.read_reply(sock)


def test_e2e_bind_command_denied(fastsocks_server, socks, tmp_path):
    config = _config(tmp_path, """
[[rules]]
action = "deny"
commands = ["bind"]
""")
    server = fastsocks_server("--config", config)
    sock, (rep, _, _) = _socks_request(socks, server.address, 0x02, "0.0.0.0", 0)
    with sock:
        assert rep == NOT_ALLOWED
        assert socks.read_until_closed(sock) == b""


def test_e2e_bind_peer_denied(fastsocks_server, socks, tmp_path):
    """BIND to any peer: the peer that connects in is judged (dst = the peer)."""
    config = _config(tmp_path, """
[[rules]]
action = "deny"
commands = ["bind"]
dst = ["127.0.0.0/8"]
""")
    server = fastsocks_server("--config", config)
    sock, (rep, host, port) = _socks_request(socks, server.address, 0x02, "0.0.0.0", 0)
    with sock:
        assert rep == 0
        peer = socket.create_connection((host, port), timeout=5)
        with peer:
            rep2, _, _ = socks.read_reply(sock)
            assert rep2 == NOT_ALLOWED
            assert socks.read_until_closed(sock) == b""


def _udp_header(host: str, port: int) -> bytes:
    return b"\x00\x00\x00" + socket_encode(host, port)


def socket_encode(host: str, port: int) -> bytes:
    key = ip_key(host)
    if key is not None and ":" not in host:
        return b"\x01" + socket.inet_aton(host) + struct.pack(">H", port)
    name = host.encode()
    return b"\x03" + bytes((len(name),)) + name + struct.pack(">H", port)


def test_e2e_udp_datagrams_judged_per_target(fastsocks_server, socks, udp_echo, tmp_path):
    blocked = UdpEcho()
    try:
        config = _config(tmp_path, f"""
[[rules]]
action = "deny"
commands = ["udp"]
dst = ["127.0.0.0/8", "::1/128"]
ports = [{blocked.port}]
""")
        server = fastsocks_server("--config", config)
        ctrl, (rep, relay_host, relay_port) = _socks_request(socks, server.address, 0x03, "0.0.0.0", 0)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        udp.settimeout(3)
        with ctrl, udp:
            assert rep == 0
            relay = (relay_host, relay_port)
            udp.sendto(_udp_header("127.0.0.1", blocked.port) + b"denied", relay)
            udp.sendto(_udp_header("localhost", blocked.port) + b"denied too", relay)
            udp.sendto(_udp_header(f"{LONG_LABEL}.x", blocked.port) + b"dropped", relay)
            udp.sendto(_udp_header("127.0.0.1", udp_echo.port) + b"allowed", relay)
            data = udp.recv(65535)
            assert data.endswith(b"allowed")
            udp.sendto(_udp_header("localhost", udp_echo.port) + b"by name", relay)
            assert udp.recv(65535).endswith(b"by name")
            time.sleep(0.2)
        assert blocked.received == []
        assert udp_echo.received == [b"allowed", b"by name"]
        assert server.stop() == 0
        assert f"to 127.0.0.1 port {blocked.port} dropped: denied by rules[0]" in server.log
    finally:
        blocked.close()


def test_e2e_udp_association_denied(fastsocks_server, socks, tmp_path):
    config = _config(tmp_path, """
[[rules]]
action = "deny"
commands = ["udp"]
""")
    server = fastsocks_server("--config", config)
    sock, (rep, _, _) = _socks_request(socks, server.address, 0x03, "0.0.0.0", 0)
    with sock:
        assert rep == NOT_ALLOWED
        assert socks.read_until_closed(sock) == b""


# -- issue 16: protocols, userids, the http command ------------------------------------------


@pytest.mark.parametrize("rule, where, message", [
    ({"commands": ["ftp"]}, "commands[0]", 'must be "connect", "bind", "udp" or "http", got "ftp"'),
    ({"protocols": ["socks6"]}, "protocols[0]", 'must be "socks5", "socks4" or "http", got "socks6"'),
    ({"protocols": [["socks5"]]}, "protocols[0]", 'must be "socks5", "socks4" or "http"'),
    ({"protocols": []}, "protocols", "must not be empty"),
    ({"userids": ["a\nb"]}, "userids[0]", "must be a SOCKS4 USERID"),
    ({"userids": ["u" * 256]}, "userids[0]", "must be a SOCKS4 USERID"),
    ({"userids": [7]}, "userids[0]", "must be a SOCKS4 USERID"),
])
def test_protocol_matchers_errors(rule, where, message):
    errors: list[tuple[str, str]] = []
    assert compile_rule(0, {"action": "deny", **rule}, {}, errors) is None
    assert errors and errors[0][0] == f"rules[0].{where}" and message in errors[0][1], errors


def test_protocol_matchers_spec_renders_back():
    errors: list[tuple[str, str]] = []
    rule = compile_rule(0, {"action": "allow", "protocols": ["socks4", "socks4", "http"],
                            "userids": ["", "bob"], "commands": ["http", "connect"]}, {}, errors)
    assert not errors and rule is not None
    assert rule.spec == {"action": "allow", "commands": ["http", "connect"],
                         "protocols": ["socks4", "http"], "userids": ["", "bob"]}


def test_socks4_userid_allows_what_a_deny_would_refuse():
    policy = make_policy({"action": "allow", "protocols": ["socks4"], "userids": ["backup"],
                          "dst": ["10.0.0.0/8"]},
                         {"action": "deny", "protocols": ["socks4"]}, ssrf=True)
    assert decide(policy, "10.1.2.3", protocol="socks4", userid="backup") == "allow"
    assert decide(policy, "10.1.2.3", protocol="socks4", userid="eve") == ("rule", 1)
    assert decide(policy, "203.0.113.1", protocol="socks4", userid="backup") == ("rule", 1)
    assert decide(policy, "10.1.2.3") == ("ssrf", "private")  # SOCKS5: the default holds
