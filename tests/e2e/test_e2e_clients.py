"""A real fastsocks process with real clients (curl, python-socks, httpx) and raw sockets.

Every test runs on the four loop x implementation combinations (``combo``).
Targets are local servers the tests start on 127.0.0.1 / ::1 port 0.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
import time

import httpx
import pytest
from python_socks.async_.asyncio import Proxy as AsyncProxy
from python_socks.sync import Proxy as SyncProxy

CURLE_PROXY = 97  # curl's exit code for a SOCKS failure (curl >= 7.73)

SUCCEEDED = 0x00
HOST_UNREACHABLE = 0x04
CONNECTION_REFUSED = 0x05
COMMAND_NOT_SUPPORTED = 0x07
ATYP_NOT_SUPPORTED = 0x08


def _http_get(sock: socket.socket, host: str, path: str) -> bytes:
    sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


# -- curl --------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--socks5-hostname", "--socks5"])
def test_curl(proxy, http_target, curl, flag):
    result = curl(flag, f"{proxy.host}:{proxy.port}", http_target.url("/curl"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello from fastsocks tests: /curl via 127.0.0.1\n"


def test_curl_domain_localhost(proxy, http_target, curl):
    """--socks5-hostname sends the name; the server resolves 'localhost'."""
    result = curl("--socks5-hostname", f"{proxy.host}:{proxy.port}", http_target.url("/name", host="localhost"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"hello from fastsocks tests: /name")


def test_curl_ipv6_target(proxy, http_target6, curl):
    result = curl("--socks5-hostname", f"{proxy.host}:{proxy.port}", http_target6.url("/v6"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello from fastsocks tests: /v6 via ::1\n"


def test_curl_user_password(start_proxy, users_file, http_target, curl):
    proxy = start_proxy("--users", str(users_file))
    assert proxy.auth == "username/password (1 users)"
    ok = curl("--socks5-hostname", f"{proxy.host}:{proxy.port}", "-U", "alice:s3cret",
              http_target.url("/auth"))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(b"hello from fastsocks tests: /auth")

    wrong = curl("--socks5-hostname", f"{proxy.host}:{proxy.port}", "-U", "alice:wrong",
                 http_target.url("/auth"))
    assert wrong.returncode == CURLE_PROXY, wrong.stderr
    assert wrong.stdout == b""

    # A failed login costs nothing to the others.
    again = curl("--socks5-hostname", f"{proxy.host}:{proxy.port}", "-U", "alice:s3cret",
                 http_target.url("/again"))
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(b"hello from fastsocks tests: /again")


def test_curl_connection_refused(proxy, closed_port, curl):
    result = curl("--socks5-hostname", f"{proxy.host}:{proxy.port}", f"http://127.0.0.1:{closed_port}/")
    assert result.returncode == CURLE_PROXY, result.stderr


# -- python-socks and httpx --------------------------------------------------------


def test_python_socks_sync(proxy, http_target):
    sock = SyncProxy.from_url(proxy.url).connect(http_target.host, http_target.port, timeout=10)
    with sock:
        sock.settimeout(10)
        response = _http_get(sock, "127.0.0.1", "/sync")
    assert response.startswith(b"HTTP/1.0 200 "), response
    assert response.endswith(b"hello from fastsocks tests: /sync via 127.0.0.1\n")


def test_python_socks_asyncio(proxy, http_target):
    async def main() -> bytes:
        # rdns: the proxy resolves the name.
        p = AsyncProxy.from_url(proxy.url, rdns=True)
        sock = await p.connect("localhost", http_target.port, timeout=10)
        reader, writer = await asyncio.open_connection(sock=sock)
        try:
            writer.write(b"GET /async HTTP/1.0\r\nHost: localhost\r\n\r\n")
            return await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
            await writer.wait_closed()

    response = asyncio.run(main())
    assert response.startswith(b"HTTP/1.0 200 "), response
    assert response.endswith(b"hello from fastsocks tests: /async via 127.0.0.1\n")


def test_httpx(proxy, http_target):
    with httpx.Client(proxy=proxy.url, trust_env=False, timeout=10) as client:
        first = client.get(http_target.url("/httpx"))
        second = client.get(http_target.url("/httpx2"))
    assert first.status_code == 200
    assert first.text == "hello from fastsocks tests: /httpx via 127.0.0.1\n"
    assert second.status_code == 200
    assert second.text == "hello from fastsocks tests: /httpx2 via 127.0.0.1\n"


# -- raw SOCKS5 ------------------------------------------------------------------------


def test_ipv6_target_and_bound_address(proxy, echo_target6, socks):
    """ATYP X'04' to [::1]; BND.ADDR/BND.PORT is the outbound socket's address."""
    sock, (rep, host, port) = socks.connect(proxy.address, *echo_target6.address)
    with sock:
        assert rep == SUCCEEDED
        sock.sendall(b"over ipv6")
        assert socks.recv_exact(sock, 9) == b"over ipv6"
        assert echo_target6.wait_accepted(1) == [(host, port)]
        assert host == "::1"


