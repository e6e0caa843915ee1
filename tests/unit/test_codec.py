"""Unit tests of the sans-I/O SOCKS5 codec (RFC 1928, RFC 1929).

Every test runs on the Cython codec (id "c") and on the pure-Python twin
(id "py") through the ``impl`` fixture; every parser case is fed three ways
by ``tr()``/``tr_error()`` (whole, byte by byte, with trailing bytes).
"""

from __future__ import annotations

import dataclasses
import os
import socket
from types import ModuleType
from typing import Any

import pytest

import fastsocks
import fastsocks.codec
import fastsocks.relay
from fastsocks.constants import Phase
from fastsocks.errors import ProtocolError

try:
    import codec_impls as ci
except ImportError:  # tests/ became a package
    from tests import codec_impls as ci  # type: ignore[no-redef]

event_fields = ci.event_fields
tr = ci.tr
tr_error = ci.tr_error


def _reply_error(code: int) -> bytes:
    """The 10-byte reply send_error() gives for a request error."""
    return bytes((0x05, code, 0x00, 0x01, 0, 0, 0, 0, 0, 0))


SOCKS4_REJECT = ci.SOCKS4_REJECT


# --------------------------------------------------------------------------
# The extension really loaded (or, deliberately, did not).


def test_extension_loaded() -> None:
    if os.environ.get("FASTSOCKS_NO_EXTENSIONS"):
        assert fastsocks.codec.IMPLEMENTATION == "py"
        assert fastsocks.relay.IMPLEMENTATION == "py"
        assert fastsocks.IMPLEMENTATION == "pure"
        assert fastsocks.describe_implementation().startswith("pure")
    else:
        # Fails when the wheel or the in-place build lost its extensions and
        # everything silently fell back to the twins.
        assert fastsocks.codec.IMPLEMENTATION == "c", ci.C_IMPORT_ERROR
        assert fastsocks.relay.IMPLEMENTATION == "c"
        assert fastsocks.IMPLEMENTATION == "accelerated"
        assert fastsocks.codec.ServerCodec is ci.C.ServerCodec
        assert fastsocks.describe_implementation().startswith("accelerated")


def test_implementation_names(impl: ModuleType) -> None:
    assert impl.IMPLEMENTATION == ("py" if impl is ci.PY else "c")
    assert repr(impl.NEED_DATA) == "NEED_DATA"


def test_event_fields_cover_every_dataclass_field() -> None:
    # event_fields() must compare every field; a new field in the twin must
    # be added to codec_impls.EVENT_FIELDS too.
    for name, fields in ci.EVENT_FIELDS.items():
        cls = getattr(ci.PY, name)
        assert tuple(f.name for f in dataclasses.fields(cls)) == fields


def test_event_fields_compare_across_implementations(impl: ModuleType) -> None:
    assert event_fields(impl.Request(1, 3, "example.com", 443)) == (
        "Request",
        (1, 3, "example.com", 443),
    )
    assert event_fields(impl.NEED_DATA) == ("NEED_DATA", ())
    other = ci.PY if impl is not ci.PY else (ci.C or ci.PY)
    assert event_fields(impl.UdpHeader(0, 1, "192.0.2.1", 53, 10)) == event_fields(
        other.UdpHeader(0, 1, "192.0.2.1", 53, 10)
    )


def test_events_compare_equal_within_implementation(impl: ModuleType) -> None:
    assert impl.Greeting(b"\x00") == impl.Greeting(b"\x00")
    assert impl.Greeting(b"\x00") != impl.Greeting(b"\x02")
    assert impl.UserPass(b"u", b"p") == impl.UserPass(b"u", b"p")
    assert impl.UserPass(b"u", b"p") != impl.UserPass(b"u", b"q")
    assert impl.Request(1, 1, "192.0.2.1", 80) != impl.Request(1, 1, "192.0.2.1", 81)
    assert impl.UdpHeader(0, 1, "192.0.2.1", 80, 10) != impl.UdpHeader(1, 1, "192.0.2.1", 80, 10)


def test_userpass_repr_hides_password(impl: ModuleType) -> None:
    ev = impl.UserPass(b"alice", b"hunter2-secret")
    for text in (repr(ev), str(ev), f"{ev}", f"{ev!r}"):
        assert "hunter2" not in text
        assert "alice" in text
        assert "14 bytes" in text
    # The same for an event the parser made.
    c = ci.in_userpass(impl)
    c.receive_data(b"\x01\x05alice\x0ehunter2-secret")
    ev = c.next_event()
    assert "hunter2" not in repr(ev)
    assert repr(ev) == "UserPass(username=b'alice', password=<14 bytes>)"


def test_event_reprs(impl: ModuleType) -> None:
    assert repr(impl.Greeting(b"\x00\x02")) == "Greeting(methods=b'\\x00\\x02')"
    assert repr(impl.Request(1, 3, "example.com", 443)) == (
        "Request(command=1, atyp=3, host='example.com', port=443)"
    )
    assert repr(impl.UdpHeader(0, 1, "192.0.2.1", 53, 10)) == (
        "UdpHeader(frag=0, atyp=1, host='192.0.2.1', port=53, length=10)"
    )


# --------------------------------------------------------------------------
# Greeting: VER NMETHODS METHODS (RFC 1928 §3).


@pytest.mark.parametrize(
    "methods",
    [b"\x00", b"\x02", b"\x00\x02", b"\x00\x01\x02", b"\x02\x00\x80\xfe", bytes(range(255))],
    ids=["noauth", "userpass", "both", "with-gssapi", "private", "255-methods"],
)
def test_greeting(impl: ModuleType, methods: bytes) -> None:
    data = bytes((0x05, len(methods))) + methods
    for c in tr(impl.ServerCodec, data, ("Greeting", (methods,))):
        assert c.phase == Phase.METHOD
        assert c.command == 0


