"""The SOCKS5 codec: the Cython implementation when it is built, else the twin.

Which one is ``_accel``'s decision (``FASTSOCKS_NO_EXTENSIONS=1`` forces the
twin).
"""

from __future__ import annotations

from types import ModuleType

from . import _accel, _codec_py
from .errors import ProtocolError

_impl: ModuleType = _accel.compiled("_codec") or _codec_py

IMPLEMENTATION: str = _impl.IMPLEMENTATION
NEED_DATA = _impl.NEED_DATA
Greeting = _impl.Greeting
UserPass = _impl.UserPass
Request = _impl.Request
UdpHeader = _impl.UdpHeader
ServerCodec = _impl.ServerCodec
encode_address = _impl.encode_address
encode_reply = _impl.encode_reply
parse_udp_header = _impl.parse_udp_header
build_udp_header = _impl.build_udp_header
Reply = _impl.Reply
encode_greeting = _impl.encode_greeting
encode_userpass = _impl.encode_userpass
encode_request = _impl.encode_request
parse_method_choice = _impl.parse_method_choice
parse_auth_status = _impl.parse_auth_status
parse_reply = _impl.parse_reply
reply_size = _impl.reply_size
GssMessage = _impl.GssMessage
GssFramer = _impl.GssFramer
gss_frame = _impl.gss_frame
GSS_ABORT: bytes = _impl.GSS_ABORT
GSS_TOKEN_MAX: int = _impl.GSS_TOKEN_MAX
Socks4Request = _impl.Socks4Request
parse_socks4_request = _impl.parse_socks4_request
encode_socks4_reply = _impl.encode_socks4_reply
SOCKS4_FIELD_MAX: int = _impl.SOCKS4_FIELD_MAX
ProxyHeader = _impl.ProxyHeader
parse_proxy_header = _impl.parse_proxy_header

__all__ = [
    "IMPLEMENTATION",
    "NEED_DATA",
    "ProtocolError",
    "Greeting",
    "UserPass",
    "Request",
    "UdpHeader",
    "ServerCodec",
    "encode_address",
    "encode_reply",
    "parse_udp_header",
    "build_udp_header",
    "Reply",
    "encode_greeting",
    "encode_userpass",
    "encode_request",
    "parse_method_choice",
    "parse_auth_status",
    "parse_reply",
    "reply_size",
    "GssMessage",
    "GssFramer",
    "gss_frame",
    "GSS_ABORT",
    "GSS_TOKEN_MAX",
    "Socks4Request",
    "parse_socks4_request",
    "encode_socks4_reply",
    "SOCKS4_FIELD_MAX",
    "ProxyHeader",
    "parse_proxy_header",
]
