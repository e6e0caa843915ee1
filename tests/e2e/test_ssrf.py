"""The SSRF-safe default and ``dst`` rules against IPv6 forms that carry an IPv4 address.

Issue 17: CONNECT to ``64:ff9b::7f00:1`` (NAT64), ``2002:7f00:1::`` (6to4),
``::127.0.0.1`` (IPv4-compatible), ``::ffff:0:127.0.0.1`` (SIIT) was dialled
and a UDP datagram to ``64:ff9b::a9fe:a9fe`` sent, where the IPv4 address
inside is protected.  A real fastsocks with a non-loopback listener
(0.0.0.0, reached through 127.0.0.1, with a users file so that it is no open
proxy meanwhile) must answer X'02' for CONNECT, drop and count UDP datagrams
(on both datagram paths: the C path keeps the decision Python made for an IP
literal), and a ``deny dst`` rule must see the IPv4 inside for BIND and
CONNECT.  And the start-up line says whether the SSRF-safe default is on.

Nothing is dialled: every target here is denied before a connection or a
datagram leaves, and the allowed ones are on loopback.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from builds import UDP_PATH_ARGS
from launcher import FastsocksProcess
from procs import UdpEcho

from fastsocks import codec as fcodec

NOT_ALLOWED = 0x02
AUTH = ("alice", "s3cret")
# Port 9 (discard): were one of these ever let through, nothing on loopback answers it.
PORT = 9

# Forms that carry 127.0.0.1 (and for UDP, 169.254.169.254 too): issue 17's, and the rest.
TEREDO_LOOPBACK = "2001:0:7f00:1:8000:63bf:3fff:fdd2"  # Teredo server 127.0.0.1
# (As the server writes them in its log: ::ffff:0:127.0.0.1 is ::ffff:0:7f00:1 there.)
LOOPBACK_FORMS = ["64:ff9b::7f00:1", "64:ff9b:1::7f00:1", "2002:7f00:1::", "::127.0.0.1",
                  "::ffff:0:7f00:1", TEREDO_LOOPBACK]
UDP_FORMS = LOOPBACK_FORMS + ["64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::"]


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "fastsocks.toml"
    path.write_text(text)
    return str(path)


def _greet(sock: socket.socket, socks: Any) -> None:
    """Method selection and RFC 1929 username/password (alice)."""
    sock.sendall(b"\x05\x01\x02")
    assert socks.recv_exact(sock, 2) == b"\x05\x02"
    sock.sendall(socks.userpass(*AUTH))
    assert socks.recv_exact(sock, 2) == b"\x01\x00"


def _request(socks: Any, proxy: tuple[str, int], command: int, host: str,
             port: int) -> tuple[socket.socket, tuple[int, str, int]]:
    sock = socks.open(proxy)
    try:
        _greet(sock, socks)
        sock.sendall(socks.request(command, host, port))
        return sock, socks.read_reply(sock)
    except BaseException:
        sock.close()
        raise


def _wait_for_log(server: FastsocksProcess, text: str, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while text not in server.log:
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not in the server log:\n{server.log}")
        time.sleep(0.05)
    return server.log


@pytest.fixture
def outside_server(fastsocks_server: Callable[..., FastsocksProcess], users_file: Path,
                   tmp_path: Path) -> Callable[..., FastsocksProcess]:
    """A server listening on 0.0.0.0 (so the SSRF-safe default is on), with a
    users file; ``config`` is the TOML of its rules."""
    def start(config: str = "", *args: str) -> FastsocksProcess:
        path = _config(tmp_path, f'users = "{users_file}"\n{config}')
        return fastsocks_server("--listen", "0.0.0.0:0", "--config", path,
                                "--log-level", "debug", *args)
    return start


def test_connect_to_embedded_loopback_is_denied(outside_server: Callable[..., FastsocksProcess],
                                                 socks: Any, echo_target: Any) -> None:
    server = outside_server()
    proxy = ("127.0.0.1", server.port)
    for host in LOOPBACK_FORMS + ["64:ff9b::a9fe:a9fe"]:
        sock, (rep, _, _) = _request(socks, proxy, 0x01, host, PORT)
        with sock:
            assert rep == NOT_ALLOWED, host
            assert socks.read_until_closed(sock) == b""
    # The plain address as before.
    sock, (rep, _, _) = _request(socks, proxy, 0x01, "127.0.0.1", echo_target.port)
    sock.close()
    assert rep == NOT_ALLOWED
    log = server.log
    assert (f"CONNECT 64:ff9b::7f00:1 port {PORT}: denied by the SSRF-safe default (loopback "
            "destination: IPv4 127.0.0.1 inside the IPv6 address") in log, log
    assert (f"CONNECT 64:ff9b::a9fe:a9fe port {PORT}: denied by the SSRF-safe default "
            "(link-local destination: IPv4 169.254.169.254 inside") in log
    for host in LOOPBACK_FORMS:
        assert f"CONNECT {host} port {PORT}: denied by the SSRF-safe default" in log, host


def test_connect_opened_by_an_allow_rule_for_the_ipv4_inside(
        outside_server: Callable[..., FastsocksProcess], socks: Any, echo_target: Any) -> None:
    """The proxy keeps serving: an explicit allow for 127.0.0.1 lets the plain
    address through, and an embedded form outside its ports stays denied."""
    server = outside_server(f"""
