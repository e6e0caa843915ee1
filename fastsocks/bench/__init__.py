"""``fastsocks bench``: a load generator for SOCKS5 servers (and for fastsocks).

Three modes, each through a SOCKS5 server (``--proxy``) or, without one,
straight to the target, which is the reference a proxy is compared with:

``throughput``
    ``--streams N`` TCP streams CONNECT through the proxy to a sink and send
    as fast as they can for ``--duration`` seconds.  Each stream is a blocking
    socket in its own thread sending one preallocated 1 MiB buffer with
    ``sock.send`` (the GIL is released during the system call, so the Python
    generator is not the bottleneck).  Reports Gbit/s, counted from the bytes
    the generator handed to the kernel.
``handshake``
    ``--concurrency C`` workers each loop: connect, SOCKS5 greeting (and
    RFC 1929 username/password if given), CONNECT to an echo target, send 64 B,
    read the 64 B back, close.  Reports handshakes/s and p50/p99 latency (of
    the whole cycle) in ms.  The default engine on Linux is a single-threaded
    edge-triggered epoll loop with a small state machine per connection: it
    costs a third to a half of the CPU per handshake of uvloop's ``sock_*``
    coroutines (measured; benchmarks/README.md), so the generator keeps well
    ahead of the servers it measures.  ``--engine uvloop|asyncio|threads``
    select the others.
``idle``
    Opens ``--connections N`` relayed connections, does one 1-byte echo round
    trip on each, and holds them idle for ``--duration`` seconds.
``udp-rtt``
    ``--concurrency N`` UDP ASSOCIATE associations (RFC 1928 §7), each with
    its own UDP socket, each keeping one 64-byte datagram (``--size``) in
    flight to a UDP echo target: send, wait for the echo, send the next.
    Reports round trips/s and p50/p99 latency in µs.  A datagram not echoed
    within ``UDP_RTT_TIMEOUT`` is counted lost and the next one is sent.  One
    thread drives every socket with a level-triggered epoll loop.
``udp-oneway``
    One association sends 1,200-byte datagrams (``--size``) to a UDP sink for
    ``--duration`` seconds: as fast as a blocking ``send`` loop goes
    (unpaced), or ``--rate N`` datagrams per second (paced in small bursts).
    Reports datagrams/s sent and received by the sink, and the loss, split
    where /proc/net/udp can tell (the sink's socket, the proxy's relay socket).

Without ``--target`` the tool starts its own sink or echo server on 127.0.0.1
port 0.  For the TCP modes it runs in a thread of this process by default
(``--local-target process`` puts it in a child process instead): on the
project's 2-core machine the in-process sink was as fast or faster (direct,
1 stream: median 17.5 Gbit/s in a thread, 14.5 in a long-lived child
process, 8.6 in a freshly started one; through fastsocks no difference
beyond the noise), because the sink's recv_into releases the GIL.  For the
UDP modes the target runs in a child process by default: a UDP echo in a
thread takes the GIL for every datagram from the generator's epoll loop,
and measured slower (direct, 6 rounds of 1.5 s: 64-byte round trips at c=32
median 42,300/s in a thread, 58,900/s in a process; one-way 69,500 and
82,300 datagrams/s, within the noise there).
benchmarks/README.md has the numbers.

With ``--server-pid PID`` (Linux) it also reads the server's CPU time and RSS
from /proc (the process and all its descendants) and reports server CPU-s per
GiB, CPU-µs per handshake and KiB per idle connection, CPU-µs per UDP round
trip and per datagram.

The SOCKS5 client here is written by hand with plain bytes (RFC 1928 §3-§6,
RFC 1929 §2): small and strict; any deviation raises :class:`SocksError`
naming the step and, for a failed request, the reply code.

Everything is meant for loopback: every loop is bounded in time and in count.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import ipaddress
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Iterator

from ..net.address import format_peer

__all__ = [
    "SocksError",
    "Config",
    "socks5_connect",
    "open_connection",
    "LocalTarget",
    "ProcessTree",
    "run",
    "main",
]

BUFFER_SIZE = 1 << 20  # the 1 MiB preallocated send / receive buffer
PAYLOAD_SIZE = 64  # bytes echoed per handshake
IO_TIMEOUT = 10.0  # seconds any single blocking operation may take
MAX_HANDSHAKES = 50_000_000  # hard bound on loop iterations, whatever the duration
MAX_STREAMS = 256
MAX_CONCURRENCY = 4096
MAX_CONNECTIONS = 9000  # idle mode: the generator holds one fd per connection
MAX_DURATION = 3600.0
ENGINES = ("auto", "epoll", "uvloop", "asyncio", "threads")
MODES = ("throughput", "handshake", "idle", "udp-rtt", "udp-oneway")
GiB = 1 << 30

UDP_RTT_SIZE = 64  # udp-rtt: payload bytes per datagram (after the SOCKS UDP header)
UDP_ONEWAY_SIZE = 1200  # udp-oneway: payload bytes per datagram
UDP_MAX_SIZE = 65000  # payload, leaving room for a SOCKS UDP header under 65,507
UDP_RTT_TIMEOUT = 0.5  # s: an echo not back by then is counted lost
UDP_MAX_ASSOCIATIONS = 1024  # udp-rtt: two fds each in the generator
UDP_MAX_RATE = 10_000_000  # udp-oneway --rate bound (datagrams/s)
UDP_MAX_DATAGRAMS = 2_000_000_000  # hard bound on datagrams sent in one run
UDP_SOCKET_BUFFER = 4 << 20  # SO_RCVBUF/SO_SNDBUF of the targets and the generator
UDP_PACE_BURST = 256  # paced sending: at most this many datagrams back to back
# The UDP sink answers a statistics query (sent straight to it, not through a
# proxy): MAGIC + reply port (2 bytes) + nonce (8) -> MAGIC_R + nonce +
# datagrams (8) + bytes (8).  Control datagrams are not counted.
UDP_STATS_MAGIC = b"FSBENCH-SINK-STATS?"
UDP_STATS_REPLY = b"FSBENCH-SINK-STATS!"
UDP_STATS_QUERY_LEN = len(UDP_STATS_MAGIC) + 2 + 8

# -- the SOCKS5 client ------------------------------------------------------------

REPLY_MESSAGES = {  # RFC 1928 §6
    0x00: "succeeded",
    0x01: "general SOCKS server failure",
    0x02: "connection not allowed by ruleset",
    0x03: "network unreachable",
    0x04: "host unreachable",
    0x05: "connection refused",
    0x06: "TTL expired",
    0x07: "command not supported",
    0x08: "address type not supported",
}


class SocksError(Exception):
    """The SOCKS5 server answered something other than success.

    ``reply`` is the RFC 1928 REP code for a failed request (e.g. 5 for
    "connection refused"), else None; ``step`` names the exchange that failed
    (greeting, auth, request, reply).
    """

    def __init__(self, step: str, message: str, reply: int | None = None) -> None:
        self.step = step
        self.reply = reply
        super().__init__(f"SOCKS5 {step}: {message}")


def encode_address(host: str, port: int) -> bytes:
    """ATYP DST.ADDR DST.PORT (RFC 1928 §4, §5): IPv4, IPv6 or a domain name."""
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} out of range")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        name = host.encode("idna")
        if not 0 < len(name) <= 255:
            raise ValueError(f"host name {host!r} must be 1 to 255 bytes") from None
        return b"\x03" + bytes((len(name),)) + name + struct.pack(">H", port)
    if ip.version == 4:
        return b"\x01" + ip.packed + struct.pack(">H", port)
    return b"\x04" + ip.packed + struct.pack(">H", port)


def greeting(auth: tuple[str, str] | None) -> bytes:
    """VER NMETHODS METHODS (RFC 1928 §3): no auth, or no auth + username/password."""
    return b"\x05\x01\x00" if auth is None else b"\x05\x02\x00\x02"


def userpass_request(auth: tuple[str, str]) -> bytes:
    """VER ULEN UNAME PLEN PASSWD (RFC 1929 §2)."""
    user, password = auth[0].encode("utf-8"), auth[1].encode("utf-8")
    if not (0 < len(user) <= 255 and 0 < len(password) <= 255):
        raise ValueError("username and password must each be 1 to 255 bytes (RFC 1929)")
    return b"\x01" + bytes((len(user),)) + user + bytes((len(password),)) + password


def connect_request(host: str, port: int) -> bytes:
    """VER CMD=CONNECT RSV ATYP DST.ADDR DST.PORT (RFC 1928 §4)."""
    return b"\x05\x01\x00" + encode_address(host, port)


def check_method(answer: bytes, auth: tuple[str, str] | None) -> int:
    """The server's method choice (RFC 1928 §3); SocksError unless usable."""
    if answer[0] != 0x05:
        raise SocksError("greeting", f"not a SOCKS5 server (answer {answer.hex()})")
    method = answer[1]
    if method == 0x00:
        return method
    if method == 0x02 and auth is not None:
        return method
    if method == 0xFF:
        raise SocksError("greeting", "no acceptable authentication method (X'FF')"
                         + ("" if auth else "; the server may need --user/--password"))
    raise SocksError("greeting", f"server chose method X'{method:02X}', which was not offered")


def check_auth(answer: bytes) -> None:
    """RFC 1929 §2 status: VER=1, STATUS=0 means success."""
    if answer[0] != 0x01:
        raise SocksError("auth", f"bad username/password reply version {answer.hex()}")
    if answer[1] != 0x00:
        raise SocksError("auth", f"username/password rejected (status {answer[1]})")


def reply_rest(head: bytes, command: str = "CONNECT") -> int:
    """Given the first 5 bytes of a reply, how many more complete it (RFC 1928 §6).

    Raises SocksError for a failure reply (naming ``command``) or a malformed header.
    """
    if head[0] != 0x05:
        raise SocksError("reply", f"bad version in reply {head.hex()}")
    rep = head[1]
    if rep != 0x00:
        message = REPLY_MESSAGES.get(rep, "unassigned reply code")
        raise SocksError("request", f"{command} failed with reply X'{rep:02X}' ({message})", rep)
    if head[2] != 0x00:
        raise SocksError("reply", f"reserved byte is {head[2]:#04x}, not 0")
    atyp = head[3]
    if atyp == 0x01:
        return 4 - 1 + 2
    if atyp == 0x04:
        return 16 - 1 + 2
    if atyp == 0x03:
        return head[4] + 2
    raise SocksError("reply", f"unknown address type {atyp:#04x} in reply")


