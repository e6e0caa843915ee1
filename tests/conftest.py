"""Fixtures for the whole suite: implementations, real ``fastsocks`` processes, local targets.

The parameters every layer of tests shares are defined here once: ``impl``
(the Cython codec and its pure twin), ``relay`` (the splice engine and the
protocol relay) and ``udp_path`` (datagrams in C or in asyncio), plus the
loop x implementation ``combo`` of the end-to-end matrix.  Servers are started
by the one launcher in ``launcher.py`` (``fastsocks_server``, ``start_proxy``,
``proxy``, ``hostile_server``).

Everything here talks to loopback only (127.0.0.1 and ::1) and binds port 0;
every wait is bounded.  Helpers that test modules need are handed out through
fixtures (``socks``, ``tcp_target``, ``curl`` ...) rather than imported, so the
modules do not depend on how pytest puts ``tests/`` on ``sys.path``.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import ipaddress
import resource
import shutil
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator

import pytest

import codec_impls
from builds import HAVE_EXTENSION, IMPLS, RELAY_PATHS, RELAYS, UDP_PATHS
from launcher import FastsocksProcess, ServerLauncher, clean_env, fastsocks_command, log_errors
from procs import EchoProcess, UdpEcho

# -- implementations, relays, datagram paths ----------------------------------


@pytest.fixture(params=codec_impls.IMPL_PARAMS)
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """The codec module under test: the Cython one (id "c") or its pure twin ("py")."""
    return request.param


@pytest.fixture(params=RELAYS)
def relay(request: pytest.FixtureRequest) -> str:
    """A ``--relay`` value: "splice" (the C engine, where built) and "protocol"."""
    return request.param


@pytest.fixture(params=list(RELAY_PATHS))
def relay_path(request: pytest.FixtureRequest) -> tuple[tuple[str, ...], dict[str, str]]:
    """(server arguments, environment) of each relay path a TCP connection can take:
    "splice" (where built), "protocol" (the Cython relay) and "pure" (Python)."""
    return RELAY_PATHS[request.param]


@pytest.fixture(scope="module", params=UDP_PATHS)
def udp_path(request: pytest.FixtureRequest) -> str:
    """Which datagram path: "c" (_datagram, recvmmsg/sendmmsg) or "py" (asyncio);
    ``builds.UDP_PATH_ARGS[udp_path]`` are the server arguments that pick it."""
    return request.param


# -- the server process ----------------------------------------------------



@pytest.fixture
def fastsocks_server(tmp_path: Path) -> Iterator[Callable[..., FastsocksProcess]]:
    """Factory: ``fastsocks_server(*args, env={...})`` starts a real server.

    Without ``--listen`` in ``args`` it listens on 127.0.0.1:0 (unless
    ``default_listen=True``: then it gets no ``--listen`` at all).  It returns
    once the server logged its "listening on" line (at most 10 s), with the
    real ports parsed from it.  At teardown each server gets SIGTERM and must
    exit 0 within a few seconds, with no traceback or ERROR line in its log.
    """
    launcher = ServerLauncher(tmp_path)
    yield launcher.start
    launcher.stop_all()


@pytest.fixture
def hostile_server(fastsocks_server: Callable[..., FastsocksProcess]) -> Callable[..., FastsocksProcess]:
    """``fastsocks_server`` for the adversarial and load tests.

    A server under thousands of connections gets more time to start and to
    stop, and one that exits on its own during the test fails it.  Pass
    ``nofile=N`` to run it under a lower RLIMIT_NOFILE.
    """
    return functools.partial(fastsocks_server, must_survive=True, start_timeout=15.0, stop_timeout=10.0)


@pytest.fixture(scope="module")
def raise_nofile() -> Iterator[int]:
    """Raise this process's RLIMIT_NOFILE to its hard limit (servers inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- loop x implementation matrix -----------------------------------------


