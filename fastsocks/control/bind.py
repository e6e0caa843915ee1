"""BIND (RFC 1928 §4): listen, reply with where; accept one peer, reply with who.

When DST.ADDR is not all zeros, only a peer from (one of the addresses of)
DST.ADDR is accepted; DST.PORT is not checked, since the peer's source port
is rarely known in advance (FTP's data connection comes from another port
than the control connection).  A peer from elsewhere gets the client X'02';
no peer within the BIND timeout gets X'06' (TTL expired: the time ran out).
BIND is never chained through an upstream.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from ..constants import Reply
from ..net.address import unmapped
from ..net.resolver import ConnectError, resolve
from .core import SessionCore
from .record import CloseReason
from .rulebook import Denial

__all__ = ["BindStage"]


class BindStage(SessionCore):
    """The BINDING state of a ``Session``."""

    __slots__ = ()

    async def _bind(self, request: Any) -> None:
        settings = self.server.settings
        loop = self.server.loop
        expected: set[str] | None = None
        try:
            if request.host not in ("0.0.0.0", "::"):
                expected = {unmapped(sockaddr[0]) for _, sockaddr in
                            await resolve(request.host, request.port)}
        except ConnectError as exc:
            if not self.closed:
                self._connect_failed(exc)
            return
        local = settings.bind_address or self.transport.get_extra_info("sockname")[0]
        try:
            listener = socket.socket(socket.AF_INET6 if ":" in local else socket.AF_INET)
        except OSError as exc:
            self._refuse(Reply.GENERAL_FAILURE, CloseReason.GENERAL_FAILURE,
                         f"{self._what()}: {exc}")
            return
        try:
            listener.setblocking(False)
            listener.bind((local, 0))
            listener.listen(1)
            host, port = listener.getsockname()[:2]
            first = self._reply_bytes(Reply.SUCCEEDED, unmapped(host), port)
            if first is None:
                return
            self.transport.write(first)
            sock, peer = await asyncio.wait_for(loop.sock_accept(listener), settings.bind_timeout)
            self.dialled = peer
            if expected is not None and unmapped(peer[0]) not in expected:
                sock.close()
                self._refuse(Reply.NOT_ALLOWED, CloseReason.BIND_PEER_REFUSED,
                             f"{self._what()}: refused a connection from {peer[0]} "
                             f"port {peer[1]}")
                return
            if self.targets is not None:  # access rules: dst is the peer for BIND
                decision = self.targets.judge(request.host, request.port, peer[0])
                if isinstance(decision, Denial):
                    sock.close()
                    self._deny(decision, unmapped(peer[0]))
                    return
        except asyncio.TimeoutError:
            if not self.closed:
                self._refuse(Reply.TTL_EXPIRED, CloseReason.BIND_TIMEOUT,
                             f"{self._what()}: no connection within {settings.bind_timeout:g} s")
            return
        except OSError as exc:
            if not self.closed:
                self._refuse(Reply.GENERAL_FAILURE, CloseReason.GENERAL_FAILURE,
                             f"{self._what()}: {exc}")
            return
        finally:
            listener.close()
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._relay(sock, unmapped(peer[0]), peer[1])
