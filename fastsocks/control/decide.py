"""Deciding a request: the limits per user, the access rules, the authorize hook.

The request is in and reading is paused.  Each check either refuses (X'02'
for a limit, a rule or the hook; X'01' when the hook fails) or lets the
request through to its command's stage.  Rules are judged in two passes
(``control/rules.py`` has the semantics): the request as sent here, and
for a name each resolved address later (``_allowed``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..constants import Command, Reply
from ..hooks import AuthorizeHook, RequestInfo
from ..net.address import format_peer
from .core import SessionCore
from .record import CloseReason, Protocol, State
from .rulebook import UNKNOWN, Denial, describe_target
from .targets import TargetFilter
from .rulebook import log as rules_log

__all__ = ["DecideStage"]

log = logging.getLogger("fastsocks.session")

_COMMAND_NAMES = {Command.CONNECT: "connect", Command.BIND: "bind",
                  Command.UDP_ASSOCIATE: "udp_associate", Command.HTTP: "http"}


class DecideStage(SessionCore):
    """The DECIDING state of a ``Session``."""

    __slots__ = ()

    def _on_request(self, request: Any) -> None:
        self.request = request
        self.state = State.DECIDING
        self.transport.pause_reading()
        self._handshake_done()  # the timer, the handshake slot (control/handshakes.py)
        server = self.server
        if server.metrics is not None:
            server.metrics.requested(request.command, self.protocol)
        if self.user is not None and self.held is not None:
            denial = self.held.owner.admit_user(self.held, self.user,
                                                self.peer[0] if self.peer else None)
            if denial is not None:  # the user is known: a SOCKS answer, X'02'
                self._refuse(Reply.NOT_ALLOWED, CloseReason.LIMIT_REACHED,
                             f"limit {denial} reached")
                return
        policy = server.policy
        if policy is not None and not self._admit(policy, request):
            return
        if server.authorize is not None:
            self.task = asyncio.ensure_future(self._authorize(server.authorize, request))
            return
        self._dispatch(request)

    async def _authorize(self, hook: AuthorizeHook, request: Any) -> None:
        """The embedding application's access hook: True goes on, False is X'02'."""
        peer = self.peer
        info = RequestInfo((peer[0], peer[1]) if peer else ("", 0), self.user,
                           _COMMAND_NAMES.get(request.command, "?"), request.host, request.port)
        timeout = self.server.settings.handshake_timeout
        try:
            allowed = await asyncio.wait_for(hook(info), timeout)
        except Exception as exc:
            if self.closed:
                return
            if isinstance(exc, asyncio.TimeoutError):
                log.error("the authorize hook did not answer within %g s for %s", timeout,
                          self._what())
            else:
                log.exception("the authorize hook failed for %s", self._what())
            self._refuse(Reply.GENERAL_FAILURE, CloseReason.GENERAL_FAILURE,
                         f"{self._what()}: authorize hook failed")
            return
        if self.closed:
            return
        if not allowed:
            if rules_log.isEnabledFor(logging.INFO):
                rules_log.info("%s %s: denied by the authorize hook", format_peer(self.peer),
                               self._what())
            self._refuse(Reply.NOT_ALLOWED, CloseReason.RULE_DENIED,
                         f"{self._what()}: denied by the authorize hook")
            return
        self._dispatch(request)

    def _dispatch(self, request: Any) -> None:
        """Carry out a request the rules (and the authorize hook) allowed."""
        command = request.command
        if command == Command.HTTP:  # forwarded, chained or not (control/httpforward.py)
            self._forward(request)
            return
        rule = self.rule
        # A UDP association is chained per datagram target (udp.py), not here.
        if rule is not None and rule.upstream is not None \
                and command != Command.UDP_ASSOCIATE:
            if command != Command.CONNECT:  # BIND is not chained (net/upstream.py)
                self._refuse(Reply.COMMAND_NOT_SUPPORTED, CloseReason.COMMAND_NOT_SUPPORTED,
                             f"{self._what()}: rules[{rule.index}] sends it to upstream "
                             f"{rule.upstream}, which only carries CONNECT and UDP datagrams")
                return
            # The name goes to the upstream unresolved: it resolves it.
            self.state = State.CONNECTING
            self.task = asyncio.ensure_future(self._chain(request.host))
        elif command == Command.CONNECT:
            self.state = State.CONNECTING
            self._start_connect(request)
        elif command == Command.BIND:
            self.state = State.BINDING
            self.task = asyncio.ensure_future(self._bind(request))
        else:
            self.task = asyncio.ensure_future(self._udp_associate(request))

    # -- access rules -------------------------------------------------------

    def _admit(self, policy: Any, request: Any) -> bool:
        """Pass 1 on the request; False when denied (X'02' sent, closing).

        An IP literal is judged completely here; a name again per resolved
        address (``_allowed``).  A BIND to 0.0.0.0 (any peer) and a UDP
        ASSOCIATE name no destination yet: their peer and each datagram's
        target are judged when they are known.
        """
        peer = self.peer
        command = request.command
        protocol = self.protocol
        targets = self.targets = TargetFilter(
            policy, policy.subject(peer[0] if peer else None, self.user, protocol,
                                   request.userid if protocol is Protocol.SOCKS4 else None),
            command)
        if command == Command.UDP_ASSOCIATE:  # DST is where the client sends from
            decision = targets.decide(UNKNOWN, UNKNOWN, UNKNOWN)
        elif command == Command.BIND and request.host in ("0.0.0.0", "::"):
            decision = targets.decide(None, UNKNOWN, request.port)
        else:
            decision = targets.early(request.host, request.port)
        if isinstance(decision, Denial):
            self._deny(decision)
            return False
        self.rule = decision
        return True

    def _allowed(self, addresses: list[Any]) -> list[Any]:
        """Pass 2: the resolved addresses the rules allow; none: denied (X'02')."""
        request = self.request
        allowed = self.targets.allowed(request.host, request.port, addresses)
        if allowed.addresses:
            self.rule = allowed.rule
        else:
            self._deny(allowed.denial, addresses[0][1][0] if addresses else None)
        return allowed.addresses

    def _deny(self, denial: Any, address: str | None = None) -> None:
        """A rule or the SSRF default refused: log at INFO, reply X'02', close."""
        request = self.request
        what = describe_target(request.command, request.host, request.port, address)
        if rules_log.isEnabledFor(logging.INFO):
            user = f" user {self.user!r}" if self.user is not None else ""
            rules_log.info("%s%s %s: %s", format_peer(self.peer), user, what, denial)
        self._refuse(Reply.NOT_ALLOWED, CloseReason.RULE_DENIED, f"{what}: {denial}")
