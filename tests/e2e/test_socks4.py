"""SOCKS4 and SOCKS4a beside SOCKS5 on one port (issue 16), through a real fastsocks.

Real clients (curl --socks4 / --socks4a, python-socks SOCKS4) and a raw
client for what they cannot do (BIND, early bytes, bad requests).  Loopback
targets only; every wait bounded.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from pathlib import Path
from typing import Any, Callable

import pytest
from procs import wait_lines
from python_socks import ProxyType
from python_socks.async_.asyncio import Proxy as AsyncProxy
from python_socks.sync import Proxy as SyncProxy

GRANTED, REJECTED = 90, 91
CURLE_PROXY = 97


def socks4(command: int, ip: str, port: int, userid: bytes = b"", name: bytes | None = None) -> bytes:
    data = bytes((4, command)) + struct.pack("!H", port) + socket.inet_aton(ip) + userid + b"\x00"
    return data if name is None else data + name + b"\x00"


def reply(sock: socket.socket) -> tuple[int, str, int]:
    """VN CD DSTPORT DSTIP: (CD, DSTIP, DSTPORT)."""
    data = b""
    while len(data) < 8:
        chunk = sock.recv(8 - len(data))
        assert chunk, f"closed after {data!r}"
        data += chunk
    assert data[0] == 0, data
    return data[1], socket.inet_ntoa(data[4:8]), struct.unpack("!H", data[2:4])[0]


def ask(address: tuple[str, int], data: bytes) -> tuple[int, bytes]:
    """Send ``data``; the reply code, and after a rejection what came until the close."""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(data)
        code = reply(sock)[0]
        rest = b""
        if code != GRANTED:  # a rejection closes the connection at once
            while chunk := sock.recv(4096):
                rest += chunk
        return code, rest


def http_get(sock: socket.socket, path: str) -> bytes:
    sock.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


# -- real clients ---------------------------------------------------------------------


def test_curl_socks4_and_socks4a(fastsocks_server: Callable[..., Any], http_target: Any,
                                 curl: Callable[..., Any], tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    server = fastsocks_server("--access-log", str(log))
    proxy = f"{server.host}:{server.port}"
    # --socks4: curl resolves and sends the address; --socks4a: the proxy resolves.
    result = curl("--socks4", proxy, http_target.url("/four"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello from fastsocks tests: /four via 127.0.0.1\n"
    result = curl("--socks4a", proxy, "--proxy-user", "carol:", http_target.url("/4a", "localhost"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"hello from fastsocks tests: /4a")
    lines = wait_lines(log, 2)
    assert lines[0].endswith(' eof protocol=socks4 userid=""'), lines
    assert f" CONNECT localhost:{http_target.port} " in lines[1], lines
    assert lines[1].endswith(" eof protocol=socks4 userid=carol"), lines


def test_curl_socks4_refused_target(fastsocks_server: Callable[..., Any], closed_port: int,
                                    curl: Callable[..., Any]) -> None:
    server = fastsocks_server()
    result = curl("--socks4", f"{server.host}:{server.port}", f"http://127.0.0.1:{closed_port}/")
    assert result.returncode == CURLE_PROXY, result.stderr  # 91: request rejected or failed


def test_python_socks_socks4_and_4a(fastsocks_server: Callable[..., Any], http_target: Any) -> None:
    server = fastsocks_server()
    proxy = SyncProxy(ProxyType.SOCKS4, server.host, server.port, username="dave")
    with proxy.connect(http_target.host, http_target.port, timeout=10) as sock:
        sock.settimeout(10)
        assert http_get(sock, "/sync").endswith(b"/sync via 127.0.0.1\n")

    async def main() -> bytes:
        p = AsyncProxy(ProxyType.SOCKS4, server.host, server.port, rdns=True)  # 4a
        sock = await p.connect("localhost", http_target.port, timeout=10)
        reader, writer = await asyncio.open_connection(sock=sock)
        try:
            writer.write(b"GET /async HTTP/1.0\r\nHost: localhost\r\n\r\n")
            return await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
            await writer.wait_closed()

    assert asyncio.run(main()).endswith(b"/async via 127.0.0.1\n")


# -- raw: early bytes, BIND, bad requests ----------------------------------------------


def test_bytes_after_the_request_reach_the_target_even_with_a_fin(
        fastsocks_server: Callable[..., Any], echo_target: Any) -> None:
    """Request, payload and FIN in one go (printf | nc -N): the payload is relayed."""
    server = fastsocks_server()
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(socks4(1, "127.0.0.1", echo_target.address[1], b"u") + b"early bytes")
        sock.shutdown(socket.SHUT_WR)
        assert reply(sock)[0] == GRANTED
        got = b""
        while chunk := sock.recv(4096):
            got += chunk
    assert got == b"early bytes"


def test_bind(fastsocks_server: Callable[..., Any]) -> None:
    server = fastsocks_server()
    with socket.create_connection(server.address, timeout=10) as client:
        client.sendall(socks4(2, "127.0.0.1", 0, b"ftp"))
        code, host, port = reply(client)
        assert code == GRANTED and host == "127.0.0.1" and port > 0  # an IPv4 address
        with socket.create_connection((host, port), timeout=10) as peer:
            code, peer_host, peer_port = reply(client)
            assert (code, peer_host, peer_port) == (GRANTED, "127.0.0.1",
                                                    peer.getsockname()[1])
            peer.sendall(b"from the peer")
            assert client.recv(100) == b"from the peer"
            client.sendall(b"to the peer")
            assert peer.recv(100) == b"to the peer"


def test_bind_on_ipv6_is_rejected(fastsocks_server: Callable[..., Any]) -> None:
    server = fastsocks_server("--listen", "[::1]:0")
    assert ask(server.address, socks4(2, "127.0.0.1", 0)) == (REJECTED, b"")
    assert "BIND would listen on ::1, but a SOCKS4 reply holds only an IPv4 address" in server.log


@pytest.mark.parametrize("data, words", [
    (socks4(3, "127.0.0.1", 80), "SOCKS4 command 0x03 not supported"),
    (socks4(1, "127.0.0.1", 80, b"u" * 256), "USERID longer than 255 octets"),
    (socks4(1, "0.0.0.1", 80, b"", b"internal\x01.example"), "host name contains control byte"),
    (socks4(1, "0.0.0.1", 80, b"", b""), "empty host name"),
])
def test_bad_request_gets_91(fastsocks_server: Callable[..., Any], data: bytes, words: str) -> None:
    server = fastsocks_server()
    assert ask(server.address, data) == (REJECTED, b"")
    assert words in server.log


def test_first_bytes_that_are_no_protocol_are_closed(fastsocks_server: Callable[..., Any],
                                                     socks: Any, echo_target: Any) -> None:
    server = fastsocks_server()
    for first in (b"\x00", b"\x01\x01\x00", b"\x06", b"\x80abc", b"\xff" * 8, b"get / x\r\n"):
        with socket.create_connection(server.address, timeout=10) as sock:
            sock.sendall(first)
            assert socks.read_until_closed(sock) == b"", first
    sock, (rep, _, _) = socks.connect(server.address, "127.0.0.1", echo_target.address[1])
    with sock:
        assert rep == 0  # the server goes on serving


def test_protocols_per_listener(fastsocks_server: Callable[..., Any], socks: Any,
                                echo_target: Any) -> None:
    server = fastsocks_server("--protocols", "socks4")
    # SOCKS5 where only SOCKS4 is served: "no acceptable methods", then closed.
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(b"\x05\x01\x00")
        assert socks.read_until_closed(sock) == b"\x05\xff"
    code, _ = ask(server.address, socks4(1, "127.0.0.1", echo_target.address[1]) + b"x")
    assert code == GRANTED
    # SOCKS4 where it is not served: the SOCKS5 codec's SOCKS4 rejection, as before.
    only5 = fastsocks_server("--protocols", "socks5")
    assert ask(only5.address, socks4(1, "127.0.0.1", echo_target.address[1])) == (REJECTED, b"")


def test_after_a_proxy_header(fastsocks_server: Callable[..., Any], echo_target: Any,
                              tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    server = fastsocks_server("--proxy-protocol-from", "127.0.0.0/8", "--access-log", str(log))
    header = b"PROXY TCP4 192.0.2.7 127.0.0.1 4321 1080\r\n"
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(header + socks4(1, "127.0.0.1", echo_target.address[1]) + b"ping")
        assert reply(sock)[0] == GRANTED
        assert sock.recv(100) == b"ping"
    assert wait_lines(log, 1)[0].split(" ")[1] == "192.0.2.7:4321"


# -- authentication is not SOCKS4's ----------------------------------------------------


def test_refused_where_authentication_is_required(fastsocks_server: Callable[..., Any],
                                                  users_file: Path, echo_target: Any,
                                                  tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    request = socks4(1, "127.0.0.1", echo_target.address[1], b"alice")
    server = fastsocks_server("--users", str(users_file), "--access-log", str(log),
                              "--access-log-format", "json")
    assert ask(server.address, request) == (REJECTED, b"")
    assert "refused: this listener requires authentication, which SOCKS4 cannot do" in server.log
    record = json.loads(wait_lines(log, 1)[0])
    assert (record["protocol"], record["userid"], record["user"], record["reply"],
            record["reason"]) == ("socks4", "alice", None, 1, "no_acceptable_method")
    # Allowed for other networks only: still refused from 127.0.0.1.
    elsewhere = fastsocks_server("--users", str(users_file), "--socks4-unauthenticated-from",
                                 "10.0.0.0/8")
    assert ask(elsewhere.address, request) == (REJECTED, b"")
    # Allowed for the client's network: served, and the USERID is no user.
    allowed = fastsocks_server("--users", str(users_file), "--socks4-unauthenticated-from",
                               "127.0.0.0/8")
    assert ask(allowed.address, request + b"hi") == (GRANTED, b"")


# -- rules see the protocol and the USERID ---------------------------------------------


def test_rules_protocols_and_userids(fastsocks_server: Callable[..., Any], socks: Any,
                                     echo_target: Any, tmp_path: Path) -> None:
    config = tmp_path / "fastsocks.toml"
    config.write_text('[[rules]]\naction = "allow"\nprotocols = ["socks4"]\nuserids = ["ok"]\n\n'
                      '[[rules]]\naction = "deny"\nprotocols = ["socks4"]\n')
    server = fastsocks_server("--config", str(config))
    port = echo_target.address[1]
    assert ask(server.address, socks4(1, "127.0.0.1", port, b"ok")) == (GRANTED, b"")
    assert ask(server.address, socks4(1, "127.0.0.1", port, b"other")) == (REJECTED, b"")
    assert ask(server.address, socks4(1, "0.0.0.1", port, b"", b"localhost")) == (REJECTED, b"")
    assert "denied by rules[1]" in server.log
    sock, (rep, _, _) = socks.connect(server.address, "127.0.0.1", port)
    with sock:
        assert rep == 0  # SOCKS5 is not matched by protocols = ["socks4"]
