"""Sans-I/O SOCKS5 codec, pure-Python twin of ``_codec.pyx``.

Both implementations behave identically (the test suite runs every case on
both and compares them with hypothesis).  Feed bytes with ``receive_data()``,
pull events with ``next_event()``, and get the bytes to send from the
``send_*()`` methods.  The client side (``encode_*()`` and the
``parse_*()`` functions over the bytes received so far) serves upstream
chaining and ``fastsocks bench``.  Nothing here does I/O, DNS or policy; the
only exception that escapes is ``ProtocolError``.
"""

from __future__ import annotations

import operator
import re
import socket
from dataclasses import dataclass

from .constants import Phase
from .errors import ProtocolError

__all__ = [
    "IMPLEMENTATION",
    "NEED_DATA",
    # the server side (RFC 1928, RFC 1929)
    "Greeting",
    "UserPass",
    "Request",
    "ServerCodec",
    "encode_address",
    "encode_reply",
    # UDP datagrams (RFC 1928 §7)
    "UdpHeader",
    "parse_udp_header",
    "build_udp_header",
    # the client side (RFC 1928 §3-§6, RFC 1929 §2)
    "Reply",
    "encode_greeting",
    "encode_userpass",
    "encode_request",
    "parse_method_choice",
    "parse_auth_status",
    "parse_reply",
    "reply_size",
    # SOCKS4 and SOCKS4a (the server side)
    "Socks4Request",
    "parse_socks4_request",
    "encode_socks4_reply",
    "SOCKS4_FIELD_MAX",
    # PROXY protocol
    "ProxyHeader",
    "parse_proxy_header",
    "PROXY_V1_MAX",
    "PROXY_V2_SIGNATURE",
    "crc32c",
    # GSSAPI message framing (RFC 1961)
    "GssMessage",
    "GssFramer",
    "gss_frame",
    "GSS_ABORT",
    "GSS_TOKEN_MAX",
    "GSS_MTYP_AUTH",
    "GSS_MTYP_PROTECTION",
    "GSS_MTYP_DATA",
    "GSS_MTYP_ABORT",
]

IMPLEMENTATION = "py"

_GREETING = Phase.GREETING.value
_METHOD = Phase.METHOD.value
_USERPASS = Phase.USERPASS.value
_USERPASS_STATUS = Phase.USERPASS_STATUS.value
_REQUEST = Phase.REQUEST.value
_REPLY = Phase.REPLY.value
_ESTABLISHED = Phase.ESTABLISHED.value
_CLOSED = Phase.CLOSED.value
_GSSAPI = Phase.GSSAPI.value

_CMD_BIND = 0x02
_ATYP_IPV4 = 0x01
_ATYP_DOMAIN = 0x03
_ATYP_IPV6 = 0x04
_REP_GENERAL_FAILURE = 0x01
_REP_HOST_UNREACHABLE = 0x04
_REP_COMMAND_NOT_SUPPORTED = 0x07
_REP_ATYP_NOT_SUPPORTED = 0x08
# The octets no domain name may hold: C0 controls and DEL (see _parse_address).
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()


@dataclass(frozen=True, slots=True)
class Greeting:
    """VER NMETHODS METHODS (RFC 1928 §3); ``methods`` holds the method octets."""

    methods: bytes


@dataclass(frozen=True, slots=True)
class UserPass:
    """RFC 1929 §2 sub-negotiation; both fields are raw octets."""

    username: bytes
    password: bytes

    def __repr__(self) -> str:  # never show a password
        return f"UserPass(username={self.username!r}, password=<{len(self.password)} bytes>)"


@dataclass(frozen=True, slots=True)
class Request:
    """VER CMD RSV ATYP DST.ADDR DST.PORT (RFC 1928 §4)."""

    command: int
    atyp: int
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class UdpHeader:
    """RSV FRAG ATYP DST.ADDR DST.PORT (RFC 1928 §7); data starts at ``length``."""

    frag: int
    atyp: int
    host: str
    port: int
    length: int


def _parse_address(buf: bytes, pos: int, end: int, atyp: int) -> tuple[str, int, int] | None:
    """Parse ATYP-specific DST.ADDR and DST.PORT at ``pos`` (RFC 1928 §5).

    Returns (host, port, new_pos), or None if more bytes are needed.
    """
    if atyp == _ATYP_IPV4:
        if end - pos < 6:
            return None
        host = "%d.%d.%d.%d" % (buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3])
        pos += 4
    elif atyp == _ATYP_DOMAIN:
        if end - pos < 1:
            return None
        n = buf[pos]
        if n == 0:
            raise ProtocolError("empty domain name", _REP_GENERAL_FAILURE)
        if end - pos < 1 + n + 2:
            return None
        # §5: a length octet and the name, "there is no terminating NUL
        # octet"; a NUL or another C0 control (or DEL) names no host, and
        # would not reach the resolver intact: c-ares and getaddrinfo take C
        # strings (c-ares looked up "internal" for "internal\0.example.com",
        # past rules that matched the whole name), and the log would carry it.
        bad = _CONTROL.search(buf, pos + 1, pos + 1 + n)
        if bad is not None:
            raise ProtocolError(f"domain name contains control byte {buf[bad.start()]:#04x}",
                                _REP_HOST_UNREACHABLE)
        try:
            host = buf[pos + 1 : pos + 1 + n].decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("domain name is not valid UTF-8", _REP_HOST_UNREACHABLE) from None
        pos += 1 + n
    elif atyp == _ATYP_IPV6:
        if end - pos < 18:
            return None
        host = socket.inet_ntop(socket.AF_INET6, buf[pos : pos + 16])
        pos += 16
    else:
        raise ProtocolError(f"address type {atyp:#04x} not supported", _REP_ATYP_NOT_SUPPORTED)
    port = (buf[pos] << 8) | buf[pos + 1]
    return host, port, pos + 2


