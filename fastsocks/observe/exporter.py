"""The HTTP listener of ``--metrics``: ``/metrics`` and ``/healthz``.

Threads beside the event loop: a scrape never waits for the loop, and the
loop never waits for a scrape.  In one process it flushes the loop's counts
first, so a scrape sees every connection closed before it; the master of
``--workers N`` serves the workers' sum.

Bounded against clients that connect and say nothing (issue 17): one thread
reads every request head with a selector, so an idle or dribbling client
costs a descriptor, not a thread, and is closed ``REQUEST_TIMEOUT`` seconds
after it connected unless its request head is in; at most ``MAX_PENDING``
such connections are kept (the oldest goes first), so a scraper that sends
its request at once is read whatever the others do.  Complete requests are
answered by at most ``MAX_THREADS`` threads (http.server's handler, one
request per connection), with the same timeout on writing the answer; past
``MAX_QUEUED`` waiting requests, new ones are closed unanswered.
"""

from __future__ import annotations

import http.server
import io
import ipaddress
import logging
import os
import queue
import selectors
import socket
import threading
import time
import weakref
from typing import Any, Callable

from ..errors import ConfigError
from ..net.address import format_address
from .metrics import flush_local, process_registry

__all__ = ["MetricsServer", "serve_metrics", "is_loopback", "REQUEST_TIMEOUT", "MAX_THREADS"]

log = logging.getLogger("fastsocks.metrics")

