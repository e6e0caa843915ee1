"""PROXY protocol in front of the SOCKS greeting (behind a load balancer).

HAProxy's proxy-protocol.txt, versions 1 and 2: the balancer's header says
who the client really is.  The spec forbids guessing whether it is there: a
listener that expects it requires it from the trusted balancers and refuses
everyone else.  The header is parsed by the codec (``parse_proxy_header``).
"""

from __future__ import annotations

import logging

from .. import codec
from ..errors import ProtocolError
from ..net.address import format_peer, is_trusted
from .core import SessionCore
from .record import CloseReason, State

__all__ = ["ProxyHeaderStage"]

log = logging.getLogger("fastsocks.session")

_NEED_DATA = codec.NEED_DATA
_parse_proxy_header = codec.parse_proxy_header


class ProxyHeaderStage(SessionCore):
    """The PROXY_HEADER state of a ``Session``."""

    __slots__ = ()

    def _awaits_proxy_header(self) -> bool:
        """True when this connection must start with a PROXY header (or was refused)."""
        settings = self.server.settings
        only = settings.proxy_protocol_listen
        # With workers, a listener configured on port 0 runs on the port the
        # master fixed: an entry with port 0 names the listener on that host.
        if (only is not None and self.listener not in only
                and (self.listener is None or (self.listener[0], 0) not in only)):
            return False
        if not is_trusted(self.server.proxy_trusted, self.peer[0] if self.peer else None):
            log.info("%s: refused: this listener expects the PROXY protocol and %s is not a "
                     "trusted balancer (proxy_protocol.trusted)", format_peer(self.peer),
                     self.peer[0] if self.peer else "the peer")
            self._close(CloseReason.PROXY_PROTOCOL_UNTRUSTED,
                        "PROXY protocol: not from a trusted balancer")
            return True
        self.state = State.PROXY_HEADER
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.server.loop.call_later(settings.proxy_protocol_timeout,
                                                 self._proxy_timeout)
        return True

    def _on_proxy_data(self, data: bytes) -> None:
        buf = self.proxy_buf + data
        try:
            header = _parse_proxy_header(buf)
        except ProtocolError as exc:
            # Nothing valid was said: close without a SOCKS reply.
            self.proxy_buf = b""
            log.info("%s: %s", format_peer(self.peer), exc)
            self._close(CloseReason.PROXY_PROTOCOL_ERROR, f"PROXY protocol error: {exc}")
            return
        if header is _NEED_DATA:
            self.proxy_buf = buf
            return
        self.proxy_buf = b""
        self.state = State.NEGOTIATING
        # LOCAL (a health check), v1 UNKNOWN, or no IP address in the header:
        # the spec says to use the connection's own endpoints, so the client
        # is the balancer itself, judged by the rules like any client.
        if not header.local and header.src_host is not None:
            self.peer = (header.src_host, header.src_port)
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.server.loop.call_later(self.server.settings.handshake_timeout,
                                                 self._handshake_timeout)
        self._peer_known()  # limits per source address: the real client's
        rest = buf[header.length:]
        if rest and not self.closed:
            self.data_received(rest)  # the client's first bytes: its protocol is told from them

    def _proxy_timeout(self) -> None:
        self.timer = None
        log.info("%s: no PROXY protocol header within %g s", format_peer(self.peer),
                 self.server.settings.proxy_protocol_timeout)
        self._close(CloseReason.PROXY_PROTOCOL_TIMEOUT, "PROXY protocol header timeout")
