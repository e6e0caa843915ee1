"""GSSAPI authentication (RFC 1961) end to end, against a real Kerberos KDC.

A throwaway MIT Kerberos realm (tests/kerberos.py) holds the users alice
and bob and the proxy's service principals; real ``fastsocks`` processes
accept tickets from its keytab.  Two real clients:

* a python-gssapi client in this file that performs the RFC 1961 exchange
  itself (context tokens, protection level, MTYP 3 encapsulation), so every
  level and every malformed step can be driven;
* Dante's client library (libdsocks, built with GSSAPI by
  tests/build_dante.sh) through LD_PRELOAD on a plain socket program, at each
  protection level it offers (integrity, confidentiality, and its own
  "clear").

Bytes relayed under each level must arrive intact both ways (sha256), and so
must UDP datagrams, each wrapped whole in one message (RFC 1961 §5); every
refusal must be the RFC 1961 abort (X'01' X'FF') and a closed connection,
with a log line that names the cause; a bad datagram is dropped alone.
Loopback only, every wait bounded.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import gssapi
import pytest

from builds import IMPLS
from kerberos import OTHER_SERVICE, REALM, KerberosRealm
from procs import UdpEcho, access_entries

REPO = Path(__file__).resolve().parents[2]
ABORT = b"\x01\xff"
TIMEOUT = 10.0
SERVICE_NAME = "rcmd@127.0.0.1"  # host-based form of kerberos.SERVICE
FLAGS = (gssapi.RequirementFlag.mutual_authentication | gssapi.RequirementFlag.integrity
         | gssapi.RequirementFlag.confidentiality)


# -- the realm and Dante's library (once per session) -------------------------


class Realm:
    """The KDC plus the tickets the tests use."""

    def __init__(self, kdc: KerberosRealm) -> None:
        self.kdc = kdc
        d = kdc.directory
        self.alice = kdc.kinit("alice", kdc.add_user("alice"), d / "alice.ccache")
        self.bob = kdc.kinit("bob", kdc.add_user("bob"), d / "bob.ccache")
        self.empty = d / "empty.ccache"  # no ticket at all
        self.keytab = kdc.keytab

    def server_env(self) -> dict[str, str]:
        return self.kdc.env()


@pytest.fixture(scope="session")
def realm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Realm]:
    kdc = KerberosRealm.create(tmp_path_factory.mktemp("kerberos"))
    # This process's python-gssapi client finds the realm through KRB5_CONFIG
    # (read by libkrb5 for each new context); put back what was there after.
    saved = {k: os.environ.get(k) for k in ("KRB5_CONFIG", "KRB5RCACHEDIR")}
    os.environ.update({k: v for k, v in kdc.env().items() if k in saved})
    try:
        yield Realm(kdc)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        kdc.close()


@pytest.fixture(scope="session")
def libdsocks() -> Path:
    """Dante's client library with GSSAPI (built once per machine, then cached)."""
    done = subprocess.run(["bash", str(REPO / "tests" / "build_dante.sh")], capture_output=True,
                          text=True, timeout=900)
    if done.returncode != 0:
        pytest.fail(f"tests/build_dante.sh failed ({done.returncode}):\n{done.stderr[-4000:]}")
    lib = Path(done.stdout.strip().splitlines()[-1]) / "libdsocks.so"
    assert lib.is_file(), done.stdout
    return lib


@pytest.fixture
def gss_server(fastsocks_server: Callable[..., Any], realm: Realm) -> Callable[..., Any]:
    """Factory: a fastsocks with GSSAPI on (the realm's keytab) plus ``args``."""

    def start(*args: str, impl: str = "c", env: dict[str, str] | None = None, **kw: Any) -> Any:
        extra = {**realm.server_env(), **(env or {})}
        if impl == "py":
            extra["FASTSOCKS_NO_EXTENSIONS"] = "1"
        return fastsocks_server("--gssapi-keytab", str(realm.keytab), *args, env=extra, **kw)

    return start


