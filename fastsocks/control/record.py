"""What one connection's life is made of: its states, why it ended, its record.

The session moves through ``State`` (one attribute, one value at a time)
and ends with exactly one ``CloseRecord``: the facts the access log and the
metrics need, with the cause as a ``CloseReason``.  Observers read records,
never sessions, so rewording a log line cannot change a metric label.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..constants import Reply

__all__ = ["State", "Protocol", "CloseReason", "CloseRecord", "reason_for_reply"]


class State(enum.Enum):
    """Where a client connection stands; the session's only state flag."""

    PROXY_HEADER = "proxy_header"  # behind a balancer: the PROXY header comes first
    NEGOTIATING = "negotiating"  # greeting, RFC 1929 sub-negotiation, request (the codec's phases)
    AUTHENTICATING = "authenticating"  # a password check or the authenticate hook runs
    GSSAPI = "gssapi"  # RFC 1961 messages: context, protection level, wrapped request
    DECIDING = "deciding"  # request in: limits per user, rules, the authorize hook
    CONNECTING = "connecting"  # CONNECT: resolving, dialling, or through an upstream
    BINDING = "binding"  # BIND: listening for the one incoming connection
    ASSOCIATED = "associated"  # UDP ASSOCIATE: the TCP connection only holds it open
    RELAYING = "relaying"  # both sockets belong to the relay (or the engine)
    CLOSED = "closed"


class Protocol(str, enum.Enum):
    """What a client speaks, told apart by its first byte (one port serves them all)."""

    SOCKS5 = "socks5"  # RFC 1928: first byte 5
    SOCKS4 = "socks4"  # SOCKS4 and 4a: first byte 4
    HTTP = "http"  # HTTP/1.1 proxying (CONNECT, absolute-form requests): a method's letter

    def __str__(self) -> str:
        return self.value


class CloseReason(str, enum.Enum):
    """Why a connection ended: the access log's last field, the metrics' label."""

    # Reported by the relays (the engine's REASONS, the protocol relay's).
    EOF = "eof"
    CLIENT_RESET = "client_reset"
    UPSTREAM_RESET = "upstream_reset"
    CLIENT_CLOSED = "client_closed"
    UPSTREAM_CLOSED = "upstream_closed"
    IDLE_TIMEOUT = "idle_timeout"
    CLOSED = "closed"
    SHUTDOWN = "shutdown"
    ERROR = "error"
    GSSAPI_ERROR = "gssapi_error"  # a message could not be wrapped or unwrapped mid-relay
    # Before the relay: the session's own.
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    PROXY_PROTOCOL_TIMEOUT = "proxy_protocol_timeout"
    PROXY_PROTOCOL_UNTRUSTED = "proxy_protocol_untrusted"
    PROXY_PROTOCOL_ERROR = "proxy_protocol_error"
    NO_ACCEPTABLE_METHOD = "no_acceptable_method"
    AUTH_FAILED = "auth_failed"
    PROTOCOL_ERROR = "protocol_error"
    LIMIT_REACHED = "limit_reached"
    CONNECT_TIMEOUT = "connect_timeout"
    BIND_PEER_REFUSED = "bind_peer_refused"
    # A failure reply sent (RFC 1928 §6), named after its code.
    GENERAL_FAILURE = "general_failure"
    RULE_DENIED = "rule_denied"
    NETWORK_UNREACHABLE = "network_unreachable"
    HOST_UNREACHABLE = "host_unreachable"
    REFUSED = "refused"
    BIND_TIMEOUT = "bind_timeout"
    COMMAND_NOT_SUPPORTED = "command_not_supported"
    ADDRESS_TYPE_NOT_SUPPORTED = "address_type_not_supported"

    def __str__(self) -> str:
        return self.value


_BY_REPLY: dict[int, CloseReason] = {
    Reply.GENERAL_FAILURE: CloseReason.GENERAL_FAILURE,
    Reply.NOT_ALLOWED: CloseReason.RULE_DENIED,
    Reply.NETWORK_UNREACHABLE: CloseReason.NETWORK_UNREACHABLE,
    Reply.HOST_UNREACHABLE: CloseReason.HOST_UNREACHABLE,
    Reply.CONNECTION_REFUSED: CloseReason.REFUSED,
    Reply.TTL_EXPIRED: CloseReason.BIND_TIMEOUT,
    Reply.COMMAND_NOT_SUPPORTED: CloseReason.COMMAND_NOT_SUPPORTED,
    Reply.ATYP_NOT_SUPPORTED: CloseReason.ADDRESS_TYPE_NOT_SUPPORTED,
}


def reason_for_reply(code: int) -> CloseReason:
    """The close reason of a failure reply (RFC 1928 §6): X'05' is ``refused``."""
    return _BY_REPLY.get(code, CloseReason.ERROR)


@dataclass(frozen=True, slots=True)
class CloseRecord:
    """One finished client connection, as the access log and metrics see it.

    ``command``/``host``/``port`` are None when no valid request arrived;
    ``reply`` is the last reply code sent (None: none); ``dialled`` the
    sockaddr connected to (CONNECT: the target or the upstream; BIND: the
    peer); the datagram counts are None unless it was a UDP association;
    ``userid`` is a SOCKS4 client's USERID (None for other protocols).
    """

    client: tuple[str, int] | None
    user: str | None
    command: int | None
    host: str | None
    port: int | None
    dialled: tuple[str, int] | None
    reply: int | None
    bytes_up: int
    bytes_down: int
    duration: float
    reason: CloseReason
    datagrams_up: int | None = None
    datagrams_down: int | None = None
    dropped: int | None = None
    protocol: Protocol = Protocol.SOCKS5
    userid: str | None = None
