"""The C measuring sticks of benchmarks/: they are in the repository, they build, they relay.

``benchmarks/floor.c`` (the SOCKS5 floor row of run.py) and
``benchmarks/udp_forwarder.c`` (the UDP floor row of udp_paths.py) are what
the benchmark figures are read against; a clone that lacks one, or a source
that no longer compiles, would make those rows fail only when someone runs
them by hand.  Built with ``cc -O2`` as the benchmarks build them; loopback only.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import struct
import subprocess
from pathlib import Path

import pytest

from procs import free_port, recv_exact, terminate

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _build(tmp_path: Path, name: str, *flags: str) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "a C compiler is needed (the Cython build needs one too)"
    binary = tmp_path / name
    subprocess.run([cc, "-O2", "-Wall", "-Werror", *flags, "-o", str(binary),
                    str(BENCHMARKS / f"{name}.c")], check=True, timeout=120)
    return binary


def test_the_sources_are_not_ignored():
    """A *.c rule once kept udp_forwarder.c out of every commit."""
    if not (BENCHMARKS.parent / ".git").exists():
        pytest.skip("not a git checkout")  # an sdist has no .gitignore to check
    for name in ("floor.c", "udp_forwarder.c"):
        ignored = subprocess.run(["git", "check-ignore", "-q", f"benchmarks/{name}"],
                                 check=False, cwd=BENCHMARKS.parent).returncode == 0
        assert not ignored, f"benchmarks/{name} is git-ignored"


# floor.c as run.py builds it, and as bulk_paths.py builds its bulk relays.
FLOOR_BUILDS = {"16k": (), "4m": ("-DBUF=4194304",), "splice": ("-DSPLICE=1048576",)}


@pytest.fixture(params=list(FLOOR_BUILDS))
def floor(request, tmp_path):
    binary = _build(tmp_path, "floor", *FLOOR_BUILDS[request.param])
    port = free_port("127.0.0.1")
    proc = subprocess.Popen([str(binary), "127.0.0.1", str(port)], stderr=subprocess.PIPE)
    assert proc.stderr is not None
    assert select.select([proc.stderr], [], [], 10)[0], "floor did not start"
    assert b"listening" in proc.stderr.readline()
    yield port
    terminate(proc)
    proc.stderr.close()


def _connect(port: int, target: tuple[str, int], early: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"\x05\x01\x00" + b"\x05\x01\x00\x01" + socket.inet_aton(target[0])
                 + struct.pack(">H", target[1]) + early)
    return sock


def test_floor_relays_both_ways_with_half_close(floor, echo_target):
    sock = _connect(floor, (echo_target.host, echo_target.port), early=b"early")
    assert recv_exact(sock, 2) == b"\x05\x00"
    reply = recv_exact(sock, 10)
    assert reply[:4] == b"\x05\x00\x00\x01" and reply[8:] != b"\x00\x00"  # BND.PORT: its socket
    payload = os.urandom(3 << 20)
    sock.sendall(payload)
    sock.shutdown(socket.SHUT_WR)
    got = bytearray()
    while chunk := sock.recv(1 << 20):
        got += chunk
    assert bytes(got) == b"early" + payload
    sock.close()


def test_floor_refuses_what_it_does_not_do(floor, closed_port):
    sock = _connect(floor, ("127.0.0.1", closed_port))
    assert recv_exact(sock, 12) == b"\x05\x00\x05\x05\x00\x01" + bytes(6)  # connection refused
    assert sock.recv(1) == b""
    sock.close()
    sock = socket.create_connection(("127.0.0.1", floor), timeout=10)
    sock.sendall(b"\x05\x01\x00\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50")  # BIND
    assert recv_exact(sock, 12) == b"\x05\x00\x05\x07\x00\x01" + bytes(6)  # not supported
    assert sock.recv(1) == b""
    sock.close()


def test_udp_forwarder_forwards_and_answers(tmp_path, udp_echo):
    binary = _build(tmp_path, "udp_forwarder")
    proc = subprocess.Popen([str(binary), f"0:{udp_echo.port}"], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert select.select([proc.stdout], [], [], 10)[0], "the forwarder did not start"
        words = proc.stdout.readline().split()
        assert words[0] == b"ready" and len(words) == 2
        front = ("127.0.0.1", int(words[1]))
        clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
        for i, client in enumerate(clients):
            client.settimeout(5)
            client.sendto(b"datagram %d" % i, front)
        for i, client in enumerate(clients):  # each client gets its own answer, from the front
            data, source = client.recvfrom(100)
            assert (data, source) == (b"datagram %d" % i, front)
            client.close()
    finally:
        terminate(proc)
        if proc.stdout is not None:
            proc.stdout.close()
