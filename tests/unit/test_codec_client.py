"""The client side of the codec: what a SOCKS5 client sends and parses.

RFC 1928 §3-§6 and RFC 1929 §2, as fastsocks/net/client.py uses them for
upstream chaining and ``fastsocks bench``.  Every case runs on the Cython
codec and on its pure-Python twin; every parser case three ways (whole;
every prefix, which must be NEED_DATA; with the next bytes after it, which
the parser must leave alone), plus a hypothesis differential: both
implementations give the same answer for any bytes, and only ProtocolError
escapes.  Encoders are checked against the server side of the other
implementation (what one encodes, the other's ServerCodec parses).
"""

from __future__ import annotations

import socket
from types import ModuleType
from typing import Any, Callable

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fastsocks import codec
from fastsocks.errors import ProtocolError

try:
    import codec_impls as ci
except ImportError:  # tests/ became a package
    from tests import codec_impls as ci  # type: ignore[no-redef]

FIELDS = ("rep", "atyp", "host", "port", "length")
#: What follows a message on the connection: relayed data, another message.
AFTER = b"\x05\x00\x00\x01relayed bytes\r\n"

CLIENT_NAMES = ("Reply", "encode_greeting", "encode_userpass", "encode_request",
                "parse_method_choice", "parse_auth_status", "parse_reply", "reply_size")


def fields(ev: Any) -> Any:
    if type(ev).__name__ == "_NeedData":
        return "NEED_DATA"
    if isinstance(ev, int):
        return ("int", ev)
    return tuple((type(getattr(ev, f)).__name__, getattr(ev, f)) for f in FIELDS)


def reply(rep: int, atyp: int, host: str, port: int, length: int) -> Any:
    return fields(ci.PY.Reply(rep, atyp, host, port, length))


def tr(parse: Callable[[Any], Any], data: bytes, expected: Any) -> None:
    """Whole, every prefix (NEED_DATA), with the next bytes after it, and bytes-like."""
    assert fields(parse(data)) == expected
    for i in range(len(data)):
        assert fields(parse(data[:i])) == "NEED_DATA", f"after {i} bytes"
    assert fields(parse(data + AFTER)) == expected
    assert fields(parse(bytearray(data))) == expected
    assert fields(parse(memoryview(data + AFTER))) == expected


def tr_error(parse: Callable[[Any], Any], data: bytes, match: str, detect_at: int) -> None:
    """ProtocolError (X'01') as soon as ``detect_at`` bytes show it, NEED_DATA before."""
    for i in range(detect_at):
        assert fields(parse(data[:i])) == "NEED_DATA", f"after {i} bytes"
    for chunk in (data[:detect_at], data, data + AFTER):
        with pytest.raises(ProtocolError, match=match) as info:
            parse(chunk)
        assert info.value.reply_code == 0x01


def test_selector_exports_the_client_side() -> None:
    chosen = ci.C if codec.IMPLEMENTATION == "c" else ci.PY
    for name in CLIENT_NAMES:
        assert getattr(codec, name) is getattr(chosen, name), name
        assert name in codec.__all__ and name in ci.PY.__all__


# -- the greeting and the method choice (RFC 1928 §3) ---------------------------------


@pytest.mark.parametrize("methods, expected", [
    (b"\x00", b"\x05\x01\x00"),
    (b"\x00\x02", b"\x05\x02\x00\x02"),
    (bytes(range(255)), b"\x05\xff" + bytes(range(255))),
])
def test_encode_greeting(impl: ModuleType, methods: bytes, expected: bytes) -> None:
    assert impl.encode_greeting(methods) == expected
    # What the client sends, the server side of the other implementation parses.
    for other in ci.IMPLEMENTATIONS:
        server = other.ServerCodec()
        server.receive_data(expected)
        assert server.next_event().methods == methods


def test_encode_greeting_checks(impl: ModuleType) -> None:
    with pytest.raises(ValueError, match="1 to 255"):
        impl.encode_greeting(b"")
    with pytest.raises(ValueError, match="1 to 255"):
        impl.encode_greeting(bytes(256))
    with pytest.raises(TypeError):
        impl.encode_greeting("\x00")


@pytest.mark.parametrize("method", [0x00, 0x01, 0x02, 0xFF, 0x80])
def test_method_choice(impl: ModuleType, method: int) -> None:
    tr(impl.parse_method_choice, bytes((0x05, method)), ("int", method))


@pytest.mark.parametrize("data", [b"\x04\x5a", b"\x00\x00", b"\x01\x00", b"HTTP/1.1"])
def test_method_choice_from_no_socks5_server(impl: ModuleType, data: bytes) -> None:
    tr_error(impl.parse_method_choice, data, r"is not a SOCKS5 server \(version 0x", 1)


# -- username/password (RFC 1929 §2) ---------------------------------------------------


