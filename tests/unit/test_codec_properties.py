"""Property tests of the SOCKS5 codec (hypothesis), on both implementations.

1. Whatever the bytes and however they are split, a ServerCodec driven as a
   server drives it raises nothing but ProtocolError, and loses no byte.
2. The Cython codec and the pure-Python twin, given the same stream, splits
   and server decisions, produce the same transcript: events, errors (type,
   message, reply code), send_*() bytes, phases and trailing data.
3. What one implementation encodes, the other decodes to the same address.
4. parse_udp_header() on any bytes raises only ProtocolError, the same way
   in both implementations.
"""

from __future__ import annotations

import ipaddress
import socket
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fastsocks.constants import Phase
from fastsocks.errors import ProtocolError

try:
    import codec_impls as ci
except ImportError:  # tests/ became a package
    from tests import codec_impls as ci  # type: ignore[no-redef]

# Bounded: the whole file runs in seconds, not minutes.
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
QUICK = settings(max_examples=300, deadline=None)

needs_c = pytest.mark.skipif(ci.C is None, reason=ci.C_MISSING_REASON)

PAIRS = [
    pytest.param(ci.C, ci.PY, id="c-to-py"),
    pytest.param(ci.PY, ci.C, id="py-to-c"),
]


# --------------------------------------------------------------------------
# Strategies.


@st.composite
def greetings(draw: st.DrawFn, auth: int | None = None) -> bytes:
    """A greeting; ``auth``, when given, is among the methods offered."""
    methods = draw(st.lists(st.sampled_from([0x00, 0x01, 0x02, 0x80, 0xFF]), max_size=3))
    if auth is not None:
        methods.insert(draw(st.integers(0, len(methods))), auth)
    return bytes((0x05, len(methods))) + bytes(methods)


@st.composite
def userpasses(draw: st.DrawFn) -> bytes:
    user = draw(st.binary(max_size=20))
    pw = draw(st.binary(max_size=20))
    return bytes((0x01, len(user))) + user + bytes((len(pw),)) + pw


ipv4_hosts = st.ip_addresses(v=4).map(str)
ipv6_hosts = st.ip_addresses(v=6).map(str)
# Names that encode_address() keeps as names: no ":" (that means IPv6), not a
# dotted quad, 1..255 octets of UTF-8 (no surrogates), and no C0 control or
# DEL (which the parsers refuse: RFC 1928 §5 names carry no NUL).
_NOT_IN_NAMES = ":" + "".join(map(chr, range(0x20))) + "\x7f"
domain_hosts = (
    st.text(st.characters(codec="utf-8", exclude_characters=_NOT_IN_NAMES), min_size=1,
            max_size=80)
    | st.from_regex(r"[a-z0-9-]{1,63}(\.[a-z0-9-]{1,63}){0,3}", fullmatch=True)
    | st.just("a" * 255)
).filter(lambda h: 0 < len(h.encode("utf-8")) <= 255 and not _is_ipv4(h))
ports = st.integers(0, 0xFFFF)


def _is_ipv4(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET, host)
    except (OSError, ValueError):
        return False
    return True


@st.composite
def addresses(draw: st.DrawFn) -> bytes:
    """ATYP DST.ADDR DST.PORT, mostly well formed."""
    kind = draw(st.sampled_from(["v4", "v6", "domain", "raw-domain", "other"]))
    if kind == "v4":
        addr = b"\x01" + draw(st.binary(min_size=4, max_size=4))
    elif kind == "v6":
        addr = b"\x04" + draw(st.binary(min_size=16, max_size=16))
    elif kind == "domain":
        name = draw(domain_hosts).encode("utf-8")
        addr = b"\x03" + bytes((len(name),)) + name
    elif kind == "raw-domain":  # any octets: empty, non-UTF-8
        name = draw(st.binary(max_size=12))
        addr = b"\x03" + bytes((len(name),)) + name
    else:
        addr = bytes((draw(st.integers(0, 255)),)) + draw(st.binary(max_size=6))
    return addr + draw(ports).to_bytes(2, "big")


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    cmd = draw(st.sampled_from([1, 1, 2, 3, 0, 4, 0xFF]))
    rsv = draw(st.sampled_from([0, 0, 0, 1, 0xFF]))
    return bytes((0x05, cmd, rsv)) + draw(addresses())


