"""The PROXY protocol header parser (HAProxy's proxy-protocol.txt, v1 and v2).

Every case runs on the Cython codec and on its pure-Python twin, three ways
(whole; every prefix, which must be NEED_DATA or the same error; with the
client's bytes after it, which the header must not swallow), plus a
hypothesis differential: both implementations give the same answer (event
or error message) for any bytes, and only ProtocolError escapes.
"""

from __future__ import annotations

import socket
import struct
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fastsocks import codec
from fastsocks.errors import ProtocolError

try:
    import codec_impls as ci
except ImportError:  # tests/ became a package
    from tests import codec_impls as ci  # type: ignore[no-redef]

SIG = b"\r\n\r\n\x00\r\nQUIT\n"
AF_INET, AF_INET6, AF_UNIX = int(socket.AF_INET), int(socket.AF_INET6), int(socket.AF_UNIX)
FIELDS = ("version", "local", "family", "src_host", "src_port", "dst_host", "dst_port", "tlvs",
          "length")
# What a SOCKS client sends after the header: must stay the client's.
CLIENT = b"\x05\x01\x00"


def fields(ev: Any) -> tuple[Any, ...]:
    if type(ev).__name__ == "_NeedData":
        return ("NEED_DATA",)
    return tuple((type(getattr(ev, f)).__name__, getattr(ev, f)) for f in FIELDS)


def header(version: int = 1, local: bool = False, family: int = 0, src: str | None = None,
           sport: int = 0, dst: str | None = None, dport: int = 0,
           tlvs: tuple[tuple[int, bytes], ...] = (), length: int = 0) -> tuple[Any, ...]:
    return fields(ci.PY.ProxyHeader(version, local, family, src, sport, dst, dport, tlvs, length))


def v2(cmd: int, fam: int, body: bytes) -> bytes:
    return SIG + bytes((0x20 | cmd, fam)) + struct.pack("!H", len(body)) + body


def inet(src: str, dst: str, sport: int, dport: int) -> bytes:
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)


def inet6(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
            + struct.pack("!HH", sport, dport))


def tlv(kind: int, value: bytes) -> bytes:
    return bytes((kind,)) + struct.pack("!H", len(value)) + value


def tr(impl: ModuleType, data: bytes, expected: tuple[Any, ...]) -> None:
    """Whole, every prefix (NEED_DATA), and with the client's bytes after it."""
    assert fields(impl.parse_proxy_header(data)) == expected
    for i in range(len(data)):
        assert fields(impl.parse_proxy_header(data[:i])) == ("NEED_DATA",), f"after {i} bytes"
    got = impl.parse_proxy_header(data + CLIENT)
    assert fields(got) == expected
    assert (data + CLIENT)[got.length:] == CLIENT
    # Any bytes-like object, as a receive buffer may hand it over.
    assert fields(impl.parse_proxy_header(bytearray(data))) == expected
    assert fields(impl.parse_proxy_header(memoryview(data + CLIENT))) == expected


def tr_error(impl: ModuleType, data: bytes, match: str, detect_at: int | None = None) -> None:
    """Whole, byte by byte (NEED_DATA until ``detect_at`` bytes), with trailing bytes."""
    detect_at = len(data) if detect_at is None else detect_at
    with pytest.raises(ProtocolError, match=match):
        impl.parse_proxy_header(data)
    for i in range(detect_at):
        assert fields(impl.parse_proxy_header(data[:i])) == ("NEED_DATA",), f"after {i} bytes"
    with pytest.raises(ProtocolError, match=match):
        impl.parse_proxy_header(data[:detect_at])
    with pytest.raises(ProtocolError, match=match):
        impl.parse_proxy_header(data + CLIENT)


def test_selector_exports_the_parser() -> None:
    chosen = ci.C if codec.IMPLEMENTATION == "c" else ci.PY
    assert codec.parse_proxy_header is chosen.parse_proxy_header
    assert codec.ProxyHeader is chosen.ProxyHeader
    assert "parse_proxy_header" in codec.__all__ and "ProxyHeader" in codec.__all__


# -- version 1 (§2.1) -----------------------------------------------------------------


