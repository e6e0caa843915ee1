"""Upstream chaining: rules that send CONNECT and UDP datagrams through another SOCKS5 proxy.

The upstream is a real one: microsocks from Debian's packages (installed by
tests/run.sh), with and without username/password, its outgoing connections
bound to 127.0.0.8 (``-b``) so that the target can tell the chained path from
a direct one; and a second fastsocks, whose access log shows what it was
asked for (a name travels unresolved).  Failures: the upstream's own reply
codes pass through; an upstream that refuses, times out, rejects our
credentials or is not SOCKS5 gives X'01'.  UDP: the datagrams an upstream
rule allows go through the upstream's own UDP ASSOCIATE (a second fastsocks,
on both datagram paths of the first), the others directly; an upstream
without UDP (microsocks: X'07') or one that goes away drops them, logged.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from builds import UDP_PATH_ARGS
from procs import UdpEcho, access_entries, free_port, terminate

CHAINED_FROM = "127.0.0.8"  # microsocks binds its outgoing connections here


def wait_log(server: Any, text: str, timeout: float = 5.0) -> None:
    """The server's log gets ``text`` within ``timeout`` (it logs right after replying)."""
    import time

    deadline = time.monotonic() + timeout
    while text not in server.log:
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{server.log}"
        time.sleep(0.05)


@pytest.fixture
def microsocks() -> Iterator[Callable[..., tuple[str, int]]]:
    """``microsocks(user=None, password=None)`` starts one; returns its address."""
    binary = shutil.which("microsocks")
    assert binary, "microsocks is required (tests/run.sh installs Debian's package)"
    procs: list[subprocess.Popen[bytes]] = []

    def start(user: str | None = None, password: str | None = None) -> tuple[str, int]:
        host = "127.0.0.41"
        port = free_port(host)
        args = [binary, "-i", host, "-p", str(port), "-b", CHAINED_FROM]
        if user is not None:
            args += ["-u", user, "-P", password or ""]
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        procs.append(proc)
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, f"microsocks exited with {proc.returncode}"
            try:
                socket.create_connection((host, port), timeout=1).close()
                return host, port
            except OSError:
                assert time.monotonic() < deadline, "microsocks did not start listening"
                time.sleep(0.05)

    yield start
    for proc in procs:
        terminate(proc)


def config(tmp_path: Path, upstream: tuple[str, int], rules: str,
           auth: tuple[str, str] | None = None, name: str = "chain.toml") -> Path:
    creds = f'user = "{auth[0]}"\npassword = "{auth[1]}"\n' if auth else ""
    host = f"[{upstream[0]}]" if ":" in upstream[0] else upstream[0]
    path = tmp_path / name
    path.write_text(f"""
[upstreams.next]
address = "{host}:{upstream[1]}"
{creds}
{rules}
""", encoding="utf-8")
    return path


CHAIN_ALL = """
[[rules]]
action = "allow"
upstream = "next"
"""


def echo_once(sock: socket.socket, socks: Any, data: bytes = b"via upstream") -> None:
    sock.sendall(data)
    assert socks.recv_exact(sock, len(data)) == data


@pytest.mark.parametrize("auth", [None, ("chain user", "pa:ss w0rd")], ids=["noauth", "userpass"])
def test_connect_through_microsocks(start_proxy: Callable[..., Any], microsocks: Any,
                                    tmp_path: Path, socks: Any, echo_target: Any,
                                    auth: tuple[str, str] | None) -> None:
    upstream = microsocks(*auth) if auth else microsocks()
    server = start_proxy("--config", str(config(tmp_path, upstream, CHAIN_ALL, auth)))
    # BND.ADDR and BND.PORT are the upstream's (microsocks says 0.0.0.0:0).
    sock, (rep, _, _) = socks.connect(server.address, "127.0.0.1", echo_target.port,
                                      extra=b"early ")
    with sock:
        assert rep == 0
        assert socks.recv_exact(sock, 6) == b"early "  # optimistic data went through
        echo_once(sock, socks)
    assert [peer[0] for peer in echo_target.wait_accepted(1)] == [CHAINED_FROM]


