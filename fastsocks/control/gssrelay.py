"""The relay for GSSAPI-protected connections (RFC 1961 §5).

At protection level 1 (integrity) or 2 (confidentiality) every byte between
client and proxy travels in MTYP 3 messages, each a token of GSS_Wrap.  The
splice engine moves bytes it never sees, so these connections take this
relay instead: the asyncio protocol pair of ``_relay_py`` (half-close,
backpressure through the write-buffer marks, idle timeout, bandwidth
limits), with the client's side unwrapping each complete message before it
goes to the target and the target's side wrapping each chunk it reads —
at most ``Conversation.chunk`` plain bytes per message, so a token never
passes the 65,535 octets LEN can say.  Plain connections are untouched:
they never come here.

Byte counts are plain bytes (what the target sent and received), as for
every other relay.  A message that does not unwrap, an unencrypted message
under confidentiality, a message type other than 3 or an abort from the
client ends the connection (both sides aborted) with reason
``gssapi_error`` and a warning naming the cause.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from .._relay_py import Half, Relay
from ..codec import NEED_DATA
from ..errors import ProtocolError
from .gssapi import Conversation, GssFailure

__all__ = ["GssRelay"]

log = logging.getLogger("fastsocks.gssapi")

_MTYP_DATA = 0x03


class _ClientSide(Half):
    """Reads MTYP 3 messages from the client; writes their plain bytes upstream."""

    __slots__ = ("conversation",)
    conversation: Conversation

    def data_received(self, data: bytes) -> None:
        conversation = self.conversation
        framer = conversation.framer
        framer.receive_data(data)
        chunks = []
        try:
            while True:
                message = framer.next_message()
                if message is NEED_DATA:
                    break
                if message.mtyp != _MTYP_DATA:
                    if message.mtyp == 0xFF:
                        raise GssFailure("the client aborted (RFC 1961 MTYP X'FF')")
                    raise GssFailure(f"GSSAPI message type {message.mtyp} while relaying, "
                                     "expected 3")
                chunks.append(conversation.unwrap_message(message.token))
        except (GssFailure, ProtocolError) as exc:
            self.relay.fail(str(exc))  # type: ignore[attr-defined]
            return
        if not chunks:
            return
        plain = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.nbytes += len(plain)
        peer = self.peer
        if peer is not None and not peer.lost:
            peer.transport.write(plain)
        if self.buckets is not None:
            self._charge(len(plain))


class _UpstreamSide(Half):
    """Reads plain bytes from the target; writes them wrapped to the client."""

    __slots__ = ("conversation",)
    conversation: Conversation

    def data_received(self, data: bytes) -> None:
        self.nbytes += len(data)
        try:
            wrapped = self.conversation.wrap(data)
        except GssFailure as exc:
            self.relay.fail(str(exc))  # type: ignore[attr-defined]
            return
        peer = self.peer
        if peer is not None and not peer.lost:
            peer.transport.write(wrapped)
        if self.buckets is not None:
            self._charge(len(data))


class GssRelay(Relay):
    """``_relay_py.Relay`` with RFC 1961 encapsulation on the client's side.

    Built like a Relay; ``start(client_transport, pending)`` sends the plain
    ``pending`` bytes (what followed the request in its own message) to the
    target first, then whatever complete messages the conversation's framer
    already holds.
    """

    __slots__ = ("conversation", "peer_text")

    def __init__(self, loop: asyncio.AbstractEventLoop, on_connected: Callable[[Relay], None],
                 on_close: Callable[[Relay], None], idle_timeout: float,
                 conversation: Conversation, peer_text: str = "?") -> None:
        super().__init__(loop, on_connected, on_close, idle_timeout)
        self.conversation = conversation
        self.peer_text = peer_text
        client = _ClientSide(self, "client")
        upstream = _UpstreamSide(self, "upstream")
        client.conversation = upstream.conversation = conversation
        client.peer, upstream.peer = upstream, client
        self.client, self.upstream = client, upstream

    def start(self, client_transport: Any, pending: bytes = b"") -> None:
        super().start(client_transport, b"")
        if pending:
            # Already unwrapped: straight to the target, counted as sent.
            self.client.nbytes += len(pending)
            self.upstream.transport.write(pending)
        if self.conversation.framer.trailing_data and not self.client.lost:
            self.client.data_received(b"")

    def fail(self, reason: str) -> None:
        """A protection failure mid-relay: log it, abort both sides."""
        log.warning("%s GSSAPI relay ended: %s", self.peer_text, reason)
        self.close("gssapi_error")
