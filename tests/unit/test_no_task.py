"""No asyncio Task per connection: the Tasks a CONNECT makes, counted (issue 15).

An embedded ``fastsocks.Server`` runs on the test's own loop (asyncio's and
uvloop) with each relay this build has (the splice engine: Linux, compiled;
the protocol relay: everywhere, and the only one under
``FASTSOCKS_NO_EXTENSIONS=1``).  A counting task factory
(``loop.set_task_factory``) notes every Task the loop makes, with its
coroutine's name and file, from the moment the clients start connecting
until the last session has ended: each of 20 connections in a row echoes a
short and a 64 KiB message, half-closes, and leaves its access-log record.
The clients and the echo target are blocking sockets on threads of their
own, so every Task counted is the server's or the loop's: none is filtered
out, and a Task is fastsocks' when its coroutine's file is in the package.

What is true, and asserted:

* splice engine, CONNECT to an IPv4 literal or to a name in the DNS cache:
  no Task at all, fastsocks' or anyone's, on uvloop.  Where the loop
  accepts (not here: the engine negotiates these, runtime/listener.py) the
  stdlib loop makes one of its own per accepted connection
  (``_accept_connection2``, in ``asyncio/selector_events.py``), before any
  fastsocks code runs.
* protocol relay: at most one Task per connection (today exactly one),
  ``_relay_protocol``: the hand-off awaits ``loop.create_connection(sock=...)``
  for the outbound socket in a Task (control/handoff.py, ``HandoffStage._relay``).
* RFC 1929, the first login (not in the users file's cache): its hash
  check waits for the hash pool in one Task, ``_authenticate``; with the
  splice engine, which knows only cached logins, the connection first comes
  back to the loop over a transport, in one more, ``Session._adopt``.  The
  later logins: none, as above (the engine answers them itself).
* a name's first, uncached lookup: "localhost" goes to getaddrinfo(3)
  (net/dns.py, ``_use_system``), which runs in one Task,
  ``DnsCache._system``, shared by both families; a cached name is dialled
  at once, with none.  The test takes the name out of the cache first, so
  the later CONNECTs run well within the 5 s a negative AAAA answer is kept.

A negative control makes the common path start a Task (``_opened`` and,
for a connection the engine reports once at its end, ``report_quiet``
wrapped) and shows that the counter sees it and the check fails.
"""

from __future__ import annotations

import asyncio
import errno
import os
import selectors
import socket
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import fastsocks
from fastsocks import _accel
from fastsocks.control.auth import Users, hash_password
from fastsocks.control.session import Session
from fastsocks.runtime import listener as engine_listener
from fastsocks.net import dns
from fastsocks.relay import Engine
from procs import recv_exact

LOOPS = ["asyncio"] + (["uvloop"] if _accel.have_uvloop() else [])
# Decided by what this process really loaded (FASTSOCKS_NO_EXTENSIONS=1 at
# run time leaves the compiled modules on disk but the engine unused).
RELAYS = ["splice", "protocol"] if Engine is not None else ["protocol"]
CONNECTIONS = 20  # in a row, each counted
NAME = "localhost"  # looked up by the system resolver, /etc/hosts first
DEADLINE = 5.0  # seconds any one wait may take
BULK = 64 * 1024  # past the engine's 16 KiB copy buffer: its splice path too

PACKAGE = os.path.dirname(os.path.abspath(fastsocks.__file__)) + os.sep
ASYNCIO = os.path.dirname(os.path.abspath(asyncio.__file__)) + os.sep
RELAY_TASK = "HandoffStage._relay_protocol"
LOOKUP_TASK = "DnsCache._system"
ACCEPT_TASK = "_accept_connection2"  # the stdlib loop's, one per accepted connection
LOGIN_TASK = "NegotiateStage._authenticate"
ADOPT_TASK = "Session._adopt"  # a handshake the engine hands back goes on over a transport