def test_encode_userpass(impl: ModuleType) -> None:
    assert impl.encode_userpass(b"u", b"p") == b"\x01\x01u\x01p"
    data = impl.encode_userpass(b"user", b"x" * 255)
    assert data == b"\x01\x04user\xff" + b"x" * 255
    for other in ci.IMPLEMENTATIONS:
        server = ci.in_userpass(other)
        server.receive_data(data)
        ev = server.next_event()
        assert (ev.username, ev.password) == (b"user", b"x" * 255)


def test_encode_userpass_checks(impl: ModuleType) -> None:
    for user, password, match in [(b"", b"p", "username"), (b"u" * 256, b"p", "username"),
                                  (b"u", b"", "password"), (b"u", b"secret" * 50, "password")]:
        with pytest.raises(ValueError, match=match) as info:
            impl.encode_userpass(user, password)
        assert "secret" not in str(info.value)  # lengths only, never the password
    with pytest.raises(TypeError):
        impl.encode_userpass("u", b"p")
    with pytest.raises(TypeError):
        impl.encode_userpass(b"u", "p")


@pytest.mark.parametrize("status", [0x00, 0x01, 0xFF])
def test_auth_status(impl: ModuleType, status: int) -> None:
    tr(impl.parse_auth_status, bytes((0x01, status)), ("int", status))


def test_auth_status_version(impl: ModuleType) -> None:
    tr_error(impl.parse_auth_status, b"\x05\x00", r"status version 0x05, expected 0x01", 1)


# -- the request (RFC 1928 §4) --------------------------------------------------------