def _uint_arg(value: int, limit: int, what: str) -> int:
    """``value`` as an int in 0..limit, else ValueError (TypeError if not an integer).

    The C codec reads these arguments as C ints: it must not answer a huge
    Python int with OverflowError, nor a float with anything but TypeError.
    """
    v = operator.index(value)
    if not 0 <= v <= limit:
        raise ValueError(f"{what} out of range: {value}")
    return v


def encode_address(host: str, port: int) -> bytes:
    """ATYP DST.ADDR DST.PORT for an IP literal or a domain name (RFC 1928 §5).

    A scope suffix on an IPv6 literal (``fe80::1%eth0``) is dropped: SOCKS
    has no field for it.  Raises ValueError for a port or name out of range
    (a programming error, not peer input).
    """
    port = _uint_arg(port, 0xFFFF, "port")
    try:
        packed = socket.inet_pton(socket.AF_INET, host)
    except (OSError, ValueError):
        pass
    else:
        return b"\x01" + packed + port.to_bytes(2, "big")
    # A lone surrogate raises UnicodeEncodeError (a ValueError) here, before
    # the IPv6 attempt, as in the C codec, which encodes the host first.
    name = host.encode("utf-8")
    if ":" in host:
        try:
            packed = socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
        except (OSError, ValueError):
            raise ValueError(f"not an IPv6 address: {host!r}") from None
        return b"\x04" + packed + port.to_bytes(2, "big")
    if not 0 < len(name) <= 255:
        raise ValueError(f"domain name must be 1 to 255 octets: {host!r}")
    return b"\x03" + bytes((len(name),)) + name + port.to_bytes(2, "big")


def encode_reply(rep: int, host: str = "0.0.0.0", port: int = 0) -> bytes:
    """VER REP RSV ATYP BND.ADDR BND.PORT (RFC 1928 §6), outside a conversation.

    For a reply encoded before it is known to be sent: the success reply of
    a connect still in progress, which the relay engine sends only once the
    connect is done.  ``ServerCodec.send_reply`` is the same bytes, and also
    moves the conversation on.
    """
    rep = _uint_arg(rep, 0xFF, "reply code")
    return bytes((0x05, rep, 0x00)) + encode_address(host, port)


def parse_udp_header(data: bytes) -> UdpHeader:
    """Parse the UDP request header that starts a datagram (RFC 1928 §7)."""
    # Any bytes-like object, as the C codec takes it (a datagram may come as a
    # bytearray or a memoryview of a receive buffer; a memoryview has no .decode()).
    if type(data) is not bytes:
        data = bytes(data)
    end = len(data)
    if end < 4:
        raise ProtocolError("UDP datagram shorter than its header", _REP_GENERAL_FAILURE)
    if data[0] != 0 or data[1] != 0:
        raise ProtocolError("UDP header RSV is not zero", _REP_GENERAL_FAILURE)
    parsed = _parse_address(data, 4, end, data[3])
    if parsed is None:
        raise ProtocolError("UDP datagram shorter than its header", _REP_GENERAL_FAILURE)
    host, port, pos = parsed
    return UdpHeader(data[2], data[3], host, port, pos)


def build_udp_header(host: str, port: int, frag: int = 0) -> bytes:
    """RSV FRAG ATYP DST.ADDR DST.PORT for a datagram going back to the client."""
    frag = _uint_arg(frag, 0xFF, "frag")
    return b"\x00\x00" + bytes((frag,)) + encode_address(host, port)


# -- the client side (RFC 1928 §3-§6, RFC 1929 §2) ------------------------------------
#
# What a SOCKS5 client sends and parses: used by upstream chaining and by
# ``fastsocks bench`` (fastsocks/net/client.py drives them).  The parsers are
# functions over the bytes received so far, like parse_proxy_header(): each
# says NEED_DATA until its message is complete and ProtocolError (X'01') for
# bytes no SOCKS5 server may send; what follows the message is not theirs.

_REPLY_MIN = 8  # VER REP RSV ATYP, a one-octet name with its length, BND.PORT


@dataclass(frozen=True, slots=True)
class Reply:
    """VER REP RSV ATYP BND.ADDR BND.PORT (RFC 1928 §6); what follows starts at ``length``."""

    rep: int
    atyp: int
    host: str
    port: int
    length: int


def _octets_arg(value: bytes, low: int, what: str) -> int:
    """The length of ``value``, which must be bytes of ``low`` to 255 octets (one length octet)."""
    if type(value) is not bytes:
        raise TypeError(f"{what} must be bytes, not {type(value).__name__}")
    n = len(value)
    if not low <= n <= 255:
        raise ValueError(f"{what} must be {low} to 255 octets, got {n}")
    return n


def encode_greeting(methods: bytes) -> bytes:
    """VER NMETHODS METHODS (RFC 1928 §3) offering the method octets ``methods`` (1 to 255)."""
    n = _octets_arg(methods, 1, "methods")
    return bytes((0x05, n)) + methods


def encode_userpass(username: bytes, password: bytes) -> bytes:
    """VER ULEN UNAME PLEN PASSWD (RFC 1929 §2); each field 1 to 255 raw octets.

    The errors give lengths only: a password never appears in a message.
    """
    ulen = _octets_arg(username, 1, "username")
    plen = _octets_arg(password, 1, "password")
    return bytes((0x01, ulen)) + username + bytes((plen,)) + password


