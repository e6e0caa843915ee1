"""Programs that know nothing of SOCKS, wrapped: Dante's socksify and proxychains4.

Both come from Debian's packages (``dante-client``, ``proxychains4``; installed
by tests/run.sh) and work by LD_PRELOAD: the program's own ``connect()``,
``sendto()`` and ``recvfrom()`` go through the proxy.  socksify also makes the
UDP ASSOCIATE for a plain UDP socket, so it drives both of fastsocks' datagram
paths the way a legacy application behind a gateway would.  Every request is
checked in fastsocks' JSON access log, so a wrapper that quietly went direct
would fail the test.  Targets are on 127.0.0.1 port 0; nothing leaves the
machine.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from builds import UDP_PATHS
from conftest import clean_env
from procs import UdpEcho, access_entries

ALICE = ("alice", "s3cret")  # the users_file fixture's user
RELAY = {"c": "auto", "py": "protocol"}  # --relay: the C or the Python datagram path


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is required: apt-get install -y {package} (tests/run.sh does)"
    return path


def _server(fastsocks_server: Callable[..., Any], tmp_path: Path, auth: str,
            users_file: Path, *args: str) -> tuple[Any, Path]:
    log_path = tmp_path / "access.log"
    users = ["--users", str(users_file)] if auth == "username" else []
    server = fastsocks_server("--access-log", str(log_path), "--access-log-format", "json",
                              "--log-level", "debug", *users, *args)
    return server, log_path


# -- Dante's socksify ------------------------------------------------------------------


def _socksify(tmp_path: Path, proxy: tuple[str, int], method: str,
              credentials: tuple[str, str] = ALICE) -> tuple[list[str], dict[str, str]]:
    """The command prefix and environment that run a program under socksify."""
    conf = tmp_path / "socks.conf"
    conf.write_text(f"""\
logoutput: {tmp_path / 'dante.log'}
route {{
    from: 0.0.0.0/0 to: 0.0.0.0/0 via: {proxy[0]} port = {proxy[1]}
    protocol: tcp udp
    proxyprotocol: socks_v5
    method: {method}
}}
""")
    env = clean_env({
        "SOCKS_CONF": str(conf),
        # Dante routes the machine's own networks (loopback included) direct
        # unless told not to: everything must go through the proxy here.
        "SOCKS_AUTOADD_LANROUTES": "no",
        "SOCKS_USERNAME": credentials[0],
        "SOCKS_PASSWORD": credentials[1],
    })
    return [_tool("socksify", "dante-client")], env


@pytest.mark.parametrize("auth", ["none", "username"])
def test_socksify_curl(fastsocks_server: Callable[..., Any], users_file: Path, tmp_path: Path,
                       http_target: Any, auth: str) -> None:
    server, log_path = _server(fastsocks_server, tmp_path, auth, users_file)
    prefix, env = _socksify(tmp_path, server.address, auth)
    done = subprocess.run([*prefix, _tool("curl", "curl"), "--silent", "--show-error",
                           "--max-time", "10", http_target.url("/socksify")],
                          env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"{done.stderr}\n{server.log}"
    assert done.stdout.startswith("hello from fastsocks tests: /socksify")
    (entry,) = access_entries(log_path, 1)
    assert entry["command"] == "CONNECT" and entry["reply"] == 0, entry
    assert entry["target"] == f"127.0.0.1:{http_target.port}"
    assert entry["user"] == ("alice" if auth == "username" else None)


# sendto/recvfrom on an unconnected socket, then send/recv on a connected one
# (as DNS clients do): socksify makes one UDP ASSOCIATE for each socket.
UDP_PROGRAM = r"""
import os, socket, sys
port, sizes = int(sys.argv[1]), [int(n) for n in sys.argv[2].split(",")]
target = ("127.0.0.1", port)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(10)
for n in sizes:
    data = os.urandom(n)
    s.sendto(data, target)
    back, source = s.recvfrom(65535)
    if back != data or source != target:
        sys.exit(f"unconnected: {n} bytes sent, {len(back)} back from {source}")
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.settimeout(10)
c.connect(target)
for n in sizes:
    data = os.urandom(n)
    c.send(data)
    if c.recv(65535) != data:
        sys.exit(f"connected: {n} bytes sent, another datagram back")
