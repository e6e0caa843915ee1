"""Happy Eyeballs v2 (RFC 8305) for CONNECT by name, in a network namespace of the test's own.

Each case runs in a child made by ``unshare --net`` (root; CI runs as root):
a fresh loopback, where this file, run as a script, starts a DNS server
(tests/dnsserver.py), the targets and fastsocks (``--dns-server``), makes
one CONNECT by name and prints what happened.  A family is black-holed
with a listener whose accept queue is full (its SYNs are dropped, so a
connect hangs, as to an unreachable host) or, for IPv4, with a route of
10.9.9.0/24 into loopback, where nothing owns the addresses.  The
connection must succeed in about the connection attempt delay (250 ms),
far from the connect timeout (10 s), through the family that answers.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve()
TESTS = HERE.parent.parent
CONNECT_TIMEOUT = 10.0


def _full_listener(host: str, port: int = 0) -> tuple[socket.socket, list[socket.socket]]:
    """A listener nothing accepts from, its queue filled until a connect stays pending."""
    import selectors

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET6:
        listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    listener.bind((host, port))
    listener.listen(0)
    address = listener.getsockname()
    fillers = []
    with selectors.DefaultSelector() as sel:
        for _ in range(64):
            s = socket.socket(family, socket.SOCK_STREAM)
            fillers.append(s)
            s.setblocking(False)
            s.connect_ex(address)
            sel.register(s, selectors.EVENT_WRITE)
            ready = sel.select(0.3)
            sel.unregister(s)
            if not ready:
                return listener, fillers
    raise AssertionError("could not fill the accept queue")


def _echo_listener(host: str, port: int = 0) -> tuple[socket.socket, list[Any]]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET6:
        listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(16)
    listener.settimeout(15)
    peers: list[Any] = []

    def serve() -> None:
        try:
            conn, peer = listener.accept()
        except OSError:
            return
        peers.append(peer[0])
        with conn:
            conn.settimeout(10)
            data = conn.recv(100)
            conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return listener, peers


def inner(case: str) -> None:
    """Run in the namespace: one case, its result as JSON on the last line."""
    sys.path.insert(0, str(TESTS))
    from dnsserver import DnsServer
    from launcher import ServerLauncher

    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "route", "add", "10.9.9.0/24", "dev", "lo"], check=True)
    keep: list[Any] = []
    # One port for both families: the name has one port.
    delay = 0.0
    if case == "v6-blackholed":
        listener, peers = _echo_listener("127.0.0.1")
        port = listener.getsockname()[1]
        keep.append(_full_listener("::1", port))
        records = [("A", "127.0.0.1", 60), ("AAAA", "::1", 60)]
    elif case == "v4-route-blackholed":
        listener, peers = _echo_listener("::1")
        port = listener.getsockname()[1]
        records = [("A", "10.9.9.2", 60), ("AAAA", "::1", 60)]
    else:
        listener, peers = _echo_listener("::1")
        port = listener.getsockname()[1]
        keep.append(_full_listener("127.0.0.1", port))
        records = [("A", "127.0.0.1", 60), ("AAAA", "::1", 60)]
        if case == "v4-blackholed-aaaa-late":
            delay = 0.3
    dns = DnsServer({"dual.test": records}, delay={("dual.test", "AAAA"): delay})
    workdir = Path(tempfile.mkdtemp())
    launcher = ServerLauncher(workdir)
    try:
        server = launcher.start("--dns-server", dns.address, "--connect-timeout",
                                str(CONNECT_TIMEOUT), "--log-level", "debug")
        client = socket.create_connection(server.address, timeout=15)
        client.sendall(b"\x05\x01\x00")
        assert client.recv(2) == b"\x05\x00"
        name = b"dual.test"
        started = time.monotonic()
        client.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + port.to_bytes(2, "big"))
        reply = client.recv(4)
        elapsed = time.monotonic() - started
        rest = client.recv(16 if reply[3:4] == b"\x01" else 28)
        echoed = b""
        if reply[1] == 0:
            client.sendall(b"ping")
            echoed = client.recv(4)
        client.close()
        result = {"reply": reply[1], "elapsed": elapsed, "peers": peers, "echo": echoed.decode(),
                  "bound_family": "v4" if reply[3] == 1 else "v6", "rest": len(rest)}
    finally:
        launcher.stop_all()
        dns.close()
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result))


def run_case(case: str) -> dict[str, Any]:
    if os.geteuid() != 0:
        pytest.fail("Happy Eyeballs runs in a network namespace of its own: run as root (CI does)")
    for tool in ("unshare", "ip"):
        assert shutil.which(tool), f"{tool} is missing: tests/run.sh installs it"
    proc = subprocess.run(["unshare", "--net", sys.executable, str(HERE), case],
                          capture_output=True, timeout=60, cwd=str(TESTS.parent))
    out = proc.stdout.decode()
    assert proc.returncode == 0, out + proc.stderr.decode()
    return json.loads(out.strip().splitlines()[-1])


def test_ipv6_blackholed_ipv4_answers() -> None:
    """AAAA first, but its address never answers: IPv4 starts 250 ms later and wins."""
    result = run_case("v6-blackholed")
    assert result["reply"] == 0 and result["echo"] == "ping"
    assert result["peers"] == ["127.0.0.1"]
    assert result["bound_family"] == "v4"  # the reply carries the winning socket's address
    assert 0.2 <= result["elapsed"] < 2.0, result  # the attempt delay, not the 10 s timeout


def test_ipv4_blackholed_ipv6_answers() -> None:
    """The families reversed: IPv6 goes first and wins at once."""
    result = run_case("v4-blackholed")
    assert result["reply"] == 0 and result["echo"] == "ping"
    assert result["peers"] == ["::1"] and result["bound_family"] == "v6"
    assert result["elapsed"] < 1.0, result


def test_ipv4_routed_nowhere_ipv6_answers() -> None:
    result = run_case("v4-route-blackholed")
    assert result["reply"] == 0 and result["peers"] == ["::1"], result
    assert result["elapsed"] < 1.0, result


def test_late_aaaa_joins_a_hanging_ipv4_attempt() -> None:
    """A answers first, AAAA 300 ms later: IPv4 is tried after the 50 ms resolution
    delay and hangs; IPv6 is added when it comes, dialled at once, and wins."""
    result = run_case("v4-blackholed-aaaa-late")
    assert result["reply"] == 0 and result["peers"] == ["::1"], result
    assert 0.25 <= result["elapsed"] < 2.0, result


if __name__ == "__main__":
    inner(sys.argv[1])
