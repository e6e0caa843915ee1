"""HTTP/1.1 proxying on the SOCKS port (issue 16), through a real fastsocks.

Real clients: curl ``-x http://`` to an HTTP and an HTTPS origin (CONNECT),
``--proxy-user`` right and wrong, requests and httpx with ``http://``
proxies, git cloning over HTTP through the proxy, headless Chromium with
``--proxy-server``.  A raw client for what they cannot send.  The origin is
tests/httporigin.py (HTTP/1.1, keep-alive, plain or TLS) on loopback.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from httporigin import Origin, pattern
from procs import access_entries, free_port, wait_lines


@pytest.fixture
def origin() -> Iterator[Origin]:
    server = Origin()
    yield server
    server.close()


@pytest.fixture
def tls_origin(tmp_path: Path) -> Iterator[Origin]:
    server = Origin(tmp_path)
    yield server
    server.close()


def read_all(sock: socket.socket, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def exchange(address: tuple[str, int], data: bytes) -> bytes:
    """Send ``data``, read until the server closes."""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(data)
        return read_all(sock)


def status(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:200]
    return int(response[9:12])


def body_json(response: bytes) -> Any:
    return json.loads(response.partition(b"\r\n\r\n")[2])


# -- real clients ---------------------------------------------------------------------


def test_curl_http_origin_forwarded(fastsocks_server: Callable[..., Any], origin: Origin,
                                    curl: Callable[..., Any], tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    server = fastsocks_server("--access-log", str(log), "--access-log-format", "json")
    proxy = f"http://{server.host}:{server.port}"
    # Two requests on one client connection (keep-alive), a POST with a body.
    result = curl("-x", proxy, origin.url("/echo?a=1"), "--next", "-x", proxy, "-d", "hello",
                  origin.url("/echo"))
    assert result.returncode == 0, result.stderr
    first, _, second = result.stdout.partition(b"}")
    seen = json.loads(first + b"}")
    assert seen["method"] == "GET" and seen["path"] == "/echo?a=1"  # origin-form
    headers = {k.lower(): v for k, v in seen["headers"]}
    assert headers["host"] == f"127.0.0.1:{origin.port}"
    assert headers["via"] == "1.1 fastsocks"
    assert "proxy-connection" not in headers  # hop-by-hop, RFC 9110 §7.6.1
    posted = json.loads(second)
    assert posted["method"] == "POST" and posted["length"] == 5
    record = access_entries(log, 1)[0]
    assert record["protocol"] == "http" and record["command"] == "HTTP", record
    assert record["bytes_down"] > 0


def test_curl_https_origin_through_connect(fastsocks_server: Callable[..., Any],
                                           tls_origin: Origin, curl: Callable[..., Any],
                                           tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    server = fastsocks_server("--access-log", str(log))
    result = curl("-x", f"http://{server.host}:{server.port}", "--cacert", str(tls_origin.cert),
                  tls_origin.url("/echo"))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["method"] == "GET"
    line = wait_lines(log, 1)[0]
    assert f" CONNECT 127.0.0.1:{tls_origin.port} " in line and line.endswith("protocol=http")


def test_proxy_user_right_and_wrong(fastsocks_server: Callable[..., Any], users_file: Path,
                                    origin: Origin, tls_origin: Origin,
                                    curl: Callable[..., Any]) -> None:
    server = fastsocks_server("--users", str(users_file))
    proxy = f"http://{server.host}:{server.port}"
    ok = curl("-x", proxy, "--proxy-user", "alice:s3cret", origin.url())
    assert ok.returncode == 0 and json.loads(ok.stdout)["method"] == "GET", ok.stderr
    tunnel = curl("-x", proxy, "--proxy-user", "alice:s3cret", "-k", tls_origin.url())
    assert tunnel.returncode == 0, tunnel.stderr
    for args in (["--proxy-user", "alice:wrong"], []):
        refused = curl("-x", proxy, *args, "-i", origin.url())
        assert b"HTTP/1.1 407 " in refused.stdout, refused
        assert b'Proxy-Authenticate: Basic realm="fastsocks"' in refused.stdout
        refused = curl("-x", proxy, *args, "-k", tls_origin.url())
        assert refused.returncode != 0 and b"407" in refused.stderr, refused


def test_requests_and_httpx(fastsocks_server: Callable[..., Any], users_file: Path,
                            origin: Origin, tls_origin: Origin) -> None:
    import httpx
    import requests

    server = fastsocks_server("--users", str(users_file))
    proxy = f"http://alice:s3cret@{server.host}:{server.port}"
    with requests.Session() as session:
        session.trust_env = False
        session.proxies = {"http": proxy, "https": proxy}
        for _ in range(3):  # one proxy connection, kept alive
            response = session.get(origin.url("/echo"), timeout=10)
            assert response.status_code == 200 and response.json()["method"] == "GET"
        big = session.post(origin.url("/echo"), data=pattern(300_000), timeout=10)
        assert big.json()["sha256"] == hashlib.sha256(pattern(300_000)).hexdigest()
        assert session.get(tls_origin.url("/big?n=100000"), verify=str(tls_origin.cert),
                           timeout=10).content == pattern(100_000)
    context = ssl.create_default_context(cafile=str(tls_origin.cert))
    with httpx.Client(proxy=proxy, verify=context, trust_env=False) as client:
        assert client.get(origin.url("/chunked?n=50000")).content == pattern(50_000)
        assert client.get(origin.url("/close?n=20000")).content == pattern(20_000)
        assert client.get(tls_origin.url("/echo")).json()["method"] == "GET"
        assert client.head(origin.url("/big?n=1000")).headers["content-length"] == "1000"
        assert client.get(origin.url("/big?n=10")).content == pattern(10)  # after the HEAD


def test_git_clone_through_the_proxy(fastsocks_server: Callable[..., Any], tmp_path: Path) -> None:
    git = shutil.which("git")
    assert git, "git is required (tests/run.sh installs it)"
    env = {"HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1", "PATH": "/usr/bin:/bin"}
    work = tmp_path / "work"
    work.mkdir()
    for args in (["init", "-q"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                                  "--allow-empty", "-m", "through the proxy"]):
        subprocess.run([git, *args], cwd=work, check=True, env=env, timeout=30)
    subprocess.run([git, "clone", "-q", "--bare", str(work), str(tmp_path / "served" / "r.git")],
                   check=True, env=env, timeout=30)
    subprocess.run([git, "update-server-info"], cwd=tmp_path / "served" / "r.git", check=True,
                   env=env, timeout=30)
    port = free_port("127.0.0.1")
    web = subprocess.Popen(["python3", "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                           cwd=tmp_path / "served", stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        server = fastsocks_server()
        result = subprocess.run(
            [git, "-c", f"http.proxy=http://{server.host}:{server.port}", "clone", "-q",
             f"http://127.0.0.1:{port}/r.git", str(tmp_path / "clone")],
            env=env, capture_output=True, timeout=60)
        assert result.returncode == 0, result.stderr
        log = subprocess.run([git, "log", "--format=%s"], cwd=tmp_path / "clone", env=env,
                             capture_output=True, timeout=30)
        assert log.stdout == b"through the proxy\n"
    finally:
        web.terminate()
        web.wait(10)


def test_headless_chromium(fastsocks_server: Callable[..., Any], origin: Origin,
                           tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    assert chromium, "chromium is required (tests/run.sh installs Debian's package)"
    log = tmp_path / "access.log"
    server = fastsocks_server("--access-log", str(log))
    # Chromium sends loopback directly unless <-loopback> takes it off the bypass list.
    result = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}",
         f"--proxy-server=http://{server.host}:{server.port}", "--proxy-bypass-list=<-loopback>",
         "--dump-dom", origin.url("/echo?from=chromium")],
        capture_output=True, timeout=90)
    assert b"/echo?from=chromium" in result.stdout, result.stderr[-2000:]
    assert b"fastsocks" in result.stdout  # the Via the origin saw
    assert any("protocol=http" in line for line in wait_lines(log, 1))


# -- answers to what a proxy refuses --------------------------------------------------


def test_rules_and_unreachable_targets(fastsocks_server: Callable[..., Any], origin: Origin,
                                       tmp_path: Path) -> None:
    config = tmp_path / "rules.toml"
    config.write_text(f"""