@st.composite
def conversations(draw: st.DrawFn) -> bytes:
    """A client's byte stream: mostly valid messages, sometimes mutated."""
    auth = draw(st.sampled_from([0x00, 0x00, 0x02, 0x02, None]))
    parts = [draw(greetings(auth))]
    if auth == 0x02 or (auth is None and draw(st.booleans())):
        parts.append(draw(userpasses()))
    parts.append(draw(requests()))
    if draw(st.booleans()):
        parts.append(draw(requests()))  # BIND's peer, or garbage after a request
    parts.append(draw(st.binary(max_size=16)))  # payload
    data = bytearray(b"".join(parts))
    mutation = draw(st.sampled_from(["none", "none", "bytes", "truncate"]))
    if mutation == "bytes":
        for i, b in draw(st.lists(st.tuples(st.integers(0, len(data) - 1),
                                            st.integers(0, 255)), min_size=1, max_size=3)):
            data[i] = b
    elif mutation == "truncate":
        del data[draw(st.integers(0, len(data))):]
    return bytes(data)


# Mostly plausible conversations (to reach every phase), some raw bytes.
streams = st.one_of(conversations(), conversations(), conversations(), st.binary(max_size=64))


def _as(kind: str, b: bytes) -> Any:
    if kind == "bytearray":
        return bytearray(b)
    if kind == "memoryview":
        return memoryview(b"<" + b + b">")[1:-1]
    return b


@st.composite
def split_streams(draw: st.DrawFn) -> tuple[bytes, list[Any]]:
    """A stream and the receive_data() chunks it arrives in (empty ones too)."""
    data = draw(streams)
    if draw(st.integers(0, 9)) == 0:
        cuts = list(range(len(data) + 1))  # one byte at a time
    else:
        cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=8)))
    bounds = [0, *cuts, len(data)]
    kinds = st.sampled_from(["bytes", "bytes", "bytearray", "memoryview"])
    chunks = [_as(draw(kinds), data[a:b]) for a, b in zip(bounds, bounds[1:])]
    return data, chunks


choices = st.lists(st.integers(0, 2**16), min_size=1, max_size=8)


# --------------------------------------------------------------------------
# 1. Only ProtocolError escapes, and no byte is lost.


def _reconstruct(log: list[tuple[Any, ...]], data: bytes) -> bytes:
    """The bytes the events of ``log`` were parsed from (RSV taken from data)."""
    out = bytearray()
    for entry in log:
        if entry[0] != "event":
            continue
        name, typed = entry[1]
        v = [x for _, x in typed]
        if name == "Greeting":
            out += bytes((0x05, len(v[0]))) + v[0]
        elif name == "UserPass":
            out += bytes((0x01, len(v[0]))) + v[0] + bytes((len(v[1]),)) + v[1]
        elif name == "Request":
            command, atyp, host, port = v
            rsv = data[len(out) + 2]
            out += bytes((0x05, command, rsv, atyp))
            if atyp == 1:
                out += socket.inet_pton(socket.AF_INET, host)
            elif atyp == 4:
                out += socket.inet_pton(socket.AF_INET6, host)
            else:
                name_bytes = host.encode("utf-8")
                out += bytes((len(name_bytes),)) + name_bytes
            out += port.to_bytes(2, "big")
    return bytes(out)


@pytest.mark.parametrize("impl", ci.IMPL_PARAMS)
@FUZZ
@given(stream=split_streams(), decisions=choices)
@example(stream=(b"\x05\x01\x00\x05\x01\x00\x03\x00\x00\x50", [b"\x05\x01\x00\x05\x01\x00\x03\x00\x00\x50"]),
         decisions=[0])
@example(stream=(b"\x04\x01\x00\x50", [b"\x04", b"\x01\x00\x50"]), decisions=[0])
def test_only_protocol_error_escapes(impl: ModuleType, stream: tuple[bytes, list[Any]],
                                     decisions: list[int]) -> None:
    data, chunks = stream
    log = ci.drive(impl, chunks, decisions)  # anything but ProtocolError propagates
    end = log[-1]
    assert end[0] == "end"
    phase, trailing = end[1], end[3]
    assert type(trailing) is bytes
    consumed = ci.message_sizes(log)
    fed = sum(e[1] for e in log if e[0] == "received")
    # Nothing lost, nothing invented: parsed messages + trailing = all bytes fed.
    assert consumed + len(trailing) == fed
    assert _reconstruct(log, data) + trailing == data[:fed]
    errors = [e for e in log if e[0] == "error"]
    if errors:
        (name, _msg, code, err_phase, to_send) = errors[0][1:]
        assert name == "ProtocolError" and err_phase == Phase.CLOSED
        assert code in (0x01, 0x04, 0x07, 0x08)
        assert to_send in (b"", b"\x01\x01", ci.SOCKS4_REJECT,
                           bytes((0x05, code, 0, 1, 0, 0, 0, 0, 0, 0)))
        assert phase == Phase.CLOSED
    for entry in log:
        if entry[0] == "event":
            name, typed = entry[1]
            assert name in ci.EVENT_FIELDS
            if name == "Request":
                (_, command), (_, atyp), _host, (_, port) = typed
                assert command in (1, 2, 3) and atyp in (1, 3, 4) and 0 <= port <= 0xFFFF


