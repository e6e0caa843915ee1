"""The lookup tables (``Spans``, ``RangeSet``, ``RuleTable``) on both implementations.

Each case runs on the Cython module and on its twin (ids ``c``/``py``).
Property tests hold both to the plain forms they replace: ``Spans`` to
``any(lo <= n <= hi)`` over the ranges as given, with bounds around the 32-,
64- and 128-bit edges (a 128-bit bound is two 64-bit words in C); a
``RuleTable`` to ``Policy.decide(..., by_rule=True)``, ``Rule.match`` rule
by rule in Python, on random rule sets, askers, names and destinations
(protected ones and IPv6 forms carrying IPv4 among them).  The rules' own semantics are tested
in test_rules.py.
"""

from __future__ import annotations

import importlib
import ipaddress
import os
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastsocks.tables
from fastsocks import _tables_py
from fastsocks.constants import Command
from fastsocks.control.record import Protocol
from fastsocks.control.rulebook import UNKNOWN, Decision, Denial, Policy, Rule, table_entries
from fastsocks.control.rules import compile_rule
from fastsocks.net.address import ip_key, ipv4_bounds, network_bounds

try:
    _tables_c: ModuleType | None = importlib.import_module("fastsocks._tables")
    C_IMPORT_ERROR: ImportError | None = None
except ImportError as exc:  # not built (FASTSOCKS_NO_EXTENSIONS=1 install)
    _tables_c = None
    C_IMPORT_ERROR = exc

IMPLS = [
    pytest.param(_tables_c, id="c", marks=pytest.mark.skipif(
        _tables_c is None, reason=f"the Cython tables did not load: {C_IMPORT_ERROR!r}")),
    pytest.param(_tables_py, id="py"),
]

TOP = (1 << 128) - 1
W64 = 1 << 64


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return request.param


def test_extension_loaded() -> None:
    # Fails when the build lost the extension and rules silently used the twin.
    if os.environ.get("FASTSOCKS_NO_EXTENSIONS"):
        assert fastsocks.tables.IMPLEMENTATION == "py"
    else:
        assert fastsocks.tables.IMPLEMENTATION == "c", C_IMPORT_ERROR
        assert fastsocks.tables.Spans is _tables_c.Spans  # type: ignore[union-attr]


@pytest.mark.parametrize("pairs, merged", [
    ([], ()),
    ([(5, 5)], ((5, 5),)),
    ([(30, 40), (5, 10)], ((5, 10), (30, 40))),                 # sorted
    ([(5, 10), (11, 20)], ((5, 20),)),                          # adjacent: joined
    ([(5, 10), (12, 20)], ((5, 10), (12, 20))),                 # a gap of one: kept apart
    ([(5, 20), (8, 9), (5, 20)], ((5, 20),)),                   # inside, repeated
    ([(5, 15), (10, 30), (29, 31)], ((5, 31),)),                # overlapping chain
    ([(0, TOP), (7, 8)], ((0, TOP),)),                          # everything
    ([(W64 - 1, W64 - 1), (W64, W64)], ((W64 - 1, W64),)),      # across the word edge
])
def test_merge(impl: ModuleType, pairs: list[tuple[int, int]], merged: tuple[tuple[int, int], ...]) -> None:
    assert impl.merge(pairs) == merged
    spans = impl.Spans(pairs)
    assert spans.pairs == merged
    assert len(spans) == len(merged)


@pytest.mark.parametrize("bad", [(5, 4), (-1, 3), (0, TOP + 1), ("1", 2), (1.0, 2), (True, 2), (1, None)])
def test_bad_range_is_refused(impl: ModuleType, bad: tuple[object, object]) -> None:
    with pytest.raises(ValueError, match="0 <= low <= high < 2\\*\\*128"):
        impl.Spans([(0, 1), bad])


def test_bounds(impl: ModuleType) -> None:
    spans = impl.Spans([(10, 20), (W64 - 2, W64 + 2), (TOP - 1, TOP)])
    inside = [10, 15, 20, W64 - 2, W64 - 1, W64, W64 + 2, TOP - 1, TOP]
    outside = [-1, 0, 9, 21, W64 - 3, W64 + 3, TOP - 2, TOP + 1, 1 << 200, -(1 << 100)]
    assert [n for n in inside if not spans.has(n)] == []
    assert [n for n in outside if spans.has(n)] == []


def test_high_words_equal_low_words_decide(impl: ModuleType) -> None:
    # Bounds that share their high word: the low word alone decides.
    base = 0x2001_0DB8 << 96
    spans = impl.Spans([(base + 100, base + 200)])
    assert spans.has(base + 100) and spans.has(base + 200)
    assert not spans.has(base + 99) and not spans.has(base + 201)
    assert not spans.has(100 + (1 << 64)) and not spans.has(base + 100 + (1 << 64))