@dataclass(frozen=True)
class Combo:
    """One event loop, one implementation of the codec and relay, one data plane."""

    loop: str  # "uvloop" or "asyncio"
    impl: str  # "c" (Cython extensions) or "py" (FASTSOCKS_NO_EXTENSIONS=1)
    relay: str = "auto"  # --relay: auto (the splice engine where built) or protocol

    @property
    def id(self) -> str:
        suffix = "" if self.relay == "auto" else f"-{self.relay}"
        return f"{self.loop}-{self.impl}{suffix}"

    @property
    def args(self) -> list[str]:
        relay = [] if self.relay == "auto" else ["--relay", self.relay]
        return ["--loop", self.loop, *relay]

    @property
    def env(self) -> dict[str, str]:
        return {"FASTSOCKS_NO_EXTENSIONS": "1"} if self.impl == "py" else {}

    def check(self, server: FastsocksProcess) -> None:
        """The server really runs this loop and implementation."""
        assert server.loop == self.loop, server.log
        if self.impl == "c":
            assert server.impl.startswith("accelerated"), server.log
        else:
            assert server.impl.startswith("pure (codec: Python, relay: Python)"), server.log
        if self.relay == "protocol":
            assert "protocol relay" in server.impl, server.log


#: The main matrix: every e2e test runs on each of these.
COMBOS = [Combo(loop, impl) for loop in ("uvloop", "asyncio") for impl in IMPLS]
#: With the extension built on Linux, "auto" relays with the splice engine, so
#: modules that set ``ALSO_PROTOCOL_RELAY = True`` also run on the Cython
#: protocol relay, which would otherwise go untested end to end.
PROTOCOL_RELAY_COMBOS = ([Combo(loop, "c", "protocol") for loop in ("uvloop", "asyncio")]
                         if HAVE_EXTENSION else [])


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "combo" in metafunc.fixturenames:
        combos = list(COMBOS)
        if getattr(metafunc.module, "ALSO_PROTOCOL_RELAY", False):
            combos += PROTOCOL_RELAY_COMBOS
        metafunc.parametrize("combo", combos, ids=[c.id for c in combos], indirect=True, scope="module")


@pytest.fixture(scope="module")
def combo(request: pytest.FixtureRequest) -> Combo:
    """The loop x implementation of a test (module scope: tests are grouped by it)."""
    return request.param


@pytest.fixture
def start_proxy(fastsocks_server: Callable[..., FastsocksProcess], combo: Combo) -> Callable[..., FastsocksProcess]:
    """Factory: a fresh server on this test's loop and implementation, plus ``args``."""

    def start(*args: str, env: dict[str, str] | None = None, **kw: Any) -> FastsocksProcess:
        server = fastsocks_server(*combo.args, *args, env={**combo.env, **(env or {})}, **kw)
        combo.check(server)
        return server

    return start


@pytest.fixture(scope="module")
def _shared_proxy(combo: Combo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastsocksProcess]:
    launcher = ServerLauncher(tmp_path_factory.mktemp(f"fastsocks-{combo.id}"))
    server = launcher.start(*combo.args, env=combo.env)
    combo.check(server)
    yield server
    launcher.stop_all()


@pytest.fixture
def proxy(_shared_proxy: FastsocksProcess) -> Iterator[FastsocksProcess]:
    """A server with default settings on this test's loop and implementation.

    One process per module and combination serves the tests that need no
    special settings (starting one per test would double the suite's time).
    Each test must leave it running and add no error to its log.
    """
    before = len(_shared_proxy.log)
    yield _shared_proxy
    if _shared_proxy.proc.poll() is not None:
        pytest.fail(f"fastsocks exited with {_shared_proxy.proc.returncode} during the test:\n{_shared_proxy.log}")
    new = _shared_proxy.log[before:]
    if log_errors(new):
        pytest.fail(f"fastsocks logged an error or a traceback during the test:\n{new}")


# -- local targets ------------------------------------------------------------