def encode_request(command: int, host: str, port: int) -> bytes:
    """VER CMD RSV ATYP DST.ADDR DST.PORT (RFC 1928 §4) for CONNECT, BIND or UDP ASSOCIATE.

    ValueError for a command other than 1, 2 or 3, and as encode_address().
    """
    if type(host) is not str:  # as the C codec's typed argument, before the others
        raise TypeError(f"host must be str, not {type(host).__name__}")
    cmd = _uint_arg(command, 0xFF, "command")
    if not 0x01 <= cmd <= 0x03:
        raise ValueError(f"command out of range: {command}")
    return bytes((0x05, cmd, 0x00)) + encode_address(host, port)


def parse_method_choice(data: bytes) -> int | _NeedData:
    """The METHOD the server selected (RFC 1928 §3: VER METHOD, two octets), or NEED_DATA.

    X'FF' (no acceptable method) is returned like any other: what to do with
    a choice is the client's business.
    """
    if type(data) is not bytes:
        data = bytes(data)
    if len(data) < 1:
        return NEED_DATA
    if data[0] != 0x05:
        raise ProtocolError(f"the peer is not a SOCKS5 server (version {data[0]:#04x} in its "
                            "method choice)", _REP_GENERAL_FAILURE)
    if len(data) < 2:
        return NEED_DATA
    return data[1]


def parse_auth_status(data: bytes) -> int | _NeedData:
    """The STATUS of an RFC 1929 §2 answer (VER STATUS, two octets; 0 is success), or NEED_DATA."""
    if type(data) is not bytes:
        data = bytes(data)
    if len(data) < 1:
        return NEED_DATA
    if data[0] != 0x01:
        raise ProtocolError(f"username/password status version {data[0]:#04x}, expected 0x01",
                            _REP_GENERAL_FAILURE)
    if len(data) < 2:
        return NEED_DATA
    return data[1]


# RFC 1928 §6: VER REP RSV ATYP, checked as far as they have come.
def _reply_head(buf: bytes, end: int) -> bool:
    """True once the four fixed octets are in and valid, False while some are missing."""
    if end < 1:
        return False
    if buf[0] != 0x05:
        raise ProtocolError(f"bad version in reply: {buf[0]:#04x}, expected 0x05",
                            _REP_GENERAL_FAILURE)
    if end < 3:
        return False
    # A server must send RSV as X'00'; a client that takes anything else
    # would take a reply that is off by one octet too.
    if buf[2] != 0x00:
        raise ProtocolError(f"reserved byte in reply is {buf[2]:#04x}, not 0",
                            _REP_GENERAL_FAILURE)
    if end < 4:
        return False
    if buf[3] not in (_ATYP_IPV4, _ATYP_DOMAIN, _ATYP_IPV6):
        raise ProtocolError(f"unknown address type {buf[3]:#04x} in reply", _REP_GENERAL_FAILURE)
    return True


def parse_reply(data: bytes) -> Reply | _NeedData:
    """The server's reply to a request (RFC 1928 §6), or NEED_DATA.

    Failure replies are returned too (``rep`` non-zero): only bytes that
    cannot be a reply raise ProtocolError.  Bytes after ``length`` belong to
    the connection (the relayed data, or BIND's second reply).
    """
    if type(data) is not bytes:
        data = bytes(data)
    end = len(data)
    if not _reply_head(data, end):
        return NEED_DATA
    parsed = _parse_address(data, 4, end, data[3])
    if parsed is None:
        return NEED_DATA
    host, port, pos = parsed
    return Reply(data[1], data[3], host, port, pos)


def reply_size(data: bytes) -> int:
    """How many octets the reply that starts with ``data`` has, as far as they tell.

    Exact once ATYP (and, for a name, its length octet) has come; before
    that the least any reply has (8).  Never more than the reply: a client
    that reads no more than this never reads into the data relayed after it.
    Raises ProtocolError as parse_reply() does.
    """
    if type(data) is not bytes:
        data = bytes(data)
    end = len(data)
    if not _reply_head(data, end):
        return _REPLY_MIN
    if data[3] == _ATYP_IPV4:
        return 4 + 4 + 2
    if data[3] == _ATYP_IPV6:
        return 4 + 16 + 2
    if end < 5:
        return _REPLY_MIN
    if data[4] == 0:
        raise ProtocolError("empty domain name", _REP_GENERAL_FAILURE)
    return 4 + 1 + data[4] + 2


class _Buffer:
    """The bytes received and how far they are parsed: what every parser here shares."""

    __slots__ = ("_buf", "_pos")

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0

    @property
    def trailing_data(self) -> bytes:
        """Bytes received after the last parsed message, not yet consumed."""
        return self._buf[self._pos :]

    def receive_data(self, data: bytes) -> None:
        if self._pos == len(self._buf):
            self._buf = bytes(data)
        else:
            self._buf = self._buf[self._pos :] + data
        self._pos = 0