def parse_bound(head: bytes, rest: bytes) -> tuple[str, int]:
    """BND.ADDR and BND.PORT from a complete success reply."""
    atyp, data = head[3], head[4:] + rest
    if atyp == 0x01:
        host = socket.inet_ntop(socket.AF_INET, data[:4])
    elif atyp == 0x04:
        host = socket.inet_ntop(socket.AF_INET6, data[:16])
    else:
        host = data[1:-2].decode("ascii", "replace")
    return host, struct.unpack(">H", data[-2:])[0]


def _recv_exact(sock: socket.socket, n: int, step: str) -> bytes:
    data = b""
    while len(data) < n:
        try:
            chunk = sock.recv(n - len(data))
        except socket.timeout:
            raise SocksError(step, f"no answer within {sock.gettimeout()} s") from None
        if not chunk:
            raise SocksError(step, f"server closed the connection (after {data!r})")
        data += chunk
    return data


def socks5_connect(sock: socket.socket, host: str, port: int,
                   auth: tuple[str, str] | None = None) -> tuple[str, int]:
    """Negotiate a CONNECT on a connected blocking socket; returns (BND.ADDR, BND.PORT)."""
    sock.sendall(greeting(auth))
    if check_method(_recv_exact(sock, 2, "greeting"), auth) == 0x02:
        assert auth is not None
        sock.sendall(userpass_request(auth))
        check_auth(_recv_exact(sock, 2, "auth"))
    sock.sendall(connect_request(host, port))
    head = _recv_exact(sock, 5, "reply")
    rest = _recv_exact(sock, reply_rest(head), "reply")
    return parse_bound(head, rest)


async def socks5_connect_async(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                               host: str, port: int,
                               auth: tuple[str, str] | None = None) -> None:
    """The same on a non-blocking socket with the loop's ``sock_*`` calls."""
    await loop.sock_sendall(sock, greeting(auth))
    if check_method(await _arecv_exact(loop, sock, 2, "greeting"), auth) == 0x02:
        assert auth is not None
        await loop.sock_sendall(sock, userpass_request(auth))
        check_auth(await _arecv_exact(loop, sock, 2, "auth"))
    await loop.sock_sendall(sock, connect_request(host, port))
    head = await _arecv_exact(loop, sock, 5, "reply")
    await _arecv_exact(loop, sock, reply_rest(head), "reply")


async def _arecv_exact(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int,
                       step: str) -> bytes:
    data = await loop.sock_recv(sock, n)
    while len(data) < n:
        if not data:
            raise SocksError(step, "server closed the connection")
        chunk = await loop.sock_recv(sock, n - len(data))
        if not chunk:
            raise SocksError(step, f"server closed the connection (after {data!r})")
        data += chunk
    if not data:
        raise SocksError(step, "server closed the connection")
    return data


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def open_connection(proxy: tuple[str, int] | None, target: tuple[str, int],
                    auth: tuple[str, str] | None = None,
                    timeout: float = IO_TIMEOUT) -> socket.socket:
    """A blocking socket to ``target``, through the SOCKS5 ``proxy`` if given."""
    first = proxy or target
    sock = socket.socket(_family(first[0]), socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.connect(first)
        if proxy is not None:
            socks5_connect(sock, target[0], target[1], auth)
    except BaseException:
        sock.close()
        raise
    return sock


# -- the UDP ASSOCIATE client (RFC 1928 §7) -------------------------------------------


def udp_associate_request(host: str, port: int) -> bytes:
    """VER CMD=UDP ASSOCIATE RSV ATYP DST.ADDR DST.PORT: where the client sends from."""
    return b"\x05\x03\x00" + encode_address(host, port)


def udp_header(host: str, port: int) -> bytes:
    """RSV FRAG=0 ATYP DST.ADDR DST.PORT, the header of every datagram (RFC 1928 §7)."""
    return b"\x00\x00\x00" + encode_address(host, port)


def parse_udp_reply(data: bytes) -> tuple[str, int, bytes]:
    """(source host, port, payload) of a datagram from the relay; SocksError if malformed."""
    if len(data) < 4 or data[0] or data[1]:
        raise SocksError("udp", f"bad UDP header {data[:4].hex()}")
    if data[2]:
        raise SocksError("udp", f"fragmented reply (FRAG {data[2]}) not expected here")
    atyp = data[3]
    if atyp == 0x01:
        end = 4 + 4
        host = socket.inet_ntop(socket.AF_INET, data[4:end]) if len(data) >= end else ""
    elif atyp == 0x04:
        end = 4 + 16
        host = socket.inet_ntop(socket.AF_INET6, data[4:end]) if len(data) >= end else ""
    elif atyp == 0x03 and len(data) > 4:
        end = 5 + data[4]
        host = data[5:end].decode("ascii", "replace")
    else:
        raise SocksError("udp", f"unknown address type {atyp:#04x} in a UDP header")
    if len(data) < end + 2:
        raise SocksError("udp", "datagram shorter than its UDP header")
    return host, struct.unpack(">H", data[end:end + 2])[0], data[end + 2:]


class UdpPath:
    """A UDP socket that reaches ``target`` directly or through a SOCKS5 association.

    ``sock`` is connected to the target (direct) or to the relay address of
    the association (BND.ADDR/BND.PORT, with an unspecified BND.ADDR replaced
    by the proxy's address, as clients do); ``header`` is what every datagram
    must start with (empty when direct); ``control`` is the association's TCP
    connection, which keeps it alive; ``relay`` is the relay address.
    """

    def __init__(self, proxy: tuple[str, int] | None, target: tuple[str, int],
                 auth: tuple[str, str] | None = None, timeout: float = IO_TIMEOUT) -> None:
        self.control: socket.socket | None = None
        self.header = b""
        self.reply_header = b""
        self.relay: tuple[str, int] | None = None
        first = proxy or target
        self.sock = socket.socket(_family(first[0]), socket.SOCK_DGRAM)
        try:
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                try:
                    self.sock.setsockopt(socket.SOL_SOCKET, option, UDP_SOCKET_BUFFER)
                except OSError:
                    pass
            self.sock.bind((first[0], 0))
            if proxy is None:
                self.sock.connect(target)
                return
            self.control = socket.socket(_family(proxy[0]), socket.SOCK_STREAM)
            self.control.settimeout(timeout)
            self.control.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.control.connect(proxy)
            here = self.sock.getsockname()
            host, port = socks5_udp_associate(self.control, here[0], here[1], auth)
            if host in ("0.0.0.0", "::"):
                host = proxy[0]
            self.relay = (host, port)
            self.sock.connect(self.relay)
            # RFC 1928 §7: replies carry the target's address in the same form.
            self.header = self.reply_header = udp_header(target[0], target[1])
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.sock.close()
        if self.control is not None:
            self.control.close()

    def __enter__(self) -> UdpPath:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def socks5_udp_associate(sock: socket.socket, host: str, port: int,
                         auth: tuple[str, str] | None = None) -> tuple[str, int]:
    """UDP ASSOCIATE on a connected TCP socket; returns the relay's (BND.ADDR, BND.PORT).

    ``host``/``port`` are where this client will send datagrams from (§4:
    DST.ADDR/DST.PORT of a UDP ASSOCIATE); the association lives as long as
    ``sock`` stays open.
    """
    sock.sendall(greeting(auth))
    if check_method(_recv_exact(sock, 2, "greeting"), auth) == 0x02:
        assert auth is not None
        sock.sendall(userpass_request(auth))
        check_auth(_recv_exact(sock, 2, "auth"))
    sock.sendall(udp_associate_request(host, port))
    head = _recv_exact(sock, 5, "reply")
    rest = _recv_exact(sock, reply_rest(head, "UDP ASSOCIATE"), "reply")
    return parse_bound(head, rest)


# -- targets: a sink and an echo server ---------------------------------------------


def _drain(conn: socket.socket) -> None:
    """Sink one connection: recv_into a preallocated buffer until EOF, then close."""
    buf = bytearray(BUFFER_SIZE)
    try:
        conn.settimeout(None)
        while conn.recv_into(buf):
            pass
    except OSError:
        pass
    finally:
        conn.close()


class _Sink:
    """Accepts on a blocking listener in a thread; one thread per connection."""

    MAX_THREADS = 1024

    def __init__(self, host: str) -> None:
        self.listener = socket.socket(_family(host), socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, 0))
        self.listener.listen(1024)
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def serve(self) -> None:
        self.listener.settimeout(0.2)  # so that stop() is seen
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            self._threads = [t for t in self._threads if t.is_alive()]
            if len(self._threads) >= self.MAX_THREADS:
                conn.close()
                continue
            t = threading.Thread(target=_drain, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self.listener.close()
        for t in self._threads:
            t.join(IO_TIMEOUT)


class _EchoProtocol(asyncio.Protocol):
    """Echo every byte back; close after the peer's EOF; bounded write buffer."""

    def __init__(self, conns: set[asyncio.Transport]) -> None:
        self.conns = conns
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: Any) -> None:
        # uvloop's transports do not derive from asyncio.Transport: no isinstance.
        self.transport = transport
        self.conns.add(transport)
        transport.set_write_buffer_limits(high=256 * 1024)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def pause_writing(self) -> None:
        assert self.transport is not None
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        assert self.transport is not None
        self.transport.resume_reading()

    def eof_received(self) -> bool:
        return False  # close once the echo is flushed

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.conns.discard(self.transport)


def new_event_loop(engine: str = "auto") -> asyncio.AbstractEventLoop:
    if engine in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if engine == "uvloop":
                raise
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