def test_bound_address_is_outbound_socket(proxy, echo_target, socks):
    sock, (rep, host, port) = socks.connect(proxy.address, *echo_target.address)
    with sock:
        assert rep == SUCCEEDED
        assert echo_target.wait_accepted(1) == [(host, port)]
        assert host == "127.0.0.1" and port not in (0, proxy.port, echo_target.port)


def test_domain_target_localhost(proxy, echo_target, socks):
    sock, (rep, host, port) = socks.connect(proxy.address, "localhost", echo_target.port)
    with sock:
        assert rep == SUCCEEDED
        sock.sendall(b"by name")
        assert socks.recv_exact(sock, 7) == b"by name"
        assert echo_target.wait_accepted(1) == [(host, port)]


def test_bytes_after_request_reach_target(proxy, echo_target, socks):
    """Greeting, request and payload in one packet: nothing after the request is lost."""
    payload = b"early data sent with the request " * 100
    sock = socks.open(proxy.address)
    with sock:
        sock.sendall(b"\x05\x01\x00" + socks.request(0x01, *echo_target.address) + payload)
        assert socks.recv_exact(sock, 2) == b"\x05\x00"
        rep, _, _ = socks.read_reply(sock)
        assert rep == SUCCEEDED
        assert socks.recv_exact(sock, len(payload)) == payload
    # and also right after the request, with the greeting answered first
    sock, (rep, _, _) = socks.connect(proxy.address, *echo_target.address, extra=b"trailing")
    with sock:
        assert rep == SUCCEEDED
        assert socks.recv_exact(sock, 8) == b"trailing"


def test_large_early_data(proxy, echo_target, socks):
    """256 KiB sent right behind the request, before the reply: all of it arrives."""
    payload = bytes(range(256)) * 1024
    sock = socks.open(proxy.address)
    with sock:
        sock.sendall(b"\x05\x01\x00" + socks.request(0x01, *echo_target.address))
        sender = threading.Thread(target=sock.sendall, args=(payload,), daemon=True)
        sender.start()
        assert socks.recv_exact(sock, 2) == b"\x05\x00"
        assert socks.read_reply(sock)[0] == SUCCEEDED
        assert socks.recv_exact(sock, len(payload)) == payload
        sender.join(10)


def test_client_half_close_right_after_request(proxy, echo_target, socks):
    """Request, payload and FIN before the reply (like ``nc -N``): the target gets
    the payload then EOF, and its answer still comes back."""
    sock = socks.open(proxy.address)
    with sock:
        sock.sendall(b"\x05\x01\x00" + socks.request(0x01, *echo_target.address) + b"one-shot")
        sock.shutdown(socket.SHUT_WR)
        assert socks.recv_exact(sock, 2) == b"\x05\x00"
        assert socks.read_reply(sock)[0] == SUCCEEDED
        assert socks.read_until_closed(sock) == b"one-shot"
    echo_target.join(5)


def test_target_speaks_first(proxy, tcp_target, socks):
    """A banner the target sends on accept comes after the success reply, intact."""

    def banner(conn: socket.socket) -> None:
        conn.sendall(b"220 banner\r\n")
        assert conn.recv(4) == b"QUIT"

    target = tcp_target(banner)
    sock, (rep, _, _) = socks.connect(proxy.address, *target.address)
    with sock:
        assert rep == SUCCEEDED
        assert socks.recv_exact(sock, 12) == b"220 banner\r\n"
        sock.sendall(b"QUIT")
        assert socks.read_until_closed(sock) == b""
    target.join(5)
    assert not target.errors, target.errors