class ServerCodec(_Buffer):
    """The server side of one SOCKS5 conversation, as a state machine."""

    __slots__ = ("_phase", "_command", "_replies", "_failed", "_error_code")

    def __init__(self) -> None:
        super().__init__()
        self._phase = _GREETING
        self._command = 0
        self._replies = 0
        self._failed = _CLOSED
        self._error_code = _REP_GENERAL_FAILURE

    @property
    def phase(self) -> int:
        return self._phase

    @property
    def command(self) -> int:
        """The command of the parsed request (0 before it)."""
        return self._command

    def next_event(self) -> Greeting | UserPass | Request | _NeedData:
        phase = self._phase
        try:
            if phase == _GREETING:
                return self._parse_greeting()
            if phase == _USERPASS:
                return self._parse_userpass()
            if phase == _REQUEST:
                return self._parse_request()
        except ProtocolError as exc:
            self._failed = phase
            self._error_code = exc.reply_code
            self._phase = _CLOSED
            raise
        return NEED_DATA

    # RFC 1928 §3: VER NMETHODS METHODS
    def _parse_greeting(self) -> Greeting | _NeedData:
        buf, pos, end = self._buf, self._pos, len(self._buf)
        if end - pos < 1:
            return NEED_DATA
        if buf[pos] != 0x05:
            raise ProtocolError(f"not SOCKS5: version {buf[pos]:#04x}", _REP_GENERAL_FAILURE)
        if end - pos < 2:
            return NEED_DATA
        n = buf[pos + 1]
        if end - pos < 2 + n:
            return NEED_DATA
        methods = buf[pos + 2 : pos + 2 + n]
        self._pos = pos + 2 + n
        self._phase = _METHOD
        return Greeting(methods)

    # RFC 1929 §2: VER ULEN UNAME PLEN PASSWD
    def _parse_userpass(self) -> UserPass | _NeedData:
        buf, pos, end = self._buf, self._pos, len(self._buf)
        if end - pos < 1:
            return NEED_DATA
        if buf[pos] != 0x01:
            raise ProtocolError(
                f"username/password version {buf[pos]:#04x}, expected 0x01", _REP_GENERAL_FAILURE
            )
        if end - pos < 2:
            return NEED_DATA
        ulen = buf[pos + 1]
        if end - pos < 3 + ulen:
            return NEED_DATA
        plen = buf[pos + 2 + ulen]
        if end - pos < 3 + ulen + plen:
            return NEED_DATA
        username = buf[pos + 2 : pos + 2 + ulen]
        password = buf[pos + 3 + ulen : pos + 3 + ulen + plen]
        self._pos = pos + 3 + ulen + plen
        self._phase = _USERPASS_STATUS
        return UserPass(username, password)

    # RFC 1928 §4: VER CMD RSV ATYP DST.ADDR DST.PORT
    def _parse_request(self) -> Request | _NeedData:
        buf, pos, end = self._buf, self._pos, len(self._buf)
        if end - pos < 1:
            return NEED_DATA
        if buf[pos] != 0x05:
            raise ProtocolError(f"request version {buf[pos]:#04x}, expected 0x05", _REP_GENERAL_FAILURE)
        if end - pos < 2:
            return NEED_DATA
        cmd = buf[pos + 1]
        if cmd < 0x01 or cmd > 0x03:
            raise ProtocolError(f"command {cmd:#04x} not supported", _REP_COMMAND_NOT_SUPPORTED)
        # RSV is ignored on input: it carries no information.
        if end - pos < 4:
            return NEED_DATA
        atyp = buf[pos + 3]
        parsed = _parse_address(buf, pos + 4, end, atyp)
        if parsed is None:
            return NEED_DATA
        host, port, self._pos = parsed
        self._phase = _REPLY
        self._command = cmd
        return Request(cmd, atyp, host, port)

    def send_method(self, method: int) -> bytes:
        """METHOD selection (RFC 1928 §3); X'FF' ends the conversation."""
        if self._phase != _METHOD:
            raise RuntimeError("send_method() is only valid after a Greeting event")
        m = operator.index(method)
        if m == 0xFF:
            self._phase = _CLOSED
        elif m == 0x02:
            self._phase = _USERPASS
        elif m == 0x00:
            self._phase = _REQUEST
        elif m == 0x01:
            # RFC 1961: the sub-negotiation is VER MTYP LEN TOKEN messages,
            # which GssFramer parses; this codec waits in GSSAPI until
            # gssapi_established(), then takes the unwrapped request.
            self._phase = _GSSAPI
        else:
            raise ValueError(f"method {method:#04x} has no sub-negotiation in this codec")
        return bytes((0x05, m))

    def take_trailing_data(self) -> bytes:
        """Remove and return the unparsed bytes (after X'01': the first RFC 1961 messages)."""
        data = self._buf[self._pos :]
        self._buf = b""
        self._pos = 0
        return data

    def gssapi_established(self) -> None:
        """The RFC 1961 context and protection level are agreed: expect the request.

        From here ``receive_data()`` takes the request as unwrapped from its
        MTYP 3 messages (RFC 1961 §5); the replies are wrapped by the caller.
        """
        if self._phase != _GSSAPI:
            raise RuntimeError("gssapi_established() is only valid after send_method(0x01)")
        self._phase = _REQUEST

    def send_auth_status(self, ok: bool) -> bytes:
        """RFC 1929 status: X'00' success; anything else is failure and the end."""
        if self._phase != _USERPASS_STATUS:
            raise RuntimeError("send_auth_status() is only valid after a UserPass event")
        if ok:
            self._phase = _REQUEST
            return b"\x01\x00"
        self._phase = _CLOSED
        return b"\x01\x01"

    def send_reply(self, rep: int, host: str = "0.0.0.0", port: int = 0) -> bytes:
        """VER REP RSV ATYP BND.ADDR BND.PORT (RFC 1928 §6).

        A failure reply closes the conversation.  A success reply to BIND
        leaves the codec waiting for the second reply (§4, BIND).
        """
        if self._phase != _REPLY:
            raise RuntimeError("send_reply() is only valid after a Request event")
        rep = _uint_arg(rep, 0xFF, "reply code")
        data = bytes((0x05, rep, 0x00)) + encode_address(host, port)
        if rep != 0:
            self._phase = _CLOSED
        elif self._command != _CMD_BIND or self._replies == 1:
            self._phase = _ESTABLISHED
        self._replies += 1
        return data

    def send_error(self) -> bytes:
        """What to send before closing, after ``next_event()`` raised ProtocolError.

        A request error gets a reply carrying the error's code (RFC 1928 §6),
        a sub-negotiation error a failure status (RFC 1929 §2), a SOCKS4
        client a SOCKS4 rejection so it says something useful; otherwise
        there is nothing to say and the connection is just closed.
        """
        failed = self._failed
        if failed == _REQUEST:
            return bytes((0x05, self._error_code, 0x00, 0x01, 0, 0, 0, 0, 0, 0))
        if failed == _USERPASS:
            return b"\x01\x01"
        if failed == _GREETING and self._pos < len(self._buf) and self._buf[self._pos] == 0x04:
            return b"\x00\x5b\x00\x00\x00\x00\x00\x00"
        return b""


