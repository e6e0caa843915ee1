"""RFC 1929 logins the engine answers itself (``greet`` GREET_LOGIN), no server.

The engine keeps the MACs of the users file's good checks (``Engine.logins``,
``Users.mirror``): keyed BLAKE2s, computed in C on the engine thread.  The
MAC is checked against Python's hashlib and against ``Users`` (the same
bytes for the same login, or the set would never match); then the
negotiation byte by byte: a known login is answered X'05 02', X'01 00' and
its request reported (or dialled); anything else goes back to the loop with
every byte read and what was sent (``answered``), so that the loop's codec
and password checks take it from there.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

if not sys.platform.startswith("linux"):
    pytest.skip("the splice engine is Linux-only", allow_module_level=True)

if os.environ.get("FASTSOCKS_NO_EXTENSIONS"):
    pytest.skip("pure build: no engine", allow_module_level=True)

from fastsocks import _engine  # noqa: E402
from fastsocks._engine import Engine, login_mac  # noqa: E402
from fastsocks.constants import Greet, Sent  # noqa: E402
from fastsocks.control.auth import Users  # noqa: E402
from procs import engine_reports, recv_exact, send_split  # noqa: E402

KEY = bytes(range(32))
GREETING = b"\x05\x02\x00\x02"  # no authentication and username/password offered
LOGIN = b"\x01\x05alice\x06s3cret"


def _request(port: int) -> bytes:
    return b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack(">H", port)


class Rig:
    """A listener, the engine with alice's login known, and every report by pair id."""

    def __init__(self) -> None:
        self.engine = Engine()
        self.engine.start()
        self.engine.logins(KEY, [login_mac(KEY, b"alice", b"s3cret")])
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.target = socket.create_server(("127.0.0.1", 0))
        self.reports: dict[int, list[tuple[Any, ...]]] = {}
        self.fds: dict[int, int] = {}
        self.returned: list[int] = []

    def accept(self, greet: int = Greet.LOGIN, dial: float = 0.0) -> tuple[socket.socket, int]:
        client = socket.create_connection(self.listener.getsockname())
        fd, _ = self.listener._accept()  # type: ignore[attr-defined]
        holder: list[int] = []
        pair_id = self.engine.negotiate(
            fd, greet, lambda *args: self.reports.setdefault(holder[0], []).append(args),
            dial, 0.0)
        holder.append(pair_id)
        self.fds[pair_id] = fd
        return client, pair_id

    def wait(self, pair_id: int, count: int = 1) -> list[tuple[Any, ...]]:
        return engine_reports(self.engine, self.reports, pair_id,
                              lambda reports: len(reports) >= count)

    def handed_back(self, pair_id: int) -> tuple[bytes, int]:
        """A handback's (data, answered); the descriptor, ours again, is closed at the end."""
        reason, data, answered, *_ = self.wait(pair_id)[0]
        assert reason == "handback"
        self.returned.append(self.fds[pair_id])
        return data, answered

    def close(self) -> None:
        self.engine.stop()
        self.engine.collect()
        for fd in self.returned:
            os.close(fd)
        self.listener.close()
        self.target.close()


@pytest.fixture
def rig() -> Iterator[Rig]:
    rig = Rig()
    yield rig
    rig.close()


# -- the MAC ------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(max_size=255), st.binary(max_size=255))
def test_the_mac_is_keyed_blake2s_of_both_fields_with_their_lengths(key: bytes, name: bytes,
                                                                    password: bytes) -> None:
    message = len(name).to_bytes(4, "big") + name + len(password).to_bytes(4, "big") + password
    assert login_mac(key, name, password) == hashlib.blake2s(message, key=key).digest()


def test_users_makes_the_macs_the_engine_checks() -> None:
    users = Users("users.txt", {"alice": "$2b$04$" + "a" * 53})
    assert users._digest(b"alice", b"s3cret") == login_mac(users._key, b"alice", b"s3cret")
    assert login_mac(KEY, b"ab", b"c") != login_mac(KEY, b"a", b"bc")  # the lengths count
    with pytest.raises(ValueError):
        login_mac(KEY, b"x" * 256, b"")
    with pytest.raises(ValueError):
        login_mac(KEY[:31], b"", b"")


def test_the_python_constants_are_the_engines() -> None:
    assert [int(g) for g in Greet] == [_engine.GREET_NONE, _engine.GREET_OPEN, _engine.GREET_LOGIN]
    assert [int(s) for s in Sent] == [_engine.SENT_NOTHING, _engine.SENT_OPEN,
                                      _engine.SENT_METHOD, _engine.SENT_LOGIN]


def test_the_set_takes_many_logins_and_checks_its_arguments() -> None:
    engine = Engine()
    macs = [login_mac(KEY, b"user%d" % i, b"pw") for i in range(5000)]
    engine.logins(KEY, macs)  # grows from 16 slots, rehashing each time
    engine.add_login(macs[0])  # again: no change
    with pytest.raises(ValueError):
        engine.add_login(b"short")
    with pytest.raises(ValueError):
        engine.logins(b"short")
    engine.logins()  # none known


# -- the negotiation ------------------------------------------------------------


