"""The SOCKS5 client role: how fastsocks asks another SOCKS5 server for something.

Upstream chaining (``upstream.connect_via``: CONNECT and UDP ASSOCIATE
through an upstream proxy) and ``fastsocks bench`` (its load generator) both
talk to SOCKS5 servers through this module, and it leaves the wire format to
the codec's client side (``encode_greeting``, ``encode_userpass``,
``encode_request``, ``parse_method_choice``, ``parse_auth_status``,
``parse_reply``): nothing here parses bytes by hand.

``Negotiation`` is the conversation as a sans-I/O state machine (RFC 1928
§3-§6, RFC 1929 §2): ``start()`` gives the greeting, ``receive()`` takes what
the server sent and gives what to send next, ``done`` and ``bound`` say when
the reply has come and what it said.  It asks for at most ``want`` bytes at a
time, never past the end of the message it waits for: the bytes a server
relays right after its reply (a target's banner) stay in the socket for
whoever relays it.  Two drivers run it on a socket, ``negotiate()`` (blocking)
and ``negotiate_async()`` (an event loop's ``sock_*`` calls); bench's epoll
engine feeds it from its own loop.

Whatever goes wrong raises :class:`SocksError`, naming the step (greeting,
auth, reply, request) and, for a failure reply, its REP code.
"""

from __future__ import annotations

import asyncio
import socket

from ..codec import (
    NEED_DATA,
    ProtocolError,
    encode_greeting,
    encode_request,
    encode_userpass,
    parse_auth_status,
    parse_method_choice,
    parse_reply,
    reply_size,
)
from ..constants import Command, Method

__all__ = ["SocksError", "Negotiation", "negotiate", "negotiate_async", "REPLY_MESSAGES"]

REPLY_MESSAGES = {  # RFC 1928 §6
    0x00: "succeeded",
    0x01: "general SOCKS server failure",
    0x02: "connection not allowed by ruleset",
    0x03: "network unreachable",
    0x04: "host unreachable",
    0x05: "connection refused",
    0x06: "TTL expired",
    0x07: "command not supported",
    0x08: "address type not supported",
}

_COMMAND_NAMES: dict[int, str] = {Command.CONNECT: "CONNECT", Command.BIND: "BIND",
                                  Command.UDP_ASSOCIATE: "UDP ASSOCIATE"}

# Steps; the names are what SocksError says.
_METHOD, _AUTH, _REPLY, _DONE = range(4)
_STEP_NAMES = ("greeting", "auth", "reply", "reply")

#: Every read returns at least one byte and the longest conversation is a
#: method choice (2), an auth status (2) and a reply with a 255-octet name
#: (262): the drivers' loops are bounded by that.
MAX_READS = 2 + 2 + 262


class SocksError(Exception):
    """The SOCKS5 server answered something other than success.

    ``reply`` is the RFC 1928 REP code for a failed request (e.g. 5 for
    "connection refused"), else None; ``step`` names the exchange that failed
    (greeting, auth, request, reply; bench adds echo and udp).
    """

    def __init__(self, step: str, message: str, reply: int | None = None) -> None:
        self.step = step
        self.reply = reply
        super().__init__(f"SOCKS5 {step}: {message}")


