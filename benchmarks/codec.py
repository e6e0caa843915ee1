#!/usr/bin/env python3
"""Codec micro-benchmarks with timeit: the Cython codec against its pure-Python twin.

    python benchmarks/codec.py [--repeat 41] [--batch 2000] [--json PATH]

The same operations as ``tests/unit/test_codec_bench.py`` (pytest-benchmark, marker
``bench``), without pytest, printed as a markdown table: ns per operation for
each implementation and the speed-up.

How a stateful operation is measured.  Parsing a request needs a codec in the
REQUEST phase (past the greeting and the method selection), building a reply
one in the REPLY phase (past the request), parsing a greeting a fresh codec;
a ServerCodec cannot be rewound.  So timeit's *setup* (not timed) builds a
list of ``--batch`` codecs already in the right phase, and the timed
statement runs the operation once on each::

    for c in codecs:            # codecs made in setup, untimed
        c.receive_data(REQUEST)
        c.next_event()

ns/op is the time of that loop divided by ``--batch``.  It therefore
includes one step of a Python ``for`` loop (its cost is printed: the ``for
... pass`` row) and the attribute look-ups and calls as the server makes them
(``session.py`` calls ``self.codec.receive_data(data)`` then
``self.codec.next_event()``), but not the creation of the codec or of the
earlier phases.  The stateless calls (UDP header parse/build) run in the same
kind of loop over a list of ``--batch`` references to one input.  Each figure
is the median of ``--repeat`` timings (the minimum is printed too; on a
shared machine the minimum is the least disturbed run).

Loopback is not involved: nothing here does I/O.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import timeit
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from fastsocks import _codec_py  # noqa: E402

try:
    from fastsocks import _codec as _codec_c  # noqa: E402
except ImportError as exc:  # not built: say so, measure the twin alone
    _codec_c = None
    C_ERROR: str | None = repr(exc)
else:
    C_ERROR = None

# The inputs (RFC 1928 §3, §4, §6, §7).
GREETING = b"\x05\x01\x00"  # VER=5, one method: no authentication
REQUEST_DOMAIN = b"\x05\x01\x00\x03\x0bexample.org\x01\xbb"  # CONNECT example.org:443
REQUEST_IPV4 = b"\x05\x01\x00\x01\x7f\x00\x00\x01\x1f\x90"  # CONNECT 127.0.0.1:8080
REPLY_HOST, REPLY_PORT = "127.0.0.1", 40123  # BND.ADDR / BND.PORT of a success reply
UDP_PAYLOAD = bytes(64)
UDP_DATAGRAM = b"\x00\x00\x00\x01\x7f\x00\x00\x01\x23\x28" + UDP_PAYLOAD  # to 127.0.0.1:9000
UDP_HOST, UDP_PORT = "127.0.0.1", 9000

#: The issue's targets for the Cython build (ns per operation).
TARGETS = {"parse_request_domain": 150.0, "send_reply_ipv4": 100.0}
SPEEDUP_TARGET = 10.0


def fresh(mod: ModuleType) -> Any:
    return mod.ServerCodec()


def past_greeting(mod: ModuleType) -> Any:
    """A codec in the REQUEST phase: greeting parsed, "no auth" selected."""
    c = mod.ServerCodec()
    c.receive_data(GREETING)
    c.next_event()
    c.send_method(0)
    return c


def past_request(mod: ModuleType) -> Any:
    """A codec in the REPLY phase: a CONNECT request parsed."""
    c = past_greeting(mod)
    c.receive_data(REQUEST_IPV4)
    c.next_event()
    return c


# name -> (what it is, setup(mod) -> one item of the batch, timed loop body on ``c``)
OPERATIONS: dict[str, tuple[str, Callable[[ModuleType], Any], str]] = {
    "loop_overhead": (
        "`for c in codecs: pass` (included in every row below)",
        fresh, "pass"),
    "create": (
        "create a ServerCodec",
        lambda mod: mod.ServerCodec, "c()"),
    "parse_greeting": (
        "parse a greeting `05 01 00` (receive_data + next_event, fresh codec)",
        fresh, "c.receive_data(GREETING); c.next_event()"),
    "parse_request_domain": (
        "parse CONNECT example.org:443 (receive_data + next_event, codec past the greeting)",
        past_greeting, "c.receive_data(REQUEST_DOMAIN); c.next_event()"),
    "parse_request_ipv4": (
        "parse CONNECT 127.0.0.1:8080 (the same, IPv4)",
        past_greeting, "c.receive_data(REQUEST_IPV4); c.next_event()"),
    "send_reply_ipv4": (
        "build a success reply, BND 127.0.0.1:40123 (send_reply, codec past the request)",
        past_request, "c.send_reply(0, REPLY_HOST, REPLY_PORT)"),
    "parse_udp_header": (
        "parse a UDP header, IPv4 target + 64 B payload (parse_udp_header)",
        lambda mod: UDP_DATAGRAM, "parse_udp_header(c)"),
    "build_udp_header": (
        "build a UDP header for 127.0.0.1:9000 (build_udp_header)",
        lambda mod: UDP_HOST, "build_udp_header(c, UDP_PORT)"),
    "whole_handshake": (
        "a whole no-auth CONNECT negotiation: create, greeting, method, request (domain), reply",
        lambda mod: mod.ServerCodec,
        "s = c(); s.receive_data(GREETING); s.next_event(); s.send_method(0); "
        "s.receive_data(REQUEST_DOMAIN); s.next_event(); s.send_reply(0, REPLY_HOST, REPLY_PORT)"),
}


def measure(mod: ModuleType, name: str, batch: int, repeat: int) -> dict[str, float]:
    """ns/op of one operation on one implementation: median and minimum of ``repeat``."""
    _, make, body = OPERATIONS[name]
    env = {
        "GREETING": GREETING, "REQUEST_DOMAIN": REQUEST_DOMAIN, "REQUEST_IPV4": REQUEST_IPV4,
        "REPLY_HOST": REPLY_HOST, "REPLY_PORT": REPLY_PORT, "UDP_PORT": UDP_PORT,
        "parse_udp_header": mod.parse_udp_header, "build_udp_header": mod.build_udp_header,
        "_make": make, "_mod": mod, "_batch": batch,
    }
    stmt = "for c in codecs:\n    " + body.replace("; ", "\n    ")
    timer = timeit.Timer(stmt, setup="codecs = [_make(_mod) for _ in range(_batch)]", globals=env)
    timer.timeit(1)  # warm-up (first-call costs, allocator)
    times = [t / batch * 1e9 for t in timer.repeat(repeat, 1)]
    return {"median": statistics.median(times), "min": min(times)}


def run(batch: int, repeat: int) -> dict[str, Any]:
    mods = [m for m in (_codec_c, _codec_py) if m is not None]
    out: dict[str, Any] = {}
    for name in OPERATIONS:
        # Interleaved per operation, so that a burst of someone else's load
        # hits both implementations' figures of one row alike.
        out[name] = {m.IMPLEMENTATION: measure(m, name, batch, repeat) for m in mods}
    return out


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def markdown(results: dict[str, Any]) -> str:
    head = ("| operation | Cython ns/op (min) | Python ns/op (min) | speed-up | target (Cython) |\n"
            "|---|---|---|---|---|")
    lines = [head]
    for name, (what, _, _) in OPERATIONS.items():
        r = results[name]
        c, py = r.get("c"), r["py"]
        cs = f"{_fmt(c['median'])} ({_fmt(c['min'])})" if c else "not built"
        ratio = f"{py['median'] / c['median']:.1f}×" if c and c["median"] > 0 else "—"
        target = ""
        if name in TARGETS and c:
            verdicts = []
            for stat in ("median", "min"):
                ok = c[stat] <= TARGETS[name] and py[stat] / c[stat] >= SPEEDUP_TARGET
                verdicts.append(f"{stat} {'met' if ok else 'missed'}")
            target = f"≤ {TARGETS[name]:g} ns and ≥ {SPEEDUP_TARGET:g}×: {', '.join(verdicts)}"
        if name == "loop_overhead":
            ratio = "—"
        lines.append(f"| {what} | {cs} | {_fmt(py['median'])} ({_fmt(py['min'])}) "
                     f"| {ratio} | {target} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=41, help="timings per figure (41)")
    p.add_argument("--batch", type=int, default=2000,
                   help="operations per timing, one per prepared codec (2000: the batch "
                   "stays in the CPU caches, and a timing is short enough to be rarely "
                   "interrupted on a shared machine)")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = p.parse_args(argv)
    if not 1 <= args.repeat <= 1000 or not 100 <= args.batch <= 1_000_000:
        p.error("--repeat must be 1..1000 and --batch 100..1000000")
    results = run(args.batch, args.repeat)
    cmd = "python benchmarks/codec.py" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    print(f"Command: `{cmd}`; Python {platform.python_version()}, {platform.machine()}; "
          f"median of {args.repeat} timings of {args.batch} operations each "
          "(minimum in parentheses).\n")
    if C_ERROR:
        print(f"The Cython codec did not load ({C_ERROR}): only the twin is measured.\n")
    print(markdown(results))
    if args.json:
        Path(args.json).write_text(json.dumps({"command": cmd, "batch": args.batch,
                                               "repeat": args.repeat, "results": results},
                                              indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
