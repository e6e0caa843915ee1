"""Domain names with a NUL or another control byte, through a real fastsocks (issue 17).

RFC 1928 §5 sends a name as a length octet and the name, "no terminating
NUL octet".  A name with a NUL (or another C0 control, or DEL) names no
host; before the codec refused it, it reached the resolver, which takes C
strings: c-ares looked up ``internal`` for ``internal\\0.example.com`` and
the proxy dialled that, and the raw byte went into the log.  Now the codec
refuses it: a CONNECT, BIND or UDP ASSOCIATE gets X'04' (as a name that does
not resolve) and a closed connection with one INFO line; a datagram is
dropped and counted in ``fastsocks_udp_dropped_total``, with at most one
INFO line per association, on both datagram paths.  Nothing is looked up.

The DNS server is tests/dnsserver.py on loopback, and knows ``internal`` (and
``good``, the control) as 127.0.0.1, where the echo targets listen, so a name
that got through truncated would be answered and dialled.
"""

from __future__ import annotations

import re
import socket
import struct
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from builds import UDP_PATH_ARGS
from dnsserver import DnsServer
from launcher import FastsocksProcess
from procs import UdpEcho

HOST_UNREACHABLE = 0x04
# What each would have become as a C string, or to a terminal.
NAMES = [b"internal\x00.example.com", b"internal\x00", b"\x00", b"internal\n.example.com",
         b"internal\r\nX-Injected: 1", b"\x1b[2Jinternal", b"internal\x7f"]


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    server = DnsServer({"internal": [("A", "127.0.0.1", 60)], "good": [("A", "127.0.0.1", 60)],
                        "good.example": [("A", "127.0.0.1", 60)]})
    try:
        yield server
    finally:
        server.close()


def _request(command: int, name: bytes, port: int) -> bytes:
    return (bytes((0x05, command, 0x00, 0x03, len(name))) + name + struct.pack(">H", port))


def _datagram(name: bytes, port: int, payload: bytes) -> bytes:
    return b"\x00\x00\x00\x03" + bytes((len(name),)) + name + struct.pack(">H", port) + payload


def _no_raw_controls(log: str) -> None:
    bad = [line for line in log.splitlines()
           if any(ord(ch) < 0x20 and ch != "\t" or ord(ch) == 0x7F for ch in line)]
    assert not bad, bad
    assert "Traceback" not in log and " ERROR " not in log, log


def _metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
        body = response.read().decode()
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _metrics_url(server: FastsocksProcess) -> str:
    match = re.search(r"metrics on (http://\S+/metrics)", server.log)
    assert match, server.log
    return match.group(1)


@pytest.mark.parametrize("resolver", ["c-ares", "system"])
def test_requests_with_control_bytes_get_x04(fastsocks_server: Callable[..., FastsocksProcess],
                                             socks: Any, dns: DnsServer, echo_target: Any,
                                             tmp_path: Path, resolver: str) -> None:
    access = tmp_path / "access.log"
    # The system resolver reads resolv.conf: no --dns-server for it.
    dns_args = ("--dns-server", dns.address) if resolver == "c-ares" else ()
    server = fastsocks_server(*dns_args, "--dns-resolver", resolver, "--access-log", str(access))
    count = 0
    for command in (0x01, 0x02, 0x03):
        for name in NAMES:
            sock = socks.open(server.address)
            with sock:
                sock.sendall(b"\x05\x01\x00")
                assert socks.recv_exact(sock, 2) == b"\x05\x00"
                sock.sendall(_request(command, name, echo_target.port) + b"after")
                rep, _, _ = socks.read_reply(sock)
                assert rep == HOST_UNREACHABLE, (command, name)
                assert socks.read_until_closed(sock) == b""
            count += 1
    assert dns.queries == {}  # nothing was looked up, truncated or not
    assert echo_target.peers == []  # nor dialled
    # The proxy keeps serving (a plain name through the same resolver).
    good = "good.example" if resolver == "c-ares" else "localhost"
    sock, (rep, _, _) = socks.connect(server.address, good, echo_target.port)
    with sock:
        assert rep == 0
        sock.sendall(b"ping")
        assert socks.recv_exact(sock, 4) == b"ping"
    deadline = time.monotonic() + 5
    while server.log.count("bad request: domain name contains control byte") < count:
        assert time.monotonic() < deadline, server.log
        time.sleep(0.05)
    log = server.log
    lines = [line for line in log.splitlines() if "bad request" in line]
    assert len(lines) == count, lines  # one line each
    assert all(" INFO " in line for line in lines), lines
    assert "bad request: domain name contains control byte 0x00" in log
    assert "bad request: domain name contains control byte 0x0a" in log
    assert "bad request: domain name contains control byte 0x1b" in log
    assert "bad request: domain name contains control byte 0x7f" in log
    _no_raw_controls(log)
    server.stop()
    records = access.read_text().splitlines()
    assert sum("protocol_error" in line for line in records) == count, records
    assert not any("client_reset" in line for line in records), records


