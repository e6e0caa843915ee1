#!/usr/bin/env python3
"""atheris (libFuzzer) target over protocol detection and the SOCKS4/4a parser.

Each input is a stream of bytes a client sends first on a listener:

* **detection**: ``Session._detected`` (the session's own code, on a stand-in
  session) routes the first byte under the protocols the input's first
  byte picks for the listener (bit 0 socks5, bit 1 socks4, bit 2 http): 5 to
  SOCKS5 (or 05 FF where it is not served), 4 to the SOCKS4 stage where it
  is served, everything else back to the SOCKS5 codec.  Nothing else may
  happen, and nothing may raise;
* **SOCKS4 parser**: the rest of the input, cut into chunks at input-chosen
  points, is fed as the SOCKS4 stage feeds it (the bytes so far, parsed
  again after each chunk) to the Cython codec and the pure twin;
* **reply encoder**: ``encode_socks4_reply`` with an input-chosen code, the
  request's own host and port (which may be no IPv4 address).

Invariants (a breach raises and stops the fuzzer, the input saved):

* only ``ProtocolError`` escapes ``parse_socks4_request``, ``ValueError``
  ``encode_socks4_reply``;
* both codecs agree on every result, error (message and reply code) and
  byte string;
* a prefix answers NEED_DATA or the whole stream's own answer: once an error
  or a request comes, every longer stream gives the same; a request's
  ``length`` lies within the bytes, and the buffer never holds more than a
  whole request (8 + 2 * 256 octets) without an answer;
* nothing reads out of bounds (the ASan build, as for fuzz_codec.py).

Run it like fuzz_codec.py (fuzz/README.md), e.g.
``python fuzz/fuzz_socks4.py -max_total_time=60 fuzz/corpus``.
"""

from __future__ import annotations

import sys

import atheris
from fuzz_codec import PY, C, ProtocolError  # the codecs, loaded as fuzz_codec loads them

from fastsocks.config import Settings
from fastsocks.control.session import Session

_PROTOCOLS = ("socks5", "socks4", "http")
_LONGEST = 8 + 2 * 256  # VN CD DSTPORT DSTIP, USERID + NUL, name + NUL


class Mismatch(AssertionError):
    pass


class _Server:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings


class _Stand:
    """What ``Session._detected`` touches: the server's settings, the listener, two exits."""

    def __init__(self, served: tuple[str, ...]) -> None:
        self.server = _Server(Settings(protocols=served or ("socks5",)))
        self.listener = ("127.0.0.1", 1080)
        self.calls: list[tuple[str, bytes]] = []

    def _end(self, data: bytes, reason: object, detail: str) -> None:
        self.calls.append(("end", data))

    def _start_socks4(self, data: bytes) -> None:
        self.calls.append(("socks4", data))

    def _start_http(self, data: bytes) -> None:
        self.calls.append(("http", data))


def fuzz_detection(data: bytes, mask: int) -> None:
    served = tuple(p for i, p in enumerate(_PROTOCOLS) if mask >> i & 1)
    stand = _Stand(served)
    handled = Session._detected(stand, data)  # type: ignore[arg-type]
    names = served or ("socks5",)
    first = data[0]
    if first == 5 and "socks5" not in names:
        expected = (True, [("end", b"\x05\xff")])
    elif first == 4 and "socks4" in names:
        expected = (True, [("socks4", data)])
    elif 0x41 <= first <= 0x5A and "http" in names:  # an HTTP method's first letter
        expected = (True, [("http", data)])
    else:
        expected = (False, [])
    if (handled, stand.calls) != expected:
        raise Mismatch(f"detection of {data[:8]!r} with {names}: {(handled, stand.calls)} "
                       f"!= {expected}")


def _parse(codec, data: bytes):
    try:
        got = codec.parse_socks4_request(data)
    except ProtocolError as exc:
        return ("raise", str(exc), exc.reply_code)
    if got is codec.NEED_DATA:
        return ("NEED_DATA",)
    if not 0 < got.length <= len(data):
        raise Mismatch(f"length {got.length} outside {len(data)} bytes")
    return ("ok", got.command, got.host, got.port, got.userid, got.socks4a, got.length)


def _encode(codec, code: int, host: str, port: int):
    try:
        return ("ok", codec.encode_socks4_reply(code, host, port))
    except ValueError as exc:
        return ("raise", type(exc).__name__, str(exc))


def fuzz_socks4(stream: bytes, cuts: bytes, code: int) -> None:
    buf = b""
    answer = None
    pos = 0
    for i in range(len(cuts) + 1):
        size = cuts[i] % 64 if i < len(cuts) else len(stream)
        chunk, pos = stream[pos:pos + size], pos + size
        if not chunk and i < len(cuts):
            continue
        buf += chunk
        c_out = _parse(C, buf)
        py_out = _parse(PY, buf)
        if c_out != py_out:
            raise Mismatch(f"c {c_out!r} != py {py_out!r} on {buf!r}")
        if answer is not None and c_out != answer:
            raise Mismatch(f"{c_out!r} after {answer!r}: a longer stream changed the answer")
        if c_out[0] == "NEED_DATA":
            if len(buf) > _LONGEST:
                raise Mismatch(f"{len(buf)} bytes buffered without an answer")
        else:
            answer = c_out
        if pos >= len(stream):
            break
    if answer is not None and answer[0] == "ok":
        host, port = answer[2], answer[3]
        for cd in (code, 90, 91):
            c_out, py_out = _encode(C, cd, host, port), _encode(PY, cd, host, port)
            if c_out != py_out:
                raise Mismatch(f"encode {cd} {host!r} {port}: c {c_out!r} != py {py_out!r}")


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' name
    if len(data) < 3:
        return
    # byte 0: protocols served (bits 0-2) and the number of chunk sizes (bits 3-6);
    # byte 1: a reply code to encode; then the sizes, then the client's bytes.
    mask, code = data[0], data[1]
    ncuts = (mask >> 3) & 0x0F
    cuts, stream = data[2:2 + ncuts], data[2 + ncuts:]
    if not stream:
        return
    fuzz_detection(stream, mask & 0x07)
    if stream[0] == 4:
        fuzz_socks4(stream, cuts, code)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