REQUEST_TIMEOUT = 5.0  # seconds from accept to a whole request head, and to write the answer
MAX_THREADS = 16  # requests answered at once
MAX_PENDING = 256  # connections whose request head is not in yet
MAX_QUEUED = 64  # whole requests waiting for a thread
MAX_HEAD = 16384  # bytes of request line and headers


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.partition("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"


class _Handler(http.server.BaseHTTPRequestHandler):
    """One request, whose head the listener thread has read already."""

    server: Any  # the MetricsServer: registry, healthy
    protocol_version = "HTTP/1.1"

    def __init__(self, sock: socket.socket, head: bytes, peer: Any, server: MetricsServer) -> None:
        self._head = head
        super().__init__(sock, peer, server)  # type: ignore[arg-type]

    def setup(self) -> None:
        self.connection = self.request
        self.connection.settimeout(REQUEST_TIMEOUT)  # for writing the answer
        self.rfile = io.BytesIO(self._head)  # then EOF: one request per connection
        self.wfile = _Writer(self.connection)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.partition("?")[0]
        if path == "/metrics":
            from prometheus_client.exposition import choose_encoder

            flush_local()  # this process counts (one process): be current

            # Text format 0.0.4 unless the scraper asks for OpenMetrics.
            encoder, content_type = choose_encoder(self.headers.get("Accept") or "")
            try:
                body = encoder(self.server.registry)
            except Exception:  # a torn file from a dying worker: say so, don't die
                log.exception("collecting metrics failed")
                self._send(500, b"collecting metrics failed\n", "text/plain; charset=utf-8")
                return
            self._send(200, body, content_type)
        elif path == "/healthz":
            if self.server.healthy():
                self._send(200, b"ok\n", "text/plain; charset=utf-8")
            else:
                self._send(503, b"stopping\n", "text/plain; charset=utf-8")
        else:
            self._send(404, b"not found: try /metrics or /healthz\n", "text/plain; charset=utf-8")

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # scrapes every few seconds would flood the log


class _Writer(io.BufferedIOBase):
    """sendall(), whose timeout bounds the whole answer (not each send)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._sock.sendall(data)
        return len(data)


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


class MetricsServer:
    """``/metrics`` and ``/healthz`` on their own listener, served by threads."""

    def __init__(self, host: str, port: int, registry: Any, healthy: Callable[[], bool]) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.create_server((host, port), family=family, backlog=128)
        self.socket.setblocking(False)
        self.registry = registry
        self.healthy = healthy
        self.address = self.socket.getsockname()[:2]
        self.thread: threading.Thread | None = None
        self._pending: dict[socket.socket, tuple[float, bytearray, Any]] = {}  # by age
        self._queue: queue.Queue[Any] = queue.Queue(MAX_QUEUED)
        self._workers: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()
        self._active: set[socket.socket] = set()
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = False
        # A worker forked later (a respawn) must not keep our connections open.
        ref = weakref.ref(self)

        def in_child() -> None:
            server = ref()
            if server is not None:
                server._forget()

        os.register_at_fork(after_in_child=in_child)

    def start(self) -> None:
        """Serve from a thread (the master: only after forking its workers)."""
        self.thread = threading.Thread(target=self._serve, name="fastsocks-metrics", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://{format_address(*self.address)}"

    def close(self) -> None:
        self._stopping = True
        if self.thread is not None:
            self._wake_w.send(b"x")
            self.thread.join(5)
            self.thread = None
        for _ in self._workers:
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                break
        self._forget()

    def _forget(self) -> None:
        """Close every descriptor of ours (at the end, and in a forked child)."""
        self._stopping = True
        for sock in [self.socket, self._wake_r, self._wake_w, *self._pending,
                     *list(self._active)]:
            _close(sock)
        self._pending.clear()

    # -- the listener thread: accept, read request heads, hand them on ------

    def _serve(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self.socket, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping:
                now = time.monotonic()
                wait = 1.0
                if self._pending:
                    oldest = next(iter(self._pending.values()))[0]
                    wait = max(0.0, min(wait, oldest + REQUEST_TIMEOUT - now))
                for key, _ in sel.select(wait):
                    if key.fileobj is self.socket:
                        self._accept(sel)
                    elif key.fileobj is not self._wake_r:
                        self._read(sel, key.fileobj)  # type: ignore[arg-type]
                self._expire(sel, time.monotonic())

    def _accept(self, sel: selectors.BaseSelector) -> None:
        for _ in range(64):  # a batch, then the others get a turn
            try:
                sock, peer = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: the clients wait in the backlog
                log.warning("metrics listener: accept failed: %s", exc)
                return
            sock.setblocking(False)
            if len(self._pending) >= MAX_PENDING:  # the oldest silent one goes
                self._drop(sel, next(iter(self._pending)))
            self._pending[sock] = (time.monotonic(), bytearray(), peer)
            sel.register(sock, selectors.EVENT_READ)

    def _read(self, sel: selectors.BaseSelector, sock: socket.socket) -> None:
        entry = self._pending.get(sock)
        if entry is None:
            return
        try:
            data = sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        head = entry[1]
        head += data
        if not data or len(head) > MAX_HEAD:
            self._drop(sel, sock)
            return
        if b"\r\n\r\n" not in head and b"\n\n" not in head:
            return
        sel.unregister(sock)
        del self._pending[sock]
        sock.setblocking(True)
        self._dispatch(sock, bytes(head), entry[2])

    def _expire(self, sel: selectors.BaseSelector, now: float) -> None:
        while self._pending:
            sock, (since, _, _) = next(iter(self._pending.items()))
            if now - since < REQUEST_TIMEOUT:
                return
            self._drop(sel, sock)

    def _drop(self, sel: selectors.BaseSelector, sock: socket.socket) -> None:
        del self._pending[sock]
        sel.unregister(sock)
        _close(sock)

    # -- the answering threads ----------------------------------------------

    def _dispatch(self, sock: socket.socket, head: bytes, peer: Any) -> None:
        try:
            self._queue.put_nowait((sock, head, peer))
        except queue.Full:  # scraped far faster than answered: this one is closed
            _close(sock)
            return
        with self._lock:
            # More requests waiting than threads free to take them: one more thread.
            spawn = self._queue.qsize() > self._idle and len(self._workers) < MAX_THREADS
            if spawn:
                self._idle += 1  # counted before it starts: no second spawn for this item
        if spawn:
            thread = threading.Thread(target=self._work, name="fastsocks-metrics-http",
                                      daemon=True)
            self._workers.append(thread)
            thread.start()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            with self._lock:
                self._idle -= 1
            sock, head, peer = item
            self._active.add(sock)
            try:
                _Handler(sock, head, peer, self)
            except Exception as exc:  # a client gone, a write timeout: its connection only
                log.debug("metrics request from %s failed: %s", peer, exc)
            finally:
                self._active.discard(sock)
                _close(sock)
                with self._lock:
                    self._idle += 1


def serve_metrics(listen: tuple[str, int], healthy: Callable[[], bool],
                  start: bool = True) -> MetricsServer:
    """Listen for this process's registry; warn when it is not loopback."""
    host, port = listen
    try:
        server = MetricsServer(host, port, process_registry(), healthy)
    except OSError as exc:
        raise ConfigError(f"metrics listen {host}:{port}: cannot listen: "
                          f"{exc.strerror or exc}") from None
    if not is_loopback(host):
        log.warning("metrics listen on %s, which is not a loopback address: anyone who can "
                    "reach it can read the metrics; put it behind a firewall", server.url)
    if start:
        server.start()
    log.info("metrics on %s/metrics", server.url)
    return server