def test_greeting_nmethods_zero(impl: ModuleType) -> None:
    # A client offering nothing: the codec reports it, the server answers X'FF'.
    for c in tr(impl.ServerCodec, b"\x05\x00", ("Greeting", (b"",))):
        assert c.phase == Phase.METHOD
        assert c.send_method(0xFF) == b"\x05\xff"
        assert c.phase == Phase.CLOSED


def test_greeting_event_type(impl: ModuleType) -> None:
    c = impl.ServerCodec()
    assert c.phase == Phase.GREETING
    assert c.next_event() is impl.NEED_DATA
    assert c.trailing_data == b""
    c.receive_data(b"\x05\x02\x00\x02")
    ev = c.next_event()
    assert type(ev) is impl.Greeting
    assert type(ev.methods) is bytes
    assert ev == impl.Greeting(b"\x00\x02")


def test_greeting_socks4_gets_socks4_rejection(impl: ModuleType) -> None:
    # SOCKS4 CONNECT 127.0.0.1:80 with an empty user id.
    data = b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00"
    tr_error(impl.ServerCodec, data, 0x01, SOCKS4_REJECT, detect_at=1)


def test_greeting_socks4a_gets_socks4_rejection(impl: ModuleType) -> None:
    data = b"\x04\x01\x00\x50\x00\x00\x00\x01\x00example.com\x00"
    tr_error(impl.ServerCodec, data, 0x01, SOCKS4_REJECT, detect_at=1)


@pytest.mark.parametrize("version", [0x00, 0x01, 0x03, 0x06, 0x16, 0x47, 0x43, 0xFF])
def test_greeting_other_version_just_closes(impl: ModuleType, version: int) -> None:
    # 0x16: a TLS ClientHello; 0x47/0x43: "GET"/"CONNECT" from an HTTP client.
    data = bytes((version,)) + b"\x01\x00"
    tr_error(impl.ServerCodec, data, 0x01, b"", detect_at=1)


def test_greeting_http_request_just_closes(impl: ModuleType) -> None:
    tr_error(impl.ServerCodec, b"GET / HTTP/1.1\r\n\r\n", 0x01, b"", detect_at=1)


def test_send_error_before_any_error_is_empty(impl: ModuleType) -> None:
    c = impl.ServerCodec()
    assert c.send_error() == b""
    c.receive_data(b"\x04")  # not parsed yet: no error has happened
    assert c.send_error() == b""


# --------------------------------------------------------------------------
# METHOD selection (RFC 1928 §3).


@pytest.mark.parametrize(
    ("method", "phase"),
    [(0x00, Phase.REQUEST), (0x01, Phase.GSSAPI), (0x02, Phase.USERPASS), (0xFF, Phase.CLOSED)],
    ids=["noauth", "gssapi", "userpass", "no-acceptable"],
)
def test_send_method(impl: ModuleType, method: int, phase: Phase) -> None:
    c = ci.in_phase(impl, Phase.METHOD)
    assert c.send_method(method) == bytes((0x05, method))
    assert c.phase == phase


def test_send_method_enum(impl: ModuleType) -> None:
    from fastsocks.constants import Method

    c = ci.in_phase(impl, Phase.METHOD)
    assert c.send_method(Method.USERPASS) == b"\x05\x02"
    assert c.phase == Phase.USERPASS


def test_method_ff_closes_and_parses_nothing_more(impl: ModuleType) -> None:
    c = impl.ServerCodec()
    c.receive_data(b"\x05\x01\x01" + ci.CONNECT_V4)
    assert event_fields(c.next_event()) == ("Greeting", (b"\x01",))
    assert c.send_method(0xFF) == b"\x05\xff"
    assert c.phase == Phase.CLOSED
    assert c.next_event() is impl.NEED_DATA
    assert c.trailing_data == ci.CONNECT_V4
    assert c.send_error() == b""


@pytest.mark.parametrize("method", [0x03, 0x80, 0xFE, 0x100, -1])
def test_send_method_without_subnegotiation_is_valueerror(impl: ModuleType, method: int) -> None:
    c = ci.in_phase(impl, Phase.METHOD)
    with pytest.raises(ValueError):
        c.send_method(method)
    assert c.phase == Phase.METHOD
    assert c.send_method(0x00) == b"\x05\x00"


def test_events_wait_for_send_method(impl: ModuleType) -> None:
    # A request pipelined behind the greeting is not parsed before the method
    # is chosen: the codec cannot know whether it is auth or a request.
    c = impl.ServerCodec()
    c.receive_data(ci.GREETING_NOAUTH + ci.CONNECT_V4)
    assert event_fields(c.next_event()) == ("Greeting", (b"\x00",))
    for _ in range(3):
        assert c.next_event() is impl.NEED_DATA
    assert c.phase == Phase.METHOD
    assert c.trailing_data == ci.CONNECT_V4
    c.send_method(0x00)
    assert event_fields(c.next_event()) == ("Request", (1, 1, "192.0.2.1", 80))


# --------------------------------------------------------------------------
# RFC 1929 username/password sub-negotiation.


@pytest.mark.parametrize(
    ("username", "password"),
    [
        (b"user", b"secret"),
        (b"", b""),
        (b"", b"pw"),
        (b"u", b""),
        (b"\x00\xff\xfe", b"\x00\x01\x80"),  # raw octets, not text
        ("bénédicte".encode(), "pässwörd".encode()),
        (b"u" * 255, b"p" * 255),
        (b"u" * 255, b""),
        (b"", b"p" * 255),
    ],
    ids=["normal", "both-empty", "empty-user", "empty-password", "binary", "utf8",
         "255-bytes", "255-user", "255-password"],
)
def test_userpass(impl: ModuleType, username: bytes, password: bytes) -> None:
    data = bytes((0x01, len(username))) + username + bytes((len(password),)) + password
    for c in tr(lambda: ci.in_userpass(impl), data, ("UserPass", (username, password))):
        assert c.phase == Phase.USERPASS_STATUS


