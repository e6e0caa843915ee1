"""Unit tests of the SOCKS4 and SOCKS4a request parser and reply encoder.

``parse_socks4_request`` is a function over the bytes received so far (like
``parse_proxy_header``): every case runs on the Cython codec and the
pure-Python twin (the ``impl`` fixture, ids c/py), and is fed whole, one
byte at a time (every prefix answers NEED_DATA, or the whole request's
answer), and followed by trailing bytes, which stay after ``length``.
"""

from __future__ import annotations

import socket
import struct
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastsocks import codec
from fastsocks.errors import ProtocolError

try:
    import codec_impls as ci
except ImportError:  # tests/ became a package
    from tests import codec_impls as ci  # type: ignore[no-redef]

TRAILING = b"GET / HTTP/1.1\r\n\x00\x04\x01"


def request(command: int, ip: str, port: int, userid: bytes = b"", name: bytes | None = None) -> bytes:
    data = bytes((4, command)) + struct.pack("!H", port) + socket.inet_aton(ip) + userid + b"\x00"
    return data if name is None else data + name + b"\x00"


def fields(event: Any) -> Any:
    if event is ci.PY.NEED_DATA or (ci.C is not None and event is ci.C.NEED_DATA):
        return "NEED_DATA"
    return (event.command, event.host, event.port, event.userid, event.socks4a, event.length)


def parsed(impl: ModuleType, data: bytes, expected: tuple[Any, ...]) -> None:
    """Whole, every prefix, with trailing bytes, and as a bytearray/memoryview."""
    parse = impl.parse_socks4_request
    assert fields(parse(data)) == expected
    for i in range(len(data)):
        assert fields(parse(data[:i])) == "NEED_DATA", f"after {i} bytes"
    got = parse(data + TRAILING)
    assert fields(got) == expected
    assert (data + TRAILING)[got.length:] == TRAILING  # the target's bytes, kept
    assert fields(parse(bytearray(data))) == expected
    assert fields(parse(memoryview(data + TRAILING))) == expected


def refused(impl: ModuleType, data: bytes, code: int, match: str) -> None:
    """The whole request raises; every prefix says NEED_DATA or raises the same."""
    parse = impl.parse_socks4_request
    with pytest.raises(ProtocolError, match=match) as whole:
        parse(data)
    assert whole.value.reply_code == code
    with pytest.raises(ProtocolError) as trailing:
        parse(data + TRAILING)
    assert trailing.value.reply_code == code
    for i in range(len(data)):
        try:
            got = parse(data[:i])
        except ProtocolError as exc:
            assert exc.reply_code == code and str(exc) == str(whole.value), f"after {i} bytes"
        else:
            assert fields(got) == "NEED_DATA", f"after {i} bytes"


# -- requests ---------------------------------------------------------------------------


def test_connect_ipv4(impl: ModuleType) -> None:
    data = request(1, "127.0.0.1", 80)
    parsed(impl, data, (1, "127.0.0.1", 80, "", False, 9))


def test_connect_with_userid(impl: ModuleType) -> None:
    data = request(1, "192.0.2.200", 443, b"alice")
    parsed(impl, data, (1, "192.0.2.200", 443, "alice", False, 14))


def test_bind(impl: ModuleType) -> None:
    data = request(2, "10.1.2.3", 21, b"ftp")
    parsed(impl, data, (2, "10.1.2.3", 21, "ftp", False, 12))


def test_bind_any(impl: ModuleType) -> None:
    # DSTIP 0.0.0.0 is not 4a (x must be non-zero): a plain SOCKS4 address.
    parsed(impl, request(2, "0.0.0.0", 0), (2, "0.0.0.0", 0, "", False, 9))


def test_socks4a_name(impl: ModuleType) -> None:
    data = request(1, "0.0.0.1", 8080, b"bob", b"example.com")
    parsed(impl, data, (1, "example.com", 8080, "bob", True, len(data)))


def test_socks4a_any_last_octet(impl: ModuleType) -> None:
    data = request(1, "0.0.0.255", 1, b"", b"a")
    parsed(impl, data, (1, "a", 1, "", True, len(data)))


def test_socks4a_utf8_name(impl: ModuleType) -> None:
    name = "bücher.example".encode()
    data = request(1, "0.0.0.9", 80, b"", name)
    parsed(impl, data, (1, "bücher.example", 80, "", True, len(data)))


def test_not_socks4a_when_high_octets_set(impl: ModuleType) -> None:
    # 0.0.1.1 is an address, not the 4a marker: what follows is the target's.
    data = request(1, "0.0.1.1", 80)
    got = impl.parse_socks4_request(data + b"example.com\x00")
    assert fields(got) == (1, "0.0.1.1", 80, "", False, 9)


def test_fields_at_their_bound(impl: ModuleType) -> None:
    userid = b"u" * codec.SOCKS4_FIELD_MAX
    name = b"n" * codec.SOCKS4_FIELD_MAX
    data = request(1, "0.0.0.1", 80, userid, name)
    parsed(impl, data, (1, "n" * 255, 80, "u" * 255, True, len(data)))
    assert impl.SOCKS4_FIELD_MAX == 255


def test_utf8_userid(impl: ModuleType) -> None:
    data = request(1, "127.0.0.1", 80, "jürgen".encode())
    parsed(impl, data, (1, "127.0.0.1", 80, "jürgen", False, len(data)))


# -- refusals ---------------------------------------------------------------------------