@dataclass(frozen=True)
class Made:
    """One Task the loop made: its coroutine's qualified name and file."""

    name: str
    filename: str

    @property
    def ours(self) -> bool:
        return self.filename.startswith(PACKAGE)

    @property
    def loops_accept(self) -> bool:
        return self.filename.startswith(ASYNCIO) and self.name.endswith(ACCEPT_TASK)


class TaskCounter:
    """A task factory that notes every Task made while it counts."""

    def __init__(self) -> None:
        self.counting = False
        self.made: list[Made] = []

    def __call__(self, loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any],
                 **kwargs: Any) -> asyncio.Task[Any]:
        if self.counting:
            code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
            self.made.append(Made(getattr(coro, "__qualname__", type(coro).__qualname__),
                                  code.co_filename if code is not None else ""))
        return asyncio.Task(coro, loop=loop, **kwargs)

    def start(self) -> None:
        self.made = []
        self.counting = True

    def stop(self) -> list[Made]:
        self.counting = False
        return self.made


class EchoTarget:
    """An echo server on threads, one port on each of ``hosts`` (no Task on the test's loop).

    A name leads where /etc/hosts says (127.0.0.1, often ::1 too), and Happy
    Eyeballs dials IPv6 first: the target listens on every address of the
    name, at one port.  An address this host cannot bind (no IPv6) is left
    out; the proxy then falls back to the next one, as it would anywhere.
    """

    def __init__(self, hosts: list[str]) -> None:
        self.listeners = _listen_all(hosts)
        self.port: int = self.listeners[0].getsockname()[1]
        self._stop = threading.Event()
        self._handlers: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._accept, name="no-task-echo", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        with selectors.DefaultSelector() as selector:
            for listener in self.listeners:
                selector.register(listener, selectors.EVENT_READ, listener)
            while not self._stop.is_set():
                for key, _ in selector.select(0.05):
                    conn, _peer = key.data.accept()
                    handler = threading.Thread(target=_echo, args=(conn,), daemon=True)
                    self._handlers.append(handler)
                    handler.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(DEADLINE)
        for listener in self.listeners:
            listener.close()
        for handler in self._handlers:
            handler.join(DEADLINE)


def _listen_all(hosts: list[str]) -> list[socket.socket]:
    """Listening sockets on one free port of every host that can be bound."""
    for _ in range(20):  # the first host's port may be taken on another: try another
        bound: list[socket.socket] = []
        port = 0
        try:
            for host in hosts:
                try:
                    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
                except OSError as exc:
                    if exc.errno == errno.EAFNOSUPPORT and bound:
                        continue  # no IPv6 here: leave the address out
                    raise
                try:
                    sock.bind((host, port))
                except OSError as exc:
                    sock.close()
                    if exc.errno == errno.EADDRNOTAVAIL and bound:
                        continue  # no such address here (IPv6 off): leave it out
                    raise
                sock.listen(64)
                bound.append(sock)
                port = sock.getsockname()[1]
            return bound
        except OSError as exc:
            for sock in bound:
                sock.close()
            if exc.errno != errno.EADDRINUSE:
                raise
    raise AssertionError(f"no free port on all of {hosts}")


def _echo(conn: socket.socket) -> None:
    """Echo until EOF, then close."""
    with conn:
        conn.settimeout(DEADLINE)
        while data := conn.recv(65536):
            conn.sendall(data)


