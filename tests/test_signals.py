"""SIGTERM drain and SIGHUP reload, against a real fastsocks process."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from procs import recv_exact as _exact
from builds import RELAYS

from fastsocks import codec as fcodec


class Server:
    def __init__(self, *args: str, input_text: str | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fastsocks", "--listen", "127.0.0.1:0",
             *(() if "--workers" in args else ("--workers", "1")), *args],
            stderr=subprocess.PIPE, text=True,
        )
        assert self.proc.stderr is not None
        self.lines: list[str] = []
        while True:
            line = self.proc.stderr.readline()
            assert line, "".join(self.lines)
            self.lines.append(line)
            match = re.search(r"listening on 127\.0\.0\.1:(\d+) ", line)
            if match:
                break
        self.port = int(match.group(1))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_log(self, text: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log:
            assert time.monotonic() < deadline, f"{text!r} never logged:\n{self.log}"
            time.sleep(0.02)

    def request(self, target: tuple[str, int], user: bytes | None = None,
                password: bytes = b"") -> tuple[socket.socket, int]:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        if user is None:
            s.sendall(b"\x05\x01\x00")
            assert _exact(s, 2) == b"\x05\x00"
        else:
            s.sendall(b"\x05\x01\x02")
            assert _exact(s, 2) == b"\x05\x02"
            s.sendall(b"\x01" + bytes((len(user),)) + user + bytes((len(password),)) + password)
            status = _exact(s, 2)
            if status != b"\x01\x00":
                return s, -1
        s.sendall(b"\x05\x01\x00" + fcodec.encode_address(*target))
        reply = _exact(s, 10)
        return s, reply[1]

    def finish(self, timeout: float = 10.0) -> tuple[int, float]:
        started = time.monotonic()
        code = self.proc.wait(timeout)
        elapsed = time.monotonic() - started
        self._reader.join(5)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        return code, elapsed


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    conns: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                c, _ = listener.accept()
            except OSError:
                return
            conns.append(c)
            threading.Thread(target=_echo, args=(c,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield listener.getsockname()
    listener.close()
    for c in conns:
        c.close()


def _echo(c: socket.socket) -> None:
    try:
        while data := c.recv(65536):
            c.sendall(data)
        c.shutdown(socket.SHUT_WR)  # the client's EOF, answered: the relay can end
    except OSError:
        pass


@pytest.mark.parametrize("relay", RELAYS)
def test_sigterm_drains_open_connections(echo: tuple[str, int], relay: str) -> None:
    server = Server("--drain-timeout", "8", "--relay", relay)
    s, rep = server.request(echo)
    assert rep == 0
    server.proc.send_signal(signal.SIGTERM)
    server.wait_log("draining 1 connections")
    # No new connections, the open one still relays.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
    s.sendall(b"still here")
    assert _exact(s, 10) == b"still here"
    s.close()  # the last connection ends: the server stops without waiting out the deadline
    code, elapsed = server.finish()
    assert code == 0 and elapsed < 5, (elapsed, server.log)
    assert "drained: every connection finished" in server.log


def test_drain_deadline_closes_what_is_left(echo: tuple[str, int]) -> None:
    server = Server("--drain-timeout", "1")
    s, rep = server.request(echo)
    assert rep == 0
    server.proc.send_signal(signal.SIGTERM)
    code, elapsed = server.finish()
    assert code == 0 and 0.8 < elapsed < 5, elapsed
    s.settimeout(5)
    assert s.recv(1) == b""
    s.close()


def test_second_signal_closes_at_once(echo: tuple[str, int]) -> None:
    server = Server("--drain-timeout", "60")
    s, rep = server.request(echo)
    assert rep == 0
    server.proc.send_signal(signal.SIGTERM)
    server.wait_log("draining")
    server.proc.send_signal(signal.SIGINT)
    code, elapsed = server.finish()
    assert code == 0 and elapsed < 5
    s.settimeout(5)
    assert s.recv(1) == b""
    s.close()


def test_sighup_applies_new_rules_to_new_connections_only(echo: tuple[str, int], tmp_path: Path) -> None:
    config = tmp_path / "fastsocks.toml"
    config.write_text("")
    server = Server("--config", str(config))
    established, rep = server.request(echo)
    assert rep == 0
    config.write_text('[[rules]]\naction = "deny"\ndst = ["127.0.0.0/8"]\n')
    server.proc.send_signal(signal.SIGHUP)
    server.wait_log("configuration reloaded")
    denied, rep = server.request(echo)
    assert rep == 0x02
    denied.close()
    established.sendall(b"unaffected")
    assert _exact(established, 10) == b"unaffected"
    established.close()
    server.proc.send_signal(signal.SIGTERM)
    assert server.finish()[0] == 0


def test_sighup_rejects_an_invalid_config_and_keeps_the_old(echo: tuple[str, int], tmp_path: Path) -> None:
    config = tmp_path / "fastsocks.toml"
    config.write_text("[timeouts]\nconnect = 5\n")
    server = Server("--config", str(config))
    config.write_text("[timeouts]\nconnect = -1\n")
    server.proc.send_signal(signal.SIGHUP)
    server.wait_log("reload rejected")
    assert "timeouts.connect" in server.log
    s, rep = server.request(echo)
    assert rep == 0
    s.close()
    server.proc.send_signal(signal.SIGTERM)
    assert server.finish()[0] == 0


def test_sighup_rereads_the_users_file(echo: tuple[str, int], tmp_path: Path) -> None:
    users = tmp_path / "users.txt"
    subprocess.run([sys.executable, "-m", "fastsocks", "users", "add", str(users), "alice", "--cost", "4"],
                   input=b"first\n", check=True, capture_output=True)
    server = Server("--users", str(users))
    s, rep = server.request(echo, b"alice", b"first")
    assert rep == 0
    s.close()
    subprocess.run([sys.executable, "-m", "fastsocks", "users", "add", str(users), "bob", "--cost", "4"],
                   input=b"second\n", check=True, capture_output=True)
    s, rep = server.request(echo, b"bob", b"second")
    assert rep == -1  # not yet known
    s.close()
    server.proc.send_signal(signal.SIGHUP)
    server.wait_log("configuration reloaded")
    s, rep = server.request(echo, b"bob", b"second")
    assert rep == 0
    s.close()
    server.proc.send_signal(signal.SIGTERM)
    assert server.finish()[0] == 0


def test_sighup_reaches_every_worker(echo: tuple[str, int], tmp_path: Path) -> None:
    config = tmp_path / "fastsocks.toml"
    config.write_text("")
    server = Server("--config", str(config), "--workers", "2", "--log-level", "info")
    config.write_text('[[rules]]\naction = "deny"\ndst = ["127.0.0.0/8"]\n')
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while server.log.count("configuration reloaded") < 2:
        assert time.monotonic() < deadline, server.log
        time.sleep(0.02)
    for _ in range(20):  # whichever worker takes it
        s, rep = server.request(echo)
        assert rep == 0x02
        s.close()
    server.proc.send_signal(signal.SIGTERM)
    assert server.finish()[0] == 0
