"""SOCKS5 numbers (RFC 1928, RFC 1929), shared by the pure-Python code.

The Cython codec declares the same values as C enums in ``_codec.pxd``.
"""

from __future__ import annotations

import enum

SOCKS_VERSION = 0x05
USERPASS_VERSION = 0x01


class Method(enum.IntEnum):
    """Authentication methods, RFC 1928 §3."""

    NO_AUTH = 0x00
    GSSAPI = 0x01
    USERPASS = 0x02
    NO_ACCEPTABLE = 0xFF


class Greet(enum.IntEnum):
    """What the splice engine may answer in a greeting itself (``Engine.negotiate``)."""

    NONE = 0  # nothing: the loop answers every greeting
    OPEN = 1  # X'05 00' where the client offers it
    LOGIN = 2  # X'05 02', then X'01 00' to the RFC 1929 logins the users file's cache vouches for


class Sent(enum.IntEnum):
    """What the splice engine had sent when it reported a negotiation (its ``answered``)."""

    NOTHING = 0
    OPEN = 1  # X'05 00'
    METHOD = 2  # X'05 02'
    LOGIN = 3  # X'05 02', and X'01 00' to the login


class Command(enum.IntEnum):
    """Request commands, RFC 1928 §4 (SOCKS4's CONNECT and BIND share 1 and 2)."""

    CONNECT = 0x01
    BIND = 0x02
    UDP_ASSOCIATE = 0x03
    # Internal, never on the wire: an HTTP absolute-form request (``GET
    # http://host/path``) forwarded to its origin.  RFC 1928 §4 assigns only
    # 1-3 and the SOCKS5 codec refuses any other command with X'07', so no
    # client can send it; it lets the rules (``commands = ["http"]``), the
    # access log and the metrics tell a forwarded request from a tunnel.
    HTTP = 0x04


class Atyp(enum.IntEnum):
    """Address types, RFC 1928 §5."""

    IPV4 = 0x01
    DOMAIN = 0x03
    IPV6 = 0x04


class Reply(enum.IntEnum):
    """Reply codes, RFC 1928 §6."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ATYP_NOT_SUPPORTED = 0x08


class Phase(enum.IntEnum):
    """Where a server-side conversation stands (``ServerCodec.phase``)."""

    GREETING = 0  # waiting for VER NMETHODS METHODS
    METHOD = 1  # greeting parsed; the session must call send_method()
    USERPASS = 2  # waiting for the RFC 1929 sub-negotiation
    USERPASS_STATUS = 3  # credentials parsed; the session must call send_auth_status()
    REQUEST = 4  # waiting for the request
    REPLY = 5  # request parsed; the session must call send_reply()
    ESTABLISHED = 6  # success reply sent; further bytes are payload
    CLOSED = 7  # a failure was sent or an error raised; nothing more is parsed
    GSSAPI = 8  # method X'01' chosen: RFC 1961 messages go to a GssFramer, not here
