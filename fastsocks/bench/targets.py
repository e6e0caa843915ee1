"""The targets a run measures against: a TCP sink, a TCP echo, a UDP echo and a UDP sink.

Without ``--target`` the generator starts one on loopback port 0, in a thread
of its own process or in a child process (``LocalTarget``); ``--serve KIND``
is that child.  A TCP target may listen on several loopback addresses at
the same port (``name_hosts``): with ``--target-name localhost`` the proxy
dials whichever of 127.0.0.1 and ::1 the name gives it first, and either
must answer, or every connection would pay a refused attempt first.  For the TCP modes a thread is the default: the sink's
``recv_into`` releases the GIL, and it measured as fast as a child process.
For the UDP modes a child process is: a UDP echo in a thread takes the GIL
for every datagram from the generator's epoll loop (benchmarks/RESULTS.md
has the figures).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
from typing import Any

from ..net.address import format_peer
from .common import BUFFER_SIZE, IO_TIMEOUT, family, new_event_loop
from .udp_targets import UdpTarget

__all__ = ["TARGET_KINDS", "LocalTarget", "serve", "name_hosts"]

_PORT_TRIES = 20  # binding every address at one port: tries before giving up


def name_hosts(name: str) -> tuple[str, ...]:
    """The loopback addresses a local target listens on for ``--target-name name``.

    127.0.0.1 first (the address the result names), then each address the
    name has here (getaddrinfo: /etc/hosts and nsswitch, what the proxy's
    system resolver gets on this host), then ::1 where this host has IPv6
    loopback: ``localhost`` is 127.0.0.1 on some hosts and ::1 and
    127.0.0.1 on others, and a proxy asking c-ares may get both.
    ValueError when the name does not resolve here or leads off this host.
    """
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise ValueError(f"--target-name {name} does not resolve here ({exc}): pass --target "
                         "HOST:PORT where the proxy will find it") from None
    hosts = ["127.0.0.1"]
    for *_, sockaddr in infos:
        address = str(sockaddr[0])
        if not ipaddress.ip_address(address.partition("%")[0]).is_loopback:
            raise ValueError(f"--target-name {name} is {address} here, not loopback: the "
                             "bench's own target listens on loopback only; pass --target "
                             "HOST:PORT where the name leads")
        if address not in hosts:
            hosts.append(address)
    if "::1" not in hosts and socket.has_ipv6:
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
                probe.bind(("::1", 0))
            hosts.append("::1")
        except OSError:
            pass  # no IPv6 loopback here: nothing can dial ::1 either
    return tuple(hosts)


def _listeners(hosts: tuple[str, ...], blocking: bool = True) -> list[socket.socket]:
    """Listening TCP sockets on every one of ``hosts``, all at one port (port 0 picks it)."""
    for _ in range(_PORT_TRIES):
        out: list[socket.socket] = []
        port = 0
        try:
            for host in hosts:
                sock = socket.socket(family(host), socket.SOCK_STREAM)
                out.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if sock.family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((host, port))
                port = sock.getsockname()[1]
                sock.listen(4096)
                sock.setblocking(blocking)
        except OSError as exc:
            for sock in out:
                sock.close()
            if exc.errno != errno.EADDRINUSE or len(out) < 2:
                raise
            continue  # the port is taken on a later address: another one
        return out
    raise OSError(errno.EADDRINUSE, f"no port free on all of {', '.join(hosts)}")


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
    """Accepts on its listeners (one per address) in a thread; one thread per connection."""

    MAX_THREADS = 1024

    def __init__(self, hosts: tuple[str, ...]) -> None:
        self.listeners = _listeners(hosts, blocking=False)
        self.address: tuple[str, int] = self.listeners[0].getsockname()[:2]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def serve(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select(self.listeners, [], [], 0.2)  # stop() is seen
            except (OSError, ValueError):  # closed
                break
            for listener in ready:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    continue
                except OSError:
                    return
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
        for listener in self.listeners:
            listener.close()
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



class _Echo:
    """An echo server on an event loop (uvloop where installed), on one port of each host."""

    def __init__(self, hosts: tuple[str, ...], loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.conns: set[asyncio.Transport] = set()
        socks = _listeners(hosts, blocking=False)
        self.address: tuple[str, int] = socks[0].getsockname()[:2]
        self.servers = [loop.run_until_complete(loop.create_server(
            lambda: _EchoProtocol(self.conns), sock=sock, backlog=4096)) for sock in socks]

    def close(self) -> None:
        for server in self.servers:
            server.close()
        for t in list(self.conns):
            t.abort()
        for server in self.servers:
            self.loop.run_until_complete(server.wait_closed())
        self.loop.run_until_complete(asyncio.sleep(0))


TARGET_KINDS = ("sink", "echo", "udp-echo", "udp-sink")


class LocalTarget:
    """A sink or echo server (TCP or UDP) on loopback port 0, in a thread or a child process.

    Use as a context manager; ``address`` is where it listens.  A TCP target
    also listens on each of ``also`` at the same port (``name_hosts``).
    """

    def __init__(self, kind: str, where: str = "process", host: str = "127.0.0.1",
                 also: tuple[str, ...] = ()) -> None:
        if kind not in TARGET_KINDS:
            raise ValueError(f"target kind {kind!r}")
        if where not in ("process", "thread"):
            raise ValueError(f"target placement {where!r}")
        if also and kind.startswith("udp-"):
            raise ValueError("a UDP target listens on one address")
        self.kind, self.where, self.host = kind, where, host
        self.hosts: tuple[str, ...] = (host, *(h for h in also if h != host))
        self.address: tuple[str, int] = ("", 0)
        self.proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._sink: _Sink | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._echo: _Echo | None = None
        self._udp: UdpTarget | None = None

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
            self._udp = UdpTarget(self.kind, self.host)
            self.address = self._udp.address
            self._thread = threading.Thread(target=self._udp.serve, daemon=True)
            self._thread.start()
        elif self.kind == "sink":
            self._sink = _Sink(self.hosts)
            self.address = self._sink.address
            self._thread = threading.Thread(target=self._sink.serve, daemon=True)
            self._thread.start()
        else:
            ready = threading.Event()
            errors: list[BaseException] = []

            def serve() -> None:
                loop = self._loop = new_event_loop()
                try:
                    self._echo = _Echo(self.hosts, loop)
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
             "--serve-host", ",".join(self.hosts)],
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
    """``--serve KIND``: run one target in the foreground until SIGTERM/SIGINT.

    ``host`` may name several addresses, comma-separated (TCP kinds: one port on each).
    """
    hosts = tuple(h for h in host.split(",") if h)
    if kind in ("udp-echo", "udp-sink"):
        udp = UdpTarget(kind, host)
        signal.signal(signal.SIGTERM, lambda *_: udp.stop())
        signal.signal(signal.SIGINT, lambda *_: udp.stop())
        print(f"fastsocks-bench {kind} listening on {format_peer(udp.address)}", flush=True)
        try:
            udp.serve()
        finally:
            udp.close()
        return 0
    if kind == "sink":
        sink = _Sink(hosts)
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
        echo = _Echo(hosts, loop)
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
