"""CONNECT (RFC 1928 §4): resolve, dial (or go through an upstream), then relay.

An IP literal (or a name the DNS cache holds one address for, the other
family cached as having none: nothing to race) is dialled at once: with the
splice engine its non-blocking connect(2) is started here and the socket
handed to the engine still connecting, with the success reply encoded in
advance (the kernel picks BND.ADDR and BND.PORT when the connect starts),
so the event loop spends no writer callback, timer or wake-up on it
(``_dial_in_engine``; a failure comes back to
``HandoffStage._on_engine_dialled`` with the client's descriptor, to be
refused here as always).  Where nothing about a request needs the loop
(``Server.engine_dials``), such a name is also given to the engine
(``_remember``), which dials later requests for it itself until the cached
answers expire, as it dials IP literals.  Elsewhere a ``Connector`` dials
it on the loop (no Task).  A name is dialled by the same Connector as its
addresses come in (Happy Eyeballs, RFC 8305: AAAA and A looked up at once,
attempts interleaved; a cached name is dialled without waiting), each
family's addresses judged by the rules again first (``_judge``).  A rule
with an upstream sends the request through that SOCKS5 proxy instead
(``net/upstream.py``).  Failures become the reply code of the error
(``ConnectError.reply``); success goes to the hand-off.  A client that
leaves meanwhile takes its Connector with it (``SessionCore._close``
cancels it): the lookup is released and every attempt closed.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from ..constants import Command, Reply
from ..net.address import unmapped
from ..net.connector import Connector, dial
from ..net.resolver import (
    ConnectError,
    Refused,
    cached_only_address,
    cached_until,
    literal_addresses,
    reply_for_errno,
    source_addresses,
)
from ..net.upstream import connect_via
from .core import SessionCore
from .record import CloseReason, reason_for_reply

__all__ = ["ConnectStage"]


class ConnectStage(SessionCore):
    """The CONNECTING state of a ``Session`` (CONNECT only)."""

    __slots__ = ()

    def _connect_failed(self, error: ConnectError) -> None:
        """Refuse with the error's reply; a connect timeout is named as such."""
        if isinstance(error, Refused):  # pass 2 allowed none of the name's addresses
            self._deny(error.denial, error.address)
            return
        reason = CloseReason.CONNECT_TIMEOUT if error.timed_out else reason_for_reply(error.reply)
        self._refuse(error.reply, reason, f"{self._what()}: {error.reason}")

    def _watch_client(self) -> None:
        """Read on while connecting, to see a client that leaves (issue 17).

        Its EOF, with nothing sent after the request, closes the session,
        which cancels the Connector (or the chaining task): no connection is
        made for a client that is gone.  Early bytes pause reading again
        (``Session.data_received``) and wait for the relay, as does a FIN
        after them (``nc -N``).  Under GSSAPI protection reading stays paused.
        """
        if self.gss is None and not self.codec.trailing_data and not self.early:
            self.transport.resume_reading()

    def _start_connect(self, request: Any) -> None:
        addresses = literal_addresses(request.host, request.port)
        # A forwarded HTTP request (Command.HTTP) has its own relay.
        engine = self._engine_relay() if request.command == Command.CONNECT else None
        if addresses is not None:
            if engine is not None:
                self._dial_in_engine(engine, *addresses[0])
                return
            self._watch_client()
            self._connect(addresses)
            return
        if engine is not None:
            only = self._only_address(request)
            if only is not None:
                if self.targets is None and self.server.engine_dials:
                    _remember(engine, request.host, only)
                self._dial_in_engine(engine, *only)
                return
        self._watch_client()
        settings = self.server.settings
        connector = self.connector = Connector(
            self.server.loop, [], settings.connect_timeout, self._on_connected,
            self._sources(), settings.outbound_interface)
        connector.resolve(request.host, request.port,
                          self._judge if self.targets is not None else None)

    def _only_address(self, request: Any) -> Any:
        """A name with one cached address and nothing to race, allowed by the rules; else None.

        Anything else (a miss, several addresses, a denial, a rule that
        chains) is the Connector's, which words the refusal as ever.
        """
        only = cached_only_address(request.host, request.port)
        if only is None or self.targets is None:
            return only
        allowed = self.targets.allowed(request.host, request.port, [only])
        rule = allowed.rule
        if not allowed.addresses or (rule is not None and rule.upstream is not None):
            return None
        self.rule = rule
        return only

    def _judge(self, addresses: list[Any]) -> tuple[list[Any], Any]:
        """Pass 2 on one family's addresses: (those allowed, (denial, address) or None).

        The first allowed addresses decide the rule (its outbound address, its
        upstream): a rule that chains takes the request to its upstream with
        the address it allowed, not the name.
        """
        request = self.request
        allowed = self.targets.allowed(request.host, request.port, addresses)
        refusal = None
        if allowed.denial is not None:
            refused = next((a for a in addresses if a not in allowed.addresses), addresses[0])
            refusal = (allowed.denial, refused[1][0])
        connector = self.connector
        if allowed.addresses and connector is not None and connector.admitted == 0:
            rule = self.rule = allowed.rule
            if rule is not None and rule.upstream is not None:
                connector.cancel()
                self.connector = None
                self.task = asyncio.ensure_future(
                    self._chain(unmapped(allowed.addresses[0][1][0])))
                return [], None
            connector.sources = self._sources()
        return allowed.addresses, refusal

    def _connect(self, addresses: list[Any]) -> None:
        settings = self.server.settings
        self.connector = Connector(self.server.loop, addresses, settings.connect_timeout,
                                   self._on_connected, self._sources(),
                                   settings.outbound_interface)
        self.connector.start()

    def _dial_in_engine(self, engine: Any, family: int, sockaddr: Any) -> None:
        """Start the connect here and let the engine wait for it (one address, nothing to race)."""
        settings = self.server.settings
        try:
            sock, connected = dial(family, sockaddr, self._sources(),
                                   settings.outbound_interface)
        except ConnectError as exc:
            self._connect_failed(ConnectError(
                exc.reply, f"{sockaddr[0]} port {sockaddr[1]}: {exc.reason}"))
            return
        self.dialled = sockaddr
        try:
            bound = sock.getsockname()
        except OSError as exc:  # the connect failed at once after all (its error is pending)
            sock.close()
            self._connect_failed(ConnectError(reply_for_errno(exc.errno), str(exc)))
            return
        self._to_engine(engine, sock, bound[0], bound[1],
                        0.0 if connected else settings.connect_timeout)

    def _on_connected(self, sock: Any, error: ConnectError | None) -> None:
        connector, self.connector = self.connector, None
        if error is not None:
            if not self.closed:
                self._connect_failed(error)
            return
        if self.closed:  # never: _close cancels the Connector first; but never relay then
            sock.close()
            return
        if connector is not None:
            self.dialled = connector.sockaddr
        self.transport.pause_reading()  # the relay takes the client paused, as before
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
        self._watch_client()
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
        self.transport.pause_reading()
        self._relay(sock, bound_host, bound_port)


def _remember(engine: Any, host: str, only: Any) -> None:
    """The engine dials later CONNECTs by ``host`` itself while the cache
    keeps its one address (``Engine.remember``): nothing about them needs the loop."""
    until = cached_until(host)
    name = host.encode()  # the bytes the request carried: the codec decoded them as UTF-8
    if not until or len(name) > 255:
        return
    family, sockaddr = only
    try:
        packed = socket.inet_pton(family, sockaddr[0])
    except OSError:  # a scoped IPv6 address: the loop dials it
        return
    engine.remember(name, packed, until)