@pytest.mark.parametrize("line, expected", [
    (b"PROXY TCP4 192.0.2.5 198.51.100.1 56324 1080\r\n",
     (AF_INET, "192.0.2.5", 56324, "198.51.100.1", 1080)),
    (b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
     (AF_INET, "0.0.0.0", 0, "255.255.255.255", 65535)),
    (b"PROXY TCP6 2001:db8::5 2001:0db8:0:0::1 1 2\r\n",
     (AF_INET6, "2001:db8::5", 1, "2001:db8::1", 2)),  # normalised
    (b"PROXY TCP6 ::ffff:192.0.2.1 ::1 443 1080\r\n",
     (AF_INET6, "::ffff:192.0.2.1", 443, "::1", 1080)),
])
def test_v1_tcp(impl: ModuleType, line: bytes, expected: tuple[Any, ...]) -> None:
    family, src, sport, dst, dport = expected
    tr(impl, line, header(1, False, family, src, sport, dst, dport, (), len(line)))


@pytest.mark.parametrize("line", [
    b"PROXY UNKNOWN\r\n",
    b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n",  # the receiver must ignore the rest
    b"PROXY UNKNOWN whatever follows \x01\x7f\r\n",
])
def test_v1_unknown_is_local(impl: ModuleType, line: bytes) -> None:
    tr(impl, line, header(1, True, 0, None, 0, None, 0, (), len(line)))


def test_v1_longest_line(impl: ModuleType) -> None:
    # The spec's worst case is exactly 107 bytes.
    line = (b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
            b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n")
    assert len(line) == 104
    tr(impl, line, header(1, False, AF_INET6, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535,
                          "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535, (), 104))
    unknown = b"PROXY UNKNOWN " + b"x" * 91 + b"\r\n"
    assert len(unknown) == 107
    tr(impl, unknown, header(1, True, 0, None, 0, None, 0, (), 107))


@pytest.mark.parametrize("data, match, detect_at", [
    (b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n", "longer than 107", 107),
    (b"PROXY UNKNOWN " + b"x" * 200, "longer than 107", 107),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "LF without CR", None),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", "CR not followed by LF", None),
    (b"PROXZ TCP4", "must start with 'PROXY '", 5),
    (b"PROXYTCP4", "must start with 'PROXY '", 6),
    (b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol 'tcp4'", None),
    (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol 'TCP5'", None),
    (b"PROXY \r\n", "unknown protocol ''", None),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "expected 'PROXY TCP4 SRC DST SPORT DPORT'", None),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "expected", None),
    (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "expected", None),  # two spaces
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "expected", None),  # trailing space
    (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "bad TCP4 address '1.2.3'", None),
    (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "bad TCP4 address", None),
    (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "bad TCP4 address '::1'", None),
    (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "bad TCP6 address '1.2.3.4'", None),
    (b"PROXY TCP6 ::1%lo ::1 1 2\r\n", "bad TCP6 address", None),
    (b"PROXY TCP4 1.2.3.\xe9 5.6.7.8 1 2\r\n", "bad TCP4 address", None),
    (b"PROXY TCP6 ::\xe9 ::1 1 2\r\n", "bad TCP6 address", None),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "bad port '65536'", None),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 +2\r\n", "bad port '\\+2'", None),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 000080\r\n", "bad port", None),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \xb2\r\n", "bad port", None),
])
def test_v1_malformed(impl: ModuleType, data: bytes, match: str, detect_at: int | None) -> None:
    tr_error(impl, data, match, detect_at)


def test_not_a_proxy_header(impl: ModuleType) -> None:
    # A SOCKS client that reached a PROXY listener directly: refused on its first byte.
    tr_error(impl, b"\x05\x01\x00", r"no PROXY protocol header \(first byte 0x05\)", 1)
    tr_error(impl, b"GET / HTTP/1.1\r\n", "first byte 0x47", 1)
    assert fields(impl.parse_proxy_header(b"")) == ("NEED_DATA",)


# -- version 2 (§2.2) -----------------------------------------------------------------


def test_v2_inet(impl: ModuleType) -> None:
    data = v2(1, 0x11, inet("192.0.2.5", "198.51.100.1", 56324, 1080))
    tr(impl, data, header(2, False, AF_INET, "192.0.2.5", 56324, "198.51.100.1", 1080, (), 28))


def test_v2_inet6(impl: ModuleType) -> None:
    data = v2(1, 0x21, inet6("2001:db8::5", "::1", 1, 65535))
    tr(impl, data, header(2, False, AF_INET6, "2001:db8::5", 1, "::1", 65535, (), 52))


def test_v2_tlvs_walked_and_kept(impl: ModuleType) -> None:
    # ALPN, authority, a zero-length NOOP, a 0xEA (AWS) custom one.
    tlvs = ((0x01, b"h2"), (0x02, b"example.org"), (0x04, b""), (0xEA, b"\x01vpce-0123"))
    body = inet("10.0.0.1", "10.0.0.2", 1000, 2000) + b"".join(tlv(k, v) for k, v in tlvs)
    data = v2(1, 0x11, body)
    tr(impl, data, header(2, False, AF_INET, "10.0.0.1", 1000, "10.0.0.2", 2000, tlvs,
                          len(data)))