def test_connection_refused(proxy, closed_port, socks):
    sock, (rep, host, port) = socks.connect(proxy.address, "127.0.0.1", closed_port)
    with sock:
        assert rep == CONNECTION_REFUSED
        assert socks.read_until_closed(sock) == b""


def test_unresolvable_name(proxy, socks):
    """A name that cannot resolve is X'04'.  Tests never send a DNS query off
    the machine, so the name is one no resolver accepts (a 64-octet label):
    it fails locally, without a lookup."""
    sock, (rep, _, _) = socks.connect(proxy.address, "a" * 64 + ".test", 80)
    with sock:
        assert rep == HOST_UNREACHABLE
        assert socks.read_until_closed(sock) == b""


def test_no_acceptable_method(proxy, socks):
    sock = socks.open(proxy.address)
    with sock:
        sock.sendall(b"\x05\x02\x01\x80")  # GSSAPI and a private method, no X'00'
        assert socks.read_until_closed(sock) == b"\x05\xff"


def _request_reply(proxy, socks, request: bytes) -> bytes:
    sock = socks.open(proxy.address)
    with sock:
        sock.sendall(b"\x05\x01\x00")
        assert socks.recv_exact(sock, 2) == b"\x05\x00"
        sock.sendall(request)
        return socks.read_until_closed(sock)


def test_unknown_command(proxy, socks):
    request = b"\x05\x09\x00\x01\x7f\x00\x00\x01\x00\x50"
    assert _request_reply(proxy, socks, request) == b"\x05\x07\x00\x01\x00\x00\x00\x00\x00\x00"


def test_unknown_address_type(proxy, socks):
    request = b"\x05\x01\x00\x05\x7f\x00\x00\x01\x00\x50"
    assert _request_reply(proxy, socks, request) == b"\x05\x08\x00\x01\x00\x00\x00\x00\x00\x00"


@pytest.mark.parametrize("command", [0x02, 0x03], ids=["bind", "udp-associate"])
def test_bind_and_udp_associate(proxy, echo_target, socks, command):
    """BIND and UDP ASSOCIATE answer X'00' with a usable BND.ADDR/BND.PORT and
    keep the TCP connection open; nothing connects to DST (BIND waits for a
    connection from it).  Their full behaviour is in test_bind_udp.py."""
    sock = socks.open(proxy.address)
    with sock:
        sock.sendall(b"\x05\x01\x00")
        assert socks.recv_exact(sock, 2) == b"\x05\x00"
        sock.sendall(socks.request(command, *echo_target.address))
        rep, host, port = socks.read_reply(sock)
        assert rep == SUCCEEDED, rep
        assert port != 0 and ipaddress.ip_address(host).is_loopback, (host, port)
        sock.settimeout(0.3)
        with pytest.raises(socket.timeout):
            sock.recv(1)  # still open, nothing to say yet
    time.sleep(0.1)
    assert echo_target.peers == []


def test_listens_on_ipv6_too(start_proxy, echo_target, socks):
    proxy = start_proxy("--listen", "127.0.0.1:0", "--listen", "[::1]:0")
    assert [h for h, _ in proxy.addresses] == ["127.0.0.1", "::1"]
    for family in (socket.AF_INET, socket.AF_INET6):
        sock, (rep, _, _) = socks.connect(proxy.address_for(family), *echo_target.address)
        with sock:
            assert rep == SUCCEEDED
            sock.sendall(b"hello")
            assert socks.recv_exact(sock, 5) == b"hello"
    assert len(echo_target.peers) == 2


# -- authentication ------------------------------------------------------------------------


def test_wrong_password_closes_after_failure_status(start_proxy, users_file, socks):
    proxy = start_proxy("--users", str(users_file))
    sock = socks.open(proxy.address)
    with sock:
        sock.sendall(b"\x05\x01\x02")
        assert socks.recv_exact(sock, 2) == b"\x05\x02"
        sock.sendall(socks.userpass("alice", "not-her-password"))
        assert socks.read_until_closed(sock) == b"\x01\x01"
    sock = socks.open(proxy.address)
    with sock:  # an unknown user gets the same answer
        sock.sendall(b"\x05\x01\x02")
        assert socks.recv_exact(sock, 2) == b"\x05\x02"
        sock.sendall(socks.userpass("mallory", "s3cret"))
        assert socks.read_until_closed(sock) == b"\x01\x01"