class _Echo:
    """An echo server on an event loop (uvloop where installed)."""

    def __init__(self, host: str, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.conns: set[asyncio.Transport] = set()
        self.server = loop.run_until_complete(loop.create_server(
            lambda: _EchoProtocol(self.conns), host, 0, backlog=4096, reuse_address=True))
        self.address: tuple[str, int] = self.server.sockets[0].getsockname()[:2]

    def close(self) -> None:
        self.server.close()
        for t in list(self.conns):
            t.abort()
        self.loop.run_until_complete(self.server.wait_closed())
        self.loop.run_until_complete(asyncio.sleep(0))


class _UdpTarget:
    """A UDP echo or sink: one blocking socket, one loop, no per-datagram timer.

    The loop blocks in the receive call with no timeout (a timeout would add
    a poll() to every datagram); ``stop()`` sets a flag and sends the socket
    a datagram to wake it.  Large socket buffers (``UDP_SOCKET_BUFFER``, as
    fastsocks sets on its relay sockets) so that the target's own queue is not
    where datagrams are lost.
    """

    MAX_DATAGRAMS = 1 << 40  # a bound on the loop; never reached

    def __init__(self, kind: str, host: str) -> None:
        self.kind = kind
        self.sock = socket.socket(_family(host), socket.SOCK_DGRAM)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, option, UDP_SOCKET_BUFFER)
            except OSError:
                pass
        self.sock.bind((host, 0))
        self.address: tuple[str, int] = self.sock.getsockname()[:2]
        self.datagrams = 0
        self.bytes = 0
        self._stop = False

    def serve(self) -> None:
        if self.kind == "udp-echo":
            self._echo()
        else:
            self._sink()

    def _echo(self) -> None:
        buf = bytearray(65536)
        view = memoryview(buf)
        recvfrom_into, sendto = self.sock.recvfrom_into, self.sock.sendto
        for _ in range(self.MAX_DATAGRAMS):
            try:
                n, addr = recvfrom_into(buf)
                if self._stop:
                    break
                sendto(view[:n], addr)
            except OSError:
                if self._stop:
                    break
                continue  # e.g. ECONNREFUSED from an ICMP error: keep serving
        view.release()

    def _sink(self) -> None:
        buf = bytearray(65536)
        recv_into = self.sock.recv_into
        qlen = UDP_STATS_QUERY_LEN
        count = total = 0
        for _ in range(self.MAX_DATAGRAMS):
            try:
                n = recv_into(buf)
            except OSError:
                if self._stop:
                    break
                continue
            if self._stop:
                break
            if n == qlen and buf.startswith(UDP_STATS_MAGIC):
                # Counters are kept in locals (faster) and published on request.
                self.datagrams, self.bytes = count, total
                self._answer(bytes(buf[:n]))
                continue
            count += 1
            total += n
        self.datagrams, self.bytes = count, total

    def _answer(self, query: bytes) -> None:
        m = len(UDP_STATS_MAGIC)
        port = struct.unpack(">H", query[m:m + 2])[0]
        nonce = query[m + 2:m + 10]
        try:
            answer = UDP_STATS_REPLY + nonce + struct.pack(">QQ", self.datagrams, self.bytes)
            self.sock.sendto(answer, (self.address[0], port))
        except OSError:
            pass

    def stop(self) -> None:
        self._stop = True
        try:
            with socket.socket(_family(self.address[0]), socket.SOCK_DGRAM) as s:
                s.sendto(b"stop", self.address)
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()


def udp_sink_stats(address: tuple[str, int], timeout: float = 0.3,
                   tries: int = 8) -> tuple[int, int] | None:
    """(datagrams, bytes) a fastsocks-bench UDP sink has received, or None if it does not say.

    Asked straight (not through a proxy) with a datagram carrying a nonce;
    retried, since a sink whose queue is full may drop the question too.
    """
    with socket.socket(_family(address[0]), socket.SOCK_DGRAM) as q:
        q.bind((address[0], 0))
        q.settimeout(timeout)
        port = q.getsockname()[1]
        for _ in range(tries):
            nonce = os.urandom(8)
            try:
                q.sendto(UDP_STATS_MAGIC + struct.pack(">H", port) + nonce, address)
            except OSError:
                return None
            deadline = time.monotonic() + timeout
            for _ in range(64):  # skip stale answers to earlier tries
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                q.settimeout(left)
                try:
                    answer = q.recv(64)
                except (socket.timeout, OSError):
                    break
                m = len(UDP_STATS_REPLY)
                if answer[:m] == UDP_STATS_REPLY and answer[m:m + 8] == nonce:
                    datagrams, nbytes = struct.unpack(">QQ", answer[m + 8:m + 24])
                    return datagrams, nbytes
    return None


def _proc_net_address(text: str) -> tuple[str, int] | None:
    """``0100007F:1F90`` (as /proc/net/udp writes it: 32-bit words in host order) as (ip, port)."""
    try:
        hexaddr, hexport = text.rsplit(":", 1)
        raw = bytes.fromhex(hexaddr)
        port = int(hexport, 16)
    except ValueError:
        return None
    if len(raw) not in (4, 16):
        return None
    if sys.byteorder == "little":
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, raw), port


def _ip_key(address: tuple[str, int]) -> tuple[str, int] | None:
    """(canonical IP text, port), or None for a name (only IP literals are looked up)."""
    try:
        return ipaddress.ip_address(address[0].partition("%")[0]).compressed, address[1]
    except ValueError:
        return None


def udp_socket_drops(addresses: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """Receive-queue drops of the UDP sockets bound to ``addresses``, from /proc/net/udp{,6}.

    The kernel counts, per socket, the datagrams it discarded because the
    receive buffer was full: that is where loss happens on loopback (the
    sender's own queue is released at once).  A socket bound to the wildcard
    address matches any address with its port; addresses not found are left out.
    """
    wanted = {key for key in map(_ip_key, addresses) if key is not None}
    by_port = {port: host for host, port in wanted}
    drops: dict[tuple[str, int], int] = {}
    for name in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(name) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines[:100_000]:
            fields = line.split()
            if len(fields) < 13:
                continue
            local = _proc_net_address(fields[1])
            if local is None or local[1] not in by_port:
                continue
            host, port = local
            for want in [w for w in wanted if w[1] == port]:
                if host == want[0] or host in ("0.0.0.0", "::"):
                    drops[want] = drops.get(want, 0) + int(fields[-1])
    return drops


TARGET_KINDS = ("sink", "echo", "udp-echo", "udp-sink")


class LocalTarget:
    """A sink or echo server (TCP or UDP) on loopback port 0, in a thread or a child process.

    Use as a context manager; ``address`` is where it listens.
    """

    def __init__(self, kind: str, where: str = "process", host: str = "127.0.0.1") -> None:
        if kind not in TARGET_KINDS:
            raise ValueError(f"target kind {kind!r}")
        if where not in ("process", "thread"):
            raise ValueError(f"target placement {where!r}")
        self.kind, self.where, self.host = kind, where, host
        self.address: tuple[str, int] = ("", 0)
        self.proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._sink: _Sink | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._echo: _Echo | None = None
        self._udp: _UdpTarget | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else os.getpid()

    def __enter__(self) -> LocalTarget:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        if self.where == "process":
            self.address = self._start_process()
        elif self.kind in ("udp-echo", "udp-sink"):
            self._udp = _UdpTarget(self.kind, self.host)
            self.address = self._udp.address
            self._thread = threading.Thread(target=self._udp.serve, daemon=True)
            self._thread.start()
        elif self.kind == "sink":
            self._sink = _Sink(self.host)
            self.address = self._sink.address
            self._thread = threading.Thread(target=self._sink.serve, daemon=True)
            self._thread.start()
        else:
            ready = threading.Event()
            errors: list[BaseException] = []

            def serve() -> None:
                loop = self._loop = new_event_loop()
                try:
                    self._echo = _Echo(self.host, loop)
                except BaseException as exc:  # reported to the starting thread
                    errors.append(exc)
                    ready.set()
                    loop.close()
                    return
                ready.set()
                try:
                    loop.run_forever()
                finally:
                    self._echo.close()
                    loop.close()

            self._thread = threading.Thread(target=serve, daemon=True)
            self._thread.start()
            if not ready.wait(IO_TIMEOUT) or errors:
                raise RuntimeError(f"could not start the echo target: {errors}")
            assert self._echo is not None
            self.address = self._echo.address

    def _start_process(self) -> tuple[str, int]:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fastsocks.bench", "--serve", self.kind,
             "--serve-host", self.host],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=None)
        assert self.proc.stdout is not None
        line = _readline_timeout(self.proc.stdout, IO_TIMEOUT)
        match = re.search(rb"listening on (\S+):(\d+)", line)
        if not match:
            self.close()
            raise RuntimeError(f"the {self.kind} target did not start: {line!r}")
        return match.group(1).decode().strip("[]"), int(match.group(2))

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None
        if self._sink is not None:
            self._sink.stop()
            if self._thread is not None:
                self._thread.join(IO_TIMEOUT)
            self._sink.close()
            self._sink = None
        if self._udp is not None:
            self._udp.stop()
            if self._thread is not None:
                self._thread.join(IO_TIMEOUT)
            self._udp.close()
            self._udp = None
        if self._loop is not None and self._echo is not None:
            if not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(IO_TIMEOUT)
            self._loop = None
            self._echo = None
        self._thread = None


def _readline_timeout(stream: Any, timeout: float) -> bytes:
    """One line from a pipe, or b'' after ``timeout`` seconds."""
    result: list[bytes] = []
    t = threading.Thread(target=lambda: result.append(stream.readline()), daemon=True)
    t.start()
    t.join(timeout)
    return result[0] if result else b""