def test_only_matching_rules_chain(fastsocks_server: Callable[..., Any], microsocks: Any,
                                   tmp_path: Path, socks: Any, tcp_target: Any) -> None:
    from conftest import echo_handler

    chained, direct = tcp_target(echo_handler), tcp_target(echo_handler)
    rules = f"""
[[rules]]
action = "allow"
ports = [{chained.port}]
upstream = "next"
"""
    server = fastsocks_server("--config", str(config(tmp_path, microsocks(), rules)))
    for target in (chained, direct):
        sock, (rep, _, _) = socks.connect(server.address, "127.0.0.1", target.port)
        with sock:
            assert rep == 0
            echo_once(sock, socks)
    assert chained.wait_accepted(1)[0][0] == CHAINED_FROM
    assert direct.wait_accepted(1)[0][0] == "127.0.0.1"


def test_names_go_to_the_upstream_unresolved(fastsocks_server: Callable[..., Any],
                                             tmp_path: Path, socks: Any,
                                             echo_target: Any) -> None:
    # A second fastsocks as the upstream: its access log says what it was asked.
    log = tmp_path / "upstream-access.log"
    upstream = fastsocks_server("--access-log", str(log))
    rules = """
[[rules]]
action = "allow"
domain = ["localhost"]
upstream = "next"
"""
    server = fastsocks_server("--config", str(config(tmp_path, upstream.address, rules)))
    sock, (rep, _, _) = socks.connect(server.address, "localhost", echo_target.port)
    with sock:
        assert rep == 0
        echo_once(sock, socks)
    assert upstream.stop() == 0
    (line,) = log.read_text().splitlines()
    assert line.split(" ")[4] == f"localhost:{echo_target.port}", line


def test_upstream_reply_codes_pass_through(fastsocks_server: Callable[..., Any],
                                           microsocks: Any, tmp_path: Path, socks: Any,
                                           closed_port: int) -> None:
    server = fastsocks_server("--config", str(config(tmp_path, microsocks(), CHAIN_ALL)))
    sock, (rep, _, _) = socks.connect(server.address, "127.0.0.1", closed_port)
    sock.close()
    assert rep == 5  # microsocks: connection refused by the target


def test_upstream_unreachable_or_silent_is_general_failure(
        fastsocks_server: Callable[..., Any], tmp_path: Path, socks: Any, closed_port: int,
        blackhole: tuple[str, int], echo_target: Any) -> None:
    refused = fastsocks_server("--config", str(config(tmp_path, ("127.0.0.1", closed_port),
                                                      CHAIN_ALL, name="refused.toml")))
    sock, (rep, _, _) = socks.connect(refused.address, "127.0.0.1", echo_target.port)
    sock.close()
    assert rep == 1
    silent = fastsocks_server("--connect-timeout", "1",
                              "--config", str(config(tmp_path, blackhole, CHAIN_ALL,
                                                     name="silent.toml")))
    started = time.monotonic()
    sock, (rep, _, _) = socks.connect(silent.address, "127.0.0.1", echo_target.port)
    sock.close()
    assert rep == 1
    assert time.monotonic() - started < 8
    assert echo_target.peers == []


def test_upstream_that_accepts_and_says_nothing(fastsocks_server: Callable[..., Any],
                                                tcp_target: Any, tmp_path: Path, socks: Any,
                                                echo_target: Any) -> None:
    def mute(conn: socket.socket) -> None:
        conn.recv(16)
        time.sleep(3)

    upstream = tcp_target(mute)
    server = fastsocks_server("--connect-timeout", "1", "--log-level", "debug",
                              "--config", str(config(tmp_path, upstream.address, CHAIN_ALL)))
    sock, (rep, _, _) = socks.connect(server.address, "127.0.0.1", echo_target.port)
    sock.close()
    assert rep == 1
    wait_log(server, "no answer within 1 s")


