"""HTTP/1.1 proxying on the SOCKS port: the request head, CONNECT tunnels, the answers.

An upper-case ASCII letter as the first byte brings a client here
(``Session.data_received``).  llhttp (through ``httptools``) parses what it
sends; this module turns each request head into a ``HttpRequest`` that the
rest of the session understands (``.command``, ``.host``, ``.port``):

* ``CONNECT host:port`` (RFC 9110 §9.3.6) is a tunnel: ``Command.CONNECT``,
  judged and dialled like a SOCKS5 CONNECT (``_on_request``: limits, rules,
  the authorize hook, the Connector or an upstream), then the hand-off sends
  ``200 Connection established`` and relays on the same splice/Cython relay;
  the bytes after the head go to the target first (``self.early``);
* an absolute-form request (``GET http://host/path``, RFC 9112 §3.2.2, any
  method) is ``Command.HTTP`` and goes to ``control/httpforward.py``.

Bounds: the whole head at most 32 KiB (431; a longer request line 414); a
client that never finishes its head is cut at the handshake timeout (the
session's timer).  Where the listener requires authentication, a request must
carry ``Proxy-Authorization: Basic`` (RFC 9110 §11.7.1, RFC 7617) that the
same password check as RFC 1929 accepts (``_check_password``: the users
file or the authenticate hook, the bounded queue and the back-off per
source), else 407 with ``Proxy-Authenticate``.  The control plane decides in
SOCKS5 reply codes; ``_http_reply`` words them as HTTP statuses.  Every
error is a whole response (``Content-Length``, ``Connection: close``, a
short text body), then the connection closes.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

import httptools

from ..constants import Command, Reply
from ..net.address import format_peer
from .core import SessionCore
from .record import CloseReason, Protocol, State

if TYPE_CHECKING:
    from .httpforward import Forwarder

__all__ = ["HttpStage", "HttpRequest", "HttpError", "Inbound", "MAX_HEAD", "error_response"]

log = logging.getLogger("fastsocks.session")

MAX_HEAD = 32 * 1024  # octets of a request head (request line and fields)
END = None  # the event "the request's body is complete" in Inbound.events

_HTTP = Protocol.HTTP
_CONNECT = Command.CONNECT
_NEGOTIATING = State.NEGOTIATING
_ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"

_PHRASES = {400: "Bad Request", 403: "Forbidden", 407: "Proxy Authentication Required",
            414: "URI Too Long", 431: "Request Header Fields Too Large",
            501: "Not Implemented", 502: "Bad Gateway", 504: "Gateway Timeout"}
# The control plane's SOCKS5 reply code (RFC 1928 §6) as an HTTP status.
_STATUS: dict[int, int] = {Reply.GENERAL_FAILURE: 502, Reply.NOT_ALLOWED: 403, Reply.NETWORK_UNREACHABLE: 502,
           Reply.HOST_UNREACHABLE: 502, Reply.CONNECTION_REFUSED: 502, Reply.TTL_EXPIRED: 504,
           Reply.COMMAND_NOT_SUPPORTED: 501, Reply.ATYP_NOT_SUPPORTED: 400}


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


class HttpStage(SessionCore):
    """A ``Session`` whose client speaks HTTP/1.1 (a proxy request)."""

    __slots__ = ()

    if TYPE_CHECKING:
        # Other stages' methods this one calls (Session's method order resolves them).
        async def _check_password(self, username: bytes,
                                  password: bytes) -> tuple[bool, str, str | None]: ...
        def _admit(self, policy: Any, request: Any) -> bool: ...
        async def _authorize(self, hook: Any, request: Any) -> None: ...
        def _dispatch(self, request: Any) -> None: ...
        def _relay_ended(self, reason: str, bytes_up: int, bytes_down: int) -> None: ...

    def _start_http(self, data: bytes) -> None:
        """The first byte was an upper-case letter: an HTTP method."""
        self.protocol = _HTTP
        self.http = Inbound()
        self._on_http_data(data)

    def _on_http_data(self, data: bytes) -> None:
        inbound: Inbound = self.http
        if inbound.tunnel:
            # A CONNECT's head is in: what follows is the target's (CONNECTING
            # reads on to see an EOF); keep it for the relay, read no more.
            self.early += data
            self.transport.pause_reading()
            return
        inbound.feed(data)
        forwarder = self.relay
        if forwarder is not None:
            forwarder.pump()
        elif self.state is _NEGOTIATING and inbound.events:
            self._http_first(inbound)

    def _http_first(self, inbound: Inbound) -> None:
        """The first event: a request head (or an error before one)."""
        event = inbound.events.popleft()
        if type(event) is HttpError:
            self._http_error(event)
            return
        if not self._http_credentials(event):
            return
        if self.state is _NEGOTIATING:
            self._http_go(event)

    def _http_go(self, request: HttpRequest) -> None:
        """Authenticated (or no authentication needed): on to the decision."""
        if request.command == _CONNECT:
            self.early = request.early
            self.http.events.clear()
            self._on_request(request)
            return
        from .httpforward import Forwarder  # only where an HTTP request is forwarded
        forwarder = self.relay = Forwarder(self, self.http)
        forwarder._begin(request)
        self._on_request(request)

    # -- Proxy-Authorization (RFC 9110 §11.7.2, RFC 7617) ------------------------

    def _http_credentials(self, request: HttpRequest) -> bool:
        """True when the request may go on now; else it was refused or a check runs."""
        server = self.server
        if server.users is None and server.authenticate is None:
            if server.gssapi is not None and not server.settings.allow_open:
                self._http_refuse(403, CloseReason.NO_ACCEPTABLE_METHOD,
                                  "this listener requires GSSAPI, which HTTP proxying "
                                  "cannot do here; use SOCKS5")
                return False
            return True
        credentials = request.authorization
        if credentials is None:
            self._http_challenge("no Proxy-Authorization")
            return False
        scheme, _, token = credentials.strip().partition(b" ")
        try:
            name, colon, password = binascii.a2b_base64(token.strip()).partition(b":")
        except (binascii.Error, ValueError):
            colon = b""
        if scheme.lower() != b"basic" or not colon:
            self._http_challenge("Proxy-Authorization is not Basic user:password")
            return False
        self.state = State.AUTHENTICATING
        self.transport.pause_reading()
        self.task = asyncio.ensure_future(self._http_login(request, name, password))
        return False

    async def _http_login(self, request: HttpRequest, name: bytes, password: bytes) -> None:
        ok, user, denial = await self._check_password(name, password)
        if self.closed:
            return
        self.user = user  # on failure, only for the access log: the session ends here
        if denial is not None:
            self._http_refuse(407, CloseReason.LIMIT_REACHED, f"limit {denial} reached",
                              _CHALLENGE)
            return
        if not ok:
            self._http_refuse(407, CloseReason.AUTH_FAILED,
                              f"authentication failed for user {user!r}", _CHALLENGE)
            return
        self.state = _NEGOTIATING
        self.task = None
        self.http.credentials = request.authorization
        self._http_go(request)

    def _http_same_credentials(self, request: HttpRequest) -> bool:
        """A later request on a logged-in connection: none, or the same credentials.

        The connection logged in once (the password check is costly); a
        request that names other credentials gets 407 and the connection
        closes, so that the client opens a new one for another user.
        """
        credentials = request.authorization
        if credentials is None or credentials == self.http.credentials \
                or self.http.credentials is None:
            return True
        self._http_challenge("other credentials than this connection logged in with")
        return False

    def _http_challenge(self, why: str) -> None:
        self._http_refuse(407, CloseReason.AUTH_FAILED, f"authentication required: {why}",
                          _CHALLENGE)

    # -- answers ------------------------------------------------------------------

    def _http_reply(self, code: int, reason: CloseReason | None) -> bytes:
        """The SOCKS5 reply ``code`` as HTTP words it (the CONNECT answer or an error)."""
        if code == Reply.SUCCEEDED:
            return _ESTABLISHED
        status = 504 if reason is CloseReason.CONNECT_TIMEOUT else _STATUS.get(code, 502)
        return error_response(status, str(reason) if reason is not None else "refused")

    def _http_error(self, error: HttpError) -> None:
        """A request llhttp (or the bounds) refused: its status, then close."""
        log.info("%s: bad HTTP request: %d %s", format_peer(self.peer), error.status, error.text)
        self._http_refuse(error.status, CloseReason.PROTOCOL_ERROR, error.text)

    def _http_refuse(self, status: int, reason: CloseReason, detail: str,
                     extra: bytes = b"") -> None:
        if reason is not CloseReason.PROTOCOL_ERROR and log.isEnabledFor(logging.INFO):
            log.info("%s HTTP: %d: %s", format_peer(self.peer), status, detail)
        self._end(error_response(status, detail if status != 407 else "authentication required",
                                 extra), reason, detail)

    # -- absolute-form requests (control/httpforward.py) ------------------------------

    def _forward(self, request: HttpRequest) -> None:
        """Allowed: to the origin (a connection kept from the last request, or a new one)."""
        forwarder: Forwarder = self.relay
        forwarder.dispatch(request)

    def _relay(self, sock: Any, reply_host: str, reply_port: int) -> None:
        """A forwarded request's origin goes to the Forwarder; anything else to the relay."""
        if self.protocol is _HTTP and self.request.command == Command.HTTP:
            forwarder: Forwarder = self.relay
            forwarder.connected(sock)
            return
        super()._relay(sock, reply_host, reply_port)

    # asyncio.Protocol: the client's write buffer (a tunnel's relay has its own protocol).
    def pause_writing(self) -> None:
        if self.protocol is _HTTP and self.relay is not None \
                and self.request.command == Command.HTTP:
            self.relay.client_paused(True)

    def resume_writing(self) -> None:
        if self.protocol is _HTTP and self.relay is not None \
                and self.request.command == Command.HTTP:
            self.relay.client_paused(False)


_CHALLENGE = b'Proxy-Authenticate: Basic realm="fastsocks", charset="UTF-8"\r\n'
