"""The HTTP listener of ``--metrics``: ``/metrics`` and ``/healthz``.

A small threaded ``http.server`` beside the event loop: a scrape never
waits for the loop, and the loop never waits for a scrape.  In one process
it flushes the loop's counts first, so a scrape sees every connection
closed before it; the master of ``--workers N`` serves the workers' sum.
"""

from __future__ import annotations

import http.server
import ipaddress
import logging
import socket
import threading
from typing import Any, Callable

from ..errors import ConfigError
from ..net.address import format_address
from .metrics import flush_local, process_registry

__all__ = ["MetricsServer", "serve_metrics", "is_loopback"]

log = logging.getLogger("fastsocks.metrics")


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.partition("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"

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
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # scrapes every few seconds would flood the log


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    registry: Any
    healthy: Callable[[], bool]


class MetricsServer:
    """``/metrics`` and ``/healthz`` on their own listener, served by a thread."""

    def __init__(self, host: str, port: int, registry: Any, healthy: Callable[[], bool]) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        cls = type("_MetricsHTTPServer", (_HTTPServer,), {"address_family": family})
        self.httpd: _HTTPServer = cls((host, port), _Handler)
        self.httpd.registry = registry
        self.httpd.healthy = healthy
        self.address = self.httpd.server_address[:2]
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        """Serve from a thread (the master: only after forking its workers)."""
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.2},
                                       name="fastsocks-metrics", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://{format_address(*self.address)}"

    def close(self) -> None:
        if self.thread is not None:
            self.httpd.shutdown()
            self.thread.join(5)
            self.thread = None
        self.httpd.server_close()


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