# -- SOCKS4 and SOCKS4a (the server side) -------------------------------------------
#
# Ying-Da Lee's "SOCKS: A protocol for TCP proxy across firewalls" (SOCKS4)
# and "SOCKS 4A: A Simple Extension to SOCKS 4 Protocol".  The request is
# VN CD DSTPORT DSTIP USERID NUL; in 4a, a DSTIP of 0.0.0.x with x non-zero
# says that a host name follows, NUL-terminated too.  Both fields are read
# only up to SOCKS4_FIELD_MAX octets (the protocols set no bound; NUL-ended
# fields must have one, or a client could make the server buffer forever).
# A function over the bytes so far, like parse_proxy_header(): the session
# keeps the bytes; what follows ``length`` belongs to the target.

SOCKS4_FIELD_MAX = 255  # octets of USERID, and of a 4a host name, before the NUL
_SOCKS4_CONNECT = 0x01
_SOCKS4_BIND = 0x02


@dataclass(frozen=True, slots=True)
class Socks4Request:
    """VN CD DSTPORT DSTIP USERID NUL [HOST NUL]; what follows starts at ``length``.

    ``command`` is CD (1 CONNECT, 2 BIND: SOCKS5's numbers); ``host`` the
    DSTIP as a dotted quad, or the 4a host name (``socks4a`` true);
    ``userid`` the USERID, which identifies nobody (it is not authentication).
    """

    command: int
    host: str
    port: int
    userid: str
    socks4a: bool
    length: int


def _socks4_field(buf: bytes, start: int, end: int, what: str, code: int) -> int:
    """Where the NUL that ends the field at ``start`` is, or -1 while it has not come.

    ProtocolError (``code``) past SOCKS4_FIELD_MAX octets without a NUL, or
    for a C0 control or DEL inside the field: a name that holds one would not
    reach the resolver intact, and the log would carry it.  Both are decided
    on the bytes so far, so any prefix of a request answers NEED_DATA or
    the request's own answer.
    """
    nul = buf.find(b"\x00", start, min(end, start + SOCKS4_FIELD_MAX + 1))
    if nul < 0:
        if end - start > SOCKS4_FIELD_MAX:
            raise ProtocolError(f"SOCKS4 {what} longer than {SOCKS4_FIELD_MAX} octets", code)
        return -1
    bad = _CONTROL.search(buf, start, nul)
    if bad is not None:
        raise ProtocolError(f"SOCKS4 {what} contains control byte {buf[bad.start()]:#04x}", code)
    return nul


def parse_socks4_request(data: bytes) -> Socks4Request | _NeedData:
    """The SOCKS4 or 4a request at the start of ``data``, or NEED_DATA.

    ProtocolError carries the SOCKS5 code of the failure (the session words
    every failure as SOCKS4's 91): X'07' for a CD other than CONNECT and
    BIND, X'04' for a 4a name that cannot be looked up, X'01' otherwise.
    """
    if type(data) is not bytes:
        data = bytes(data)
    end = len(data)
    if end < 1:
        return NEED_DATA
    if data[0] != 0x04:
        raise ProtocolError(f"not SOCKS4: version {data[0]:#04x}", _REP_GENERAL_FAILURE)
    if end < 2:
        return NEED_DATA
    cmd = data[1]
    if cmd != _SOCKS4_CONNECT and cmd != _SOCKS4_BIND:
        raise ProtocolError(f"SOCKS4 command {cmd:#04x} not supported", _REP_COMMAND_NOT_SUPPORTED)
    if end < 9:  # VN CD DSTPORT DSTIP, and at least USERID's NUL
        return NEED_DATA
    nul = _socks4_field(data, 8, end, "USERID", _REP_GENERAL_FAILURE)
    if nul < 0:
        return NEED_DATA
    try:
        userid = data[8:nul].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("SOCKS4 USERID is not valid UTF-8", _REP_GENERAL_FAILURE) from None
    port = (data[2] << 8) | data[3]
    if data[4] == 0 and data[5] == 0 and data[6] == 0 and data[7] != 0:
        # 4a: "0.0.0.x with x nonzero, an inadmissible destination address";
        # the host name follows the USERID's NUL.
        start = nul + 1
        name_end = _socks4_field(data, start, end, "host name", _REP_HOST_UNREACHABLE)
        if name_end < 0:
            return NEED_DATA
        if name_end == start:
            raise ProtocolError("SOCKS4a: empty host name", _REP_GENERAL_FAILURE)
        try:
            host = data[start:name_end].decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("SOCKS4a host name is not valid UTF-8",
                                _REP_HOST_UNREACHABLE) from None
        return Socks4Request(cmd, host, port, userid, True, name_end + 1)
    host = "%d.%d.%d.%d" % (data[4], data[5], data[6], data[7])
    return Socks4Request(cmd, host, port, userid, False, nul + 1)


