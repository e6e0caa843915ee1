"""UDP ASSOCIATE (RFC 1928 §7): open the association, reply with its address.

The datagrams themselves are ``control/udp.py``'s (the C datagram path where
it is built); this stage decides what the association may do (rules per
target, upstreams, the outbound address, RFC 1961 wrapping) and then keeps
the TCP connection only as the association's lifetime.
"""

from __future__ import annotations

from typing import Any

from ..constants import Reply
from ..net.address import unmapped
from .core import SessionCore
from .record import CloseReason, State
from .udp import UdpAssociation

__all__ = ["AssociateStage"]


class AssociateStage(SessionCore):
    """The ASSOCIATED state of a ``Session``."""

    __slots__ = ()

    async def _udp_associate(self, request: Any) -> None:
        settings = self.server.settings
        # RFC 1961 §5: under integrity or confidentiality every datagram
        # either way is one MTYP 3 message (Python path only, see udp.py).
        gss = self.gss if self.gss is not None and self.gss.wraps else None
        # The client's real address (behind a balancer: from the PROXY header).
        client = self.peer
        local = self.transport.get_extra_info("sockname")[0]
        # DST.PORT, when given, is the port the client will send from; its
        # DST.ADDR is ignored: datagrams must come from the TCP client's IP.
        udp = self.udp = UdpAssociation(
            self.server.loop, client[0], request.port, local, settings.idle_timeout,
            settings.udp_reassembly, self._udp_idle,
            native=settings.relay != "protocol",  # C datagram path
            unwrap=gss.unwrap_datagram if gss is not None else None,
            wrap=gss.wrap_datagram if gss is not None else None)
        udp.targets = self.targets  # access rules per datagram target
        udp.sources = self._sources()  # the outbound address, as for CONNECT
        # Datagrams an upstream rule allows go through that upstream.
        udp.upstreams = settings.upstreams
        udp.connect_timeout = settings.connect_timeout
        udp.interface = settings.outbound_interface
        try:
            host, port = await udp.open()
        except OSError as exc:
            if not self.closed:
                self._refuse(Reply.GENERAL_FAILURE, CloseReason.GENERAL_FAILURE,
                             f"{self._what()}: {exc}")
            return
        if self.closed:
            return
        advertised = settings.udp_public_address or unmapped(host)
        reply = self._reply_bytes(Reply.SUCCEEDED, advertised, port)
        if reply is None:
            return
        self.transport.write(reply)
        self.state = State.ASSOCIATED
        self.codec = None  # the negotiation is over; free its buffer
        self.task = None
        # The TCP connection now only says how long the association lives.
        self.transport.resume_reading()

    def _udp_idle(self) -> None:
        self._close(CloseReason.IDLE_TIMEOUT, "UDP association idle")