@pytest.mark.parametrize("version", [0x00, 0x02, 0x05, 0xFF])
def test_userpass_wrong_version(impl: ModuleType, version: int) -> None:
    # 0x05: a client that skipped the sub-negotiation and sent its request.
    data = bytes((version,)) + b"\x04user\x06secret"
    tr_error(lambda: ci.in_userpass(impl), data, 0x01, b"\x01\x01", detect_at=1)


def test_send_auth_status_success(impl: ModuleType) -> None:
    c = ci.in_phase(impl, Phase.USERPASS_STATUS)
    assert c.send_auth_status(True) == b"\x01\x00"
    assert c.phase == Phase.REQUEST


def test_send_auth_status_failure_closes(impl: ModuleType) -> None:
    c = ci.in_phase(impl, Phase.USERPASS_STATUS)
    c.receive_data(ci.CONNECT_V4)
    assert c.send_auth_status(False) == b"\x01\x01"
    assert c.phase == Phase.CLOSED
    assert c.next_event() is impl.NEED_DATA  # the pipelined request is not parsed
    assert c.trailing_data == ci.CONNECT_V4


@pytest.mark.parametrize(("ok", "status"), [(1, b"\x01\x00"), (0, b"\x01\x01"), ("", b"\x01\x01")])
def test_send_auth_status_truthiness(impl: ModuleType, ok: Any, status: bytes) -> None:
    c = ci.in_phase(impl, Phase.USERPASS_STATUS)
    assert c.send_auth_status(ok) == status


def test_request_after_auth(impl: ModuleType) -> None:
    tr(lambda: ci.in_request(impl, authenticated=True), ci.CONNECT_V4,
       ("Request", (1, 1, "192.0.2.1", 80)))


# --------------------------------------------------------------------------
# Requests: VER CMD RSV ATYP DST.ADDR DST.PORT (RFC 1928 §4, §5).