def encode_socks4_reply(code: int, host: str = "0.0.0.0", port: int = 0) -> bytes:
    """VN CD DSTPORT DSTIP, the 8-octet reply (VN 0, the reply's version).

    ``code`` is CD: 90 granted, 91 rejected or failed, 92 and 93 the identd
    refusals (fastsocks runs no identd check, so never sends them); ValueError
    for another, for a port out of range, or a ``host`` that is not an IPv4
    literal (SOCKS4 has no other address).
    """
    if type(host) is not str:  # as the C codec's typed argument, before the others
        raise TypeError(f"host must be str, not {type(host).__name__}")
    cd = _uint_arg(code, 0xFF, "reply code")
    if not 90 <= cd <= 93:
        raise ValueError(f"reply code out of range: {code}")
    port = _uint_arg(port, 0xFFFF, "port")
    try:
        packed = socket.inet_pton(socket.AF_INET, host)
    except (OSError, ValueError):
        raise ValueError(f"not an IPv4 address: {host!r}") from None
    return bytes((0x00, cd)) + port.to_bytes(2, "big") + packed


# -- PROXY protocol (HAProxy's proxy-protocol.txt, versions 1 and 2) ----------------
#
# What a load balancer sends before the client's first byte, saying who the
# client really is.  The spec forbids guessing: a listener that expects the
# header requires it (the session decides that), and anything malformed is a
# ProtocolError; the connection is then closed without a SOCKS reply, since
# nothing valid was said yet.

PROXY_V1_MAX = 107  # §2.1: the longest v1 line, "PROXY" to CRLF inclusive
PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"  # §2.2: the 12-byte v2 signature
_V1_PREFIX = b"PROXY "
_AF_UNSPEC = 0
_AF_INET = int(socket.AF_INET)
_AF_INET6 = int(socket.AF_INET6)
_AF_UNIX = int(getattr(socket, "AF_UNIX", 1))
_V2_ADDRESS_BLOCK = ((_AF_UNSPEC, 0), (_AF_INET, 12), (_AF_INET6, 36), (_AF_UNIX, 216))
_V2_FAMILY_NAMES = ("AF_UNSPEC", "AF_INET", "AF_INET6", "AF_UNIX")


# §2.2.5 PP2_TYPE_CRC32C: CRC32c as RFC 4960 Appendix B computes it
# (Castagnoli, reflected polynomial 0x82F63B78), one table lookup a byte.
_PP2_TYPE_CRC32C = 0x03


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        table.append(c)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def _crc32c_update(crc: int, data: bytes) -> int:
    """``crc`` (pre- and post-inverted by the caller) over more bytes."""
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


def crc32c(data: bytes) -> int:
    """CRC32c (Castagnoli, RFC 4960 Appendix B) of ``data``, as an int."""
    return _crc32c_update(0xFFFFFFFF, bytes(data)) ^ 0xFFFFFFFF