def test_upstream_not_socks5(fastsocks_server: Callable[..., Any], tcp_target: Any,
                             tmp_path: Path, socks: Any, echo_target: Any) -> None:
    def http(conn: socket.socket) -> None:
        conn.recv(16)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    upstream = tcp_target(http)
    server = fastsocks_server("--log-level", "debug",
                              "--config", str(config(tmp_path, upstream.address, CHAIN_ALL)))
    sock, (rep, _, _) = socks.connect(server.address, "127.0.0.1", echo_target.port)
    sock.close()
    assert rep == 1
    wait_log(server, "is not a SOCKS5 server")


def test_wrong_credentials_at_the_upstream(fastsocks_server: Callable[..., Any],
                                           microsocks: Any, tmp_path: Path, socks: Any,
                                           echo_target: Any) -> None:
    upstream = microsocks("alice", "right")
    server = fastsocks_server("--log-level", "debug",
                              "--config", str(config(tmp_path, upstream, CHAIN_ALL,
                                                     ("alice", "wrong"))))
    sock, (rep, _, _) = socks.connect(server.address, "127.0.0.1", echo_target.port)
    sock.close()
    assert rep == 1
    wait_log(server, "rejected user 'alice'")
    assert "wrong" not in server.log  # the password is never logged
    # Without credentials, microsocks with a users list offers nothing we accept.
    bare = fastsocks_server("--config", str(config(tmp_path, upstream, CHAIN_ALL,
                                                   name="bare.toml")))
    sock, (rep, _, _) = socks.connect(bare.address, "127.0.0.1", echo_target.port)
    sock.close()
    assert rep == 1
    assert echo_target.peers == []


def test_bind_through_an_upstream_is_not_supported(
        fastsocks_server: Callable[..., Any], microsocks: Any, tmp_path: Path,
        socks: Any) -> None:
    server = fastsocks_server("--config", str(config(tmp_path, microsocks(), CHAIN_ALL)))
    with socks.open(server.address) as sock:
        sock.sendall(b"\x05\x01\x00")
        assert socks.recv_exact(sock, 2) == b"\x05\x00"
        sock.sendall(socks.request(0x02, "0.0.0.0", 0))
        assert socks.read_reply(sock)[0] == 7


def test_access_log_names_the_upstream_as_dialled(fastsocks_server: Callable[..., Any],
                                                  microsocks: Any, tmp_path: Path, socks: Any,
                                                  echo_target: Any) -> None:
    upstream = microsocks()
    log = tmp_path / "access.log"
    server = fastsocks_server("--access-log", str(log),
                              "--config", str(config(tmp_path, upstream, CHAIN_ALL)))
    sock, (rep, _, _) = socks.connect(server.address, "127.0.0.1", echo_target.port)
    with sock:
        assert rep == 0
        echo_once(sock, socks)
    assert server.stop() == 0
    (line,) = log.read_text().splitlines()
    fields = line.split(" ")
    assert fields[4] == f"127.0.0.1:{echo_target.port}"  # the target as requested
    assert fields[5] == f"{upstream[0]}:{upstream[1]}"  # dialled: the upstream


# -- configuration -------------------------------------------------------------------


