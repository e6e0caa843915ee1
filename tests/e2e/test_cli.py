"""The ``fastsocks`` command: version, help, safe defaults, signals, users files."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import time

import bcrypt
import pytest
from builds import IMPLS

import fastsocks
from fastsocks.config import DEFAULT_LISTEN, Settings

BCRYPT_LINE = re.compile(r"^(?P<name>[^:]+):(?P<hash>\$2b\$(?P<cost>\d\d)\$[./A-Za-z0-9]{53})$")


def _lines(path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


def _hash_of(path, name: str) -> str:
    found = [line.partition(":")[2] for line in _lines(path) if line.partition(":")[0] == name]
    assert len(found) == 1, path.read_text()
    return found[0]


def _login(socks, proxy, username: str, password: str, target) -> bytes:
    """RFC 1929 login and, on success, a CONNECT through to ``target``; the status."""
    sock = socks.open(proxy.address)
    with sock:
        sock.sendall(b"\x05\x01\x02")
        assert socks.recv_exact(sock, 2) == b"\x05\x02"
        sock.sendall(socks.userpass(username, password))
        status = socks.recv_exact(sock, 2)
        if status != b"\x01\x00":
            assert socks.read_until_closed(sock) == b""
            return status
        sock.sendall(socks.request(0x01, *target.address))
        rep, _, _ = socks.read_reply(sock)
        assert rep == 0
        sock.sendall(b"hi " + username.encode())
        assert socks.recv_exact(sock, 3 + len(username)) == b"hi " + username.encode()
        return status


# -- version, help, defaults ------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_version(run_cli, impl):
    env = {"FASTSOCKS_NO_EXTENSIONS": "1"} if impl == "py" else {}
    result = run_cli("--version", env=env)
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    assert text.startswith(f"fastsocks {fastsocks.__version__}: "), text
    if impl == "c":
        assert "accelerated" in text, text
    else:
        assert "pure" in text and "accelerated" not in text, text
    assert "event loop uvloop" in text, text


def test_version_of_installed_script():
    """The console script on PATH is this package."""
    script = shutil.which("fastsocks")
    assert script, "the fastsocks console script is not on PATH"
    result = subprocess.run([script, "--version"], capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().startswith(f"fastsocks {fastsocks.__version__}: ")


def test_help(run_cli):
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    for option in ("--listen", "--users", "--allow-open", "--handshake-timeout",
                   "--connect-timeout", "--idle-timeout", "--loop", "--log-level", "--version"):
        assert option in text, option
    assert "127.0.0.1:1080" in text


def _port_1080_free() -> bool:
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.bind(("127.0.0.1", 1080))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def test_default_listen_address(fastsocks_server):
    """With no arguments: 127.0.0.1:1080 (started for real when that port is free)."""
    assert DEFAULT_LISTEN == ("127.0.0.1", 1080)
    assert Settings().listen == [("127.0.0.1", 1080)]
    assert Settings().users_file is None
    if _port_1080_free():
        server = fastsocks_server(default_listen=True, default_workers=True)
        assert server.addresses == [("127.0.0.1", 1080)]
        assert server.auth == "none"
        assert server.stop() == 0


def test_default_is_one_worker_per_cpu(fastsocks_server):
    import sys

    from fastsocks.config import cpu_count
    from procs import children

    assert Settings().workers == (cpu_count() if sys.platform.startswith("linux") else 1)
    server = fastsocks_server(default_workers=True)
    expected = Settings().workers
    if expected > 1:
        assert f"{expected} workers" in server.log
        assert len(children(server.pid)) == expected
    assert server.stop() == 0


def test_non_loopback_without_users_refuses_to_start(run_cli):
    result = run_cli("--listen", "0.0.0.0:0")
    assert result.returncode == 2, result
    message = result.stderr.decode()
    assert "0.0.0.0" in message
    assert "--users" in message and "--allow-open" in message, message
    assert "Traceback" not in message


def test_non_loopback_with_allow_open_starts(fastsocks_server, socks, echo_target, tmp_path):
    """--allow-open starts on 0.0.0.0; its SSRF-safe default still keeps
    loopback targets out unless a rule lets them in."""
    server = fastsocks_server("--listen", "0.0.0.0:0", "--allow-open")
    assert server.host == "0.0.0.0"
    sock, (rep, _, _) = socks.connect(("127.0.0.1", server.port), *echo_target.address)
    with sock:
        assert rep == 0x02
        assert socks.read_until_closed(sock) == b""
    config = tmp_path / "allow-loopback.toml"
    config.write_text('[[rules]]\naction = "allow"\ndst = ["127.0.0.1/32"]\n')
    server = fastsocks_server("--config", str(config), "--listen", "0.0.0.0:0", "--allow-open")
    sock, (rep, _, _) = socks.connect(("127.0.0.1", server.port), *echo_target.address)
    with sock:
        assert rep == 0
        sock.sendall(b"open")
        assert socks.recv_exact(sock, 4) == b"open"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_server_with_open_relay(fastsocks_server, socks, echo_target, signum):
    server = fastsocks_server()
    sock, (rep, _, _) = socks.connect(server.address, *echo_target.address)
    with sock:
        assert rep == 0
        sock.sendall(b"open relay")
        assert socks.recv_exact(sock, 10) == b"open relay"
        assert server.stop(signum) == 0, server.log
        assert socks.read_until_closed(sock) == b""
    echo_target.join(5)  # the target's side was closed as well
    assert "fastsocks stopped" in server.log
    assert "Traceback" not in server.log


def test_sigterm_with_connections_in_every_state(fastsocks_server, socks, echo_target, blackhole):
    """A relay, a connect still pending, a half-done handshake: SIGTERM ends all, exit 0."""
    server = fastsocks_server("--log-level", "debug")
    relay, (rep, _, _) = socks.connect(server.address, *echo_target.address)
    pending = socks.open(server.address)
    handshake = socks.open(server.address)
    with relay, pending, handshake:
        assert rep == 0
        pending.sendall(b"\x05\x01\x00" + socks.request(0x01, *blackhole))
        assert socks.recv_exact(pending, 2) == b"\x05\x00"
        handshake.sendall(b"\x05\x01")
        time.sleep(0.3)  # let the server see them all
        assert server.stop(signal.SIGTERM) == 0, server.log
        for sock in (relay, pending, handshake):
            assert socks.read_until_closed(sock) == b""
    log = server.log
    assert "fastsocks stopped" in log
    assert "Traceback" not in log and " ERROR " not in log, log


# -- users files --------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, line, words",
    [
        ("alice:$2b$04$" + "a" * 53 + "\nthis line has no colon\n", 2, ["name:hash"]),
        ("# comment\n\nbob:not-a-hash\n", 3, ["bob", "bcrypt"]),
        ("carol:$2b$04$tooshort\n", 1, ["carol", "malformed"]),
        ("dave:$2b$04$" + "a" * 53 + "\ndave:$2b$04$" + "b" * 53 + "\n", 2, ["dave", "twice"]),
    ],
    ids=["no-colon", "unknown-hash", "bad-bcrypt", "duplicate"],
)
def test_malformed_users_file(run_cli, tmp_path, content, line, words):
    path = tmp_path / "users"
    path.write_text(content)
    result = run_cli("--listen", "127.0.0.1:0", "--users", str(path), timeout=20)
    assert result.returncode == 2, result
    message = result.stderr.decode()
    assert f"{path}:{line}:" in message, message
    for word in words:
        assert word in message, message
    assert "Traceback" not in message


def test_missing_users_file(run_cli, tmp_path):
    path = tmp_path / "absent"
    result = run_cli("--listen", "127.0.0.1:0", "--users", str(path), timeout=20)
    assert result.returncode == 2, result
    assert str(path) in result.stderr.decode()


def test_users_add_update_remove(run_cli, tmp_path):
    path = tmp_path / "users"
    added = run_cli("users", "add", str(path), "alice", input=b"s3cret\nsecond line is ignored\n")
    assert added.returncode == 0, added.stderr
    assert b"added user 'alice'" in added.stderr
    assert b"s3cret" not in added.stdout + added.stderr
    [line] = _lines(path)
    match = BCRYPT_LINE.match(line)
    assert match, line
    assert match["name"] == "alice" and match["cost"] == "10"
    assert bcrypt.checkpw(b"s3cret", match["hash"].encode())
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600

    bob = run_cli("users", "add", "--cost", "4", str(path), "bob", input=b"hunter2\n")
    assert bob.returncode == 0, bob.stderr
    old_alice = _hash_of(path, "alice")

    updated = run_cli("users", "add", str(path), "alice", input=b"n3w-pass\n")
    assert updated.returncode == 0, updated.stderr
    assert b"updated user 'alice'" in updated.stderr
    assert [line.partition(":")[0] for line in _lines(path)] == ["alice", "bob"]
    new_alice = _hash_of(path, "alice")
    assert new_alice != old_alice and BCRYPT_LINE.match(f"alice:{new_alice}")
    assert bcrypt.checkpw(b"n3w-pass", new_alice.encode())
    assert not bcrypt.checkpw(b"s3cret", new_alice.encode())
    assert bcrypt.checkpw(b"hunter2", _hash_of(path, "bob").encode())

    removed = run_cli("users", "remove", str(path), "bob")
    assert removed.returncode == 0, removed.stderr
    assert [line.partition(":")[0] for line in _lines(path)] == ["alice"]
    again = run_cli("users", "remove", str(path), "bob")
    assert again.returncode == 1
    assert b"no user 'bob'" in again.stderr

    empty = run_cli("users", "add", str(path), "carol", input=b"\n")
    assert empty.returncode == 2
    assert [line.partition(":")[0] for line in _lines(path)] == ["alice"]


def test_users_file_changes_take_effect_on_start(run_cli, fastsocks_server, socks, echo_target, tmp_path):
    """An updated password works (and the old one no longer does) in a new server."""
    path = tmp_path / "users"
    assert run_cli("users", "add", str(path), "alice", input=b"first\n").returncode == 0
    assert run_cli("users", "add", str(path), "alice", input=b"second\n").returncode == 0
    server = fastsocks_server("--users", str(path))
    assert _login(socks, server, "alice", "second", echo_target) == b"\x01\x00"
    assert _login(socks, server, "alice", "first", echo_target) == b"\x01\x01"


def test_argon2_user(run_cli, fastsocks_server, socks, echo_target, users_file):
    result = run_cli("users", "add", "--argon2", str(users_file), "carol", input=b"argon-pass\n")
    assert result.returncode == 0, result.stderr
    carol = _hash_of(users_file, "carol")
    assert carol.startswith("$argon2id$"), carol
    server = fastsocks_server("--users", str(users_file))
    assert server.auth == "username/password (2 users)"
    assert _login(socks, server, "carol", "argon-pass", echo_target) == b"\x01\x00"
    assert _login(socks, server, "carol", "wrong", echo_target) == b"\x01\x01"
    assert _login(socks, server, "alice", "s3cret", echo_target) == b"\x01\x00"


def test_htpasswd_2y_hash(fastsocks_server, socks, echo_target, tmp_path):
    """A users file as ``htpasswd -B`` writes it ($2y$ prefix)."""
    hashed = bcrypt.hashpw(b"from-htpasswd", bcrypt.gensalt(rounds=5)).decode()
    assert hashed.startswith("$2b$")
    path = tmp_path / "htpasswd"
    path.write_text(f"# made by htpasswd -B\ndave:$2y${hashed[4:]}\n")
    server = fastsocks_server("--users", str(path))
    assert _login(socks, server, "dave", "from-htpasswd", echo_target) == b"\x01\x00"
    assert _login(socks, server, "dave", "from-htpasswd!", echo_target) == b"\x01\x01"


def test_no_password_in_debug_log(run_cli, fastsocks_server, socks, echo_target, users_file, curl, http_target):
    assert run_cli("users", "add", "--argon2", str(users_file), "carol",
                   input=b"Arg0nSecretValue\n").returncode == 0
    server = fastsocks_server("--users", str(users_file), "--log-level", "debug")
    assert _login(socks, server, "alice", "s3cret", echo_target) == b"\x01\x00"
    assert _login(socks, server, "alice", "s3cret", echo_target) == b"\x01\x00"  # cached check
    assert _login(socks, server, "carol", "Arg0nSecretValue", echo_target) == b"\x01\x00"
    assert _login(socks, server, "alice", "WrongPassw0rdValue", echo_target) == b"\x01\x01"
    assert _login(socks, server, "nobody", "UnknownUserPassValue", echo_target) == b"\x01\x01"
    bad = curl("--socks5-hostname", f"{server.host}:{server.port}", "--proxy-user",
               "alice:CurlWrongValue", http_target.url())
    assert bad.returncode == 97
    assert server.stop() == 0
    log = server.log
    assert " DEBUG " in log  # the debug level really was on
    for secret in ("s3cret", "Arg0nSecretValue", "WrongPassw0rdValue", "UnknownUserPassValue",
                   "CurlWrongValue"):
        assert secret not in log, f"{secret!r} appears in the log:\n{log}"