ADDRESSES = [
    # (ATYP DST.ADDR as sent, atyp, host as reported)
    (b"\x01\xc0\x00\x02\x01", 1, "192.0.2.1"),
    (b"\x01\x00\x00\x00\x00", 1, "0.0.0.0"),
    (b"\x01\xff\xff\xff\xff", 1, "255.255.255.255"),
    (b"\x04" + socket.inet_pton(socket.AF_INET6, "2001:db8::1"), 4, "2001:db8::1"),
    (b"\x04" + bytes(15) + b"\x01", 4, "::1"),
    (b"\x04" + bytes(16), 4, "::"),
    # compressed text form: the longest run of zeros becomes "::", no leading zeros
    (b"\x04\x20\x01\x0d\xb8\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x01", 4,
     "2001:db8::1:0:0:1"),
    (b"\x04\xfe\x80" + bytes(13) + b"\x01", 4, "fe80::1"),
    (b"\x04" + b"\xff" * 16, 4, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
    (b"\x03\x0bexample.com", 3, "example.com"),
    (b"\x03\x01a", 3, "a"),
    (b"\x03\x09192.0.2.1", 3, "192.0.2.1"),  # a name that looks like an address stays a name
    (b"\x03\xff" + b"a" * 255, 3, "a" * 255),
    (b"\x03" + bytes((len("bücher.example".encode()),)) + "bücher.example".encode(), 3,
     "bücher.example"),
]
ADDRESS_IDS = ["v4", "v4-any", "v4-broadcast", "v6", "v6-loopback", "v6-any", "v6-compressed",
               "v6-linklocal", "v6-ones", "domain", "domain-1", "domain-ip-text", "domain-255",
               "domain-utf8"]


@pytest.mark.parametrize("command", [1, 2, 3], ids=["connect", "bind", "udp"])
@pytest.mark.parametrize(("addr", "atyp", "host"), ADDRESSES, ids=ADDRESS_IDS)
@pytest.mark.parametrize("port", [0, 80, 1080, 65535])
def test_request(impl: ModuleType, command: int, addr: bytes, atyp: int, host: str,
                 port: int) -> None:
    data = bytes((0x05, command, 0x00)) + addr + port.to_bytes(2, "big")
    for c in tr(lambda: ci.in_request(impl), data, ("Request", (command, atyp, host, port))):
        assert c.phase == Phase.REPLY
        assert c.command == command


def test_request_event_types(impl: ModuleType) -> None:
    c = ci.in_request(impl)
    c.receive_data(b"\x05\x01\x00\x03\x0bexample.com\x01\xbb")
    ev = c.next_event()
    assert type(ev) is impl.Request
    assert ci.typed_event_fields(ev) == (
        "Request", (("int", 1), ("int", 3), ("str", "example.com"), ("int", 443)))
    assert ev == impl.Request(1, 3, "example.com", 443)


def test_request_rsv_is_ignored(impl: ModuleType) -> None:
    # RSV carries no information; a nonzero one does not fail the request.
    tr(lambda: ci.in_request(impl), b"\x05\x01\x7f\x01\xc0\x00\x02\x01\x00\x50",
       ("Request", (1, 1, "192.0.2.1", 80)))


def test_command_before_request_is_zero(impl: ModuleType) -> None:
    assert ci.in_request(impl).command == 0


@pytest.mark.parametrize("name", [b"\xff", b"\xc3\x28", b"abc\x80", b"\xed\xa0\x80"],
                         ids=["ff", "bad-continuation", "stray-continuation", "surrogate"])
def test_request_domain_not_utf8(impl: ModuleType, name: bytes) -> None:
    data = b"\x05\x01\x00\x03" + bytes((len(name),)) + name + b"\x00\x50"
    tr_error(lambda: ci.in_request(impl), data, 0x04, _reply_error(0x04))


# RFC 1928 §5: a name has "no terminating NUL octet"; no C0 control or DEL
# is in a host name either.  Such a name gets X'04', as a name that does not
# resolve (and as one that is not UTF-8), before any resolver sees it.
CONTROL_NAMES = [b"exa\x00mple.com", b"\x00", b"example.com\x00", b"internal\x00.example.com",
                 b"a\nb", b"a\r\nb", b"\x1b[31mred", b"a\tb", b"\x7f", b"\x1f.example",
                 "bücher\x00".encode()]
CONTROL_IDS = ["nul-inside", "nul-only", "nul-last", "nul-label", "lf", "crlf", "esc", "tab",
               "del", "unit-sep", "nul-after-utf8"]


@pytest.mark.parametrize("name", CONTROL_NAMES, ids=CONTROL_IDS)
@pytest.mark.parametrize("command", [1, 2, 3], ids=["connect", "bind", "udp"])
def test_request_domain_control_byte(impl: ModuleType, name: bytes, command: int) -> None:
    data = bytes((0x05, command, 0x00, 0x03, len(name))) + name + b"\x00\x50"
    tr_error(lambda: ci.in_request(impl), data, 0x04, _reply_error(0x04))
    c = ci.in_request(impl)
    c.receive_data(data)
    with pytest.raises(ProtocolError, match="domain name contains control byte 0x") as info:
        c.next_event()
    # The message names the octet; it never carries it (it goes to the log).
    assert str(info.value).isprintable()


def test_request_domain_control_byte_before_utf8(impl: ModuleType) -> None:
    # Both wrong: the control byte is reported (the same in both implementations).
    data = b"\x05\x01\x00\x03\x03\xff\x00a\x00\x50"
    tr_error(lambda: ci.in_request(impl), data, 0x04, _reply_error(0x04))
    c = ci.in_request(impl)
    c.receive_data(data)
    with pytest.raises(ProtocolError, match="control byte 0x00"):
        c.next_event()


def test_request_domain_every_printable_octet(impl: ModuleType) -> None:
    # What is refused is exactly the C0 controls and DEL: every other ASCII
    # octet (space, "_", "%", "/" ...: the resolver's business) and UTF-8 passes.
    name = bytes(range(0x20, 0x7F)) + "é€😀".encode()
    data = b"\x05\x01\x00\x03" + bytes((len(name),)) + name + b"\x01\xbb"
    tr(lambda: ci.in_request(impl), data, ("Request", (1, 3, name.decode(), 443)))


def test_request_domain_empty(impl: ModuleType) -> None:
    data = b"\x05\x01\x00\x03\x00\x00\x50"
    tr_error(lambda: ci.in_request(impl), data, 0x01, _reply_error(0x01), detect_at=5)


@pytest.mark.parametrize("command", [0x00, 0x04, 0x05, 0x80, 0xFF])
def test_request_unknown_command(impl: ModuleType, command: int) -> None:
    data = bytes((0x05, command)) + ci.CONNECT_V4[2:]
    tr_error(lambda: ci.in_request(impl), data, 0x07, _reply_error(0x07), detect_at=2)
    c = ci.in_request(impl)
    c.receive_data(data)
    with pytest.raises(ProtocolError):
        c.next_event()
    assert c.send_error() == b"\x05\x07\x00\x01\x00\x00\x00\x00\x00\x00"


@pytest.mark.parametrize("atyp", [0x00, 0x02, 0x05, 0xFF])
def test_request_unknown_atyp(impl: ModuleType, atyp: int) -> None:
    data = bytes((0x05, 0x01, 0x00, atyp)) + b"\xc0\x00\x02\x01\x00\x50"
    tr_error(lambda: ci.in_request(impl), data, 0x08, _reply_error(0x08), detect_at=4)


@pytest.mark.parametrize("version", [0x00, 0x01, 0x04, 0xFF])
def test_request_wrong_version(impl: ModuleType, version: int) -> None:
    data = bytes((version,)) + ci.CONNECT_V4[1:]
    tr_error(lambda: ci.in_request(impl), data, 0x01, _reply_error(0x01), detect_at=1)


def test_request_error_after_auth(impl: ModuleType) -> None:
    data = b"\x05\x09\x00\x01\xc0\x00\x02\x01\x00\x50"
    tr_error(lambda: ci.in_request(impl, authenticated=True), data, 0x07, _reply_error(0x07),
             detect_at=2)


@pytest.mark.parametrize(
    "data",
    [b"\x05", b"\x05\x01", b"\x05\x01\x00", b"\x05\x01\x00\x01\xc0\x00\x02\x01\x00",
     b"\x05\x01\x00\x03", b"\x05\x01\x00\x03\x05abcd\x00\x50"[:-1],
     b"\x05\x01\x00\x04" + bytes(17)],
)
def test_request_truncated_needs_data(impl: ModuleType, data: bytes) -> None:
    c = ci.in_request(impl)
    c.receive_data(data)
    assert c.next_event() is impl.NEED_DATA
    assert c.phase == Phase.REQUEST
    assert c.trailing_data == data


# --------------------------------------------------------------------------
# A whole conversation in one receive_data().


def test_pipelined_greeting_auth_request(impl: ModuleType) -> None:
    payload = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
    request = b"\x05\x01\x00\x03\x0bexample.com\x00\x50"
    c = impl.ServerCodec()
    c.receive_data(b"\x05\x02\x00\x02" + ci.USERPASS_OK + request + payload)
    assert event_fields(c.next_event()) == ("Greeting", (b"\x00\x02",))
    assert c.next_event() is impl.NEED_DATA
    assert c.send_method(0x02) == b"\x05\x02"
    assert event_fields(c.next_event()) == ("UserPass", (b"user", b"secret"))
    assert c.next_event() is impl.NEED_DATA
    assert c.trailing_data == request + payload
    assert c.send_auth_status(True) == b"\x01\x00"
    assert event_fields(c.next_event()) == ("Request", (1, 3, "example.com", 80))
    assert c.next_event() is impl.NEED_DATA
    assert c.send_reply(0, "192.0.2.9", 40000) == b"\x05\x00\x00\x01\xc0\x00\x02\x09\x9c\x40"
    assert c.phase == Phase.ESTABLISHED
    assert c.next_event() is impl.NEED_DATA
    assert c.trailing_data == payload


def test_pipelined_noauth_request_byte_by_byte(impl: ModuleType) -> None:
    stream = ci.GREETING_NOAUTH + ci.CONNECT_V4 + b"payload"
    c = impl.ServerCodec()
    seen = []
    for i in range(len(stream)):
        c.receive_data(stream[i : i + 1])
        ev = c.next_event()
        if ev is impl.NEED_DATA:
            continue
        seen.append((i + 1, event_fields(ev)))
        if c.phase == Phase.METHOD:
            c.send_method(0x00)
        elif c.phase == Phase.REPLY:
            c.send_reply(0)
    assert seen == [(3, ("Greeting", (b"\x00",))), (13, ("Request", (1, 1, "192.0.2.1", 80)))]
    assert c.trailing_data == b"payload"
    assert c.phase == Phase.ESTABLISHED


def test_data_after_established_is_kept(impl: ModuleType) -> None:
    c = ci.in_phase(impl, Phase.ESTABLISHED)
    for chunk in (b"abc", bytearray(b"def"), memoryview(b"ghi")):
        c.receive_data(chunk)
        assert c.next_event() is impl.NEED_DATA
    assert c.trailing_data == b"abcdefghi"
    assert type(c.trailing_data) is bytes


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "memoryview-slice"])
def test_receive_data_accepts_bytes_like(impl: ModuleType, kind: str) -> None:
    def conv(b: bytes) -> Any:
        if kind == "bytes":
            return b
        if kind == "bytearray":
            return bytearray(b)
        if kind == "memoryview":
            return memoryview(b)
        return memoryview(b"xx" + b + b"yy")[2:-2]

    stream = ci.GREETING_NOAUTH + ci.CONNECT_V4 + b"tail"
    # whole, then split so that each later call appends to leftover bytes
    for cuts in ([len(stream)], [1, 4, 5, 9, len(stream)], list(range(1, len(stream) + 1))):
        c = impl.ServerCodec()
        events = []
        start = 0
        for cut in cuts:
            c.receive_data(conv(stream[start:cut]))
            start = cut
            while (ev := c.next_event()) is not impl.NEED_DATA:
                events.append(event_fields(ev))
                if c.phase == Phase.METHOD:
                    c.send_method(0)
        assert events == [("Greeting", (b"\x00",)), ("Request", (1, 1, "192.0.2.1", 80))]
        assert c.trailing_data == b"tail"
        assert type(c.trailing_data) is bytes


