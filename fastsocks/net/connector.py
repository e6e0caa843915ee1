"""Outbound connects: one attempt (``dial``) and Happy Eyeballs (RFC 8305, ``Connector``).

``dial`` starts one non-blocking connect(2) from the right source address;
the relay engine can wait for it (an IP literal's CONNECT).  ``Connector``
dials a list of addresses, or a name as its addresses come in, racing the
attempts as RFC 8305 says, on the event loop.  Failures are ``ConnectError``
with the SOCKS reply code for their errno (``resolver.reply_for_errno``).
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import os
import socket
from collections import deque
from typing import Any, Callable, Sequence

from ..constants import Reply
from . import dns
from .resolver import Address, ConnectError, Refused, reply_for_errno, sockaddrs

__all__ = ["Connector", "dial", "CONNECTION_ATTEMPT_DELAY"]

# Which failure to report when several addresses failed differently: the one
# that says most about the target comes first.
_PRECEDENCE = (
    Reply.CONNECTION_REFUSED,
    Reply.HOST_UNREACHABLE,
    Reply.NETWORK_UNREACHABLE,
    Reply.NOT_ALLOWED,
    Reply.ATYP_NOT_SUPPORTED,
    Reply.GENERAL_FAILURE,
)

_IN_PROGRESS = (errno.EINPROGRESS, errno.EAGAIN, getattr(errno, "EWOULDBLOCK", errno.EAGAIN))
# Outbound sockets are made non-blocking by socket(2) itself where the flag
# exists (Linux): one ioctl less per connection than setblocking(False).
_SOCK_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)
_STREAM_NONBLOCKING = socket.SOCK_STREAM | _SOCK_NONBLOCK

# Linux: bind() to a source address without reserving a port; connect() picks
# the port, so the 4-tuple, not the source port alone, must be unique (many
# more outgoing connections from one address).  Python lacks the name.
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT",
                                   24 if os.uname().sysname == "Linux" else None)


#: RFC 8305 §5: how long an attempt has before the next one starts beside it.
CONNECTION_ATTEMPT_DELAY = 0.25


def dial(family: int, sockaddr: Any, sources: Sequence[Address] = (),
         interface: str | None = None) -> tuple[Any, bool]:
    """Start a non-blocking connect(2): (the socket, True if it connected at once).

    The socket is bound to the source address of its family among
    ``sources`` (and to ``interface``) first, and has TCP_NODELAY.  A connect
    that fails at once raises ConnectError with the reply for its errno; one
    in progress comes back with False, to be waited for (EPOLLOUT, then
    SO_ERROR): by the Connector on the loop, or by the relay engine.
    """
    try:
        sock = _socket.socket(family, _STREAM_NONBLOCKING)
    except OSError as exc:
        raise ConnectError(reply_for_errno(exc.errno), exc.strerror or str(exc)) from None
    try:
        if not _SOCK_NONBLOCK:
            sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if sources or interface:
            try:
                _bind_source(sock, family, sources, interface)
            except OSError as exc:
                raise ConnectError(reply_for_errno(exc.errno), "binding the outbound address: "
                                   f"{exc.strerror or exc}") from None
        err = sock.connect_ex(sockaddr)
        if err != 0 and err not in _IN_PROGRESS:
            raise ConnectError(reply_for_errno(err), os.strerror(err))
    except BaseException:
        sock.close()
        raise
    return sock, err == 0


def _bind_source(sock: Any, family: int, sources: Sequence[Address],
                 interface: str | None) -> None:
    if interface:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode() + b"\0")
    for source_family, source in sources:
        if source_family == family:
            if _IP_BIND_ADDRESS_NO_PORT is not None:
                try:
                    sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
                except OSError:
                    pass  # an old kernel: bind() reserves a port, still correct
            sock.bind(source)
            return


class Connector:
    """Connect to the first of some addresses that answers, RFC 8305 (Happy Eyeballs v2).

    Attempts alternate between the families (§4; the first address's family
    first, IPv6 for a name); each next attempt starts ``CONNECTION_ATTEMPT_DELAY``
    after the last one, or at once when one fails (§5), while the earlier
    ones go on.  The first to connect wins: the others are closed.  The
    whole is bounded by ``timeout`` (from the constructor: a name's lookup
    counts too), reported as X'04' (host unreachable), like ETIMEDOUT.

    ``start()`` dials ``addresses``; ``resolve(host, port, judge)`` looks a
    name up (``dns.Resolution``: AAAA and A at once, §3) and dials each
    family's addresses as they come, after ``judge(addresses)`` returned
    (allowed, refusal): the access rules' pass 2.  None allowed in the end:
    ``Refused`` with the first refusal.

    Driven by callbacks (non-blocking connect() and writer callbacks), not a
    task per attempt: this is on every CONNECT's path.  ``on_done(sock,
    None)`` gets the connected socket (``sockaddr`` is what it connected
    to), ``on_done(None, error)`` the ConnectError; ``cancel()`` stops it
    and closes every socket in flight; ``on_done`` is then never called.

    ``sources`` are (family, sockaddr) source addresses (the outbound
    address): each socket is bound to the one of its target's family, if
    any, before connecting; ``interface`` binds it to a device.
    """

    __slots__ = ("loop", "queues", "on_done", "timeout", "failures", "attempts", "sockaddr",
                 "timer", "deadline", "sources", "interface", "next_family", "resolution",
                 "judge", "refusal", "over", "port", "admitted")

    def __init__(self, loop: asyncio.AbstractEventLoop, addresses: list[Address],
                 timeout: float, on_done: Callable[[Any, ConnectError | None], None],
                 sources: Sequence[Address] = (), interface: str | None = None) -> None:
        self.sources = sources
        self.interface = interface
        self.loop = loop
        self.on_done = on_done
        self.timeout = timeout
        self.queues: dict[int, deque[Any]] = {socket.AF_INET6: deque(), socket.AF_INET: deque()}
        self.next_family = addresses[0][0] if addresses else socket.AF_INET6
        for family, sockaddr in addresses:
            self.queues.setdefault(family, deque()).append(sockaddr)
        self.failures: list[tuple[int, str, bool]] = []  # (reply, why, timed out)
        self.attempts: dict[int, tuple[Any, Any]] = {}  # fd → (socket, sockaddr) in flight
        self.sockaddr: Any = None
        self.timer: asyncio.TimerHandle | None = None  # the next attempt (§5)
        self.deadline: asyncio.TimerHandle | None = None
        self.resolution: dns.Resolution | None = None  # the name's lookup, while it runs
        self.judge: Callable[[list[Address]], tuple[list[Address], Any]] | None = None
        self.refusal: tuple[Any, str] | None = None  # (denial, address) of the first refused
        self.over = False
        self.port = 0
        self.admitted = 0  # addresses the judge allowed so far

    def start(self) -> None:
        self.deadline = self.loop.call_later(self.timeout, self._timed_out)
        self._next()

    def resolve(self, host: str, port: int,
                judge: Callable[[list[Address]], tuple[list[Address], Any]] | None = None
                ) -> None:
        """Look ``host`` up and dial its addresses as they come (RFC 8305 §3)."""
        self.port = port
        self.judge = judge
        self.deadline = self.loop.call_later(self.timeout, self._timed_out)
        resolution = self.resolution = dns.Resolution(dns.CACHE, host, self._resolved,
                                                      self._resolution_ended)
        resolution.start()

    def _resolved(self, family: int, addresses: tuple[str, ...]) -> None:
        entries = sockaddrs(family, addresses, self.port)
        if self.judge is not None:
            entries, refusal = self.judge(entries)
            if self.over:  # the judge ended the connection (or chains it)
                return
            if refusal is not None and self.refusal is None:
                self.refusal = refusal
        if not entries:
            return
        self.admitted += len(entries)
        queue = self.queues[family]
        queue.extend(sockaddr for _, sockaddr in entries)
        if not self.attempts or self.timer is None:
            # Nothing in flight, or the attempt delay ran out with nothing to start.
            self._next()

    def _resolution_ended(self, reason: str | None) -> None:
        self.resolution = None
        if reason is not None and not self.failures and self.refusal is None:
            self._finish(None, ConnectError(Reply.HOST_UNREACHABLE, reason))
        elif not self.attempts and not any(self.queues.values()):
            self._give_up()

    def _pop(self) -> tuple[int, Any] | None:
        """The next address: the other family than the last attempt's when it has one (§4)."""
        first = self.next_family
        for family in (first, socket.AF_INET if first == socket.AF_INET6 else socket.AF_INET6):
            queue = self.queues.get(family)
            if queue:
                self.next_family = socket.AF_INET if family == socket.AF_INET6 \
                    else socket.AF_INET6
                return family, queue.popleft()
        return None

    def _next(self) -> None:
        """Start the next attempt (and schedule the one after it); give up when none is left."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        while not self.over:
            entry = self._pop()
            if entry is None:
                if not self.attempts and self.resolution is None:
                    self._give_up()
                return
            family, sockaddr = entry
            self.sockaddr = sockaddr
            try:
                sock, connected = dial(family, sockaddr, self.sources, self.interface)
            except ConnectError as exc:
                self._failed(sockaddr, exc.reply, exc.reason)
                continue
            if connected:
                self._succeeded(sock, sockaddr)
                return
            fd = sock.fileno()
            self.attempts[fd] = (sock, sockaddr)
            self.loop.add_writer(fd, self._writable, fd)
            if self.resolution is not None or any(self.queues.values()):
                self.timer = self.loop.call_later(CONNECTION_ATTEMPT_DELAY, self._delay_over)
            return

    def _delay_over(self) -> None:
        self.timer = None
        self._next()

    def cancel(self) -> None:
        """Stop: the lookup released, every socket in flight closed, no ``on_done``."""
        self.over = True
        self._stop(None)

    def _stop(self, keep: Any) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        if self.resolution is not None:
            self.resolution.cancel()
            self.resolution = None
        attempts, self.attempts = self.attempts, {}
        for fd, (sock, _) in attempts.items():
            self.loop.remove_writer(fd)
            if sock is not keep:
                sock.close()

    def _writable(self, fd: int) -> None:
        sock, sockaddr = self.attempts.pop(fd)
        self.loop.remove_writer(fd)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err == 0:
            self._succeeded(sock, sockaddr)
            return
        sock.close()
        self._failed(sockaddr, reply_for_errno(err), os.strerror(err))
        self._next()  # §5: a failed attempt starts the next one at once

    def _timed_out(self) -> None:
        self.deadline = None
        for _, sockaddr in self.attempts.values():
            self._failed(sockaddr, Reply.HOST_UNREACHABLE, "connect timed out", True)
        if self.resolution is not None and not self.failures and self.refusal is None:
            self._finish(None, ConnectError(Reply.HOST_UNREACHABLE,
                                            "name lookup timed out", True))
            return
        self._give_up()

    def _succeeded(self, sock: Any, sockaddr: Any) -> None:
        self.sockaddr = sockaddr
        self._finish(sock, None)

    def _finish(self, sock: Any, error: ConnectError | None) -> None:
        if self.over:
            return
        self.over = True
        self._stop(sock)
        self.on_done(sock, error)

    def _failed(self, sockaddr: Any, reply: int, reason: str, timed_out: bool = False) -> None:
        self.failures.append((reply, f"{sockaddr[0]} port {sockaddr[1]}: {reason}", timed_out))

    def _give_up(self) -> None:
        if not self.failures:
            if self.refusal is not None:
                self._finish(None, Refused(*self.refusal))
                return
            self._finish(None, ConnectError(Reply.HOST_UNREACHABLE, "connect timed out", True))
            return
        reply, reason, timed_out = min(
            self.failures, key=lambda f: _PRECEDENCE.index(f[0]) if f[0] in _PRECEDENCE else 99)
        self._finish(None, ConnectError(reply, reason, timed_out))