def serve(kind: str, host: str = "127.0.0.1") -> int:
    """``--serve KIND``: run one target in the foreground until SIGTERM/SIGINT."""
    if kind in ("udp-echo", "udp-sink"):
        udp = _UdpTarget(kind, host)
        signal.signal(signal.SIGTERM, lambda *_: udp.stop())
        signal.signal(signal.SIGINT, lambda *_: udp.stop())
        print(f"fastsocks-bench {kind} listening on {format_peer(udp.address)}", flush=True)
        try:
            udp.serve()
        finally:
            udp.close()
        return 0
    if kind == "sink":
        sink = _Sink(host)
        signal.signal(signal.SIGTERM, lambda *_: sink.stop())
        signal.signal(signal.SIGINT, lambda *_: sink.stop())
        print(f"fastsocks-bench sink listening on {format_peer(sink.address)}", flush=True)
        try:
            sink.serve()
        finally:
            sink.close()
        return 0
    loop = new_event_loop()
    try:
        echo = _Echo(host, loop)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, loop.stop)
        print(f"fastsocks-bench echo listening on {format_peer(echo.address)}", flush=True)
        try:
            loop.run_forever()
        finally:
            echo.close()
    finally:
        loop.close()
    return 0


# -- measuring the server from /proc ----------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class ProcessTree:
    """CPU seconds and RSS of a process with all its threads and descendants (Linux).

    CPU counts utime+stime of every live process in the tree plus cutime+cstime
    (children that exited and were reaped), so a before/after difference is
    right even when children come and go in between.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid

    @staticmethod
    def _stat(pid: int) -> list[str] | None:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                data = f.read().decode("ascii", "replace")
        except OSError:
            return None
        # comm (field 2) may hold spaces and parentheses: split after the last ')'.
        return data[data.rindex(")") + 2:].split()

    def pids(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            fields = self._stat(int(name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(name))
        out, todo = [], [self.pid]
        while todo and len(out) < 100_000:
            pid = todo.pop()
            out.append(pid)
            todo.extend(children.get(pid, ()))
        return out

    def cpu_seconds(self) -> float:
        ticks = 0
        for pid in self.pids():
            fields = self._stat(pid)
            if fields is None:
                continue
            # fields[0] is state (field 3); utime, stime, cutime, cstime are 14..17.
            ticks += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
        return ticks / _CLK_TCK

    def rss_kib(self) -> int:
        total = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/status", "rb") as f:
                    status = f.read()
            except OSError:
                continue
            match = re.search(rb"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
            if match:
                total += int(match.group(1))
        return total

    def pss_kib(self) -> int | None:
        """Proportional set size (shared pages split between sharers), or None.

        Fairer than summed RSS for servers that fork workers sharing pages.
        """
        total, seen = 0, False
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
                    data = f.read()
            except OSError:
                continue
            match = re.search(rb"^Pss:\s+(\d+) kB", data, re.MULTILINE)
            if match:
                total += int(match.group(1))
                seen = True
        return total if seen else None

    def alive(self) -> bool:
        return self._stat(self.pid) is not None


# -- configuration and results ---------------------------------------------------------


@dataclasses.dataclass
class Config:
    mode: str = "throughput"  # throughput | handshake | idle | udp-rtt | udp-oneway
    proxy: tuple[str, int] | None = None
    auth: tuple[str, str] | None = None
    target: tuple[str, int] | None = None  # None: start a local sink/echo
    streams: int = 1
    concurrency: int = 1
    connections: int = 1000
    duration: float = 5.0
    engine: str = "auto"  # auto | uvloop | asyncio | threads (handshake, idle)
    local_target: str = "thread"  # thread | process (see the module docstring)
    server_pid: int | None = None
    progress: bool = False
    rate: float | None = None  # udp-oneway: datagrams/s; None: unpaced
    size: int | None = None  # UDP payload bytes; None: 64 (udp-rtt) or 1200 (udp-oneway)

    @property
    def udp(self) -> bool:
        return self.mode.startswith("udp-")

    @property
    def payload_size(self) -> int:
        if self.size is not None:
            return self.size
        return UDP_RTT_SIZE if self.mode == "udp-rtt" else UDP_ONEWAY_SIZE

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}")
        if self.mode == "udp-rtt" and not 1 <= self.concurrency <= UDP_MAX_ASSOCIATIONS:
            raise ValueError(f"--concurrency must be 1..{UDP_MAX_ASSOCIATIONS} in udp-rtt mode "
                             "(one association, two fds, each)")
        if self.rate is not None and (self.mode != "udp-oneway"
                                      or not 1 <= self.rate <= UDP_MAX_RATE):
            raise ValueError(f"--rate is for udp-oneway only, 1..{UDP_MAX_RATE} datagrams/s")
        if self.size is not None and (not self.udp or not 16 <= self.size <= UDP_MAX_SIZE):
            raise ValueError(f"--size is for the UDP modes only, 16..{UDP_MAX_SIZE} bytes")
        if not 0 < self.duration <= MAX_DURATION:
            raise ValueError(f"--duration must be in (0, {MAX_DURATION:g}] seconds")
        if not 1 <= self.streams <= MAX_STREAMS:
            raise ValueError(f"--streams must be 1..{MAX_STREAMS}")
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise ValueError(f"--concurrency must be 1..{MAX_CONCURRENCY}")
        if not 1 <= self.connections <= MAX_CONNECTIONS:
            raise ValueError(f"--connections must be 1..{MAX_CONNECTIONS} (one fd each "
                             "in the generator, two in a relaying server)")
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}")


class _Progress:
    """A line on stderr, rewritten about once a second (only when enabled)."""

    def __init__(self, enabled: bool, total: float, text: Callable[[], str]) -> None:
        self.enabled, self.total, self.text = enabled, total, text
        self.start = time.monotonic()
        self.last = self.start
        self.shown = False

    def tick(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self.last < 1.0:
            return
        self.last = now
        elapsed = min(now - self.start, self.total)
        sys.stderr.write(f"\r\x1b[K{elapsed:5.1f}/{self.total:g} s  {self.text()}")
        sys.stderr.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


def _cpu_now() -> float:
    return time.process_time()


def _cpu_split() -> tuple[float, float]:
    """(user, system) CPU seconds of this process, all threads."""
    t = os.times()
    return t.user, t.system


# -- throughput ------------------------------------------------------------------------


def _throughput(cfg: Config, target: tuple[str, int]) -> dict[str, Any]:
    socks_ = []
    try:
        for _ in range(cfg.streams):
            socks_.append(open_connection(cfg.proxy, target, cfg.auth))
    except BaseException:
        for s in socks_:
            s.close()
        raise
    counts = [0] * cfg.streams
    ends = [0.0] * cfg.streams
    errors: list[str] = []
    received = [0] * cfg.streams
    start_barrier = threading.Barrier(cfg.streams + 1)
    deadline_box = [0.0]

    def sender(i: int, sock: socket.socket) -> None:
        buf = bytearray(BUFFER_SIZE)
        view = memoryview(buf)
        send = sock.send
        monotonic = time.monotonic
        try:
            start_barrier.wait(IO_TIMEOUT)
        except threading.BrokenBarrierError:
            return
        deadline = deadline_box[0]
        n = 0
        try:
            # Bounded by time and by count (no more than 1 TiB per stream).
            for _ in range(1 << 20):
                n += send(view)
                counts[i] = n
                if monotonic() >= deadline:
                    break
        except OSError as exc:
            errors.append(f"stream {i}: {exc!r}")
        ends[i] = time.monotonic()
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def drainer(i: int, sock: socket.socket) -> None:
        # Reads whatever the target sends back (nothing, for a sink) until EOF,
        # so an echo target works too and the end of the relay is seen.
        buf = bytearray(BUFFER_SIZE)
        for _ in range(1 << 24):
            try:
                n = sock.recv_into(buf)
            except socket.timeout:
                if deadline_box[0] and time.monotonic() < deadline_box[0] + IO_TIMEOUT:
                    continue  # a quiet sink during a long run
                break
            except OSError:
                break
            if not n:
                break
            received[i] += n

    senders = [threading.Thread(target=sender, args=(i, s), daemon=True)
               for i, s in enumerate(socks_)]
    drainers = [threading.Thread(target=drainer, args=(i, s), daemon=True)
                for i, s in enumerate(socks_)]
    progress = _Progress(cfg.progress, cfg.duration, lambda: "")
    last = [0, time.monotonic()]

    def text() -> str:
        total, now = sum(counts), time.monotonic()
        rate = (total - last[0]) * 8 / max(now - last[1], 1e-9) / 1e9
        last[0], last[1] = total, now
        return f"{rate:7.2f} Gbit/s  {total / GiB:8.2f} GiB sent"

    progress.text = text
    cpu0, server0 = _cpu_now(), None
    tree = ProcessTree(cfg.server_pid) if cfg.server_pid else None
    try:
        for t in senders + drainers:
            t.start()
        if tree is not None:
            server0 = tree.cpu_seconds()
        t0 = time.monotonic()
        deadline_box[0] = t0 + cfg.duration
        start_barrier.wait(IO_TIMEOUT)
        progress.start = t0
        for t in senders:
            while t.is_alive() and time.monotonic() < deadline_box[0] + IO_TIMEOUT * 2:
                t.join(0.2)
                progress.tick()
        progress.done()
        for t in drainers:
            t.join(IO_TIMEOUT)
        # Once every drainer saw EOF, the server has relayed every byte.
        server1 = tree.cpu_seconds() if tree is not None else None
        cpu1 = _cpu_now()
    finally:
        for s in socks_:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in senders + drainers:
            t.join(IO_TIMEOUT)
        for s in socks_:
            s.close()
    stuck = [i for i, t in enumerate(senders + drainers) if t.is_alive()]
    if stuck:
        errors.append(f"{len(stuck)} threads did not finish")
    total = sum(counts)
    elapsed = max(ends) - t0 if total else cfg.duration
    result: dict[str, Any] = {
        "bytes": total,
        "seconds": round(elapsed, 4),
        "gbit_per_s": total * 8 / elapsed / 1e9 if elapsed > 0 else 0.0,
        "per_stream_gbit_per_s": [round(c * 8 / max(e - t0, 1e-9) / 1e9, 3)
                                  for c, e in zip(counts, ends)],
        "bytes_received": sum(received),
        "generator_cpu_s": round(cpu1 - cpu0, 3),
        "generator_cpu_s_per_gib": (cpu1 - cpu0) / (total / GiB) if total else None,
        "errors": errors,
    }
    if server0 is not None and server1 is not None:
        result["server_cpu_s"] = round(server1 - server0, 3)
        result["server_cpu_s_per_gib"] = (server1 - server0) / (total / GiB) if total else None
    return result


# -- handshakes ----------------------------------------------------------------------------


class _HandshakeStats:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}
        self.first_error: str | None = None

    def error(self, exc: BaseException) -> None:
        key = type(exc).__name__ + (f" X'{exc.reply:02X}'" if isinstance(exc, SocksError)
                                    and exc.reply is not None else "")
        self.errors[key] = self.errors.get(key, 0) + 1
        if self.first_error is None:
            self.first_error = f"{type(exc).__name__}: {exc}"


def _handshake_async(cfg: Config, target: tuple[str, int], engine: str) -> tuple[_HandshakeStats, float]:
    loop = new_event_loop(engine)
    stats = _HandshakeStats()
    payload = os.urandom(PAYLOAD_SIZE)
    first = cfg.proxy or target
    family = _family(first[0])
    proxy, auth = cfg.proxy, cfg.auth
    latencies = stats.latencies
    perf = time.perf_counter
    state = {"deadline": 0.0, "count": 0}

    async def one() -> None:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, first)
            if proxy is not None:
                await socks5_connect_async(loop, sock, target[0], target[1], auth)
            await loop.sock_sendall(sock, payload)
            echoed = await _arecv_exact(loop, sock, PAYLOAD_SIZE, "echo")
            if echoed != payload:
                raise SocksError("echo", "the echoed bytes differ from those sent")
        finally:
            sock.close()

    async def worker() -> None:
        deadline = state["deadline"]
        while state["count"] < MAX_HANDSHAKES:
            t = perf()
            if time.monotonic() >= deadline:
                return
            try:
                await one()
            except (OSError, SocksError) as exc:
                stats.error(exc)
                await asyncio.sleep(0.001)  # a failing server must not become a busy loop
                continue
            latencies.append(perf() - t)
            state["count"] += 1

    async def main_() -> float:
        progress = _Progress(cfg.progress, cfg.duration, lambda: "")
        last = [0, time.monotonic()]

        def text() -> str:
            n, now = len(latencies), time.monotonic()
            rate = (n - last[0]) / max(now - last[1], 1e-9)
            last[0], last[1] = n, now
            return f"{rate:9.0f} handshakes/s  {n} done  {sum(stats.errors.values())} errors"

        progress.text = text
        t0 = time.monotonic()
        state["deadline"] = t0 + cfg.duration
        progress.start = t0
        tasks = [asyncio.ensure_future(worker()) for _ in range(cfg.concurrency)]
        try:
            hard_end = state["deadline"] + IO_TIMEOUT
            pending = set(tasks)
            while pending and time.monotonic() < hard_end:
                _, pending = await asyncio.wait(pending, timeout=0.25)
                progress.tick()
            progress.done()
            return time.monotonic() - t0
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    try:
        elapsed = loop.run_until_complete(main_())
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()
    return stats, elapsed


# The epoll engine: one thread, non-blocking sockets registered once,
# edge-triggered for both directions, and a small state machine per
# connection.  On this project's 2-core VM it costs the generator about a third
# of the CPU per handshake of uvloop's sock_* coroutines (futures and an
# epoll_ctl per wait), and most of what remains is the kernel's TCP set-up and
# tear-down, which any client pays (see benchmarks/README.md).

_S_CONNECT, _S_METHOD, _S_AUTH, _S_HEAD, _S_REST, _S_ECHO = range(6)
_STEP_NAMES = ("connect", "greeting", "auth", "reply", "reply", "echo")


class _Conn:
    __slots__ = ("sock", "state", "need", "data", "t0", "out")

    def __init__(self, sock: socket.socket, t0: float) -> None:
        self.sock = sock
        self.state = _S_CONNECT
        self.need = 0
        self.data = b""
        self.t0 = t0
        self.out = b""


def _handshake_epoll(cfg: Config, target: tuple[str, int]) -> tuple[_HandshakeStats, float]:
    import select

    stats = _HandshakeStats()
    latencies = stats.latencies
    payload = os.urandom(PAYLOAD_SIZE)
    proxy, auth = cfg.proxy, cfg.auth
    first = proxy or target
    family = _family(first[0])
    hello = greeting(auth)
    login = userpass_request(auth) if auth is not None else b""
    request = connect_request(target[0], target[1])
    perf = time.perf_counter
    monotonic = time.monotonic
    conns: dict[int, _Conn] = {}
    ep = select.epoll()
    flags = select.EPOLLIN | select.EPOLLOUT | select.EPOLLET | select.EPOLLRDHUP
    nodelay = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    started = [0]

    def start() -> None:
        started[0] += 1
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:  # e.g. out of file descriptors
            stats.error(exc)
            return
        conn = _Conn(sock, perf())
        fd = sock.fileno()
        conns[fd] = conn
        try:
            sock.setblocking(False)
            sock.setsockopt(*nodelay)
            ep.register(fd, flags)
            err = sock.connect_ex(first)
            if err not in (0, errno.EINPROGRESS):
                raise OSError(err, os.strerror(err))
        except OSError as exc:
            finish(fd, conn, exc)

    def finish(fd: int, conn: _Conn, exc: BaseException | None) -> None:
        del conns[fd]
        conn.sock.close()  # also drops it from the epoll set
        if exc is None:
            latencies.append(perf() - conn.t0)
        else:
            stats.error(exc)

    def write(conn: _Conn, data: bytes) -> None:
        n = conn.sock.send(data)
        if n < len(data):  # not seen with these sizes; EPOLLOUT sends the rest
            conn.out = data[n:]

    def expect(conn: _Conn, state: int, n: int) -> None:
        conn.state, conn.need, conn.data = state, n, b""

    def advance(fd: int, conn: _Conn) -> bool:
        """Drive ``conn`` as far as its socket allows; True once it is done."""
        sock = conn.sock
        if conn.state == _S_CONNECT:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
            if proxy is None:
                write(conn, payload)
                expect(conn, _S_ECHO, PAYLOAD_SIZE)
            else:
                write(conn, hello)
                expect(conn, _S_METHOD, 2)
        if conn.out:
            n = sock.send(conn.out)
            conn.out = conn.out[n:]
        for _ in range(4096):  # bounded; ends on EAGAIN (BlockingIOError) or done
            chunk = sock.recv(conn.need - len(conn.data))
            if not chunk:
                raise SocksError(_STEP_NAMES[conn.state],
                                 f"server closed the connection (after {conn.data!r})")
            conn.data += chunk
            if len(conn.data) < conn.need:
                continue
            state, data = conn.state, conn.data
            if state == _S_ECHO:
                if data != payload:
                    raise SocksError("echo", "the echoed bytes differ from those sent")
                return True
            if state == _S_METHOD:
                if check_method(data, auth) == 0x02:
                    write(conn, login)
                    expect(conn, _S_AUTH, 2)
                    continue
                write(conn, request)
                expect(conn, _S_HEAD, 5)
            elif state == _S_AUTH:
                check_auth(data)
                write(conn, request)
                expect(conn, _S_HEAD, 5)
            elif state == _S_HEAD:
                expect(conn, _S_REST, reply_rest(data))
            else:  # _S_REST: the reply is complete
                write(conn, payload)
                expect(conn, _S_ECHO, PAYLOAD_SIZE)
        return False

    progress = _Progress(cfg.progress, cfg.duration, lambda: "")
    last = [0, monotonic()]

    def text() -> str:
        n, now = len(latencies), monotonic()
        rate = (n - last[0]) / max(now - last[1], 1e-9)
        last[0], last[1] = n, now
        return f"{rate:9.0f} handshakes/s  {n} done  {sum(stats.errors.values())} errors"

    progress.text = text
    t0 = monotonic()
    deadline = t0 + cfg.duration
    hard_end = deadline + IO_TIMEOUT
    progress.start = t0
    try:
        now = t0
        while (conns or now < deadline) and now < hard_end:
            # Keep C connections in flight until the deadline (bounded in count).
            while len(conns) < cfg.concurrency and now < deadline and started[0] < MAX_HANDSHAKES:
                start()
                if stats.errors and not conns:
                    break  # failing at once (refused, no fds): let poll() pace the retries
            for fd, _ev in ep.poll(0.25):
                conn = conns.get(fd)
                if conn is None:
                    continue
                try:
                    if advance(fd, conn):
                        finish(fd, conn, None)
                except BlockingIOError:
                    continue  # wait for the next edge
                except (OSError, SocksError) as exc:
                    finish(fd, conn, exc)
            now = monotonic()
            progress.tick()
        progress.done()
        elapsed = monotonic() - t0
    finally:
        for conn in conns.values():
            conn.sock.close()
        conns.clear()
        ep.close()
    return stats, elapsed


def _handshake_threads(cfg: Config, target: tuple[str, int]) -> tuple[_HandshakeStats, float]:
    stats = _HandshakeStats()
    payload = os.urandom(PAYLOAD_SIZE)
    lock = threading.Lock()
    t0 = time.monotonic()
    deadline = t0 + cfg.duration

    def worker() -> None:
        local: list[float] = []
        for _ in range(MAX_HANDSHAKES // cfg.concurrency):
            if time.monotonic() >= deadline:
                break
            t = time.perf_counter()
            try:
                with open_connection(cfg.proxy, target, cfg.auth) as sock:
                    sock.sendall(payload)
                    if _recv_exact(sock, PAYLOAD_SIZE, "echo") != payload:
                        raise SocksError("echo", "the echoed bytes differ from those sent")
            except (OSError, SocksError) as exc:
                with lock:
                    stats.error(exc)
                time.sleep(0.001)
                continue
            local.append(time.perf_counter() - t)
        with lock:
            stats.latencies.extend(local)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(cfg.concurrency)]
    for t in threads:
        t.start()
    progress = _Progress(cfg.progress, cfg.duration, lambda: "running")
    for t in threads:
        while t.is_alive() and time.monotonic() < deadline + IO_TIMEOUT * 2:
            t.join(0.25)
            progress.tick()
    progress.done()
    return stats, time.monotonic() - t0


def _handshake(cfg: Config, target: tuple[str, int]) -> dict[str, Any]:
    engine = cfg.engine
    if engine == "auto":
        # epoll: measured cheapest per handshake (README); else uvloop, else threads.
        import select

        engine = "epoll" if hasattr(select, "epoll") else "uvloop"
        if engine == "uvloop":
            try:
                import uvloop  # noqa: F401
            except ImportError:
                engine = "threads"
    tree = ProcessTree(cfg.server_pid) if cfg.server_pid else None
    server0 = tree.cpu_seconds() if tree is not None else None
    cpu0 = _cpu_now()
    split0 = _cpu_split()
    if engine == "threads":
        stats, elapsed = _handshake_threads(cfg, target)
    elif engine == "epoll":
        stats, elapsed = _handshake_epoll(cfg, target)
    else:
        stats, elapsed = _handshake_async(cfg, target, engine)
    cpu1 = _cpu_now()
    split1 = _cpu_split()
    server1 = tree.cpu_seconds() if tree is not None else None
    lat = sorted(stats.latencies)
    n = len(lat)
    result: dict[str, Any] = {
        "engine": engine,
        "handshakes": n,
        "seconds": round(elapsed, 4),
        "per_s": n / elapsed if elapsed > 0 else 0.0,
        "p50_ms": _percentile(lat, 50) * 1e3,
        "p99_ms": _percentile(lat, 99) * 1e3,
        "max_ms": (lat[-1] * 1e3) if lat else 0.0,
        "errors": stats.errors,
        "first_error": stats.first_error,
        "generator_cpu_s": round(cpu1 - cpu0, 3),
        "generator_cpu_us_per_handshake": (cpu1 - cpu0) / n * 1e6 if n else None,
        "generator_cpu_share": (cpu1 - cpu0) / elapsed if elapsed > 0 else None,
        "generator_cpu_system_share": ((split1[1] - split0[1]) / (cpu1 - cpu0)
                                       if cpu1 > cpu0 else None),
    }
    if server0 is not None and server1 is not None:
        result["server_cpu_s"] = round(server1 - server0, 3)
        result["server_cpu_us_per_handshake"] = (server1 - server0) / n * 1e6 if n else None
    return result


# -- idle connections --------------------------------------------------------------------


def _idle(cfg: Config, target: tuple[str, int],
          on_hold: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    # Opening the connections is not what is measured here: any loop will do.
    engine = cfg.engine if cfg.engine in ("uvloop", "asyncio") else "auto"
    loop = new_event_loop(engine)
    held: list[socket.socket] = []
    stats = _HandshakeStats()
    first = cfg.proxy or target
    family = _family(first[0])
    tree = ProcessTree(cfg.server_pid) if cfg.server_pid else None
    result: dict[str, Any] = {"requested": cfg.connections}

    async def open_one() -> None:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, first)
            if cfg.proxy is not None:
                await socks5_connect_async(loop, sock, target[0], target[1], cfg.auth)
            await loop.sock_sendall(sock, b"i")
            if await _arecv_exact(loop, sock, 1, "echo") != b"i":
                raise SocksError("echo", "the echoed byte differs")
        except BaseException:
            sock.close()
            raise
        held.append(sock)

    async def opener(todo: Iterator[int]) -> None:
        for _ in todo:
            try:
                await asyncio.wait_for(open_one(), IO_TIMEOUT)
            except (OSError, SocksError, asyncio.TimeoutError) as exc:
                stats.error(exc)

    async def main_() -> None:
        todo = iter(range(cfg.connections))
        width = max(1, min(cfg.concurrency if cfg.concurrency > 1 else 32, 256))
        t0 = time.monotonic()
        await asyncio.gather(*(opener(todo) for _ in range(width)))
        result["open_seconds"] = round(time.monotonic() - t0, 3)
        result["opened"] = len(held)
        result["failed"] = sum(stats.errors.values())
        result["errors"] = stats.errors
        result["first_error"] = stats.first_error
        # Let the server settle (buffers freed, lazy work done) before measuring.
        await asyncio.sleep(min(0.5, cfg.duration / 2))
        if tree is not None:
            result["server_rss_kib_held"] = tree.rss_kib()
            result["server_pss_kib_held"] = tree.pss_kib()
            result["server_processes"] = len(tree.pids())
        if on_hold is not None:
            on_hold(result)
        progress = _Progress(cfg.progress, cfg.duration, lambda: f"holding {len(held)} connections")
        hold_end = time.monotonic() + cfg.duration
        while time.monotonic() < hold_end:
            await asyncio.sleep(min(0.25, max(0.0, hold_end - time.monotonic())))
            progress.tick()
        progress.done()
        # One more round trip on a sample proves the connections were still relayed.
        alive = 0
        for sock in held[:: max(1, len(held) // 20)]:
            try:
                await loop.sock_sendall(sock, b"j")
                if await asyncio.wait_for(_arecv_exact(loop, sock, 1, "echo"), IO_TIMEOUT) == b"j":
                    alive += 1
            except (OSError, SocksError, asyncio.TimeoutError):
                pass
        result["sampled_alive_after_hold"] = alive
        result["sampled"] = len(held[:: max(1, len(held) // 20)])
        result["held_seconds"] = cfg.duration

    rss0 = tree.rss_kib() if tree is not None else None
    pss0 = tree.pss_kib() if tree is not None else None
    try:
        loop.run_until_complete(main_())
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        for sock in held:
            sock.close()
        loop.close()
    if rss0 is not None and "server_rss_kib_held" in result:
        result["server_rss_kib_before"] = rss0
        delta = result["server_rss_kib_held"] - rss0
        result["server_rss_kib_delta"] = delta
        result["server_kib_per_connection"] = delta / result["opened"] if result["opened"] else None
        pss1 = result.get("server_pss_kib_held")
        if pss0 is not None and pss1 is not None and result["opened"]:
            result["server_pss_kib_before"] = pss0
            result["server_pss_kib_per_connection"] = (pss1 - pss0) / result["opened"]
    return result


# -- UDP: round trips and one-way datagrams ------------------------------------------------


class _RttConn:
    __slots__ = ("path", "sock", "index", "seq", "t0", "expected")

    def __init__(self, path: UdpPath, index: int) -> None:
        self.path = path
        self.sock = path.sock
        self.index = index
        self.seq = 0
        self.t0 = 0.0
        self.expected = b""


def _open_paths(cfg: Config, target: tuple[str, int], n: int) -> list[UdpPath]:
    paths: list[UdpPath] = []
    try:
        for _ in range(n):
            paths.append(UdpPath(cfg.proxy, target, cfg.auth))
    except BaseException:
        for path in paths:
            path.close()
        raise
    return paths


def _udp_rtt(cfg: Config, target: tuple[str, int]) -> dict[str, Any]:
    """C associations, one datagram in flight on each, driven by one epoll loop."""
    import select

    size = cfg.payload_size
    filler = os.urandom(size - 12)
    stamp = struct.Struct(">IQ").pack  # association index, sequence number: 12 bytes
    paths = _open_paths(cfg, target, cfg.concurrency)
    stats = _HandshakeStats()
    latencies = stats.latencies
    perf, monotonic = time.perf_counter, time.monotonic
    conns: dict[int, _RttConn] = {}
    ep = select.epoll()
    counters = {"lost": 0, "late": 0}
    tree = ProcessTree(cfg.server_pid) if cfg.server_pid else None

    def send(c: _RttConn) -> None:
        c.seq += 1
        body = stamp(c.index, c.seq) + filler
        c.expected = c.path.reply_header + body
        c.t0 = perf()
        try:
            c.sock.send(c.path.header + body)
        except OSError as exc:  # e.g. ECONNREFUSED from an earlier ICMP error
            stats.error(exc)  # the timeout sends the next one

    def odd_reply(c: _RttConn, data: bytes) -> bool:
        """A datagram that is not the awaited echo verbatim: True if it still is it."""
        payload = data
        if c.path.control is not None:
            try:
                payload = parse_udp_reply(data)[2]
            except SocksError as exc:
                stats.error(exc)
                return False
        body = c.expected[len(c.path.reply_header):]
        if payload == body:
            # The relay writes the target's address in another (valid) form:
            # expect that form from now on.
            c.path.reply_header = data[:len(data) - len(payload)]
            return True
        if payload[:4] == body[:4] and payload[12:] == body[12:]:
            counters["late"] += 1  # an echo of a datagram already counted lost
        else:
            stats.error(SocksError("udp", "a datagram that is no echo of ours"))
        return False

    progress = _Progress(cfg.progress, cfg.duration, lambda: "")
    last = [0, monotonic()]

    def text() -> str:
        n, now = len(latencies), monotonic()
        rate = (n - last[0]) / max(now - last[1], 1e-9)
        last[0], last[1] = n, now
        return f"{rate:9.0f} round trips/s  {n} done  {counters['lost']} lost"

    progress.text = text
    try:
        for i, path in enumerate(paths):
            path.sock.setblocking(False)
            conns[path.sock.fileno()] = _RttConn(path, i)
            ep.register(path.sock.fileno(), select.EPOLLIN)
        server0 = tree.cpu_seconds() if tree is not None else None
        cpu0, split0 = _cpu_now(), _cpu_split()
        t0 = monotonic()
        deadline = t0 + cfg.duration
        progress.start = t0
        for c in conns.values():
            send(c)
        next_check = t0 + 0.05
        now = t0
        while now < deadline and len(latencies) < MAX_HANDSHAKES:
            for fd, _ev in ep.poll(0.05):
                c = conns[fd]
                try:
                    data = c.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    stats.error(exc)
                    continue
                if data == c.expected or odd_reply(c, data):
                    latencies.append(perf() - c.t0)
                    send(c)
            now = monotonic()
            if now >= next_check:
                next_check = now + 0.05
                limit = perf() - UDP_RTT_TIMEOUT
                for c in conns.values():
                    if c.t0 < limit:
                        counters["lost"] += 1
                        send(c)
                progress.tick()
        elapsed = monotonic() - t0
        cpu1, split1 = _cpu_now(), _cpu_split()
        server1 = tree.cpu_seconds() if tree is not None else None
        progress.done()
    finally:
        ep.close()
        for path in paths:
            path.close()
    lat = sorted(latencies)
    n = len(lat)
    gen = cpu1 - cpu0
    result: dict[str, Any] = {
        "size": size,
        "relay": format_peer(paths[0].relay) if paths[0].relay else None,
        "round_trips": n,
        "seconds": round(elapsed, 4),
        "per_s": n / elapsed if elapsed > 0 else 0.0,
        "p50_us": _percentile(lat, 50) * 1e6,
        "p99_us": _percentile(lat, 99) * 1e6,
        "max_us": lat[-1] * 1e6 if lat else 0.0,
        "lost": counters["lost"],
        "late": counters["late"],
        "errors": stats.errors,
        "first_error": stats.first_error,
        "generator_cpu_s": round(gen, 3),
        "generator_cpu_us_per_round_trip": gen / n * 1e6 if n else None,
        "generator_cpu_share": gen / elapsed if elapsed > 0 else None,
        "generator_cpu_system_share": (split1[1] - split0[1]) / gen if gen > 0 else None,
    }
    if server0 is not None and server1 is not None:
        result["server_cpu_s"] = round(server1 - server0, 3)
        result["server_cpu_us_per_round_trip"] = (server1 - server0) / n * 1e6 if n else None
    return result


def _sink_settled(target: tuple[str, int], seen: tuple[int, int] | None,
                  timeout: float = 3.0) -> tuple[int, int] | None:
    """The sink's counters once they stop moving (datagrams still queued in a proxy land)."""
    if seen is None:
        return None
    deadline = time.monotonic() + timeout
    last = udp_sink_stats(target)
    while last is not None and time.monotonic() < deadline:
        time.sleep(0.1)
        now = udp_sink_stats(target)
        if now == last:
            break
        last = now
    return last


