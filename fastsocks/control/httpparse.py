"""HTTP/1.1 messages for the proxy: the client's requests as llhttp parses them, the fields.

``Inbound`` feeds the client's bytes to llhttp (``httptools``) and queues what
they make, in order: a ``HttpRequest`` per head, body bytes, ``END`` per
request, and an ``HttpError`` where parsing must stop (400, 414, 431, 501;
``in_body`` when the head was already taken).  The head is bounded at 32
KiB.  ``end_to_end`` drops the hop-by-hop fields (RFC 9110 §7.6.1) and
``request_head`` writes a request as the origin gets it.  Used by
``control/http.py`` (the stage) and ``control/httpforward.py``.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import httptools

from ..constants import Command

__all__ = ["Inbound", "HttpRequest", "HttpError", "END", "MAX_HEAD", "error_response",
           "end_to_end", "request_head"]

MAX_HEAD = 32 * 1024  # octets of a request head (request line and fields)
END = None  # the event "the request's body is complete" in Inbound.events

_CONNECT = Command.CONNECT

_PHRASES = {400: "Bad Request", 403: "Forbidden", 407: "Proxy Authentication Required",
            414: "URI Too Long", 431: "Request Header Fields Too Large",
            501: "Not Implemented", 502: "Bad Gateway", 504: "Gateway Timeout"}
def error_response(status: int, text: str, extra: bytes = b"") -> bytes:
    """A whole HTTP/1.1 error response that closes the connection."""
    body = f"{status} {_PHRASES.get(status, 'Error')}: {text}\n".encode("ascii", "replace")
    return (b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n%s\r\n%s" % (status, _PHRASES.get(status, "Error").encode(),
                                                len(body), extra, body))


class HttpError(Exception):
    """A request that gets an error status; ``in_body``: its head was already taken."""

    def __init__(self, status: int, text: str, in_body: bool = False) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.in_body = in_body


class HttpRequest:
    """One request head: what the rules see (command, host, port) and what is forwarded."""

    __slots__ = ("command", "host", "port", "method", "target", "authority", "headers",
                 "version", "keep_alive", "chunked", "authorization", "early")

    def __init__(self, command: int, host: str, port: int) -> None:
        self.command = command
        self.host = host
        self.port = port
        self.method = "GET"
        self.target = b"/"  # origin-form (RFC 9112 §3.2.1)
        self.authority = b""  # the Host the origin gets (RFC 9112 §3.2.2)
        self.headers: list[tuple[bytes, bytes]] = []
        self.version = "1.1"
        self.keep_alive = True
        self.chunked = False
        self.authorization: bytes | None = None
        self.early = b""  # CONNECT: what came after the head, for the target


def _host_port(authority: bytes, default: int | None) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` (RFC 9110 §7.2, §9.3.6) as (host, port)."""
    text = authority.decode("ascii")  # llhttp let only URL characters through
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError("a bracket without its pair")
        port_text = rest[1:]
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            host, port_text = text, ""
        if ":" in host:
            raise ValueError("an IPv6 address must be in brackets")
    if not port_text:
        if default is None:
            raise ValueError("no port")
        return host, default
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad port {port_text!r}")
    if not host:
        raise ValueError("no host")
    return host, int(port_text)


