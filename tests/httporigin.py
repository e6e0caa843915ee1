"""An HTTP/1.1 origin for the HTTP proxy tests, plain or TLS, on loopback.

ThreadingHTTPServer speaking HTTP/1.1 (keep-alive): ``/echo`` answers with
what it received as JSON (method, path, headers, body length and SHA-256),
``/chunked?n=N`` sends N octets chunked, ``/big?n=N`` N octets with
Content-Length, ``/close?n=N`` N octets ended by closing (no length).  The
TLS variant uses a self-signed certificate made by openssl for 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit


def pattern(n: int) -> bytes:
    return (b"0123456789abcdef" * (n // 16 + 1))[:n]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10

    def log_message(self, *args: Any) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _answer(self) -> None:
        url = urlsplit(self.path)
        n = int(parse_qs(url.query).get("n", ["0"])[0])
        body = self._body()
        if url.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            data = pattern(n)
            for i in range(0, len(data), 7000):
                piece = data[i:i + 7000]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            return
        if url.path == "/close":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(pattern(n))
            self.close_connection = True
            return
        if url.path == "/big":
            data = pattern(n)
        else:
            data = json.dumps({
                "method": self.command, "path": self.path,
                "headers": [[k, v] for k, v in self.headers.items()],
                "length": len(body), "sha256": hashlib.sha256(body).hexdigest(),
                "peer": self.client_address[0],
            }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json" if url.path != "/big" else
                         "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "keep-alive")  # hop-by-hop: the proxy drops it
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _answer  # noqa: N815


class Origin:
    def __init__(self, tls_dir: Path | None = None) -> None:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.scheme = "http"
        self.cert: Path | None = None
        if tls_dir is not None:
            self.cert, key = tls_dir / "cert.pem", tls_dir / "key.pem"
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                            "-keyout", str(key), "-out", str(self.cert), "-days", "2",
                            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                           check=True, capture_output=True, timeout=60)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.cert, key)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str = "/echo") -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