def _check_crc32c(buf: bytes, total: int, at: int) -> None:
    """§2.2.5: the checksum over the whole header with its own 4 bytes (at
    ``at``) zeroed must be the one sent (network byte order); else the
    connection is invalid."""
    sent = int.from_bytes(buf[at : at + 4], "big")
    crc = _crc32c_update(0xFFFFFFFF, buf[:at])
    crc = _crc32c_update(crc, bytes(4))
    crc = _crc32c_update(crc, buf[at + 4 : total]) ^ 0xFFFFFFFF
    if crc != sent:
        raise ProtocolError(f"PROXY v2 header: CRC32C is {sent:#010x}, the header's is "
                            f"{crc:#010x}", _REP_GENERAL_FAILURE)


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A parsed PROXY protocol header; the client's bytes start at ``length``.

    ``local`` is true for a v2 LOCAL command (a balancer's health check) and a
    v1 ``UNKNOWN`` line: the spec says to use the connection's own endpoints
    then, so ``family`` is AF_UNSPEC (0) and there are no addresses.  A v2
    PROXY header for AF_UNSPEC or AF_UNIX carries no IP address either
    (``src_host`` None).  ``tlvs`` holds the v2 TLVs as (type, value) pairs,
    walked with bounds checks; the one interpreted is PP2_TYPE_CRC32C
    (§2.2.5): when present its checksum must match, or the header is refused.
    A LOCAL header, and one for AF_UNSPEC, is discarded whole as the spec
    says (its TLVs are neither walked nor checked).
    """

    version: int
    local: bool
    family: int
    src_host: str | None
    src_port: int
    dst_host: str | None
    dst_port: int
    tlvs: tuple[tuple[int, bytes], ...]
    length: int


def _v1_address(token: bytes, family: int, proto: str) -> str:
    try:
        text = token.decode("ascii")
        if family == _AF_INET:
            socket.inet_pton(socket.AF_INET, text)
            return text
        return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, text))
    except (UnicodeDecodeError, OSError, ValueError):
        raise ProtocolError(f"PROXY v1 header: bad {proto} address "
                            f"{token.decode('latin-1')!r}", _REP_GENERAL_FAILURE) from None


def _v1_port(token: bytes) -> int:
    # §2.1: a decimal integer in 0..65535; digits only (int() would take "+1", " 1", "1_0").
    if not 1 <= len(token) <= 5 or not token.isdigit() or int(token) > 0xFFFF:
        raise ProtocolError(f"PROXY v1 header: bad port {token.decode('latin-1')!r}",
                            _REP_GENERAL_FAILURE)
    return int(token)


def _parse_proxy_v1(buf: bytes, end: int) -> ProxyHeader | _NeedData:
    # §2.1: "PROXY" SP ("TCP4" | "TCP6" | "UNKNOWN") [SP src SP dst SP sport SP dport] CRLF
    n = min(end, 6)
    if buf[:n] != _V1_PREFIX[:n]:
        raise ProtocolError("PROXY v1 header: it must start with 'PROXY '", _REP_GENERAL_FAILURE)
    limit = min(end, PROXY_V1_MAX)
    cr = buf.find(b"\r", 0, limit)
    lf = buf.find(b"\n", 0, limit)
    if lf >= 0 and (cr < 0 or lf < cr):
        raise ProtocolError("PROXY v1 header: LF without CR", _REP_GENERAL_FAILURE)
    if (cr < 0 and end >= PROXY_V1_MAX) or cr >= PROXY_V1_MAX - 1:  # no room for the LF
        raise ProtocolError(f"PROXY v1 header longer than {PROXY_V1_MAX} bytes",
                            _REP_GENERAL_FAILURE)
    if cr < 0 or cr + 1 >= end:
        return NEED_DATA
    if buf[cr + 1] != 0x0A:
        raise ProtocolError("PROXY v1 header: CR not followed by LF", _REP_GENERAL_FAILURE)
    tokens = buf[6:cr].split(b" ")
    proto = tokens[0]
    if proto == b"UNKNOWN":  # the receiver must ignore the rest of the line
        return ProxyHeader(1, True, _AF_UNSPEC, None, 0, None, 0, (), cr + 2)
    if proto == b"TCP4":
        family, name = _AF_INET, "TCP4"
    elif proto == b"TCP6":
        family, name = _AF_INET6, "TCP6"
    else:
        raise ProtocolError(f"PROXY v1 header: unknown protocol {proto.decode('latin-1')!r}",
                            _REP_GENERAL_FAILURE)
    if len(tokens) != 5:
        raise ProtocolError(f"PROXY v1 header: expected 'PROXY {name} SRC DST SPORT DPORT'",
                            _REP_GENERAL_FAILURE)
    src = _v1_address(tokens[1], family, name)
    dst = _v1_address(tokens[2], family, name)
    return ProxyHeader(1, False, family, src, _v1_port(tokens[3]), dst, _v1_port(tokens[4]),
                       (), cr + 2)


def _parse_proxy_v2(buf: bytes, end: int) -> ProxyHeader | _NeedData:
    n = min(end, 12)
    if buf[:n] != PROXY_V2_SIGNATURE[:n]:
        raise ProtocolError("PROXY v2 header: bad signature", _REP_GENERAL_FAILURE)
    if end < 16:
        return NEED_DATA
    # §2.2: ver_cmd (version 2 in the high nibble; LOCAL 0 or PROXY 1), then
    # fam (address family high, transport protocol low), then the length of
    # what follows the 16 bytes: the address block and the TLVs.
    ver_cmd, fam = buf[12], buf[13]
    if ver_cmd >> 4 != 2:
        raise ProtocolError(f"PROXY v2 header: version {ver_cmd >> 4} is not 2",
                            _REP_GENERAL_FAILURE)
    command = ver_cmd & 0x0F
    if command > 1:
        raise ProtocolError(f"PROXY v2 header: command {command:#x} is neither LOCAL nor PROXY",
                            _REP_GENERAL_FAILURE)
    size = (buf[14] << 8) | buf[15]
    total = 16 + size
    if end < total:
        return NEED_DATA
    if command == 0:  # LOCAL: "must discard the protocol block including the family"
        return ProxyHeader(2, True, _AF_UNSPEC, None, 0, None, 0, (), total)
    if fam >> 4 > 3:
        raise ProtocolError(f"PROXY v2 header: address family {fam >> 4:#x} unknown",
                            _REP_GENERAL_FAILURE)
    if fam & 0x0F > 2:
        raise ProtocolError(f"PROXY v2 header: transport protocol {fam & 0x0F:#x} unknown",
                            _REP_GENERAL_FAILURE)
    family, need = _V2_ADDRESS_BLOCK[fam >> 4]
    if family == _AF_UNSPEC:  # unknown or unsupported: no address, nothing to walk
        return ProxyHeader(2, False, _AF_UNSPEC, None, 0, None, 0, (), total)
    if size < need:
        raise ProtocolError(f"PROXY v2 header: {size}-byte address block too short for "
                            f"{_V2_FAMILY_NAMES[fam >> 4]} (needs {need})", _REP_GENERAL_FAILURE)
    src: str | None = None
    dst: str | None = None
    sport = dport = 0
    if family == _AF_INET:
        src = "%d.%d.%d.%d" % (buf[16], buf[17], buf[18], buf[19])
        dst = "%d.%d.%d.%d" % (buf[20], buf[21], buf[22], buf[23])
        sport = (buf[24] << 8) | buf[25]
        dport = (buf[26] << 8) | buf[27]
    elif family == _AF_INET6:
        src = socket.inet_ntop(socket.AF_INET6, buf[16:32])
        dst = socket.inet_ntop(socket.AF_INET6, buf[32:48])
        sport = (buf[48] << 8) | buf[49]
        dport = (buf[50] << 8) | buf[51]
    # AF_UNIX: two 108-byte paths, no IP address to report.
    # §2.2.7: TLVs fill the rest, each type, a 16-bit length and the value.
    tlvs = []
    pos = 16 + need
    crc_at = -1
    while pos < total:
        if total - pos < 3:
            raise ProtocolError("PROXY v2 header: TLV runs past the header", _REP_GENERAL_FAILURE)
        length = (buf[pos + 1] << 8) | buf[pos + 2]
        if total - pos - 3 < length:
            raise ProtocolError("PROXY v2 header: TLV runs past the header", _REP_GENERAL_FAILURE)
        if buf[pos] == _PP2_TYPE_CRC32C:
            if length != 4:
                raise ProtocolError(f"PROXY v2 header: CRC32C TLV of {length} bytes, not 4",
                                    _REP_GENERAL_FAILURE)
            if crc_at >= 0:
                raise ProtocolError("PROXY v2 header: more than one CRC32C TLV",
                                    _REP_GENERAL_FAILURE)
            crc_at = pos + 3
        tlvs.append((buf[pos], buf[pos + 3 : pos + 3 + length]))
        pos += 3 + length
    if crc_at >= 0:
        _check_crc32c(buf, total, crc_at)
    return ProxyHeader(2, False, family, src, sport, dst, dport, tuple(tlvs), total)


def parse_proxy_header(data: bytes) -> ProxyHeader | _NeedData:
    """The PROXY protocol header (v1 or v2) at the start of ``data``, or NEED_DATA.

    Raises ProtocolError when ``data`` cannot be the start of a valid header;
    that is decided as early as the bytes allow (a SOCKS greeting fails on its
    first byte).  Bytes after ``length`` belong to the client.
    """
    if type(data) is not bytes:
        data = bytes(data)
    end = len(data)
    if end == 0:
        return NEED_DATA
    first = data[0]
    if first == 0x50:  # "P"
        return _parse_proxy_v1(data, end)
    if first == 0x0D:
        return _parse_proxy_v2(data, end)
    raise ProtocolError(f"no PROXY protocol header (first byte {first:#04x})", _REP_GENERAL_FAILURE)


# -- GSSAPI message framing (RFC 1961) -----------------------------------------------
#
# After the server selects method X'01', every message either way is
# VER MTYP LEN TOKEN (RFC 1961 §3.3-§5): context establishment (MTYP 1), the
# protection-level sub-negotiation (MTYP 2), encapsulated data (MTYP 3); an
# abort (MTYP X'FF', §3.8) is VER MTYP alone.  The framer only frames: the
# tokens go to python-gssapi (fastsocks/gssapi.py), and which MTYP is valid
# when is the session's business.

_GSS_VERSION = 0x01  # not exported: the C codec keeps it in an enum
GSS_MTYP_AUTH = 0x01
GSS_MTYP_PROTECTION = 0x02
GSS_MTYP_DATA = 0x03
GSS_MTYP_ABORT = 0xFF
GSS_ABORT = b"\x01\xff"  # §3.8: the whole abort message
GSS_TOKEN_MAX = 0xFFFF  # LEN is two octets

@dataclass(frozen=True, slots=True)
class GssMessage:
    """One RFC 1961 message; ``token`` is empty for an abort (MTYP X'FF')."""

    mtyp: int
    token: bytes

    def __repr__(self) -> str:  # never show a token: it may carry a ticket
        return f"GssMessage(mtyp={self.mtyp:#04x}, token=<{len(self.token)} bytes>)"


class GssFramer(_Buffer):
    """Splits a byte stream into RFC 1961 messages, sans-I/O like ServerCodec.

    A malformed header (VER other than 1, an unknown MTYP) raises
    ProtocolError, and raises it again on every later call: nothing after a
    bad header can be trusted to be a message boundary.
    """

    __slots__ = ()

    # RFC 1961 §3.3, §3.8, §4.3, §5: VER MTYP [LEN TOKEN]
    def next_message(self) -> GssMessage | _NeedData:
        buf, pos, end = self._buf, self._pos, len(self._buf)
        if end - pos < 1:
            return NEED_DATA
        if buf[pos] != _GSS_VERSION:
            raise ProtocolError(f"GSSAPI message version {buf[pos]:#04x}, expected 0x01",
                                _REP_GENERAL_FAILURE)
        if end - pos < 2:
            return NEED_DATA
        mtyp = buf[pos + 1]
        if mtyp == GSS_MTYP_ABORT:
            self._pos = pos + 2
            return GssMessage(mtyp, b"")
        if mtyp < GSS_MTYP_AUTH or mtyp > GSS_MTYP_DATA:
            raise ProtocolError(f"GSSAPI message type {mtyp:#04x} unknown", _REP_GENERAL_FAILURE)
        if end - pos < 4:
            return NEED_DATA
        n = (buf[pos + 2] << 8) | buf[pos + 3]
        if end - pos < 4 + n:
            return NEED_DATA
        self._pos = pos + 4 + n
        return GssMessage(mtyp, buf[pos + 4 : pos + 4 + n])


def gss_frame(mtyp: int, token: bytes) -> bytes:
    """VER MTYP LEN TOKEN for ``token``; MTYP X'FF' gives the two-octet abort.

    ValueError for an MTYP other than 1, 2, 3 or X'FF', a token over 65,535
    octets, or a token with an abort; TypeError unless ``token`` is bytes.
    """
    m = _uint_arg(mtyp, 0xFF, "GSSAPI message type")
    if type(token) is not bytes:
        raise TypeError(f"token must be bytes, not {type(token).__name__}")
    n = len(token)
    if m == GSS_MTYP_ABORT:
        if n:
            raise ValueError("a GSSAPI abort carries no token")
        return GSS_ABORT
    if m < GSS_MTYP_AUTH or m > GSS_MTYP_DATA:
        raise ValueError(f"GSSAPI message type out of range: {mtyp}")
    if n > GSS_TOKEN_MAX:
        raise ValueError(f"GSSAPI token of {n} octets: at most {GSS_TOKEN_MAX}")
    return bytes((_GSS_VERSION, m, n >> 8, n & 0xFF)) + token