def test_receive_data_copies_mutable_input(impl: ModuleType) -> None:
    c = impl.ServerCodec()
    buf = bytearray(b"\x05\x02")
    c.receive_data(buf)
    buf[:] = b"\x04\x04"  # the caller reuses its buffer
    c.receive_data(memoryview(buf)[:0])
    more = bytearray(b"\x00\x02")
    c.receive_data(more)
    more[0] = 0xFF
    assert event_fields(c.next_event()) == ("Greeting", (b"\x00\x02",))


def test_receive_data_empty(impl: ModuleType) -> None:
    c = impl.ServerCodec()
    c.receive_data(b"")
    assert c.next_event() is impl.NEED_DATA
    c.receive_data(b"\x05")
    c.receive_data(b"")
    assert c.next_event() is impl.NEED_DATA
    c.receive_data(bytearray())
    c.receive_data(b"\x01\x00")
    assert event_fields(c.next_event()) == ("Greeting", (b"\x00",))


# --------------------------------------------------------------------------
# Replies: VER REP RSV ATYP BND.ADDR BND.PORT (RFC 1928 §6).


@pytest.mark.parametrize(
    ("host", "port", "tail"),
    [
        ("192.0.2.1", 1080, b"\x01\xc0\x00\x02\x01\x04\x38"),
        ("0.0.0.0", 0, b"\x01\x00\x00\x00\x00\x00\x00"),
        ("255.255.255.255", 65535, b"\x01\xff\xff\xff\xff\xff\xff"),
        ("2001:db8::1", 443, b"\x04" + socket.inet_pton(socket.AF_INET6, "2001:db8::1")
         + b"\x01\xbb"),
        ("::", 0, b"\x04" + bytes(16) + b"\x00\x00"),
        ("fe80::1%eth0", 5000, b"\x04\xfe\x80" + bytes(13) + b"\x01\x13\x88"),
        ("fe80::1%2", 5000, b"\x04\xfe\x80" + bytes(13) + b"\x01\x13\x88"),
        ("::ffff:192.0.2.1", 80, b"\x04" + bytes(10) + b"\xff\xff\xc0\x00\x02\x01\x00\x50"),
        ("proxy.example", 1080, b"\x03\x0dproxy.example\x04\x38"),
        ("a" * 255, 1, b"\x03\xff" + b"a" * 255 + b"\x00\x01"),
        ("bücher.example", 80, b"\x03\x0fb\xc3\xbccher.example\x00\x50"),
        ("01.2.3.4", 80, b"\x03\x0801.2.3.4\x00\x50"),  # not a strict dotted quad
        ("1.2.3", 80, b"\x03\x051.2.3\x00\x50"),
    ],
    ids=["v4", "v4-zero", "v4-max", "v6", "v6-any", "v6-scoped", "v6-scope-index",
         "v4-mapped", "domain", "domain-255", "domain-utf8", "leading-zero", "three-parts"],
)
def test_send_reply_success(impl: ModuleType, host: str, port: int, tail: bytes) -> None:
    c = ci.in_reply(impl)
    assert c.send_reply(0, host, port) == b"\x05\x00\x00" + tail
    assert c.phase == Phase.ESTABLISHED