def _udp_oneway(cfg: Config, target: tuple[str, int]) -> dict[str, Any]:
    """One association sending datagrams to a sink, unpaced or at ``cfg.rate``."""
    size = cfg.payload_size
    tree = ProcessTree(cfg.server_pid) if cfg.server_pid else None
    with UdpPath(cfg.proxy, target, cfg.auth) as path:
        packet = path.header + os.urandom(size)
        watched = [target] + ([path.relay] if path.relay else [])
        before = udp_sink_stats(target)
        drops0 = udp_socket_drops(watched)
        server0 = tree.cpu_seconds() if tree is not None else None
        cpu0, split0 = _cpu_now(), _cpu_split()
        send = path.sock.send
        monotonic = time.monotonic
        sent = errors = 0
        first_error: str | None = None
        progress = _Progress(cfg.progress, cfg.duration, lambda: f"{sent} datagrams sent")
        t0 = monotonic()
        deadline = t0 + cfg.duration
        progress.start = t0
        if cfg.rate is None:
            # As fast as one blocking send() loop goes (the GIL is released in it).
            while sent < UDP_MAX_DATAGRAMS:
                for _ in range(64):
                    try:
                        send(packet)
                        sent += 1
                    except OSError as exc:  # ENOBUFS, or ECONNREFUSED from an ICMP error
                        errors += 1
                        first_error = first_error or repr(exc)
                if monotonic() >= deadline:
                    break
                progress.tick()
        else:
            # Paced: send what is due, in bursts of at most UDP_PACE_BURST, and
            # sleep until the next one is due (sleeps are ~60 µs at the least,
            # so at 50,000/s a burst is a few datagrams).
            rate = cfg.rate
            while sent < UDP_MAX_DATAGRAMS:
                now = monotonic()
                if now >= deadline:
                    break
                due = int((now - t0) * rate) + 1
                if due > sent:
                    for _ in range(min(due - sent, UDP_PACE_BURST)):
                        try:
                            send(packet)
                            sent += 1
                        except OSError as exc:
                            errors += 1
                            first_error = first_error or repr(exc)
                            sent += 1  # counted as sent and lost: keep the pace
                else:
                    time.sleep(max(0.0, t0 + sent / rate - now))
                progress.tick()
        t1 = monotonic()
        progress.done()
        after = _sink_settled(target, before)
        cpu1, split1 = _cpu_now(), _cpu_split()
        server1 = tree.cpu_seconds() if tree is not None else None
        drops1 = udp_socket_drops(watched)
        relay = path.relay
    elapsed = t1 - t0
    received = (after[0] - before[0]) if (before is not None and after is not None) else None
    gen = cpu1 - cpu0

    def dropped(address: tuple[str, int]) -> int | None:
        key = _ip_key(address)
        if key is not None and key in drops0 and key in drops1:
            return drops1[key] - drops0[key]
        return None

    result: dict[str, Any] = {
        "size": size,
        "rate": cfg.rate,
        "relay": format_peer(relay) if relay else None,
        "seconds": round(elapsed, 4),
        "sent": sent,
        "send_errors": errors,
        "first_error": first_error,
        "sent_per_s": sent / elapsed if elapsed > 0 else 0.0,
        "received": received,
        "received_per_s": received / elapsed if received is not None and elapsed > 0 else None,
        "loss_pct": (100.0 * (sent - received) / sent) if received is not None and sent else None,
        "dropped_at_sink": dropped(target),
        "dropped_at_relay": dropped(relay) if relay else None,
        "generator_cpu_s": round(gen, 3),
        "generator_cpu_us_per_datagram": gen / sent * 1e6 if sent else None,
        "generator_cpu_share": gen / elapsed if elapsed > 0 else None,
        "generator_cpu_system_share": (split1[1] - split0[1]) / gen if gen > 0 else None,
        "errors": {"OSError": errors} if errors else {},
    }
    if server0 is not None and server1 is not None:
        result["server_cpu_s"] = round(server1 - server0, 3)
        result["server_cpu_us_per_datagram"] = ((server1 - server0) / received * 1e6
                                                if received else None)
    return result