def test_empty(impl: ModuleType) -> None:
    spans = impl.Spans()
    assert len(spans) == 0
    assert not spans.has(0) and not spans.has(TOP)
    assert not impl.RangeSet().contains((4, 0)) and not impl.RangeSet().contains((6, 0))


def test_range_set_families_apart(impl: ModuleType) -> None:
    v4 = ipaddress.ip_network("10.0.0.0/8")
    v6 = ipaddress.ip_network("2001:db8::/32")
    table = impl.RangeSet([(int(v4[0]), int(v4[-1]))], [(int(v6[0]), int(v6[-1]))])
    assert len(table) == 2
    assert table.contains((4, int(ipaddress.ip_address("10.1.2.3"))))
    assert not table.contains((4, int(ipaddress.ip_address("11.0.0.0"))))
    assert table.contains((6, int(ipaddress.ip_address("2001:db8::1"))))
    # The same integer in the other family is another address.
    assert not table.contains((6, int(ipaddress.ip_address("10.1.2.3"))))
    assert not table.contains((4, int(ipaddress.ip_address("2001:db8::1"))))
    assert "RangeSet(v4=[(167772160, 184549375)]" in repr(table)


# Bounds near the edges where a two-word comparison could go wrong.
_EDGES = [0, 1, (1 << 32) - 1, 1 << 32, W64 - 1, W64, W64 + 1, (1 << 96) - 1, TOP - 1, TOP]
_bound = st.one_of(
    st.integers(0, 1 << 16),
    st.integers(0, (1 << 32) - 1),
    st.integers(W64 - 1000, W64 + 1000),
    st.integers(0, TOP),
    st.sampled_from(_EDGES),
)
_pair = st.tuples(_bound, _bound).map(lambda p: (min(p), max(p)))


@settings(max_examples=300, deadline=None)
@given(pairs=st.lists(_pair, max_size=40), probes=st.lists(_bound, max_size=20))
def test_agrees_with_a_plain_scan(pairs: list[tuple[int, int]], probes: list[int]) -> None:
    impls = [m for m in (_tables_c, _tables_py) if m is not None]
    tables = [m.Spans(pairs) for m in impls]
    assert len({t.pairs for t in tables}) == 1
    # Every bound and its neighbours, plus the random probes.
    for n in probes + [b + d for lo, hi in pairs for b in (lo, hi) for d in (-1, 0, 1)]:
        expected = any(lo <= n <= hi for lo, hi in pairs)
        assert [t.has(n) for t in tables] == [expected] * len(tables), n


def test_a_long_deny_list_is_judged_right() -> None:
    """10 000 networks in one rule: a lookup finds the one that matches."""
    nets = [f"10.{i >> 8}.{i & 255}.0/24" for i in range(0, 20_000, 2)]  # every other /24
    errors: list[tuple[str, str]] = []
    deny = compile_rule(0, {"action": "deny", "dst": nets, "ports": [25, "6000-6100", 443]}, {}, errors)
    allow = compile_rule(1, {"action": "allow", "dst": ["10.0.0.0/8"]}, {}, errors)
    assert errors == [] and deny is not None and allow is not None
    assert len(deny.dst) == 10_000
    policy = Policy([deny, allow], ssrf=True)
    subject = policy.subject("192.0.2.7", None)

    def judged(host: str, port: int) -> object:
        decision = policy.check_request(Command.CONNECT, subject, host, port)
        return decision if decision is allow else str(decision)

    assert judged("10.0.0.9", 443) == "denied by rules[0]"  # first /24
    assert judged("10.78.30.1", 6050) == "denied by rules[0]"  # 10.78.30.0/24 is listed (i = 19998)
    assert judged("10.78.31.1", 443) is allow           # the odd /24s are not
    assert judged("10.0.1.1", 443) is allow
    assert judged("10.0.0.9", 80) is allow              # port not in the set
    assert judged("10.0.0.9", 6101) is allow


# -- RuleTable: the IP-literal judgement in one loop ----------------------------------

_CIDRS = ["10.0.0.0/8", "10.1.0.0/16", "127.0.0.0/8", "192.0.2.0/24", "0.0.0.0/0", "::/0",
          "2001:db8::/32", "2002::/16", "64:ff9b::/96", "2001::/32", "fc00::/7", "::1/128"]
_ADDRESSES = ["10.1.2.3", "10.9.9.9", "127.0.0.1", "192.0.2.7", "93.184.216.34", "::1",
              "2001:db8::5", "2002:a01:203::1", "2002:5db8:d822::1", "64:ff9b::a01:203",
              "64:ff9b::5db8:d822", "2001:0:5db8:d822::f5fe:fdfc", "fd00::1", "2606:4700::1111"]
