"""HTTP/1.1 proxying on the SOCKS port: the request head, CONNECT tunnels, the answers.

An upper-case ASCII letter as the first byte brings a client here
(``Session.data_received``).  llhttp (through ``httptools``) parses what it
sends (``control/httpparse.py``: ``Inbound``), each request head a
``HttpRequest`` that the rest of the session understands (``.command``,
``.host``, ``.port``):

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
from typing import TYPE_CHECKING, Any

from ..constants import Command, Reply
from ..net.address import format_peer
from .core import SessionCore
from .httpparse import HttpError, HttpRequest, Inbound, error_response
from .record import CloseReason, Protocol, State

if TYPE_CHECKING:
    from .httpforward import Forwarder

__all__ = ["HttpStage"]

log = logging.getLogger("fastsocks.session")

_HTTP = Protocol.HTTP
_CONNECT = Command.CONNECT
_NEGOTIATING = State.NEGOTIATING
_ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"
# The control plane's SOCKS5 reply code (RFC 1928 §6) as an HTTP status.
_STATUS: dict[int, int] = {Reply.GENERAL_FAILURE: 502, Reply.NOT_ALLOWED: 403, Reply.NETWORK_UNREACHABLE: 502,
           Reply.HOST_UNREACHABLE: 502, Reply.CONNECTION_REFUSED: 502, Reply.TTL_EXPIRED: 504,
           Reply.COMMAND_NOT_SUPPORTED: 501, Reply.ATYP_NOT_SUPPORTED: 400}



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
