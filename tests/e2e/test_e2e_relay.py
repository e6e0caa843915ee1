"""The data plane through a real fastsocks process, on every loop x implementation.

Half-close both ways round, integrity both ways at once, backpressure (bounded
server memory while one side does not read), many concurrent connections, and
no fd leak afterwards, also after every kind of early failure.  Payloads are
checked with SHA-256 at both ends.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import threading
import time

import pytest

from hostile import settle_sockets

MiB = 1 << 20

# Also run on the Cython protocol relay (--relay protocol), not only on what
# --relay auto picks (the splice engine where it is built).
ALSO_PROTOCOL_RELAY = True


def test_half_close(start_proxy, combo, tcp_target, socks, streams):
    """Client sends 8 MiB then SHUT_WR; the target reads to EOF, answers 1 MiB, closes."""
    proxy = start_proxy()
    seen = {}

    def handler(conn: socket.socket) -> None:
        seen["up"] = streams.recv_all(conn)
        answer = streams.Pattern(1 * MiB, b"answer")
        answer.send_all(conn)
        seen["down"] = (answer.sent, answer.sha256.hexdigest())
        conn.shutdown(socket.SHUT_WR)
        # EOF here once the client closed too: the relay forwarded the
        # half-close, kept the other direction, then ended both sides.
        seen["tail"] = conn.recv(1)

    target = tcp_target(handler)
    sock, (rep, _, _) = socks.connect(proxy.address, *target.address, timeout=30)
    with sock:
        assert rep == 0
        up = streams.Pattern(8 * MiB, b"question")
        up.send_all(sock)
        sock.shutdown(socket.SHUT_WR)
        received = streams.recv_all(sock)
    target.join(30)
    assert not target.errors, target.errors
    assert seen["up"] == (8 * MiB, up.sha256.hexdigest())
    assert received == seen["down"]
    assert received[0] == 1 * MiB
    assert seen["tail"] == b""


def test_half_close_target_first(start_proxy, combo, tcp_target, socks, streams):
    """The target speaks first and half-closes; the client then sends 8 MiB and closes."""
    proxy = start_proxy()
    seen = {}

    def handler(conn: socket.socket) -> None:
        banner = streams.Pattern(1 * MiB, b"banner")
        banner.send_all(conn)
        conn.shutdown(socket.SHUT_WR)
        seen["down"] = (banner.sent, banner.sha256.hexdigest())
        seen["up"] = streams.recv_all(conn)

    target = tcp_target(handler)
    sock, (rep, _, _) = socks.connect(proxy.address, *target.address, timeout=30)
    with sock:
        assert rep == 0
        received = streams.recv_all(sock)  # EOF arrives while our direction is open
        up = streams.Pattern(8 * MiB, b"late")
        up.send_all(sock)
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b""
    target.join(30)
    assert not target.errors, target.errors
    assert received == seen["down"]
    assert received[0] == 1 * MiB
    assert seen["up"] == (8 * MiB, up.sha256.hexdigest())


def test_integrity_both_ways(start_proxy, combo, both_ways):
    """64 MiB each way at the same time; SHA-256 equal at both ends."""
    both_ways(start_proxy().address, 64 * MiB)


def _wait_stalled(stream, proxy, limit: float = 20.0) -> tuple[int, int]:
    """Wait until ``stream`` has sent nothing for 0.7 s: (bytes sent, peak server RSS in KiB)."""
    deadline = time.monotonic() + limit
    last, last_change = -1, time.monotonic()
    peak = proxy.rss_kib()
    while time.monotonic() < deadline:
        peak = max(peak, proxy.rss_kib())
        if stream.sent != last:
            last, last_change = stream.sent, time.monotonic()
        elif time.monotonic() - last_change > 0.7:
            break
        time.sleep(0.05)
    return stream.sent, max(peak, proxy.rss_kib())


@pytest.mark.parametrize("reader", ["client", "target"])
def test_backpressure_bounds_memory(start_proxy, combo, tcp_target, socks, streams, reader):
    """One side does not read while the other offers 200 MiB: the sender stalls,
    the server's RSS stays flat; then the reader reads and gets everything intact."""
    total = 200 * MiB
    proxy = start_proxy()
    flood = streams.Pattern(total, b"flood")
    finished = threading.Event()
    start_reading = threading.Event()
    seen = {}

    def handler(conn: socket.socket) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        if reader == "client":  # the target floods
            flood.send_all(conn)
            finished.set()
            conn.shutdown(socket.SHUT_WR)
            conn.recv(1)  # until the client closes
        else:  # the target is the slow reader
            assert start_reading.wait(30)
            seen["up"] = streams.recv_all(conn)

    target = tcp_target(handler)
    sock, (rep, _, _) = socks.connect(proxy.address, *target.address, timeout=60)
    with sock:
        assert rep == 0
        target.wait_accepted(1)
        rss_before = proxy.rss_kib()
        if reader == "client":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        else:

            def send() -> None:
                flood.send_all(sock)
                finished.set()
                sock.shutdown(socket.SHUT_WR)

            sender = streams.Thread(send)
        stalled_at, peak = _wait_stalled(flood, proxy)
        assert not finished.is_set(), "the whole flood was absorbed: no backpressure"
        assert stalled_at < total // 2, f"the sender got {stalled_at} bytes out before stalling"
        growth_mib = (peak - rss_before) / 1024
        assert growth_mib < 20, f"server RSS grew by {growth_mib:.1f} MiB with {stalled_at} bytes offered"
        # Now the reader reads: everything arrives, intact.
        if reader == "client":
            sock.settimeout(60)
            received = streams.recv_all(sock)
        else:
            start_reading.set()
            sender.result(60)
            assert sock.recv(1) == b""  # the target closed after reading to EOF
    target.join(30)
    assert not target.errors, target.errors
    assert finished.is_set()
    if reader == "client":
        assert received == (total, flood.sha256.hexdigest())
    else:
        assert seen["up"] == (total, flood.sha256.hexdigest())