def test_datagrams_with_control_bytes_dropped_and_counted(
        fastsocks_server: Callable[..., FastsocksProcess], socks: Any, dns: DnsServer,
        udp_echo: UdpEcho, udp_path: str) -> None:
    """Three of each name: on the C path a name goes up to Python every time
    (only IP literals are decided in C), where the codec drops it."""
    server = fastsocks_server("--dns-server", dns.address, "--dns-resolver", "c-ares",
                              "--metrics", "127.0.0.1:0", "--log-level", "debug",
                              *UDP_PATH_ARGS[udp_path])
    url = _metrics_url(server)
    before = _metric(url, "fastsocks_udp_dropped_total")
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(3)
    ctrl = socks.open(server.address)
    sent = 0
    with ctrl, udp:
        ctrl.sendall(b"\x05\x01\x00")
        assert socks.recv_exact(ctrl, 2) == b"\x05\x00"
        ctrl.sendall(socks.request(0x03, "127.0.0.1", udp.getsockname()[1]))
        rep, relay_host, relay_port = socks.read_reply(ctrl)
        assert rep == 0
        relay = ("127.0.0.1" if relay_host == "0.0.0.0" else relay_host, relay_port)
        udp.sendto(_datagram(b"127.0.0.1", udp_echo.port, b"first"), relay)
        assert udp.recv(65535).endswith(b"first")
        for _ in range(3):
            for name in NAMES:
                udp.sendto(_datagram(name, udp_echo.port, b"dropped"), relay)
                sent += 1
        # A fragment with such a name is no different.
        udp.sendto(b"\x00\x00\x01\x03\x04a\x00bc" + struct.pack(">H", udp_echo.port) + b"x",
                   relay)
        sent += 1
        udp.sendto(_datagram(b"good", udp_echo.port, b"after"), relay)
        assert udp.recv(65535).endswith(b"after")  # in order: the dropped ones came first
    assert udp_echo.received == [b"first", b"after"]
    assert ("datagrams in C" in server.log) == (udp_path == "c")
    # Counted when the association ends.
    deadline = time.monotonic() + 10
    while _metric(url, "fastsocks_udp_dropped_total") - before < sent:
        assert time.monotonic() < deadline, (_metric(url, "fastsocks_udp_dropped_total"), sent)
        time.sleep(0.1)
    assert _metric(url, "fastsocks_udp_dropped_total") - before == sent
    assert {name for name, _ in dns.queries} == {"good"}  # nothing else was looked up
    log = server.log
    lines = [line for line in log.splitlines()
             if "dropped: domain name contains" in line and " INFO " in line]
    assert len(lines) == 1, lines  # one INFO line per association (the rest at DEBUG)
    assert "UDP from 127.0.0.1 dropped: domain name contains control byte 0x00" in lines[0]
    _no_raw_controls(log)
