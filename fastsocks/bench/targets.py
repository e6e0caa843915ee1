"""The targets a run measures against: a TCP sink, a TCP echo, a UDP echo and a UDP sink.

Without ``--target`` the generator starts one on loopback port 0, in a thread
of its own process or in a child process (``LocalTarget``); ``--serve KIND``
is that child.  For the TCP modes a thread is the default: the sink's
``recv_into`` releases the GIL, and it measured as fast as a child process.
For the UDP modes a child process is: a UDP echo in a thread takes the GIL
for every datagram from the generator's epoll loop (benchmarks/RESULTS.md
has the figures).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from typing import Any

from ..net.address import format_peer
from .common import BUFFER_SIZE, IO_TIMEOUT, family, new_event_loop
from .udp_targets import UdpTarget

__all__ = ["TARGET_KINDS", "LocalTarget", "serve"]


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
        self.listener = socket.socket(family(host), socket.SOCK_STREAM)
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
