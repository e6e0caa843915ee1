"""RFC 1961 message framing (GssFramer, gss_frame) and the codec's GSSAPI phase.

Every case runs on the Cython codec and on the pure-Python twin (ids
``c``/``py``); each message is fed three ways (whole, one byte at a time,
with trailing bytes); hypothesis checks that only ProtocolError escapes and
that what one implementation frames the other parses identically.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastsocks import codec
from fastsocks.constants import Phase
from fastsocks.errors import ProtocolError

try:
    import codec_impls as ci
except ImportError:  # tests/ became a package
    from tests import codec_impls as ci  # type: ignore[no-redef]

QUICK = settings(max_examples=300, deadline=None)
needs_c = pytest.mark.skipif(ci.C is None, reason=ci.C_MISSING_REASON)
PAIRS = [
    pytest.param(ci.C, ci.PY, id="c-to-py", marks=needs_c),
    pytest.param(ci.PY, ci.C, id="py-to-c", marks=needs_c),
]

# Bytes after a message: a valid header would be a second message, so these
# start with a version the framer refuses if it ever reads them as one.
TRAILING = b"\x07trailing\x01\xff"


def fields(message: Any) -> tuple[Any, ...]:
    if type(message).__name__ == "_NeedData":
        return ("NEED_DATA",)
    return (type(message).__name__, message.mtyp, type(message.token).__name__, message.token)


def three_ways(impl: ModuleType, data: bytes, expected: tuple[int, bytes]) -> None:
    """``data`` is one message: whole, byte by byte, and with trailing bytes."""
    want = ("GssMessage", expected[0], "bytes", expected[1])
    f = impl.GssFramer()
    f.receive_data(data)
    assert fields(f.next_message()) == want
    assert f.next_message() is impl.NEED_DATA
    assert f.trailing_data == b""

    f = impl.GssFramer()
    for i in range(len(data) - 1):
        f.receive_data(data[i:i + 1])
        assert f.next_message() is impl.NEED_DATA, f"a message after {i + 1} bytes"
    f.receive_data(data[-1:])
    assert fields(f.next_message()) == want
    assert f.trailing_data == b""

    f = impl.GssFramer()
    f.receive_data(data + TRAILING)
    assert fields(f.next_message()) == want
    assert f.trailing_data == TRAILING


# -- parsing --------------------------------------------------------------------


@pytest.mark.parametrize("mtyp", [1, 2, 3])
@pytest.mark.parametrize("size", [0, 1, 255, 256, 4096, 65535])
def test_messages(impl: ModuleType, mtyp: int, size: int) -> None:
    token = bytes(i % 251 for i in range(size))
    data = bytes((1, mtyp, size >> 8, size & 0xFF)) + token
    if size > 300:  # byte by byte over 64 KiB is slow and proves nothing more
        f = impl.GssFramer()
        f.receive_data(data + TRAILING)
        assert fields(f.next_message()) == ("GssMessage", mtyp, "bytes", token)
        assert f.trailing_data == TRAILING
    else:
        three_ways(impl, data, (mtyp, token))


def test_abort_is_two_octets(impl: ModuleType) -> None:
    # RFC 1961 §3.8: VER MTYP, no LEN.
    three_ways(impl, b"\x01\xff", (0xFF, b""))


def test_several_messages_in_one_read(impl: ModuleType) -> None:
    f = impl.GssFramer()
    f.receive_data(b"\x01\x01\x00\x02ab\x01\x02\x00\x01c\x01\x03\x00\x00\x01\xff\x01\x03\x00")
    got = []
    for _ in range(10):
        m = f.next_message()
        if m is impl.NEED_DATA:
            break
        got.append((m.mtyp, m.token))
    assert got == [(1, b"ab"), (2, b"c"), (3, b""), (0xFF, b"")]
    assert f.trailing_data == b"\x01\x03\x00"
    f.receive_data(b"\x03xyz")
    assert fields(f.next_message()) == ("GssMessage", 3, "bytes", b"xyz")


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_receive_any_bytes_like(impl: ModuleType, kind: Any) -> None:
    f = impl.GssFramer()
    f.receive_data(kind(b"\x01\x03\x00\x02"))
    f.receive_data(kind(b"hi"))
    assert fields(f.next_message()) == ("GssMessage", 3, "bytes", b"hi")


@pytest.mark.parametrize(("data", "message"), [
    (b"\x00", "GSSAPI message version 0x00, expected 0x01"),
    (b"\x05\x01\x01", "GSSAPI message version 0x05, expected 0x01"),
    (b"\x02\x01\x00\x00", "GSSAPI message version 0x02, expected 0x01"),
    (b"\x01\x00", "GSSAPI message type 0x00 unknown"),
    (b"\x01\x04\x00\x00", "GSSAPI message type 0x04 unknown"),
    (b"\x01\xfe", "GSSAPI message type 0xfe unknown"),
], ids=["ver-0", "socks5", "ver-2", "mtyp-0", "mtyp-4", "mtyp-fe"])
def test_bad_header(impl: ModuleType, data: bytes, message: str) -> None:
    for way in ("whole", "bytewise"):
        f = impl.GssFramer()
        with pytest.raises(ProtocolError, match=message):
            if way == "whole":
                f.receive_data(data + TRAILING)
                f.next_message()
            else:  # the error comes with the first byte that shows it
                for i in range(len(data)):
                    f.receive_data(data[i:i + 1])
                    assert f.next_message() is impl.NEED_DATA
        # And again: nothing after a bad header is a message boundary.
        with pytest.raises(ProtocolError, match=message):
            f.next_message()


def test_message_repr_hides_the_token(impl: ModuleType) -> None:
    f = impl.GssFramer()
    f.receive_data(b"\x01\x01\x00\x06secret")
    m = f.next_message()
    assert repr(m) == "GssMessage(mtyp=0x01, token=<6 bytes>)"
    assert m == impl.GssMessage(1, b"secret") and m != impl.GssMessage(3, b"secret")


# -- framing --------------------------------------------------------------------


@pytest.mark.parametrize(("mtyp", "token", "expected"), [
    (1, b"", b"\x01\x01\x00\x00"),
    (2, b"\x7f", b"\x01\x02\x00\x01\x7f"),
    (3, b"x" * 300, b"\x01\x03\x01\x2c" + b"x" * 300),
    (3, b"y" * 65535, b"\x01\x03\xff\xff" + b"y" * 65535),
    (0xFF, b"", b"\x01\xff"),
])
def test_gss_frame(impl: ModuleType, mtyp: int, token: bytes, expected: bytes) -> None:
    assert impl.gss_frame(mtyp, token) == expected
    assert impl.GSS_ABORT == b"\x01\xff" and impl.GSS_TOKEN_MAX == 65535


@pytest.mark.parametrize(("mtyp", "token", "error"), [
    (0, b"", ValueError), (4, b"", ValueError), (256, b"", ValueError), (-1, b"", ValueError),
    (2**70, b"", ValueError), (3, b"z" * 65536, ValueError), (0xFF, b"x", ValueError),
    (3, bytearray(b"x"), TypeError), (3, "x", TypeError), (1.0, b"", TypeError),
])
def test_gss_frame_errors(impl: ModuleType, mtyp: Any, token: Any, error: type) -> None:
    with pytest.raises(error):
        impl.gss_frame(mtyp, token)


def test_selector_exports() -> None:
    assert codec.GssFramer.__module__.startswith("fastsocks._codec")
    assert codec.gss_frame(3, b"a") == b"\x01\x03\x00\x01a"
    assert codec.GSS_ABORT == b"\x01\xff"


# -- the ServerCodec's GSSAPI phase ------------------------------------------------


def test_codec_hands_the_subnegotiation_over(impl: ModuleType) -> None:
    c = impl.ServerCodec()
    c.receive_data(b"\x05\x02\x00\x01" + b"\x01\x01\x00\x03tok")
    assert ci.event_fields(c.next_event()) == ("Greeting", (b"\x00\x01",))
    assert c.send_method(0x01) == b"\x05\x01"
    assert c.phase == Phase.GSSAPI
    # RFC 1961 messages are not SOCKS: the codec parses none of them.
    assert c.next_event() is impl.NEED_DATA
    assert c.take_trailing_data() == b"\x01\x01\x00\x03tok"
    assert c.trailing_data == b""
    with pytest.raises(RuntimeError, match="send_reply"):
        c.send_reply(0)
    c.gssapi_established()
    assert c.phase == Phase.REQUEST
    # The request, as unwrapped from its MTYP 3 message, plus payload.
    c.receive_data(ci.CONNECT_V4 + b"early")
    assert ci.event_fields(c.next_event()) == ("Request", (1, 1, "192.0.2.1", 80))
    assert c.trailing_data == b"early"


@pytest.mark.parametrize("phase", [p for p in Phase if p != Phase.GSSAPI],
                         ids=lambda p: p.name.lower())
def test_gssapi_established_only_after_method_1(impl: ModuleType, phase: Phase) -> None:
    c = ci.in_phase(impl, phase)
    with pytest.raises(RuntimeError, match="gssapi_established"):
        c.gssapi_established()
    assert c.phase == phase


def test_take_trailing_data_empties_the_buffer(impl: ModuleType) -> None:
    c = impl.ServerCodec()
    c.receive_data(b"\x05\x01\x00abc")
    c.next_event()
    assert c.take_trailing_data() == b"abc"
    assert c.take_trailing_data() == b""
    c.send_method(0)
    c.receive_data(ci.CONNECT_V4)
    assert ci.event_fields(c.next_event())[0] == "Request"


# -- properties ----------------------------------------------------------------------

messages = st.lists(st.one_of(
    st.tuples(st.sampled_from([1, 2, 3]), st.binary(max_size=300)),
    st.just((0xFF, b"")),
), max_size=6)


def _parse_all(impl: ModuleType, data: bytes, cuts: list[int]) -> list[Any]:
    """Messages parsed from ``data`` fed in pieces; ends with ("rest"/"error", ..., unparsed)."""
    f = impl.GssFramer()
    out: list[Any] = []
    pos = 0
    for cut in sorted(set(c % (len(data) + 1) for c in cuts)) + [len(data)]:
        f.receive_data(data[pos:cut])
        pos = cut
        for _ in range(len(data) + 2):
            try:
                m = f.next_message()
            except ProtocolError as exc:
                out.append(("error", str(exc), exc.reply_code, f.trailing_data + data[pos:]))
                return out
            if m is impl.NEED_DATA:
                break
            out.append((m.mtyp, m.token))
    out.append(("rest", f.trailing_data))
    return out


@pytest.mark.parametrize(("enc", "dec"), PAIRS)
@QUICK
@given(items=messages, cuts=st.lists(st.integers(0, 4000), max_size=5))
def test_frame_with_one_parse_with_other(enc: ModuleType, dec: ModuleType, items: list[Any],
                                         cuts: list[int]) -> None:
    data = b"".join(enc.gss_frame(m, t) for m, t in items)
    assert data == b"".join(dec.gss_frame(m, t) for m, t in items)
    assert _parse_all(dec, data, cuts) == [*items, ("rest", b"")]


@pytest.mark.parametrize("impl", ci.IMPL_PARAMS)
@QUICK
@given(data=st.binary(max_size=200), cuts=st.lists(st.integers(0, 200), max_size=4))
def test_any_bytes_only_protocol_error(impl: ModuleType, data: bytes, cuts: list[int]) -> None:
    out = _parse_all(impl, data, cuts)  # anything but ProtocolError propagates
    consumed = sum(4 + len(t) if m != 0xFF else 2 for m, t in out[:-1])
    assert data[consumed:] == out[-1][-1]  # no byte lost or invented


@needs_c
@QUICK
@given(data=st.one_of(st.binary(max_size=200),
                      messages.map(lambda ms: b"".join(ci.PY.gss_frame(m, t) for m, t in ms))),
       cuts=st.lists(st.integers(0, 200), max_size=4))
def test_implementations_agree(data: bytes, cuts: list[int]) -> None:
    assert _parse_all(ci.C, data, cuts) == _parse_all(ci.PY, data, cuts)