# -- PP2_TYPE_CRC32C (§2.2.5) ---------------------------------------------------------

# RFC 3720 B.4 (iSCSI uses the same CRC32c) and the usual check value.
CRC32C_VECTORS = [
    (b"123456789", 0xE3069283),
    (b"", 0x00000000),
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
]


@pytest.mark.parametrize("data, crc", CRC32C_VECTORS)
def test_crc32c_vectors(impl: ModuleType, data: bytes, crc: int) -> None:
    assert impl.crc32c(data) == crc
    assert impl.crc32c(bytearray(data)) == crc


def with_crc32c(cmd: int, fam: int, address: bytes, *after: tuple[int, bytes],
                byteorder: str = "big") -> bytes:
    """A v2 header as HAProxy's ``proxy-v2-options crc32c`` lays it out: the
    address block, the CRC32C TLV first, then the others; the checksum is
    computed over the whole header with its value zeroed, and written in
    network byte order."""
    body = address + tlv(0x03, bytes(4)) + b"".join(tlv(k, v) for k, v in after)
    data = bytearray(v2(cmd, fam, body))
    at = 16 + len(address) + 3
    data[at:at + 4] = ci.PY.crc32c(bytes(data)).to_bytes(4, byteorder)  # type: ignore[arg-type]
    return bytes(data)


@pytest.mark.parametrize("fam, address, src", [
    (0x11, inet("192.0.2.5", "198.51.100.1", 56324, 1080), "192.0.2.5"),
    (0x21, inet6("2001:db8::5", "::1", 56324, 1080), "2001:db8::5"),
    (0x31, b"/tmp/a".ljust(108, b"\0") + b"/tmp/b".ljust(108, b"\0"), None),
])
def test_v2_crc32c_checked_and_kept(impl: ModuleType, fam: int, address: bytes,
                                    src: str | None) -> None:
    data = with_crc32c(1, fam, address, (0x01, b"h2"), (0x04, b"\0" * 7))
    at = 16 + len(address) + 3
    got = impl.parse_proxy_header(data)
    assert got.src_host == src and got.length == len(data)
    assert got.tlvs == ((0x03, data[at:at + 4]), (0x01, b"h2"), (0x04, b"\0" * 7))
    tr(impl, data, fields(got))


def test_v2_crc32c_known_header(impl: ModuleType) -> None:
    # Worked by hand once: PROXY TCP4 127.0.0.1:40000 -> 127.0.0.1:1080, the
    # CRC32C TLV alone.
    data = with_crc32c(1, 0x11, inet("127.0.0.1", "127.0.0.1", 40000, 1080))
    assert data == (SIG + b"\x21\x11\x00\x13" + inet("127.0.0.1", "127.0.0.1", 40000, 1080)
                    + b"\x03\x00\x04" + ci.PY.crc32c(
                        SIG + b"\x21\x11\x00\x13" + inet("127.0.0.1", "127.0.0.1", 40000, 1080)
                        + b"\x03\x00\x04" + bytes(4)).to_bytes(4, "big"))
    assert impl.parse_proxy_header(data).src_port == 40000


@pytest.mark.parametrize("position", [5, 12, 13, 15, 16, 19, 24, 27, 31, 34, 38, 44])
def test_v2_crc32c_mismatch_refused(impl: ModuleType, position: int) -> None:
    """Any flipped bit fails the check (in the signature, the version, the family
    or the length another error comes first)."""
    good = with_crc32c(1, 0x11, inet("10.0.0.1", "10.0.0.2", 1000, 2000), (0x02, b"example"))
    bad = bytearray(good)
    bad[position] ^= 0x01
    if position < 12:
        tr_error(impl, bytes(bad), "bad signature", position + 1)
    elif position == 12:
        # PROXY became LOCAL, which is discarded unchecked (as HAProxy's own
        # receiver does): the balancer's own address is used, nothing forged.
        assert impl.parse_proxy_header(bytes(bad)).local
    elif position in (13, 15):  # family, length: refused all the same
        with pytest.raises(ProtocolError):
            impl.parse_proxy_header(bytes(bad) + bytes(8))
    else:
        tr_error(impl, bytes(bad), "CRC32C is 0x[0-9a-f]{8}, the header's is 0x[0-9a-f]{8}")