[[rules]]
action = "allow"
dst = ["127.0.0.1/32"]
ports = [{echo_target.port}]
""")
    proxy = ("127.0.0.1", server.port)
    sock, (rep, _, _) = _request(socks, proxy, 0x01, "127.0.0.1", echo_target.port)
    with sock:
        assert rep == 0
        sock.sendall(b"still serving")
        assert socks.recv_exact(sock, 13) == b"still serving"
    sock, (rep, _, _) = _request(socks, proxy, 0x01, "64:ff9b::7f00:1", PORT)
    sock.close()
    assert rep == NOT_ALLOWED


def test_dst_rules_see_the_ipv4_inside(fastsocks_server: Callable[..., FastsocksProcess],
                                       socks: Any, tmp_path: Path) -> None:
    """On loopback (no SSRF default): ``deny dst 127.0.0.0/8`` denies CONNECT and
    BIND to every form that carries a loopback address."""
    server = fastsocks_server("--config", _config(tmp_path, """
[[rules]]
action = "deny"
dst = ["127.0.0.0/8"]
"""))
    for command, name in ((0x01, "CONNECT"), (0x02, "BIND")):
        for host in LOOPBACK_FORMS:
            sock = socks.open(server.address)
            with sock:
                sock.sendall(b"\x05\x01\x00")
                assert socks.recv_exact(sock, 2) == b"\x05\x00"
                sock.sendall(socks.request(command, host, PORT))
                rep, _, _ = socks.read_reply(sock)
                assert rep == NOT_ALLOWED, (name, host)
                assert socks.read_until_closed(sock) == b""
    log = server.log
    for name in ("CONNECT", "BIND"):
        for host in LOOPBACK_FORMS:
            assert f"{name} {host} port {PORT}: denied by rules[0]" in log, (name, host)


def test_udp_to_embedded_forms_is_dropped_and_counted(
        outside_server: Callable[..., FastsocksProcess], socks: Any, udp_echo: UdpEcho,
        udp_path: str) -> None:
    """Each datagram to a protected form is dropped and counted, on both
    datagram paths: three to each target, so that on the C path the second
    and third meet the decision Python left in its table."""
    server = outside_server(f"""
[[rules]]
action = "allow"
commands = ["udp"]
dst = ["127.0.0.1/32"]
ports = [{udp_echo.port}]
""", *UDP_PATH_ARGS[udp_path])
    proxy = ("127.0.0.1", server.port)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(3)
    ctrl, (rep, relay_host, relay_port) = _request(socks, proxy, 0x03, "127.0.0.1",
                                                   udp.getsockname()[1])
    denied = 0
    with ctrl, udp:
        assert rep == 0
        relay = ("127.0.0.1" if relay_host == "0.0.0.0" else relay_host, relay_port)
        udp.sendto(fcodec.build_udp_header("127.0.0.1", udp_echo.port) + b"first", relay)
        assert udp.recv(65535).endswith(b"first")
        for _ in range(3):
            for host in UDP_FORMS:
                udp.sendto(fcodec.build_udp_header(host, PORT) + b"denied", relay)
                denied += 1
        udp.sendto(fcodec.build_udp_header("127.0.0.1", udp_echo.port) + b"after", relay)
        assert udp.recv(65535).endswith(b"after")  # in order: the denied ones came first
    assert udp_echo.received == [b"first", b"after"]
    log = _wait_for_log(server, "datagrams up")
    assert (f"to 64:ff9b::7f00:1 port {PORT} dropped: denied by the SSRF-safe default "
            "(loopback destination: IPv4 127.0.0.1 inside") in log, log
    closed = [line for line in log.splitlines() if "datagrams up" in line]
    assert len(closed) == 1 and closed[0].endswith(f", {denied} dropped"), closed
    assert ("datagrams in C" in log) == (udp_path == "c")


@pytest.mark.parametrize("listen, words", [
    ("0.0.0.0:0", "SSRF-safe default on (listening on 0.0.0.0, not loopback): loopback, "),
    ("127.0.0.2:0", "SSRF-safe default off (listening on loopback only: 127.0.0.2, ::1): "
                    "clients may reach loopback, link-local and private destinations"),
], ids=["on", "off"])
def test_startup_line_says_whether_the_ssrf_default_is_on(
        fastsocks_server: Callable[..., FastsocksProcess], users_file: Path, listen: str,
        words: str) -> None:
    server = fastsocks_server("--listen", listen, "--listen", "[::1]:0",
                              "--users", str(users_file))
    assert words in server.log, server.log
    assert server.log.count("SSRF-safe default") == 1


def test_startup_line_with_workers(fastsocks_server: Callable[..., FastsocksProcess]) -> None:
    """With workers the master says it once (the workers say nothing)."""
    server = fastsocks_server("--workers", "2")
    assert "SSRF-safe default off (listening on loopback only: 127.0.0.1): " in server.log
    assert server.log.count("SSRF-safe default") == 1