# -- an RFC 1961 client on python-gssapi ----------------------------------------


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError(data)
        data += chunk
    return data


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything until the server closes (bounded by the socket's timeout)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


class GssClient:
    """One connection doing the RFC 1961 exchange step by step."""

    def __init__(self, address: tuple[str, int], ccache: Path, service: str = SERVICE_NAME) -> None:
        self.sock = socket.create_connection(address, timeout=TIMEOUT)
        self.ccache = ccache
        self.service = service
        self.context: Any = None
        self.level = 0
        self.lock = threading.Lock()  # one GSS context: wrap and unwrap one at a time

    def close(self) -> None:
        self.sock.close()

    def frame(self, mtyp: int, token: bytes) -> bytes:
        return bytes((1, mtyp)) + struct.pack("!H", len(token)) + token

    def message(self) -> tuple[int, bytes]:
        head = _recv_exact(self.sock, 2)
        assert head[0] == 1, head
        if head[1] == 0xFF:
            return 0xFF, b""
        (n,) = struct.unpack("!H", _recv_exact(self.sock, 2))
        return head[1], _recv_exact(self.sock, n)

    def greet(self, methods: bytes = b"\x01") -> bytes:
        self.sock.sendall(bytes((5, len(methods))) + methods)
        return _recv_exact(self.sock, 2)

    def new_context(self) -> Any:
        creds = gssapi.Credentials(usage="initiate", store={"ccache": f"FILE:{self.ccache}"})
        name = gssapi.Name(self.service, gssapi.NameType.hostbased_service)
        return gssapi.SecurityContext(name=name, creds=creds, usage="initiate", flags=FLAGS)

    def establish(self) -> None:
        """RFC 1961 §3: tokens until both sides are complete."""
        assert self.greet() == b"\x05\x01"
        self.context = self.new_context()
        token = self.context.step()
        for _ in range(10):
            self.sock.sendall(self.frame(1, token))
            if self.context.complete:
                return
            mtyp, reply = self.message()
            assert mtyp == 1, f"server sent message type {mtyp} during context establishment"
            token = self.context.step(reply)
            if self.context.complete:
                assert not token
                return
        raise AssertionError("context not complete after 10 round trips")

    def propose(self, level: int) -> int | None:
        """RFC 1961 §4: the level asked for; the server's choice, None for an abort."""
        wrapped = self.context.wrap(bytes((level,)), False).message
        self.sock.sendall(self.frame(2, wrapped))
        mtyp, token = self.message()
        if mtyp == 0xFF:
            return None
        assert mtyp == 2, mtyp
        chosen = self.context.unwrap(token).message
        assert len(chosen) == 1
        self.level = chosen[0]
        return self.level

    def send(self, data: bytes, encrypt: bool | None = None) -> None:
        """RFC 1961 §5: ``data`` in MTYP 3 messages (at most 60,000 plain bytes each)."""
        conf = self.level == 2 if encrypt is None else encrypt
        out = []
        with self.lock:
            for i in range(0, len(data), 60000):
                out.append(self.frame(3, self.context.wrap(data[i:i + 60000], conf).message))
        self.sock.sendall(b"".join(out))

    def receive(self) -> bytes:
        """The plain bytes of the next MTYP 3 message; EOFError at the end."""
        mtyp, token = self.message()
        assert mtyp == 3, f"message type {mtyp} while relaying"
        with self.lock:
            result = self.context.unwrap(token)
        assert result.encrypted == (self.level == 2), "protection differs from the agreed level"
        return result.message

    # RFC 1961 §5 under UDP ASSOCIATE: one whole §7 datagram per MTYP 3 message.
    def wrap_datagram(self, datagram: bytes, encrypt: bool | None = None,
                      context: Any = None) -> bytes:
        conf = self.level == 2 if encrypt is None else encrypt
        with self.lock:
            token = (context or self.context).wrap(datagram, conf).message
        return self.frame(3, token)

    def unwrap_datagram(self, datagram: bytes) -> bytes:
        assert datagram[:2] == b"\x01\x03", datagram[:4]
        (n,) = struct.unpack("!H", datagram[2:4])
        assert len(datagram) == 4 + n, "one message, the whole datagram"
        with self.lock:
            result = self.context.unwrap(datagram[4:])
        assert result.encrypted == (self.level == 2), "protection differs from the agreed level"
        return result.message

    def request(self, host: str, port: int, command: int = 1) -> bytes:
        self.send(bytes((5, command, 0, 1)) + socket.inet_aton(host) + struct.pack("!H", port))
        reply = b""
        while len(reply) < 10:
            reply += self.receive()
        return reply

    def connect(self, target: tuple[str, int], level: int) -> int | None:
        self.establish()
        chosen = self.propose(level)
        if chosen is None:
            return None
        reply = self.request(*target)
        assert reply[:2] == b"\x05\x00", reply
        return chosen


def relay_both_ways(client: GssClient, size: int) -> tuple[str, str, int]:
    """Send ``size`` random bytes through the echo target while reading them back."""
    data = os.urandom(size)

    def sender() -> None:
        for i in range(0, size, 200_000):
            client.send(data[i:i + 200_000])
        client.sock.shutdown(socket.SHUT_WR)

    thread = threading.Thread(target=sender)
    thread.start()
    got = []
    try:
        while True:
            got.append(client.receive())
    except EOFError as exc:
        assert exc.args[0] == b"", "the server closed inside a message"
    thread.join(TIMEOUT)
    back = b"".join(got)
    return hashlib.sha256(data).hexdigest(), hashlib.sha256(back).hexdigest(), len(back)


def wait_for_log(server: Any, text: str, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while text not in server.log:
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not in the server log:\n{server.log}")
        time.sleep(0.05)
    return server.log


# -- every protection level, python-gssapi client ---------------------------------


# Each codec implementation on uvloop, and the stdlib loop once.
RUNTIMES = [pytest.param(impl, "uvloop", id=f"{impl}-uvloop") for impl in IMPLS] + [
    pytest.param(IMPLS[0], "asyncio", id=f"{IMPLS[0]}-asyncio")]


@pytest.mark.parametrize(("impl", "loop"), RUNTIMES)
@pytest.mark.parametrize(("asked", "chosen"), [(1, 1), (2, 2), (3, 2)],
                         ids=["integrity", "confidentiality", "selective"])
def test_levels_relay_intact(gss_server: Callable[..., Any], realm: Realm, echo_target: Any,
                             tmp_path: Path, impl: str, loop: str, asked: int, chosen: int) -> None:
    log_path = tmp_path / "access.log"
    server = gss_server("--access-log", str(log_path), "--access-log-format", "json",
                        "--loop", loop, impl=impl)
    assert server.loop == loop
    assert server.auth == "GSSAPI (minimum integrity)", server.log
    client = GssClient(server.address, realm.alice)
    try:
        assert client.connect(echo_target.address, asked) == chosen
        sent, back, n = relay_both_ways(client, 3 * 1024 * 1024 + 17)
    finally:
        client.close()
    assert n == 3 * 1024 * 1024 + 17
    assert sent == back
    (entry,) = access_entries(log_path, 1)
    assert (entry["user"], entry["reply"], entry["bytes_up"], entry["bytes_down"],
            entry["reason"]) == ("alice", 0, n, n, "eof")


def test_request_pipelined_with_data(gss_server: Callable[..., Any], realm: Realm,
                                     echo_target: Any) -> None:
    # The request and the first payload in one MTYP 3 message, and a second
    # message in the same write: nothing may be lost at the hand-over.
    server = gss_server()
    client = GssClient(server.address, realm.alice)
    try:
        client.establish()
        assert client.propose(2) == 2
        request = b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack(
            "!H", echo_target.address[1])
        client.send(request + b"hello ")
        client.send(b"world")
        client.sock.shutdown(socket.SHUT_WR)
        got = b""
        try:
            while True:
                got += client.receive()
        except EOFError:
            pass
    finally:
        client.close()
    assert got[:2] == b"\x05\x00" and got[10:] == b"hello world"


@pytest.mark.parametrize("bad", ["garbage", "abort", "mtyp-1"])
def test_bad_message_while_relaying(gss_server: Callable[..., Any], realm: Realm,
                                    echo_target: Any, tmp_path: Path, bad: str) -> None:
    log_path = tmp_path / "access.log"
    server = gss_server("--access-log", str(log_path), "--access-log-format", "json")
    client = GssClient(server.address, realm.alice)
    try:
        assert client.connect(echo_target.address, 1) == 1
        client.send(b"ok")
        assert client.receive() == b"ok"
        client.sock.sendall({"garbage": client.frame(3, os.urandom(64)), "abort": ABORT,
                             "mtyp-1": client.frame(1, b"token")}[bad])
        assert read_until_closed(client.sock) == b""
    finally:
        client.close()
    wait_for_log(server, "GSSAPI relay ended: ")
    (entry,) = access_entries(log_path, 1)
    assert (entry["user"], entry["reason"], entry["bytes_up"]) == ("alice", "gssapi_error", 2)


def test_bind_under_protection(gss_server: Callable[..., Any], realm: Realm) -> None:
    # Both BIND replies wrapped (RFC 1961 §5), then the relay in MTYP 3 messages.
    server = gss_server()
    client = GssClient(server.address, realm.alice)
    try:
        client.establish()
        assert client.propose(2) == 2
        first = client.request("0.0.0.0", 0, command=2)
        assert first[:4] == b"\x05\x00\x00\x01"
        port = struct.unpack("!H", first[8:10])[0]
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as peer:
            second = b""
            while len(second) < 10:
                second += client.receive()
            assert second[:2] == b"\x05\x00"
            assert struct.unpack("!H", second[8:10])[0] == peer.getsockname()[1]
            peer.sendall(b"from the peer")
            got = b""
            while len(got) < 13:
                got += client.receive()
            assert got == b"from the peer"
            client.send(b"from the client")
            assert _recv_exact(peer, 15) == b"from the client"
    finally:
        client.close()


def udp_header(address: tuple[str, int]) -> bytes:
    """RSV FRAG ATYP DST.ADDR DST.PORT (RFC 1928 §7) for an IPv4 target."""
    return b"\x00\x00\x00\x01" + socket.inet_aton(address[0]) + struct.pack("!H", address[1])


def udp_associate(client: GssClient, level: int) -> tuple[socket.socket, tuple[str, int]]:
    """UDP ASSOCIATE at ``level``: the client's UDP socket and the relay's address."""
    client.establish()
    assert client.propose(level) == level
    reply = client.request("0.0.0.0", 0, command=3)
    assert reply[:4] == b"\x05\x00\x00\x01", reply
    relay = (socket.inet_ntoa(reply[4:8]), struct.unpack("!H", reply[8:10])[0])
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(TIMEOUT)
    return udp, relay


def udp_round_trip(client: GssClient, udp: socket.socket, relay: tuple[str, int],
                   echo: UdpEcho, payload: bytes) -> bytes:
    """One wrapped datagram to the echo and its wrapped answer; the answer's payload."""
    header = udp_header(("127.0.0.1", echo.port))
    udp.sendto(client.wrap_datagram(header + payload), relay)
    raw, source = udp.recvfrom(65535)
    assert source == relay
    if client.level == 2 and len(payload) >= 16:
        assert payload not in raw, "a confidentiality datagram travelled in the clear"
    plain = client.unwrap_datagram(raw)
    assert plain[:len(header)] == header, plain[:16]  # the echo's address, as §7 says
    return plain[len(header):]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("level", [1, 2], ids=["integrity", "confidentiality"])
def test_udp_under_protection(gss_server: Callable[..., Any], realm: Realm, udp_echo: UdpEcho,
                              tmp_path: Path, impl: str, level: int) -> None:
    # Every datagram both ways one MTYP 3 message wrapping header and data
    # (RFC 1961 §5); the default relay, so the C datagram path is set aside.
    log_path = tmp_path / "access.log"
    server = gss_server("--access-log", str(log_path), "--access-log-format", "json",
                        "--log-level", "debug", impl=impl)
    client = GssClient(server.address, realm.alice)
    sizes = [1, 100, 1400, 4096, 8 * 1024]  # (asyncio sends no empty datagram)
    try:
        udp, relay = udp_associate(client, level)
        with udp:
            payloads = [os.urandom(n) for n in sizes]
            for payload in payloads:
                assert udp_round_trip(client, udp, relay, udp_echo, payload) == payload
    finally:
        client.close()
    assert udp_echo.received == payloads  # the target saw the plain data, nothing else
    assert "datagrams in C" not in server.log  # wrapped: the Python path, always
    wait_for_log(server, f"{len(sizes)} datagrams up, {len(sizes)} down, {sum(sizes)} bytes up, "
                         f"{sum(sizes)} down, 0 dropped")
    (entry,) = access_entries(log_path, 1)
    assert (entry["user"], entry["command"], entry["datagrams_up"], entry["datagrams_down"]) == (
        "alice", "UDP_ASSOCIATE", len(sizes), len(sizes))


@pytest.mark.parametrize("level", [1, 2], ids=["integrity", "confidentiality"])
def test_udp_bad_datagrams_are_dropped(gss_server: Callable[..., Any], realm: Realm,
                                       udp_echo: UdpEcho, level: int) -> None:
    # Nothing a datagram carries may end the association: each bad one is
    # dropped alone, counted, and the next good one goes through.
    server = gss_server("--log-level", "debug")
    client = GssClient(server.address, realm.alice)
    other = GssClient(server.address, realm.alice)  # the same user, another context
    try:
        other.establish()
        assert other.propose(level) == level
        udp, relay = udp_associate(client, level)
        with udp:
            assert udp_round_trip(client, udp, relay, udp_echo, b"first") == b"first"
            datagram = udp_header(("127.0.0.1", udp_echo.port)) + b"bad"
            bad = [
                client.frame(3, os.urandom(80)),  # garbage token
                os.urandom(40),  # not a message at all
                datagram,  # the plain §7 datagram, unwrapped
                client.wrap_datagram(datagram, context=other.context),  # the wrong context
                client.wrap_datagram(datagram) + b"\x00",  # a message and more
                client.frame(2, client.context.wrap(datagram, False).message),  # MTYP 2
            ]
            if level == 2:  # integrity only where confidentiality was agreed: a downgrade
                bad.append(client.wrap_datagram(datagram, encrypt=False))
            for message in bad:
                udp.sendto(message, relay)
            assert udp_round_trip(client, udp, relay, udp_echo, b"second") == b"second"
    finally:
        client.close()
        other.close()
    assert udp_echo.received == [b"first", b"second"]
    wait_for_log(server, f"2 datagrams up, 2 down, 11 bytes up, 11 down, {len(bad)} dropped")


@pytest.mark.parametrize("level", [1, 2], ids=["integrity", "confidentiality"])
def test_udp_reply_too_big_to_wrap(gss_server: Callable[..., Any], realm: Realm,
                                   level: int) -> None:
    # A target's datagram that fits UDP plain but not once wrapped and
    # framed (one message per datagram, RFC 1961 §5) is dropped alone.
    server = gss_server("--log-level", "debug")
    client = GssClient(server.address, realm.alice)
    target = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        target.bind(("127.0.0.1", 0))
        target.settimeout(TIMEOUT)
        udp, relay = udp_associate(client, level)
        with udp:
            udp.sendto(client.wrap_datagram(udp_header(target.getsockname()) + b"hi"), relay)
            got, source = target.recvfrom(65535)
            assert got == b"hi"
            target.sendto(os.urandom(65490), source)  # + 10 of header + the wrap's overhead
            target.sendto(b"small", source)
            raw, _ = udp.recvfrom(65535)
            plain = client.unwrap_datagram(raw)
            assert plain == udp_header(target.getsockname()) + b"small"
    finally:
        client.close()
        target.close()
    wait_for_log(server, "1 datagrams up, 1 down, 2 bytes up, 5 down, 1 dropped")


def test_udp_clear_and_plain_unaffected(gss_server: Callable[..., Any], realm: Realm,
                                        udp_echo: UdpEcho) -> None:
    # Dante's clear level and a client without GSSAPI: plain §7 datagrams.
    server = gss_server("--gssapi-min-protection", "clear", "--allow-open")
    clear = GssClient(server.address, realm.alice)
    try:
        clear.establish()
        assert clear.propose(0) == 0
        request = b"\x05\x03\x00\x01" + bytes(6)
        clear.sock.sendall(request)
        reply = _recv_exact(clear.sock, 10)
        assert reply[:2] == b"\x05\x00", reply
        plain = socket.create_connection(server.address, timeout=TIMEOUT)
        with plain:
            plain.sendall(b"\x05\x01\x00")
            assert _recv_exact(plain, 2) == b"\x05\x00"
            plain.sendall(request)
            reply2 = _recv_exact(plain, 10)
            assert reply2[:2] == b"\x05\x00", reply2
            for answer, tag in ((reply, b"clear"), (reply2, b"plain")):
                relay = (socket.inet_ntoa(answer[4:8]), struct.unpack("!H", answer[8:10])[0])
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.settimeout(TIMEOUT)
                    header = udp_header(("127.0.0.1", udp_echo.port))
                    udp.sendto(header + tag, relay)
                    back, source = udp.recvfrom(65535)
                    assert (source, back) == (relay, header + tag)
    finally:
        clear.close()
    assert udp_echo.received == [b"clear", b"plain"]


# -- refusals: the abort message, a closed connection, the cause in the log ------


def _refused(server: Any, client: GssClient, cause: str) -> None:
    assert read_until_closed(client.sock) == ABORT
    log = wait_for_log(server, "GSSAPI authentication refused")
    line = next(l for l in log.splitlines() if "GSSAPI authentication refused" in l)
    assert cause in line, line


def test_ticket_for_another_service(gss_server: Callable[..., Any], realm: Realm) -> None:
    server = gss_server()
    client = GssClient(server.address, realm.alice, service=OTHER_SERVICE.replace("/", "@"))
    try:
        assert client.greet() == b"\x05\x01"
        context = client.new_context()
        client.sock.sendall(client.frame(1, context.step()))
        _refused(server, client, "security context failed")
    finally:
        client.close()
    assert OTHER_SERVICE in server.log  # MIT's reason names the principal it has no key for


def test_garbage_token(gss_server: Callable[..., Any], realm: Realm) -> None:
    server = gss_server()
    client = GssClient(server.address, realm.alice)
    secret = os.urandom(300)
    try:
        assert client.greet() == b"\x05\x01"
        client.sock.sendall(client.frame(1, secret))
        _refused(server, client, "security context failed")
    finally:
        client.close()
    assert secret.hex()[:16] not in server.log and repr(secret)[:20] not in server.log


def test_no_ticket_client_aborts(gss_server: Callable[..., Any], realm: Realm) -> None:
    # A client without a ticket cannot make a token; RFC 1961 has it abort.
    server = gss_server()
    client = GssClient(server.address, realm.empty)
    try:
        assert client.greet() == b"\x05\x01"
        with pytest.raises(gssapi.exceptions.GSSError):
            client.new_context().step()
        client.sock.sendall(ABORT)
        _refused(server, client, "the client aborted")
    finally:
        client.close()


def test_no_ticket_client_says_nothing(gss_server: Callable[..., Any], realm: Realm) -> None:
    server = gss_server("--handshake-timeout", "0.5", "--log-level", "debug")
    client = GssClient(server.address, realm.empty)
    try:
        assert client.greet() == b"\x05\x01"
        assert read_until_closed(client.sock) == b""  # the handshake timeout closes it
    finally:
        client.close()
    wait_for_log(server, "closed: handshake timeout")
    assert "as user" not in server.log


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("message", [b"\x02\x01\x00\x01x", b"\x01\x07\x00\x00", b"\x05\x01\x00"],
                         ids=["version-2", "mtyp-7", "socks-greeting-again"])
def test_bad_framing(gss_server: Callable[..., Any], realm: Realm, impl: str,
                     message: bytes) -> None:
    server = gss_server(impl=impl)
    client = GssClient(server.address, realm.alice)
    try:
        assert client.greet() == b"\x05\x01"
        client.sock.sendall(message)
        _refused(server, client, "bad GSSAPI message")
    finally:
        client.close()


def test_level_below_minimum(gss_server: Callable[..., Any], realm: Realm) -> None:
    server = gss_server("--gssapi-min-protection", "confidentiality")
    assert server.auth == "GSSAPI (minimum confidentiality)"
    client = GssClient(server.address, realm.alice)
    try:
        client.establish()
        assert client.propose(1) is None
        assert read_until_closed(client.sock) == b""
    finally:
        client.close()
    line = wait_for_log(server, "below the minimum")
    assert "'alice' asked for protection integrity (1), below the minimum confidentiality" in line


def test_clear_refused_by_default(gss_server: Callable[..., Any], realm: Realm) -> None:
    server = gss_server()
    client = GssClient(server.address, realm.alice)
    try:
        client.establish()
        assert client.propose(0) is None
    finally:
        client.close()
    wait_for_log(server, "asked for protection clear (0), below the minimum integrity")


def test_unencrypted_message_under_confidentiality(gss_server: Callable[..., Any],
                                                   realm: Realm, echo_target: Any) -> None:
    server = gss_server()
    client = GssClient(server.address, realm.alice)
    try:
        client.establish()
        assert client.propose(2) == 2
        client.send(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1")
                    + struct.pack("!H", echo_target.address[1]), encrypt=False)
        _refused(server, client, "unencrypted data message under confidentiality")
    finally:
        client.close()
    assert echo_target.peers == []  # nothing was dialled


def test_service_principal_restricts(gss_server: Callable[..., Any], realm: Realm) -> None:
    # The keytab holds rcmd/127.0.0.1 and rcmd/localhost; --gssapi-principal
    # accepts tickets for the one named only.
    server = gss_server("--gssapi-principal", f"rcmd/localhost@{REALM}")
    client = GssClient(server.address, realm.alice)  # asks for rcmd/127.0.0.1
    try:
        assert client.greet() == b"\x05\x01"
        client.sock.sendall(client.frame(1, client.new_context().step()))
        _refused(server, client, "security context failed")
    finally:
        client.close()
    ok = GssClient(server.address, realm.alice, service="rcmd@localhost")
    try:
        ok.establish()
        assert ok.propose(1) == 1
    finally:
        ok.close()


def test_keytab_without_the_principal_fails_at_start(realm: Realm, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fastsocks", "--listen", "127.0.0.1:0", "--workers", "1",
         "--gssapi-keytab", str(realm.keytab), "--gssapi-principal", f"nobody/here@{REALM}"],
        env={**os.environ, **realm.server_env()}, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done.stderr
    assert "nobody/here@" in done.stderr and str(realm.keytab) in done.stderr


# -- the principal becomes the user; plain clients are unaffected ------------------


def test_principal_map_in_config_and_access_log(fastsocks_server: Callable[..., Any],
                                                realm: Realm, echo_target: Any,
                                                tmp_path: Path) -> None:
    log_path = tmp_path / "access.log"
    config = tmp_path / "fastsocks.toml"
    config.write_text(f"""\
[log]
access = "{log_path}"
access_format = "json"

[gssapi]
keytab = "{realm.keytab}"
min_protection = "integrity"

[gssapi.principal_map]
"bob@{REALM}" = "robert"
""")
    server = fastsocks_server("--config", str(config), env=realm.server_env())
    for ccache in (realm.alice, realm.bob):
        client = GssClient(server.address, ccache)
        try:
            assert client.connect(echo_target.address, 1) == 1
            client.send(b"ping")
            assert client.receive() == b"ping"
        finally:
            client.close()
    users = sorted(entry["user"] for entry in access_entries(log_path, 2))
    assert users == ["alice", "robert"]


def test_plain_clients_with_gssapi_enabled(gss_server: Callable[..., Any], echo_target: Any,
                                           socks: Any) -> None:
    # Without --allow-open, GSSAPI on means no unauthenticated clients ...
    closed = gss_server()
    with socket.create_connection(closed.address, timeout=TIMEOUT) as sock:
        sock.sendall(b"\x05\x01\x00")
        assert read_until_closed(sock) == b"\x05\xff"
    # ... with it, a no-auth client is relayed as before (the splice engine).
    server = gss_server("--allow-open")
    assert server.auth == "GSSAPI (minimum integrity), else none"
    sock, (rep, _, _) = socks.connect(server.address, "127.0.0.1", echo_target.address[1])
    with sock:
        assert rep == 0
        payload = os.urandom(1 << 20)
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        back = read_until_closed(sock)
    assert hashlib.sha256(back).digest() == hashlib.sha256(payload).digest()


# -- Dante's client library, a real GSSAPI SOCKS client ------------------------------

# One thread, in lock step: libdsocks keeps per-socket GSSAPI buffers that a
# second thread sending while the first receives corrupts (seen with Dante
# 1.4.2), so the program never does both at once.
DANTE_PROGRAM = r"""
import hashlib, os, socket, sys
port, size = int(sys.argv[1]), int(sys.argv[2])
data = os.urandom(size)
s = socket.create_connection(("127.0.0.1", port), timeout=20)
got = bytearray()
for i in range(0, size, 16384):
    piece = data[i:i + 16384]
    s.sendall(piece)
    want = len(got) + len(piece)
    while len(got) < want:
        chunk = s.recv(65536)
        if not chunk:
            sys.exit(f"closed after {len(got)} bytes")
        got += chunk
s.shutdown(socket.SHUT_WR)
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    got += chunk
print(hashlib.sha256(data).hexdigest(), hashlib.sha256(got).hexdigest(), len(got))
"""


def _socks_conf(path: Path, proxy: tuple[str, int], enctype: str,
                protocol: str = "tcp") -> Path:
    path.write_text(f"""\
logoutput: {path.with_suffix('.log')}
route {{
    from: 0.0.0.0/0 to: 0.0.0.0/0 via: {proxy[0]} port = {proxy[1]}
    protocol: {protocol}
    proxyprotocol: socks_v5
    method: gssapi
    gssapi.servicename: rcmd
    gssapi.enctype: {enctype}
}}
""")
    return path


def run_dante(libdsocks: Path, realm: Realm, conf: Path, ccache: Path, target_port: int,
              size: int | str, program: str = DANTE_PROGRAM) -> subprocess.CompletedProcess[str]:
    """``program`` (argv: the target's port, ``size``) under libdsocks, with ``ccache``'s ticket."""
    env = {
        **os.environ, **realm.server_env(),
        "KRB5CCNAME": f"FILE:{ccache}",
        "SOCKS_CONF": str(conf),
        # Dante routes the machine's own networks (loopback included) direct
        # unless told not to: everything must go through the proxy here.
        "SOCKS_AUTOADD_LANROUTES": "no",
        "LD_PRELOAD": str(libdsocks),
    }
    return subprocess.run([sys.executable, "-c", program, str(target_port), str(size)],
                          env=env, capture_output=True, text=True, timeout=60)


# The first test to use libdsocks may build it (about a minute and a half on
# 2 cores, when tests/run.sh has not already): more than the suite's 120 s.
DANTE_BUILD_TIMEOUT = pytest.mark.timeout(600)


@DANTE_BUILD_TIMEOUT
@pytest.mark.parametrize(("enctype", "level"),
                         [("integrity", "integrity"), ("confidentiality", "confidentiality"),
                          ("clear", "clear")])
def test_dante_client(gss_server: Callable[..., Any], libdsocks: Path, realm: Realm,
                      echo_target: Any, tmp_path: Path, enctype: str, level: str) -> None:
    log_path = tmp_path / "access.log"
    args = ["--access-log", str(log_path), "--access-log-format", "json", "--log-level", "debug"]
    if enctype == "clear":
        args += ["--gssapi-min-protection", "clear"]
    server = gss_server(*args)
    conf = _socks_conf(tmp_path / "socks.conf", server.address, enctype)
    size = 2 * 1024 * 1024 + 5
    done = run_dante(libdsocks, realm, conf, realm.alice, echo_target.address[1], size)
    assert done.returncode == 0, f"{done.stdout}{done.stderr}\n{server.log}"
    sent, back, n = done.stdout.split()
    assert sent == back and int(n) == size
    assert f"as user 'alice', protection {level}" in server.log
    (entry,) = access_entries(log_path, 1)
    assert (entry["user"], entry["bytes_up"], entry["bytes_down"]) == ("alice", size, size)


# Plain sendto/recvfrom on an unconnected UDP socket: libdsocks makes the UDP
# ASSOCIATE and, under GSSAPI integrity or confidentiality, wraps each whole
# datagram (header and data) in one RFC 1961 message and unwraps the replies.
DANTE_UDP_PROGRAM = r"""
import os, socket, sys
port, sizes = int(sys.argv[1]), [int(n) for n in sys.argv[2].split(",")]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(10)
for n in sizes:
    data = os.urandom(n)
    s.sendto(data, ("127.0.0.1", port))
    back, source = s.recvfrom(65535)
    if back != data or source != ("127.0.0.1", port):
        sys.exit(f"{n} bytes sent, {len(back)} back from {source}")
print("ok")
"""


@DANTE_BUILD_TIMEOUT
@pytest.mark.parametrize("level", ["integrity", "confidentiality", "clear"])
def test_dante_client_udp(gss_server: Callable[..., Any], libdsocks: Path, realm: Realm,
                          udp_echo: UdpEcho, tmp_path: Path, level: str) -> None:
    args = ["--log-level", "debug"]
    if level == "clear":
        args += ["--gssapi-min-protection", "clear"]
    server = gss_server(*args)
    conf = _socks_conf(tmp_path / "socks.conf", server.address, level, protocol="udp")
    sizes = [1, 100, 1400, 4096, 8000]
    done = run_dante(libdsocks, realm, conf, realm.alice, udp_echo.port,
                     ",".join(map(str, sizes)), program=DANTE_UDP_PROGRAM)
    assert (done.returncode, done.stdout) == (0, "ok\n"), f"{done.stderr}\n{server.log}"
    assert [len(d) for d in udp_echo.received] == sizes
    assert f"as user 'alice', protection {level}" in server.log
    wait_for_log(server, f"5 datagrams up, 5 down, {sum(sizes)} bytes up, {sum(sizes)} down, "
                         "0 dropped")
    # Wrapped datagrams take the Python path; clear ones the C path as before.
    assert ("datagrams in C" in server.log) == (level == "clear"), server.log


@DANTE_BUILD_TIMEOUT
def test_dante_client_refused_below_minimum(gss_server: Callable[..., Any], libdsocks: Path,
                                            realm: Realm, echo_target: Any,
                                            tmp_path: Path) -> None:
    server = gss_server("--gssapi-min-protection", "confidentiality")
    conf = _socks_conf(tmp_path / "socks.conf", server.address, "integrity")
    done = run_dante(libdsocks, realm, conf, realm.alice, echo_target.address[1], 1000)
    assert done.returncode != 0
    wait_for_log(server, "below the minimum confidentiality")
    assert echo_target.peers == []


@DANTE_BUILD_TIMEOUT
def test_dante_client_without_ticket(gss_server: Callable[..., Any], libdsocks: Path,
                                     realm: Realm, echo_target: Any, tmp_path: Path) -> None:
    server = gss_server("--log-level", "debug")
    conf = _socks_conf(tmp_path / "socks.conf", server.address, "integrity")
    done = run_dante(libdsocks, realm, conf, realm.empty, echo_target.address[1], 1000)
    assert done.returncode != 0
    assert echo_target.peers == []
    wait_for_log(server, "closed: ")  # Dante gives up after X'01': no token, no user
    assert "as user" not in server.log


# -- configuration ---------------------------------------------------------------------


def test_config_file_round_trip(tmp_path: Path) -> None:
    from fastsocks.config import load_config, render

    config = tmp_path / "fastsocks.toml"
    config.write_text("""\
listen = ["0.0.0.0:1080"]
[gssapi]
keytab = "socks.keytab"
principal = "rcmd/proxy.example.com@EXAMPLE.COM"
min_protection = "confidentiality"
[gssapi.principal_map]
"bob@EXAMPLE.COM" = "robert"
""")
    # GSSAPI is authentication: a public listener needs neither users nor allow_open.
    settings = load_config(config)
    assert (settings.gssapi, settings.gssapi_keytab, settings.gssapi_principal,
            settings.gssapi_min_protection, settings.gssapi_principal_map) == (
        True, str(tmp_path / "socks.keytab"), "rcmd/proxy.example.com@EXAMPLE.COM",
        "confidentiality", {"bob@EXAMPLE.COM": "robert"})
    again = tmp_path / "rendered.toml"
    again.write_text(render(settings))
    reloaded = load_config(again)
    for name in ("gssapi", "gssapi_keytab", "gssapi_principal", "gssapi_min_protection",
                 "gssapi_principal_map"):
        assert getattr(reloaded, name) == getattr(settings, name), name
    off = tmp_path / "off.toml"
    off.write_text("[gssapi]\nenabled = false\nkeytab = \"socks.keytab\"\n")
    assert load_config(off).gssapi is False


@pytest.mark.parametrize(("table", "error"), [
    ('min_protection = "none"',
     'gssapi.min_protection: must be one of "integrity", "confidentiality", "clear", got "none"'),
    ('keytabs = "x"', "gssapi.keytabs: unknown key (did you mean 'keytab'?)"),
    ('principal = ""', "gssapi.principal: must be a Kerberos principal"),
    ('principal_map = { "a@B" = 3 }', "gssapi.principal_map: must be a table of principal"),
    ("enabled = 1", "gssapi.enabled: must be true or false"),
])
def test_config_file_errors(tmp_path: Path, table: str, error: str) -> None:
    from fastsocks.config import ConfigFileError, load_config

    config = tmp_path / "bad.toml"
    config.write_text(f"[gssapi]\n{table}\n")
    with pytest.raises(ConfigFileError) as info:
        load_config(config)
    assert f"{config}: {error}" in str(info.value)


def test_gssapi_off_keeps_the_safe_default(tmp_path: Path) -> None:
    from fastsocks.errors import ConfigError
    from fastsocks.config import Settings

    with pytest.raises(ConfigError, match="without authentication"):
        Settings(listen=[("0.0.0.0", 1080)]).validate()
    Settings(listen=[("0.0.0.0", 1080)], gssapi=True).validate()
    with pytest.raises(ConfigError, match="min_protection 'none'"):
        Settings(gssapi=True, gssapi_min_protection="none").validate()


def test_cli_flags(tmp_path: Path) -> None:
    from fastsocks.runtime.cli import _serve_parser, _settings

    args = _serve_parser().parse_args(["--gssapi-keytab", "k.keytab",
                                       "--gssapi-min-protection", "clear"])
    settings = _settings(args)
    assert (settings.gssapi, settings.gssapi_keytab, settings.gssapi_min_protection) == (
        True, "k.keytab", "clear")
    assert _settings(_serve_parser().parse_args([])).gssapi is False
    assert _settings(_serve_parser().parse_args(["--gssapi-principal", "a/b@C"])).gssapi is True
    done = subprocess.run([sys.executable, "-m", "fastsocks", "--gssapi-min-protection", "none"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "invalid choice: 'none'" in done.stderr


def test_principal_to_user_name() -> None:
    from fastsocks.control.gssapi import Acceptor

    acceptor = Acceptor.__new__(Acceptor)  # the mapping alone, no credentials
    acceptor.principal_map = {"svc-backup@EXAMPLE.COM": "backup", "carol@OTHER.ORG": "carol"}
    acceptor.realm = ""
    assert acceptor.user_name("alice@EXAMPLE.COM", "EXAMPLE.COM") == "alice"
    # Another realm's alice is not ours, unless the map says so.
    assert acceptor.user_name("alice@OTHER.ORG", "EXAMPLE.COM") == "alice@OTHER.ORG"
    assert acceptor.user_name("carol@OTHER.ORG", "EXAMPLE.COM") == "carol"
    assert acceptor.user_name("svc-backup@EXAMPLE.COM", "EXAMPLE.COM") == "backup"
    assert acceptor.user_name("host/a.example.com@EXAMPLE.COM", "EXAMPLE.COM") == "host/a.example.com"
    # A --gssapi-principal with a realm makes that realm the service's too.
    acceptor.realm = "EXAMPLE.COM"
    assert acceptor.user_name("bob@EXAMPLE.COM", "") == "bob"
