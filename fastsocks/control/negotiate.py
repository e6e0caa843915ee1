"""Negotiation: the greeting, the method choice, RFC 1929 and RFC 1961.

The codec turns bytes into events; this stage answers them: it picks the
method (RFC 1928 §3), checks a username/password (RFC 1929) off the event
loop's path (bcrypt and argon2 run in a thread; the users file caches a
good check, which answers at once, without a Task or the queue; a bounded
queue and a back-off per source hold off floods of wrong passwords,
``control/authgate.py``), or carries the GSSAPI exchange (RFC 1961) until
the request.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .. import codec
from ..constants import Method, Phase, Sent
from ..errors import ProtocolError
from ..net.address import format_peer
from .gssapi import GssFailure
from .core import SessionCore
from .record import CloseReason, State

__all__ = ["NegotiateStage"]

log = logging.getLogger("fastsocks.session")

_NEED_DATA = codec.NEED_DATA
_Greeting = codec.Greeting
_UserPass = codec.UserPass
_Request = codec.Request
_GSS_ABORT = codec.GSS_ABORT
_PHASE_GSSAPI = Phase.GSSAPI
_PHASE_REQUEST = Phase.REQUEST
_SENT_OPEN = Sent.OPEN
_SENT_LOGIN = Sent.LOGIN


class NegotiateStage(SessionCore):
    """The NEGOTIATING, AUTHENTICATING and GSSAPI states of a ``Session``."""

    __slots__ = ()

    def _advance(self) -> None:
        """Act on every event the buffered bytes make up, in order."""
        codec_ = self.codec
        while not self.closed:
            phase = codec_.phase
            try:
                event = codec_.next_event()
            except ProtocolError as exc:
                data = codec_.send_error()
                if phase == _PHASE_REQUEST and data:
                    # A bad request gets a reply with the error's code (RFC 1928 §6),
                    # and one line (the codec's messages carry no raw peer bytes).
                    log.info("%s: bad request: %s", format_peer(self.peer), exc)
                    self._refuse_raw(data, exc.reply_code, f"protocol error: {exc}")
                else:
                    self._end(data, CloseReason.PROTOCOL_ERROR, f"protocol error: {exc}")
                return
            if event is _NEED_DATA:
                return
            kind = type(event)
            if kind is _Greeting:
                self._on_greeting(event)
            elif kind is _UserPass:
                if self.answered:  # the engine's X'01 00' went out (Sent.LOGIN)
                    self._engine_login(event)
                    continue
                if self._cached_login(event):
                    continue  # answered: on to the request, perhaps already buffered
                self.state = State.AUTHENTICATING
                self.transport.pause_reading()
                self.task = asyncio.ensure_future(self._authenticate(event))
                return
            elif kind is _Request:
                self._on_request(event)
                return

    def _refuse_raw(self, data: bytes, code: int, detail: str) -> None:
        """The codec's own error reply (a request it could not parse), then close."""
        if self.gss is not None:
            wrapped = self._protect(data)
            if wrapped is None:
                return
            data = wrapped
        self._record_reply(code)
        self._end(data, CloseReason.PROTOCOL_ERROR, detail)

    def _on_greeting(self, event: Any) -> None:
        # Preference: GSSAPI (when configured and offered), then username/
        # password (when configured), then no authentication — which, with
        # GSSAPI on, only --allow-open permits.
        server = self.server
        gssapi = server.gssapi
        if gssapi is not None and Method.GSSAPI in event.methods:
            method = Method.GSSAPI
        elif server.users is not None or server.authenticate is not None:
            method = Method.USERPASS if Method.USERPASS in event.methods else Method.NO_ACCEPTABLE
        elif gssapi is not None and not server.settings.allow_open:
            method = Method.NO_ACCEPTABLE
        else:
            method = Method.NO_AUTH if Method.NO_AUTH in event.methods else Method.NO_ACCEPTABLE
        data = self.codec.send_method(method)
        answered = self.answered
        if answered:  # the engine answered the greeting for us (Session.accepted)
            sent = Method.NO_AUTH if answered == _SENT_OPEN else Method.USERPASS
            if answered != _SENT_LOGIN:  # else the login's answer went out too
                self.answered = 0
            if method != sent:  # a reload changed authentication since
                self._close(CloseReason.NO_ACCEPTABLE_METHOD, "authentication changed after "
                            f"X'05 {sent:02X}' was sent")
            return
        if method == Method.NO_ACCEPTABLE:
            self._end(data, CloseReason.NO_ACCEPTABLE_METHOD, "no acceptable authentication method")
            return
        self.transport.write(data)
        if method == Method.GSSAPI:
            self._start_gssapi(gssapi)

    # -- GSSAPI (RFC 1961; control/gssapi.py) --------------------------------

    def _start_gssapi(self, acceptor: Any) -> None:
        try:
            self.gss = acceptor.conversation()
        except Exception as exc:  # python-gssapi failing outright: refuse, stay up
            log.warning("%s GSSAPI context could not be created: %s", format_peer(self.peer),
                        exc)
            self._end(_GSS_ABORT, CloseReason.AUTH_FAILED,
                      "authentication failed: GSSAPI unavailable")
            return
        self.state = State.GSSAPI
        self._on_gss_data(self.codec.take_trailing_data())

    def _on_gss_data(self, data: bytes) -> None:
        """RFC 1961 messages from the client: context, protection level, the request."""
        gss = self.gss
        gss.receive_data(data)
        phase = self.codec.phase
        if phase != _PHASE_GSSAPI and phase != _PHASE_REQUEST:
            return  # the request is in: what follows is the relay's, still wrapped
        try:
            out, plain = gss.advance()
        except GssFailure as exc:
            self._gss_refuse(str(exc))
            return
        if out:
            self.transport.write(out)
        if phase == _PHASE_GSSAPI and gss.established:
            self.codec.gssapi_established()
            self.user = gss.user
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s GSSAPI: %s as user %r, protection %s", format_peer(self.peer),
                          gss.principal, gss.user, gss.level_name)
        if plain:
            self.codec.receive_data(plain)
            self._advance()

    def _gss_refuse(self, reason: str) -> None:
        """RFC 1961 §3.8: the abort message, then close; the cause goes to the log."""
        log.info("%s GSSAPI authentication refused: %s", format_peer(self.peer), reason)
        if self.gss is not None and self.gss.user:
            self.user = self.gss.user  # for the access log: the session ends here
        self._end(_GSS_ABORT, CloseReason.AUTH_FAILED, f"authentication failed: GSSAPI: {reason}")

    def _protect(self, data: bytes) -> bytes | None:
        """What the server sends, as the client must get it (RFC 1961 §5 at levels 1, 2).

        None when wrapping failed: the connection is then closed, since a
        client that cannot read the reply must not be relayed either.
        """
        try:
            return self.gss.wrap(data)
        except GssFailure as exc:
            log.warning("%s GSSAPI: %s", format_peer(self.peer), exc)
            self._close(CloseReason.ERROR, f"GSSAPI: {exc}")
            return None

    # -- RFC 1929 ---------------------------------------------------------

    def _cached_login(self, event: Any) -> bool:
        """A login the users file's cache vouches for, answered at once: no Task, no queue.

        Anything else (a hook, no cached check, a source backing off after
        its failures) is ``_authenticate``'s, which judges it in full.
        """
        server = self.server
        users = server.users
        if users is None or server.authenticate is not None:
            return False
        limits = server.limits
        if limits is not None and limits.passwords.backing_off():
            return False
        if not users.cached(event.username, event.password):
            return False
        self.user = event.username.decode("utf-8", "replace")
        self.transport.write(self.codec.send_auth_status(True))
        return True

    def _engine_login(self, event: Any) -> None:
        """A login the engine answered X'01 00' itself: its set of good checks vouched
        for it (``Users.mirror``), as ``_cached_login`` would have."""
        self.answered = 0
        self.user = event.username.decode("utf-8", "replace")
        self.codec.send_auth_status(True)

    async def _authenticate(self, event: Any) -> None:
        ok, name, denial = await self._check_password(event.username, event.password)
        if self.closed:
            return
        data = self.codec.send_auth_status(ok)
        self.user = name  # on failure, only for the access log: the session ends here
        if denial is not None:  # RFC 1929 §2: a failure status, then close
            self._end(data, CloseReason.LIMIT_REACHED, f"limit {denial} reached")
            return
        if not ok:
            self._end(data, CloseReason.AUTH_FAILED, f"authentication failed for user {name!r}")
            return
        self.state = State.NEGOTIATING
        self.transport.write(data)
        self.transport.resume_reading()
        self._advance()  # the request may already be buffered

    async def _check_password(self, username: bytes,
                              password: bytes) -> tuple[bool, str, str | None]:
        """One login's verdict: (ok, the user's name, the limit that refused it or None).

        RFC 1929 and HTTP's ``Proxy-Authorization: Basic`` (control/http.py)
        share it: the back-off per source, the authenticate hook or the users
        file's cache, then its bounded hash queue (control/authgate.py).
        """
        name = username.decode("utf-8", "replace")
        server = self.server
        hook = server.authenticate
        users = server.users
        limits = server.limits
        gate = limits.passwords if limits is not None else None
        ip = self.peer[0] if self.peer else None
        ok: bool | str = False
        queued = False
        # A source that failed too often waits, whatever it sends now; then
        # the cache, which answers at once; only then the hash queue, bounded
        # (control/authgate.py).
        denial = gate.waiting(ip, name) if gate is not None else None
        try:
            if denial is not None:
                pass
            elif hook is not None:
                ok = await self._ask_authenticate(hook, name, password)
                if isinstance(ok, str):  # the hook named the user
                    name, ok = ok, True
            elif users is None:  # USERPASS is only chosen with a users file or a hook
                ok = False
            elif users.cached(username, password):
                ok = True
            else:
                queued = gate is not None and gate.checks > 0
                denial = gate.enter(ip, name) if gate is not None else None
                if denial is None:
                    ok = await users.verify(username, password)
                else:
                    queued = False
        except Exception:  # a broken hash (or hook) must not take the server down
            log.exception("credential check for user %r failed", name)
            ok = False
        finally:
            if queued and gate is not None:
                gate.leave(ip)
        if not ok and denial is None and gate is not None:  # a verdict: count it
            gate.failed(ip)
        return bool(ok), name, denial

    async def _ask_authenticate(self, hook: Any, name: str,
                                password: bytes) -> bool | str:
        """The embedding application's authentication hook, bounded in time."""
        peer = self.peer
        client = (peer[0], peer[1]) if peer else ("", 0)
        result = await asyncio.wait_for(hook(name, password.decode("utf-8", "replace"), client),
                                        self.server.settings.handshake_timeout)
        if isinstance(result, str) and result:
            return result
        if not isinstance(result, bool):
            raise TypeError(f"the authenticate hook returned {result!r}: return True, False "
                            "or a user name")
        return result
