"""One session's view of the access rules: its subject and command, bound once.

``TargetFilter`` wraps a ``rulebook.Policy`` for one request: pass 1 on the
request as sent, pass 2 per resolved address, and the rule that decided (its
upstream, its outbound address).  BIND under an upstream rule is denied here,
since BIND is not chained.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..constants import Command
from .rulebook import Decision, Denial, Policy, Rule, Subject

__all__ = ["TargetFilter", "Allowed"]


class Allowed(NamedTuple):
    """Pass 2 over resolved addresses: what may be dialled, and why."""

    addresses: list[Any]  # the (family, sockaddr) entries the rules allow, in order
    rule: Rule | None  # the allow rule that decided the first of them (None: the default)
    denial: Denial | None  # why the first refused entry was refused (None: none was)


class TargetFilter:
    """One session's view of the policy: its subject and command, bound once.

    Every method returns its decision (nothing is left in attributes to be
    read back): ``early(host, port)`` is pass 1 (before resolution) and
    ``judge(host, port, address)`` pass 2 for one address, each a
    ``Decision``: a ``Denial``, the allow ``Rule`` that decided (it carries
    the upstream and the outbound address to use), or None when the default
    allowed.  ``allowed(host, port, addresses)`` is pass 2 over a name's
    addresses, as an ``Allowed``.
    """

    __slots__ = ("policy", "subject", "command")

    def __init__(self, policy: Policy, subject: Subject, command: int) -> None:
        self.policy = policy
        self.subject = subject
        self.command = command

    def _verdict(self, decision: Decision) -> Decision:
        if (isinstance(decision, Rule) and decision.upstream is not None
                and self.command == Command.BIND):
            # BIND is not chained: a peer that rule sends to an upstream must
            # not come in directly instead.  (CONNECT and UDP datagrams go
            # through the upstream.)
            return Denial(decision.index)
        return decision

    def decide(self, name: Any, ip: Any, port: Any) -> Decision:
        """``Policy.decide`` for this subject and command (the session answers
        X'07' for a BIND under an upstream rule)."""
        return self.policy.decide(self.command, self.subject, name, ip, port)

    def early(self, host: str, port: Any) -> Decision:
        decision = self.policy.check_request(self.command, self.subject, host, port)
        if self.command == Command.UDP_ASSOCIATE:  # a datagram's target
            decision = self._verdict(decision)
        return decision

    def judge(self, host: str, port: Any, address: str) -> Decision:
        """Pass 2 for one address (``host`` as requested)."""
        return self._verdict(
            self.policy.check_address(self.command, self.subject, host, address, port))

    def allowed(self, host: str, port: int, addresses: list[Any]) -> Allowed:
        policy, subject, command = self.policy, self.subject, self.command
        denial: Denial | None = None
        rule: Rule | None = None
        out: list[Any] = []
        for entry in addresses:
            decision = policy.check_address(command, subject, host, entry[1][0], port)
            if command != Command.CONNECT:
                decision = self._verdict(decision)
            if isinstance(decision, Denial):
                if denial is None:
                    denial = decision
                continue
            if not out:
                rule = decision
            out.append(entry)
        return Allowed(out, rule, denial)