@pytest.mark.parametrize("data, match", [
    (with_crc32c(1, 0x11, inet("10.0.0.1", "10.0.0.2", 1, 2), byteorder="little"),
     "CRC32C is"),
    (v2(1, 0x11, inet("10.0.0.1", "10.0.0.2", 1, 2) + tlv(0x03, b"\0" * 3)),
     "CRC32C TLV of 3 bytes, not 4"),
    (v2(1, 0x11, inet("10.0.0.1", "10.0.0.2", 1, 2) + tlv(0x03, b"\0" * 5)),
     "CRC32C TLV of 5 bytes, not 4"),
    (v2(1, 0x11, inet("10.0.0.1", "10.0.0.2", 1, 2) + tlv(0x03, b"")),
     "CRC32C TLV of 0 bytes, not 4"),
    (with_crc32c(1, 0x11, inet("10.0.0.1", "10.0.0.2", 1, 2), (0x03, b"\0" * 4)),
     "more than one CRC32C TLV"),
    (v2(1, 0x11, inet("10.0.0.1", "10.0.0.2", 1, 2) + tlv(0x03, b"\1\2\3\4")),
     "CRC32C is 0x01020304"),
], ids=["little-endian", "short", "long", "empty", "twice", "wrong"])
def test_v2_crc32c_malformed(impl: ModuleType, data: bytes, match: str) -> None:
    tr_error(impl, data, match)


def test_v2_crc32c_local_is_discarded_unchecked(impl: ModuleType) -> None:
    # §2.2: LOCAL "must discard the protocol block including the family": the
    # connection's own endpoints are used, whatever its TLVs say.
    data = v2(0, 0x11, inet("10.0.0.1", "10.0.0.2", 1, 2) + tlv(0x03, b"\1\2\3\4"))
    tr(impl, data, header(2, True, 0, None, 0, None, 0, (), len(data)))


def test_v2_udp_transport_accepted(impl: ModuleType) -> None:
    data = v2(1, 0x12, inet("10.0.0.1", "10.0.0.2", 53, 53))
    tr(impl, data, header(2, False, AF_INET, "10.0.0.1", 53, "10.0.0.2", 53, (), 28))


@pytest.mark.parametrize("fam, body", [
    (0x00, b""),
    (0x11, inet("10.0.0.1", "10.0.0.2", 1, 2)),  # the address block is ignored for LOCAL
    (0x31, b"\x00" * 216),
    (0xFF, b"junk that is never looked at"),  # so is the family byte
])
def test_v2_local(impl: ModuleType, fam: int, body: bytes) -> None:
    data = v2(0, fam, body)
    tr(impl, data, header(2, True, 0, None, 0, None, 0, (), len(data)))


def test_v2_unspec_and_unix_carry_no_ip(impl: ModuleType) -> None:
    data = v2(1, 0x00, b"ignored")
    tr(impl, data, header(2, False, 0, None, 0, None, 0, (), len(data)))
    paths = b"/run/a.sock".ljust(108, b"\0") + b"/run/b.sock".ljust(108, b"\0")
    data = v2(1, 0x31, paths + tlv(0x04, b"x"))
    tr(impl, data, header(2, False, AF_UNIX, None, 0, None, 0, ((4, b"x"),), len(data)))


@pytest.mark.parametrize("data, match, detect_at", [
    (SIG[:5] + b"X" + SIG[6:] + b"\x21\x11\x00\x0c", "bad signature", 6),
    (b"\r\n\r\n\x01", "bad signature", 5),
    (SIG + b"\x11\x11\x00\x0c" + b"\x00" * 12, "version 1 is not 2", 16),
    (SIG + b"\x31\x11\x00\x0c" + b"\x00" * 12, "version 3 is not 2", 16),
    (SIG + b"\x22\x11\x00\x0c" + b"\x00" * 12, "command 0x2 is neither LOCAL nor PROXY", 16),
    (SIG + b"\x21\x41\x00\x0c" + b"\x00" * 12, "address family 0x4 unknown", None),
    (SIG + b"\x21\x13\x00\x0c" + b"\x00" * 12, "transport protocol 0x3 unknown", None),
    (SIG + b"\x21\x11\x00\x0b" + b"\x00" * 11, "11-byte address block too short for AF_INET",
     None),
    (SIG + b"\x21\x21\x00\x0c" + b"\x00" * 12, "too short for AF_INET6 \\(needs 36\\)", None),
    (SIG + b"\x21\x31\x00\x24" + b"\x00" * 36, "too short for AF_UNIX", None),
    (v2(1, 0x11, inet("1.2.3.4", "5.6.7.8", 1, 2) + b"\x04\x00"), "TLV runs past", None),
    (v2(1, 0x11, inet("1.2.3.4", "5.6.7.8", 1, 2) + b"\x04\x00\x02a"), "TLV runs past", None),
    (v2(1, 0x11, inet("1.2.3.4", "5.6.7.8", 1, 2) + tlv(1, b"h2") + b"\x02\xff\xff"),
     "TLV runs past", None),
])
def test_v2_malformed(impl: ModuleType, data: bytes, match: str, detect_at: int | None) -> None:
    tr_error(impl, data, match, detect_at)


