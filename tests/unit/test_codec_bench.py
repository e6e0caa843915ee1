"""Codec micro-benchmarks (pytest-benchmark) on both implementations, ids ``c``/``py``.

Not part of the default run (marker ``bench``); run them with::

    python -m pytest tests/unit/test_codec_bench.py -m bench            # needs pytest-benchmark
    python -m pytest tests/unit/test_codec_bench.py -m bench --benchmark-group-by=group

**Every figure is the time of 1 000 operations**: read the µs that
pytest-benchmark prints as ns per operation (``extra_info`` carries
``ns_per_op`` too).  ``benchmarks/codec.py`` measures the same operations
with timeit and prints Cython vs Python and the speed-up as a table.

How a codec gets into the right phase without timing that: a ServerCodec
cannot be rewound, so the *setup* of each round (untimed, pytest-benchmark's
``pedantic(setup=...)``) builds 1 000 codecs already in the phase the
operation needs (past the greeting for a request, past the request for a
reply, fresh for a greeting), and the timed function runs the operation once
on each, in a plain ``for`` loop.  What is timed is thus the operation as
the server calls it (``codec.receive_data(data)`` then ``codec.next_event()``,
bound-method look-ups included) plus one step of a ``for`` loop
(``test_loop_overhead``, ~10 ns); creating the codec is not included
(``test_create`` measures it apart).  The stateless UDP header calls run the
same way over 1 000 references to one input.  Each test also checks the
result, so a benchmark can never time an error path.

Targets (issue 3, Cython build): parse a CONNECT request with a domain in
≤ 150 ns, build a reply in ≤ 100 ns, ≥ 10× the pure-Python twin.  Tests
assert behaviour, not timings: the figures are read, not enforced here.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable

import pytest

try:
    import codec_impls as ci
except ImportError:  # tests/ became a package
    from tests import codec_impls as ci  # type: ignore[no-redef]

pytestmark = pytest.mark.bench

BATCH = 1000  # operations per timed round: µs per round == ns per operation
ROUNDS = {"c": 300, "py": 60}  # rounds per test (the twin is ~15× slower)

GREETING = b"\x05\x01\x00"
REQUEST_DOMAIN = b"\x05\x01\x00\x03\x0bexample.org\x01\xbb"  # CONNECT example.org:443
REQUEST_IPV4 = b"\x05\x01\x00\x01\x7f\x00\x00\x01\x1f\x90"  # CONNECT 127.0.0.1:8080
REPLY_HOST, REPLY_PORT = "127.0.0.1", 40123
REPLY_BYTES = b"\x05\x00\x00\x01\x7f\x00\x00\x01\x9c\xbb"
UDP_DATAGRAM = b"\x00\x00\x00\x01\x7f\x00\x00\x01\x23\x28" + bytes(64)  # to 127.0.0.1:9000
UDP_HOST, UDP_PORT = "127.0.0.1", 9000
UDP_HEADER = UDP_DATAGRAM[:10]


def _past_greeting(mod: ModuleType) -> Any:
    c = mod.ServerCodec()
    c.receive_data(GREETING)
    c.next_event()
    c.send_method(0)
    return c


def _past_request(mod: ModuleType) -> Any:
    c = _past_greeting(mod)
    c.receive_data(REQUEST_IPV4)
    c.next_event()
    return c


def _run(benchmark: Any, mod: ModuleType, make: Callable[[], Any],
         body: Callable[[list[Any]], Any]) -> Any:
    """Time ``body`` over a fresh batch from ``make`` per round; returns its result."""

    def setup() -> tuple[tuple[list[Any]], dict[str, Any]]:
        return ([make() for _ in range(BATCH)],), {}

    rounds = ROUNDS[mod.IMPLEMENTATION]
    result = benchmark.pedantic(body, setup=setup, rounds=rounds, warmup_rounds=3)
    stats = benchmark.stats.stats if benchmark.stats is not None else None
    if stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["ns_per_op_median"] = round(stats.median / BATCH * 1e9, 1)
        benchmark.extra_info["ns_per_op_min"] = round(stats.min / BATCH * 1e9, 1)
    benchmark.extra_info["ops_per_round"] = BATCH
    return result


@pytest.mark.benchmark(group="loop overhead")
def test_loop_overhead(benchmark: Any, impl: ModuleType) -> None:
    def body(codecs: list[Any]) -> int:
        n = 0
        for c in codecs:
            pass
        return n

    assert _run(benchmark, impl, impl.ServerCodec, body) == 0


@pytest.mark.benchmark(group="create ServerCodec")
def test_create(benchmark: Any, impl: ModuleType) -> None:
    cls = impl.ServerCodec

    def body(items: list[Any]) -> Any:
        c = None
        for factory in items:
            c = factory()
        return c

    assert type(_run(benchmark, impl, lambda: cls, body)) is cls


@pytest.mark.benchmark(group="parse greeting")
def test_parse_greeting(benchmark: Any, impl: ModuleType) -> None:
    def body(codecs: list[Any]) -> Any:
        ev = None
        for c in codecs:
            c.receive_data(GREETING)
            ev = c.next_event()
        return ev

    ev = _run(benchmark, impl, impl.ServerCodec, body)
    assert ci.event_fields(ev) == ("Greeting", (b"\x00",))


@pytest.mark.benchmark(group="parse CONNECT request, domain")
def test_parse_request_domain(benchmark: Any, impl: ModuleType) -> None:
    def body(codecs: list[Any]) -> Any:
        ev = None
        for c in codecs:
            c.receive_data(REQUEST_DOMAIN)
            ev = c.next_event()
        return ev

    ev = _run(benchmark, impl, lambda: _past_greeting(impl), body)
    assert ci.event_fields(ev) == ("Request", (1, 3, "example.org", 443))


@pytest.mark.benchmark(group="parse CONNECT request, IPv4")
def test_parse_request_ipv4(benchmark: Any, impl: ModuleType) -> None:
    def body(codecs: list[Any]) -> Any:
        ev = None
        for c in codecs:
            c.receive_data(REQUEST_IPV4)
            ev = c.next_event()
        return ev

    ev = _run(benchmark, impl, lambda: _past_greeting(impl), body)
    assert ci.event_fields(ev) == ("Request", (1, 1, "127.0.0.1", 8080))


@pytest.mark.benchmark(group="build reply, IPv4")
def test_send_reply_ipv4(benchmark: Any, impl: ModuleType) -> None:
    def body(codecs: list[Any]) -> Any:
        data = None
        for c in codecs:
            data = c.send_reply(0, REPLY_HOST, REPLY_PORT)
        return data

    assert _run(benchmark, impl, lambda: _past_request(impl), body) == REPLY_BYTES


@pytest.mark.benchmark(group="parse UDP header, IPv4")
def test_parse_udp_header(benchmark: Any, impl: ModuleType) -> None:
    parse = impl.parse_udp_header

    def body(items: list[bytes]) -> Any:
        h = None
        for data in items:
            h = parse(data)
        return h

    h = _run(benchmark, impl, lambda: UDP_DATAGRAM, body)
    assert ci.event_fields(h) == ("UdpHeader", (0, 1, UDP_HOST, UDP_PORT, 10))


@pytest.mark.benchmark(group="build UDP header, IPv4")
def test_build_udp_header(benchmark: Any, impl: ModuleType) -> None:
    build = impl.build_udp_header

    def body(items: list[str]) -> Any:
        data = None
        for host in items:
            data = build(host, UDP_PORT)
        return data

    assert _run(benchmark, impl, lambda: UDP_HOST, body) == UDP_HEADER
