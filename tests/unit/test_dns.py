"""The DNS cache (fastsocks/net/dns.py) against a DNS server on loopback (tests/dnsserver.py).

TTLs are judged on a fake clock: the cache's expiry, not the wall clock,
decides.  c-ares keeps its own small cache below ours for the records'
TTL, so a second query reaching the server is counted only where the
record's TTL is 0 (which c-ares does not keep).
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any, Iterator

import pytest

from fastsocks.constants import Reply
from fastsocks.net import dns, resolver
from dnsserver import DnsServer

V4, V6 = socket.AF_INET, socket.AF_INET6

RECORDS = {
    "both.test": [("A", "127.0.0.5", 30), ("AAAA", "::1", 30)],
    "v4only.test": [("A", "127.0.0.6", 30)],
    "zero.test": [("A", "127.0.0.7", 0)],
    "long.test": [("A", "127.0.0.8", 86400)],
    "slow.test": [("A", "127.0.0.9", 30)],
    **{f"n{i}.test": [("A", f"127.0.1.{i}", 300)] for i in range(6)},
}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server() -> Iterator[DnsServer]:
    srv = DnsServer(RECORDS, delay={("slow.test", "A"): 0.3, ("slow.test", "AAAA"): 0.3})
    yield srv
    srv.close()


def make_cache(server: DnsServer, **settings: Any) -> tuple[dns.DnsCache, Clock]:
    clock = Clock()
    cache = dns.DnsCache(clock=clock)
    cache.configure(**{"resolver": "c-ares", "servers": [server.address], "min_ttl": 0.0,
                       **settings})
    return cache, clock


def lookup(cache: dns.DnsCache, host: str, family: int) -> Any:
    async def main() -> Any:
        return await cache.lookup(host, family)
    return asyncio.run(main())


def test_answers_are_kept_for_their_ttl(server: DnsServer) -> None:
    cache, clock = make_cache(server)
    assert lookup(cache, "both.test", V4) == ("127.0.0.5",)
    assert lookup(cache, "both.test", V6) == ("::1",)
    clock.now += 29
    assert cache.get("both.test", V4) == ("127.0.0.5",)
    assert cache.get("both.test", V6) == ("::1",)
    clock.now += 2  # past the record's 30 s
    assert cache.get("both.test", V4) is None
    assert cache.get("both.test", V6) is None


def test_min_ttl_is_a_floor(server: DnsServer) -> None:
    cache, clock = make_cache(server, min_ttl=5.0)
    assert lookup(cache, "zero.test", V4) == ("127.0.0.7",)
    clock.now += 4
    assert cache.get("zero.test", V4) == ("127.0.0.7",)  # TTL 0, kept 5 s
    assert server.count("zero.test", "A") == 1
    clock.now += 2
    assert cache.get("zero.test", V4) is None
    assert lookup(cache, "zero.test", V4) == ("127.0.0.7",)
    assert server.count("zero.test", "A") == 2  # asked again


def test_max_ttl_is_a_ceiling(server: DnsServer) -> None:
    cache, clock = make_cache(server, max_ttl=100.0)
    assert lookup(cache, "long.test", V4) == ("127.0.0.8",)
    clock.now += 99
    assert cache.get("long.test", V4) == ("127.0.0.8",)
    clock.now += 2  # the record says a day; the ceiling says 100 s
    assert cache.get("long.test", V4) is None


def test_negative_entries(server: DnsServer) -> None:
    cache, clock = make_cache(server, negative_ttl=5.0)
    nx = lookup(cache, "nx.test", V4)
    assert isinstance(nx, str) and "not found" in nx
    assert isinstance(cache.get("nx.test", V4), str)
    assert lookup(cache, "v4only.test", V4) == ("127.0.0.6",)
    nodata = lookup(cache, "v4only.test", V6)
    assert isinstance(nodata, str) and "no IPv6 address" in nodata
    assert isinstance(cache.get("v4only.test", V6), str)  # no data: kept, per family
    assert cache.get("v4only.test", V4) == ("127.0.0.6",)
    clock.now += 6
    assert cache.get("nx.test", V4) is None
    assert cache.get("v4only.test", V6) is None
    assert cache.get("v4only.test", V4) == ("127.0.0.6",)


def test_negative_ttl_zero_keeps_nothing(server: DnsServer) -> None:
    cache, _ = make_cache(server, negative_ttl=0.0)
    assert isinstance(lookup(cache, "nx.test", V4), str)
    assert cache.get("nx.test", V4) is None


def test_size_bound_evicts_the_least_recently_used(server: DnsServer) -> None:
    cache, _ = make_cache(server, cache_size=3)
    for i in range(3):
        lookup(cache, f"n{i}.test", V4)
    assert cache.get("n0.test", V4) == ("127.0.1.0",)  # used: n1 is now the oldest
    for i in range(3, 6):
        lookup(cache, f"n{i}.test", V4)
        assert len(cache.entries) <= 3
    assert cache.get("n1.test", V4) is None and cache.get("n2.test", V4) is None
    assert cache.get("n5.test", V4) == ("127.0.1.5",)
    cache.configure(resolver="c-ares", servers=[server.address], cache_size=1)
    assert len(cache.entries) == 1  # a smaller size on reload evicts at once


def test_concurrent_lookups_share_one_query(server: DnsServer) -> None:
    cache, _ = make_cache(server)

    async def main() -> list[Any]:
        futures = [cache.lookup("slow.test", V4) for _ in range(20)]
        assert len({id(f) for f in futures}) == 1
        return await asyncio.gather(*futures)

    assert asyncio.run(main()) == [("127.0.0.9",)] * 20
    assert server.count("slow.test", "A") == 1
    assert cache.lookups == 1
    assert not cache.inflight


def test_new_servers_empty_the_cache(server: DnsServer) -> None:
    cache, _ = make_cache(server)
    lookup(cache, "both.test", V4)
    cache.configure(resolver="c-ares", servers=["127.0.0.1:9"])
    assert cache.get("both.test", V4) is None


def test_auto_leaves_what_the_host_knows_to_the_system(tmp_path: Any) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n10.1.2.3 db.internal.example db # a comment\n")
    cache = dns.DnsCache(hosts_path=str(hosts))
    cache.configure(resolver="auto")
    for name in ("localhost", "LOCALHOST.", "app.localhost", "db", "printer.local",
                 "db.internal.example", "127.1", "0x7f.1"):
        assert cache._use_system(name), name
    assert not cache._use_system("example.com")
    cache.configure(resolver="system")
    assert cache._use_system("example.com")
    cache.configure(resolver="c-ares")
    assert not cache._use_system("localhost")


@pytest.fixture
def global_cache(server: DnsServer) -> Iterator[DnsServer]:
    dns.CACHE.configure(resolver="auto", servers=[server.address])
    yield server
    dns.CACHE.configure()


def test_resolve_raises_only_connect_error(global_cache: DnsServer) -> None:
    async def main() -> None:
        assert await resolver.resolve("both.test", 443) == [
            (V6, ("::1", 443, 0, 0)), (V4, ("127.0.0.5", 443))]
        for name in ("nx.test", "a\0b.test", "a" * 64 + ".test", "x" * 300):
            with pytest.raises(resolver.ConnectError) as info:
                await resolver.resolve(name, 80)
            assert info.value.reply == Reply.HOST_UNREACHABLE
        # localhost resolves as the system says (auto leaves it to getaddrinfo).
        assert {a[1][0] for a in await resolver.resolve("localhost", 80)} == \
            {i[4][0] for i in socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)}

    asyncio.run(main())


def test_resolve_cached_is_a_lookup_in_the_same_cache(global_cache: DnsServer) -> None:
    async def main() -> None:
        assert resolver.resolve_cached("v4only.test", 53) is None
        assert await resolver.resolve_and_cache("v4only.test", 53) == [(V4, ("127.0.0.6", 53))]
        started = time.perf_counter()
        assert resolver.resolve_cached("v4only.test", 54) == [(V4, ("127.0.0.6", 54))]
        assert time.perf_counter() - started < 0.01  # no await, no query
        with pytest.raises(resolver.ConnectError):
            await resolver.resolve_and_cache("nx.test", 53)
        with pytest.raises(resolver.ConnectError):
            resolver.resolve_cached("nx.test", 53)  # the negative entry
        assert global_cache.count("v4only.test") == 2  # A and AAAA, once each

    asyncio.run(main())


def resolution_order(server: DnsServer, host: str) -> list[tuple[float, int]]:
    """(seconds after start, family) as a Resolution hands the addresses on."""
    cache, _ = make_cache(server)

    async def main() -> list[tuple[float, int]]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        got: list[tuple[float, int]] = []
        done = loop.create_future()
        resolution = dns.Resolution(cache, host, lambda f, a: got.append((loop.time() - start, f)),
                                    lambda reason: done.set_result(reason))
        resolution.start()
        assert await asyncio.wait_for(done, 5) is None
        return got

    return asyncio.run(main())


def test_resolution_waits_a_little_for_aaaa() -> None:
    """RFC 8305 §3: A first, AAAA 20 ms later: IPv6 still goes first."""
    srv = DnsServer(RECORDS, delay={("both.test", "AAAA"): 0.02})
    try:
        got = resolution_order(srv, "both.test")
    finally:
        srv.close()
    assert [f for _, f in got] == [V6, V4]


def test_resolution_does_not_wait_long_for_aaaa() -> None:
    """AAAA 500 ms late: IPv4 goes after the 50 ms resolution delay, IPv6 when it comes."""
    srv = DnsServer(RECORDS, delay={("both.test", "AAAA"): 0.5})
    try:
        got = resolution_order(srv, "both.test")
    finally:
        srv.close()
    assert [f for _, f in got] == [V4, V6]
    assert dns.RESOLUTION_DELAY <= got[0][0] < 0.4 <= got[1][0]


def test_a_cancelled_resolution_releases_its_lookups(server: DnsServer) -> None:
    cache, _ = make_cache(server)

    async def main() -> None:
        called: list[Any] = []
        resolution = dns.Resolution(cache, "slow.test", lambda *a: called.append(a),
                                    called.append)
        resolution.start()
        futures = list(cache.inflight.values())
        assert futures
        resolution.cancel()
        await asyncio.gather(*futures)
        await asyncio.sleep(0.1)
        assert called == []  # no callback after cancel
        assert cache.get("slow.test", V4) == ("127.0.0.9",)  # the answer is still kept

    asyncio.run(main())


@pytest.mark.parametrize("text, normal", [
    ("192.0.2.53", "192.0.2.53"), ("192.0.2.53:5353", "192.0.2.53:5353"),
    ("2001:db8::53", "2001:db8::53"), ("[2001:db8::53]:53", "[2001:db8::53]:53"),
])
def test_parse_nameserver(text: str, normal: str) -> None:
    assert dns.parse_nameserver(text) == normal


@pytest.mark.parametrize("text", ["dns.example", "192.0.2.53:0", "192.0.2.53:x", "[::1]x"])
def test_parse_nameserver_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        dns.parse_nameserver(text)
