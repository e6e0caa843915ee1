"""Sans-I/O SOCKS5 codec, pure-Python twin of ``_codec.pyx``.

Both implementations behave identically (the test suite runs every case on
both and compares them with hypothesis).  Feed bytes with ``receive_data()``,
pull events with ``next_event()``, and get the bytes to send from the
``send_*()`` methods.  Nothing here does I/O, DNS or policy; the only
exception that escapes is ``ProtocolError``.
"""

from __future__ import annotations

import operator
import socket
from dataclasses import dataclass

from .constants import Phase
from .errors import ProtocolError

__all__ = [
    "IMPLEMENTATION",
    "NEED_DATA",
    "Greeting",
    "UserPass",
    "Request",
    "UdpHeader",
    "ServerCodec",
    "encode_address",
    "parse_udp_header",
    "build_udp_header",
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

_CMD_BIND = 0x02
_ATYP_IPV4 = 0x01
_ATYP_DOMAIN = 0x03
_ATYP_IPV6 = 0x04
_REP_GENERAL_FAILURE = 0x01
_REP_HOST_UNREACHABLE = 0x04
_REP_COMMAND_NOT_SUPPORTED = 0x07
_REP_ATYP_NOT_SUPPORTED = 0x08


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


class ServerCodec:
    """The server side of one SOCKS5 conversation, as a state machine."""

    __slots__ = ("_buf", "_pos", "_phase", "_command", "_replies", "_failed", "_error_code")

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0
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
        else:
            raise ValueError(f"method {method:#04x} has no sub-negotiation in this codec")
        return bytes((0x05, m))

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