@pytest.mark.parametrize("impl", ci.IMPL_PARAMS)
@QUICK
@given(data=st.binary(max_size=300), decisions=choices)
def test_only_protocol_error_escapes_in_every_phase(impl: ModuleType, data: bytes,
                                                    decisions: list[int]) -> None:
    # Arbitrary bytes straight into each parsing phase, whole and byte by byte.
    for phase in (Phase.GREETING, Phase.USERPASS, Phase.REQUEST):
        for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
            c = ci.in_phase(impl, phase)
            for chunk in chunks:
                c.receive_data(chunk)
                try:
                    ev = c.next_event()
                except ProtocolError as exc:
                    assert c.phase == Phase.CLOSED
                    assert isinstance(c.send_error(), bytes)
                    assert 0 <= exc.reply_code <= 0xFF
                    break
                if ev is not impl.NEED_DATA:
                    assert c.phase == phase + 1
                    assert data.endswith(c.trailing_data)
                    break


# --------------------------------------------------------------------------
# 2. Differential: the two implementations agree on everything.


@needs_c
@FUZZ
@given(stream=split_streams(), decisions=choices)
def test_c_and_python_agree(stream: tuple[bytes, list[Any]], decisions: list[int]) -> None:
    _, chunks = stream
    c_log = ci.drive(ci.C, chunks, decisions, catch_all=True)
    py_log = ci.drive(ci.PY, chunks, decisions, catch_all=True)
    assert c_log == py_log


@needs_c
@QUICK
@given(data=st.binary(max_size=80), cut=st.integers(0, 80))
def test_c_and_python_agree_per_phase(data: bytes, cut: int) -> None:
    for phase in (Phase.GREETING, Phase.USERPASS, Phase.REQUEST):
        results = []
        for impl in (ci.C, ci.PY):
            c = ci.in_phase(impl, phase)
            out: list[Any] = []
            for chunk in (data[:cut], data[cut:]):
                c.receive_data(chunk)
                try:
                    out.append(ci.typed_event_fields(c.next_event()))
                except ProtocolError as exc:
                    out.append(("error", str(exc), exc.reply_code, c.send_error()))
                out.append((c.phase, c.command, c.trailing_data))
            results.append(out)
        assert results[0] == results[1]


# --------------------------------------------------------------------------
# 3. Encode with one implementation, decode with the other.

hosts = st.one_of(
    ipv4_hosts.map(lambda h: (h, 1)),
    ipv6_hosts.map(lambda h: (h, 4)),
    st.tuples(ipv6_hosts, st.sampled_from(["eth0", "1", "lo"])).map(
        lambda t: (f"{t[0]}%{t[1]}", 4)),
    domain_hosts.map(lambda h: (h, 3)),
)


def _same_host(decoded: str, sent: str, atyp: int) -> bool:
    if atyp == 4:
        return ipaddress.IPv6Address(decoded) == ipaddress.IPv6Address(sent.partition("%")[0])
    return decoded == sent


@pytest.mark.parametrize(("enc", "dec"), PAIRS)
@needs_c
@QUICK
@given(host=hosts, port=ports, frag=st.integers(0, 255), payload=st.binary(max_size=32))
def test_udp_header_cross_implementation(enc: ModuleType, dec: ModuleType,
                                         host: tuple[str, int], port: int, frag: int,
                                         payload: bytes) -> None:
    text, atyp = host
    header = enc.build_udp_header(text, port, frag)
    assert header == dec.build_udp_header(text, port, frag)
    h = dec.parse_udp_header(header + payload)
    assert (h.frag, h.atyp, h.port, h.length) == (frag, atyp, port, len(header))
    assert _same_host(h.host, text, atyp)
    assert (header + payload)[h.length :] == payload
    # Decoding is canonical: re-encoding the decoded host gives the same bytes.
    assert enc.build_udp_header(h.host, h.port, h.frag) == header


@pytest.mark.parametrize(("enc", "dec"), PAIRS)
@needs_c
@QUICK
@given(host=hosts, port=ports, command=st.sampled_from([1, 2, 3]),
       trailing=st.binary(max_size=16))
def test_request_cross_implementation(enc: ModuleType, dec: ModuleType,
                                      host: tuple[str, int], port: int, command: int,
                                      trailing: bytes) -> None:
    text, atyp = host
    addr = enc.encode_address(text, port)
    assert addr == dec.encode_address(text, port)
    c = ci.in_request(dec)
    c.receive_data(bytes((0x05, command, 0x00)) + addr + trailing)
    ev = c.next_event()
    name, (ev_command, ev_atyp, ev_host, ev_port) = ci.event_fields(ev)
    assert (name, ev_command, ev_atyp, ev_port) == ("Request", command, atyp, port)
    assert _same_host(ev_host, text, atyp)
    assert c.trailing_data == trailing
    assert enc.encode_address(ev_host, ev_port) == addr
    # And the reply the server sends with that host decodes the same way.
    reply = c.send_reply(0, text, port)
    assert reply == b"\x05\x00\x00" + addr


