"""Behind a load balancer: the PROXY protocol (v1 and v2) on a listener.

Two kinds of test, all on loopback:

* raw sockets playing the balancer: headers of each kind, split anyhow, with
  TLVs, LOCAL health checks, spoofing both ways (a header from an untrusted
  source; no header, or garbage, from a trusted one), the header timeout,
  per-listener settings, and UDP ASSOCIATE locked to the real client;
* a real HAProxy (Debian's ``haproxy``, installed by tests/run.sh) started
  here with ``send-proxy-v2`` in front of two fastsocks processes, clients
  connecting through it from 127.0.0.5 (allowed by a rule) and 127.0.0.6
  (denied); and curl through HAProxy with ``send-proxy`` (v1).
"""

from __future__ import annotations

import random
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from procs import free_port, terminate, wait_lines

from fastsocks import _codec_py, codec

SIG = b"\r\n\r\n\x00\r\nQUIT\n"
WAIT = 5.0  # seconds an access-log line may take (written at most 1 s late)


def v2_inet(src: str, sport: int, dst: str = "127.0.0.1", dport: int = 1080,
            tlvs: bytes = b"") -> bytes:
    body = (socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
            + tlvs)
    return SIG + b"\x21\x11" + struct.pack("!H", len(body)) + body


def v2_inet6(src: str, sport: int, dst: str = "::1", dport: int = 1080) -> bytes:
    body = (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
            + struct.pack("!HH", sport, dport))
    return SIG + b"\x21\x21" + struct.pack("!H", len(body)) + body


V2_LOCAL = SIG + b"\x20\x00\x00\x00"


def access_lines(path: Path, count: int, timeout: float = WAIT) -> list[list[str]]:
    """Wait until ``path`` has ``count`` lines; each split into its fields."""
    return [line.split(" ") for line in wait_lines(path, count, timeout)]


def socks_connect(sock: socket.socket, socks: Any, port: int) -> int:
    """Greeting and CONNECT to 127.0.0.1:``port`` on a connected socket; the reply code."""
    sock.sendall(b"\x05\x01\x00")
    assert socks.recv_exact(sock, 2) == b"\x05\x00"
    sock.sendall(socks.request(0x01, "127.0.0.1", port))
    return socks.read_reply(sock)[0]


