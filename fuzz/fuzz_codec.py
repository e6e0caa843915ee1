#!/usr/bin/env python3
"""atheris (libFuzzer) target over the SOCKS5 codec: Cython against its pure twin.

Each input drives one of two things, chosen by its first byte:

* a server-side ``ServerCodec`` conversation: the rest of the input is a few
  policy bytes (which method the server picks, whether the credentials pass,
  the reply code and bound address it answers with) and then the bytes a
  client sends, cut into chunks at input-chosen points.  The harness acts as
  fastsocks' session does: it calls ``next_event()`` until NEED_DATA and
  answers each event with ``send_method`` / ``send_auth_status`` /
  ``send_reply``; after a ProtocolError it asks for ``send_error()``.
* ``parse_udp_header`` on the raw bytes (as bytes, bytearray or memoryview),
  and ``build_udp_header`` on what it parsed (first byte & 7 == 7);
* ``parse_proxy_header`` (PROXY protocol v1/v2) on the raw bytes (first
  byte & 7 == 6);
* a ``GssFramer`` (RFC 1961 messages) fed the stream in chunks, each parsed
  message framed again with ``gss_frame`` and compared with the bytes it
  came from (first byte & 7 == 5).

The Cython codec and the pure twin run the same script side by side.
Invariants, any breach of which raises (and so stops the fuzzer with the
input saved as crash-*):

* only ``ProtocolError`` escapes the parsers, whatever the input;
* both codecs agree on every event, exception (type, message, reply_code),
  byte string returned, phase, command and ``trailing_data``;
* nothing reads out of bounds: the Cython codec is the ASan build from
  fuzz/build.sh, so an overread in it aborts with an ASan report.

Run it as fuzz/README.md says (the sanitized build needs LD_PRELOAD and
FASTSOCKS_FUZZ_BUILD); with ``FASTSOCKS_FUZZ_BUILD`` unset it fuzzes the
normally built extension, without sanitizer or native coverage.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import os
import sys
import sysconfig

import atheris

BUILD = os.environ.get("FASTSOCKS_FUZZ_BUILD")


def _instrument():
    """Python-level coverage of the twin too, when FASTSOCKS_FUZZ_PY_COVERAGE=1
    (slower: a callback per branch; the C codec's own coverage is always on)."""
    if os.environ.get("FASTSOCKS_FUZZ_PY_COVERAGE") == "1":
        return atheris.instrument_imports(include=["fastsocks._codec_py"])
    return contextlib.nullcontext()


def _load_codecs():
    """(C codec, pure codec, ProtocolError), the C one from the sanitized build if asked."""
    if BUILD:
        # Keep the normal extensions out of this process: the only C codec in it
        # is the instrumented one, registered under its real name so its
        # relative import (``from .errors import ProtocolError``) works.
        os.environ["FASTSOCKS_NO_EXTENSIONS"] = "1"
    with _instrument():
        from fastsocks import _codec_py  # fastsocks/__init__ imports it through .codec
    from fastsocks.errors import ProtocolError

    if BUILD:
        path = os.path.join(BUILD, "fastsocks", "_codec" + sysconfig.get_config_var("EXT_SUFFIX"))
        if not os.path.exists(path):
            sys.exit(f"{path} is missing: run bash fuzz/build.sh {BUILD}")
        loader = importlib.machinery.ExtensionFileLoader("fastsocks._codec", path)
        spec = importlib.util.spec_from_file_location("fastsocks._codec", path, loader=loader)
        c_codec = importlib.util.module_from_spec(spec)
        sys.modules["fastsocks._codec"] = c_codec
        spec.loader.exec_module(c_codec)
    else:
        from fastsocks import _codec as c_codec
    assert c_codec.IMPLEMENTATION == "c" and _codec_py.IMPLEMENTATION == "py"
    print(f"fuzz_codec: C codec from {c_codec.__file__}", file=sys.stderr)
    return c_codec, _codec_py, ProtocolError


C, PY, ProtocolError = _load_codecs()

# Addresses the server answers with (its real bound address in fastsocks);
# index 0xFF means "echo the request's own host", which may not be encodable.
REPLY_HOSTS = ("0.0.0.0", "127.0.0.1", "::1", "::", "fe80::1%lo", "2001:db8::1",
               "example.com", "a" * 255, "\u00e9t\u00e9.example", "255.255.255.255")
MAX_CHUNKS = 16


class Mismatch(AssertionError):
    pass


def _outcome(fn, *args):
    """('ok', value) or ('raise', type name, message, reply_code); anything but the
    allowed exceptions propagates (and stops the fuzzer)."""
    try:
        return ("ok", fn(*args))
    except ProtocolError as exc:
        return ("raise", "ProtocolError", str(exc), exc.reply_code)


def _api_outcome(fn, *args):
    """The same for send_* / build_*: ValueError is their documented answer to an
    argument out of range (a programming error, not peer input)."""
    try:
        return ("ok", fn(*args))
    except ValueError as exc:
        return ("raise", type(exc).__name__, str(exc), None)


def _event_key(event):
    """A comparable, implementation-neutral form of an event."""
    name = type(event).__name__
    if name == "_NeedData":
        return ("NEED_DATA",)
    if name == "Greeting":
        return (name, event.methods)
    if name == "UserPass":
        return (name, event.username, event.password)
    if name == "Request":
        return (name, event.command, event.atyp, event.host, event.port)
    if name == "UdpHeader":
        return (name, event.frag, event.atyp, event.host, event.port, event.length)
    raise Mismatch(f"unknown event type {name}: {event!r}")


def _norm(outcome):
    if outcome[0] == "ok":
        value = outcome[1]
        if isinstance(value, (bytes, int, type(None))):
            return outcome
        return ("ok", _event_key(value))
    return outcome


def _same(what, c_out, py_out, data):
    a, b = _norm(c_out), _norm(py_out)
    if a != b:
        raise Mismatch(f"{what}: C {a!r} != py {b!r} on input {data!r}")
    return a


def _check_state(c, p, data):
    if (c.phase, c.command, c.trailing_data) != (p.phase, p.command, p.trailing_data):
        raise Mismatch(
            f"state: C {(c.phase, c.command, c.trailing_data)!r} != "
            f"py {(p.phase, p.command, p.trailing_data)!r} on input {data!r}"
        )


class Reader:
    """The input as a little header then a byte stream (see fuzz/README.md).

    A plain layout rather than atheris.FuzzedDataProvider so that the seed
    corpus can be written by hand: missing header bytes read as zero.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        b = self.data[self.pos] if self.pos < len(self.data) else 0
        self.pos += 1
        return b

    def rest(self) -> bytes:
        return self.data[self.pos:]


def _chunks(r):
    """Split the stream: one count byte, then that many chunk sizes (0..63 each),
    then the stream; the last chunk is whatever is left."""
    n = r.byte() % MAX_CHUNKS
    sizes = [r.byte() % 64 for _ in range(n)]
    rest = r.rest()
    out, pos = [], 0
    for size in sizes:
        out.append(rest[pos:pos + size])
        pos += size
    out.append(rest[pos:])
    return out, rest


def fuzz_server(r, data):
    """Header: policy, reply code, reply host choice, port (2 bytes), splits."""
    policy = r.byte()
    want_userpass = bool(policy & 0x01)   # a users file is configured
    want_gssapi = bool(policy & 0x10)     # GSSAPI configured: X'01' when offered
    auth_ok = bool(policy & 0x02)
    wrap = (policy >> 2) & 0x03           # bytes / bytearray / memoryview
    rep = r.byte()
    host_choice = r.byte()
    port = (r.byte() << 8) | r.byte()
    chunks, stream = _chunks(r)

    c, p = C.ServerCodec(), PY.ServerCodec()
    _check_state(c, p, data)
    done = False
    for chunk in chunks:
        if wrap == 1:
            chunk = bytearray(chunk)
        elif wrap == 2:
            chunk = memoryview(chunk)
        c.receive_data(chunk)
        p.receive_data(chunk)
        _check_state(c, p, data)
        while not done:
            out = _same("next_event", _outcome(c.next_event), _outcome(p.next_event), data)
            _check_state(c, p, data)
            if out[0] == "raise":
                _same("send_error", ("ok", c.send_error()), ("ok", p.send_error()), data)
                done = True
                break
            key = out[1]
            if key[0] == "NEED_DATA":
                break
            if key[0] == "Greeting":
                wanted = 0x02 if want_userpass else 0x00
                method = wanted if wanted in key[1] else 0xFF
                if want_gssapi and 0x01 in key[1]:
                    method = 0x01
                _same("send_method", ("ok", c.send_method(method)), ("ok", p.send_method(method)), data)
                done = method == 0xFF
                if method == 0x01:
                    # The RFC 1961 exchange goes elsewhere; what follows stands
                    # in for the request as unwrapped from its MTYP 3 message.
                    _same("take_trailing_data", ("ok", c.take_trailing_data()),
                          ("ok", p.take_trailing_data()), data)
                    c.gssapi_established()
                    p.gssapi_established()
            elif key[0] == "UserPass":
                _same("send_auth_status", ("ok", c.send_auth_status(auth_ok)),
                      ("ok", p.send_auth_status(auth_ok)), data)
                done = not auth_ok
            elif key[0] == "Request":
                host = key[3] if host_choice == 0xFF else REPLY_HOSTS[host_choice % len(REPLY_HOSTS)]
                # BIND gets its second reply too (RFC 1928 §4): call twice when
                # the first succeeded and the codec still waits for one.
                for _ in range(2):
                    if c.phase != 5:
                        break
                    _same("send_reply", _api_outcome(c.send_reply, rep, host, port),
                          _api_outcome(p.send_reply, rep, host, port), data)
                    _check_state(c, p, data)
                # Established (6): the codec parses nothing more and keeps what
                # follows as payload for the relay; keep feeding it.
                done = c.phase != 6
            _check_state(c, p, data)
    # The codec never holds more than it was given.
    if len(c.trailing_data) > len(stream):
        raise Mismatch(f"trailing_data longer than the input: {data!r}")
    # Whatever state it is in, calling next_event again is harmless.
    _same("next_event (again)", _outcome(c.next_event), _outcome(p.next_event), data)
    _check_state(c, p, data)


def fuzz_udp(r, data):
    """Header: how to wrap the datagram, a frag value to build with; then the datagram."""
    wrap = r.byte() % 3
    frag_override = r.byte()
    raw = r.rest()
    arg = raw if wrap == 0 else bytearray(raw) if wrap == 1 else memoryview(raw)
    out = _same("parse_udp_header", _outcome(C.parse_udp_header, arg),
                _outcome(PY.parse_udp_header, arg), data)
    if out[0] != "ok":
        return
    _, frag, atyp, host, port, length = out[1]
    if not 4 < length <= len(raw):
        raise Mismatch(f"UDP header length {length} out of range for {raw!r}")
    if atyp == 0x03 and raw[4] != length - 7:
        raise Mismatch(f"UDP header length {length} does not match its name length: {raw!r}")
    built = _same("build_udp_header", _api_outcome(C.build_udp_header, host, port, frag),
                  _api_outcome(PY.build_udp_header, host, port, frag), data)
    _same("build_udp_header(frag)", _api_outcome(C.build_udp_header, host, port, frag_override),
          _api_outcome(PY.build_udp_header, host, port, frag_override), data)
    _same("encode_address", _api_outcome(C.encode_address, host, port),
          _api_outcome(PY.encode_address, host, port), data)
    if built[0] == "ok":
        # What we build, both parse back to the same header.
        _same("parse(build)", _outcome(C.parse_udp_header, built[1]),
              _outcome(PY.parse_udp_header, built[1]), data)


def _proxy_key(outcome):
    if outcome[0] != "ok" or type(outcome[1]).__name__ == "_NeedData":
        return outcome if outcome[0] != "ok" else ("ok", "NEED_DATA")
    h = outcome[1]
    return ("ok", (h.version, h.local, h.family, h.src_host, h.src_port, h.dst_host,
                   h.dst_port, h.tlvs, h.length))


def fuzz_proxy(r, data):
    """PROXY protocol header (v1/v2): header byte picks the wrapping; then the bytes."""
    wrap = r.byte() % 3
    raw = r.rest()
    arg = raw if wrap == 0 else bytearray(raw) if wrap == 1 else memoryview(raw)
    c_out = _proxy_key(_outcome(C.parse_proxy_header, arg))
    py_out = _proxy_key(_outcome(PY.parse_proxy_header, arg))
    if c_out != py_out:
        raise Mismatch(f"parse_proxy_header: C {c_out!r} != py {py_out!r} on input {data!r}")
    if c_out[0] == "ok" and c_out[1] != "NEED_DATA" and not 0 < c_out[1][-1] <= len(raw):
        raise Mismatch(f"PROXY header length {c_out[1][-1]} out of range for {raw!r}")


def _gss_key(outcome):
    if outcome[0] != "ok":
        return outcome
    m = outcome[1]
    return ("ok", "NEED_DATA") if type(m).__name__ == "_NeedData" else ("ok", (m.mtyp, m.token))


def fuzz_gssapi(r, data):
    """RFC 1961 framing: header byte picks the wrapping, then splits, then the stream."""
    wrap = r.byte() % 3
    chunks, stream = _chunks(r)
    c, p = C.GssFramer(), PY.GssFramer()
    parsed = []
    failed = False
    for chunk in chunks:
        arg = chunk if wrap == 0 else bytearray(chunk) if wrap == 1 else memoryview(chunk)
        c.receive_data(arg)
        p.receive_data(arg)
        for _ in range(len(stream) + 1):
            c_out = _gss_key(_outcome(c.next_message))
            if c_out != _gss_key(_outcome(p.next_message)):
                raise Mismatch(f"next_message: C {c_out!r} != py on input {data!r}")
            if c_out[0] != "ok":
                failed = True
                break
            if c_out[1] == "NEED_DATA":
                break
            parsed.append(c_out[1])
        if c.trailing_data != p.trailing_data:
            raise Mismatch(f"GssFramer trailing_data differs on input {data!r}")
        if failed:
            break
    # Framing each message again gives back exactly the bytes it came from.
    framed = b"".join(C.gss_frame(m, t) for m, t in parsed)
    if framed != b"".join(PY.gss_frame(m, t) for m, t in parsed) or not stream.startswith(framed):
        raise Mismatch(f"gss_frame does not give back the parsed bytes: {data!r}")


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' name
    r = Reader(data)
    mode = r.byte() & 0x07
    if mode == 0x07:
        fuzz_udp(r, data)
    elif mode == 0x06:
        fuzz_proxy(r, data)
    elif mode == 0x05:
        fuzz_gssapi(r, data)
    else:
        fuzz_server(r, data)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