class Inbound:
    """The client's bytes as HTTP requests, in order: llhttp parses, events queue.

    ``events`` holds, in the order they came, a ``HttpRequest`` per head,
    body bytes, ``END`` per request and at most one ``HttpError`` (parsing
    stops there).  The consumer (the CONNECT path, ``Forwarder.pump``) takes
    them when it is ready; ``queued`` counts the body bytes waiting, so that
    reading pauses instead of buffering a body.
    """

    __slots__ = ("parser", "events", "url", "headers", "size", "in_body", "head_bytes",
                 "queued", "tunnel", "stopped", "credentials")

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.events: deque[Any] = deque()
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.size = 0
        self.in_body = False
        self.head_bytes = 0  # octets fed since the last head ended
        self.queued = 0
        self.tunnel = False  # a CONNECT's head is in: what follows is not HTTP
        self.stopped = False  # an error: nothing more is parsed
        self.credentials: bytes | None = None  # the Proxy-Authorization that logged in

    # -- llhttp's callbacks (httptools) -------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.size = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > MAX_HEAD:
            raise HttpError(414, f"request target longer than {MAX_HEAD} octets")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        self.size += len(name) + len(value) + 4
        if self.size + len(self.url) > MAX_HEAD:
            raise HttpError(431, f"request head larger than {MAX_HEAD} octets")

    def on_headers_complete(self) -> None:
        self.head_bytes = 0
        self.in_body = True
        self.events.append(self._request())

    def on_body(self, body: bytes) -> None:
        self.events.append(body)
        self.queued += len(body)

    def on_message_complete(self) -> None:
        self.in_body = False
        self.events.append(END)

    # -- feeding ----------------------------------------------------------------

    def release(self) -> None:
        """Nothing more is parsed: let go of llhttp's parser.

        Its callbacks are this object's bound methods, so the two make a
        cycle, which only the collector's full pass would free once the
        connection had lived long; without it reference counting frees both.
        """
        self.stopped = True
        if hasattr(self, "parser"):  # released once already: nothing to do
            del self.parser

    def feed(self, data: bytes) -> None:
        """Parse ``data``; errors become an ``HttpError`` event and stop the parsing."""
        if self.stopped:
            return
        if not self.in_body:
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = exc.args[0]
            request = self._last_request()
            if request is not None and request.command == _CONNECT:
                request.early = data[offset:]
                self.tunnel = True
                return
            # An Upgrade the proxy does not carry (its fields are hop-by-hop,
            # removed): the request is forwarded as a plain one; go on after it.
            self.in_body = False
            self.feed(data[offset:])
            return
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self._stop(cause if isinstance(cause, HttpError) else
                       HttpError(400, f"malformed request: {exc}", self.in_body))
            return
        except httptools.HttpParserError as exc:
            self._stop(HttpError(400, f"malformed request: {exc}", self.in_body))
            return
        if not self.in_body and self.head_bytes > MAX_HEAD + 4:
            self._stop(HttpError(431, f"request head larger than {MAX_HEAD} octets"))

    def _stop(self, error: HttpError) -> None:
        self.stopped = True
        # The event is a value: a raised one's traceback (its frames hold this
        # object) and its chained cause would make a cycle for the collector.
        error.__traceback__ = error.__context__ = error.__cause__ = None
        self.events.append(error)

    def _last_request(self) -> HttpRequest | None:
        for event in reversed(self.events):
            if type(event) is HttpRequest:
                return event
        return None

    def _request(self) -> HttpRequest:
        """The head just parsed as a request (its errors are 400, 414 or 501)."""
        parser = self.parser
        method = parser.get_method().decode("ascii")
        url = self.url
        try:
            if method == "CONNECT":  # RFC 9110 §9.3.6: authority-form
                host, port = _host_port(url, None)
                request = HttpRequest(Command.CONNECT, host, port)
            else:
                request = self._absolute(url)
        except ValueError as exc:
            raise HttpError(400, f"bad request target: {exc}") from None
        request.method = method
        request.version = parser.get_http_version()
        request.keep_alive = parser.should_keep_alive()
        for name, value in self.headers:
            lower = name.lower()
            if lower == b"proxy-authorization":
                request.authorization = value
            elif lower == b"transfer-encoding":
                request.chunked = True  # llhttp refused any final coding but chunked
                if value.strip().lower() != b"chunked":
                    raise HttpError(501, "transfer codings other than chunked are not forwarded")
        request.headers = self.headers
        return request

    @staticmethod
    def _absolute(url: bytes) -> HttpRequest:
        """RFC 9112 §3.2.2: a proxy is sent the absolute form, and forwards origin-form."""
        if url.startswith(b"/") or url == b"*":
            raise ValueError("origin-form: this is a proxy, send the absolute URI "
                             "(http://host/path)")
        try:
            parts = httptools.parse_url(url)
        except httptools.HttpParserInvalidURLError:
            raise ValueError("not a URI") from None
        if parts.schema is None or parts.schema.lower() != b"http":
            scheme = (parts.schema or b"").decode("ascii", "replace")
            raise HttpError(501, f"scheme {scheme!r} is not forwarded (use CONNECT for https)")
        if not parts.host:
            raise ValueError("no host")
        host = parts.host.decode("ascii")
        port = parts.port or 80
        request = HttpRequest(Command.HTTP, host, port)
        target = parts.path or b"/"
        if parts.query is not None:
            target += b"?" + parts.query
        request.target = target
        bracketed = b"[" + parts.host + b"]" if b":" in parts.host else parts.host
        request.authority = bracketed if parts.port is None else b"%s:%d" % (bracketed, port)
        return request


# RFC 9110 §7.6.1 (and RFC 9112 §6.1, Transfer-Encoding): never forwarded.
_HOP = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"proxy-authorization",
                  b"proxy-authenticate", b"te", b"trailer", b"transfer-encoding", b"upgrade"))

def _named(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """The fields that ``Connection`` names (RFC 9110 §7.6.1): hop-by-hop too."""
    names: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            names.update(part.strip().lower() for part in value.split(b","))
    return frozenset(names)


def end_to_end(headers: list[tuple[bytes, bytes]], skip: tuple[bytes, ...] = ()) -> list[bytes]:
    named = _named(headers)
    return [name + b": " + value + b"\r\n" for name, value in headers
            if (lower := name.lower()) not in _HOP and lower not in named and lower not in skip]


def request_head(request: HttpRequest) -> bytes:
    """The request as the origin gets it: origin-form, Host from the URI, Via."""
    lines = [b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (request.method.encode(), request.target,
                                                   request.authority)]
    lines += end_to_end(request.headers, (b"host",))  # RFC 9112 §3.2.2: Host is the URI's
    lines.append(b"Via: %s fastsocks\r\n" % request.version.encode())
    if request.chunked:
        lines.append(b"Transfer-Encoding: chunked\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)