def test_not_version_4(impl: ModuleType) -> None:
    refused(impl, b"\x05\x01\x00", 0x01, "not SOCKS4: version 0x05")


@pytest.mark.parametrize("command", [0, 3, 0x80, 0xFF])
def test_unknown_command(impl: ModuleType, command: int) -> None:
    refused(impl, request(command, "127.0.0.1", 80), 0x07, f"command {command:#04x} not supported")


def test_userid_too_long(impl: ModuleType) -> None:
    data = request(1, "127.0.0.1", 80, b"u" * 256)
    refused(impl, data, 0x01, "USERID longer than 255 octets")
    # Refused as soon as 256 octets have come without a NUL: nothing more is buffered.
    with pytest.raises(ProtocolError):
        impl.parse_socks4_request(data[:8 + 256])


def test_name_too_long(impl: ModuleType) -> None:
    data = request(1, "0.0.0.1", 80, b"", b"n" * 256)
    refused(impl, data, 0x04, "host name longer than 255 octets")


def test_empty_name(impl: ModuleType) -> None:
    refused(impl, request(1, "0.0.0.1", 80, b"x", b""), 0x01, "empty host name")


@pytest.mark.parametrize("byte", [0x01, 0x0A, 0x0D, 0x1F, 0x7F])
def test_control_byte_in_userid(impl: ModuleType, byte: int) -> None:
    refused(impl, request(1, "127.0.0.1", 80, b"a" + bytes((byte,)) + b"b"), 0x01,
            f"USERID contains control byte {byte:#04x}")


@pytest.mark.parametrize("byte", [0x01, 0x0A, 0x1F, 0x7F])
def test_control_byte_in_name(impl: ModuleType, byte: int) -> None:
    refused(impl, request(1, "0.0.0.1", 80, b"", b"internal" + bytes((byte,)) + b".example"),
            0x04, f"host name contains control byte {byte:#04x}")


def test_bad_utf8(impl: ModuleType) -> None:
    refused(impl, request(1, "127.0.0.1", 80, b"\xff"), 0x01, "USERID is not valid UTF-8")
    refused(impl, request(1, "0.0.0.1", 80, b"", b"\xc3("), 0x04, "name is not valid UTF-8")


# -- replies ----------------------------------------------------------------------------


def test_reply(impl: ModuleType) -> None:
    enc = impl.encode_socks4_reply
    assert enc(90) == b"\x00\x5a\x00\x00\x00\x00\x00\x00"
    assert enc(91) == b"\x00\x5b\x00\x00\x00\x00\x00\x00"
    assert enc(90, "192.0.2.1", 0x1234) == b"\x00\x5a\x12\x34\xc0\x00\x02\x01"
    assert enc(92, "0.0.0.0", 65535) == b"\x00\x5c\xff\xff\x00\x00\x00\x00"
    assert enc(93, port=1) == b"\x00\x5d\x00\x01\x00\x00\x00\x00"


@pytest.mark.parametrize("args, error", [
    ((89,), ValueError), ((94,), ValueError), ((0,), ValueError), ((-1,), ValueError),
    ((2 ** 70,), ValueError), ((90, "::1"), ValueError), ((90, "example.com"), ValueError),
    ((90, "01.2.3.4"), ValueError), ((90, "1.2.3.4\x00"), ValueError),
    ((90, "1.2.3.4", 65536), ValueError), ((90, "1.2.3.4", -1), ValueError),
    ((90, None), TypeError), ((90.0,), TypeError), ((90, "1.2.3.4", 1.5), TypeError),
])
def test_reply_arguments(impl: ModuleType, args: tuple[Any, ...], error: type) -> None:
    with pytest.raises(error):
        impl.encode_socks4_reply(*args)


def test_exported() -> None:
    for name in ("Socks4Request", "parse_socks4_request", "encode_socks4_reply",
                 "SOCKS4_FIELD_MAX"):
        assert name in codec.__all__ and name in ci.PY.__all__
        if ci.C is not None:
            assert hasattr(ci.C, name)


def test_repr_and_equality(impl: ModuleType) -> None:
    a = impl.Socks4Request(1, "example.com", 80, "u", True, 20)
    assert a == impl.Socks4Request(1, "example.com", 80, "u", True, 20)
    assert a != impl.Socks4Request(1, "example.com", 80, "u", False, 20)
    assert repr(a) == ("Socks4Request(command=1, host='example.com', port=80, userid='u', "
                       "socks4a=True, length=20)")


# -- both implementations agree on anything ---------------------------------------------


def _outcome(impl: ModuleType, data: bytes) -> Any:
    try:
        return ("ok", fields(impl.parse_socks4_request(data)))
    except ProtocolError as exc:
        return ("error", exc.reply_code, str(exc))


@pytest.mark.skipif(ci.C is None, reason=ci.C_MISSING_REASON)
@settings(max_examples=400, deadline=None)
@given(st.one_of(
    st.binary(max_size=40),
    st.builds(lambda cmd, ip, u, n: bytes((4, cmd)) + b"\x00\x50" + ip + u + b"\x00" + n,
              st.integers(0, 3), st.sampled_from([b"\x00\x00\x00\x01", b"\x7f\x00\x00\x01",
                                                    b"\x00\x00\x00\x00"]),
              st.binary(max_size=12), st.binary(max_size=12)),
))
def test_implementations_agree(data: bytes) -> None:
    assert _outcome(ci.C, data) == _outcome(ci.PY, data)
    assert _outcome(ci.C, data[:-1]) == _outcome(ci.PY, data[:-1])