s.close()
c.close()
print("ok")
"""


@pytest.mark.parametrize("path", UDP_PATHS)
@pytest.mark.parametrize("auth", ["none", "username"])
def test_socksify_udp(fastsocks_server: Callable[..., Any], users_file: Path, tmp_path: Path,
                      udp_echo: UdpEcho, auth: str, path: str) -> None:
    server, log_path = _server(fastsocks_server, tmp_path, auth, users_file,
                               "--relay", RELAY[path])
    prefix, env = _socksify(tmp_path, server.address, auth)
    sizes = [1, 100, 1400, 8000]
    done = subprocess.run([*prefix, sys.executable, "-c", UDP_PROGRAM, str(udp_echo.port),
                           ",".join(map(str, sizes))],
                          env=env, capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout) == (0, "ok\n"), f"{done.stderr}\n{server.log}"
    assert [len(d) for d in udp_echo.received] == sizes * 2
    entries = [e for e in access_entries(log_path, 2) if e["command"] == "UDP_ASSOCIATE"]
    assert len(entries) == 2, entries
    for entry in entries:
        assert (entry["datagrams_up"], entry["datagrams_down"]) == (len(sizes), len(sizes))
        assert entry["bytes_up"] == entry["bytes_down"] == sum(sizes)
        assert entry["user"] == ("alice" if auth == "username" else None)
    assert ("datagrams in C" in server.log) == (path == "c"), server.log


def test_socksify_wrong_password(fastsocks_server: Callable[..., Any], users_file: Path,
                                 tmp_path: Path, http_target: Any) -> None:
    server, log_path = _server(fastsocks_server, tmp_path, "username", users_file)
    prefix, env = _socksify(tmp_path, server.address, "username", ("alice", "wrong"))
    done = subprocess.run([*prefix, _tool("curl", "curl"), "--silent", "--max-time", "10",
                           http_target.url()], env=env, capture_output=True, text=True,
                          timeout=30)
    # Refused by the proxy, so curl cannot connect (and did not go direct).
    assert done.returncode == 7 and done.stdout == "", (done.returncode, done.stdout)
    entries = access_entries(log_path, 1)
    assert entries and all(e["reason"] == "auth_failed" for e in entries), entries


# -- proxychains4 ------------------------------------------------------------------------


def _proxychains(tmp_path: Path, proxy: tuple[str, int],
                 credentials: tuple[str, str] | None) -> list[str]:
    conf = tmp_path / "proxychains.conf"
    user = f" {credentials[0]} {credentials[1]}" if credentials else ""
    conf.write_text(f"""\
strict_chain
proxy_dns
tcp_read_time_out 15000
tcp_connect_time_out 8000
[ProxyList]
socks5 {proxy[0]} {proxy[1]}{user}
""")
    return [_tool("proxychains4", "proxychains4"), "-q", "-f", str(conf)]


@pytest.mark.parametrize("auth", ["none", "username"])
def test_proxychains_curl(fastsocks_server: Callable[..., Any], users_file: Path,
                          tmp_path: Path, http_target: Any, auth: str) -> None:
    server, log_path = _server(fastsocks_server, tmp_path, auth, users_file)
    prefix = _proxychains(tmp_path, server.address, ALICE if auth == "username" else None)
    for path in ("/one", "/two"):
        done = subprocess.run([*prefix, _tool("curl", "curl"), "--silent", "--show-error",
                               "--max-time", "10", http_target.url(path)],
                              env=clean_env(), capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, f"{done.stderr}\n{server.log}"
        assert done.stdout.startswith(f"hello from fastsocks tests: {path}")
    entries = access_entries(log_path, 2)
    assert [(e["command"], e["reply"], e["target"]) for e in entries] == \
        [("CONNECT", 0, f"127.0.0.1:{http_target.port}")] * 2
    assert {e["user"] for e in entries} == {"alice" if auth == "username" else None}


def test_proxychains_wrong_password(fastsocks_server: Callable[..., Any], users_file: Path,
                                    tmp_path: Path, http_target: Any) -> None:
    server, log_path = _server(fastsocks_server, tmp_path, "username", users_file)
    prefix = _proxychains(tmp_path, server.address, ("alice", "wrong"))
    done = subprocess.run([*prefix, _tool("curl", "curl"), "--silent", "--max-time", "10",
                           http_target.url()], env=clean_env(), capture_output=True,
                          text=True, timeout=30)
    assert done.returncode != 0 and done.stdout == "", (done.returncode, done.stdout)
    entries = access_entries(log_path, 1)
    assert entries and all(e["reason"] == "auth_failed" for e in entries), entries
