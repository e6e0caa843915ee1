"""Both SOCKS5 codec implementations, and helpers to drive and compare them.

Imported by conftest.py (the ``impl`` fixture) and the codec tests in
tests/unit/ (it is not a test module itself).  Every codec test runs on the Cython codec and on its
pure-Python twin; the events of the two are different classes, so they are
compared through ``event_fields()``.

``tr()`` and ``tr_error()`` feed one message three ways, after h11's helper
of the same name: whole, one byte at a time, and followed by trailing bytes
(which must come back in ``trailing_data``, never lost).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

import pytest

from fastsocks import _codec_py
from fastsocks.constants import Phase
from fastsocks.errors import ProtocolError

C_IMPORT_ERROR: ImportError | None
try:
    from fastsocks import _codec as _codec_c
except ImportError as exc:  # not built (FASTSOCKS_NO_EXTENSIONS=1 install, PyPy)
    _codec_c = None
    C_IMPORT_ERROR = exc
else:
    C_IMPORT_ERROR = None

#: The pure-Python twin, always importable.
PY: ModuleType = _codec_py
#: The Cython codec, or None when the extension is not built.
C: ModuleType | None = _codec_c

#: The implementations that loaded, Cython first.
IMPLEMENTATIONS: list[ModuleType] = [m for m in (C, PY) if m is not None]

C_MISSING_REASON = f"the Cython codec did not load: {C_IMPORT_ERROR!r}"

#: pytest parameters for a fixture or parametrize, ids "c" and "py".  The "c"
#: case is skipped, not failed, when the extension is absent: the single test
#: ``test_extension_loaded`` in test_codec.py is the one that fails for that.
IMPL_PARAMS = [
    pytest.param(C, id="c", marks=pytest.mark.skipif(C is None, reason=C_MISSING_REASON)),
    pytest.param(PY, id="py"),
]

#: The field names of each event type, in the order of the dataclass twin.
EVENT_FIELDS: dict[str, tuple[str, ...]] = {
    "Greeting": ("methods",),
    "UserPass": ("username", "password"),
    "Request": ("command", "atyp", "host", "port"),
    "UdpHeader": ("frag", "atyp", "host", "port", "length"),
}

#: Bytes that follow a message in the trailing-data runs; chosen so that
#: they would be a parse error (or a different message) if consumed.
TRAILING = b"\x05\xff\x00\x01trailing payload\r\n"

#: What send_error() gives a SOCKS4 client: a SOCKS4 "request rejected" reply.
SOCKS4_REJECT = b"\x00\x5b\x00\x00\x00\x00\x00\x00"

def event_fields(ev: Any) -> tuple[str, tuple[Any, ...]]:
    """(type name, field values) of a codec event, C or Python; NEED_DATA too."""
    name = type(ev).__name__
    if name == "_NeedData":
        return ("NEED_DATA", ())
    return name, tuple(getattr(ev, field) for field in EVENT_FIELDS[name])


def typed_event_fields(ev: Any) -> tuple[str, tuple[tuple[str, Any], ...]]:
    """Like event_fields() but each value paired with its exact type name.

    ``b"x" == bytearray(b"x")`` and ``1 == True``: comparing types as well
    catches an implementation that returns the right value in the wrong type.
    """
    name, values = event_fields(ev)
    return name, tuple((type(v).__name__, v) for v in values)


def assert_event(got: Any, expected: Any) -> None:
    """``expected`` is an event of either implementation or (name, values)."""
    want = expected if isinstance(expected, tuple) else typed_event_fields(expected)
    if isinstance(expected, tuple):
        assert event_fields(got) == want
    else:
        assert typed_event_fields(got) == want


# --------------------------------------------------------------------------
# Codecs put into a given phase by feeding them real messages.

GREETING_NOAUTH = b"\x05\x01\x00"
GREETING_USERPASS = b"\x05\x01\x02"
USERPASS_OK = b"\x01\x04user\x06secret"
CONNECT_V4 = b"\x05\x01\x00\x01\xc0\x00\x02\x01\x00\x50"  # 192.0.2.1:80


def fresh(impl: ModuleType) -> Any:
    return impl.ServerCodec()


def in_userpass(impl: ModuleType) -> Any:
    """A codec waiting for the RFC 1929 sub-negotiation."""
    c = impl.ServerCodec()
    c.receive_data(GREETING_USERPASS)
    assert event_fields(c.next_event()) == ("Greeting", (b"\x02",))
    assert c.send_method(0x02) == b"\x05\x02"
    assert c.phase == Phase.USERPASS
    return c


def in_request(impl: ModuleType, *, authenticated: bool = False) -> Any:
    """A codec waiting for the request (after no-auth, or after user/pass)."""
    if authenticated:
        c = in_userpass(impl)
        c.receive_data(USERPASS_OK)
        assert event_fields(c.next_event()) == ("UserPass", (b"user", b"secret"))
        assert c.send_auth_status(True) == b"\x01\x00"
    else:
        c = impl.ServerCodec()
        c.receive_data(GREETING_NOAUTH)
        assert event_fields(c.next_event()) == ("Greeting", (b"\x00",))
        assert c.send_method(0x00) == b"\x05\x00"
    assert c.phase == Phase.REQUEST
    return c


def in_reply(impl: ModuleType, command: int = 0x01) -> Any:
    """A codec that has parsed a request for ``command`` to 192.0.2.1:80."""
    c = in_request(impl)
    c.receive_data(bytes((0x05, command)) + CONNECT_V4[2:])
    assert event_fields(c.next_event()) == ("Request", (command, 1, "192.0.2.1", 80))
    assert c.phase == Phase.REPLY
    return c


def in_phase(impl: ModuleType, phase: Phase) -> Any:
    """A codec in ``phase``, reached the way a server would reach it."""
    if phase == Phase.GREETING:
        return fresh(impl)
    if phase == Phase.METHOD:
        c = impl.ServerCodec()
        c.receive_data(GREETING_NOAUTH)
        c.next_event()
    elif phase == Phase.USERPASS:
        c = in_userpass(impl)
    elif phase == Phase.USERPASS_STATUS:
        c = in_userpass(impl)
        c.receive_data(USERPASS_OK)
        c.next_event()
    elif phase == Phase.REQUEST:
        c = in_request(impl)
    elif phase == Phase.REPLY:
        c = in_reply(impl)
    elif phase == Phase.ESTABLISHED:
        c = in_reply(impl)
        c.send_reply(0)
    elif phase == Phase.CLOSED:
        c = impl.ServerCodec()
        c.receive_data(GREETING_NOAUTH)
        c.next_event()
        c.send_method(0xFF)
    elif phase == Phase.GSSAPI:
        c = impl.ServerCodec()
        c.receive_data(b"\x05\x01\x01")
        c.next_event()
        c.send_method(0x01)
    else:  # pragma: no cover - a new phase needs a recipe here
        raise AssertionError(f"no recipe for {phase!r}")
    assert c.phase == phase
    return c


# --------------------------------------------------------------------------
# h11-style three-way feeding.


def tr(make: Callable[[], Any], data: bytes, expected: Any) -> list[Any]:
    """Feed ``data`` (exactly one message) to fresh codecs from ``make`` three ways.

    Each way must give exactly ``expected`` (then NEED_DATA), consume exactly
    ``data``, and hand any following bytes back in ``trailing_data``.
    Returns the three codecs, after the event, for further checks.
    """
    assert data, "a message has at least one byte"
    codecs = []

    # 1. whole
    c = make()
    c.receive_data(data)
    assert_event(c.next_event(), expected)
    assert event_fields(c.next_event()) == ("NEED_DATA", ())
    assert c.trailing_data == b""
    codecs.append(c)

    # 2. one byte at a time: NEED_DATA until the last byte
    c = make()
    for i in range(len(data) - 1):
        c.receive_data(data[i : i + 1])
        assert event_fields(c.next_event()) == ("NEED_DATA", ()), f"event after {i + 1} bytes"
    c.receive_data(data[-1:])
    assert_event(c.next_event(), expected)
    assert event_fields(c.next_event()) == ("NEED_DATA", ())
    assert c.trailing_data == b""
    codecs.append(c)

    # 3. trailing bytes, in the same receive_data() ...
    c = make()
    c.receive_data(data + TRAILING)
    assert_event(c.next_event(), expected)
    assert event_fields(c.next_event()) == ("NEED_DATA", ())
    assert c.trailing_data == TRAILING

    # ... and one byte at a time across the boundary, then more in a later call
    c2 = make()
    stream = data + TRAILING
    events = []
    for i in range(len(stream)):
        c2.receive_data(stream[i : i + 1])
        ev = c2.next_event()
        if event_fields(ev) != ("NEED_DATA", ()):
            events.append((i + 1, ev))
    assert len(events) == 1 and events[0][0] == len(data)
    assert_event(events[0][1], expected)
    assert c2.trailing_data == TRAILING
    c2.receive_data(b"more")
    assert c2.trailing_data == TRAILING + b"more"
    assert event_fields(c2.next_event()) == ("NEED_DATA", ())
    assert c.phase == c2.phase
    codecs.append(c)
    return codecs


def tr_error(
    make: Callable[[], Any],
    data: bytes,
    reply_code: int,
    error_bytes: bytes,
    *,
    detect_at: int | None = None,
) -> None:
    """Feed bad ``data`` three ways: each must raise ProtocolError(reply_code).

    ``detect_at`` is how many bytes the codec needs to see the error (default
    all of ``data``): fed one byte at a time it must say NEED_DATA before
    that and raise exactly then.  After the error the phase is CLOSED,
    ``send_error()`` gives ``error_bytes``, and next_event() says NEED_DATA
    (it does not raise again, nor parse anything more).
    """
    if detect_at is None:
        detect_at = len(data)
    assert 1 <= detect_at <= len(data)

    def after(c: Any) -> None:
        assert c.phase == Phase.CLOSED
        assert c.send_error() == error_bytes
        assert event_fields(c.next_event()) == ("NEED_DATA", ())
        c.receive_data(b"\x05\x01\x00")
        assert event_fields(c.next_event()) == ("NEED_DATA", ())
        assert c.phase == Phase.CLOSED

    # 1. whole
    c = make()
    c.receive_data(data)
    with pytest.raises(ProtocolError) as info:
        c.next_event()
    assert info.value.reply_code == reply_code
    after(c)

    # 2. one byte at a time
    c = make()
    for i in range(detect_at - 1):
        c.receive_data(data[i : i + 1])
        assert event_fields(c.next_event()) == ("NEED_DATA", ()), f"event after {i + 1} bytes"
    c.receive_data(data[detect_at - 1 : detect_at])
    with pytest.raises(ProtocolError) as info:
        c.next_event()
    assert info.value.reply_code == reply_code
    after(c)

    # 3. with trailing bytes
    c = make()
    c.receive_data(data + TRAILING)
    with pytest.raises(ProtocolError) as info:
        c.next_event()
    assert info.value.reply_code == reply_code
    after(c)


# --------------------------------------------------------------------------
# A server-like driver, for the property tests.

_REPLY_HOSTS = ("0.0.0.0", "192.0.2.7", "::1", "2001:db8::5", "fe80::1%eth0", "proxy.example")
_REPLY_CODES = (0x00, 0x00, 0x00, 0x01, 0x02, 0x05, 0x07)


def drive(
    impl: ModuleType,
    chunks: Iterable[bytes | bytearray | memoryview],
    choices: list[int],
    *,
    catch_all: bool = False,
) -> list[tuple[Any, ...]]:
    """Feed ``chunks`` to one ServerCodec, answering events as a server would.

    ``choices`` (cycled) decide the method, the auth verdict, the reply code,
    address and port.  Returns a transcript: every event (typed fields), every
    send_*() result and phase, the error if one was raised, and the final
    phase, command and trailing data.  Only ProtocolError is caught (it ends
    the conversation, like a server closing), unless ``catch_all``, which
    records any exception instead, for comparing two implementations.
    """
    c = impl.ServerCodec()
    log: list[tuple[Any, ...]] = []
    k = 0

    def choose(n: int) -> int:
        nonlocal k
        v = choices[k % len(choices)] if choices else 0
        k += 1
        return v % n

    def err(exc: BaseException) -> tuple[Any, ...]:
        return ("error", type(exc).__name__, str(exc), getattr(exc, "reply_code", None))

    done = False
    for chunk in chunks:
        if done:
            break
        c.receive_data(chunk)
        log.append(("received", len(chunk), c.phase))
        while True:
            try:
                ev = c.next_event()
            except ProtocolError as exc:
                log.append(err(exc) + (c.phase, c.send_error()))
                done = True
                break
            except Exception as exc:
                if not catch_all:
                    raise
                log.append(err(exc) + (c.phase,))
                done = True
                break
            name, _ = event_fields(ev)
            if name == "NEED_DATA":
                break
            log.append(("event", typed_event_fields(ev), c.phase))
            try:
                if name == "Greeting":
                    # Mostly one of the offered methods this codec supports,
                    # sometimes X'FF' even so (a policy refusing them all).
                    offered = [m for m in (0x00, 0x02) if m in ev.methods]
                    if offered and choose(4) != 3:
                        method = offered[choose(len(offered))]
                    else:
                        method = 0xFF
                    log.append(("send_method", method, c.send_method(method), c.phase))
                elif name == "UserPass":
                    ok = choose(4) != 3
                    log.append(("send_auth_status", ok, c.send_auth_status(ok), c.phase))
                elif name == "Request":
                    log.append(("command", c.command))
                    replies = 2 if ev.command == 0x02 else 1
                    for _ in range(replies):
                        rep = _REPLY_CODES[choose(len(_REPLY_CODES))]
                        host = _REPLY_HOSTS[choose(len(_REPLY_HOSTS))]
                        port = (0, 1, 80, 1080, 65535)[choose(5)]
                        out = c.send_reply(rep, host, port)
                        log.append(("send_reply", rep, host, port, out, c.phase))
                        if c.phase != Phase.REPLY:
                            break
                else:  # pragma: no cover
                    raise AssertionError(f"unexpected event {ev!r}")
            except Exception as exc:
                if not catch_all:
                    raise
                log.append(err(exc) + (c.phase,))
                done = True
                break
    log.append(("end", c.phase, c.command, c.trailing_data))
    return log


def message_sizes(log: list[tuple[Any, ...]]) -> int:
    """Bytes of the stream consumed by the events in a drive() transcript."""
    total = 0
    for entry in log:
        if entry[0] != "event":
            continue
        name, typed = entry[1]
        values = [v for _, v in typed]
        if name == "Greeting":
            total += 2 + len(values[0])
        elif name == "UserPass":
            total += 3 + len(values[0]) + len(values[1])
        elif name == "Request":
            atyp, host = values[1], values[2]
            addr = {1: 4, 4: 16}.get(atyp) or 1 + len(host.encode("utf-8"))
            total += 4 + addr + 2
    return total