_rule_spec = st.fixed_dictionaries({"action": st.sampled_from(["allow", "deny"])}, optional={
    "src": st.lists(st.sampled_from(_CIDRS), min_size=1, max_size=3),
    "dst": st.lists(st.sampled_from(_CIDRS), min_size=1, max_size=3),
    "domain": st.lists(st.sampled_from(["example.com", "*.example.com", "other.org"]),
                       min_size=1, max_size=2),
    "ports": st.lists(st.sampled_from([22, 80, 443, "1000-2000", "0-65535"]), min_size=1, max_size=3),
    "users": st.lists(st.sampled_from(["alice", "bob"]), min_size=1, max_size=2),
    "groups": st.lists(st.sampled_from(["staff"]), min_size=1, max_size=1),
    "commands": st.lists(st.sampled_from(["connect", "bind", "udp", "http"]), min_size=1, max_size=2),
    "protocols": st.lists(st.sampled_from(["socks5", "socks4", "http"]), min_size=1, max_size=2),
})


def _same(a: Decision, b: Decision) -> bool:
    if isinstance(a, Rule) or a is None:
        return a is b
    return isinstance(b, Denial) and (a.rule, a.kind, a.inside) == (b.rule, b.kind, b.inside)


def _table(impl: ModuleType, policy: Policy) -> object:
    """``impl``'s RuleTable over the policy's rules (their tables rebuilt in ``impl``)."""
    def again(table: object) -> object:
        if table is None:
            return None
        if hasattr(table, "v4"):
            return impl.RangeSet(table.v4.pairs, table.v6.pairs)  # type: ignore[attr-defined]
        return impl.Spans(table.pairs)  # type: ignore[attr-defined]
    return impl.RuleTable([(c, again(src), again(dst), again(ports), *flags)
                           for c, src, dst, ports, *flags in table_entries(policy.rules)])


@settings(max_examples=800, deadline=None)
@given(specs=st.lists(_rule_spec, max_size=8), ssrf=st.booleans(),
       client=st.sampled_from([None, "10.1.2.3", "192.0.2.7", "2001:db8::9"]),
       user=st.sampled_from([None, "alice", "bob"]), protocol=st.sampled_from(list(Protocol)),
       command=st.sampled_from(list(Command)), address=st.one_of(st.none(), st.sampled_from(_ADDRESSES)),
       name=st.sampled_from([None, UNKNOWN, "example.com", "www.example.com", "other.org"]),
       port=st.sampled_from([UNKNOWN, 22, 80, 443, 1500, 65535]))
def test_rule_table_agrees_with_rule_match(specs: list[dict[str, object]], ssrf: bool,
                                           client: str | None, user: str | None, protocol: Protocol,
                                           command: Command, address: str | None, name: object,
                                           port: object) -> None:
    """An IP literal (no name), a name before its lookup (no address: UNDECIDED
    where a dst rule could match), a name with one of its addresses, and
    requests judged before their target is known (UDP ASSOCIATE: nothing
    known; BIND to any peer: no address)."""
    errors: list[tuple[str, str]] = []
    groups = {"staff": ["alice"]}
    rules = [compile_rule(i, spec, groups, errors) for i, spec in enumerate(specs)]
    assert errors == []
    policy = Policy(rules, groups, ssrf)  # type: ignore[arg-type]
    ip = UNKNOWN if address is None else ip_key(address)
    assert ip is not None
    expected = policy.decide(command, policy.subject(client, user, protocol), name, ip, port, by_rule=True)
    assert _same(policy.decide(command, policy.subject(client, user, protocol), name, ip, port), expected)
    for impl in (m for m in (_tables_c, _tables_py) if m is not None):
        policy.table = _table(impl, policy)
        got = policy.decide(command, policy.subject(client, user, protocol), name, ip, port)
        assert _same(got, expected), (impl.IMPLEMENTATION, got, expected)


def test_rule_table_checks_its_inputs(impl: ModuleType) -> None:
    table = impl.RuleTable([(-1, None, None, None, False, True, True, False)])
    assert table.first(1, None, b"\1", None, (4, 1), 80, False, ()) == 0
    assert table.first(1, None, b"\0", None, (4, 1), 80, False, ()) == -1  # the asker does not pass
    assert table.first(1, None, b"\1", None, (4, 1), 80, True, ()) == -1   # protected: not explicit
    with pytest.raises(ValueError, match="passes"):
        table.first(1, None, b"", None, (4, 1), 80, False, ())
    with pytest.raises(ValueError, match="names"):
        table.first(1, None, b"\1", b"", (4, 1), 80, False, ())
    with pytest.raises(ValueError, match="at most two"):
        table.first(1, None, b"\1", None, (6, 1), 80, False, (1, 2, 3))
    with pytest.raises(ValueError, match="not an address"):
        table.first(1, None, b"\1", None, (6, 1 << 128), 80, False, ())
    assert len(table) == 1 and len(impl.RuleTable()) == 0


