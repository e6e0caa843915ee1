"""SOCKS4 and SOCKS4a: the request, who may use it, and the replies.

The first byte 4 brings a client here (``Session.data_received``).  Its
request (VN CD DSTPORT DSTIP USERID NUL, and in 4a a host name NUL) is parsed
by the codec (``parse_socks4_request``) over the bytes so far, bounded: each
field at most 255 octets, the handshake timeout for all of it.  Then it is
any other request: ``_on_request`` (limits, rules, the authorize hook), the
CONNECT and BIND stages, the same hand-off to the relay.  The control plane
decides in SOCKS5 reply codes; ``_socks4_reply`` words them: success is 90,
every failure 91 (SOCKS4 has no finer code).  92 and 93 say that the
client's identd could not be reached or disagreed: fastsocks does no identd
check (RFC 1413), so never sends them.

USERID is not authentication: any client may write any name there.  It is
logged and rules may match it (``userids``), but it never becomes the
session's ``user``.  So where authentication is required (a users file, the
authenticate hook, or GSSAPI without --allow-open) SOCKS4 gets 91, except
from the networks of ``[socks4] unauthenticated_from``.

SOCKS4 has no IPv6 and no UDP: CD is CONNECT or BIND (else 91), and BIND's
replies carry IPv4 addresses, so a BIND on an IPv6 address gets 91.  A 4a
name is dialled over either family: the CONNECT reply's address is ignored
by clients (90 with 0.0.0.0 when the outbound socket is IPv6).
"""

from __future__ import annotations

import logging
from typing import Any

from .. import codec
from ..constants import Command, Reply
from ..errors import ProtocolError
from ..net.address import format_peer, unmapped
from .core import SessionCore
from .record import CloseReason, Protocol, State

__all__ = ["Socks4Stage", "GRANTED", "REJECTED"]

log = logging.getLogger("fastsocks.session")

GRANTED = 90  # "request granted"
REJECTED = 91  # "request rejected or failed"
_REJECTED_REPLY = bytes((0, REJECTED, 0, 0, 0, 0, 0, 0))

_NEGOTIATING = State.NEGOTIATING
_NEED_DATA = codec.NEED_DATA
_parse = codec.parse_socks4_request
_encode = codec.encode_socks4_reply


class Socks4Stage(SessionCore):
    """A ``Session`` whose client speaks SOCKS4 or 4a, until its request is in."""

    __slots__ = ()

    def _start_socks4(self, data: bytes) -> None:
        """The first byte was 4: the client speaks SOCKS4 (or 4a)."""
        self.protocol = Protocol.SOCKS4
        self._on_socks4_data(data)

    def _on_socks4_data(self, data: bytes) -> None:
        if self.state is not _NEGOTIATING:
            # Bytes after the request, for the target (CONNECTING reads on to
            # see an EOF): keep them for the relay, read no more.
            self.early += data
            self.transport.pause_reading()
            return
        buf = self.early + data if self.early else data
        try:
            request = _parse(buf)
        except ProtocolError as exc:
            self.early = b""
            log.info("%s: bad SOCKS4 request: %s", format_peer(self.peer), exc)
            self._refuse(exc.reply_code, CloseReason.PROTOCOL_ERROR, f"protocol error: {exc}")
            return
        if request is _NEED_DATA:
            self.early = buf  # at most 8 + 2 * 256 octets: the parser bounds the fields
            return
        self.early = buf[request.length:]
        refusal = self._socks4_refusal(request)
        if refusal is not None:
            self._refuse_request(request, refusal)
            return
        self._on_request(request)

    def _socks4_refusal(self, request: Any) -> str | None:
        """Why this request cannot be served over SOCKS4 here (None: it can)."""
        server = self.server
        settings = server.settings
        required = (server.users is not None or server.authenticate is not None
                    or (server.gssapi is not None and not settings.allow_open))
        if required and not settings.socks4_open_to(self.peer[0] if self.peer else None):
            return ("this listener requires authentication, which SOCKS4 cannot do (its USERID "
                    "is a claim); [socks4] unauthenticated_from lets given networks use it")
        if request.command == Command.BIND:
            local = settings.bind_address or self.transport.get_extra_info("sockname")[0]
            if ":" in unmapped(local):
                return (f"BIND would listen on {local}, but a SOCKS4 reply holds only an IPv4 "
                        "address; set bind.address to an IPv4 address")
        return None

    def _refuse_request(self, request: Any, why: str) -> None:
        """91 to a request refused before it is decided; logged at INFO, counted as asked."""
        self.request = request
        metrics = self.server.metrics
        if metrics is not None:
            metrics.requested(request.command, self.protocol)
        if log.isEnabledFor(logging.INFO):
            log.info("%s SOCKS4 %s (USERID %r): refused: %s", format_peer(self.peer),
                     self._what(), request.userid, why)
        reason = (CloseReason.NO_ACCEPTABLE_METHOD if why.startswith("this listener")
                  else CloseReason.GENERAL_FAILURE)
        self._refuse(Reply.GENERAL_FAILURE, reason, f"{self._what()}: {why}")

    def _socks4_reply(self, code: int, host: str, port: int) -> bytes:
        """The SOCKS5 reply ``code`` as SOCKS4 words it: 90 with the address, or 91."""
        if code != Reply.SUCCEEDED:
            return _REJECTED_REPLY  # DSTPORT and DSTIP are ignored in a rejection
        try:
            return _encode(GRANTED, unmapped(host), port)
        except ValueError:
            # Not IPv4 (a CONNECT dialled over IPv6, or an upstream that named
            # its address): the CONNECT reply's address is ignored anyway.
            return _encode(GRANTED, "0.0.0.0", port)