def test_v2_waits_for_the_whole_declared_length(impl: ModuleType) -> None:
    body = inet("10.0.0.1", "10.0.0.2", 1, 2) + tlv(0x04, b"\0" * 1000)
    data = v2(1, 0x11, body)
    assert fields(impl.parse_proxy_header(data[:-1])) == ("NEED_DATA",)
    assert impl.parse_proxy_header(data).length == len(data)
    # The largest header the length field allows is bounded (16 + 65535 bytes).
    big = v2(1, 0x11, inet("10.0.0.1", "10.0.0.2", 1, 2) + tlv(0x04, b"\0" * (65535 - 15)))
    assert len(big) == 16 + 65535
    assert impl.parse_proxy_header(big).length == len(big)


def test_event_api(impl: ModuleType) -> None:
    h = impl.parse_proxy_header(v2(1, 0x11, inet("10.0.0.1", "10.0.0.2", 1, 2)))
    assert h == impl.ProxyHeader(2, False, AF_INET, "10.0.0.1", 1, "10.0.0.2", 2, (), 28)
    assert h != impl.ProxyHeader(2, False, AF_INET, "10.0.0.9", 1, "10.0.0.2", 2, (), 28)
    assert "10.0.0.1" in repr(h)
    with pytest.raises(AttributeError):
        h.src_host = "10.9.9.9"  # type: ignore[misc]


# -- differential (hypothesis) --------------------------------------------------------


def outcome(impl: ModuleType, data: bytes) -> tuple[Any, ...]:
    try:
        return ("ok", fields(impl.parse_proxy_header(data)))
    except ProtocolError as exc:
        return ("error", str(exc), exc.reply_code)


@st.composite
def proxy_inputs(draw: st.DrawFn) -> bytes:
    """Mostly near-valid headers, mutated: the interesting inputs are close to valid."""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        proto = draw(st.sampled_from([b"TCP4", b"TCP6", b"UNKNOWN", b"TCP"]))
        parts = [proto] + draw(st.lists(st.sampled_from(
            [b"1.2.3.4", b"::1", b"01.2.3.4", b"80", b"65535", b"65536", b"", b"2001:db8::1",
             b"\xff", b"1.2.3.4.5"]), max_size=5))
        data = b"PROXY " + b" ".join(parts) + draw(st.sampled_from([b"\r\n", b"\n", b"\r", b""]))
    elif kind == 1:
        cmd = draw(st.integers(0, 0xFF))
        fam = draw(st.integers(0, 0xFF))
        body = draw(st.binary(max_size=300))
        declared = draw(st.one_of(st.just(len(body)), st.integers(0, 400)))
        data = SIG + bytes((cmd, fam)) + struct.pack("!H", declared) + body
    elif kind == 2:
        tlvs = draw(st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=20)), max_size=4))
        body = inet("10.0.0.1", "10.0.0.2", 1, 2) + b"".join(tlv(k, v) for k, v in tlvs)
        body += draw(st.binary(max_size=3))
        data = v2(1, draw(st.sampled_from([0x11, 0x21, 0x31, 0x00])), body)
    else:
        data = draw(st.binary(max_size=120))
    cut = draw(st.integers(0, len(data)))
    return data[:cut] if draw(st.booleans()) else data + draw(st.binary(max_size=8))


@pytest.mark.skipif(ci.C is None, reason=ci.C_MISSING_REASON)
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(proxy_inputs())
@example(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n")
@example(SIG + b"\x21\x11\x00\x0f" + b"\x00" * 15)
@example(with_crc32c(1, 0x11, inet("10.0.0.1", "10.0.0.2", 1, 2), (0x01, b"h2")))
@example(with_crc32c(1, 0x11, inet("10.0.0.1", "10.0.0.2", 1, 2))[:-1] + b"\x00")
def test_c_and_python_agree(data: bytes) -> None:
    assert outcome(ci.C, data) == outcome(ci.PY, data)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_only_protocol_error(data: bytes) -> None:
    for impl in ci.IMPLEMENTATIONS:
        result = outcome(impl, data)
        if result[0] == "ok" and result[1] != ("NEED_DATA",):
            length = dict(result[1])
            assert 0 < impl.parse_proxy_header(data).length <= len(data), length