@pytest.mark.parametrize("split", [False, True], ids=["whole", "byte_by_byte"])
def test_a_known_login_is_answered_and_its_request_reported(rig: Rig, split: bool) -> None:
    client, pair_id = rig.accept()
    port = rig.target.getsockname()[1]
    send_split(client, GREETING, split)
    assert recv_exact(client, 2) == b"\x05\x02"
    send_split(client, LOGIN, split)
    assert recv_exact(client, 2) == b"\x01\x00"
    send_split(client, _request(port), split)
    reason, data, answered, *_ = rig.wait(pair_id)[0]
    assert (reason, data, answered) == ("request", GREETING + LOGIN + _request(port),
                                        Sent.LOGIN)
    rig.engine.end(pair_id, b"\x05\x02\x00\x01\x00\x00\x00\x00\x00\x00")
    assert recv_exact(client, 10)[1] == 2
    client.close()


def test_a_known_login_in_one_segment_is_dialled_here(rig: Rig) -> None:
    client, pair_id = rig.accept(dial=5.0)
    port = rig.target.getsockname()[1]
    client.sendall(GREETING + LOGIN + _request(port) + b"early")
    target, _ = rig.target.accept()
    with target:
        assert recv_exact(target, 5) == b"early"
        assert recv_exact(client, 4) == b"\x05\x02\x01\x00"
        assert recv_exact(client, 10)[1] == 0
        reason, data, answered, *_ = rig.wait(pair_id)[0]
        assert (reason, data, answered) == ("dialling", GREETING + LOGIN + _request(port),
                                            Sent.LOGIN)
    client.close()


@pytest.mark.parametrize("login", [
    b"\x01\x05alice\x05wrong",        # a wrong password
    b"\x01\x03bob\x06s3cret",          # another user
    b"\x01\x05ALICE\x06s3cret",        # names are bytes: case counts
    b"\x01\x05alice\x07s3cret!",       # a longer password
    b"\x01\x00\x06s3cret",             # an empty name
    b"\x01\x05alice\x00",              # an empty password
    b"\x02\x05alice\x06s3cret",        # not X'01': the loop's codec words it
], ids=["wrong", "unknown", "case", "longer", "empty_name", "empty_password", "version"])
def test_any_other_login_goes_back_with_every_byte(rig: Rig, login: bytes) -> None:
    client, pair_id = rig.accept()
    client.sendall(GREETING)
    assert recv_exact(client, 2) == b"\x05\x02"
    client.sendall(login + _request(80))
    data, answered = rig.handed_back(pair_id)
    assert answered == Sent.METHOD
    assert GREETING + login == data[:len(GREETING + login)]
    # Nothing more went to the client: the loop answers the login.
    client.setblocking(False)
    with pytest.raises(BlockingIOError):
        client.recv(1)
    client.close()


def test_a_greeting_without_username_password_goes_back_unanswered(rig: Rig) -> None:
    client, pair_id = rig.accept()
    client.sendall(b"\x05\x01\x00")
    assert rig.handed_back(pair_id) == (b"\x05\x01\x00", Sent.NOTHING)
    client.close()


def test_while_logins_are_paused_every_one_goes_back(rig: Rig) -> None:
    rig.engine.pause_logins(time.monotonic() + 0.5)
    client, pair_id = rig.accept()
    client.sendall(GREETING)
    assert rig.handed_back(pair_id) == (GREETING, Sent.NOTHING)
    client.close()
    rig.engine.pause_logins(time.monotonic() - 1)  # never earlier than before
    time.sleep(0.6)
    client, pair_id = rig.accept()
    client.sendall(GREETING + LOGIN)
    assert recv_exact(client, 4) == b"\x05\x02\x01\x00"
    client.close()


def test_a_new_key_or_set_forgets_the_old_logins(rig: Rig) -> None:
    rig.engine.logins(bytes(32), [login_mac(KEY, b"alice", b"s3cret")])  # another key
    client, pair_id = rig.accept()
    client.sendall(GREETING + LOGIN)
    assert rig.handed_back(pair_id)[1] == Sent.METHOD
    client.close()
    rig.engine.logins()
    client, pair_id = rig.accept()
    client.sendall(GREETING + LOGIN)
    assert rig.handed_back(pair_id)[1] == Sent.METHOD
    client.close()
    rig.engine.add_login(login_mac(bytes(32), b"alice", b"s3cret"))
    client, pair_id = rig.accept()
    client.sendall(GREETING + LOGIN)
    assert recv_exact(client, 4) == b"\x05\x02\x01\x00"
    client.close()


def test_greet_open_never_chooses_username_password(rig: Rig) -> None:
    client, pair_id = rig.accept(greet=Greet.OPEN)
    client.sendall(b"\x05\x01\x02")
    assert rig.handed_back(pair_id) == (b"\x05\x01\x02", Sent.NOTHING)
    client.close()


def test_the_mirror_stays_bounded_by_the_users_file(tmp_path: Any) -> None:
    """Passwords that differ after bcrypt's 72 bytes all match: each good check
    replaces the cache's MAC, and the engine's set is made again past a bound."""
    import asyncio

    from fastsocks.control.auth import hash_password

    users = Users(str(tmp_path / "users"), {"alice": hash_password(b"x" * 72, "bcrypt", 4)})

    class Recorder:
        def __init__(self) -> None:
            self.macs: set[bytes] = set()
            self.resets = 0

        def logins(self, key: bytes | None = None, macs: Any = ()) -> None:
            self.resets += 1
            self.macs = set(macs)

        def add_login(self, mac: bytes) -> None:
            self.macs.add(mac)

    engine = Recorder()
    users.mirror(engine)

    async def check_all() -> None:
        for i in range(200):
            assert await users.verify(b"alice", b"x" * 72 + b"%d" % i)

    asyncio.run(check_all())
    assert len(engine.macs) <= 2 * len(users) + 64 + 1
    assert engine.resets >= 2
    assert users._digest(b"alice", b"x" * 72 + b"199") in engine.macs
