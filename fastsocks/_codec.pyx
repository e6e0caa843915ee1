# cython: language_level=3, embedsignature=True
"""Sans-I/O SOCKS5 codec in Cython; ``_codec_py.py`` is its pure-Python twin.

Every length is checked explicitly against a ``(const unsigned char*, end)``
cursor before a byte is read; the only exception that escapes is
ProtocolError.  The behaviour, events and bytes are identical to the twin's.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.unicode cimport PyUnicode_DecodeASCII, PyUnicode_DecodeUTF8
from libc.string cimport memcpy

import socket as _socket

from .errors import ProtocolError

IMPLEMENTATION = "c"

cdef object _inet_ntop = _socket.inet_ntop
cdef object _inet_pton = _socket.inet_pton
cdef int _AF_INET6 = _socket.AF_INET6

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object, Py_ssize_t*) except NULL


cdef class _NeedData:
    def __repr__(self):
        return "NEED_DATA"


NEED_DATA = _NeedData()
cdef object _NEED_DATA = NEED_DATA


cdef class Greeting:
    """VER NMETHODS METHODS (RFC 1928 §3); ``methods`` holds the method octets."""

    def __init__(self, bytes methods):
        self.methods = methods

    def __repr__(self):
        return f"Greeting(methods={self.methods!r})"

    def __eq__(self, other):
        return type(other) is Greeting and (<Greeting>other).methods == self.methods


cdef class UserPass:
    """RFC 1929 §2 sub-negotiation; both fields are raw octets."""

    def __init__(self, bytes username, bytes password):
        self.username = username
        self.password = password

    def __repr__(self):  # never show a password
        return f"UserPass(username={self.username!r}, password=<{len(self.password)} bytes>)"

    def __eq__(self, other):
        return (type(other) is UserPass and (<UserPass>other).username == self.username
                and (<UserPass>other).password == self.password)


cdef class Request:
    """VER CMD RSV ATYP DST.ADDR DST.PORT (RFC 1928 §4)."""

    def __init__(self, int command, int atyp, str host, int port):
        self.command = command
        self.atyp = atyp
        self.host = host
        self.port = port

    def __repr__(self):
        return f"Request(command={self.command}, atyp={self.atyp}, host={self.host!r}, port={self.port})"

    def __eq__(self, other):
        if type(other) is not Request:
            return False
        cdef Request o = <Request>other
        return (o.command == self.command and o.atyp == self.atyp and o.host == self.host
                and o.port == self.port)


cdef class UdpHeader:
    """RSV FRAG ATYP DST.ADDR DST.PORT (RFC 1928 §7); data starts at ``length``."""

    def __init__(self, int frag, int atyp, str host, int port, Py_ssize_t length):
        self.frag = frag
        self.atyp = atyp
        self.host = host
        self.port = port
        self.length = length

    def __repr__(self):
        return (f"UdpHeader(frag={self.frag}, atyp={self.atyp}, host={self.host!r}, "
                f"port={self.port}, length={self.length})")

    def __eq__(self, other):
        if type(other) is not UdpHeader:
            return False
        cdef UdpHeader o = <UdpHeader>other
        return (o.frag == self.frag and o.atyp == self.atyp and o.host == self.host
                and o.port == self.port and o.length == self.length)


cdef inline str _format_ipv4(const unsigned char* a):
    """Dotted quad text without printf: this is on every IPv4 request and datagram."""
    cdef char out[16]
    cdef int i, n = 0
    cdef unsigned char v
    for i in range(4):
        v = a[i]
        if v >= 100:
            out[n] = <char>(c'0' + v // 100)
            n += 1
        if v >= 10:
            out[n] = <char>(c'0' + (v // 10) % 10)
            n += 1
        out[n] = <char>(c'0' + v % 10)
        n += 1
        out[n] = c'.'
        n += 1
    return PyUnicode_DecodeASCII(out, n - 1, NULL)


cdef inline str _parse_address(const unsigned char* buf, Py_ssize_t* pos,
                               Py_ssize_t end, int atyp, int* port):
    """Parse DST.ADDR and DST.PORT at ``pos[0]`` (RFC 1928 §5).

    Returns the host and advances ``pos[0]`` past the port, or returns None
    (``pos[0]`` unchanged) when more bytes are needed.
    """
    cdef Py_ssize_t p = pos[0], n
    cdef str host
    if atyp == ATYP_IPV4:
        if end - p < 6:
            return None
        host = _format_ipv4(buf + p)
        p += 4
    elif atyp == ATYP_DOMAIN:
        if end - p < 1:
            return None
        n = buf[p]
        if n == 0:
            raise ProtocolError("empty domain name", REP_GENERAL_FAILURE)
        if end - p < 1 + n + 2:
            return None
        try:
            host = PyUnicode_DecodeUTF8(<const char*>buf + p + 1, n, NULL)
        except UnicodeDecodeError:
            raise ProtocolError("domain name is not valid UTF-8", REP_HOST_UNREACHABLE) from None
        p += 1 + n
    elif atyp == ATYP_IPV6:
        if end - p < 18:
            return None
        host = _inet_ntop(_AF_INET6, PyBytes_FromStringAndSize(<const char*>buf + p, 16))
        p += 16
    else:
        raise ProtocolError(f"address type {atyp:#04x} not supported", REP_ATYP_NOT_SUPPORTED)
    port[0] = (buf[p] << 8) | buf[p + 1]
    pos[0] = p + 2
    return host


cdef inline bint _parse_ipv4(const char* s, Py_ssize_t n, unsigned char* out) noexcept:
    """Strict dotted quad, as inet_pton(AF_INET) accepts it (no leading zeros)."""
    cdef Py_ssize_t i = 0
    cdef int part = 0, value, digits
    while part < 4:
        value = 0
        digits = 0
        while i < n and s[i] >= c'0' and s[i] <= c'9':
            if digits == 1 and value == 0:
                return False
            value = value * 10 + (s[i] - c'0')
            digits += 1
            if value > 255:
                return False
            i += 1
        if digits == 0:
            return False
        out[part] = <unsigned char>value
        part += 1
        if part < 4:
            if i >= n or s[i] != c'.':
                return False
            i += 1
    return i == n


cdef inline int _uint_arg(object value, int limit, str what) except -1:
    """``value`` as a C int in 0..limit, else ValueError (TypeError if not an integer).

    Typed ``int`` arguments would raise OverflowError past INT_MAX instead of
    the documented ValueError the twin raises; like the twin's
    ``operator.index()``, this takes any integer and refuses floats.
    """
    cdef int overflow = 0
    cdef long long v = PyLong_AsLongLongAndOverflow(value, &overflow)
    if overflow or v < 0 or v > limit:
        raise ValueError(f"{what} out of range: {value}")
    return <int>v


cdef bytes _encode_address(str host, int port, const unsigned char* prefix,
                           Py_ssize_t prefix_len):
    """``prefix`` + ATYP DST.ADDR DST.PORT, built in one allocation.

    ``port`` is already checked by the caller (``_uint_arg``), before the host
    is encoded, so that both errors come in the twin's order.
    """
    cdef Py_ssize_t n
    cdef const char* s = PyUnicode_AsUTF8AndSize(host, &n)
    cdef unsigned char ip4[4]
    cdef bytes out
    cdef unsigned char* p
    cdef bytes packed
    if _parse_ipv4(s, n, ip4):
        out = PyBytes_FromStringAndSize(NULL, prefix_len + 7)
        p = <unsigned char*>PyBytes_AS_STRING(out)
        memcpy(p, prefix, prefix_len)
        p += prefix_len
        p[0] = ATYP_IPV4
        memcpy(p + 1, ip4, 4)
        p[5] = <unsigned char>(port >> 8)
        p[6] = <unsigned char>(port & 0xFF)
        return out
    if ":" in host:
        try:
            packed = _inet_pton(_AF_INET6, host.partition("%")[0])
        except (OSError, ValueError):
            raise ValueError(f"not an IPv6 address: {host!r}") from None
        out = PyBytes_FromStringAndSize(NULL, prefix_len + 19)
        p = <unsigned char*>PyBytes_AS_STRING(out)
        memcpy(p, prefix, prefix_len)
        p += prefix_len
        p[0] = ATYP_IPV6
        memcpy(p + 1, PyBytes_AS_STRING(packed), 16)
        p[17] = <unsigned char>(port >> 8)
        p[18] = <unsigned char>(port & 0xFF)
        return out
    if n == 0 or n > 255:
        raise ValueError(f"domain name must be 1 to 255 octets: {host!r}")
    out = PyBytes_FromStringAndSize(NULL, prefix_len + 4 + n)
    p = <unsigned char*>PyBytes_AS_STRING(out)
    memcpy(p, prefix, prefix_len)
    p += prefix_len
    p[0] = ATYP_DOMAIN
    p[1] = <unsigned char>n
    memcpy(p + 2, s, n)
    p[2 + n] = <unsigned char>(port >> 8)
    p[3 + n] = <unsigned char>(port & 0xFF)
    return out


def encode_address(str host, port):
    """ATYP DST.ADDR DST.PORT for an IP literal or a domain name (RFC 1928 §5).

    A scope suffix on an IPv6 literal (``fe80::1%eth0``) is dropped: SOCKS
    has no field for it.  Raises ValueError for a port or name out of range
    (a programming error, not peer input).
    """
    return _encode_address(host, _uint_arg(port, 0xFFFF, "port"), NULL, 0)


def parse_udp_header(data):
    """Parse the UDP request header that starts a datagram (RFC 1928 §7)."""
    cdef bytes b = data if type(data) is bytes else bytes(data)
    cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(b)
    cdef Py_ssize_t end = PyBytes_GET_SIZE(b)
    cdef str host
    cdef int port
    cdef Py_ssize_t pos
    cdef UdpHeader h
    if end < 4:
        raise ProtocolError("UDP datagram shorter than its header", REP_GENERAL_FAILURE)
    if buf[0] != 0 or buf[1] != 0:
        raise ProtocolError("UDP header RSV is not zero", REP_GENERAL_FAILURE)
    pos = 4
    host = _parse_address(buf, &pos, end, buf[3], &port)
    if host is None:
        raise ProtocolError("UDP datagram shorter than its header", REP_GENERAL_FAILURE)
    h = UdpHeader.__new__(UdpHeader)
    h.frag = buf[2]
    h.atyp = buf[3]
    h.host = host
    h.port = port
    h.length = pos
    return h


def build_udp_header(str host, port, frag=0):
    """RSV FRAG ATYP DST.ADDR DST.PORT for a datagram going back to the client."""
    cdef unsigned char prefix[3]
    prefix[0] = 0
    prefix[1] = 0
    prefix[2] = <unsigned char>_uint_arg(frag, 0xFF, "frag")
    return _encode_address(host, _uint_arg(port, 0xFFFF, "port"), prefix, 3)


cdef class ServerCodec:
    """The server side of one SOCKS5 conversation, as a state machine."""

    def __cinit__(self):
        self._buf = b""
        self._pos = 0
        self._phase = PHASE_GREETING
        self._command = 0
        self._replies = 0
        self._failed = PHASE_CLOSED
        self._error_code = REP_GENERAL_FAILURE

    @property
    def phase(self):
        return self._phase

    @property
    def command(self):
        """The command of the parsed request (0 before it)."""
        return self._command

    @property
    def trailing_data(self):
        """Bytes received after the last parsed message, not yet consumed."""
        if self._pos == 0:
            return self._buf
        return self._buf[self._pos:]

    def receive_data(self, data):
        cdef bytes b = data if type(data) is bytes else bytes(data)
        if self._pos == PyBytes_GET_SIZE(self._buf):
            self._buf = b
        else:
            self._buf = self._buf[self._pos:] + b
        self._pos = 0

    def next_event(self):
        cdef int phase = self._phase
        try:
            if phase == PHASE_GREETING:
                return self._parse_greeting()
            if phase == PHASE_USERPASS:
                return self._parse_userpass()
            if phase == PHASE_REQUEST:
                return self._parse_request()
        except ProtocolError as exc:
            self._failed = phase
            self._error_code = exc.reply_code
            self._phase = PHASE_CLOSED
            raise
        return _NEED_DATA

    # RFC 1928 §3: VER NMETHODS METHODS
    cdef object _parse_greeting(self):
        cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(self._buf)
        cdef Py_ssize_t pos = self._pos, end = PyBytes_GET_SIZE(self._buf), n
        cdef Greeting ev
        if end - pos < 1:
            return _NEED_DATA
        if buf[pos] != 0x05:
            raise ProtocolError(f"not SOCKS5: version {buf[pos]:#04x}", REP_GENERAL_FAILURE)
        if end - pos < 2:
            return _NEED_DATA
        n = buf[pos + 1]
        if end - pos < 2 + n:
            return _NEED_DATA
        ev = Greeting.__new__(Greeting)
        ev.methods = PyBytes_FromStringAndSize(<const char*>buf + pos + 2, n)
        self._pos = pos + 2 + n
        self._phase = PHASE_METHOD
        return ev

    # RFC 1929 §2: VER ULEN UNAME PLEN PASSWD
    cdef object _parse_userpass(self):
        cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(self._buf)
        cdef Py_ssize_t pos = self._pos, end = PyBytes_GET_SIZE(self._buf), ulen, plen
        cdef UserPass ev
        if end - pos < 1:
            return _NEED_DATA
        if buf[pos] != 0x01:
            raise ProtocolError(f"username/password version {buf[pos]:#04x}, expected 0x01",
                                REP_GENERAL_FAILURE)
        if end - pos < 2:
            return _NEED_DATA
        ulen = buf[pos + 1]
        if end - pos < 3 + ulen:
            return _NEED_DATA
        plen = buf[pos + 2 + ulen]
        if end - pos < 3 + ulen + plen:
            return _NEED_DATA
        ev = UserPass.__new__(UserPass)
        ev.username = PyBytes_FromStringAndSize(<const char*>buf + pos + 2, ulen)
        ev.password = PyBytes_FromStringAndSize(<const char*>buf + pos + 3 + ulen, plen)
        self._pos = pos + 3 + ulen + plen
        self._phase = PHASE_USERPASS_STATUS
        return ev

    # RFC 1928 §4: VER CMD RSV ATYP DST.ADDR DST.PORT
    cdef object _parse_request(self):
        cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(self._buf)
        cdef Py_ssize_t pos = self._pos, end = PyBytes_GET_SIZE(self._buf)
        cdef int cmd, port
        cdef str host
        cdef Request ev
        if end - pos < 1:
            return _NEED_DATA
        if buf[pos] != 0x05:
            raise ProtocolError(f"request version {buf[pos]:#04x}, expected 0x05",
                                REP_GENERAL_FAILURE)
        if end - pos < 2:
            return _NEED_DATA
        cmd = buf[pos + 1]
        if cmd < CMD_CONNECT or cmd > CMD_UDP_ASSOCIATE:
            raise ProtocolError(f"command {cmd:#04x} not supported", REP_COMMAND_NOT_SUPPORTED)
        # RSV is ignored on input: it carries no information.
        if end - pos < 4:
            return _NEED_DATA
        pos += 4
        host = _parse_address(buf, &pos, end, buf[pos - 1], &port)
        if host is None:
            return _NEED_DATA
        ev = Request.__new__(Request)
        ev.command = cmd
        ev.atyp = buf[self._pos + 3]
        ev.host = host
        ev.port = port
        self._pos = pos
        self._phase = PHASE_REPLY
        self._command = cmd
        return ev

    def send_method(self, method):
        """METHOD selection (RFC 1928 §3); X'FF' ends the conversation."""
        cdef int overflow = 0
        cdef long long m
        if self._phase != PHASE_METHOD:
            raise RuntimeError("send_method() is only valid after a Greeting event")
        # Any integer, as the twin's operator.index(): no OverflowError for a huge one.
        m = PyLong_AsLongLongAndOverflow(method, &overflow)
        if overflow:
            m = -1
        if m == 0xFF:
            self._phase = PHASE_CLOSED
        elif m == 0x02:
            self._phase = PHASE_USERPASS
        elif m == 0x00:
            self._phase = PHASE_REQUEST
        else:
            raise ValueError(f"method {method:#04x} has no sub-negotiation in this codec")
        return bytes((0x05, m))

    def send_auth_status(self, bint ok):
        """RFC 1929 status: X'00' success; anything else is failure and the end."""
        if self._phase != PHASE_USERPASS_STATUS:
            raise RuntimeError("send_auth_status() is only valid after a UserPass event")
        if ok:
            self._phase = PHASE_REQUEST
            return b"\x01\x00"
        self._phase = PHASE_CLOSED
        return b"\x01\x01"

    def send_reply(self, rep, str host="0.0.0.0", port=0):
        """VER REP RSV ATYP BND.ADDR BND.PORT (RFC 1928 §6).

        A failure reply closes the conversation.  A success reply to BIND
        leaves the codec waiting for the second reply (§4, BIND).
        """
        cdef unsigned char prefix[3]
        cdef bytes data
        cdef int code
        if self._phase != PHASE_REPLY:
            raise RuntimeError("send_reply() is only valid after a Request event")
        code = _uint_arg(rep, 0xFF, "reply code")
        prefix[0] = 0x05
        prefix[1] = <unsigned char>code
        prefix[2] = 0x00
        data = _encode_address(host, _uint_arg(port, 0xFFFF, "port"), prefix, 3)
        if code != 0:
            self._phase = PHASE_CLOSED
        elif self._command != CMD_BIND or self._replies == 1:
            self._phase = PHASE_ESTABLISHED
        self._replies += 1
        return data

    def send_error(self):
        """What to send before closing, after ``next_event()`` raised ProtocolError.

        A request error gets a reply carrying the error's code (RFC 1928 §6),
        a sub-negotiation error a failure status (RFC 1929 §2), a SOCKS4
        client a SOCKS4 rejection so it says something useful; otherwise
        there is nothing to say and the connection is just closed.
        """
        cdef int failed = self._failed
        if failed == PHASE_REQUEST:
            return bytes((0x05, self._error_code, 0x00, 0x01, 0, 0, 0, 0, 0, 0))
        if failed == PHASE_USERPASS:
            return b"\x01\x01"
        if (failed == PHASE_GREETING and self._pos < PyBytes_GET_SIZE(self._buf)
                and (<const unsigned char*>PyBytes_AS_STRING(self._buf))[self._pos] == 0x04):
            return b"\x00\x5b\x00\x00\x00\x00\x00\x00"
        return b""