# --------------------------------------------------------------------------
# 4. parse_udp_header() on arbitrary bytes.

datagrams = st.one_of(
    st.binary(max_size=40),
    st.tuples(st.sampled_from([b"\x00\x00", b"\x00\x01", b"\x01\x00"]),
              st.integers(0, 255), addresses(), st.binary(max_size=8)).map(
        lambda t: t[0] + bytes((t[1],)) + t[2] + t[3]),
    st.tuples(addresses(), st.integers(0, 40)).map(lambda t: (b"\x00\x00\x00" + t[0])[: t[1]]),
)


def _udp_result(impl: ModuleType, data: Any) -> Any:
    try:
        return ci.typed_event_fields(impl.parse_udp_header(data))
    except ProtocolError as exc:
        return ("error", str(exc), exc.reply_code)


@pytest.mark.parametrize("impl", ci.IMPL_PARAMS)
@QUICK
@given(data=datagrams, kind=st.sampled_from(["bytes", "bytearray", "memoryview"]))
def test_parse_udp_header_only_protocol_error(impl: ModuleType, data: bytes, kind: str) -> None:
    result = _udp_result(impl, _as(kind, data))  # anything else propagates
    if result[0] == "UdpHeader":
        values = [v for _, v in result[1]]
        frag, atyp, _host, port, length = values
        assert data[:2] == b"\x00\x00" and frag == data[2] and atyp == data[3]
        assert 0 <= port <= 0xFFFF and 4 < length <= len(data)
    else:
        assert result[2] in (0x01, 0x04, 0x08)


@needs_c
@QUICK
@given(data=datagrams, kind=st.sampled_from(["bytes", "bytearray", "memoryview"]))
def test_parse_udp_header_implementations_agree(data: bytes, kind: str) -> None:
    assert _udp_result(ci.C, _as(kind, data)) == _udp_result(ci.PY, _as(kind, data))


# --------------------------------------------------------------------------
# Argument errors (programming errors, not peer input) agree too.

bad_ints = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([-1, 256, 65536, 2**31, 2**32, 2**63, 2**64, True, False]),
    st.floats(allow_nan=True),
    st.sampled_from(["80", None, b"\x00"]),
)


def _call(fn: Any, *args: Any) -> Any:
    try:
        return ("ok", fn(*args))
    except Exception as exc:
        return ("error", type(exc).__name__, str(exc))


@needs_c
@QUICK
@given(value=bad_ints, host=st.sampled_from(["192.0.2.1", "::1", "example.com", "", "\ud800",
                                              "\ud800:1", "1:2:3"]))
def test_argument_errors_agree(value: Any, host: str) -> None:
    def results(impl: ModuleType) -> list[Any]:
        out = [
            _call(impl.encode_address, host, value),
            _call(impl.build_udp_header, host, 53, value),
            _call(impl.build_udp_header, host, value),
        ]
        c = ci.in_phase(impl, Phase.METHOD)
        out.append(_call(c.send_method, value))
        out.append(c.phase)
        for args in ((value,), (0, host, value)):
            c = ci.in_reply(impl)
            out.append(_call(c.send_reply, *args))
            out.append(c.phase)
        return out

    assert results(ci.C) == results(ci.PY)


# --------------------------------------------------------------------------
# 6. Which octets a DST.ADDR name may hold (RFC 1928 §5): any but C0 controls
# and DEL, as valid UTF-8; the request and the datagram parsers agree.


def _name_ok(name: bytes) -> bool:
    try:
        name.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return not any(b < 0x20 or b == 0x7F for b in name)


@pytest.mark.parametrize("impl", ci.IMPL_PARAMS)
@QUICK
@given(name=st.binary(min_size=1, max_size=40) | st.text(min_size=1, max_size=20).map(
    lambda t: t.encode("utf-8", "surrogatepass")[:255]))
def test_name_octets_accepted_iff_utf8_without_controls(impl: ModuleType, name: bytes) -> None:
    address = b"\x03" + bytes((len(name),)) + name + b"\x00\x35"
    c = ci.in_request(impl)
    c.receive_data(b"\x05\x01\x00" + address)
    try:
        ev = c.next_event()
    except ProtocolError as exc:
        assert not _name_ok(name) and exc.reply_code == 0x04
    else:
        assert _name_ok(name) and ev.host == name.decode("utf-8")
    try:
        h = impl.parse_udp_header(b"\x00\x00\x00" + address)
    except ProtocolError as exc:
        assert not _name_ok(name) and exc.reply_code == 0x04
    else:
        assert _name_ok(name) and h.host == name.decode("utf-8")