def test_send_reply_defaults(impl: ModuleType) -> None:
    c = ci.in_reply(impl)
    assert c.send_reply(0) == b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    assert c.phase == Phase.ESTABLISHED


@pytest.mark.parametrize("command", [1, 3], ids=["connect", "udp"])
def test_send_reply_one_reply_establishes(impl: ModuleType, command: int) -> None:
    c = ci.in_reply(impl, command)
    c.send_reply(0, "192.0.2.1", 40000)
    assert c.phase == Phase.ESTABLISHED
    with pytest.raises(RuntimeError):
        c.send_reply(0)


def test_bind_needs_two_replies(impl: ModuleType) -> None:
    c = ci.in_reply(impl, 0x02)
    assert c.command == 0x02
    first = c.send_reply(0, "192.0.2.1", 40000)  # the listening address
    assert first == b"\x05\x00\x00\x01\xc0\x00\x02\x01\x9c\x40"
    assert c.phase == Phase.REPLY
    second = c.send_reply(0, "198.51.100.7", 5555)  # the peer that connected
    assert second == b"\x05\x00\x00\x01\xc6\x33\x64\x07\x15\xb3"
    assert c.phase == Phase.ESTABLISHED
    with pytest.raises(RuntimeError):
        c.send_reply(0)


def test_bind_second_reply_failure_closes(impl: ModuleType) -> None:
    c = ci.in_reply(impl, 0x02)
    c.send_reply(0, "192.0.2.1", 40000)
    assert c.send_reply(0x06)[:2] == b"\x05\x06"
    assert c.phase == Phase.CLOSED


def test_bind_first_reply_failure_closes(impl: ModuleType) -> None:
    c = ci.in_reply(impl, 0x02)
    c.send_reply(0x02)
    assert c.phase == Phase.CLOSED
    with pytest.raises(RuntimeError):
        c.send_reply(0)


@pytest.mark.parametrize("command", [1, 2, 3])
@pytest.mark.parametrize("rep", [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0xFF])
def test_send_reply_failure_closes(impl: ModuleType, command: int, rep: int) -> None:
    c = ci.in_reply(impl, command)
    c.receive_data(b"early payload")
    assert c.send_reply(rep) == bytes((0x05, rep)) + b"\x00\x01\x00\x00\x00\x00\x00\x00"
    assert c.phase == Phase.CLOSED
    assert c.next_event() is impl.NEED_DATA
    assert c.trailing_data == b"early payload"


def test_send_reply_enum(impl: ModuleType) -> None:
    from fastsocks.constants import Reply

    c = ci.in_reply(impl)
    assert c.send_reply(Reply.COMMAND_NOT_SUPPORTED) == _reply_error(0x07)


@pytest.mark.parametrize("port", [-1, 65536, 100000, 2**31, 2**32 + 80, 2**64, -(2**63)])
def test_send_reply_bad_port(impl: ModuleType, port: int) -> None:
    c = ci.in_reply(impl)
    with pytest.raises(ValueError, match="port"):
        c.send_reply(0, "192.0.2.1", port)
    assert c.phase == Phase.REPLY  # nothing was sent; a correct reply still can be
    assert c.send_reply(0, "192.0.2.1", 65535)[-2:] == b"\xff\xff"


@pytest.mark.parametrize("rep", [-1, 0x100, 2**40])
def test_send_reply_bad_code(impl: ModuleType, rep: int) -> None:
    c = ci.in_reply(impl)
    with pytest.raises(ValueError, match="reply code"):
        c.send_reply(rep)
    assert c.phase == Phase.REPLY


@pytest.mark.parametrize("host", ["", "a" * 256, "é" * 128, "1:2:3", "fe80::1::2", ":::",
                                  "2001:db8::g", "\ud800", "\ud800:1"])
def test_send_reply_bad_host(impl: ModuleType, host: str) -> None:
    c = ci.in_reply(impl)
    with pytest.raises(ValueError):
        c.send_reply(0, host, 80)
    assert c.phase == Phase.REPLY


@pytest.mark.parametrize("rep", [0x00, 0x01, 0x04, 0x05, 0xFF])
@pytest.mark.parametrize("host, port", [("0.0.0.0", 0), ("127.0.0.1", 41000),
                                        ("2001:db8::1", 443), ("fe80::1%eth0", 5000),
                                        ("proxy.example", 1080)])
def test_encode_reply_is_send_reply_outside_a_conversation(
        impl: ModuleType, rep: int, host: str, port: int) -> None:
    """What the engine sends once its connect is done: the bytes send_reply gives."""
    c = ci.in_reply(impl)
    assert impl.encode_reply(rep, host, port) == c.send_reply(rep, host, port)
    assert impl.encode_reply(rep) == ci.in_reply(impl).send_reply(rep)


@pytest.mark.parametrize("args", [(0x100,), (-1,), (0, "192.0.2.1", 65536), (0, "", 80),
                                  (0, "1:2:3", 80), (0, "\ud800", 80)])
def test_encode_reply_bad_arguments(impl: ModuleType, args: tuple) -> None:
    with pytest.raises(ValueError):
        impl.encode_reply(*args)


# --------------------------------------------------------------------------
# send_*() in the wrong phase.

SENDERS = {
    "send_method": (Phase.METHOD, lambda c: c.send_method(0x00)),
    "send_auth_status": (Phase.USERPASS_STATUS, lambda c: c.send_auth_status(True)),
    "send_reply": (Phase.REPLY, lambda c: c.send_reply(0)),
}


@pytest.mark.parametrize("phase", list(Phase), ids=[p.name.lower() for p in Phase])
@pytest.mark.parametrize("sender", list(SENDERS))
def test_send_in_wrong_phase_is_runtimeerror(impl: ModuleType, phase: Phase, sender: str) -> None:
    valid_phase, call = SENDERS[sender]
    c = ci.in_phase(impl, phase)
    if phase == valid_phase:
        assert isinstance(call(c), bytes)
        return
    trailing = c.trailing_data
    with pytest.raises(RuntimeError, match=sender):
        call(c)
    assert c.phase == phase
    assert c.trailing_data == trailing