# -- running it ---------------------------------------------------------------------------


def run(cfg: Config, on_hold: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run one measurement; returns the result as a JSON-able dict.

    ``on_hold`` (idle mode) is called with the partial result while the
    connections are open and idle, e.g. to read the server's memory.
    Raises SocksError (or OSError) if even the first connection fails.
    """
    cfg.validate()
    local: LocalTarget | None = None
    target = cfg.target
    if target is None:
        kind = {"throughput": "sink", "udp-rtt": "udp-echo",
                "udp-oneway": "udp-sink"}.get(cfg.mode, "echo")
        local = LocalTarget(kind, cfg.local_target)
        local.start()
        target = local.address
    try:
        _probe(cfg, target)
        if cfg.mode == "throughput":
            data = _throughput(cfg, target)
        elif cfg.mode == "handshake":
            data = _handshake(cfg, target)
        elif cfg.mode == "udp-rtt":
            data = _udp_rtt(cfg, target)
        elif cfg.mode == "udp-oneway":
            data = _udp_oneway(cfg, target)
        else:
            data = _idle(cfg, target, on_hold)
    finally:
        if local is not None:
            local.close()
    return {
        "mode": cfg.mode,
        "proxy": format_peer(cfg.proxy) if cfg.proxy else None,
        "target": format_peer(target),
        "auth": cfg.auth is not None,
        "streams": cfg.streams if cfg.mode == "throughput" else None,
        "concurrency": cfg.concurrency if cfg.mode not in ("throughput", "udp-oneway") else None,
        "connections": cfg.connections if cfg.mode == "idle" else None,
        "duration": cfg.duration,
        "local_target": cfg.local_target if local is not None else None,
        **data,
    }


def _probe(cfg: Config, target: tuple[str, int]) -> None:
    """One connection (and, for an echo target, one round trip) before the run.

    A wrong address, a refused CONNECT or a target that does not echo is then
    one clear error instead of thousands of counted failures.
    """
    if cfg.udp:
        _probe_udp(cfg, target)
        return
    with open_connection(cfg.proxy, target, cfg.auth) as sock:
        if cfg.mode != "throughput":
            sock.sendall(b"p")
            if _recv_exact(sock, 1, "echo") != b"p":
                raise SocksError("echo", f"the target {format_peer(target)} does not echo")


def _probe_udp(cfg: Config, target: tuple[str, int]) -> None:
    """One association and one datagram: echoed (udp-rtt) or counted by the sink."""
    with UdpPath(cfg.proxy, target, cfg.auth) as path:
        path.sock.settimeout(0.5)
        if cfg.mode == "udp-rtt":
            body = b"probe" + os.urandom(11)
            for _ in range(4):  # a datagram may be lost: a few tries, 2 s in all
                path.sock.send(path.header + body)
                try:
                    data = path.sock.recv(65536)
                except socket.timeout:
                    continue
                payload = parse_udp_reply(data)[2] if path.control is not None else data
                if payload != body:
                    raise SocksError("udp", f"the target {format_peer(target)} does not echo datagrams")
                return
            raise SocksError("udp", f"no echo from {format_peer(target)} within 2 s"
                             + (f" through the relay at {format_peer(path.relay)}" if path.relay else ""))
        before = udp_sink_stats(target)
        if before is None:
            return  # not a fastsocks-bench sink: what it receives cannot be told
        for _ in range(4):
            path.sock.send(path.header + b"probe")
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline:
                now = udp_sink_stats(target)
                if now is not None and now[0] > before[0]:
                    return
                time.sleep(0.02)
        raise SocksError("udp", f"the sink {format_peer(target)} received nothing within 2 s"
                         + (f" through the relay at {format_peer(path.relay)}" if path.relay else ""))


def _address(text: str) -> tuple[str, int]:
    match = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (IPv6 as [::1]:1080)")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"port {port} out of range")
    return host, port


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= MAX_DURATION:
        raise argparse.ArgumentTypeError(f"{text!r} must be in (0, {MAX_DURATION:g}]")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastsocks bench",
        description="Load generator for SOCKS5 servers: bulk throughput, handshake rate, "
        "idle connections, UDP ASSOCIATE round trips and one-way datagrams. Without --proxy "
        "it measures the direct path (the reference).",
        epilog="Loopback only: point --proxy and --target at addresses on this machine.")
    p.add_argument("--proxy", metavar="HOST:PORT", type=_address,
                   help="the SOCKS5 server under test (omit to connect directly)")
    p.add_argument("--user", help="RFC 1929 username")
    p.add_argument("--password", help="RFC 1929 password")
    p.add_argument("--target", metavar="HOST:PORT", type=_address,
                   help="where to CONNECT (or send datagrams): a sink (throughput), an echo "
                   "server (handshake, idle), a UDP echo (udp-rtt) or a UDP sink (udp-oneway); "
                   "omitted: start one on 127.0.0.1 port 0")
    p.add_argument("--mode", choices=MODES, default="throughput")
    p.add_argument("--streams", type=int, default=1, help="throughput: parallel streams (1)")
    p.add_argument("--concurrency", type=int, default=1,
                   help="handshake: parallel workers (1); idle: connections opened at once; "
                   "udp-rtt: associations, each with one datagram in flight")
    p.add_argument("--connections", type=int, default=1000,
                   help=f"idle: connections to open and hold (1000, at most {MAX_CONNECTIONS})")
    p.add_argument("--duration", type=_positive_float, default=5.0,
                   help="seconds to send / loop / hold (5)")
    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help="handshake/idle client engine: uvloop where installed (auto)")
    p.add_argument("--rate", type=float, metavar="N",
                   help="udp-oneway: send N datagrams/s (paced); omitted: as fast as possible")
    p.add_argument("--size", type=int, metavar="BYTES",
                   help=f"UDP payload per datagram ({UDP_RTT_SIZE} for udp-rtt, "
                   f"{UDP_ONEWAY_SIZE} for udp-oneway)")
    p.add_argument("--local-target", choices=("thread", "process"),
                   help="without --target: run the sink/echo in a thread of this process "
                   "(default for TCP) or in a child process (default for UDP)")
    p.add_argument("--server-pid", type=int, metavar="PID",
                   help="also report this server's CPU and RSS from /proc "
                   "(the process, its threads and descendants)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--serve", choices=TARGET_KINDS, help=argparse.SUPPRESS)
    p.add_argument("--serve-host", default="127.0.0.1", help=argparse.SUPPRESS)
    return p


def format_table(result: dict[str, Any]) -> str:
    """The human-readable result: a two-column table."""
    rows: list[tuple[str, str]] = [
        ("mode", result["mode"]),
        ("proxy", result["proxy"] or "none (direct)"),
        ("target", result["target"] + (f" (local, {result['local_target']})"
                                       if result.get("local_target") else "")),
    ]
    if result["mode"] == "throughput":
        rows += [
            ("streams", str(result["streams"])),
            ("seconds", f"{result['seconds']:.2f}"),
            ("sent", f"{result['bytes'] / GiB:.2f} GiB"),
            ("throughput", f"{result['gbit_per_s']:.2f} Gbit/s"),
            ("per stream", ", ".join(f"{x:.2f}" for x in result["per_stream_gbit_per_s"])
             + " Gbit/s"),
            ("generator CPU", _opt(result.get("generator_cpu_s_per_gib"), "{:.3f} CPU-s/GiB")),
        ]
        if "server_cpu_s" in result:
            rows.append(("server CPU", f"{result['server_cpu_s']:.2f} s = "
                         + _opt(result.get("server_cpu_s_per_gib"), "{:.3f} CPU-s/GiB")))
    elif result["mode"] == "handshake":
        rows += [
            ("concurrency", str(result["concurrency"])),
            ("engine", result["engine"]),
            ("seconds", f"{result['seconds']:.2f}"),
            ("handshakes", str(result["handshakes"])),
            ("rate", f"{result['per_s']:.0f} handshakes/s"),
            ("latency p50", f"{result['p50_ms']:.3f} ms"),
            ("latency p99", f"{result['p99_ms']:.3f} ms"),
            ("generator CPU", _opt(result.get("generator_cpu_us_per_handshake"),
                                   "{:.1f} CPU-µs/handshake")
             + _opt(result.get("generator_cpu_share"), " ({:.0%} of a core")
             + _opt(result.get("generator_cpu_system_share"), ", {:.0%} of it in the kernel)")),
        ]
        if "server_cpu_s" in result:
            rows.append(("server CPU", _opt(result.get("server_cpu_us_per_handshake"),
                                            "{:.1f} CPU-µs/handshake")))
    elif result["mode"] == "udp-rtt":
        rows += [
            ("associations", f"{result['concurrency']}, one {result['size']}-byte datagram "
             "in flight on each" + (f"; relay {result['relay']}" if result.get("relay") else "")),
            ("seconds", f"{result['seconds']:.2f}"),
            ("round trips", f"{result['round_trips']} ({result['lost']} lost, "
             f"{result['late']} late)"),
            ("rate", f"{result['per_s']:.0f} round trips/s"),
            ("latency p50", f"{result['p50_us']:.1f} µs"),
            ("latency p99", f"{result['p99_us']:.1f} µs"),
            ("generator CPU", _opt(result.get("generator_cpu_us_per_round_trip"),
                                   "{:.1f} CPU-µs/round trip")
             + _opt(result.get("generator_cpu_share"), " ({:.0%} of a core)")),
        ]
        if "server_cpu_s" in result:
            rows.append(("server CPU", _opt(result.get("server_cpu_us_per_round_trip"),
                                            "{:.1f} CPU-µs/round trip")))
    elif result["mode"] == "udp-oneway":
        pace = "unpaced" if result["rate"] is None else f"paced at {result['rate']:g}/s"
        rows += [
            ("datagrams", f"{result['size']} bytes, {pace}"
             + (f"; relay {result['relay']}" if result.get("relay") else "")),
            ("seconds", f"{result['seconds']:.2f}"),
            ("sent", f"{result['sent']} = {result['sent_per_s']:.0f}/s"
             + (f" ({result['send_errors']} send errors)" if result["send_errors"] else "")),
            ("received by sink", "n/a (the target does not report)" if result["received"] is None
             else f"{result['received']} = {result['received_per_s']:.0f}/s"),
            ("loss", _opt(result.get("loss_pct"), "{:.2f} %")
             + ("" if result.get("dropped_at_sink") is None
                else f"; dropped at the sink's socket: {result['dropped_at_sink']}")
             + ("" if result.get("dropped_at_relay") is None
                else f"; at the relay's socket: {result['dropped_at_relay']}")),
            ("generator CPU", _opt(result.get("generator_cpu_us_per_datagram"),
                                   "{:.2f} CPU-µs/datagram")
             + _opt(result.get("generator_cpu_share"), " ({:.0%} of a core)")),
        ]
        if "server_cpu_s" in result:
            rows.append(("server CPU", _opt(result.get("server_cpu_us_per_datagram"),
                                            "{:.2f} CPU-µs/datagram received")))
    else:
        rows += [
            ("connections", f"{result['opened']} open of {result['requested']} "
             f"in {result['open_seconds']:.2f} s"),
            ("held", f"{result['held_seconds']:g} s; {result['sampled_alive_after_hold']}/"
             f"{result['sampled']} sampled still echo"),
        ]
        if "server_rss_kib_delta" in result:
            rows.append(("server RSS", f"{result['server_rss_kib_before']} -> "
                         f"{result['server_rss_kib_held']} KiB = "
                         + _opt(result.get("server_kib_per_connection"), "{:.2f} KiB/connection")))
    errors = result.get("errors")
    if errors:
        rows.append(("errors", json.dumps(errors)))
    if result.get("first_error"):
        rows.append(("first error", result["first_error"]))
    if result.get("local_target") == "thread":  # the target's CPU is this process's too
        rows = [("generator+target CPU" if k == "generator CPU" else k, v) for k, v in rows]
    width = max(len(k) for k, _ in rows)
    lines = [f"| {'':{width}} | result |", f"|{'-' * (width + 2)}|--------|"]
    lines += [f"| {k:{width}} | {v} |" for k, v in rows]
    return "\n".join(lines)


def _opt(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)


def main(argv: list[str] | None = None) -> int:
    """``fastsocks bench ARGS``; returns the exit status."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.serve:
        return serve(args.serve, args.serve_host)
    if (args.user is None) != (args.password is None):
        print("fastsocks bench: error: --user and --password go together", file=sys.stderr)
        return 2
    if args.user is not None and args.proxy is None:
        print("fastsocks bench: error: --user/--password need --proxy", file=sys.stderr)
        return 2
    local_target = args.local_target or ("process" if args.mode.startswith("udp-") else "thread")
    cfg = Config(
        mode=args.mode, proxy=args.proxy, rate=args.rate, size=args.size,
        auth=(args.user, args.password) if args.user is not None else None,
        target=args.target, streams=args.streams, concurrency=args.concurrency,
        connections=args.connections, duration=args.duration, engine=args.engine,
        local_target=local_target, server_pid=args.server_pid,
        progress=sys.stderr.isatty(),
    )
    try:
        cfg.validate()
        if cfg.server_pid is not None and not ProcessTree(cfg.server_pid).alive():
            raise ValueError(f"--server-pid {cfg.server_pid}: no such process in /proc")
        result = run(cfg)
    except ValueError as exc:
        print(f"fastsocks bench: error: {exc}", file=sys.stderr)
        return 2
    except (SocksError, OSError, RuntimeError) as exc:
        where = f"through {format_peer(cfg.proxy)}" if cfg.proxy else "directly"
        print(f"fastsocks bench: error connecting {where}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result))
    # Non-zero when nothing at all was measured (every attempt failed).
    return 0 if (result.get("handshakes") or result.get("opened") or result.get("bytes")
                 or result.get("round_trips") or result.get("received")
                 or (result["mode"] == "udp-oneway" and result.get("received") is None
                     and result.get("sent"))) else 1


if __name__ == "__main__":
    sys.exit(main())
