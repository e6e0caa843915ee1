"""SIGTERM drain and SIGHUP reload, against a real fastsocks process."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from typing import Any, Callable, cast
from pathlib import Path

import pytest

from launcher import FastsocksProcess
from procs import recv_exact as _exact

from fastsocks import codec as fcodec


class Server(FastsocksProcess):
    """A server these tests signal themselves, with a client to try it."""

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
        code = self.wait(timeout)
        return code, time.monotonic() - started


@pytest.fixture
def echo(echo_target: Any) -> tuple[str, int]:
    return echo_target.address


@pytest.fixture
def start_server(fastsocks_server: Callable[..., FastsocksProcess]) -> Callable[..., Server]:
    """``start_server(*args)``: one process (unless ``--workers``) on 127.0.0.1:0."""

    def start(*args: str) -> Server:
        return cast(Server, fastsocks_server(*args, process_class=Server))

    return start


def test_sigterm_drains_open_connections(start_server: Callable[..., Server],
                                         echo: tuple[str, int], relay: str) -> None:
    server = start_server("--drain-timeout", "8", "--relay", relay)
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


def test_drain_deadline_closes_what_is_left(start_server: Callable[..., Server],
                                            echo: tuple[str, int]) -> None:
    server = start_server("--drain-timeout", "1")
    s, rep = server.request(echo)
    assert rep == 0
    server.proc.send_signal(signal.SIGTERM)
    code, elapsed = server.finish()
    assert code == 0 and 0.8 < elapsed < 5, elapsed
    s.settimeout(5)
    assert s.recv(1) == b""
    s.close()


def test_second_signal_closes_at_once(start_server: Callable[..., Server], echo: tuple[str, int]) -> None:
    server = start_server("--drain-timeout", "60")
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


def test_sighup_applies_new_rules_to_new_connections_only(start_server: Callable[..., Server],
                                                          echo: tuple[str, int], tmp_path: Path) -> None:
    config = tmp_path / "fastsocks.toml"
    config.write_text("")
    server = start_server("--config", str(config))
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


def _large_deny(path: Path, *extra: str) -> None:
    """A config whose one rule denies 100 000 networks (10/8 and 11/8 /24s) and ``extra``."""
    nets = [f'"{10 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}.0/24"' for i in range(100_000)]
    path.write_text('[[rules]]\naction = "deny"\ndst = [\n' + ",\n".join([*nets, *extra]) + "\n]\n")


def test_sighup_compiles_on_a_thread_and_keeps_serving(start_server: Callable[..., Server],
                                                       echo: tuple[str, int], tmp_path: Path) -> None:
    """Compiling 100 000 networks takes a second or more: meanwhile the worker
    answers on the running configuration, and then switches."""
    config = tmp_path / "fastsocks.toml"
    config.write_text("")
    server = start_server("--config", str(config))
    _large_deny(config, '"127.0.0.0/8"')
    server.proc.send_signal(signal.SIGHUP)
    time.sleep(0.1)  # the reload is under way
    served = 0
    while "configuration reloaded" not in server.log and served < 5:
        s, rep = server.request(echo)
        s.close()
        if "configuration reloaded" in server.log:
            break  # the answer may be the new configuration's
        assert rep == 0  # the running configuration: 127/8 is not denied yet
        served += 1
    assert served >= 1, "no connection was served while the reload compiled"
    server.wait_log("configuration reloaded", timeout=30)
    s, rep = server.request(echo)
    assert rep == 0x02
    s.close()
    server.proc.send_signal(signal.SIGTERM)
    assert server.finish()[0] == 0


def test_sighup_during_a_reload_reads_the_files_again(start_server: Callable[..., Server],
                                                      echo: tuple[str, int], tmp_path: Path) -> None:
    """A second SIGHUP while the first reload compiles is not lost: one more
    reload follows and reads the configuration as it is by then."""
    config = tmp_path / "fastsocks.toml"
    config.write_text("")
    server = start_server("--config", str(config))
    _large_deny(config)  # 10/8 and 11/8 only: the echo on 127.0.0.1 stays allowed
    server.proc.send_signal(signal.SIGHUP)
    time.sleep(0.1)
    config.write_text('[[rules]]\naction = "deny"\ndst = ["127.0.0.0/8"]\n')
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while server.log.count("configuration reloaded") < 2:
        assert time.monotonic() < deadline, server.log
        time.sleep(0.05)
    s, rep = server.request(echo)
    assert rep == 0x02  # the second file, read after the first reload
    s.close()
    server.proc.send_signal(signal.SIGTERM)
    assert server.finish()[0] == 0


def test_sighup_rejects_an_invalid_config_and_keeps_the_old(start_server: Callable[..., Server],
                                                            echo: tuple[str, int], tmp_path: Path) -> None:
    config = tmp_path / "fastsocks.toml"
    config.write_text("[timeouts]\nconnect = 5\n")
    server = start_server("--config", str(config))
    config.write_text("[timeouts]\nconnect = -1\n")
    server.proc.send_signal(signal.SIGHUP)
    server.wait_log("reload rejected")
    assert "timeouts.connect" in server.log
    s, rep = server.request(echo)
    assert rep == 0
    s.close()
    server.proc.send_signal(signal.SIGTERM)
    assert server.finish()[0] == 0


def test_sighup_rereads_the_users_file(start_server: Callable[..., Server],
                                       echo: tuple[str, int], tmp_path: Path) -> None:
    users = tmp_path / "users.txt"
    subprocess.run([sys.executable, "-m", "fastsocks", "users", "add", str(users), "alice", "--cost", "4"],
                   input=b"first\n", check=True, capture_output=True)
    server = start_server("--users", str(users))
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


def test_sighup_reaches_every_worker(start_server: Callable[..., Server],
                                     echo: tuple[str, int], tmp_path: Path) -> None:
    config = tmp_path / "fastsocks.toml"
    config.write_text("")
    server = start_server("--config", str(config), "--workers", "2", "--log-level", "info")
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