def test_many_concurrent_connections_and_no_fd_leak(start_proxy, combo, echo_target, socks):
    """200 concurrent clients each echo a random payload; the fds return to baseline."""
    count = 200
    proxy = start_proxy()
    target = echo_target

    # Warm up (lazily created loop resources), then take the baseline.
    sock, (rep, _, _) = socks.connect(proxy.address, *target.address)
    with sock:
        assert rep == 0
        sock.sendall(b"warm-up")
        assert socks.recv_exact(sock, 7) == b"warm-up"
    time.sleep(0.2)
    baseline = proxy.fds()
    target.join(5)

    request = socks.request(0x01, *target.address)

    async def one(index: int) -> None:
        payload = os.urandom(1024 + index * 97)
        reader, writer = await asyncio.open_connection(*proxy.address)
        try:
            # Greeting, request and payload in one write: the server must
            # keep the bytes after the request for the target.
            writer.write(b"\x05\x01\x00" + request + payload)
            assert await reader.readexactly(2) == b"\x05\x00"
            reply = await reader.readexactly(10)
            assert reply[:4] == b"\x05\x00\x00\x01", reply
            assert await reader.readexactly(len(payload)) == payload
            writer.write_eof()
            assert await reader.read() == b""
        finally:
            writer.close()
            await writer.wait_closed()

    async def main() -> None:
        results = await asyncio.wait_for(
            asyncio.gather(*(one(i) for i in range(count)), return_exceptions=True), 60
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, f"{len(errors)} of {count} failed, first: {errors[0]!r}"

    asyncio.run(main())
    assert len(target.peers) == count + 1
    target.join(20)
    assert not target.errors, target.errors
    # Sockets back to the baseline; pipes within the splice engine's pool
    # (a direction switches to splice only once it carries bulk).
    settle_sockets(proxy, baseline)


def test_no_fd_leak_after_failures(start_proxy, combo, echo_target, tcp_target, closed_port, blackhole, socks):
    """Every way a connection can end early gives its fds back."""
    proxy = start_proxy("--handshake-timeout", "1", "--connect-timeout", "1")
    sock, (rep, _, _) = socks.connect(proxy.address, *echo_target.address)
    with sock:
        assert rep == 0
    time.sleep(0.2)
    baseline = proxy.fds()

    # Failure replies: refused, unencodable name, unknown command, no method.
    sock, (rep, _, _) = socks.connect(proxy.address, "127.0.0.1", closed_port)
    with sock:
        assert rep == 0x05
    sock, (rep, _, _) = socks.connect(proxy.address, "a" * 64 + ".test", 80)
    with sock:
        assert rep == 0x04
    for data, expected in [
        (b"\x05\x01\x00\x05\x09\x00\x01\x7f\x00\x00\x01\x00\x50", b"\x05\x00\x05\x07"),
        (b"\x05\x01\x80", b"\x05\xff"),
        (b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00", b""),  # SOCKS4: not ours
    ]:
        sock = socks.open(proxy.address)
        with sock:
            sock.sendall(data)
            assert socks.read_until_closed(sock).startswith(expected)
    # Clients that go away: mid-greeting, mid-request, with a reset.
    for data in (b"", b"\x05", b"\x05\x01\x00\x05\x01\x00\x01\x7f"):
        sock = socks.open(proxy.address)
        with sock:
            sock.sendall(data)
    sock = socks.open(proxy.address)
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(b"\x05\x01\x00")
    # A client silent until the handshake timeout.
    silent = socks.open(proxy.address)
    # A client that leaves while the connect is pending (black hole, 1 s).
    pending = socks.open(proxy.address)
    pending.sendall(b"\x05\x01\x00" + socks.request(0x01, *blackhole))
    assert socks.recv_exact(pending, 2) == b"\x05\x00"
    pending.close()
    # Relays that end abruptly: client reset, target closes at once.
    sock, (rep, _, _) = socks.connect(proxy.address, *echo_target.address)
    with sock:
        assert rep == 0
        sock.sendall(b"x")
        assert sock.recv(1) == b"x"
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    quitter = tcp_target(lambda conn: None)
    sock, (rep, _, _) = socks.connect(proxy.address, *quitter.address)
    with sock:
        assert rep == 0
        assert socks.read_until_closed(sock) == b""
    with silent:
        assert socks.read_until_closed(silent) == b""
    # The pending connect times out about now (1 s after it started).
    settle_sockets(proxy, baseline)
    # and the server still works
    sock, (rep, _, _) = socks.connect(proxy.address, *echo_target.address)
    with sock:
        assert rep == 0
        sock.sendall(b"still here")
        assert socks.recv_exact(sock, 10) == b"still here"
