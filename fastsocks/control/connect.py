"""CONNECT (RFC 1928 §4): resolve, dial (or go through an upstream), then relay.

An IP literal is dialled at once by a ``Connector`` (non-blocking connect
on the loop, no Task); a name is resolved first and each address judged by
the rules again.  A rule with an upstream sends the request through that
SOCKS5 proxy instead (``net/upstream.py``).  Failures become the reply code
of the error (``ConnectError.reply``); success goes to the hand-off.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..constants import Reply
from ..net.address import unmapped
from ..net.resolver import ConnectError, Connector, literal_addresses, resolve, source_addresses
from ..net.upstream import connect_via
from .core import SessionCore
from .record import CloseReason, reason_for_reply

__all__ = ["ConnectStage"]


class ConnectStage(SessionCore):
    """The CONNECTING state of a ``Session`` (CONNECT only)."""

    __slots__ = ()

    def _connect_failed(self, error: ConnectError) -> None:
        """Refuse with the error's reply; a connect timeout is named as such."""
        reason = CloseReason.CONNECT_TIMEOUT if error.timed_out else reason_for_reply(error.reply)
        self._refuse(error.reply, reason, f"{self._what()}: {error.reason}")

    def _start_connect(self, request: Any) -> None:
        addresses = literal_addresses(request.host, request.port)
        if addresses is None:
            self.task = asyncio.ensure_future(self._resolve_then_connect(request))
        else:
            self._connect(addresses)

    async def _resolve_then_connect(self, request: Any) -> None:
        try:
            addresses = await resolve(request.host, request.port)
        except ConnectError as exc:
            if not self.closed:
                self._connect_failed(exc)
            return
        if self.closed:
            return
        if self.targets is not None:
            addresses = self._allowed(addresses)
            if not addresses:
                return
            rule = self.rule
            if rule is not None and rule.upstream is not None:
                # A rule needed the address to decide: the upstream is
                # given the address the rules allowed, not the name.
                await self._chain(unmapped(addresses[0][1][0]))
                return
        self._connect(addresses)

    def _connect(self, addresses: list[Any]) -> None:
        settings = self.server.settings
        self.connector = Connector(self.server.loop, addresses, settings.connect_timeout,
                                   self._on_connected, self._sources(),
                                   settings.outbound_interface)
        self.connector.start()

    def _on_connected(self, sock: Any, error: ConnectError | None) -> None:
        connector, self.connector = self.connector, None
        if error is not None:
            if not self.closed:
                self._connect_failed(error)
            return
        if connector is not None:
            self.dialled = connector.sockaddr
        bound = sock.getsockname()
        self._relay(sock, bound[0], bound[1])

    def _sources(self) -> tuple[Any, ...]:
        """The outbound address(es): the allow rule's, else the user's, else the global ones."""
        settings = self.server.settings
        rule = self.rule
        if rule is not None and rule.source is not None:
            chosen = rule.source
        elif self.user is not None and self.user in settings.outbound_users:
            chosen = settings.outbound_users[self.user]
        else:
            chosen = settings.outbound_address
        return source_addresses(chosen) if chosen else ()

    async def _chain(self, host: str) -> None:
        """CONNECT through the rule's upstream SOCKS5 proxy, then relay as usual."""
        settings = self.server.settings
        name = self.rule.upstream
        upstream = settings.upstreams.get(name)
        if upstream is None:  # a reload removed it since the rules were read
            self._refuse(Reply.GENERAL_FAILURE, CloseReason.GENERAL_FAILURE,
                         f"{self._what()}: upstream {name} is no longer configured")
            return
        try:
            sock, bound_host, bound_port = await connect_via(
                upstream, host, self.request.port, settings.connect_timeout, self._sources(),
                settings.outbound_interface)
        except ConnectError as exc:
            if not self.closed:
                self._connect_failed(exc)
            return
        if self.closed:
            sock.close()
            return
        try:
            self.dialled = sock.getpeername()  # the access log's "dialled": the upstream
        except OSError:
            self.dialled = None
        self._relay(sock, bound_host, bound_port)