[[rules]]
action = "deny"
ports = [{origin.port}]
commands = ["http"]

[[rules]]
action = "allow"
""", encoding="utf-8")
    server = fastsocks_server("--config", str(config))
    address = (server.host, server.port)
    get = f"GET {origin.url()} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    denied = exchange(address, get)
    assert status(denied) == 403 and b"Connection: close\r\n" in denied
    assert b"Content-Length: " in denied
    # The same target through CONNECT is a tunnel: the http rule does not apply.
    tunnel = exchange(address, f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\r\n\r\n"
                               "GET /close?n=3 HTTP/1.1\r\nHost: o\r\n\r\n".encode())
    assert tunnel.startswith(b"HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.1 200 ")
    assert tunnel.endswith(b"\r\n\r\n012")
    closed = free_port("127.0.0.1")
    for request in (f"CONNECT 127.0.0.1:{closed} HTTP/1.1\r\n\r\n",
                    f"GET http://127.0.0.1:{closed}/ HTTP/1.1\r\n\r\n"):
        assert status(exchange(address, request.encode())) == 502


def test_reply_statuses() -> None:
    from fastsocks.control.http import HttpStage
    from fastsocks.control.record import CloseReason

    def word(code: int, reason: CloseReason | None = None) -> bytes:
        return HttpStage._http_reply(None, code, reason)  # type: ignore[arg-type]

    assert word(0) == b"HTTP/1.1 200 Connection established\r\n\r\n"
    assert word(2).startswith(b"HTTP/1.1 403 ")
    assert word(4, CloseReason.CONNECT_TIMEOUT).startswith(b"HTTP/1.1 504 ")
    for code in (1, 3, 4, 5):
        assert word(code).startswith(b"HTTP/1.1 502 ")
    assert word(7).startswith(b"HTTP/1.1 501 ") and word(8).startswith(b"HTTP/1.1 400 ")


def test_chained_through_an_http_upstream(fastsocks_server: Callable[..., Any], users_file: Path,
                                          origin: Origin, tmp_path: Path, socks: Any,
                                          echo_target: Any) -> None:
    upstream_log = tmp_path / "upstream.log"
    upstream = fastsocks_server("--users", str(users_file), "--access-log", str(upstream_log),
                                "--protocols", "http")
    config = tmp_path / "chain.toml"
    config.write_text(f"""