def write_config(tmp_path: Path, text: str, name: str = "fastsocks.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


ALLOW_ONLY_5 = """
[[rules]]
action = "allow"
src = ["192.0.2.5/32", "127.0.0.5/32", "2001:db8::5/128"]
dst = ["127.0.0.0/8"]

[[rules]]
action = "deny"
"""


@pytest.fixture
def pp_server(fastsocks_server: Callable[..., Any], tmp_path: Path
              ) -> Callable[..., tuple[Any, Path]]:
    """A fastsocks trusting 127.0.0.1 for PROXY headers, rules allowing only client .5."""

    def start(*args: str, trusted: str = "127.0.0.1/32", rules: str = ALLOW_ONLY_5,
              env: dict[str, str] | None = None) -> tuple[Any, Path]:
        log = tmp_path / f"access-{random.randrange(1 << 30)}.log"
        config = write_config(tmp_path, rules, f"rules-{log.stem}.toml")
        server = fastsocks_server("--config", str(config), "--proxy-protocol-from", trusted,
                                  "--access-log", str(log), *args, env=env)
        return server, log

    return start


def connect_from(source: str, address: tuple[str, int], timeout: float = 10.0) -> socket.socket:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect(address)
    return sock


# -- headers from a trusted balancer -----------------------------------------------


@pytest.mark.parametrize("impl", ["c", "py"])
@pytest.mark.parametrize("kind", ["v1", "v2", "v2-tlvs"])
def test_header_gives_the_real_client(kind: str, impl: str, pp_server: Any, socks: Any,
                                      echo_target: Any) -> None:
    server, log = pp_server(env={"FASTSOCKS_NO_EXTENSIONS": "1"} if impl == "py" else None)
    if kind == "v1":
        header = b"PROXY TCP4 192.0.2.5 127.0.0.1 40000 1080\r\n"
    elif kind == "v2":
        header = v2_inet("192.0.2.5", 40000)
    else:  # ALPN, authority, NOOP, and a vendor TLV: walked and skipped
        tlvs = b"\x01\x00\x02h2" + b"\x02\x00\x0bexample.org" + b"\x04\x00\x00" + b"\xea\x00\x02ab"
        header = v2_inet("192.0.2.5", 40000, tlvs=tlvs)
    with socket.create_connection(server.address, timeout=10) as sock:
        # The header and the greeting in one segment: the greeting is not lost.
        sock.sendall(header + b"\x05\x01\x00")
        assert socks.recv_exact(sock, 2) == b"\x05\x00"
        sock.sendall(socks.request(0x01, "127.0.0.1", echo_target.port))
        assert socks.read_reply(sock)[0] == 0
        sock.sendall(b"ping")
        assert socks.recv_exact(sock, 4) == b"ping"
    # Rules judged the real client (only 192.0.2.5 is allowed); the log names it.
    (line,) = access_lines(log, 1)
    assert line[1] == "192.0.2.5:40000", line
    assert line[-1] == "eof"


def test_rules_judge_the_real_client(pp_server: Any, socks: Any, echo_target: Any) -> None:
    server, log = pp_server()
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(v2_inet("192.0.2.6", 40001))
        assert socks_connect(sock, socks, echo_target.port) == 2  # X'02': not .5
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(b"PROXY TCP6 2001:db8::5 ::1 40002 1080\r\n")
        assert socks_connect(sock, socks, echo_target.port) == 0
    lines = access_lines(log, 2)
    clients = sorted(line[1] for line in lines)
    assert clients == ["192.0.2.6:40001", "[2001:db8::5]:40002"], lines


def test_header_byte_by_byte(pp_server: Any, socks: Any, echo_target: Any) -> None:
    server, log = pp_server()
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for b in v2_inet6("2001:db8::5", 40003):
            sock.send(bytes((b,)))
            time.sleep(0.002)
        assert socks_connect(sock, socks, echo_target.port) == 0
    (line,) = access_lines(log, 1)
    assert line[1] == "[2001:db8::5]:40003"


def test_local_health_check_and_local_as_the_balancer(pp_server: Any, socks: Any,
                                                      echo_target: Any) -> None:
    # The LOCAL command (and v1 UNKNOWN): use the connection's own endpoints;
    # a health check that closes right after it leaves no error behind.
    server, log = pp_server(rules="")
    for header in (V2_LOCAL, b"PROXY UNKNOWN\r\n"):
        with socket.create_connection(server.address, timeout=10) as sock:
            sock.sendall(header)
    # A LOCAL connection that goes on to speak SOCKS is served as the balancer.
    with socket.create_connection(server.address, timeout=10) as sock:
        balancer = sock.getsockname()
        sock.sendall(V2_LOCAL)
        assert socks_connect(sock, socks, echo_target.port) == 0
        sock.sendall(b"x")
        assert socks.recv_exact(sock, 1) == b"x"
    lines = access_lines(log, 3)
    served = [line for line in lines if line[3] == "CONNECT"]
    assert [line[1] for line in served] == [f"{balancer[0]}:{balancer[1]}"], lines
    assert sorted(line[-1] for line in lines if line[3] == "-") == ["client_closed"] * 2


# -- spoofing, both ways -------------------------------------------------------------


def test_header_from_an_untrusted_source_is_refused(pp_server: Any, socks: Any,
                                                    echo_target: Any) -> None:
    server, log = pp_server(trusted="127.0.0.2/32")  # the client is 127.0.0.1
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(v2_inet("192.0.2.5", 40000) + b"\x05\x01\x00")
        assert socks.read_until_closed(sock) == b""  # not a byte of SOCKS
    (line,) = access_lines(log, 1)
    assert line[1].startswith("127.0.0.1:") and line[-1] == "proxy_protocol_untrusted", line
    assert "not a trusted balancer" in server.log
    assert echo_target.peers == []


def test_trusted_source_without_a_header_is_refused(pp_server: Any, socks: Any,
                                                    echo_target: Any) -> None:
    # The spec forbids guessing: a plain SOCKS greeting is not taken as one.
    server, log = pp_server()
    for data in (b"\x05\x01\x00", b"PROXY TCP4 192.0.2.5 127.0.0.1 1 99999\r\n\x05\x01\x00",
                 SIG + b"\x21\x11\x00\x0c" + b"\x00" * 11, b"\x04\x01\x00\x50"):
        with socket.create_connection(server.address, timeout=10) as sock:
            sock.sendall(data)
            if data.startswith(SIG):
                sock.shutdown(socket.SHUT_WR)  # a truncated header, then EOF
            assert socks.read_until_closed(sock) == b"", data
    lines = access_lines(log, 4)
    assert [line[-1] for line in lines].count("proxy_protocol_error") == 3, lines
    assert echo_target.peers == []
    assert "no PROXY protocol header (first byte 0x05)" in server.log


def test_header_timeout(pp_server: Any, socks: Any) -> None:
    server, log = pp_server("--proxy-protocol-timeout", "3", "--handshake-timeout", "60")
    with socket.create_connection(server.address, timeout=10) as silent, \
            socket.create_connection(server.address, timeout=10) as partial:
        partial.sendall(SIG[:8])  # a header that never completes
        started = time.monotonic()
        assert socks.read_until_closed(silent, timeout=8) == b""
        assert socks.read_until_closed(partial, timeout=8) == b""
        assert time.monotonic() - started >= 2.0
    lines = access_lines(log, 2)
    assert [line[-1] for line in lines] == ["proxy_protocol_timeout"] * 2, lines


def test_listener_without_proxy_protocol_is_unaffected(fastsocks_server: Callable[..., Any],
                                                       tmp_path: Path, socks: Any,
                                                       echo_target: Any) -> None:
    config = write_config(tmp_path, """
listen = ["127.0.0.1:0", "127.0.0.3:0"]
[proxy_protocol]
trusted = ["127.0.0.0/8"]
listeners = ["127.0.0.3:0"]
""")
    server = fastsocks_server("--config", str(config), default_listen=True)
    plain = next(a for a in server.addresses if a[0] == "127.0.0.1")
    behind = next(a for a in server.addresses if a[0] == "127.0.0.3")
    sock, (rep, _, _) = socks.connect(plain, "127.0.0.1", echo_target.port)
    assert rep == 0
    sock.close()
    with socket.create_connection(behind, timeout=10) as sock:
        sock.sendall(b"\x05\x01\x00")
        assert socks.read_until_closed(sock) == b""
    with socket.create_connection(behind, timeout=10) as sock:
        sock.sendall(v2_inet("192.0.2.5", 40000))
        assert socks_connect(sock, socks, echo_target.port) == 0


# -- UDP ASSOCIATE locks to the real client --------------------------------------------


def test_udp_association_locks_to_the_real_client(pp_server: Any, socks: Any) -> None:
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", 0))
    echo.settimeout(0.1)
    server, log = pp_server("--udp-public-address", "127.0.0.1", rules="")
    real = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    real.bind(("127.0.0.5", 0))  # the client the header names
    real.settimeout(3)
    balancer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    balancer.bind(("127.0.0.1", 0))  # the TCP peer's own address
    balancer.settimeout(0.5)
    try:
        with socket.create_connection(server.address, timeout=10) as tcp:
            tcp.sendall(v2_inet("127.0.0.5", real.getsockname()[1]) + b"\x05\x01\x00")
            assert socks.recv_exact(tcp, 2) == b"\x05\x00"
            tcp.sendall(socks.request(0x03, "0.0.0.0", 0))
            rep, host, port = socks.read_reply(tcp)
            assert rep == 0
            head = b"\x00\x00\x00" + socks.encode_address("127.0.0.1", echo.getsockname()[1])
            # From the balancer's address: dropped, never reaches the target.
            balancer.sendto(head + b"spoofed", (host, port))
            # From the real client: relayed.
            real.sendto(head + b"real", (host, port))
            got = []
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and b"real" not in got:
                try:
                    data, peer = echo.recvfrom(2048)
                except socket.timeout:
                    continue
                got.append(data)
                echo.sendto(data, peer)
            assert got == [b"real"], got
            answer = real.recv(2048)
            assert answer.endswith(b"real")
    finally:
        for s in (echo, real, balancer):
            s.close()
    (line,) = access_lines(log, 1)
    assert line[1].startswith("127.0.0.5:") and line[3] == "UDP_ASSOCIATE", line


# -- configuration -------------------------------------------------------------------


@pytest.mark.parametrize("text, error", [
    ('[proxy_protocol]\ntrusted = ["10.0.0.1/8"]\n', "proxy_protocol.trusted[0]: must be a CIDR"),
    ('[proxy_protocol]\ntrusted = ["10.0.0.0/8"]\ntimeout = 2\n',
     "proxy_protocol.timeout: must be at least 3 seconds"),
    ('[proxy_protocol]\nlisteners = ["127.0.0.1:1080"]\n', "proxy_protocol.trusted: missing"),
    ('[proxy_protocol]\ntrusted = ["10.0.0.0/8"]\nlisteners = ["127.0.0.1:9"]\n',
     "127.0.0.1:9 is not one of the listen addresses"),
    ('[proxy_protocol]\ntrusted = ["10.0.0.0/8"]\ntrusted_from = 1\n',
     "proxy_protocol.trusted_from: unknown key"),
])
def test_config_errors_name_the_key(run_cli: Callable[..., Any], tmp_path: Path, text: str,
                                    error: str) -> None:
    config = write_config(tmp_path, text)
    result = run_cli("check", str(config))
    assert result.returncode == 2
    assert error in result.stderr.decode(), result.stderr.decode()


def test_check_shows_and_round_trips(run_cli: Callable[..., Any], tmp_path: Path) -> None:
    config = write_config(tmp_path, """
listen = ["127.0.0.1:1080", "127.0.0.2:1080"]
[proxy_protocol]
trusted = ["10.0.0.0/8", "fd00::/8"]
listeners = ["127.0.0.2:1080"]
timeout = 4
""")
    first = run_cli("check", str(config))
    assert first.returncode == 0, first.stderr
    out = first.stdout.decode()
    assert 'trusted = ["10.0.0.0/8", "fd00::/8"]' in out
    assert 'listeners = ["127.0.0.2:1080"]' in out and "timeout = 4.0" in out
    again = write_config(tmp_path, out, "again.toml")
    second = run_cli("check", str(again))
    assert second.returncode == 0, second.stderr
    assert second.stdout.decode().splitlines()[1:] == out.splitlines()[1:]


def test_cli_flag_errors(run_cli: Callable[..., Any]) -> None:
    result = run_cli("--proxy-protocol-from", "10.0.0.1/8")
    assert result.returncode == 2 and b"proxy-protocol-from '10.0.0.1/8'" in result.stderr
    result = run_cli("--proxy-protocol-from", "10.0.0.0/8", "--proxy-protocol-timeout", "1")
    assert result.returncode == 2 and b"at least 3 s" in result.stderr


# -- a real HAProxy in front of two fastsocks ------------------------------------------


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[Callable[..., tuple[str, int]]]:
    """``haproxy(backends, proxy="send-proxy-v2")`` runs HAProxy in front of them."""
    binary = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
    assert binary, "haproxy is required (tests/run.sh installs Debian's package)"
    procs: list[subprocess.Popen[bytes]] = []

    def start(backends: list[tuple[str, int]], send: str = "send-proxy-v2"
              ) -> tuple[str, int]:
        host = "127.0.0.31"
        port = free_port(host)
        servers = "\n".join(
            f"    server fs{i} {h}:{p} {send} check check-send-proxy inter 300ms rise 1 fall 2"
            for i, (h, p) in enumerate(backends))
        config = tmp_path / f"haproxy-{port}.cfg"
        config.write_text(f"""
global
    maxconn 200

defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend socks
    bind {host}:{port}
    default_backend fastsocks

backend fastsocks
    balance roundrobin
{servers}
""", encoding="utf-8")
        check = subprocess.run([binary, "-c", "-f", str(config)], capture_output=True)
        assert check.returncode == 0, check.stderr.decode() + check.stdout.decode()
        log = open(tmp_path / f"haproxy-{port}.log", "wb")
        proc = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        procs.append(proc)
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, (tmp_path / f"haproxy-{port}.log").read_text()
            try:
                socket.create_connection((host, port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "haproxy did not start listening"
                time.sleep(0.05)
        time.sleep(1.0)  # a few health checks (with LOCAL headers) have run: all UP
        return host, port

    yield start
    for proc in procs:
        terminate(proc)


def test_haproxy_send_proxy_v2_two_instances(haproxy: Any, pp_server: Any, socks: Any,
                                             echo_target: Any) -> None:
    first, log1 = pp_server()
    second, log2 = pp_server(env={"FASTSOCKS_NO_EXTENSIONS": "1"})
    front = haproxy([first.address, second.address])
    for i in range(6):
        with connect_from("127.0.0.5", front) as sock:
            assert socks_connect(sock, socks, echo_target.port) == 0
            sock.sendall(b"hello %d" % i)
            assert socks.recv_exact(sock, 7) == b"hello %d" % i
    for _ in range(2):
        with connect_from("127.0.0.6", front) as sock:
            assert socks_connect(sock, socks, echo_target.port) == 2  # the rule: only .5
    # Both instances served, and each access log names the real client.
    assert first.stop() == 0 and second.stop() == 0
    served = {}
    for name, log in (("first", log1), ("second", log2)):
        lines = [line.split(" ") for line in log.read_text().splitlines()]
        connects = [line for line in lines if line[3] == "CONNECT"]
        assert connects, f"{name} instance served nothing: {lines}"
        for line in connects:
            assert line[1].startswith(("127.0.0.5:", "127.0.0.6:")), line
            assert line[6] == ("0" if line[1].startswith("127.0.0.5:") else "2"), line
        served[name] = len([line for line in connects if line[6] == "0"])
        # The health checks (LOCAL) are logged as the balancer, never as an error
        # ("-": HAProxy reset the check before the server could read its peer).
        checks = [line for line in lines if line[3] == "-"]
        assert all(line[1] == "-" or line[1].startswith("127.0.0.1:") for line in checks), checks
        assert "ERROR" not in (first.log + second.log)
    assert served["first"] + served["second"] == 6 and min(served.values()) >= 2, served


def test_curl_through_haproxy_send_proxy_v1(haproxy: Any, pp_server: Any, curl: Any,
                                            http_target: Any) -> None:
    server, log = pp_server()
    front = haproxy([server.address], send="send-proxy")
    result = curl("--interface", "127.0.0.5", "--socks5-hostname", f"{front[0]}:{front[1]}",
                  http_target.url("/hello"))
    assert result.returncode == 0, result.stderr.decode()
    denied = curl("--interface", "127.0.0.6", "--socks5-hostname", f"{front[0]}:{front[1]}",
                  http_target.url("/hello"))
    assert denied.returncode == 97, denied  # curl: the proxy refused the connection
    assert server.stop() == 0  # flushes the access log
    lines = [line for line in access_lines(log, 2) if line[3] == "CONNECT"]
    assert sorted(line[1].split(":")[0] for line in lines) == ["127.0.0.5", "127.0.0.6"]


# -- PP2_TYPE_CRC32C (§2.2.5), as HAProxy sends it -------------------------------------

CRC32C = "send-proxy-v2 proxy-v2-options crc32c"


def _capture_header(listener: socket.socket, source: str, timeout: float = 10.0) -> bytes:
    """The first PROXY v2 header from ``source`` that reaches ``listener`` (health
    checks, LOCAL, are skipped)."""
    listener.settimeout(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(timeout)
            data = b""
            while len(data) < 16 or len(data) < 16 + int.from_bytes(data[14:16], "big"):
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            if len(data) < 16:
                continue
            header = data[:16 + int.from_bytes(data[14:16], "big")]
            parsed = _codec_py.parse_proxy_header(header)
            if not parsed.local and parsed.src_host == source:
                return header
    raise AssertionError(f"no PROXY header from {source} within {timeout} s")


def test_haproxy_crc32c_checked(haproxy: Any, pp_server: Any, socks: Any,
                                echo_target: Any) -> None:
    """HAProxy's checksummed headers pass both codecs; a header whose checksum
    does not match is refused: the connection closed without a SOCKS reply."""
    first, _ = pp_server()
    second, _ = pp_server(env={"FASTSOCKS_NO_EXTENSIONS": "1"})
    front = haproxy([first.address, second.address], send=CRC32C)
    for i in range(4):
        with connect_from("127.0.0.5", front) as sock:
            assert socks_connect(sock, socks, echo_target.port) == 0
            sock.sendall(b"hello %d" % i)
            assert socks.recv_exact(sock, 7) == b"hello %d" % i
    # What HAProxy sends, taken from the wire: a CRC32C TLV that both codecs check.
    with socket.create_server(("127.0.0.1", 0)) as capture:
        tap = haproxy([capture.getsockname()], send=CRC32C)
        with connect_from("127.0.0.5", tap) as client:
            client.sendall(b"\x05\x01\x00")
            header = _capture_header(capture, "127.0.0.5")
    for parse in (_codec_py.parse_proxy_header, codec.parse_proxy_header):
        parsed = parse(header)
        assert 0x03 in dict(parsed.tlvs), parsed.tlvs
    forged = bytearray(header)
    forged[19] ^= 0x01  # the source address's last octet: 127.0.0.5 -> 127.0.0.4
    for server in (first, second):
        with connect_from("127.0.0.1", server.address) as sock:
            sock.sendall(bytes(forged) + b"\x05\x01\x00")
            assert socks.read_until_closed(sock) == b""  # no SOCKS reply at all
        server.wait_log("PROXY v2 header: CRC32C is 0x")
        assert "Traceback" not in server.log
