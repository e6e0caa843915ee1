"""The outbound address: the source of outgoing connections, globally, per user, per rule.

The echo target records each connection's peer, which is the address
fastsocks dialled from: 127.0.0.7 when ``--outbound-address 127.0.0.7``
says so, and so on.  IPv6 targets take the IPv6 source (``::1``), IPv4
targets the IPv4 one.  ``--outbound-interface lo`` binds to a device
(SO_BINDTODEVICE; CI runs as root).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any, Callable

import pytest


def wait_log(server: Any, text: str, timeout: float = 5.0) -> None:
    """The server's log gets ``text`` within ``timeout`` (it logs right after replying)."""
    import time

    deadline = time.monotonic() + timeout
    while text not in server.log:
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{server.log}"
        time.sleep(0.05)


def write_config(tmp_path: Path, text: str, name: str = "outbound.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def dial(server: Any, socks: Any, target: Any, auth: tuple[str, str] | None = None) -> int:
    sock, (rep, _, _) = socks.connect(server.address, target.host, target.port, auth=auth)
    with sock:
        if rep == 0:
            sock.sendall(b"x")
            assert socks.recv_exact(sock, 1) == b"x"
    return rep


def test_global_outbound_address(start_proxy: Callable[..., Any], socks: Any,
                                 echo_target: Any) -> None:
    server = start_proxy("--outbound-address", "127.0.0.7")
    assert dial(server, socks, echo_target) == 0
    assert dial(server, socks, echo_target) == 0
    assert [peer[0] for peer in echo_target.wait_accepted(2)] == ["127.0.0.7"] * 2


def test_one_address_per_family(fastsocks_server: Callable[..., Any], socks: Any,
                                echo_target: Any, echo_target6: Any) -> None:
    server = fastsocks_server("--outbound-address", "127.0.0.7", "--outbound-address", "::1")
    assert dial(server, socks, echo_target) == 0
    assert dial(server, socks, echo_target6) == 0  # not bound to the IPv4 address
    assert echo_target.wait_accepted(1)[0][0] == "127.0.0.7"
    assert echo_target6.wait_accepted(1)[0][0] == "::1"


def test_ipv6_egress_by_name(fastsocks_server: Callable[..., Any], socks: Any,
                             echo_target6: Any) -> None:
    server = fastsocks_server("--outbound-address", "::1")
    sock, (rep, _, _) = socks.connect(server.address, "::1", echo_target6.port)
    sock.close()
    assert rep == 0
    assert echo_target6.wait_accepted(1)[0][0] == "::1"


def test_per_rule_source(fastsocks_server: Callable[..., Any], tmp_path: Path, socks: Any,
                         tcp_target: Any) -> None:
    from conftest import echo_handler

    special, other = tcp_target(echo_handler), tcp_target(echo_handler)
    config = write_config(tmp_path, f"""
[outbound]
address = "127.0.0.7"

[[rules]]
action = "allow"
dst = ["127.0.0.1/32"]
ports = [{special.port}]
source = "127.0.0.9"
""")
    server = fastsocks_server("--config", str(config))
    assert dial(server, socks, special) == 0
    assert dial(server, socks, other) == 0
    assert special.wait_accepted(1)[0][0] == "127.0.0.9"  # the rule's
    assert other.wait_accepted(1)[0][0] == "127.0.0.7"  # the global one


def test_per_user_source(fastsocks_server: Callable[..., Any], tmp_path: Path, socks: Any,
                         echo_target: Any, users_file: Path, run_cli: Any) -> None:
    result = run_cli("users", "add", str(users_file), "bob", input=b"hunter2\n")
    assert result.returncode == 0, result.stderr
    config = write_config(tmp_path, f"""
users = "{users_file}"

[outbound]
address = ["127.0.0.7"]

[outbound.users]
alice = "127.0.0.8"
""")
    server = fastsocks_server("--config", str(config))
    assert dial(server, socks, echo_target, ("alice", "s3cret")) == 0
    assert dial(server, socks, echo_target, ("bob", "hunter2")) == 0
    assert [peer[0] for peer in echo_target.wait_accepted(2)] == ["127.0.0.8", "127.0.0.7"]


def test_address_not_on_this_host_is_general_failure(fastsocks_server: Callable[..., Any],
                                                     socks: Any, echo_target: Any) -> None:
    server = fastsocks_server("--outbound-address", "192.0.2.1",  # TEST-NET-1: not ours
                              "--log-level", "debug")
    assert dial(server, socks, echo_target) == 1
    wait_log(server, "binding the outbound address")
    assert echo_target.peers == []


@pytest.mark.skipif(os.geteuid() != 0 or not hasattr(socket, "SO_BINDTODEVICE"),
                    reason="SO_BINDTODEVICE needs root (CI runs as root) and Linux")
def test_outbound_interface(fastsocks_server: Callable[..., Any], socks: Any,
                            echo_target: Any) -> None:
    server = fastsocks_server("--outbound-interface", "lo", "--outbound-address", "127.0.0.7")
    assert dial(server, socks, echo_target) == 0
    assert echo_target.wait_accepted(1)[0][0] == "127.0.0.7"
    missing = fastsocks_server("--outbound-interface", "nosuchdev0", "--log-level", "debug")
    assert dial(missing, socks, echo_target) == 1  # ENODEV: the option is really applied
    wait_log(missing, "binding the outbound address")


@pytest.mark.parametrize("args, error", [
    (("--outbound-address", "127.0.0.7", "--outbound-address", "127.0.0.8"),
     "more than one IPv4 address"),
    (("--outbound-address", "example.org"), "'example.org' is not an IPv4 or IPv6 address"),
    (("--outbound-interface", "a-very-long-interface-name"), "at most 15 characters"),
])
def test_flag_errors(run_cli: Callable[..., Any], args: tuple[str, ...], error: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert error in result.stderr.decode(), result.stderr.decode()


@pytest.mark.parametrize("text, error", [
    ('[outbound]\naddress = ["::1", "::2"]\n', "outbound.address: more than one IPv6 address"),
    ('[outbound]\naddress = "nope"\n', "outbound.address: 'nope' is not an IPv4 or IPv6"),
    ('[outbound]\nadress = "127.0.0.7"\n', "outbound.adress: unknown key (did you mean"),
    ('[outbound.users]\nalice = 7\n', "outbound.users.alice: give an IP address"),
    ('[[rules]]\naction = "allow"\nsource = "x"\n', "rules[0].source: 'x' is not an IPv4"),
    ('[[rules]]\naction = "deny"\nsource = "127.0.0.7"\n', "rules[0].source: only an allow"),
])
def test_config_errors_name_the_key(run_cli: Callable[..., Any], tmp_path: Path, text: str,
                                    error: str) -> None:
    result = run_cli("check", str(write_config(tmp_path, text)))
    assert result.returncode == 2
    assert error in result.stderr.decode(), result.stderr.decode()


def test_check_round_trips_outbound(run_cli: Callable[..., Any], tmp_path: Path) -> None:
    config = write_config(tmp_path, """
[outbound]
address = ["192.0.2.10", "2001:db8::10"]
interface = "eth1"
[outbound.users]
alice = ["192.0.2.11"]
[[rules]]
action = "allow"
dst = ["198.51.100.0/24"]
source = "192.0.2.12"
""")
    first = run_cli("check", str(config))
    assert first.returncode == 0, first.stderr
    out = first.stdout.decode()
    assert 'address = ["192.0.2.10", "2001:db8::10"]' in out and 'interface = "eth1"' in out
    assert '"alice" = ["192.0.2.11"]' in out and 'source = ["192.0.2.12"]' in out
    again = write_config(tmp_path, out, "again.toml")
    second = run_cli("check", str(again))
    assert second.returncode == 0, second.stderr
    assert second.stdout.decode().splitlines()[1:] == out.splitlines()[1:]


@pytest.mark.parametrize("path", ["c", "py"])
def test_udp_associate_sends_from_the_outbound_address(
        path: str, fastsocks_server: Callable[..., Any], socks: Any) -> None:
    from builds import HAVE_DATAGRAM

    if path == "c" and not HAVE_DATAGRAM:
        pytest.fail("the C datagram path is not built (the extension did not compile?)")
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", 0))
    echo.settimeout(10)
    relay = ("--relay", "protocol") if path == "py" else ()
    server = fastsocks_server("--outbound-address", "127.0.0.7", *relay)
    control = socks.open(server.address)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(10)
    try:
        client.bind(("127.0.0.1", 0))
        control.sendall(b"\x05\x01\x00")
        assert socks.recv_exact(control, 2) == b"\x05\x00"
        control.sendall(socks.request(0x03, "0.0.0.0", client.getsockname()[1]))
        rep, host, port = socks.read_reply(control)
        assert rep == 0
        header = b"\x00\x00\x00" + socks.encode_address(*echo.getsockname())
        client.sendto(header + b"ping", (host, port))
        data, peer = echo.recvfrom(2048)
        assert data == b"ping" and peer[0] == "127.0.0.7"
        echo.sendto(b"pong", peer)
        reply, _ = client.recvfrom(2048)
        assert reply == header + b"pong"
    finally:
        client.close()
        control.close()
        echo.close()


# -- abandoned CONNECTs (issue 17): a client that leaves takes its outbound attempt along --


def _leave_during_connect(server: Any, socks: Any, host: str, port: int) -> None:
    """Greeting, CONNECT, then close before the reply (a FIN, nothing sent after the request)."""
    sock = socks.open(server.address)
    with sock:
        sock.sendall(b"\x05\x01\x00")
        assert socks.recv_exact(sock, 2) == b"\x05\x00"
        sock.sendall(socks.request(0x01, host, port))
        time.sleep(0.3)  # the server is resolving or connecting now


def test_client_leaving_during_resolve_makes_no_connection(
        fastsocks_server: Callable[..., Any], socks: Any, echo_target: Any) -> None:
    """The name's answer comes 1.5 s late; the client left at 0.3 s: the target never
    sees a connection, and the lookup's answer is only cached."""
    from dnsserver import DnsServer

    dns = DnsServer({"slow.test": [("A", "127.0.0.1", 60)]},
                    delay={("slow.test", "A"): 1.5, ("slow.test", "AAAA"): 1.5})
    try:
        server = fastsocks_server("--dns-server", dns.address, "--log-level", "debug")
        baseline = server.fds()["socket"]
        _leave_during_connect(server, socks, "slow.test", echo_target.port)
        server.wait_log("client closed during handshake")
        time.sleep(2.0)  # the answer came meanwhile
        assert dns.count("slow.test", "A") == 1
        assert echo_target.peers == []
        assert server.wait_sockets(baseline)["socket"] <= baseline
    finally:
        dns.close()


def test_client_leaving_during_connect_closes_the_attempt(
        fastsocks_server: Callable[..., Any], socks: Any, blackhole: Any) -> None:
    """A black-holed target (SYNs dropped): the client leaves, the server's half-open
    socket goes at once, not after the 10 s connect timeout."""
    server = fastsocks_server("--connect-timeout", "10", "--log-level", "debug")
    baseline = server.fds()["socket"]
    _leave_during_connect(server, socks, *blackhole)
    server.wait_log("client closed during handshake")
    started = time.monotonic()
    assert server.wait_sockets(baseline, timeout=3.0)["socket"] <= baseline
    assert time.monotonic() - started < 3.0


# -- names dialled like literals: one address cached, nothing to race -----------------------


def test_a_name_with_one_cached_address_is_judged_and_refused_as_ever(
        fastsocks_server: Callable[..., Any], socks: Any, echo_target: Any,
        closed_port: int, tmp_path: Path) -> None:
    """A name whose A record is all there is (no AAAA) is dialled from the cache like an
    IP literal, by the engine: the second CONNECT of each name below.  Pass 2 of the
    rules still judges its address, and a refused connect still gets X'05'."""
    from dnsserver import DnsServer, wait_until

    records = {"one.test": [("A", "127.0.0.1", 300)], "denied.test": [("A", "127.0.0.9", 300)]}
    dns_server = DnsServer(records)
    config = write_config(tmp_path, """
[[rules]]
action = "deny"
dst = ["127.0.0.9/32"]

[[rules]]
action = "allow"
""")
    try:
        server = fastsocks_server("--dns-resolver", "c-ares", "--dns-server", dns_server.address,
                                  "--config", str(config), "--log-level", "debug")
        for _ in range(2):  # a lookup, then the cache
            sock, (rep, _, _) = socks.connect(server.address, "one.test", echo_target.port)
            with sock:
                assert rep == 0
                sock.sendall(b"by name")
                assert socks.recv_exact(sock, 7) == b"by name"
            sock, (rep, _, _) = socks.connect(server.address, "denied.test", echo_target.port)
            sock.close()
            assert rep == 0x02
            sock, (rep, _, _) = socks.connect(server.address, "one.test", closed_port)
            with sock:
                assert rep == 0x05
                assert socks.read_until_closed(sock) == b""
        # One query per name and family: the second round came from the cache.
        assert dns_server.queries[("one.test", "A")] == 1
        assert dns_server.queries[("denied.test", "A")] == 1
        # Both rounds logged alike: the denial (INFO and the close at DEBUG) and the refusal.
        # The close's line may follow the close the client saw: wait for the last one.
        denied = f"CONNECT denied.test port {echo_target.port} (127.0.0.9): denied by rules[0]"
        refused = (f"CONNECT one.test port {closed_port}: 127.0.0.1 port {closed_port}: "
                   "Connection refused")
        wait_until(lambda: server.log.count(refused) >= 2)
        assert server.log.count(denied) == 4, server.log
        assert server.log.count(refused) == 2, server.log
    finally:
        dns_server.close()