[upstreams.web]
address = "{upstream.host}:{upstream.port}"
type = "http"
user = "alice"
password = "s3cret"

[[rules]]
action = "allow"
upstream = "web"
""", encoding="utf-8")
    server = fastsocks_server("--config", str(config))
    sock, (rep, _, _) = socks.connect((server.host, server.port), "127.0.0.1", echo_target.port,
                                      extra=b"early ")
    with sock:
        assert rep == 0
        assert socks.recv_exact(sock, 6) == b"early "
    # An HTTP client of the first proxy, forwarded through the upstream's tunnel.
    answer = exchange((server.host, server.port),
                      f"GET {origin.url()} HTTP/1.1\r\nConnection: close\r\n\r\n".encode())
    assert status(answer) == 200 and body_json(answer)["method"] == "GET"
    lines = wait_lines(upstream_log, 2)
    assert all(" alice " in line and "protocol=http" in line for line in lines), lines
    # Wrong credentials at the upstream: the client is told X'01' (SOCKS5), 502 (HTTP).
    config.write_text(config.read_text().replace('"s3cret"', '"nope"'), encoding="utf-8")
    other = fastsocks_server("--config", str(config))
    assert status(exchange((other.host, other.port),
                           f"GET {origin.url()} HTTP/1.1\r\n\r\n".encode())) == 502


def test_upstream_type_is_checked(run_cli: Callable[..., Any], tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[upstreams.web]\naddress = "127.0.0.1:3128"\ntype = "ftp"\n',
                    encoding="utf-8")
    result = run_cli("check", str(path))
    assert result.returncode == 2 and b"upstreams.web.type" in result.stderr, result.stderr
    path.write_text('[upstreams.web]\naddress = "127.0.0.1:3128"\ntype = "http"\n',
                    encoding="utf-8")
    result = run_cli("check", str(path))
    assert result.returncode == 0 and b'type = "http"' in result.stdout, result.stderr


@pytest.mark.parametrize("protocol", ["socks4", "http"])
def test_bench_speaks_each_protocol(fastsocks_server: Callable[..., Any], protocol: str) -> None:
    from fastsocks import bench

    server = fastsocks_server()
    for mode in ("handshake", "throughput"):
        result = bench.run(bench.Config(mode=mode, proxy=server.address, protocol=protocol,
                                        concurrency=4, duration=0.3))
        assert result["protocol"] == protocol and not result["errors"], result
        assert result["handshakes"] > 4 if mode == "handshake" else result["bytes"] > 0
    with pytest.raises(ValueError, match="no UDP"):
        bench.Config(mode="udp-rtt", protocol=protocol).validate()


def test_request_head_drops_hop_by_hop_fields() -> None:
    # RFC 9110 §7.6.1: Connection, the fields it names, and the fixed list; Host from the URI.
    from fastsocks.control.httpparse import Inbound, request_head

    inbound = Inbound()
    inbound.feed(b"POST http://[::1]:8080/p?q=1#f HTTP/1.1\r\nHost: elsewhere\r\n"
                 b"Connection: close, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\n"
                 b"Proxy-Connection: keep-alive\r\nProxy-Authorization: Basic eDp5\r\nTE: trailers\r\n"
                 b"Trailer: X-T\r\nUpgrade: h2c\r\nTransfer-Encoding: chunked\r\nX-Kept: yes\r\n\r\n"
                 b"3\r\nabc\r\n0\r\n\r\n")
    request = inbound.events[0]
    assert (request.host, request.port, request.authorization) == ("::1", 8080, b"Basic eDp5")
    assert list(inbound.events)[1:] == [b"abc", None]
    assert request_head(request) == (b"POST /p?q=1 HTTP/1.1\r\nHost: [::1]:8080\r\n"
                                     b"X-Kept: yes\r\nVia: 1.1 fastsocks\r\n"
                                     b"Transfer-Encoding: chunked\r\n\r\n")
