"""The C datagram path (``fastsocks._datagram``, RFC 1928 §7) on its own and in a server.

The unit tests drive ``Association`` with real loopback sockets and call
``client_readable`` / ``target_readable`` themselves, as the event loop would;
the end-to-end ones run a fastsocks process whose UDP ASSOCIATE uses the C path
(``--relay auto``).  Every behaviour shared with the Python path is tested on
both paths in test_bind_udp.py.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from builds import HAVE_DATAGRAM
from procs import UdpEcho

if not sys.platform.startswith("linux"):
    pytest.skip("the C datagram path is Linux-only", allow_module_level=True)

if os.environ.get("FASTSOCKS_NO_EXTENSIONS") or not HAVE_DATAGRAM:
    pytest.skip("pure build: no C datagram path", allow_module_level=True)

from fastsocks import _datagram  # noqa: E402
from fastsocks import codec as fcodec  # noqa: E402
from fastsocks.errors import ProtocolError  # noqa: E402
from fastsocks.datagram import ip16  # noqa: E402

PEER, FAST, DENY, CHAIN = _datagram.PEER, _datagram.FAST, _datagram.DENY, _datagram.CHAIN


def test_the_extension_is_compiled() -> None:
    assert _datagram.__file__.endswith(".so")


def test_the_table_flags_are_the_pxd_ones() -> None:
    # Python installs decisions with these (datagram.NativePath); _datagram.pxd's F_* values.
    assert (PEER, FAST, DENY, CHAIN) == (1, 2, 4, 8)


# -- the header parser agrees with the codec ------------------------------------


def _agrees_with_codec(data: bytes) -> None:
    verdict = _datagram.classify(data)
    if verdict == "drop":
        with pytest.raises(ProtocolError):
            fcodec.parse_udp_header(data)
        return
    if verdict == "python":  # FRAG ≠ 0, a name, or an ATYP the codec refuses
        try:
            header = fcodec.parse_udp_header(data)
        except ProtocolError:  # Python drops it
            assert data[2] != 0 or data[3] not in (1, 4)
        else:
            assert header.frag != 0 or header.atyp not in (1, 4)
        return
    family, packed, port, length = verdict
    header = fcodec.parse_udp_header(data)
    assert header.frag == 0 and header.length == length and header.port == port
    if family == 4:
        assert header.atyp == 1 and header.host == socket.inet_ntop(socket.AF_INET, packed)
    else:
        assert header.atyp == 4 and header.host == socket.inet_ntop(socket.AF_INET6, packed)


@pytest.mark.parametrize("data", [
    b"", b"\x00", b"\x00\x00\x00", b"\x00\x00\x00\x01\x7f",
    b"\x01\x00\x00\x01\x7f\x00\x00\x01\x00\x50",          # RSV ≠ 0
    b"\x00\x00\x00\x01\x7f\x00\x00\x01\x00\x50",          # IPv4, no payload
    b"\x00\x00\x00\x01\x7f\x00\x00\x01\x00\x50payload",
    b"\x00\x00\x01\x01\x7f\x00\x00\x01\x00\x50frag",      # FRAG 1
    b"\x00\x00\x00\x04" + bytes(15) + b"\x01\x1f\x90six",  # IPv6 ::1 port 8080
    b"\x00\x00\x00\x04" + bytes(17),                       # IPv6, short
    b"\x00\x00\x00\x03\x09localhost\x00\x07",             # a name: Python's
    b"\x00\x00\x00\x09abcdef",                             # bad ATYP
])
def test_classify_examples(data: bytes) -> None:
    _agrees_with_codec(data)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=40) | st.builds(
    lambda frag, atyp, rest: b"\x00\x00" + bytes((frag, atyp)) + rest,
    st.sampled_from([0, 0, 1, 0x81]), st.sampled_from([1, 3, 4, 2]), st.binary(max_size=30)))
def test_classify_agrees_with_the_codec(data: bytes) -> None:
    _agrees_with_codec(data)


# -- Association with real sockets, driven by hand -------------------------------


def _sock(family: int, host: str) -> socket.socket:
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((host, 0))
    return s


def _header(host: str, port: int, frag: int = 0) -> bytes:
    return fcodec.build_udp_header(host, port, frag)


def _drain(sock: socket.socket, count: int, timeout: float = 5.0) -> list[bytes]:
    """Up to ``count`` datagrams from a blocking socket, within ``timeout``."""
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    sock.settimeout(0.05)
    while len(out) < count and time.monotonic() < deadline:
        try:
            out.append(sock.recv(65535))
        except TimeoutError:
            pass
    return out


def _pump(call: Callable[[], Any], done: Callable[[], bool], timeout: float = 5.0) -> None:
    """Call ``call`` (as the event loop would on readiness) until ``done()``."""
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        call()
        time.sleep(0.001)


class Rig:
    """client ─▶ relay socket [Association] outbound socket ─▶ target, and back."""

    def __init__(self, family: int = socket.AF_INET, host: str = "127.0.0.1",
                 relay_host: str | None = None, client_port: int = 0) -> None:
        self.client = _sock(family, host)
        relay_family = socket.AF_INET6 if ":" in (relay_host or host) else socket.AF_INET
        self.relay = _sock(relay_family, relay_host or host)
        self.relay.setblocking(False)
        # Where the client sends: the relay's port on the client's own family.
        self.relay_addr = (host, self.relay.getsockname()[1])
        self.out = socket.socket(family, socket.SOCK_DGRAM)
        self.out.setblocking(False)
        self.target = _sock(family, host)
        self.target_host = host
        self.target_port = self.target.getsockname()[1]
        self.slow: list[bytes] = []
        self.assoc = _datagram.Association(self.relay.fileno(), ip16(host), client_port,
                                           self.slow.extend)
        self.ipv6 = family == socket.AF_INET6
        self.assoc.set_outbound(self.ipv6, self.out.fileno())

    def send(self, payload: bytes, sock: socket.socket | None = None, frag: int = 0,
             host: str | None = None, port: int | None = None) -> None:
        (sock or self.client).sendto(
            _header(host or self.target_host, port or self.target_port, frag) + payload,
            self.relay_addr)

    def up(self, expect_up: int, expect_slow: int = 0) -> None:
        def done() -> bool:
            return self.assoc.datagrams_up >= expect_up and len(self.slow) >= expect_slow
        _pump(self.assoc.client_readable, done)

    def allow_target(self, flags: int = PEER | FAST) -> None:
        family = socket.AF_INET6 if self.ipv6 else socket.AF_INET
        packed = socket.inet_pton(family, self.target_host)
        assert self.assoc.install(packed, self.target_port, flags)
        # Python sends the first datagram itself; that binds the outbound socket.
        self.out.sendto(b"", (self.target_host, self.target_port))
        assert self.target.recv(10) == b""

    def close(self) -> None:
        self.assoc.close()
        for s in (self.client, self.relay, self.out, self.target):
            s.close()


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.close()


def test_unjudged_targets_go_up_to_python_then_stay_in_c(rig: Rig) -> None:
    rig.send(b"first")
    rig.up(0, expect_slow=1)
    assert rig.slow == [_header("127.0.0.1", rig.target_port) + b"first"]
    assert rig.assoc.datagrams_up == 0 and rig.assoc.client_port == rig.client.getsockname()[1]
    rig.allow_target()
    rig.send(b"second")
    rig.up(1)
    assert _drain(rig.target, 1) == [b"second"]
    assert len(rig.slow) == 1 and rig.assoc.bytes_up == len(b"second")


def test_a_burst_is_moved_in_batches(rig: Rig) -> None:
    rig.allow_target()
    payloads = [struct.pack(">I", i) * 75 for i in range(1000)]
    got: list[bytes] = []
    for i in range(0, 1000, 100):  # bursts of 100: within default socket buffers
        for p in payloads[i:i + 100]:
            rig.send(p)
        rig.up(i + 100)
        got += _drain(rig.target, 100)
    assert got == payloads  # all of them, in order
    assert rig.assoc.datagrams_up == 1000 and rig.assoc.dropped == 0
    assert rig.assoc.bytes_up == sum(map(len, payloads))
    # recvmmsg takes up to 32 at a time: far fewer calls than datagrams.
    assert rig.assoc.batches <= 1000 // 8


def test_equal_datagrams_go_as_gso_runs_and_arrive_one_by_one(rig: Rig) -> None:
    rig.allow_target()
    sizes = [1200] * 40 + [700] + [1200] * 20 + [1] * 3  # runs end at a shorter one
    payloads = [bytes((i,)) * n for i, n in enumerate(sizes)]
    for p in payloads:
        rig.send(p)
    rig.up(len(payloads))
    assert _drain(rig.target, len(payloads)) == payloads
    assert rig.assoc.gso  # the kernel took the runs: nothing fell back
    assert rig.assoc.bytes_up == sum(sizes)


def test_a_refused_gso_run_is_sent_one_by_one(rig: Rig) -> None:
    # Linux refuses UDP GSO (EINVAL) on a socket without checksums (SO_NO_CHECK).
    rig.out.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_NO_CHECK", 11), 1)
    rig.allow_target()
    payloads = [b"%04d" % i * 100 for i in range(30)]
    for p in payloads:
        rig.send(p)
    rig.up(30)
    assert _drain(rig.target, 30) == payloads
    assert not rig.assoc.gso and rig.assoc.dropped == 0
    for p in payloads:  # and from then on without GSO
        rig.send(p)
    rig.up(60)
    assert _drain(rig.target, 30) == payloads


def test_frag_names_and_bad_headers_leave_c(rig: Rig) -> None:
    rig.allow_target()
    rig.send(b"part", frag=1)
    rig.send(b"by name", host="localhost")
    rig.client.sendto(b"\x01\x00\x00\x01junk", rig.relay_addr)  # RSV ≠ 0: dropped here
    rig.up(0, expect_slow=2)
    assert [fcodec.parse_udp_header(d).frag for d in rig.slow] == [1, 0]
    assert rig.slow[1].endswith(b"by name")
    _pump(rig.assoc.client_readable, lambda: rig.assoc.dropped >= 1)
    assert rig.assoc.dropped == 1 and rig.assoc.datagrams_up == 0


def test_denied_target_is_dropped_in_c_and_the_allowed_one_passes(rig: Rig) -> None:
    other = _sock(socket.AF_INET, "127.0.0.1")
    try:
        port = other.getsockname()[1]
        assert rig.assoc.install(socket.inet_aton("127.0.0.1"), port, DENY)
        rig.allow_target()
        for i in range(50):
            rig.send(b"no %d" % i, port=port)
            rig.send(b"yes %d" % i)
        rig.up(50)
        _pump(rig.assoc.client_readable, lambda: rig.assoc.dropped >= 50)
        assert rig.assoc.dropped == 50 and rig.slow == []
        assert _drain(rig.target, 50) == [b"yes %d" % i for i in range(50)]
        assert _drain(other, 1, timeout=0.3) == []
    finally:
        other.close()


def test_spoofed_sources_are_dropped(rig: Rig) -> None:
    rig.allow_target()
    rig.send(b"locks the port")
    rig.up(1)
    same_ip = _sock(socket.AF_INET, "127.0.0.1")
    other_ip = _sock(socket.AF_INET, "127.0.0.2")
    try:
        for _ in range(5):
            rig.send(b"spoof", sock=same_ip)
            rig.send(b"spoof", sock=other_ip)
        _pump(rig.assoc.client_readable, lambda: rig.assoc.dropped >= 10)
        assert rig.assoc.dropped == 10 and rig.slow == []
        rig.send(b"real")
        rig.up(2)
        assert _drain(rig.target, 2) == [b"locks the port", b"real"]
        # Replies go to the locked client only.
        rig.target.sendto(b"back", rig.out.getsockname())
        _pump(lambda: rig.assoc.target_readable(False), lambda: rig.assoc.datagrams_down >= 1)
        assert _drain(rig.client, 1) == [_header("127.0.0.1", rig.target_port) + b"back"]
    finally:
        same_ip.close()
        other_ip.close()


def test_a_stranger_cannot_lock_the_association() -> None:
    r = Rig()
    stranger = _sock(socket.AF_INET, "127.0.0.2")
    try:
        r.send(b"first from a stranger", sock=stranger)
        _pump(r.assoc.client_readable, lambda: r.assoc.dropped >= 1)
        assert r.assoc.client_port == 0 and r.slow == []
        r.send(b"client")
        r.up(0, expect_slow=1)
        assert r.assoc.client_port == r.client.getsockname()[1]
    finally:
        stranger.close()
        r.close()


def test_dst_port_locks_before_the_first_datagram() -> None:
    probe = _sock(socket.AF_INET, "127.0.0.1")
    announced = probe.getsockname()[1]
    r = Rig(client_port=announced)
    try:
        r.send(b"from another port")
        _pump(r.assoc.client_readable, lambda: r.assoc.dropped >= 1)
        r.send(b"from the announced one", sock=probe)
        r.up(0, expect_slow=1)
        assert r.slow[0].endswith(b"from the announced one")
    finally:
        probe.close()
        r.close()


def test_replies_only_from_targets_the_client_sent_to(rig: Rig) -> None:
    rig.allow_target()
    rig.send(b"hello")
    rig.up(1)
    stranger = _sock(socket.AF_INET, "127.0.0.1")
    try:
        stranger.sendto(b"unsolicited", rig.out.getsockname())
        for i in range(40):  # more than one batch of replies
            rig.target.sendto(b"reply %d" % i, rig.out.getsockname())
        _pump(lambda: rig.assoc.target_readable(False),
              lambda: rig.assoc.datagrams_down >= 40 and rig.assoc.dropped >= 1)
        got = _drain(rig.client, 41, timeout=1.0)
        head = _header("127.0.0.1", rig.target_port)
        assert got == [head + b"reply %d" % i for i in range(40)]
        assert rig.assoc.dropped == 1
        assert rig.assoc.bytes_down == sum(len(b"reply %d" % i) for i in range(40))
    finally:
        stranger.close()


def test_ipv6_both_ways() -> None:
    r = Rig(socket.AF_INET6, "::1")
    try:
        r.allow_target()
        r.send(b"six up")
        r.up(1)
        assert _drain(r.target, 1) == [b"six up"]
        r.target.sendto(b"six down", r.out.getsockname())
        _pump(lambda: r.assoc.target_readable(True), lambda: r.assoc.datagrams_down >= 1)
        reply = _drain(r.client, 1)[0]
        header = fcodec.parse_udp_header(reply)
        assert (header.atyp, header.host, header.port) == (4, "::1", r.target_port)
        assert reply[header.length:] == b"six down"
    finally:
        r.close()


def test_ipv4_client_on_a_dual_stack_relay_socket() -> None:
    """A v4 client reaching an IPv6 listener arrives as ::ffff:a.b.c.d."""
    r = Rig(relay_host="::ffff:127.0.0.1")
    try:
        r.allow_target()
        r.send(b"mapped")
        r.up(1)
        assert _drain(r.target, 1) == [b"mapped"]
        r.target.sendto(b"back", r.out.getsockname())
        _pump(lambda: r.assoc.target_readable(False), lambda: r.assoc.datagrams_down >= 1)
        assert _drain(r.client, 1) == [_header("127.0.0.1", r.target_port) + b"back"]
    finally:
        r.close()


def test_a_mapped_target_answers_with_an_ipv4_header() -> None:
    r = Rig()
    out6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    out6.setblocking(False)
    try:
        r.assoc.set_outbound(True, out6.fileno())
        mapped = socket.inet_pton(socket.AF_INET6, "::ffff:127.0.0.1")
        assert r.assoc.install(mapped, r.target_port, PEER | FAST)
        r.send(b"via six", host="::ffff:127.0.0.1")
        r.up(1)
        assert _drain(r.target, 1) == [b"via six"]
        r.target.sendto(b"answer", ("127.0.0.1", out6.getsockname()[1]))
        _pump(lambda: r.assoc.target_readable(True), lambda: r.assoc.datagrams_down >= 1)
        assert _drain(r.client, 1) == [_header("127.0.0.1", r.target_port) + b"answer"]
    finally:
        out6.close()
        r.close()


def test_closed_association_is_not_served(rig: Rig) -> None:
    rig.allow_target()
    for i in range(20):
        rig.send(b"in flight %d" % i)
    rig.assoc.close()
    rig.assoc.client_readable()
    rig.assoc.target_readable(False)
    assert rig.assoc.datagrams_up == 0 and rig.slow == []
    assert _drain(rig.target, 1, timeout=0.3) == []


def test_chained_targets_go_to_the_upstream_relay_as_they_came(rig: Rig) -> None:
    # An "upstream relay" (a plain socket here) and the association's socket
    # connected to it, as udp_upstream.UpstreamLink makes them on the C path.
    relay = _sock(socket.AF_INET, "127.0.0.1")
    link = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    link.setblocking(False)
    link.connect(relay.getsockname())
    try:
        rig.send(b"first")  # locks the client's port; unjudged: Python's
        rig.up(0, expect_slow=1)
        packed = socket.inet_pton(socket.AF_INET, rig.target_host)
        assert rig.assoc.install(packed, rig.target_port, CHAIN, link.fileno())
        # Sizes that differ, then a run of equal ones (one GSO message, cut
        # by the kernel into the same datagrams).
        datagrams = [b"x" * n for n in (1, 100, 1400)] + [b"%02d" % i * 600 for i in range(10)]
        for data in datagrams:
            rig.send(data)
        rig.up(len(datagrams))
        header = _header("127.0.0.1", rig.target_port)
        # Header and all, as the client wrote it; nothing reached the target itself.
        assert _drain(relay, len(datagrams)) == [header + d for d in datagrams]
        assert _drain(rig.target, 1, timeout=0.2) == []
        assert rig.assoc.bytes_up == sum(map(len, datagrams))
        # The relay's replies carry its header: to the client as they came.
        named = b"\x00\x00\x00\x03\x09localhost\x00\x35"
        replies = [header + b"back", named + b"by name"]
        for reply in replies + [b"\x00\x00\x01" + header[3:] + b"fragment",
                                b"\x00\x00\x00\x03\x09local"]:
            relay.sendto(reply, link.getsockname())
        _pump(lambda: rig.assoc.chain_readable(link.fileno()),
              lambda: rig.assoc.datagrams_down >= 2 and rig.assoc.dropped >= 2)
        up = len(datagrams)
        assert _drain(rig.client, 3, timeout=0.5) == replies  # FRAG ≠ 0, short: dropped
        assert rig.assoc.bytes_down == len(b"back") + len(b"by name")
        # Unchained (the link closes): the target's datagrams go up to Python again.
        rig.assoc.unchain(link.fileno())
        rig.send(b"after")
        rig.up(up, expect_slow=2)
        assert rig.slow[-1] == header + b"after"
        targets = rig.assoc.targets
        with pytest.raises(ValueError):  # no socket given: refused, nothing installed
            rig.assoc.install(socket.inet_aton("192.0.2.1"), 53, CHAIN)
        assert rig.assoc.targets == targets
    finally:
        link.close()
        relay.close()


def test_the_table_is_bounded() -> None:
    r = Rig()
    try:
        for i in range(4096):
            assert r.assoc.install(struct.pack(">I", 0x0A000000 + i), 53, PEER)
        assert r.assoc.targets == 4096
        assert not r.assoc.install(socket.inet_aton("10.255.0.1"), 53, PEER)
        assert r.assoc.install(struct.pack(">I", 0x0A000000 + 7), 53, FAST)  # known: updated
        assert r.assoc.targets == 4096
    finally:
        r.close()


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        _datagram.Association(0, b"short", 0, print)
    with pytest.raises(ValueError):
        _datagram.Association(0, bytes(16), 70000, print)
    a = _datagram.Association(-1, bytes(16), 0, print)
    with pytest.raises(ValueError):
        a.install(b"\x01\x02\x03", 1, PEER)
    with pytest.raises(ValueError):
        a.install(bytes(4), 65536, PEER)


# -- through a server on the C path ----------------------------------------------


@pytest.fixture
def echo() -> Iterator[UdpEcho]:
    e = UdpEcho()
    yield e
    e.close()


def _associate(socks: Any, server: Any) -> tuple[socket.socket, socket.socket, tuple[str, int]]:
    ctrl = socks.open(server.address)
    ctrl.sendall(b"\x05\x01\x00")
    assert socks.recv_exact(ctrl, 2) == b"\x05\x00"
    ctrl.sendall(socks.request(0x03, "0.0.0.0", 0))
    rep, host, port = socks.read_reply(ctrl)
    assert rep == 0
    udp = _sock(socket.AF_INET, "127.0.0.1")
    return ctrl, udp, (host, port)


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_e2e_many_datagrams_in_both_directions(fastsocks_server: Any, socks: Any,
                                               echo: UdpEcho, loop: str) -> None:
    server = fastsocks_server("--log-level", "debug", "--loop", loop)
    ctrl, udp, relay = _associate(socks, server)
    with ctrl, udp:
        head = _header("127.0.0.1", echo.port)
        udp.sendto(head + b"first", relay)  # judged by Python
        assert _drain(udp, 1) == [head + b"first"]
        sent = [b"%05d" % i + b"x" * 500 for i in range(2000)]
        got: list[bytes] = []
        for i in range(0, len(sent), 100):  # windows of 100: no socket overflows
            for p in sent[i:i + 100]:
                udp.sendto(head + p, relay)
            got += _drain(udp, 100)
        assert sorted(got) == sorted(head + p for p in sent)
    assert "datagrams in C" in server.log
    assert server.stop() == 0
    assert "2001 datagrams up, 2001 down" in server.log


def test_e2e_rules_deny_one_target_allow_another(fastsocks_server: Any, socks: Any,
                                                 echo: UdpEcho, tmp_path: Path) -> None:
    blocked = UdpEcho()
    try:
        config = tmp_path / "fastsocks.toml"
        config.write_text(f'[[rules]]\naction = "deny"\ncommands = ["udp"]\n'
                          f'dst = ["127.0.0.0/8"]\nports = [{blocked.port}]\n')
        server = fastsocks_server("--config", str(config))
        ctrl, udp, relay = _associate(socks, server)
        with ctrl, udp:
            for i in range(30):  # the first of each is Python's, the rest C's
                udp.sendto(_header("127.0.0.1", blocked.port) + b"no %d" % i, relay)
                udp.sendto(_header("127.0.0.1", echo.port) + b"yes %d" % i, relay)
                assert _drain(udp, 1) == [_header("127.0.0.1", echo.port) + b"yes %d" % i]
        time.sleep(0.2)
        assert blocked.received == [] and len(echo.received) == 30
        assert server.stop() == 0
        assert f"to 127.0.0.1 port {blocked.port} dropped: denied by rules[0]" in server.log
    finally:
        blocked.close()


def test_e2e_close_while_datagrams_are_in_flight(fastsocks_server: Any, socks: Any,
                                                 echo: UdpEcho) -> None:
    server = fastsocks_server()
    baseline = server.fd_count()
    for _ in range(20):
        ctrl, udp, relay = _associate(socks, server)
        head = _header("127.0.0.1", echo.port)
        udp.sendto(head + b"judge me", relay)
        _drain(udp, 1)
        for i in range(200):
            udp.sendto(head + b"flood %d" % i, relay)
        ctrl.close()  # the association ends with datagrams queued both ways
        udp.close()
    assert server.wait_for_fds(baseline, timeout=10) <= baseline
    ctrl, udp, relay = _associate(socks, server)  # and the server still relays
    with ctrl, udp:
        udp.sendto(_header("127.0.0.1", echo.port) + b"after", relay)
        assert _drain(udp, 1) == [_header("127.0.0.1", echo.port) + b"after"]


def test_e2e_thousand_associations_with_both_families_leave_no_fds(
        fastsocks_server: Any, socks: Any, echo: UdpEcho) -> None:
    echo6 = UdpEcho("::1")
    try:
        server = fastsocks_server()
        baseline = server.fd_count()
        for _ in range(10):
            batch = [_associate(socks, server) for _ in range(100)]
            for _ctrl, udp, relay in batch:
                udp.sendto(_header("127.0.0.1", echo.port) + b"4", relay)
                udp.sendto(_header("::1", echo6.port) + b"6", relay)
            for ctrl, udp, _relay in batch:
                assert sorted(d[-1:] for d in _drain(udp, 2)) == [b"4", b"6"]
                ctrl.close()
                udp.close()
        assert server.wait_for_fds(baseline, timeout=10) <= baseline
    finally:
        echo6.close()
