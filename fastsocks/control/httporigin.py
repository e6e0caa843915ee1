"""One connection to an origin server for forwarded HTTP requests (control/httpforward.py).

``Origin`` writes each request (its head from ``request_head``, its body as
the client sends it, chunked again where it came chunked) and parses the
responses with llhttp, passing each on to the client: the status line, the
end-to-end fields, ``Via``, and the body framed for the client
(``Content-Length`` as it came; chunked re-chunked; a body that ends with the
connection chunked for HTTP/1.1, raw then closed for HTTP/1.0).  Interim 1xx
responses go to HTTP/1.1 clients only (RFC 9110 §15.2); a 101 is refused
(Upgrade is hop-by-hop, never forwarded).  The head is bounded at 32 KiB.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import httptools

from .httpparse import MAX_HEAD, HttpError, HttpRequest, end_to_end

if TYPE_CHECKING:
    from .httpforward import Forwarder

__all__ = ["Origin", "HIGH"]

HIGH = 64 * 1024  # octets buffered towards the origin (and queued from the client) at most

# How a response's body reaches the client.
_NONE, _RAW, _CHUNK, _RAW_CLOSE = 0, 1, 2, 3


class _Done(Exception):
    """Raised in llhttp's callback to end a response it cannot know has no body (HEAD)."""


class Origin(asyncio.Protocol):
    """One connection to an origin server: requests out, responses parsed and passed on."""

    __slots__ = ("forwarder", "key", "transport", "parser", "reason", "headers", "size",
                 "mode", "interim", "keep", "idle", "request", "gone")

    def __init__(self, forwarder: Forwarder, key: tuple[str, int, str | None]) -> None:
        self.forwarder = forwarder
        self.key = key
        self.transport: Any = None
        self.parser = httptools.HttpResponseParser(self)
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.size = 0
        self.mode = _NONE
        self.interim = False
        self.keep = True  # the connection may carry the next request
        self.idle = False  # no request on it now
        self.request: HttpRequest | None = None
        self.gone = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(HIGH)
        self.forwarder.origin_ready(self)

    def begin(self, request: HttpRequest) -> None:
        self.request = request
        self.idle = False

    def write(self, data: bytes) -> None:
        self.forwarder.bytes_up += len(data)
        self.transport.write(data)

    def send_body(self, data: bytes) -> None:
        request = self.request
        self.forwarder.active = True
        if request is not None and request.chunked:  # RFC 9112 §7.1: chunked again
            self.write(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self.write(data)

    def pause_writing(self) -> None:
        self.forwarder.origin_paused(True)

    def resume_writing(self) -> None:
        self.forwarder.origin_paused(False)

    def close(self) -> None:
        self.gone = True
        if self.transport is not None:
            self.transport.close()

    # -- the response -----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.gone:
            return
        forwarder = self.forwarder
        forwarder.active = True
        if self.idle or self.request is None:
            # Nothing was asked: an origin that talks out of turn is not reused.
            self.keep = False
            self.close()
            forwarder.origin_gone(self)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Done):  # a HEAD's response: no body, whatever it says
                self.parser = httptools.HttpResponseParser(self)
                self.keep = False  # what follows its head cannot be told apart: not reused
                self._complete()
                return
            forwarder.origin_failed(str(cause) if isinstance(cause, HttpError)
                                    else f"bad response: {exc}")
        except httptools.HttpParserError as exc:
            forwarder.origin_failed(f"bad response: {exc}")

    def eof_received(self) -> bool:
        self._ended()
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self._ended()
        # Nothing more comes: let go of llhttp's parser, whose callbacks are
        # this object's bound methods (a cycle left to the collector).
        del self.parser

    def _ended(self) -> None:
        if self.gone:
            return
        self.gone = True
        forwarder = self.forwarder
        if self.idle or self.request is None:
            forwarder.origin_gone(self)
        elif self.mode == _CHUNK and not self.keep:  # the body ended with the connection
            forwarder.client_write(b"0\r\n\r\n")
            self._complete()
        elif self.mode == _RAW_CLOSE:
            self._complete()
        else:
            forwarder.origin_failed("closed before the response was complete")

    def on_message_begin(self) -> None:
        self.reason = b""
        self.headers = []
        self.size = 0

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        self.size += len(name) + len(value) + 4
        if self.size > MAX_HEAD:
            raise HttpError(502, f"response head larger than {MAX_HEAD} octets")

    def on_headers_complete(self) -> None:
        forwarder = self.forwarder
        request = self.request
        assert request is not None
        code = self.parser.get_status_code()
        old_client = request.version == "1.0"
        headers = self.headers
        lines = [b"HTTP/1.1 %d %s\r\n" % (code, self.reason)]
        if code < 200:
            if code == 101:
                raise HttpError(502, "the origin switched protocols (101), not carried here")
            self.interim = True
            if not old_client:  # RFC 9110 §15.2: no 1xx to an HTTP/1.0 client
                lines += end_to_end(headers)
                lines.append(b"\r\n")
                forwarder.client_write(b"".join(lines))
            return
        self.interim = False
        chunked = any(name.lower() == b"transfer-encoding" for name, _ in headers)
        sized = any(name.lower() == b"content-length" for name, _ in headers)
        if request.method == "HEAD" or code == 204 or code == 304:
            mode = _NONE
        elif chunked or not sized:
            mode = _RAW_CLOSE if old_client else _CHUNK
            if not chunked:
                self.keep = False  # the body ends with the origin's connection
        else:
            mode = _RAW
        self.mode = mode
        lines += end_to_end(headers)
        lines.append(b"Via: %s fastsocks\r\n" % self.parser.get_http_version().encode())
        if mode == _CHUNK:
            lines.append(b"Transfer-Encoding: chunked\r\n")
        close = mode == _RAW_CLOSE or not request.keep_alive
        forwarder.close_after = close
        if close:
            lines.append(b"Connection: close\r\n")
        elif old_client:
            lines.append(b"Connection: keep-alive\r\n")
        lines.append(b"\r\n")
        forwarder.answered = True
        forwarder.client_write(b"".join(lines))
        if request.method == "HEAD":
            raise _Done()

    def on_body(self, body: bytes) -> None:
        if self.mode == _CHUNK:
            self.forwarder.client_write(b"%x\r\n%s\r\n" % (len(body), body))
        else:
            self.forwarder.client_write(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        if self.mode == _CHUNK:
            self.forwarder.client_write(b"0\r\n\r\n")
        self.keep = self.keep and self.parser.should_keep_alive()
        self._complete()

    def _complete(self) -> None:
        self.idle = True
        self.request = None
        self.mode = _NONE
        self.forwarder.response_complete()