def test_auth_pipelined_in_one_packet(start_proxy, users_file, socks, echo_target):
    """Greeting, credentials, request and payload in one write."""
    proxy = start_proxy("--users", str(users_file))
    sock = socks.open(proxy.address)
    with sock:
        sock.sendall(b"\x05\x01\x02" + socks.userpass("alice", "s3cret")
                     + socks.request(0x01, *echo_target.address) + b"pipelined")
        assert socks.recv_exact(sock, 4) == b"\x05\x02\x01\x00"
        assert socks.read_reply(sock)[0] == SUCCEEDED
        assert socks.recv_exact(sock, 9) == b"pipelined"


def test_auth_required_rejects_no_auth_client(start_proxy, users_file, socks, echo_target):
    proxy = start_proxy("--users", str(users_file))
    sock = socks.open(proxy.address)
    with sock:
        sock.sendall(b"\x05\x01\x00")
        assert socks.read_until_closed(sock) == b"\x05\xff"
    sock, (rep, _, _) = socks.connect(proxy.address, *echo_target.address, auth=("alice", "s3cret"))
    with sock:
        assert rep == SUCCEEDED
        sock.sendall(b"authenticated")
        assert socks.recv_exact(sock, 13) == b"authenticated"


# -- timeouts -------------------------------------------------------------------------------


def test_handshake_timeout_silent_client(start_proxy, socks):
    proxy = start_proxy("--handshake-timeout", "1")
    sock = socks.open(proxy.address)
    with sock:
        started = time.monotonic()
        assert socks.read_until_closed(sock, timeout=5) == b""
        elapsed = time.monotonic() - started
    assert 0.7 <= elapsed <= 3.0, elapsed


def test_handshake_timeout_dribbling_client(start_proxy, socks):
    """One byte every 0.3 s keeps no one alive past the handshake timeout."""
    proxy = start_proxy("--handshake-timeout", "1")
    message = b"\x05\x01\x00" + socks.request(0x01, "dribble.example", 80)  # 6 s at 0.3 s/byte
    sock = socks.open(proxy.address)
    stop = threading.Event()

    def dribble() -> None:
        for i in range(len(message)):
            try:
                sock.send(message[i : i + 1])
            except OSError:
                return
            if stop.wait(0.3):
                return

    with sock:
        started = time.monotonic()
        thread = threading.Thread(target=dribble, daemon=True)
        thread.start()
        try:
            received = socks.read_until_closed(sock, timeout=5)
            elapsed = time.monotonic() - started
        finally:
            stop.set()
            thread.join(5)
    assert received in (b"", b"\x05\x00"), received
    assert 0.7 <= elapsed <= 3.0, elapsed


def test_connect_timeout(start_proxy, blackhole, socks):
    proxy = start_proxy("--connect-timeout", "1")
    started = time.monotonic()
    sock, (rep, _, _) = socks.connect(proxy.address, *blackhole)
    with sock:
        elapsed = time.monotonic() - started
        assert rep == HOST_UNREACHABLE
        assert socks.read_until_closed(sock) == b""
    assert 0.7 <= elapsed <= 3.0, elapsed


def test_idle_timeout(start_proxy, echo_target, socks):
    proxy = start_proxy("--idle-timeout", "1")
    sock, (rep, _, _) = socks.connect(proxy.address, *echo_target.address)
    with sock:
        assert rep == SUCCEEDED
        sock.sendall(b"ping")
        assert socks.recv_exact(sock, 4) == b"ping"
        started = time.monotonic()
        assert socks.read_until_closed(sock, timeout=6) == b""
        elapsed = time.monotonic() - started
    assert 0.7 <= elapsed <= 3.0, elapsed
    echo_target.join(5)  # the target's side was closed too


def test_idle_timeout_spares_active_relay(start_proxy, echo_target, socks):
    """Traffic every 0.25 s keeps a relay with --idle-timeout 1 open for 1.75 s."""
    proxy = start_proxy("--idle-timeout", "1")
    sock, (rep, _, _) = socks.connect(proxy.address, *echo_target.address)
    with sock:
        assert rep == SUCCEEDED
        for i in range(8):
            sock.sendall(b"%d" % i)
            assert socks.recv_exact(sock, 1) == b"%d" % i
            if i < 7:
                time.sleep(0.25)
