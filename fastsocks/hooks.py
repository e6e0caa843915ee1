"""Hooks for embedding: your own authentication and access decisions.

An application that runs ``fastsocks.Server`` inside its own event loop can
pass two coroutines functions (see README, "Embedding"):

* ``authenticate(username, password, client) -> bool | str``: replaces the
  users file for RFC 1929 username/password.  True accepts the user under the
  name given, a string accepts them under that name (for rules, limits and
  logs), False refuses (the client gets the RFC 1929 failure status).
* ``authorize(request) -> bool``: asked for every request the built-in rules
  allow, before anything is dialled; False refuses it with X'02'.

Both run on the server's event loop and must not block it (await your LDAP
or HTTP client).  A hook that raises, or does not answer within the
handshake timeout, refuses: authentication fails, a request gets X'01'.
The exception is logged with its traceback, since it is a bug in the hook.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable, Union

__all__ = ["RequestInfo", "AuthenticateHook", "AuthorizeHook"]


@dataclass(frozen=True)
class RequestInfo:
    """What ``authorize`` is asked about."""

    client: tuple[str, int]  # the client's address (behind a balancer: from its PROXY header)
    user: str | None  # the authenticated user, None without authentication
    command: str  # "connect", "bind" or "udp_associate"
    host: str  # DST.ADDR as the client sent it: an IP address or a name, unresolved
    port: int


AuthenticateHook = Callable[[str, str, tuple[str, int]], Awaitable[Union[bool, str]]]
AuthorizeHook = Callable[[RequestInfo], Awaitable[bool]]
