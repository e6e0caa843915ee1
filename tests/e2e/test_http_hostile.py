"""Hostile and odd HTTP proxy requests (issue 16): each gets its status or a close.

A raw client sends what real clients never do: oversized heads, a header
without a colon, obs-fold, two Content-Lengths, a request line past the
limit, non-ASCII bytes, a head dribbled byte by byte, pipelined requests.
A well-behaved client alongside is not disturbed.
"""

from __future__ import annotations

import socket
import time
from typing import Any, Callable, Iterator

import pytest
from httporigin import Origin


@pytest.fixture
def origin() -> Iterator[Origin]:
    server = Origin()
    yield server
    server.close()


def exchange(address: tuple[str, int], data: bytes, timeout: float = 10.0) -> bytes:
    with socket.create_connection(address, timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except OSError:  # refused while we still sent: what it answered is still readable
            pass
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
        return answer


def status(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:200]
    assert b"Connection: close\r\n" in response and b"Content-Length: " in response
    return int(response[9:12])


@pytest.mark.parametrize("request_bytes, expected", [
    (b"GET http://127.0.0.1/ HTTP/1.1\r\n" + b"X-Big: " + b"a" * 40_000 + b"\r\n\r\n", 431),
    (b"GET http://127.0.0.1/ HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"b" * 900)
                                                    for i in range(40)) + b"\r\n", 431),
    (b"GET http://127.0.0.1/" + b"p" * 40_000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET http://127.0.0.1/ HTTP/1.1\r\nNoColonHere\r\n\r\n", 400),
    (b"GET http://127.0.0.1/ HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n", 400),
    (b"POST http://127.0.0.1/ HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
    (b"POST http://127.0.0.1/ HTTP/1.1\r\nContent-Length: 1\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"GET http://127.0.0.1/\xc3\xa9\xff HTTP/1.1\r\n\r\n", 400),
    (b"G\xffT http://127.0.0.1/ HTTP/1.1\r\n\r\n", 400),
    (b"GET /origin-form HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET https://127.0.0.1/ HTTP/1.1\r\n\r\n", 501),
    (b"CONNECT 127.0.0.1 HTTP/1.1\r\n\r\n", 400),
    (b"CONNECT ::1:443 HTTP/1.1\r\n\r\n", 400),
    (b"CONNECT 127.0.0.1:99999 HTTP/1.1\r\n\r\n", 400),
    (b"GET http://127.0.0.1/ HTTP/9.9\r\n\r\n", 400),
], ids=["big-field", "many-fields", "long-line", "no-colon", "obs-fold", "two-lengths",
        "length-and-chunked", "non-ascii-target", "non-ascii-method", "origin-form", "https",
        "connect-no-port", "connect-bare-ipv6", "connect-bad-port", "bad-version"])
def test_bad_requests_get_their_status(fastsocks_server: Callable[..., Any], request_bytes: bytes,
                                       expected: int) -> None:
    server = fastsocks_server()
    assert status(exchange((server.host, server.port), request_bytes)) == expected
    assert "Traceback" not in server.log


def test_pipelined_requests_answered_in_order(fastsocks_server: Callable[..., Any],
                                              origin: Origin) -> None:
    server = fastsocks_server()
    url = origin.url
    data = (f"GET {url('/echo?1')} HTTP/1.1\r\n\r\n"
            f"POST {url('/echo?2')} HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
            f"POST {url('/echo?3')} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            f"2\r\nxy\r\n0\r\n\r\n"
            f"GET {url('/big?n=5')} HTTP/1.1\r\nConnection: close\r\n\r\n").encode()
    answer = exchange((server.host, server.port), data)
    assert answer.count(b"HTTP/1.1 200 ") == 4, answer
    order = [answer.index(marker) for marker in
             (b'"/echo?1"', b'"/echo?2"', b'"/echo?3"', b"\r\n\r\n01234")]
    assert order == sorted(order)
    assert b'"length": 3' in answer and b'"length": 2' in answer
    assert answer.endswith(b"01234")


def test_pipelined_error_after_a_good_request(fastsocks_server: Callable[..., Any],
                                              origin: Origin) -> None:
    server = fastsocks_server()
    answer = exchange((server.host, server.port),
                      f"GET {origin.url()} HTTP/1.1\r\n\r\nGET bad\r\n\r\n".encode())
    first, _, rest = answer.partition(b"HTTP/1.1 400 ")
    assert first.startswith(b"HTTP/1.1 200 ") and rest, answer


def test_connect_ipv6_literal_and_early_bytes(fastsocks_server: Callable[..., Any],
                                              echo_target6: Any) -> None:
    server = fastsocks_server()
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(f"CONNECT [::1]:{echo_target6.port} HTTP/1.1\r\nHost: x\r\n\r\n"
                     "early".encode())
        expected = b"HTTP/1.1 200 Connection established\r\n\r\nearly"
        got = b""
        while len(got) < len(expected):
            chunk = sock.recv(4096)
            assert chunk, got
            got += chunk
        assert got == expected


def test_slowloris_head_is_cut_and_others_are_served(fastsocks_server: Callable[..., Any],
                                                     origin: Origin) -> None:
    server = fastsocks_server("--handshake-timeout", "1")
    address = (server.host, server.port)
    slow = socket.create_connection(address, timeout=10)
    started = time.monotonic()
    head = f"GET {origin.url()} HTTP/1.1\r\nX-Slow: ".encode()
    cut = False
    try:
        for i in range(60):  # one byte per 0.1 s: never a whole head
            try:
                slow.sendall(head[i:i + 1] if i < len(head) else b"z")
            except OSError:
                cut = True
                break
            if i == 5:  # meanwhile a well-behaved client is answered at once
                answer = exchange(address, f"GET {origin.url()} HTTP/1.1\r\n"
                                           "Connection: close\r\n\r\n".encode())
                assert answer.startswith(b"HTTP/1.1 200 ")
            time.sleep(0.1)
            slow.setblocking(False)
            try:
                if slow.recv(1) == b"":
                    cut = True
                    break
            except BlockingIOError:
                pass
            except OSError:
                cut = True
                break
            finally:
                slow.setblocking(True)
    finally:
        slow.close()
    assert cut and time.monotonic() - started < 4.0


def test_hostile_neighbours_do_not_disturb(fastsocks_server: Callable[..., Any],
                                           origin: Origin) -> None:
    server = fastsocks_server()
    address = (server.host, server.port)
    bad = [b"GET http://127.0.0.1/ HTTP/1.1\r\nNoColon\r\n\r\n",
           b"\xc3\xa9\x00\xff" * 100, b"GET http://127.0.0.1/" + b"p" * 70_000]
    for _ in range(3):
        for data in bad:
            exchange(address, data)
        answer = exchange(address, f"GET {origin.url()} HTTP/1.1\r\n"
                                   "Connection: close\r\n\r\n".encode())
        assert answer.startswith(b"HTTP/1.1 200 ")
    assert "Traceback" not in server.log