def test_send_method_twice(impl: ModuleType) -> None:
    c = ci.in_phase(impl, Phase.METHOD)
    c.send_method(0x02)
    with pytest.raises(RuntimeError):
        c.send_method(0x02)


def test_send_after_protocol_error(impl: ModuleType) -> None:
    c = ci.in_request(impl)
    c.receive_data(b"\x05\x09")
    with pytest.raises(ProtocolError):
        c.next_event()
    for _, call in SENDERS.values():
        with pytest.raises(RuntimeError):
            call(c)
    assert c.send_error() == _reply_error(0x07)


# --------------------------------------------------------------------------
# encode_address (RFC 1928 §5).


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("192.0.2.1", 80, b"\x01\xc0\x00\x02\x01\x00\x50"),
        ("0.0.0.0", 0, b"\x01\x00\x00\x00\x00\x00\x00"),
        ("255.255.255.255", 65535, b"\x01\xff\xff\xff\xff\xff\xff"),
        ("::1", 53, b"\x04" + bytes(15) + b"\x01\x00\x35"),
        ("2001:DB8::1", 53, b"\x04" + socket.inet_pton(socket.AF_INET6, "2001:db8::1")
         + b"\x00\x35"),
        ("2001:db8:0:0:0:0:0:1", 53, b"\x04" + socket.inet_pton(socket.AF_INET6, "2001:db8::1")
         + b"\x00\x35"),
        ("fe80::1%eth0", 1, b"\x04\xfe\x80" + bytes(13) + b"\x01\x00\x01"),
        ("::ffff:1.2.3.4", 1, b"\x04" + bytes(10) + b"\xff\xff\x01\x02\x03\x04\x00\x01"),
        ("example.com", 443, b"\x03\x0bexample.com\x01\xbb"),
        ("x" * 255, 443, b"\x03\xff" + b"x" * 255 + b"\x01\xbb"),
        ("ü" * 127, 1, b"\x03\xfe" + "ü".encode() * 127 + b"\x00\x01"),
        ("256.1.1.1", 1, b"\x03\x09256.1.1.1\x00\x01"),
        ("1.2.3.4.", 1, b"\x03\x081.2.3.4.\x00\x01"),
        (" 1.2.3.4", 1, b"\x03\x08 1.2.3.4\x00\x01"),
        ("1.2.3.4\x00", 1, b"\x03\x081.2.3.4\x00\x00\x01"),
        ("١.٢.٣.٤", 1, b"\x03" + bytes((len("١.٢.٣.٤".encode()),)) + "١.٢.٣.٤".encode()
         + b"\x00\x01"),
    ],
    ids=["v4", "v4-zero", "v4-max", "v6-loopback", "v6-upper", "v6-long", "v6-scoped",
         "v4-mapped", "domain", "domain-255", "domain-utf8-254", "v4-octet-256", "v4-dot",
         "v4-space", "v4-nul", "arabic-digits"],
)
def test_encode_address(impl: ModuleType, host: str, port: int, expected: bytes) -> None:
    assert impl.encode_address(host, port) == expected


@pytest.mark.parametrize("port", [-1, 65536, 2**31, 2**32, 2**64])
def test_encode_address_bad_port(impl: ModuleType, port: int) -> None:
    with pytest.raises(ValueError, match="port out of range"):
        impl.encode_address("192.0.2.1", port)
    with pytest.raises(ValueError, match="port out of range"):
        impl.encode_address("example.com", port)
    with pytest.raises(ValueError, match="port out of range"):
        impl.encode_address("\ud800", port)  # the port is checked first, in both


@pytest.mark.parametrize("port", [80.0, "80", None])
def test_encode_address_port_not_int(impl: ModuleType, port: Any) -> None:
    with pytest.raises(TypeError):
        impl.encode_address("192.0.2.1", port)


@pytest.mark.parametrize("host", ["", "a" * 256, "ü" * 128, "1:2:3", "fe80::1::2%eth0",
                                  "gggg::1", "\ud800", "\ud800:1", "x\udcff"])
def test_encode_address_bad_host(impl: ModuleType, host: str) -> None:
    with pytest.raises(ValueError):
        impl.encode_address(host, 80)


def test_encode_address_bad_host_same_error_type() -> None:
    if ci.C is None:
        pytest.skip(ci.C_MISSING_REASON)
    for host in ["", "a" * 256, "1:2:3", "\ud800", "\ud800:1", "x\udcff"]:
        errors = []
        for impl in (ci.C, ci.PY):
            with pytest.raises(ValueError) as info:
                impl.encode_address(host, 80)
            errors.append((type(info.value), str(info.value)))
        assert errors[0] == errors[1], host


# --------------------------------------------------------------------------
# UDP request header (RFC 1928 §7).

UDP_CASES = [
    (b"\x01\xc0\x00\x02\x01\x00\x35", 1, "192.0.2.1", 53),
    (b"\x04" + socket.inet_pton(socket.AF_INET6, "2001:db8::53") + b"\x00\x35", 4,
     "2001:db8::53", 53),
    (b"\x03\x0bexample.com\x01\xbb", 3, "example.com", 443),
    (b"\x03\xff" + b"n" * 255 + b"\xff\xff", 3, "n" * 255, 65535),
    (b"\x01\x00\x00\x00\x00\x00\x00", 1, "0.0.0.0", 0),
]
UDP_IDS = ["v4", "v6", "domain", "domain-255", "zero"]


@pytest.mark.parametrize(("addr", "atyp", "host", "port"), UDP_CASES, ids=UDP_IDS)
@pytest.mark.parametrize("frag", [0x00, 0x01, 0x7F, 0x80, 0xFF])
@pytest.mark.parametrize("payload", [b"", b"\x00", b"dns query payload" * 10],
                         ids=["no-payload", "1-byte", "170-bytes"])
