# cython: language_level=3

cdef enum:
    PHASE_GREETING = 0
    PHASE_METHOD = 1
    PHASE_USERPASS = 2
    PHASE_USERPASS_STATUS = 3
    PHASE_REQUEST = 4
    PHASE_REPLY = 5
    PHASE_ESTABLISHED = 6
    PHASE_CLOSED = 7
    PHASE_GSSAPI = 8

cdef enum:
    CMD_CONNECT = 0x01
    CMD_BIND = 0x02
    CMD_UDP_ASSOCIATE = 0x03
    ATYP_IPV4 = 0x01
    ATYP_DOMAIN = 0x03
    ATYP_IPV6 = 0x04
    REP_GENERAL_FAILURE = 0x01
    REP_HOST_UNREACHABLE = 0x04
    REP_COMMAND_NOT_SUPPORTED = 0x07
    REP_ATYP_NOT_SUPPORTED = 0x08


cdef class Greeting:
    cdef readonly bytes methods


cdef class UserPass:
    cdef readonly bytes username
    cdef readonly bytes password


cdef class Request:
    cdef readonly int command
    cdef readonly int atyp
    cdef readonly str host
    cdef readonly int port


cdef class UdpHeader:
    cdef readonly int frag
    cdef readonly int atyp
    cdef readonly str host
    cdef readonly int port
    cdef readonly Py_ssize_t length


# The client side (RFC 1928 §6), see parse_reply().
cdef class Reply:
    cdef readonly int rep
    cdef readonly int atyp
    cdef readonly str host
    cdef readonly int port
    cdef readonly Py_ssize_t length


cdef class _Buffer:
    cdef bytes _buf
    cdef Py_ssize_t _pos


cdef class ServerCodec(_Buffer):
    cdef int _phase
    cdef int _command
    cdef int _replies
    cdef int _failed
    cdef int _error_code

    cdef object _parse_greeting(self)
    cdef object _parse_userpass(self)
    cdef object _parse_request(self)


# SOCKS4 and 4a request, see parse_socks4_request().
cdef class Socks4Request:
    cdef readonly int command
    cdef readonly str host
    cdef readonly int port
    cdef readonly str userid
    cdef readonly bint socks4a
    cdef readonly Py_ssize_t length


# PROXY protocol header (HAProxy's proxy-protocol.txt), see parse_proxy_header().
cdef class ProxyHeader:
    cdef readonly int version
    cdef readonly bint local
    cdef readonly int family
    cdef readonly object src_host
    cdef readonly int src_port
    cdef readonly object dst_host
    cdef readonly int dst_port
    cdef readonly tuple tlvs
    cdef readonly Py_ssize_t length


# GSSAPI message framing (RFC 1961), see GssFramer.
cdef class GssMessage:
    cdef readonly int mtyp
    cdef readonly bytes token


cdef class GssFramer(_Buffer):
    pass