class TcpTarget:
    """A threaded TCP server on loopback port 0; ``handler(conn)`` per connection.

    ``peers`` records each accepted connection's peer address (the proxy's
    outbound socket, when the proxy connects), ``errors`` what the handlers
    raised.  ``close()`` stops everything within a bounded time.
    """

    def __init__(self, handler: Callable[[socket.socket], None], host: str = "127.0.0.1",
                 backlog: int = 512, conn_timeout: float = 60.0) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.handler = handler
        self.conn_timeout = conn_timeout
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(backlog)
        self.sock.settimeout(0.05)
        self.host, self.port = self.sock.getsockname()[:2]
        self.peers: list[tuple[str, int]] = []
        self.errors: list[BaseException] = []
        self.conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._accepted = threading.Condition(self._lock)
        self._thread = threading.Thread(target=self._accept_loop, name=f"target-{self.port}", daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(self.conn_timeout)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            with self._lock:
                if self._stop.is_set():
                    conn.close()
                    return
                self.conns.append(conn)
                self.peers.append(peer[:2])
                self._threads.append(thread)
                self._accepted.notify_all()
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self.handler(conn)
        except OSError as exc:
            if not self._stop.is_set():
                self.errors.append(exc)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(exc)
        finally:
            conn.close()

    def wait_accepted(self, count: int = 1, timeout: float = 5.0) -> list[tuple[str, int]]:
        with self._lock:
            ok = self._accepted.wait_for(lambda: len(self.peers) >= count, timeout)
            assert ok, f"the target accepted {len(self.peers)} connections, expected {count}"
            return list(self.peers)

    def join(self, timeout: float = 10.0) -> None:
        """Wait for the handlers that have started to finish."""
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            assert not thread.is_alive(), "a target handler did not finish in time"

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        with self._lock:
            conns, threads = list(self.conns), list(self._threads)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in threads:
            thread.join(5)


@pytest.fixture
def tcp_target() -> Iterator[Callable[..., TcpTarget]]:
    """Factory: ``tcp_target(handler, host="127.0.0.1")``, closed at teardown."""
    targets: list[TcpTarget] = []

    def make(handler: Callable[[socket.socket], None], host: str = "127.0.0.1", **kw: Any) -> TcpTarget:
        target = TcpTarget(handler, host, **kw)
        targets.append(target)
        return target

    yield make
    for target in targets:
        target.close()


def echo_handler(conn: socket.socket) -> None:
    """Echo until EOF, then close."""
    while True:
        data = conn.recv(65536)
        if not data:
            return
        conn.sendall(data)


@pytest.fixture
def echo_target(tcp_target: Callable[..., TcpTarget]) -> TcpTarget:
    return tcp_target(echo_handler)


@pytest.fixture
def echo_process() -> Iterator[EchoProcess]:
    """An echo server in its own process that can hold thousands of connections."""
    target = EchoProcess()
    yield target
    target.close()


@pytest.fixture
def echo_target6(tcp_target: Callable[..., TcpTarget]) -> TcpTarget:
    return tcp_target(echo_handler, "::1")


class _Handler(http.server.BaseHTTPRequestHandler):
    timeout = 10  # a stuck client must not keep server_close() waiting

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        body = f"hello from fastsocks tests: {self.path} via {self.client_address[0]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


class _HTTPServer6(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6


@dataclass
class HttpTarget:
    host: str
    port: int

    @property
    def url_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    def url(self, path: str = "/", host: str | None = None) -> str:
        h = self.url_host if host is None else host
        return f"http://{h}:{self.port}{path}"


def _http_target(host: str) -> Iterator[HttpTarget]:
    cls = _HTTPServer6 if ":" in host else http.server.ThreadingHTTPServer
    server = cls((host, 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield HttpTarget(host, server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def udp_echo() -> Iterator[UdpEcho]:
    """A UDP echo on 127.0.0.1 (procs.UdpEcho: ``port``, ``received``)."""
    echo = UdpEcho("127.0.0.1")
    yield echo
    echo.close()


@pytest.fixture
def http_target() -> Iterator[HttpTarget]:
    """An HTTP/1.0 server on 127.0.0.1 that answers every GET with 200."""
    yield from _http_target("127.0.0.1")


@pytest.fixture
def http_target6() -> Iterator[HttpTarget]:
    """The same on ::1."""
    yield from _http_target("::1")


# -- streams with checksums ------------------------------------------------------


class PatternStream:
    """``total`` bytes of pseudo-random data in 1 MiB chunks, each numbered.

    Every chunk starts with its index, so a lost, repeated or reordered chunk
    changes the SHA-256 at the receiver.
    """

    CHUNK = 1 << 20

    def __init__(self, total: int, seed: bytes = b"") -> None:
        self.total = total
        self.base = hashlib.shake_256(b"fastsocks" + seed).digest(self.CHUNK)
        self.sha256 = hashlib.sha256()
        self.sent = 0

    def chunks(self) -> Iterator[bytes]:
        index = 0
        while self.sent < self.total:
            n = min(self.CHUNK, self.total - self.sent)
            chunk = (struct.pack(">Q", index) + self.base[8:])[:n]
            index += 1
            self.sha256.update(chunk)
            yield chunk
            self.sent += n

    def send_all(self, sock: socket.socket) -> None:
        for chunk in self.chunks():
            sock.sendall(chunk)


def recv_all(sock: socket.socket, bufsize: int = 1 << 20) -> tuple[int, str]:
    """Read until EOF: (bytes read, hex SHA-256)."""
    digest = hashlib.sha256()
    total = 0
    buf = bytearray(bufsize)
    view = memoryview(buf)
    while True:
        n = sock.recv_into(buf)
        if not n:
            return total, digest.hexdigest()
        digest.update(view[:n])
        total += n


class ThreadResult:
    """Run ``fn`` in a thread; ``result()`` re-raises what it raised."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, *args), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            self._value = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - re-raised in result()
            self._error = exc

    def result(self, timeout: float = 60.0) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"thread did not finish within {timeout} s"
        if self._error is not None:
            raise self._error
        return self._value


# -- a raw SOCKS5 client ---------------------------------------------------------


def encode_address(host: str, port: int) -> bytes:
    """ATYP DST.ADDR DST.PORT (RFC 1928 §5)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        name = host.encode("ascii") if host.isascii() else host.encode("idna")
        return b"\x03" + bytes((len(name),)) + name + struct.pack(">H", port)
    atyp = b"\x01" if ip.version == 4 else b"\x04"
    return atyp + ip.packed + struct.pack(">H", port)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes; AssertionError if the peer closes first."""
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise AssertionError(f"connection closed after {data!r}, expected {n} bytes")
        data += chunk
    return data


def read_reply(sock: socket.socket) -> tuple[int, str, int]:
    """VER REP RSV ATYP BND.ADDR BND.PORT: (REP, host, port)."""
    head = recv_exact(sock, 4)
    assert head[0] == 0x05 and head[2] == 0x00, head
    atyp = head[3]
    if atyp == 0x01:
        host = socket.inet_ntop(socket.AF_INET, recv_exact(sock, 4))
    elif atyp == 0x04:
        host = socket.inet_ntop(socket.AF_INET6, recv_exact(sock, 16))
    elif atyp == 0x03:
        host = recv_exact(sock, recv_exact(sock, 1)[0]).decode()
    else:
        raise AssertionError(f"reply with ATYP {atyp:#04x}: {head!r}")
    (port,) = struct.unpack(">H", recv_exact(sock, 2))
    return head[1], host, port


def read_until_closed(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the peer sends until it closes (or resets) the connection.

    Fails if it is still open after ``timeout``.
    """
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        except socket.timeout:
            raise AssertionError(f"connection still open after {timeout} s (got {data!r})") from None
        if not chunk:
            return data
        data += chunk
        if time.monotonic() > deadline:
            raise AssertionError(f"connection still open after {timeout} s (got {data[:100]!r}...)")


class Socks:
    """A minimal raw SOCKS5 client for protocol-level assertions."""

    encode_address = staticmethod(encode_address)
    recv_exact = staticmethod(recv_exact)
    read_reply = staticmethod(read_reply)
    read_until_closed = staticmethod(read_until_closed)

    @staticmethod
    def open(proxy: tuple[str, int], timeout: float = 10.0,
             source: str | None = None) -> socket.socket:
        """A TCP connection to ``proxy``, from the loopback address ``source`` if given."""
        family = socket.AF_INET6 if ":" in proxy[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            if source is not None:
                sock.bind((source, 0))
            sock.connect(proxy)
        except BaseException:
            sock.close()
            raise
        return sock

    @staticmethod
    def request(command: int, host: str, port: int) -> bytes:
        return b"\x05" + bytes((command,)) + b"\x00" + encode_address(host, port)

    @staticmethod
    def userpass(username: str, password: str) -> bytes:
        u, p = username.encode(), password.encode()
        return b"\x01" + bytes((len(u),)) + u + bytes((len(p),)) + p

    @classmethod
    def connect(cls, proxy: tuple[str, int], host: str, port: int, *,
                auth: tuple[str, str] | None = None, extra: bytes = b"",
                timeout: float = 10.0,
                source: str | None = None) -> tuple[socket.socket, tuple[int, str, int]]:
        """Negotiate a CONNECT; returns the socket and the reply (REP, host, port).

        ``extra`` is sent in the same packet right after the request.  The
        caller closes the socket (also on a failure reply).
        """
        sock = cls.open(proxy, timeout, source)
        try:
            if auth is None:
                sock.sendall(b"\x05\x01\x00")
                assert recv_exact(sock, 2) == b"\x05\x00"
            else:
                sock.sendall(b"\x05\x01\x02")
                assert recv_exact(sock, 2) == b"\x05\x02"
                sock.sendall(cls.userpass(*auth))
                assert recv_exact(sock, 2) == b"\x01\x00"
            sock.sendall(cls.request(0x01, host, port) + extra)
            reply = read_reply(sock)
        except BaseException:
            sock.close()
            raise
        return sock, reply


@pytest.fixture
def socks() -> type[Socks]:
    return Socks


@pytest.fixture
def streams() -> Any:
    """``PatternStream``, ``recv_all`` and ``ThreadResult`` for the bulk tests."""

    class _Streams:
        Pattern = PatternStream
        recv_all = staticmethod(recv_all)
        Thread = ThreadResult

    return _Streams


@pytest.fixture
def both_ways(tcp_target: Callable[..., TcpTarget]) -> Callable[[tuple[str, int], int], None]:
    """``both_ways(proxy, size)``: ``size`` bytes each way at the same time through
    the SOCKS5 server at ``proxy`` to a target, each side half-closing after its
    last byte; asserts the SHA-256 of everything each end received."""

    def run(proxy: tuple[str, int], size: int) -> None:
        seen: dict[str, tuple[int, str]] = {}

        def handler(conn: socket.socket) -> None:
            down = PatternStream(size, b"down")

            def send() -> None:
                down.send_all(conn)
                conn.shutdown(socket.SHUT_WR)

            sender = ThreadResult(send)
            seen["up"] = recv_all(conn)
            sender.result(60)
            seen["down"] = (down.sent, down.sha256.hexdigest())

        target = tcp_target(handler)
        sock, (rep, _, _) = Socks.connect(proxy, *target.address, timeout=60)
        with sock:
            assert rep == 0
            up = PatternStream(size, b"up")

            def send() -> None:
                up.send_all(sock)
                sock.shutdown(socket.SHUT_WR)

            sender = ThreadResult(send)
            received = recv_all(sock)
            sender.result(60)
        target.join(30)
        assert not target.errors, target.errors
        assert seen["up"] == (size, up.sha256.hexdigest())
        assert received == seen["down"] and received[0] == size

    return run


# -- ports that refuse or never answer --------------------------------------------


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections: bound, never listening.

    Keeping it bound means no one else can start listening there meanwhile.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest.fixture
def blackhole() -> Iterator[tuple[str, int]]:
    """A loopback address whose SYNs are dropped: a listener with a full backlog.

    Linux drops a SYN for a listener whose accept queue is full (nothing ever
    accepts here), so a connect to it hangs, as to a black-holed host.  The
    fixture fills the queue until a connect stays pending, and proves it.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address = listener.getsockname()
    fillers: list[socket.socket] = []
    try:
        import selectors

        with selectors.DefaultSelector() as sel:
            for _ in range(64):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                fillers.append(s)
                s.setblocking(False)
                s.connect_ex(address)
                sel.register(s, selectors.EVENT_WRITE)
                ready = sel.select(0.3)
                sel.unregister(s)
                if not ready:
                    break
            else:
                pytest.fail("could not fill the listen backlog of a loopback listener")
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.settimeout(0.5)
        try:
            with pytest.raises(socket.timeout):
                probe.connect(address)
        finally:
            probe.close()
        yield address
    finally:
        for s in fillers:
            s.close()
        listener.close()


# -- users file and curl -----------------------------------------------------------


def run_fastsocks(*args: str, input: bytes | None = None, env: dict[str, str] | None = None,
                  timeout: float = 30.0) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*fastsocks_command(), *args], input=input, capture_output=True,
                          env=clean_env(env), timeout=timeout)


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    """A users file made with ``fastsocks users add``: alice / s3cret (bcrypt)."""
    path = tmp_path / "users"
    result = run_fastsocks("users", "add", str(path), "alice", input=b"s3cret\n")
    assert result.returncode == 0, result.stderr
    return path


@pytest.fixture
def run_cli() -> Callable[..., subprocess.CompletedProcess[bytes]]:
    """``run_cli(*args, input=..., env=...)`` runs ``python -m fastsocks`` to completion."""
    return run_fastsocks


@pytest.fixture(scope="session")
def curl_path() -> str:
    """The curl binary (installed on the test machine; never installed here)."""
    path = shutil.which("curl")
    assert path, "curl is required for the end-to-end client tests"
    return path


@pytest.fixture
def curl(curl_path: str) -> Callable[..., subprocess.CompletedProcess[bytes]]:
    """``curl(*args)``: run curl silently with a bounded time, no proxy from the environment."""

    def run(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [curl_path, "--silent", "--show-error", "--max-time", "10", *args],
            capture_output=True, env=clean_env(), timeout=timeout,
        )

    return run