@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview],
                         ids=["bytes", "bytearray", "memoryview"])
def test_parse_udp_header(impl: ModuleType, addr: bytes, atyp: int, host: str, port: int,
                          frag: int, payload: bytes, kind: Any) -> None:
    datagram = b"\x00\x00" + bytes((frag,)) + addr + payload
    h = impl.parse_udp_header(kind(datagram))
    assert type(h) is impl.UdpHeader
    assert ci.typed_event_fields(h) == ci.typed_event_fields(
        ci.PY.UdpHeader(frag, atyp, host, port, 3 + len(addr)))
    assert datagram[h.length :] == payload


@pytest.mark.parametrize("rsv", [b"\x00\x01", b"\x01\x00", b"\xff\xff", b"\x80\x00"])
def test_parse_udp_header_rsv_nonzero(impl: ModuleType, rsv: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        impl.parse_udp_header(rsv + b"\x00\x01\xc0\x00\x02\x01\x00\x35payload")
    assert info.value.reply_code == 0x01


@pytest.mark.parametrize(("addr", "atyp", "host", "port"), UDP_CASES, ids=UDP_IDS)
def test_parse_udp_header_short(impl: ModuleType, addr: bytes, atyp: int, host: str,
                                port: int) -> None:
    datagram = b"\x00\x00\x00" + addr
    impl.parse_udp_header(datagram)
    for n in range(len(datagram)):
        with pytest.raises(ProtocolError) as info:
            impl.parse_udp_header(datagram[:n])
        assert info.value.reply_code == 0x01, n


@pytest.mark.parametrize("atyp", [0x00, 0x02, 0x05, 0xFF])
def test_parse_udp_header_unknown_atyp(impl: ModuleType, atyp: int) -> None:
    with pytest.raises(ProtocolError) as info:
        impl.parse_udp_header(b"\x00\x00\x00" + bytes((atyp,)) + b"\xc0\x00\x02\x01\x00\x35")
    assert info.value.reply_code == 0x08


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_parse_udp_header_bad_domain(impl: ModuleType, kind: Any) -> None:
    with pytest.raises(ProtocolError) as info:
        impl.parse_udp_header(kind(b"\x00\x00\x00\x03\x00\x00\x35"))
    assert info.value.reply_code == 0x01
    with pytest.raises(ProtocolError) as info:
        impl.parse_udp_header(kind(b"\x00\x00\x00\x03\x02\xff\xfe\x00\x35"))
    assert info.value.reply_code == 0x04


@pytest.mark.parametrize("name", CONTROL_NAMES, ids=CONTROL_IDS)
@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_parse_udp_header_control_byte(impl: ModuleType, name: bytes, kind: Any) -> None:
    header = b"\x00\x00\x00\x03" + bytes((len(name),)) + name + b"\x00\x35"
    for datagram in (header, header + b"payload"):
        with pytest.raises(ProtocolError, match="domain name contains control byte") as info:
            impl.parse_udp_header(kind(datagram))
        assert info.value.reply_code == 0x04
    # A fragment too (FRAG is read before the address, the address all the same).
    with pytest.raises(ProtocolError):
        impl.parse_udp_header(kind(b"\x00\x00\x81" + header[3:]))


@pytest.mark.parametrize(
    ("host", "canonical", "atyp"),
    [("192.0.2.1", "192.0.2.1", 1), ("2001:db8::1", "2001:db8::1", 4),
     ("2001:DB8:0::1", "2001:db8::1", 4), ("fe80::1%eth0", "fe80::1", 4),
     ("example.com", "example.com", 3), ("bücher.example", "bücher.example", 3)],
)
@pytest.mark.parametrize("port", [0, 53, 65535])
@pytest.mark.parametrize("frag", [0, 1, 255])
def test_udp_header_round_trip(impl: ModuleType, host: str, canonical: str, atyp: int,
                               port: int, frag: int) -> None:
    header = impl.build_udp_header(host, port, frag)
    assert header == b"\x00\x00" + bytes((frag,)) + impl.encode_address(host, port)
    h = impl.parse_udp_header(header + b"data")
    assert event_fields(h) == ("UdpHeader", (frag, atyp, canonical, port, len(header)))


def test_build_udp_header_default_frag(impl: ModuleType) -> None:
    assert impl.build_udp_header("192.0.2.1", 53) == b"\x00\x00\x00\x01\xc0\x00\x02\x01\x00\x35"


@pytest.mark.parametrize("frag", [-1, 256, 2**32, 2**64])
def test_build_udp_header_bad_frag(impl: ModuleType, frag: int) -> None:
    with pytest.raises(ValueError, match="frag out of range"):
        impl.build_udp_header("192.0.2.1", 53, frag)


@pytest.mark.parametrize("port", [-1, 65536, 2**40])
def test_build_udp_header_bad_port(impl: ModuleType, port: int) -> None:
    with pytest.raises(ValueError, match="port out of range"):
        impl.build_udp_header("192.0.2.1", port)


def test_build_udp_header_bad_host(impl: ModuleType) -> None:
    with pytest.raises(ValueError):
        impl.build_udp_header("", 53)
    with pytest.raises(ValueError):
        impl.build_udp_header("1:2:3", 53)


# --------------------------------------------------------------------------
# One public API for both implementations.


def test_twin_all_is_the_public_api() -> None:
    """``_codec_py.__all__`` names what it defines, and the C codec has the same names."""
    public = {n for n in vars(ci.PY) if not n.startswith("_")}
    imported = {"annotations", "operator", "re", "socket", "dataclass", "Phase", "ProtocolError"}
    assert set(ci.PY.__all__) == public - imported
    assert len(ci.PY.__all__) == len(set(ci.PY.__all__))
    if ci.C is not None:
        assert {n for n in dir(ci.C) if not n.startswith("_")} - {"ProtocolError"} == set(
            ci.PY.__all__)
