"""Load against a real fastsocks process: thousands of clients at once (issue 8).

A thousand slowloris clients next to a normal one, four thousand idle relayed
connections through one process (ten thousand over two, ``soak``), each run on
both relays.  Each test checks what the load took from the server (its
descriptors, its memory, its log) and gave back once the clients left.  They
take minutes: ``pytest tests/load`` runs them alone, ``-m soak`` adds the long
variants.  Measured figures are printed with the prefix ``adversarial:``
(``pytest -s`` shows them).
"""

from __future__ import annotations

import asyncio
import resource
import time
from typing import Any, Callable

import pytest

from hostile import (HANDSHAKE_TIMEOUT, PIPE_POOL_FDS, baseline, close_writer, say,
                     socks_connect)
from launcher import FastsocksProcess
from procs import EchoProcess

# Thousands of sockets in this process too: raise its descriptor limit.
pytestmark = pytest.mark.usefixtures("raise_nofile")


# ==================================================================================
# Slowloris
# ==================================================================================

SLOW_GREETING = b"\x05\xff" + bytes(range(255))  # 257 bytes: never done at 2 bytes/s


async def _slowloris(proxy: FastsocksProcess, echo: tuple[str, int], clients: int) -> dict[str, Any]:
    cut: list[float] = []
    problems: list[str] = []
    limit = HANDSHAKE_TIMEOUT + 10.0

    async def slow(kind: str) -> None:
        # Timed from before the connect: the server's clock starts at its
        # accept, which is after this, so a cut can never look early (the
        # client's own loop may resume long after the kernel connected).
        start = time.monotonic()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(*proxy.address), 10)
        except (OSError, asyncio.TimeoutError) as exc:
            problems.append(f"{kind}: could not connect: {exc!r}")
            return
        try:
            if kind == "silent":
                data = await asyncio.wait_for(reader.read(1), limit)
            else:  # dribble one byte of a long greeting every 0.5 s
                data = None
                for i in range(len(SLOW_GREETING)):
                    try:
                        writer.write(SLOW_GREETING[i:i + 1])
                    except (ConnectionError, RuntimeError):
                        break
                    try:
                        data = await asyncio.wait_for(reader.read(1), 0.5)
                        break
                    except asyncio.TimeoutError:
                        if time.monotonic() - start > limit:
                            raise
            cut.append(time.monotonic() - start)
            if data:
                problems.append(f"{kind}: got {data!r} instead of a close")
        except ConnectionError:
            cut.append(time.monotonic() - start)
        except asyncio.TimeoutError:
            problems.append(f"{kind}: still open after {limit} s")
        finally:
            await close_writer(writer)

    latencies: list[float] = []
    failures: list[str] = []
    done = asyncio.Event()

    async def normal() -> None:
        n = 0
        while not done.is_set() and n < 2000:
            n += 1
            t0 = time.monotonic()
            try:
                reader, writer, rep = await socks_connect(proxy.address, echo, timeout=10)
                try:
                    assert rep == 0, rep
                    writer.write(b"ping %d" % n)
                    assert await asyncio.wait_for(reader.readexactly(len(b"ping %d" % n)), 10) == b"ping %d" % n
                finally:
                    await close_writer(writer)
            except (OSError, AssertionError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
                failures.append(repr(exc))
            latencies.append(time.monotonic() - t0)
            await asyncio.sleep(0.02)

    kinds = ["silent", "dribble"] * (clients // 2)
    normal_task = asyncio.ensure_future(normal())
    # Open them in waves so the accept queue is never the limit being tested.
    tasks = []
    for i in range(0, len(kinds), 100):
        tasks += [asyncio.ensure_future(slow(k)) for k in kinds[i:i + 100]]
        await asyncio.sleep(0.01)
    peak_sockets = 0
    while not all(t.done() for t in tasks):
        peak_sockets = max(peak_sockets, proxy.fds()["socket"])
        await asyncio.sleep(0.25)
    await asyncio.gather(*tasks)
    done.set()
    await normal_task
    return dict(cut=cut, problems=problems, latencies=latencies, failures=failures,
                peak_sockets=peak_sockets)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _run_slowloris(hostile_server: Callable[..., FastsocksProcess], echo: EchoProcess, relay: str,
                   clients: int) -> None:
    # The handshake quota (--max-handshakes, 1000 by default) would refuse
    # these clients once they fill it, and a normal one beside them: that
    # defence is tests/e2e/test_floods.py's.  Here it has room, so what cuts
    # them is the handshake timeout (under pressure past half the quota, its
    # 2 s pressure timeout, the same as HANDSHAKE_TIMEOUT).
    proxy = hostile_server("--relay", relay, "--handshake-timeout", str(HANDSHAKE_TIMEOUT),
                           "--max-handshakes", str(4 * clients))
    base = proxy.fds()
    out = asyncio.run(_slowloris(proxy, echo.address, clients))
    after = proxy.wait_sockets(base["socket"])
    cut, lat = out["cut"], out["latencies"]
    say(f"slowloris {relay}: {clients} slow clients (half silent, half 1 byte/0.5 s), "
        f"handshake timeout {HANDSHAKE_TIMEOUT} s: cut after min {min(cut):.2f} / median "
        f"{_percentile(cut, 0.5):.2f} / max {max(cut):.2f} s; peak server sockets "
        f"{out['peak_sockets']}; meanwhile {len(lat)} normal handshakes+echo, "
        f"p50 {_percentile(lat, 0.5) * 1000:.1f} ms, p99 {_percentile(lat, 0.99) * 1000:.1f} ms, "
        f"max {max(lat) * 1000:.1f} ms, {len(out['failures'])} failed")
    assert not out["problems"], out["problems"][:10]
    assert len(cut) == clients
    # Cut at the handshake timeout: not before it, and not long after it.
    assert min(cut) >= HANDSHAKE_TIMEOUT - 0.1, min(cut)
    assert max(cut) <= HANDSHAKE_TIMEOUT + 3.0, max(cut)
    # The slow ones were really all there at once.
    assert out["peak_sockets"] >= clients * 0.9 + base["socket"], out["peak_sockets"]
    # The normal client kept getting through, never waiting out a timeout.
    assert not out["failures"], out["failures"][:10]
    assert len(lat) >= 10
    assert max(lat) < HANDSHAKE_TIMEOUT, max(lat)
    assert after["socket"] <= base["socket"], (base, after)
    assert proxy.alive()


def test_slowloris(hostile_server, echo_process, relay):
    """1 000 slowloris clients: all cut at the handshake timeout, normal handshakes unharmed."""
    _run_slowloris(hostile_server, echo_process, relay, 1000)


@pytest.mark.soak
def test_slowloris_long(hostile_server, echo_process, relay):
    """3 000 slowloris clients (the server holds 3 000 sockets at once)."""
    _run_slowloris(hostile_server, echo_process, relay, 3000)


# ==================================================================================
# Many idle relayed connections
# ==================================================================================


async def _open_idle(proxy: tuple[str, int], target: tuple[str, int], n: int,
                     concurrency: int = 200) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    sem = asyncio.Semaphore(concurrency)
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    errors: list[str] = []

    async def one() -> None:
        async with sem:
            try:
                reader, writer, rep = await socks_connect(proxy, target, timeout=30)
            except (OSError, AssertionError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
                errors.append(repr(exc))
                return
            conns.append((reader, writer))
            if rep != 0:
                errors.append(f"REP {rep}")

    await asyncio.gather(*(one() for _ in range(n)))
    if errors:
        await asyncio.gather(*(close_writer(w) for _, w in conns))
        raise AssertionError(f"{len(errors)} of {n} connections failed: {errors[:5]}")
    # A sample proves the relays really carry bytes.
    for i, (reader, writer) in enumerate(conns[:: max(1, n // 50)]):
        writer.write(b"x%d" % i)
        assert await asyncio.wait_for(reader.readexactly(len(b"x%d" % i)), 10) == b"x%d" % i
    return conns


def _idle_round(proxies: list[FastsocksProcess], target: tuple[str, int], per_proxy: int) -> dict[str, Any]:
    """Open ``per_proxy`` idle relayed connections through each proxy, measure, close all."""

    async def run() -> dict[str, Any]:
        t0 = time.monotonic()
        conns = []
        for proxy in proxies:
            conns.append(await _open_idle(proxy.address, target, per_proxy))
        opened = time.monotonic() - t0
        await asyncio.sleep(0.5)
        held = [(p.fds(), p.rss_kib()) for p in proxies]
        for group in conns:
            await asyncio.gather(*(close_writer(w) for _, w in group))
        return dict(opened=opened, held=held)

    return asyncio.run(run())


def _run_idle(hostile_server: Callable[..., FastsocksProcess], echo: EchoProcess, relay: str, n: int,
              processes: int) -> None:
    per_proxy = n // processes
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    # Two fds per relayed connection in the server, plus its own few.
    assert 2 * per_proxy + 100 <= hard, f"{per_proxy} connections need a RLIMIT_NOFILE above {hard}"
    proxies = [hostile_server("--relay", relay, "--idle-timeout", "0") for _ in range(processes)]
    base = [baseline(proxy, echo.address) for proxy in proxies]
    base_rss = [p.rss_kib() for p in proxies]
    # Three rounds: the first grows the allocator's pools to the load's size
    # (after it RSS stays up, it is not given back); a leak shows as growth
    # from the second round to the third.
    rounds = []
    for _ in range(3):
        r = _idle_round(proxies, echo.address, per_proxy)
        r["after"] = [p.wait_sockets(b["socket"], timeout=30) for p, b in zip(proxies, base)]
        r["rss_after"] = [p.rss_kib() for p in proxies]
        rounds.append(r)
    for i, proxy in enumerate(proxies):
        held_fds, held_rss = rounds[0]["held"][i]
        per_conn = (held_rss - base_rss[i]) * 1024 / per_proxy
        say(f"idle {relay} process {i + 1}/{processes}: {per_proxy} relayed connections open in "
            f"{rounds[0]['opened']:.1f} s; fds {dict(base[i])} -> {dict(held_fds)} held -> "
            f"{dict(rounds[-1]['after'][i])} after the last round; RSS {base_rss[i] / 1024:.1f} MiB "
            f"-> {held_rss / 1024:.1f} MiB held (~{per_conn:.0f} B per connection) -> after each "
            f"round: " + ", ".join(f"{r['rss_after'][i] / 1024:.1f}" for r in rounds) + " MiB")
        # Every connection really was relayed (two sockets each) ...
        assert held_fds["socket"] >= base[i]["socket"] + 2 * per_proxy, held_fds
        # ... in at most 3 KiB each through the engine, all of them opened in
        # a burst, as issue 15 holds it to (before the handshake's buffer was
        # cut to size at its report, ~3.4 KiB: a burst left 1088 bytes a
        # connection in the engine thread's heap).
        if relay == "splice":
            assert per_conn <= 3 * 1024, f"{per_conn:.0f} B per idle connection"
        # ... and left nothing behind: sockets back to the baseline, no pipe
        # beyond the engine's pool.
        for r in rounds:
            assert r["after"][i]["socket"] <= base[i]["socket"], (base[i], r["after"][i])
            assert r["after"][i]["pipe"] <= base[i]["pipe"] + PIPE_POOL_FDS, r["after"][i]
        # Memory: the third round of the same load needs no more than the second
        # (a leak would grow with every round).  Allocator noise between rounds
        # was measured at up to 1.7 MiB for 4 000 connections on the protocol
        # relay (flat over six rounds); 4 MiB or a quarter of the load's peak
        # lets a leak of ~1 KiB per connection through, not more.
        peak = held_rss - base_rss[i]
        growth = rounds[2]["rss_after"][i] - rounds[1]["rss_after"][i]
        assert growth <= max(4096, peak // 4), (
            f"RSS grew {growth} KiB from the 2nd to the 3rd round of {per_proxy} connections "
            f"(peak {peak} KiB): " + ", ".join(str(r["rss_after"][i]) for r in rounds))
        assert proxy.alive()


def test_idle_connections(hostile_server, echo_process, relay):
    """4 000 concurrent idle relayed connections through one process, then all closed."""
    _run_idle(hostile_server, echo_process, relay, 4000, processes=1)


@pytest.mark.soak
def test_idle_connections_10k(hostile_server, echo_process, relay):
    """10 000 concurrent idle relayed connections over two processes (20 000 server
    fds: over one process's 20 000 hard limit with its own), then all closed."""
    _run_idle(hostile_server, echo_process, relay, 10000, processes=2)