def test_rule_table_unknown_port_and_name(impl: ModuleType) -> None:
    ports = impl.Spans([(443, 443)])
    table = impl.RuleTable([(-1, None, None, ports, False, False, False, False),  # deny ports 443
                            (-1, None, None, None, True, False, True, True)])     # allow domain ...
    unknown = bytes([impl.NAME_UNKNOWN]) * 2
    assert table.first(1, None, b"\1\1", None, (4, 1), -1, False, ()) == impl.UNDECIDED
    assert table.first(1, None, b"\1\1", None, (4, 1), 80, False, ()) == -1
    assert table.first(1, None, b"\1\1", unknown, (4, 1), 80, False, ()) == impl.UNDECIDED
    assert table.first(1, None, b"\1\1", b"\0\1", (4, 1), 80, False, ()) == 1
    # A known mismatch in the same rule decides, whatever is unknown.
    both = impl.RuleTable([(-1, None, impl.RangeSet([(5, 5)]), ports, False, False, False, True)])
    assert both.first(1, None, b"\1", None, (4, 6), -1, False, ()) == -1


def test_rule_table_names_and_undecided(impl: ModuleType) -> None:
    dst = impl.RangeSet([(10 << 24, (11 << 24) - 1)])
    table = impl.RuleTable([(-1, None, None, None, True, False, True, True),   # allow domain ...
                            (-1, None, dst, None, False, False, False, True)])  # deny dst 10/8
    assert table.first(1, None, b"\1\1", b"\1\0", None, 80, False, ()) == 0   # the name matches
    assert table.first(1, None, b"\1\1", b"\0\0", None, 80, False, ()) == impl.UNDECIDED
    assert table.first(1, None, b"\1\1", b"\0\0", (4, 10 << 24), 80, False, ()) == 1
    assert table.first(1, None, b"\1\1", None, (4, 10 << 24), 80, False, ()) == 1  # no name
    assert table.first(1, None, b"\1\1", None, (4, 12 << 24), 80, False, ()) == -1


def test_askers_conditions_are_cached_per_asker() -> None:
    errors: list[tuple[str, str]] = []
    rules = [compile_rule(0, {"action": "deny", "users": ["bob"]}, {}, errors),
             compile_rule(1, {"action": "allow", "dst": ["0.0.0.0/0"]}, {}, errors)]
    policy = Policy(rules, {})  # type: ignore[arg-type]
    bob, alice = policy.subject("192.0.2.1", "bob"), policy.subject("192.0.2.2", "alice")
    assert policy.passes(bob) == b"\1\1" and policy.passes(alice) == b"\0\1"
    assert policy.passes(policy.subject("192.0.2.3", "bob")) is policy.passes(bob)  # one entry per asker
    assert str(policy.decide(Command.CONNECT, bob, None, (4, 1), 80)) == "denied by rules[0]"
    assert policy.decide(Command.CONNECT, alice, None, (4, 1), 80) is rules[1]
    # Without conditions on the asker, everyone shares one answer.
    plain = Policy(rules[1:], {})  # type: ignore[arg-type]
    assert plain.passes(bob) is plain.passes(alice) == b"\1"


# -- compiling a list: the IPv4 fast path against ipaddress -----------------------------

_octet = st.one_of(st.integers(0, 255).map(str), st.sampled_from(["256", "01", "00", "-1", "", " 1", "1a"]))
_cidr_text = st.builds(
    lambda octets, slash, prefix: ".".join(octets) + (f"/{prefix}" if slash else ""),
    st.lists(_octet, min_size=3, max_size=5), st.booleans(),
    st.one_of(st.integers(0, 33).map(str), st.sampled_from(["", "08", "+8", "\u0668", "32 ", "x"])))


@settings(max_examples=500, deadline=None)
@given(text=st.one_of(_cidr_text, st.sampled_from(["10.0.0.0/8", "10.0.0.1/8", "0.0.0.0/0", "::/0",
                                                   "::ffff:10.0.0.0/104", "1.2.3.4", "1.2.3.4/32",
                                                   "10.0.0.0/255.0.0.0", "10.0.0.0/0.255.255.255"])))
def test_ipv4_fast_path_agrees_with_ipaddress(text: str) -> None:
    """What the fast path accepts, ipaddress accepts strictly, to the same bounds
    and text; what it declines is IPv6 or something ipaddress explains."""
    fast = ipv4_bounds(text)
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError:
        assert fast is None
        return
    prefix = text.partition("/")[2]
    if net.version == 6:
        assert fast is None
    elif fast is None:  # only a netmask or hostmask form is left to ipaddress
        assert "/" in text and not (prefix.isascii() and prefix.isdigit()), text
    else:
        assert fast == (network_bounds(net), net.with_prefixlen)