def _name_addresses() -> list[str]:
    """Where NAME leads, as fastsocks' system resolver asks for it."""
    infos = socket.getaddrinfo(NAME, None, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return sorted({str(info[4][0]) for info in infos})


# -- the client: blocking sockets on a thread --------------------------------


def _request(host: str, port: int) -> bytes:
    """A SOCKS5 CONNECT (RFC 1928 §4): ATYP X'01' for an IPv4 literal, X'03' for a name."""
    try:
        address = b"\x01" + socket.inet_aton(host)
    except OSError:
        address = b"\x03" + bytes((len(host),)) + host.encode()
    return b"\x05\x01\x00" + address + port.to_bytes(2, "big")


def _read_reply(sock: socket.socket) -> int:
    """The reply's REP field, after reading the whole reply (RFC 1928 §6)."""
    version, code, _rsv, atyp = recv_exact(sock, 4)
    assert version == 5
    length = {1: 4, 4: 16}.get(atyp) or recv_exact(sock, 1)[0]
    recv_exact(sock, length + 2)
    return code


def _clients(proxy: tuple[str, int], host: str, port: int, count: int,
             login: bytes = b"") -> None:
    """``count`` CONNECTs in a row, each echoing a short and a bulk message, then half-closing.

    ``login``: an RFC 1929 request (username/password), sent with the CONNECT.
    """
    for i in range(count):
        with socket.create_connection(proxy, timeout=DEADLINE) as sock:
            if login:
                sock.sendall(b"\x05\x01\x02")  # username/password
                assert recv_exact(sock, 2) == b"\x05\x02"
                sock.sendall(login + _request(host, port))  # RFC 1929 §2, then the request
                assert recv_exact(sock, 2) == b"\x01\x00"
            else:
                sock.sendall(b"\x05\x01\x00")  # no authentication
                assert recv_exact(sock, 2) == b"\x05\x00"
                sock.sendall(_request(host, port))
            assert _read_reply(sock) == 0, f"connection {i}: not succeeded"
            short = f"ping {i}".encode()
            sock.sendall(short)
            assert recv_exact(sock, len(short)) == short
            bulk = bytes((i + n) % 251 for n in range(BULK))
            sock.sendall(bulk)
            assert recv_exact(sock, BULK) == bulk
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(1) == b"", "open after both sides closed"


# -- one server, counted ------------------------------------------------------


def _run(loop_name: str, main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    loop = _accel.new_event_loop(loop_name)
    try:
        return loop.run_until_complete(main())
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


def _counted(loop_name: str, relay: str, host: str, tmp_path: Path,
             users: Path | None = None, login: bytes = b"") -> tuple[list[Made], list[Made]]:
    """One server: a first CONNECT to ``host``, then CONNECTIONS more; the Tasks of each part.

    ``users``: the server's users file, and ``login`` the RFC 1929 request the clients send.
    """

    async def main() -> tuple[list[Made], list[Made]]:
        loop = asyncio.get_running_loop()
        counter = TaskCounter()
        loop.set_task_factory(counter)
        target = EchoTarget(sorted({"127.0.0.1", *_name_addresses()}))
        settings = fastsocks.Settings(listen=[("127.0.0.1", 0)], relay=relay,
                                      access_log=str(tmp_path / "access.log"))
        try:
            async with fastsocks.Server(settings, Users.load(users) if users else None) as server:
                assert server.relay_name == ("splice engine" if relay == "splice"
                                             else "protocol relay")
                proxy = ("127.0.0.1", int(server.addresses[0].rsplit(":", 1)[1]))
                parts = []
                for count in (1, CONNECTIONS):
                    counter.start()
                    await loop.run_in_executor(None, _clients, proxy, host, target.port, count,
                                               login)
                    await _ended(server)
                    parts.append(counter.stop())
        finally:
            target.close()
        return parts[0], parts[1]

    first, rest = _run(loop_name, main)
    # One record each, made within the count: reply 0, every byte both ways, EOF.
    records = [line.split() for line in (tmp_path / "access.log").read_text().splitlines()]
    assert len(records) == 1 + CONNECTIONS, records
    assert all(r[6] == "0" and r[7] == r[8] and r[-1] == "eof" for r in records), records
    return first, rest


async def _ended(server: fastsocks.Server) -> None:
    """Until every connection has ended and reported (bounded): the sessions, and
    those the engine holds (a short one is reported once, at its end)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while server.connections:
        assert loop.time() < deadline, f"{server.connections} connections still open"
        await asyncio.sleep(0.005)


def _check(made: list[Made], connections: int, relay: str, loop_name: str,
           allowed: tuple[str, ...] = ()) -> None:
    """The Tasks ``connections`` CONNECTs may make: see the module's docstring."""
    ours = [m.name for m in made if m.ours and m.name not in allowed]
    loops = [m for m in made if m.loops_accept]
    others = [m for m in made if not m.ours and not m.loops_accept]
    if relay == "splice":
        assert ours == [], f"the engine path made Tasks: {ours}"
    else:
        assert set(ours) <= {RELAY_TASK} and len(ours) <= connections, ours
    assert not others, f"Tasks from outside fastsocks and the loop's accept: {others}"
    assert len(loops) <= (connections if loop_name == "asyncio" else 0), loops


def _forget(name: str) -> None:
    """Take ``name`` out of the process's DNS cache, so the next CONNECT looks it up."""
    for family in (socket.AF_INET6, socket.AF_INET):
        dns.CACHE.entries.pop((name, family), None)


# -- the tests ----------------------------------------------------------------


@pytest.mark.parametrize("relay", RELAYS)
@pytest.mark.parametrize("loop_name", LOOPS)
def test_connect_to_an_ipv4_literal_makes_no_task(loop_name: str, relay: str,
                                                  tmp_path: Path) -> None:
    first, rest = _counted(loop_name, relay, "127.0.0.1", tmp_path)
    _check(first, 1, relay, loop_name)
    _check(rest, CONNECTIONS, relay, loop_name)


@pytest.mark.parametrize("relay", RELAYS)
@pytest.mark.parametrize("loop_name", LOOPS)
def test_connect_to_a_cached_name_makes_no_task(loop_name: str, relay: str,
                                                tmp_path: Path) -> None:
    # The first CONNECT looks the name up (one Task); the others find it cached,
    # within the 5 s a negative AAAA answer is kept (dns_negative_ttl).
    _forget(NAME)
    first, rest = _counted(loop_name, relay, NAME, tmp_path)
    assert [m.name for m in first if m.ours].count(LOOKUP_TASK) == 1, first
    _check(first, 1, relay, loop_name, allowed=(LOOKUP_TASK,))
    _check(rest, CONNECTIONS, relay, loop_name)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_the_counter_sees_a_task_on_the_common_path(loop_name: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # Every connection's: a session's opening, whoever negotiates and dials,
    # or, for one the engine dialled and reports once at its end, its record.
    opened, quiet = Session._opened, engine_listener.report_quiet

    def opened_with_a_task(self: Session, peer: Any, *args: Any) -> None:
        asyncio.ensure_future(asyncio.sleep(0))  # what the tests above must catch
        opened(self, peer, *args)

    def quiet_with_a_task(*args: Any) -> None:
        asyncio.ensure_future(asyncio.sleep(0))
        quiet(*args)

    monkeypatch.setattr(Session, "_opened", opened_with_a_task)
    monkeypatch.setattr(engine_listener, "report_quiet", quiet_with_a_task)
    relay = RELAYS[0]
    first, rest = _counted(loop_name, relay, "127.0.0.1", tmp_path)
    assert [m.name for m in first].count("sleep") == 1, first
    assert [m.name for m in rest].count("sleep") == CONNECTIONS, rest
    with pytest.raises(AssertionError, match="outside fastsocks"):
        _check(rest, CONNECTIONS, relay, loop_name)


@pytest.mark.parametrize("relay", RELAYS)
@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_cached_login_makes_no_task(loop_name: str, relay: str, tmp_path: Path) -> None:
    """RFC 1929: the first login is hashed (one Task waits for the hash pool, and with
    the engine one more takes the connection back from it); the later ones are
    answered from the users file's cache at once (by the engine where it
    negotiates), with none."""
    users = tmp_path / "users.txt"
    users.write_text(f"alice:{hash_password(b's3cret', 'bcrypt', 4)}\n")
    login = b"\x01\x05alice\x06s3cret"
    first, rest = _counted(loop_name, relay, "127.0.0.1", tmp_path, users, login)
    assert [m.name for m in first if m.ours].count(LOGIN_TASK) == 1, first
    assert [m.name for m in first if m.ours].count(ADOPT_TASK) == (relay == "splice"), first
    _check(first, 1, relay, loop_name, allowed=(LOGIN_TASK, ADOPT_TASK))
    _check(rest, CONNECTIONS, relay, loop_name)
