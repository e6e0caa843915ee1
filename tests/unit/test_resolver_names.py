"""Bad names reach ``net/resolver.py`` as ConnectError, never as anything else (issue 17).

The codec refuses control bytes in a name; everything else a client may
write (empty labels, 64-octet labels, a "%scope" no interface has, text the
idna codec refuses) goes on to the resolver, whose callers (CONNECT, UDP,
BIND) handle ConnectError only: a gaierror, ValueError or UnicodeError from
getaddrinfo was a traceback and no reply (TCP), or a traceback per
datagram (UDP).  c-ares asks the DNS server in tests/dnsserver.py on
loopback; the system resolver gets only names it refuses before a query.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Iterator

import pytest

from dnsserver import DnsServer
from fastsocks.net import dns, resolver

# Refused before any query: idna's label rules, a lone surrogate, a scope
# that names no interface (or is no text getaddrinfo takes).
LOCAL_FAILURES = [
    "a..b", "." * 3, "x" * 64 + ".example", "a" * 300, "\udcff", "a\udcffb.example",
    "fe80::1%no-such-interface", "fe80::1%" + "x" * 300, "::1%\udcff", "fe80::1%é",
    "fe80::1%%",
]
# Names a DNS server is asked about (c-ares only here: loopback).
QUERIED = ["a b.example", "-.example", "é" * 100, "xn--.example", "ß.example", "\u200b.example",
           "a/b.example", "nowhere.example", "_srv.example", "a%b.example"]


@pytest.fixture
def cache(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    server = DnsServer({})
    fresh = dns.DnsCache()
    fresh.configure(resolver=request.param, servers=[server.address]
                    if request.param == "c-ares" else [])
    monkeypatch.setattr(dns, "CACHE", fresh)
    try:
        yield request.param
    finally:
        server.close()


def _only_connect_error(name: str) -> None:
    async def main() -> None:
        with pytest.raises(resolver.ConnectError) as info:
            await asyncio.wait_for(resolver.resolve(name, 80), 10)
        assert info.value.reply == 0x04
        # A cache miss (None) or ConnectError: nothing else.
        try:
            resolver.resolve_cached(name, 80)
        except resolver.ConnectError:
            pass
        with pytest.raises(resolver.ConnectError):
            await asyncio.wait_for(resolver.resolve_and_cache(name, 80), 10)

    asyncio.run(main())


@pytest.mark.parametrize("cache", ["system", "c-ares"], indirect=True)
@pytest.mark.parametrize("name", LOCAL_FAILURES)
def test_refused_names_give_connect_error(cache: str, name: str) -> None:
    _only_connect_error(name)


@pytest.mark.parametrize("cache", ["c-ares"], indirect=True)
@pytest.mark.parametrize("name", QUERIED)
def test_unresolvable_names_give_connect_error(cache: str, name: str) -> None:
    _only_connect_error(name)


@pytest.mark.parametrize("name", LOCAL_FAILURES + QUERIED + ["fe80::1%lo", "::1", "127.0.0.1"])
def test_literal_addresses_never_raises(name: str) -> None:
    """CONNECT calls it on every request's host before anything else."""
    got = resolver.literal_addresses(name, 80)
    assert got is None or got[0][0] in (socket.AF_INET, socket.AF_INET6)


def test_scoped_literal_still_a_literal() -> None:
    assert resolver.literal_addresses("fe80::1%lo", 80) == [
        (socket.AF_INET6, ("fe80::1", 80, 0, socket.if_nametoindex("lo")))]


# -- a name dialled like a literal (connect.py: the engine dials it) ----------------------


@pytest.mark.parametrize("v6, v4, expected", [
    ("no AAAA", ("192.0.2.7",), (socket.AF_INET, ("192.0.2.7", 443))),
    (("2001:db8::7",), "no A", (socket.AF_INET6, ("2001:db8::7", 443, 0, 0))),
    ("no AAAA", ("192.0.2.7", "192.0.2.8"), None),  # two to try: the Connector's
    (("2001:db8::7",), ("192.0.2.7",), None),  # two families to race
    (None, ("192.0.2.7",), None),  # AAAA not looked up yet: it may win
    ("no AAAA", None, None),
    ("no AAAA", "no A", None),  # nothing: the Connector words X'04'
], ids=["v4-only", "v6-only", "two-v4", "both", "v6-miss", "v4-miss", "negative"])
def test_cached_only_address(monkeypatch: pytest.MonkeyPatch, v6: object, v4: object,
                             expected: object) -> None:
    fresh = dns.DnsCache()
    monkeypatch.setattr(dns, "CACHE", fresh)
    for family, answer in ((socket.AF_INET6, v6), (socket.AF_INET, v4)):
        if answer is not None:
            fresh.put("only.example", family, answer, 60)
    assert resolver.cached_only_address("only.example", 443) == expected
    assert resolver.cached_only_address("other.example", 443) is None


def test_cached_until_is_the_sooner_of_the_two_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """How long the engine may dial a name itself (connect.py ``_remember``): until the
    first of its two cached answers expires; 0 while one is not cached."""
    now = [1000.0]
    fresh = dns.DnsCache(clock=lambda: now[0])
    fresh.configure(min_ttl=1.0, negative_ttl=5.0)
    monkeypatch.setattr(dns, "CACHE", fresh)
    assert resolver.cached_until("only.example") == 0.0
    fresh.put("only.example", socket.AF_INET, ("192.0.2.7",), 300)
    assert resolver.cached_until("only.example") == 0.0  # AAAA not known yet
    fresh.put("only.example", socket.AF_INET6, "no AAAA", None)  # negative: 5 s
    assert resolver.cached_until("only.example") == 1005.0
    fresh.put("only.example", socket.AF_INET6, "no AAAA", None)
    fresh.put("only.example", socket.AF_INET, ("192.0.2.7",), 0.2)  # raised to min_ttl
    assert resolver.cached_until("only.example") == 1001.0