@pytest.mark.parametrize("command, host, port, expected", [
    (1, "127.0.0.1", 80, b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50"),
    (1, "::1", 1, b"\x05\x01\x00\x04" + bytes(15) + b"\x01\x00\x01"),
    (1, "example.org", 443, b"\x05\x01\x00\x03\x0bexample.org\x01\xbb"),
    (2, "0.0.0.0", 0, b"\x05\x02\x00\x01" + bytes(6)),
    (3, "::", 65535, b"\x05\x03\x00\x04" + bytes(16) + b"\xff\xff"),
    (3, "fe80::1%eth0", 53, b"\x05\x03\x00\x04\xfe\x80" + bytes(13) + b"\x01\x00\x35"),
])
def test_encode_request(impl: ModuleType, command: int, host: str, port: int,
                        expected: bytes) -> None:
    assert impl.encode_request(command, host, port) == expected
    for other in ci.IMPLEMENTATIONS:
        server = ci.in_request(other)
        server.receive_data(expected)
        ev = server.next_event()
        assert (ev.command, ev.port) == (command, port)


def test_encode_request_checks(impl: ModuleType) -> None:
    for command in (0, 4, 0xFF, 256, -1):
        with pytest.raises(ValueError, match="command out of range"):
            impl.encode_request(command, "127.0.0.1", 80)
    with pytest.raises(ValueError, match="port out of range"):
        impl.encode_request(1, "127.0.0.1", 65536)
    with pytest.raises(ValueError, match="1 to 255 octets"):
        impl.encode_request(1, "a" * 256, 80)
    with pytest.raises(TypeError):
        impl.encode_request(1.0, "127.0.0.1", 80)
    with pytest.raises(TypeError):
        impl.encode_request(1, b"127.0.0.1", 80)


# -- the reply (RFC 1928 §6) ----------------------------------------------------------


@pytest.mark.parametrize("data, expected", [
    (b"\x05\x00\x00\x01\x7f\x00\x00\x01\x04\x38", (0, 1, "127.0.0.1", 1080, 10)),
    (b"\x05\x00\x00\x01" + bytes(6), (0, 1, "0.0.0.0", 0, 10)),
    (b"\x05\x00\x00\x04" + socket.inet_pton(socket.AF_INET6, "2001:db8::5") + b"\xff\xff",
     (0, 4, "2001:db8::5", 65535, 22)),
    (b"\x05\x00\x00\x03\x01a\x00\x01", (0, 3, "a", 1, 8)),
    (b"\x05\x00\x00\x03\x0dproxy.example\x00\x50", (0, 3, "proxy.example", 80, 20)),
    (b"\x05\x00\x00\x03\x07b\xc3\xbccher\x00\x50", (0, 3, "bücher", 80, 14)),
    # Failure replies are replies: the client reads the code from them.
    (b"\x05\x05\x00\x01" + bytes(6), (5, 1, "0.0.0.0", 0, 10)),
    (b"\x05\x07\x00\x04" + bytes(18), (7, 4, "::", 0, 22)),
    (b"\x05\xff\x00\x01" + bytes(6), (0xFF, 1, "0.0.0.0", 0, 10)),
])
def test_reply(impl: ModuleType, data: bytes, expected: tuple[Any, ...]) -> None:
    tr(impl.parse_reply, data, reply(*expected))
    assert (data + AFTER)[impl.parse_reply(data + AFTER).length:] == AFTER


@pytest.mark.parametrize("data, match, detect_at", [
    (b"\x04\x00\x00\x01" + bytes(6), r"bad version in reply: 0x04, expected 0x05", 1),
    (b"\x00\x5a\x00\x00\x00\x00\x00\x00", r"bad version in reply", 1),
    (b"\x05\x00\x01\x01" + bytes(6), r"reserved byte in reply is 0x01, not 0", 3),
    (b"\x05\x00\x00\x09" + bytes(6), r"unknown address type 0x09 in reply", 4),
    (b"\x05\x00\x00\x00" + bytes(6), r"unknown address type 0x00 in reply", 4),
    (b"\x05\x00\x00\x03\x00\x00\x50", r"empty domain name", 5),
])
def test_reply_errors(impl: ModuleType, data: bytes, match: str, detect_at: int) -> None:
    tr_error(impl.parse_reply, data, match, detect_at)
    with pytest.raises(ProtocolError, match=match):
        impl.reply_size(data[:detect_at])


def test_reply_with_a_name_that_is_not_utf8(impl: ModuleType) -> None:
    with pytest.raises(ProtocolError, match="not valid UTF-8"):
        impl.parse_reply(b"\x05\x00\x00\x03\x02\xff\xfe\x00\x50")


@pytest.mark.parametrize("host, port", [
    ("0.0.0.0", 0), ("192.0.2.7", 1080), ("::1", 53), ("fe80::1%eth0", 1), ("proxy.example", 80),
])
@pytest.mark.parametrize("rep", [0, 1, 5, 7])
def test_what_the_server_sends_the_client_parses(impl: ModuleType, host: str, port: int,
                                                 rep: int) -> None:
    for other in ci.IMPLEMENTATIONS:
        data = ci.in_reply(other).send_reply(rep, host, port)
        ev = impl.parse_reply(data)
        assert (ev.rep, ev.host, ev.port, ev.length) == (rep, host.partition("%")[0], port,
                                                         len(data))


@pytest.mark.parametrize("data", [
    b"\x05\x00\x00\x01\x7f\x00\x00\x01\x04\x38",
    b"\x05\x00\x00\x04" + bytes(18),
    b"\x05\x00\x00\x03\x01a\x00\x01",
    b"\x05\x00\x00\x03\xff" + b"n" * 255 + b"\x00\x01",
])
def test_reply_size_never_reads_past_the_reply(impl: ModuleType, data: bytes) -> None:
    """Reading up to reply_size() octets at a time ends exactly at the reply's end."""
    for i in range(len(data)):
        size = impl.reply_size(data[:i])
        assert i < size <= len(data), f"after {i} bytes"
    assert impl.reply_size(data) == len(data) == impl.reply_size(data + AFTER)
    # A client reading that way: as few reads as the octets allow.
    got, reads = b"", 0
    while fields(impl.parse_reply(got)) == "NEED_DATA":
        got += data[len(got):impl.reply_size(got)]
        reads += 1
    assert got == data and reads <= 3


# -- both implementations agree, whatever the bytes -----------------------------------


def outcome(impl: ModuleType, name: str, data: bytes) -> tuple[Any, ...]:
    try:
        return ("ok", fields(getattr(impl, name)(data)))
    except ProtocolError as exc:
        return ("error", str(exc), exc.reply_code)


@st.composite
def replies(draw: st.DrawFn) -> bytes:
    """Mostly near-valid replies, cut or followed by more: the interesting inputs."""
    head = bytes((draw(st.sampled_from([5, 5, 5, 4, 0])), draw(st.integers(0, 255)),
                  draw(st.sampled_from([0, 0, 0, 1])), draw(st.sampled_from([1, 3, 4, 0, 2]))))
    data = head + draw(st.binary(max_size=40))
    cut = draw(st.integers(0, len(data)))
    return data[:cut] if draw(st.booleans()) else data


CLIENT_PARSERS = ("parse_reply", "reply_size", "parse_method_choice", "parse_auth_status")


@pytest.mark.skipif(ci.C is None, reason=ci.C_MISSING_REASON)
@settings(max_examples=1000, deadline=None)
@given(st.one_of(replies(), st.binary(max_size=40)))
@example(b"\x05\x00\x00\x03\x02\xff\xfe\x00\x50")
def test_c_and_python_agree(data: bytes) -> None:
    for name in CLIENT_PARSERS:
        assert outcome(ci.C, name, data) == outcome(ci.PY, name, data), name


@settings(max_examples=300, deadline=None)
@given(st.one_of(replies(), st.binary(max_size=300)))
def test_any_bytes_only_protocol_error(data: bytes) -> None:
    for impl in ci.IMPLEMENTATIONS:
        for name in CLIENT_PARSERS:
            outcome(impl, name, data)  # anything but ProtocolError fails the test
        ev = outcome(impl, "parse_reply", data)
        if ev[0] == "ok" and ev[1] != "NEED_DATA":
            assert 0 < impl.parse_reply(data).length == impl.reply_size(data) <= len(data)
