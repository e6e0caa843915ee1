# cython: language_level=3, embedsignature=True
"""Sans-I/O SOCKS5 codec in Cython; ``_codec_py.py`` is its pure-Python twin.

Every length is checked explicitly against a ``(const unsigned char*, end)``
cursor before a byte is read; the only exception that escapes is
ProtocolError.  The behaviour, events and bytes are identical to the twin's.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.unicode cimport PyUnicode_DecodeASCII, PyUnicode_DecodeUTF8
from libc.stdint cimport uint32_t
from libc.string cimport memcmp, memcpy

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
    cdef Py_ssize_t p = pos[0], n, i
    cdef unsigned char c
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
        # §5: a length octet and the name, "there is no terminating NUL
        # octet"; a NUL or another C0 control (or DEL) names no host, and
        # would not reach the resolver intact: c-ares and getaddrinfo take C
        # strings (c-ares looked up "internal" for "internal\0.example.com",
        # past rules that matched the whole name), and the log would carry it.
        for i in range(p + 1, p + 1 + n):
            c = buf[i]
            if c < 0x20 or c == 0x7F:
                raise ProtocolError(f"domain name contains control byte {c:#04x}",
                                    REP_HOST_UNREACHABLE)
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


def encode_reply(rep, str host="0.0.0.0", port=0):
    """VER REP RSV ATYP BND.ADDR BND.PORT (RFC 1928 §6), outside a conversation.

    For a reply encoded before it is known to be sent: the success reply of
    a connect still in progress, which the relay engine sends only once the
    connect is done.  ``ServerCodec.send_reply`` is the same bytes, and also
    moves the conversation on.
    """
    cdef unsigned char prefix[3]
    prefix[0] = 0x05
    prefix[1] = <unsigned char>_uint_arg(rep, 0xFF, "reply code")
    prefix[2] = 0x00
    return _encode_address(host, _uint_arg(port, 0xFFFF, "port"), prefix, 3)


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


# -- the client side (RFC 1928 §3-§6, RFC 1929 §2) ------------------------------------
#
# What a SOCKS5 client sends and parses: used by upstream chaining and by
# ``fastsocks bench`` (fastsocks/net/client.py drives them).  The parsers are
# functions over the bytes received so far, like parse_proxy_header(): each
# says NEED_DATA until its message is complete and ProtocolError (X'01') for
# bytes no SOCKS5 server may send; what follows the message is not theirs.

cdef enum:
    _REPLY_MIN = 8  # VER REP RSV ATYP, a one-octet name with its length, BND.PORT


cdef class Reply:
    """VER REP RSV ATYP BND.ADDR BND.PORT (RFC 1928 §6); what follows starts at ``length``."""

    def __init__(self, int rep, int atyp, str host, int port, Py_ssize_t length):
        self.rep = rep
        self.atyp = atyp
        self.host = host
        self.port = port
        self.length = length

    def __repr__(self):
        return (f"Reply(rep={self.rep}, atyp={self.atyp}, host={self.host!r}, "
                f"port={self.port}, length={self.length})")

    def __eq__(self, other):
        if type(other) is not Reply:
            return False
        cdef Reply o = <Reply>other
        return (o.rep == self.rep and o.atyp == self.atyp and o.host == self.host
                and o.port == self.port and o.length == self.length)


cdef inline Py_ssize_t _octets_arg(object value, Py_ssize_t low, str what) except -1:
    """The length of ``value``, which must be bytes of ``low`` to 255 octets (one length octet)."""
    cdef Py_ssize_t n
    if type(value) is not bytes:
        raise TypeError(f"{what} must be bytes, not {type(value).__name__}")
    n = PyBytes_GET_SIZE(value)
    if n < low or n > 255:
        raise ValueError(f"{what} must be {low} to 255 octets, got {n}")
    return n


def encode_greeting(methods):
    """VER NMETHODS METHODS (RFC 1928 §3) offering the method octets ``methods`` (1 to 255)."""
    cdef Py_ssize_t n = _octets_arg(methods, 1, "methods")
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 2 + n)
    cdef unsigned char* p = <unsigned char*>PyBytes_AS_STRING(out)
    p[0] = 0x05
    p[1] = <unsigned char>n
    memcpy(p + 2, PyBytes_AS_STRING(methods), n)
    return out


def encode_userpass(username, password):
    """VER ULEN UNAME PLEN PASSWD (RFC 1929 §2); each field 1 to 255 raw octets.

    The errors give lengths only: a password never appears in a message.
    """
    cdef Py_ssize_t ulen = _octets_arg(username, 1, "username")
    cdef Py_ssize_t plen = _octets_arg(password, 1, "password")
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 3 + ulen + plen)
    cdef unsigned char* p = <unsigned char*>PyBytes_AS_STRING(out)
    p[0] = 0x01
    p[1] = <unsigned char>ulen
    memcpy(p + 2, PyBytes_AS_STRING(username), ulen)
    p[2 + ulen] = <unsigned char>plen
    memcpy(p + 3 + ulen, PyBytes_AS_STRING(password), plen)
    return out


def encode_request(command, str host not None, port):
    """VER CMD RSV ATYP DST.ADDR DST.PORT (RFC 1928 §4) for CONNECT, BIND or UDP ASSOCIATE.

    ValueError for a command other than 1, 2 or 3, and as encode_address().
    """
    cdef unsigned char prefix[3]
    cdef int cmd = _uint_arg(command, 0xFF, "command")
    if cmd < CMD_CONNECT or cmd > CMD_UDP_ASSOCIATE:
        raise ValueError(f"command out of range: {command}")
    prefix[0] = 0x05
    prefix[1] = <unsigned char>cmd
    prefix[2] = 0x00
    return _encode_address(host, _uint_arg(port, 0xFFFF, "port"), prefix, 3)


def parse_method_choice(data):
    """The METHOD the server selected (RFC 1928 §3: VER METHOD, two octets), or NEED_DATA.

    X'FF' (no acceptable method) is returned like any other: what to do with
    a choice is the client's business.
    """
    cdef bytes b = data if type(data) is bytes else bytes(data)
    cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(b)
    cdef Py_ssize_t end = PyBytes_GET_SIZE(b)
    if end < 1:
        return _NEED_DATA
    if buf[0] != 0x05:
        raise ProtocolError(f"the peer is not a SOCKS5 server (version {buf[0]:#04x} in its "
                            "method choice)", REP_GENERAL_FAILURE)
    if end < 2:
        return _NEED_DATA
    return <int>buf[1]


def parse_auth_status(data):
    """The STATUS of an RFC 1929 §2 answer (VER STATUS, two octets; 0 is success), or NEED_DATA."""
    cdef bytes b = data if type(data) is bytes else bytes(data)
    cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(b)
    cdef Py_ssize_t end = PyBytes_GET_SIZE(b)
    if end < 1:
        return _NEED_DATA
    if buf[0] != 0x01:
        raise ProtocolError(f"username/password status version {buf[0]:#04x}, expected 0x01",
                            REP_GENERAL_FAILURE)
    if end < 2:
        return _NEED_DATA
    return <int>buf[1]


# RFC 1928 §6: VER REP RSV ATYP, checked as far as they have come.
cdef inline int _reply_head(const unsigned char* buf, Py_ssize_t end) except -1:
    """1 once the four fixed octets are in and valid, 0 while some are missing."""
    if end < 1:
        return 0
    if buf[0] != 0x05:
        raise ProtocolError(f"bad version in reply: {buf[0]:#04x}, expected 0x05",
                            REP_GENERAL_FAILURE)
    if end < 3:
        return 0
    # A server must send RSV as X'00'; a client that takes anything else
    # would take a reply that is off by one octet too.
    if buf[2] != 0x00:
        raise ProtocolError(f"reserved byte in reply is {buf[2]:#04x}, not 0",
                            REP_GENERAL_FAILURE)
    if end < 4:
        return 0
    if buf[3] != ATYP_IPV4 and buf[3] != ATYP_DOMAIN and buf[3] != ATYP_IPV6:
        raise ProtocolError(f"unknown address type {buf[3]:#04x} in reply", REP_GENERAL_FAILURE)
    return 1


def parse_reply(data):
    """The server's reply to a request (RFC 1928 §6), or NEED_DATA.

    Failure replies are returned too (``rep`` non-zero): only bytes that
    cannot be a reply raise ProtocolError.  Bytes after ``length`` belong to
    the connection (the relayed data, or BIND's second reply).
    """
    cdef bytes b = data if type(data) is bytes else bytes(data)
    cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(b)
    cdef Py_ssize_t end = PyBytes_GET_SIZE(b), pos = 4
    cdef int port
    cdef str host
    cdef Reply r
    if not _reply_head(buf, end):
        return _NEED_DATA
    host = _parse_address(buf, &pos, end, buf[3], &port)
    if host is None:
        return _NEED_DATA
    r = Reply.__new__(Reply)
    r.rep = buf[1]
    r.atyp = buf[3]
    r.host = host
    r.port = port
    r.length = pos
    return r


def reply_size(data):
    """How many octets the reply that starts with ``data`` has, as far as they tell.

    Exact once ATYP (and, for a name, its length octet) has come; before
    that the least any reply has (8).  Never more than the reply: a client
    that reads no more than this never reads into the data relayed after it.
    Raises ProtocolError as parse_reply() does.
    """
    cdef bytes b = data if type(data) is bytes else bytes(data)
    cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(b)
    cdef Py_ssize_t end = PyBytes_GET_SIZE(b)
    if not _reply_head(buf, end):
        return _REPLY_MIN
    if buf[3] == ATYP_IPV4:
        return 4 + 4 + 2
    if buf[3] == ATYP_IPV6:
        return 4 + 16 + 2
    if end < 5:
        return _REPLY_MIN
    if buf[4] == 0:
        raise ProtocolError("empty domain name", REP_GENERAL_FAILURE)
    return 4 + 1 + <Py_ssize_t>buf[4] + 2


cdef class _Buffer:
    """The bytes received and how far they are parsed: what every parser here shares."""

    def __cinit__(self):
        self._buf = b""
        self._pos = 0

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


cdef class ServerCodec(_Buffer):
    """The server side of one SOCKS5 conversation, as a state machine."""

    def __cinit__(self):
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
        elif m == 0x01:
            # RFC 1961: the sub-negotiation is VER MTYP LEN TOKEN messages,
            # which GssFramer parses; this codec waits in GSSAPI until
            # gssapi_established(), then takes the unwrapped request.
            self._phase = PHASE_GSSAPI
        else:
            raise ValueError(f"method {method:#04x} has no sub-negotiation in this codec")
        return bytes((0x05, m))

    def take_trailing_data(self):
        """Remove and return the unparsed bytes (after X'01': the first RFC 1961 messages)."""
        cdef bytes data = self._buf[self._pos:]
        self._buf = b""
        self._pos = 0
        return data

    def gssapi_established(self):
        """The RFC 1961 context and protection level are agreed: expect the request.

        From here ``receive_data()`` takes the request as unwrapped from its
        MTYP 3 messages (RFC 1961 §5); the replies are wrapped by the caller.
        """
        if self._phase != PHASE_GSSAPI:
            raise RuntimeError("gssapi_established() is only valid after send_method(0x01)")
        self._phase = PHASE_REQUEST

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

cdef enum:
    _S4_FIELD_MAX = 255
    _S4_CONNECT = 0x01
    _S4_BIND = 0x02


cdef class Socks4Request:
    """VN CD DSTPORT DSTIP USERID NUL [HOST NUL]; what follows starts at ``length``.

    ``command`` is CD (1 CONNECT, 2 BIND: SOCKS5's numbers); ``host`` the
    DSTIP as a dotted quad, or the 4a host name (``socks4a`` true);
    ``userid`` the USERID, which identifies nobody (it is not authentication).
    """

    def __init__(self, int command, str host, int port, str userid, bint socks4a,
                 Py_ssize_t length):
        self.command = command
        self.host = host
        self.port = port
        self.userid = userid
        self.socks4a = socks4a
        self.length = length

    def __repr__(self):
        return (f"Socks4Request(command={self.command}, host={self.host!r}, port={self.port}, "
                f"userid={self.userid!r}, socks4a={self.socks4a}, length={self.length})")

    def __eq__(self, other):
        if type(other) is not Socks4Request:
            return False
        cdef Socks4Request o = <Socks4Request>other
        return (o.command == self.command and o.host == self.host and o.port == self.port
                and o.userid == self.userid and o.socks4a == self.socks4a
                and o.length == self.length)


cdef Py_ssize_t _socks4_field(const unsigned char* buf, Py_ssize_t start, Py_ssize_t end,
                              str what, int code) except -2:
    """Where the NUL that ends the field at ``start`` is, or -1 while it has not come.

    ProtocolError (``code``) past SOCKS4_FIELD_MAX octets without a NUL, or
    for a C0 control or DEL inside the field: a name that holds one would not
    reach the resolver intact, and the log would carry it.  Both are decided
    on the bytes so far, so any prefix of a request answers NEED_DATA or
    the request's own answer.
    """
    cdef Py_ssize_t limit = end if end - start <= _S4_FIELD_MAX else start + _S4_FIELD_MAX + 1
    cdef Py_ssize_t i, nul = -1
    cdef unsigned char c
    for i in range(start, limit):
        if buf[i] == 0:
            nul = i
            break
    if nul < 0:
        if end - start > _S4_FIELD_MAX:
            raise ProtocolError(f"SOCKS4 {what} longer than {_S4_FIELD_MAX} octets", code)
        return -1
    for i in range(start, nul):
        c = buf[i]
        if c < 0x20 or c == 0x7F:
            raise ProtocolError(f"SOCKS4 {what} contains control byte {c:#04x}", code)
    return nul


def parse_socks4_request(data):
    """The SOCKS4 or 4a request at the start of ``data``, or NEED_DATA.

    ProtocolError carries the SOCKS5 code of the failure (the session words
    every failure as SOCKS4's 91): X'07' for a CD other than CONNECT and
    BIND, X'04' for a 4a name that cannot be looked up, X'01' otherwise.
    """
    cdef bytes b = data if type(data) is bytes else bytes(data)
    cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(b)
    cdef Py_ssize_t end = PyBytes_GET_SIZE(b), nul, start, name_end
    cdef int cmd, port
    cdef str userid, host
    cdef Socks4Request r
    if end < 1:
        return _NEED_DATA
    if buf[0] != 0x04:
        raise ProtocolError(f"not SOCKS4: version {buf[0]:#04x}", REP_GENERAL_FAILURE)
    if end < 2:
        return _NEED_DATA
    cmd = buf[1]
    if cmd != _S4_CONNECT and cmd != _S4_BIND:
        raise ProtocolError(f"SOCKS4 command {cmd:#04x} not supported", REP_COMMAND_NOT_SUPPORTED)
    if end < 9:  # VN CD DSTPORT DSTIP, and at least USERID's NUL
        return _NEED_DATA
    nul = _socks4_field(buf, 8, end, "USERID", REP_GENERAL_FAILURE)
    if nul < 0:
        return _NEED_DATA
    try:
        userid = PyUnicode_DecodeUTF8(<const char*>buf + 8, nul - 8, NULL)
    except UnicodeDecodeError:
        raise ProtocolError("SOCKS4 USERID is not valid UTF-8", REP_GENERAL_FAILURE) from None
    port = (buf[2] << 8) | buf[3]
    r = Socks4Request.__new__(Socks4Request)
    r.command = cmd
    r.port = port
    r.userid = userid
    if buf[4] == 0 and buf[5] == 0 and buf[6] == 0 and buf[7] != 0:
        # 4a: "0.0.0.x with x nonzero, an inadmissible destination address";
        # the host name follows the USERID's NUL.
        start = nul + 1
        name_end = _socks4_field(buf, start, end, "host name", REP_HOST_UNREACHABLE)
        if name_end < 0:
            return _NEED_DATA
        if name_end == start:
            raise ProtocolError("SOCKS4a: empty host name", REP_GENERAL_FAILURE)
        try:
            host = PyUnicode_DecodeUTF8(<const char*>buf + start, name_end - start, NULL)
        except UnicodeDecodeError:
            raise ProtocolError("SOCKS4a host name is not valid UTF-8",
                                REP_HOST_UNREACHABLE) from None
        r.host = host
        r.socks4a = True
        r.length = name_end + 1
        return r
    r.host = _format_ipv4(buf + 4)
    r.socks4a = False
    r.length = nul + 1
    return r


def encode_socks4_reply(code, str host not None="0.0.0.0", port=0):
    """VN CD DSTPORT DSTIP, the 8-octet reply (VN 0, the reply's version).

    ``code`` is CD: 90 granted, 91 rejected or failed, 92 and 93 the identd
    refusals (fastsocks runs no identd check, so never sends them); ValueError
    for another, for a port out of range, or a ``host`` that is not an IPv4
    literal (SOCKS4 has no other address).
    """
    cdef int cd = _uint_arg(code, 0xFF, "reply code")
    if cd < 90 or cd > 93:
        raise ValueError(f"reply code out of range: {code}")
    cdef int p = _uint_arg(port, 0xFFFF, "port")
    cdef Py_ssize_t n
    cdef const char* s = PyUnicode_AsUTF8AndSize(host, &n)
    cdef unsigned char ip4[4]
    if not _parse_ipv4(s, n, ip4):
        raise ValueError(f"not an IPv4 address: {host!r}")
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 8)
    cdef unsigned char* o = <unsigned char*>PyBytes_AS_STRING(out)
    o[0] = 0x00
    o[1] = <unsigned char>cd
    o[2] = <unsigned char>(p >> 8)
    o[3] = <unsigned char>(p & 0xFF)
    memcpy(o + 4, ip4, 4)
    return out


# -- PROXY protocol (HAProxy's proxy-protocol.txt, versions 1 and 2) ----------------
#
# What a load balancer sends before the client's first byte, saying who the
# client really is.  The spec forbids guessing: a listener that expects the
# header requires it (the session decides that), and anything malformed is a
# ProtocolError; the connection is then closed without a SOCKS reply, since
# nothing valid was said yet.  Not on the hot path (once per connection from
# a balancer), but every length is checked on the cursor all the same.

cdef enum:
    _V1_MAX = 107  # §2.1: the longest v1 line, "PROXY" to CRLF inclusive
PROXY_V1_MAX = _V1_MAX
PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"  # §2.2: the 12-byte v2 signature
cdef const char* _V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
cdef const char* _V1_PREFIX = b"PROXY "
cdef int _PP_AF_UNSPEC = 0
cdef int _PP_AF_INET = _socket.AF_INET
cdef int _PP_AF_INET6 = _socket.AF_INET6
cdef int _PP_AF_UNIX = getattr(_socket, "AF_UNIX", 1)
cdef object _PP_FAMILY_NAMES = ("AF_UNSPEC", "AF_INET", "AF_INET6", "AF_UNIX")


# §2.2.5 PP2_TYPE_CRC32C: CRC32c as RFC 4960 Appendix B computes it
# (Castagnoli, reflected polynomial 0x82F63B78), one table lookup a byte: a
# header is at most 64 KiB and comes once per connection.
cdef enum:
    _PP2_TYPE_CRC32C = 0x03
cdef uint32_t _CRC32C_TABLE[256]


cdef void _crc32c_init() noexcept:
    cdef uint32_t c
    cdef int i, k
    for i in range(256):
        c = <uint32_t>i
        for k in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        _CRC32C_TABLE[i] = c


_crc32c_init()


cdef inline uint32_t _crc32c_update(uint32_t crc, const unsigned char* p, Py_ssize_t n) noexcept:
    """``crc`` (pre- and post-inverted by the caller) over ``n`` more bytes."""
    cdef Py_ssize_t i
    for i in range(n):
        crc = _CRC32C_TABLE[(crc ^ p[i]) & 0xFF] ^ (crc >> 8)
    return crc


def crc32c(data):
    """CRC32c (Castagnoli, RFC 4960 Appendix B) of ``data``, as an int."""
    cdef bytes b = data if type(data) is bytes else bytes(data)
    return _crc32c_update(0xFFFFFFFF, <const unsigned char*>PyBytes_AS_STRING(b),
                          PyBytes_GET_SIZE(b)) ^ 0xFFFFFFFF


cdef int _check_crc32c(const unsigned char* buf, Py_ssize_t total,
                       Py_ssize_t at) except -1:
    """§2.2.5: the checksum over the whole header with its own 4 bytes (at
    ``at``) zeroed must be the one sent (network byte order); else the
    connection is invalid."""
    cdef unsigned char zeros[4]
    cdef uint32_t sent, crc
    zeros[0] = zeros[1] = zeros[2] = zeros[3] = 0
    sent = ((<uint32_t>buf[at] << 24) | (<uint32_t>buf[at + 1] << 16)
            | (<uint32_t>buf[at + 2] << 8) | buf[at + 3])
    crc = _crc32c_update(0xFFFFFFFF, buf, at)
    crc = _crc32c_update(crc, zeros, 4)
    crc = _crc32c_update(crc, buf + at + 4, total - at - 4) ^ 0xFFFFFFFF
    if crc != sent:
        raise ProtocolError(f"PROXY v2 header: CRC32C is {sent:#010x}, the header's is "
                            f"{crc:#010x}", REP_GENERAL_FAILURE)
    return 0


cdef class ProxyHeader:
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

    def __init__(self, int version, bint local, int family, src_host, int src_port, dst_host,
                 int dst_port, tuple tlvs, Py_ssize_t length):
        self.version = version
        self.local = local
        self.family = family
        self.src_host = src_host
        self.src_port = src_port
        self.dst_host = dst_host
        self.dst_port = dst_port
        self.tlvs = tlvs
        self.length = length

    def __repr__(self):
        return (f"ProxyHeader(version={self.version}, local={self.local}, family={self.family}, "
                f"src_host={self.src_host!r}, src_port={self.src_port}, "
                f"dst_host={self.dst_host!r}, dst_port={self.dst_port}, tlvs={self.tlvs!r}, "
                f"length={self.length})")

    def __eq__(self, other):
        if type(other) is not ProxyHeader:
            return False
        cdef ProxyHeader o = <ProxyHeader>other
        return (o.version == self.version and o.local == self.local and o.family == self.family
                and o.src_host == self.src_host and o.src_port == self.src_port
                and o.dst_host == self.dst_host and o.dst_port == self.dst_port
                and o.tlvs == self.tlvs and o.length == self.length)


cdef ProxyHeader _proxy_header(int version, bint local, int family, object src, int sport,
                               object dst, int dport, tuple tlvs, Py_ssize_t length):
    cdef ProxyHeader h = ProxyHeader.__new__(ProxyHeader)
    h.version = version
    h.local = local
    h.family = family
    h.src_host = src
    h.src_port = sport
    h.dst_host = dst
    h.dst_port = dport
    h.tlvs = tlvs
    h.length = length
    return h


cdef inline Py_ssize_t _find(const unsigned char* buf, Py_ssize_t limit, unsigned char c) noexcept:
    cdef Py_ssize_t i
    for i in range(limit):
        if buf[i] == c:
            return i
    return -1


cdef str _v1_address(const unsigned char* s, Py_ssize_t n, int family, str proto):
    cdef unsigned char ip4[4]
    cdef str text
    if family == _PP_AF_INET:
        if _parse_ipv4(<const char*>s, n, ip4):
            return PyUnicode_DecodeASCII(<const char*>s, n, NULL)
    else:
        try:
            text = PyUnicode_DecodeASCII(<const char*>s, n, NULL)
            return _inet_ntop(_AF_INET6, _inet_pton(_AF_INET6, text))
        except (UnicodeDecodeError, OSError, ValueError):
            pass
    raise ProtocolError(f"PROXY v1 header: bad {proto} address "
                        f"{PyBytes_FromStringAndSize(<const char*>s, n).decode('latin-1')!r}",
                        REP_GENERAL_FAILURE)


cdef int _v1_port(const unsigned char* s, Py_ssize_t n) except -1:
    # §2.1: a decimal integer in 0..65535, digits only.
    cdef Py_ssize_t i
    cdef int value = 0
    cdef bint ok = 1 <= n <= 5
    if ok:
        for i in range(n):
            if s[i] < c'0' or s[i] > c'9':
                ok = False
                break
            value = value * 10 + (s[i] - c'0')
    if not ok or value > 0xFFFF:
        raise ProtocolError(f"PROXY v1 header: bad port "
                            f"{PyBytes_FromStringAndSize(<const char*>s, n).decode('latin-1')!r}",
                            REP_GENERAL_FAILURE)
    return value


cdef object _parse_proxy_v1(const unsigned char* buf, Py_ssize_t end):
    # §2.1: "PROXY" SP ("TCP4" | "TCP6" | "UNKNOWN") [SP src SP dst SP sport SP dport] CRLF
    cdef Py_ssize_t i, n = end if end < 6 else 6
    cdef Py_ssize_t limit = end if end < _V1_MAX else _V1_MAX
    cdef Py_ssize_t cr, lf, start, count
    cdef Py_ssize_t tok_start[5]
    cdef Py_ssize_t tok_len[5]
    cdef int family, sport, dport
    cdef str name, src, dst
    for i in range(n):
        if buf[i] != <unsigned char>_V1_PREFIX[i]:
            raise ProtocolError("PROXY v1 header: it must start with 'PROXY '",
                                REP_GENERAL_FAILURE)
    cr = _find(buf, limit, c'\r')
    lf = _find(buf, limit, c'\n')
    if lf >= 0 and (cr < 0 or lf < cr):
        raise ProtocolError("PROXY v1 header: LF without CR", REP_GENERAL_FAILURE)
    if (cr < 0 and end >= _V1_MAX) or cr >= _V1_MAX - 1:  # no room for the LF
        raise ProtocolError(f"PROXY v1 header longer than {PROXY_V1_MAX} bytes",
                            REP_GENERAL_FAILURE)
    if cr < 0 or cr + 1 >= end:
        return _NEED_DATA
    if buf[cr + 1] != c'\n':
        raise ProtocolError("PROXY v1 header: CR not followed by LF", REP_GENERAL_FAILURE)
    # Split buf[6:cr] on single spaces; only the first five fields are kept,
    # and ``count`` says how many there were (up to six: "too many").
    count = 0
    start = 6
    for i in range(6, cr + 1):
        if i == cr or buf[i] == c' ':
            if count < 5:
                tok_start[count] = start
                tok_len[count] = i - start
            count += 1
            start = i + 1
            if count > 5:
                break
    if tok_len[0] == 7 and memcmp(buf + 6, b"UNKNOWN", 7) == 0:
        return _proxy_header(1, True, _PP_AF_UNSPEC, None, 0, None, 0, (), cr + 2)
    if tok_len[0] == 4 and memcmp(buf + 6, b"TCP4", 4) == 0:
        family, name = _PP_AF_INET, "TCP4"
    elif tok_len[0] == 4 and memcmp(buf + 6, b"TCP6", 4) == 0:
        family, name = _PP_AF_INET6, "TCP6"
    else:
        raise ProtocolError(
            f"PROXY v1 header: unknown protocol "
            f"{PyBytes_FromStringAndSize(<const char*>buf + 6, tok_len[0]).decode('latin-1')!r}",
            REP_GENERAL_FAILURE)
    if count != 5:
        raise ProtocolError(f"PROXY v1 header: expected 'PROXY {name} SRC DST SPORT DPORT'",
                            REP_GENERAL_FAILURE)
    src = _v1_address(buf + tok_start[1], tok_len[1], family, name)
    dst = _v1_address(buf + tok_start[2], tok_len[2], family, name)
    sport = _v1_port(buf + tok_start[3], tok_len[3])
    dport = _v1_port(buf + tok_start[4], tok_len[4])
    return _proxy_header(1, False, family, src, sport, dst, dport, (), cr + 2)


cdef object _parse_proxy_v2(const unsigned char* buf, Py_ssize_t end):
    cdef Py_ssize_t i, n = end if end < 12 else 12
    cdef Py_ssize_t size, total, need, pos, length, crc_at = -1
    cdef int ver_cmd, fam, command, family
    cdef object src = None, dst = None
    cdef int sport = 0, dport = 0
    cdef list tlvs
    for i in range(n):
        if buf[i] != <unsigned char>_V2_SIG[i]:
            raise ProtocolError("PROXY v2 header: bad signature", REP_GENERAL_FAILURE)
    if end < 16:
        return _NEED_DATA
    # §2.2: ver_cmd (version 2 in the high nibble; LOCAL 0 or PROXY 1), then
    # fam (address family high, transport protocol low), then the length of
    # what follows the 16 bytes: the address block and the TLVs.
    ver_cmd = buf[12]
    fam = buf[13]
    if ver_cmd >> 4 != 2:
        raise ProtocolError(f"PROXY v2 header: version {ver_cmd >> 4} is not 2",
                            REP_GENERAL_FAILURE)
    command = ver_cmd & 0x0F
    if command > 1:
        raise ProtocolError(f"PROXY v2 header: command {command:#x} is neither LOCAL nor PROXY",
                            REP_GENERAL_FAILURE)
    size = (buf[14] << 8) | buf[15]
    total = 16 + size
    if end < total:
        return _NEED_DATA
    if command == 0:  # LOCAL: "must discard the protocol block including the family"
        return _proxy_header(2, True, _PP_AF_UNSPEC, None, 0, None, 0, (), total)
    if fam >> 4 > 3:
        raise ProtocolError(f"PROXY v2 header: address family {fam >> 4:#x} unknown",
                            REP_GENERAL_FAILURE)
    if fam & 0x0F > 2:
        raise ProtocolError(f"PROXY v2 header: transport protocol {fam & 0x0F:#x} unknown",
                            REP_GENERAL_FAILURE)
    if fam >> 4 == 0:  # unknown or unsupported: no address, nothing to walk
        return _proxy_header(2, False, _PP_AF_UNSPEC, None, 0, None, 0, (), total)
    if fam >> 4 == 1:
        family, need = _PP_AF_INET, 12
    elif fam >> 4 == 2:
        family, need = _PP_AF_INET6, 36
    else:
        family, need = _PP_AF_UNIX, 216
    if size < need:
        raise ProtocolError(f"PROXY v2 header: {size}-byte address block too short for "
                            f"{_PP_FAMILY_NAMES[fam >> 4]} (needs {need})", REP_GENERAL_FAILURE)
    if family == _PP_AF_INET:
        src = _format_ipv4(buf + 16)
        dst = _format_ipv4(buf + 20)
        sport = (buf[24] << 8) | buf[25]
        dport = (buf[26] << 8) | buf[27]
    elif family == _PP_AF_INET6:
        src = _inet_ntop(_AF_INET6, PyBytes_FromStringAndSize(<const char*>buf + 16, 16))
        dst = _inet_ntop(_AF_INET6, PyBytes_FromStringAndSize(<const char*>buf + 32, 16))
        sport = (buf[48] << 8) | buf[49]
        dport = (buf[50] << 8) | buf[51]
    # AF_UNIX: two 108-byte paths, no IP address to report.
    # §2.2.7: TLVs fill the rest, each type, a 16-bit length and the value.
    tlvs = []
    pos = 16 + need
    while pos < total:
        if total - pos < 3:
            raise ProtocolError("PROXY v2 header: TLV runs past the header", REP_GENERAL_FAILURE)
        length = (buf[pos + 1] << 8) | buf[pos + 2]
        if total - pos - 3 < length:
            raise ProtocolError("PROXY v2 header: TLV runs past the header", REP_GENERAL_FAILURE)
        if buf[pos] == _PP2_TYPE_CRC32C:
            if length != 4:
                raise ProtocolError(f"PROXY v2 header: CRC32C TLV of {length} bytes, not 4",
                                    REP_GENERAL_FAILURE)
            if crc_at >= 0:
                raise ProtocolError("PROXY v2 header: more than one CRC32C TLV",
                                    REP_GENERAL_FAILURE)
            crc_at = pos + 3
        tlvs.append((<int>buf[pos], PyBytes_FromStringAndSize(<const char*>buf + pos + 3, length)))
        pos += 3 + length
    if crc_at >= 0:
        _check_crc32c(buf, total, crc_at)
    return _proxy_header(2, False, family, src, sport, dst, dport, tuple(tlvs), total)


def parse_proxy_header(data):
    """The PROXY protocol header (v1 or v2) at the start of ``data``, or NEED_DATA.

    Raises ProtocolError when ``data`` cannot be the start of a valid header;
    that is decided as early as the bytes allow (a SOCKS greeting fails on its
    first byte).  Bytes after ``length`` belong to the client.
    """
    cdef bytes b = data if type(data) is bytes else bytes(data)
    cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(b)
    cdef Py_ssize_t end = PyBytes_GET_SIZE(b)
    if end == 0:
        return _NEED_DATA
    if buf[0] == 0x50:  # "P"
        return _parse_proxy_v1(buf, end)
    if buf[0] == 0x0D:
        return _parse_proxy_v2(buf, end)
    raise ProtocolError(f"no PROXY protocol header (first byte {buf[0]:#04x})",
                        REP_GENERAL_FAILURE)


# -- GSSAPI message framing (RFC 1961) -----------------------------------------------
#
# After the server selects method X'01', every message either way is
# VER MTYP LEN TOKEN (RFC 1961 §3.3-§5): context establishment (MTYP 1), the
# protection-level sub-negotiation (MTYP 2), encapsulated data (MTYP 3); an
# abort (MTYP X'FF', §3.8) is VER MTYP alone.  The framer only frames: the
# tokens go to python-gssapi (fastsocks/gssapi.py), and which MTYP is valid
# when is the session's business.

cdef enum:
    GSS_VERSION_1 = 0x01
    GSS_AUTH = 0x01
    GSS_PROTECTION = 0x02
    GSS_DATA = 0x03
    GSS_ABORT_MTYP = 0xFF

GSS_MTYP_AUTH = GSS_AUTH
GSS_MTYP_PROTECTION = GSS_PROTECTION
GSS_MTYP_DATA = GSS_DATA
GSS_MTYP_ABORT = GSS_ABORT_MTYP
GSS_ABORT = b"\x01\xff"  # §3.8: the whole abort message
GSS_TOKEN_MAX = 0xFFFF  # LEN is two octets
cdef bytes _GSS_ABORT = GSS_ABORT


cdef class GssMessage:
    """One RFC 1961 message; ``token`` is empty for an abort (MTYP X'FF')."""

    def __init__(self, int mtyp, bytes token):
        self.mtyp = mtyp
        self.token = token

    def __repr__(self):  # never show a token: it may carry a ticket
        return f"GssMessage(mtyp={self.mtyp:#04x}, token=<{len(self.token)} bytes>)"

    def __eq__(self, other):
        return (type(other) is GssMessage and (<GssMessage>other).mtyp == self.mtyp
                and (<GssMessage>other).token == self.token)

    def __hash__(self):
        return hash((self.mtyp, self.token))


cdef class GssFramer(_Buffer):
    """Splits a byte stream into RFC 1961 messages, sans-I/O like ServerCodec.

    A malformed header (VER other than 1, an unknown MTYP) raises
    ProtocolError, and raises it again on every later call: nothing after a
    bad header can be trusted to be a message boundary.
    """

    # RFC 1961 §3.3, §3.8, §4.3, §5: VER MTYP [LEN TOKEN]
    def next_message(self):
        cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(self._buf)
        cdef Py_ssize_t pos = self._pos, end = PyBytes_GET_SIZE(self._buf), n
        cdef int mtyp
        cdef GssMessage ev
        if end - pos < 1:
            return _NEED_DATA
        if buf[pos] != GSS_VERSION_1:
            raise ProtocolError(f"GSSAPI message version {buf[pos]:#04x}, expected 0x01",
                                REP_GENERAL_FAILURE)
        if end - pos < 2:
            return _NEED_DATA
        mtyp = buf[pos + 1]
        ev = GssMessage.__new__(GssMessage)
        ev.mtyp = mtyp
        if mtyp == GSS_ABORT_MTYP:
            ev.token = b""
            self._pos = pos + 2
            return ev
        if mtyp < GSS_AUTH or mtyp > GSS_DATA:
            raise ProtocolError(f"GSSAPI message type {mtyp:#04x} unknown", REP_GENERAL_FAILURE)
        if end - pos < 4:
            return _NEED_DATA
        n = (<Py_ssize_t>buf[pos + 2] << 8) | buf[pos + 3]
        if end - pos < 4 + n:
            return _NEED_DATA
        ev.token = PyBytes_FromStringAndSize(<const char*>buf + pos + 4, n)
        self._pos = pos + 4 + n
        return ev


def gss_frame(mtyp, token):
    """VER MTYP LEN TOKEN for ``token``; MTYP X'FF' gives the two-octet abort.

    ValueError for an MTYP other than 1, 2, 3 or X'FF', a token over 65,535
    octets, or a token with an abort; TypeError unless ``token`` is bytes.
    """
    cdef int m = _uint_arg(mtyp, 0xFF, "GSSAPI message type")
    cdef Py_ssize_t n
    cdef bytes out
    cdef unsigned char* p
    if type(token) is not bytes:
        raise TypeError(f"token must be bytes, not {type(token).__name__}")
    n = PyBytes_GET_SIZE(token)
    if m == GSS_ABORT_MTYP:
        if n:
            raise ValueError("a GSSAPI abort carries no token")
        return _GSS_ABORT
    if m < GSS_AUTH or m > GSS_DATA:
        raise ValueError(f"GSSAPI message type out of range: {mtyp}")
    if n > GSS_TOKEN_MAX:
        raise ValueError(f"GSSAPI token of {n} octets: at most {GSS_TOKEN_MAX}")
    out = PyBytes_FromStringAndSize(NULL, 4 + n)
    p = <unsigned char*>PyBytes_AS_STRING(out)
    p[0] = GSS_VERSION_1
    p[1] = <unsigned char>m
    p[2] = <unsigned char>(n >> 8)
    p[3] = <unsigned char>(n & 0xFF)
    memcpy(p + 4, PyBytes_AS_STRING(token), n)
    return out