@pytest.mark.parametrize("text, error", [
    ('[[rules]]\naction = "allow"\nupstream = "nope"\n',
     "rules[0].upstream: must name an [upstreams.NAME] section (defined: none)"),
    ('[upstreams.a]\naddress = "127.0.0.1:1"\n[[rules]]\naction = "deny"\nupstream = "a"\n',
     "rules[0].upstream: only an allow rule"),
    ('[upstreams.a]\nuser = "u"\npassword = "p"\n', "upstreams.a.address: missing"),
    ('[upstreams.a]\naddress = "127.0.0.1"\n', "upstreams.a.address: listen address"),
    ('[upstreams.a]\naddress = "127.0.0.1:1"\nuser = "u"\n',
     "upstreams.a: give both user and password"),
    ('[upstreams.a]\naddress = "127.0.0.1:1"\nuser = ""\npassword = "p"\n',
     "upstreams.a.user: must be 1 to 255 bytes"),
    ('[upstreams.a]\naddress = "127.0.0.1:1"\npasword = "p"\n',
     "upstreams.a.pasword: unknown key (did you mean 'password'?)"),
])
def test_config_errors_name_the_key(run_cli: Callable[..., Any], tmp_path: Path, text: str,
                                    error: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    result = run_cli("check", str(path))
    assert result.returncode == 2
    assert error in result.stderr.decode(), result.stderr.decode()


def test_check_round_trips_upstreams(run_cli: Callable[..., Any], tmp_path: Path) -> None:
    path = config(tmp_path, ("127.0.0.41", 1081), CHAIN_ALL + 'domain = ["*.corp"]\n',
                  ("u", "p"))
    first = run_cli("check", str(path))
    assert first.returncode == 0, first.stderr
    out = first.stdout.decode()
    assert '[upstreams."next"]' in out and 'address = "127.0.0.41:1081"' in out
    assert 'upstream = "next"' in out
    again = tmp_path / "again.toml"
    again.write_text(out, encoding="utf-8")
    second = run_cli("check", str(again))
    assert second.returncode == 0, second.stderr
    assert second.stdout.decode().splitlines()[1:] == out.splitlines()[1:]


def test_rules_send_connect_and_datagrams_to_the_upstream_but_refuse_bind() -> None:
    # Policy level: CONNECT and a UDP datagram's target get the upstream rule;
    # a BIND peer that rule would send there is denied, not let in directly.
    from fastsocks.constants import Command
    from fastsocks.control.rulebook import Denial, Policy, Rule
    from fastsocks.control.targets import TargetFilter

    rules = [Rule(0, True, ports=[(53, 53)], upstream="corp"), Rule(1, True)]
    policy = Policy(rules)
    udp = TargetFilter(policy, policy.subject("127.0.0.1", None), Command.UDP_ASSOCIATE)
    assert udp.early("192.0.2.1", 53) is rules[0]
    assert udp.early("192.0.2.1", 123) is rules[1]
    allowed = udp.allowed("a.example", 53, [(2, ("192.0.2.1", 53))])
    assert allowed.addresses != [] and allowed.rule is rules[0]
    bind = TargetFilter(policy, policy.subject("127.0.0.1", None), Command.BIND)
    assert isinstance(bind.judge("0.0.0.0", 53, "192.0.2.1"), Denial)
    assert bind.judge("0.0.0.0", 123, "192.0.2.1") is rules[1]
    assert bind.allowed("a.example", 53, [(2, ("192.0.2.1", 53))]).addresses == []
    connect = TargetFilter(policy, policy.subject("127.0.0.1", None), Command.CONNECT)
    assert connect.early("192.0.2.1", 53) is rules[0]
    allowed = connect.allowed("a.example", 123, [(2, ("192.0.2.1", 123))])
    assert allowed.addresses != [] and allowed.rule is rules[1]


def test_chain_to_a_fastsocks_upstream_on_ipv6_with_auth(
        fastsocks_server: Callable[..., Any], tmp_path: Path, socks: Any, echo_target6: Any,
        users_file: Path, udp_echo: Any) -> None:
    log = tmp_path / "upstream-access.log"
    upstream = fastsocks_server("--listen", "[::1]:0", "--users", str(users_file),
                                "--access-log", str(log))
    path = config(tmp_path, upstream.address, CHAIN_ALL, ("alice", "s3cret"))
    server = fastsocks_server("--config", str(path))
    sock, (rep, _, _) = socks.connect(server.address, "::1", echo_target6.port)
    with sock:
        assert rep == 0
        echo_once(sock, socks)
    # UDP too: an IPv4 client, the upstream's association over IPv6, an IPv4 target.
    client = UdpClient(socks, server.address)
    try:
        back = client.round_trip("127.0.0.1", udp_echo.port, b"over ::1")
        assert back is not None and back.endswith(b"over ::1")
    finally:
        client.close()
    assert upstream.stop() == 0
    connect, udp = log.read_text().splitlines()
    fields = connect.split(" ")
    assert fields[2] == "alice" and fields[4] == f"[::1]:{echo_target6.port}", connect
    assert udp.split(" ")[2:4] == ["alice", "UDP_ASSOCIATE"] and "datagrams=1/1" in udp, udp


# -- UDP ASSOCIATE through an upstream ------------------------------------------------


def chain_port(port: int) -> str:
    """Rules: datagrams (and connections) to ``port`` through the upstream, the rest direct."""
    return f"""
[[rules]]
action = "allow"
ports = [{port}]
upstream = "next"

[[rules]]
action = "allow"
"""


class UdpClient:
    """A UDP association at ``proxy`` (raw SOCKS5), sending from 127.0.0.1."""

    def __init__(self, socks: Any, proxy: tuple[str, int]) -> None:
        self.socks = socks
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.settimeout(3)
        self.ctrl = socks.open(proxy)
        self.ctrl.sendall(b"\x05\x01\x00")
        assert socks.recv_exact(self.ctrl, 2) == b"\x05\x00"
        self.ctrl.sendall(socks.request(0x03, "0.0.0.0", self.udp.getsockname()[1]))
        rep, host, port = socks.read_reply(self.ctrl)
        assert rep == 0
        self.relay = (host, port)

    def round_trip(self, host: str, port: int, data: bytes) -> bytes | None:
        """Send ``data`` to (host, port); the reply's (header, data), or None."""
        self.udp.sendto(b"\x00\x00\x00" + self.socks.encode_address(host, port) + data,
                        self.relay)
        try:
            return self.udp.recv(65535)
        except TimeoutError:
            return None

    def close(self) -> None:
        self.ctrl.close()
        self.udp.close()


@pytest.mark.parametrize("auth", [False, True], ids=["noauth", "userpass"])
def test_udp_through_a_fastsocks_upstream(fastsocks_server: Callable[..., Any], tmp_path: Path,
                                          socks: Any, udp_echo: Any, users_file: Path,
                                          udp_path: str, auth: bool) -> None:
    log = tmp_path / "upstream-access.log"
    users = ["--users", str(users_file)] if auth else []
    upstream = fastsocks_server("--access-log", str(log), "--access-log-format", "json",
                                *users)
    direct = UdpEcho("127.0.0.1")
    rules = chain_port(udp_echo.port)
    path = config(tmp_path, upstream.address, rules, ("alice", "s3cret") if auth else None)
    server = fastsocks_server("--config", str(path), *UDP_PATH_ARGS[udp_path], "--log-level", "debug")
    client = UdpClient(socks, server.address)
    try:
        sizes = [1, 700, 1400, 8000]
        for n in sizes:
            data = bytes([n % 251]) * n
            back = client.round_trip("127.0.0.1", udp_echo.port, data)
            # The upstream wrote the header: the echo's address, as §7 says.
            assert back == b"\x00\x00\x00" + socks.encode_address("127.0.0.1", udp_echo.port) \
                + data
            # In the same association, a target no upstream rule names goes direct.
            back = client.round_trip("127.0.0.1", direct.port, data)
            assert back is not None and back.endswith(data)
        # A name goes to the upstream unresolved (the upstream resolves it).
        back = client.round_trip("localhost", udp_echo.port, b"by name")
        assert back is not None and back.endswith(b"by name")
    finally:
        client.close()
        direct.close()
    assert [len(d) for d in udp_echo.received] == [*sizes, 7]
    assert [len(d) for d in direct.received] == sizes
    assert upstream.stop() == 0
    (entry,) = access_entries(log, 1)
    assert entry["command"] == "UDP_ASSOCIATE" and entry["user"] == ("alice" if auth else None)
    assert (entry["datagrams_up"], entry["datagrams_down"]) == (5, 5), entry
    assert entry["bytes_up"] == entry["bytes_down"] == sum(sizes) + 7
    assert "upstream next" in server.log and "relays at 127.0.0.1" in server.log


def test_udp_through_an_upstream_without_udp(fastsocks_server: Callable[..., Any],
                                             microsocks: Any, tmp_path: Path, socks: Any,
                                             udp_echo: Any) -> None:
    # microsocks answers UDP ASSOCIATE with X'07': the chained datagrams are
    # dropped, said once in the log, and the association goes on.
    direct = UdpEcho("127.0.0.1")
    rules = chain_port(udp_echo.port)
    server = fastsocks_server("--config", str(config(tmp_path, microsocks(), rules)))
    client = UdpClient(socks, server.address)
    try:
        assert client.round_trip("127.0.0.1", udp_echo.port, b"chained") is None
        wait_log(server, "through upstream next")
        assert "replied 0x07" in server.log, server.log
        back = client.round_trip("127.0.0.1", direct.port, b"direct")
        assert back is not None and back.endswith(b"direct")
        assert client.round_trip("127.0.0.1", udp_echo.port, b"again") is None
    finally:
        client.close()
        direct.close()
    assert udp_echo.received == []
    assert server.log.count("through upstream next") == 1  # retried after 5 s, not per datagram


def test_udp_when_the_upstream_goes_away(fastsocks_server: Callable[..., Any], tmp_path: Path,
                                         socks: Any, udp_echo: Any) -> None:
    upstream = fastsocks_server()
    server = fastsocks_server("--config", str(config(tmp_path, upstream.address, CHAIN_ALL)))
    client = UdpClient(socks, server.address)
    try:
        assert client.round_trip("127.0.0.1", udp_echo.port, b"before") is not None
        assert upstream.stop() == 0  # ends its association: the control connection closes
        wait_log(server, "the upstream closed its UDP ASSOCIATE control connection")
        assert client.round_trip("127.0.0.1", udp_echo.port, b"after") is None
    finally:
        client.close()
    assert udp_echo.received == [b"before"]


def test_udp_association_ends_while_its_upstream_opens(fastsocks_server: Callable[..., Any],
                                                       tmp_path: Path, socks: Any,
                                                       blackhole: tuple[str, int],
                                                       udp_echo: Any) -> None:
    # The upstream never answers: the association ends (its TCP connection
    # closes) while the upstream's is still opening, and nothing is left over.
    server = fastsocks_server("--connect-timeout", "5", "--log-level", "debug",
                              "--config", str(config(tmp_path, blackhole, CHAIN_ALL)))
    client = UdpClient(socks, server.address)
    client.udp.settimeout(0.3)
    assert client.round_trip("127.0.0.1", udp_echo.port, b"waits") is None
    client.close()
    wait_log(server, "closed: client closed the UDP association's control connection")
    time.sleep(0.3)
    assert udp_echo.received == []
    assert "through upstream next" not in server.log  # cancelled, not failed


def test_chained_associations_leave_no_fds(fastsocks_server: Callable[..., Any],
                                           tmp_path: Path, socks: Any, udp_echo: Any,
                                           udp_path: str) -> None:
    # 400 associations, each with its own association at the upstream (a UDP
    # socket and a control connection on both servers): all of it is gone
    # once the clients close.
    import os

    def fds(server: Any) -> int:
        return len(os.listdir(f"/proc/{server.pid}/fd"))

    upstream = fastsocks_server()
    server = fastsocks_server(*UDP_PATH_ARGS[udp_path],
                              "--config", str(config(tmp_path, upstream.address, CHAIN_ALL)))
    baseline = fds(server), fds(upstream)
    for _ in range(4):
        batch = [UdpClient(socks, server.address) for _ in range(100)]
        for client in batch:
            back = client.round_trip("127.0.0.1", udp_echo.port, b"x")
            assert back is not None and back.endswith(b"x")
        for client in batch:
            client.close()
    deadline = time.monotonic() + 10
    while (fds(server) > baseline[0] or fds(upstream) > baseline[1]) \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    assert fds(server) <= baseline[0] and fds(upstream) <= baseline[1]
    assert len(udp_echo.received) == 400