class Negotiation:
    """One SOCKS5 client conversation up to the reply, sans-I/O.

    ``auth`` is (username, password): username/password is offered as well as
    no authentication (RFC 1928 §3), and used if the server picks it.
    ``host`` goes in the request as given: a name stays unresolved, for the
    server to resolve.  Raises ValueError at once for what cannot be encoded
    (a name over 255 octets, a port out of range, credentials over 255 octets).
    """

    #: Said after "no acceptable authentication method" when none was offered.
    NO_METHOD_HINT = "; the server may need a username and password"

    __slots__ = ("_greeting", "_login", "_request", "_command", "_user", "_step", "_buf",
                 "bound")

    def __init__(self, host: str, port: int, command: int = Command.CONNECT,
                 auth: tuple[str, str] | None = None) -> None:
        self._request: bytes = encode_request(command, host, port)
        self._command = int(command)
        if auth is None:
            self._user: str | None = None
            self._login = b""
            self._greeting: bytes = encode_greeting(bytes((Method.NO_AUTH,)))
        else:
            self._user = auth[0]
            self._login = encode_userpass(auth[0].encode("utf-8"), auth[1].encode("utf-8"))
            self._greeting = encode_greeting(bytes((Method.NO_AUTH, Method.USERPASS)))
        self._step = _METHOD
        self._buf = b""
        #: (BND.ADDR, BND.PORT) of the success reply, once ``done``.
        self.bound: tuple[str, int] = ("", 0)

    def fresh(self) -> Negotiation:
        """A new conversation for the same request (the messages are encoded once)."""
        other = type(self).__new__(type(self))
        other._greeting, other._login, other._request = self._greeting, self._login, self._request
        other._command, other._user = self._command, self._user
        other._step, other._buf, other.bound = _METHOD, b"", ("", 0)
        return other

    def start(self) -> bytes:
        """The greeting: the first bytes to send."""
        return self._greeting

    @property
    def done(self) -> bool:
        """The success reply has come; ``bound`` holds its address."""
        return self._step == _DONE

    @property
    def step(self) -> str:
        """The exchange under way, as SocksError names it."""
        return _STEP_NAMES[self._step]

    @property
    def want(self) -> int:
        """How many bytes to read next: never past the end of the awaited message."""
        if self._step == _REPLY:
            return reply_size(self._buf) - len(self._buf)
        if self._step == _DONE:
            return 0
        return 2 - len(self._buf)  # VER METHOD (RFC 1928 §3), VER STATUS (RFC 1929 §2)

    def closed(self) -> SocksError:
        """The error to raise when the server closed the connection now."""
        return SocksError(self.step, f"server closed the connection (after {self._buf!r})")

    def receive(self, data: bytes) -> bytes:
        """Take bytes from the server; returns what to send now (often nothing)."""
        if self._step == _DONE:
            raise RuntimeError("the negotiation is over; the bytes belong to the connection")
        buf = self._buf + data
        self._buf = buf
        try:
            if self._step == _METHOD:
                method = parse_method_choice(buf)
                if method is NEED_DATA:
                    return b""
                self._buf = buf[2:]
                return self._chosen(method)
            if self._step == _AUTH:
                status = parse_auth_status(buf)
                if status is NEED_DATA:
                    return b""
                if status != 0x00:  # RFC 1929 §2: anything but X'00' is failure
                    raise SocksError("auth", f"the server rejected user {self._user!r} "
                                             f"(status {status:#04x})")
                self._buf = buf[2:]
                self._step = _REPLY
                return self._request
            reply = parse_reply(buf)
        except ProtocolError as exc:
            raise SocksError(self.step, str(exc)) from None
        if reply is NEED_DATA:
            return b""
        if reply.rep != 0x00:
            message = REPLY_MESSAGES.get(reply.rep, "unassigned reply code")
            name = _COMMAND_NAMES.get(self._command, f"command {self._command}")
            raise SocksError("request", f"{name} failed with reply X'{reply.rep:02X}' "
                                        f"({message})", reply.rep)
        self._buf = buf[reply.length:]
        self.bound = (reply.host, reply.port)
        self._step = _DONE
        return b""

    def _chosen(self, method: int) -> bytes:
        # RFC 1928 §3: the server picks one of the offered methods, or X'FF'.
        if method == Method.USERPASS and self._login:
            self._step = _AUTH
            return self._login
        if method == Method.NO_AUTH:
            self._step = _REPLY
            return self._request
        if method == Method.NO_ACCEPTABLE:
            raise SocksError("greeting", "no acceptable authentication method (X'FF')"
                             + ("" if self._login else self.NO_METHOD_HINT))
        raise SocksError("greeting", f"server chose method X'{method:02X}', which was not "
                                     "offered")


def negotiate(sock: socket.socket, negotiation: Negotiation) -> tuple[str, int]:
    """Run ``negotiation`` on a connected blocking socket; returns (BND.ADDR, BND.PORT).

    The socket's timeout applies to each read; running out of it is a
    SocksError naming the step.
    """
    sock.sendall(negotiation.start())
    for _ in range(MAX_READS):
        try:
            chunk = sock.recv(negotiation.want)
        except socket.timeout:
            raise SocksError(negotiation.step, f"no answer within {sock.gettimeout()} s") from None
        if not chunk:
            raise negotiation.closed()
        out = negotiation.receive(chunk)
        if out:
            sock.sendall(out)
        if negotiation.done:
            return negotiation.bound
    raise AssertionError("unreachable: every read moves the negotiation on")


async def negotiate_async(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                          negotiation: Negotiation) -> tuple[str, int]:
    """The same on a non-blocking socket with the loop's ``sock_*`` calls.

    No timeout of its own: the caller bounds it (``asyncio.wait_for``).
    """
    await loop.sock_sendall(sock, negotiation.start())
    for _ in range(MAX_READS):
        chunk = await loop.sock_recv(sock, negotiation.want)
        if not chunk:
            raise negotiation.closed()
        out = negotiation.receive(chunk)
        if out:
            await loop.sock_sendall(sock, out)
        if negotiation.done:
            return negotiation.bound
    raise AssertionError("unreachable: every read moves the negotiation on")
