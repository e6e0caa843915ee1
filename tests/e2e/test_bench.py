"""``fastsocks.bench``, the load generator, against a real fastsocks process.

Each mode runs for a fraction of a second: these tests check that the tool
works and its results are sane (bytes moved, handshakes counted, connections
held, server figures read from /proc), not how fast anything is; speed is
measured by benchmarks/run.py.  Loopback only, port 0 everywhere.
"""

from __future__ import annotations

import json
import re
import socket
import threading

import pytest

from fastsocks import bench
from fastsocks.net.client import Negotiation
from procs import access_entries


def _addr(server) -> str:
    return f"{server.host}:{server.port}"


def test_throughput_cli_through_fastsocks(fastsocks_server, capsys):
    """The command line, a local sink in a child process, two streams, JSON out."""
    server = fastsocks_server()
    status = bench.main(["--proxy", _addr(server), "--mode", "throughput", "--streams", "2",
                         "--duration", "0.3", "--server-pid", str(server.pid),
                         "--local-target", "process", "--json"])
    out = capsys.readouterr().out
    assert status == 0, out
    result = json.loads(out)
    assert result["mode"] == "throughput" and result["streams"] == 2
    assert result["proxy"] == _addr(server)
    assert result["local_target"] == "process"
    assert result["bytes"] >= 2 * bench.BUFFER_SIZE
    assert result["gbit_per_s"] > 0
    assert all(x > 0 for x in result["per_stream_gbit_per_s"])
    assert result["errors"] == []
    assert result["server_cpu_s"] >= 0 and result["server_cpu_s_per_gib"] is not None


def test_throughput_direct_table(capsys):
    """Without --proxy: the direct reference, printed as a table on stdout."""
    assert bench.main(["--duration", "0.2", "--local-target", "thread"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\| proxy +\| none \(direct\) \|$", out, re.MULTILINE), out
    assert "Gbit/s" in out


@pytest.mark.parametrize("engine", ["epoll", "uvloop", "threads"])
def test_handshakes_counted(fastsocks_server, engine):
    server = fastsocks_server()
    result = bench.run(bench.Config(mode="handshake", proxy=server.address, concurrency=4,
                                    duration=0.3, engine=engine, local_target="thread",
                                    server_pid=server.pid))
    assert result["engine"] == engine
    assert result["handshakes"] > 4, result
    assert result["errors"] == {}, result["first_error"]
    assert result["per_s"] > 0
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
    assert result["server_cpu_us_per_handshake"] is not None


@pytest.mark.parametrize(("protocol", "engine"),
                         [("socks5", "epoll"), ("socks4", "uvloop"), ("http", "threads")])
def test_handshakes_ask_for_a_name(fastsocks_server, tmp_path, protocol, engine):
    """--target-name: every CONNECT names the target (ATYP X'03', SOCKS4a, HTTP host:port),
    the server resolves it (its DNS cache) and reaches the echo; the result says so."""
    log = tmp_path / "access.log"
    server = fastsocks_server("--access-log", str(log), "--access-log-format", "json")
    result = bench.run(bench.Config(mode="handshake", proxy=server.address, protocol=protocol,
                                    target_name="localhost", concurrency=2, duration=0.3,
                                    engine=engine, local_target="thread",
                                    server_pid=server.pid))
    assert result["errors"] == {}, result["first_error"]
    assert result["handshakes"] > 2 and result["target_name"] == "localhost"
    port = int(result["target"].rpartition(":")[2])
    # 127.0.0.1, and ::1 where this host has it: wherever the name leads, the echo answers.
    assert result["target_listens"][0] == f"127.0.0.1:{port}"
    assert set(result["target_listens"]) <= {f"127.0.0.1:{port}", f"[::1]:{port}"}
    # The server was asked for the name (the probe's connection too), and dialled loopback.
    records = access_entries(log, result["handshakes"] + 1)
    assert len(records) >= result["handshakes"] + 1
    assert {r["target"] for r in records} == {f"localhost:{port}"}, records[:3]
    assert {r["dialled"] for r in records} <= set(result["target_listens"])
    assert {r["protocol"] for r in records} == {protocol}
    assert result["server_cpu_us_per_handshake"] is not None


def test_target_name_cli_and_its_limits(fastsocks_server, capsys):
    """The command line names the name in JSON and in the table, and refuses it where it has
    no meaning: UDP modes, no proxy, an address."""
    server = fastsocks_server()
    status = bench.main(["--proxy", _addr(server), "--mode", "idle", "--connections", "4",
                         "--duration", "0.1", "--target-name", "localhost", "--json"])
    out = capsys.readouterr().out
    assert status == 0, out
    result = json.loads(out)
    assert result["target_name"] == "localhost" and result["opened"] == 4, result
    assert bench.main(["--proxy", _addr(server), "--mode", "throughput", "--duration", "0.1",
                       "--target-name", "localhost", "--protocol", "socks4"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\| asked for +\| localhost:\d+ \(a name: SOCKS4a\) \|$", out,
                     re.MULTILINE), out
    for args, message in [
        (["--mode", "udp-rtt", "--proxy", _addr(server)], "--target-name is for the TCP modes"),
        (["--mode", "handshake"], "it needs --proxy"),
    ]:
        assert bench.main([*args, "--target-name", "localhost"]) == 2
        assert message in capsys.readouterr().err
    for name, message in [("127.0.0.1", "an address goes in --target"),
                          ("::1", "an address goes in --target"),
                          ("a b", "not a host name"), ("x" * 256, "not a host name")]:
        with pytest.raises(ValueError, match=message):
            bench.Config(mode="handshake", proxy=server.address, target_name=name).validate()



def test_name_hosts(monkeypatch):
    """Where the local target listens for a name: 127.0.0.1 first, then the name's loopback
    addresses here, then ::1; a name that leads elsewhere or nowhere is a clear error."""
    hosts = bench.name_hosts("localhost")
    assert hosts[0] == "127.0.0.1" and set(hosts) <= {"127.0.0.1", "::1"}
    answers = {"two.test": ["127.0.0.2", "::1"], "far.test": ["127.0.0.1", "192.0.2.1"]}

    def getaddrinfo(host, *args, **kw):
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, 0)) for a in answers[host]]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    assert bench.name_hosts("two.test")[:3] == ("127.0.0.1", "127.0.0.2", "::1")
    with pytest.raises(ValueError, match="is 192.0.2.1 here, not loopback"):
        bench.name_hosts("far.test")
    with pytest.raises(ValueError, match="does not resolve here"):
        bench.name_hosts("none.test")


def test_idle_connections_held(fastsocks_server):
    server = fastsocks_server()
    seen = {}

    def on_hold(partial):
        seen["fds"] = server.fd_count()
        seen.update(partial)

    result = bench.run(bench.Config(mode="idle", proxy=server.address, connections=40,
                                    concurrency=8, duration=0.2, local_target="thread",
                                    server_pid=server.pid), on_hold=on_hold)
    assert result["opened"] == 40 and result["failed"] == 0, result
    # While held, the server has both sides of every relayed connection open.
    assert seen["fds"] >= 2 * 40
    assert result["sampled"] > 0 and result["sampled_alive_after_hold"] == result["sampled"]
    assert result["server_rss_kib_held"] > 0
    assert result["server_kib_per_connection"] is not None
    server.wait_for_fds(seen["fds"] - 2 * 40)


def test_refused_target_is_a_clear_error(fastsocks_server, closed_port, capsys):
    server = fastsocks_server()
    with pytest.raises(bench.SocksError) as info:
        bench.open_connection(server.address, ("127.0.0.1", closed_port))
    assert info.value.reply == 5
    assert "X'05'" in str(info.value) and "connection refused" in str(info.value)
    # The command line says the same and exits non-zero, no traceback.
    status = bench.main(["--proxy", _addr(server), "--target", f"127.0.0.1:{closed_port}",
                         "--mode", "handshake", "--duration", "0.2"])
    err = capsys.readouterr().err
    assert status == 1
    assert "X'05' (connection refused)" in err and "Traceback" not in err


def test_username_password(fastsocks_server, run_cli, tmp_path):
    users = tmp_path / "users"
    made = run_cli("users", "add", str(users), "name", input=b"pw\n")
    assert made.returncode == 0, made.stderr
    server = fastsocks_server("--users", str(users))
    result = bench.run(bench.Config(mode="handshake", proxy=server.address, auth=("name", "pw"),
                                    concurrency=2, duration=0.3, local_target="thread"))
    assert result["handshakes"] > 0 and result["errors"] == {}, result
    assert result["auth"] is True
    # A wrong password and missing credentials are both named clearly.
    with pytest.raises(bench.SocksError, match=r"auth: the server rejected user 'name'"):
        bench.open_connection(server.address, ("127.0.0.1", 9), auth=("name", "wrong"))
    with pytest.raises(bench.SocksError, match=r"no acceptable authentication method"):
        bench.open_connection(server.address, ("127.0.0.1", 9))


def _one_shot_server(answer: bytes):
    """A fake SOCKS server that reads the greeting and request, then sends ``answer``."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(5)
            try:
                conn.recv(3)
                conn.sendall(b"\x05\x00")
                conn.recv(64)
                conn.sendall(answer)
                conn.shutdown(socket.SHUT_WR)
                conn.recv(1)  # until the client gives up (EOF, or a reset)
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


@pytest.mark.parametrize(("answer", "message"), [
    (b"\x04\x00\x00\x01" + bytes(6), r"bad version in reply"),
    (b"\x05\x00\x01\x01" + bytes(6), r"reserved byte"),
    (b"\x05\x00\x00\x09" + bytes(6), r"unknown address type"),
    (b"\x05\x00\x00\x01\x7f", r"server closed the connection"),
    (b"\x05\x02\x00\x01" + bytes(6), r"X'02' \(connection not allowed by ruleset\)"),
])
def test_client_is_strict(answer, message):
    listener, thread = _one_shot_server(answer)
    try:
        with pytest.raises(bench.SocksError, match=message):
            bench.open_connection(listener.getsockname(), ("example.org", 80), timeout=5)
    finally:
        thread.join(5)
        listener.close()


def test_client_role_step_by_step():
    """The client role bench speaks through: what it sends, and reads that stop at each message."""
    n = Negotiation("example.org", 443, auth=("u", "p"))
    assert n.start() == b"\x05\x02\x00\x02" and n.step == "greeting" and n.want == 2
    assert n.receive(b"\x05") == b"" and n.want == 1
    assert n.receive(b"\x02") == b"\x01\x01u\x01p" and n.step == "auth"
    assert n.receive(b"\x01\x00") == b"\x05\x01\x00\x03\x0bexample.org\x01\xbb"
    assert n.step == "reply" and n.want == 8  # the shortest reply there is
    assert n.receive(b"\x05\x00\x00\x04") == b"" and n.want == 18  # IPv6: 22 in all
    assert n.receive(bytes(15) + b"\x01\x04\x38") == b"" and n.done
    assert n.bound == ("::1", 1080) and n.want == 0
    # Without credentials only "no authentication" is offered; a fresh() copy starts over.
    plain = Negotiation("127.0.0.1", 80)
    assert plain.start() == b"\x05\x01\x00"
    assert plain.receive(b"\x05\x00") == b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50"
    again = plain.fresh()
    assert again.step == "greeting" and again.receive(b"\x05\x00") == (
        b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50")
    with pytest.raises(bench.SocksError, match=r"greeting: server chose method X'02', which "
                                               r"was not offered"):
        Negotiation("::1", 1).receive(b"\x05\x02")
    with pytest.raises(ValueError):
        Negotiation("a" * 256, 80)


# -- UDP ASSOCIATE modes ------------------------------------------------------------


def test_udp_rtt_through_fastsocks(fastsocks_server):
    """Four associations, each with a datagram in flight, echoed through the proxy."""
    server = fastsocks_server()
    fds = server.fd_count()
    result = bench.run(bench.Config(mode="udp-rtt", proxy=server.address, concurrency=4,
                                    duration=0.3, local_target="thread",
                                    server_pid=server.pid))
    assert result["mode"] == "udp-rtt" and result["concurrency"] == 4
    assert result["size"] == bench.UDP_RTT_SIZE
    assert result["round_trips"] > 4, result
    assert result["errors"] == {}, result["first_error"]
    assert result["relay"] and result["relay"].startswith("127.0.0.1:")
    assert 0 < result["p50_us"] <= result["p99_us"] <= result["max_us"]
    assert result["server_cpu_us_per_round_trip"] is not None
    # Every association was torn down with its TCP connection (no fds left behind).
    assert server.wait_for_fds(fds) <= fds


def test_udp_rtt_direct_cli_with_a_target_process(capsys):
    """Without --proxy: the reference; a UDP mode starts its echo in a child process."""
    assert bench.main(["--mode", "udp-rtt", "--concurrency", "2", "--duration", "0.2",
                       "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["proxy"] is None and result["local_target"] == "process"
    assert result["round_trips"] > 2 and result["errors"] == {}
    assert result["relay"] is None


def test_udp_oneway_paced_counts_every_datagram(fastsocks_server):
    """At 2,000 datagrams/s nothing is lost: the sink counts what was sent."""
    server = fastsocks_server()
    result = bench.run(bench.Config(mode="udp-oneway", proxy=server.address, rate=2000,
                                    duration=0.3, local_target="thread",
                                    server_pid=server.pid))
    assert result["size"] == bench.UDP_ONEWAY_SIZE and result["rate"] == 2000
    assert 300 <= result["sent"] <= 700, result
    assert result["send_errors"] == 0
    assert result["received"] == result["sent"] and result["loss_pct"] == 0.0, result
    assert result["dropped_at_relay"] == 0 and result["dropped_at_sink"] == 0
    assert result["server_cpu_us_per_datagram"] is not None


def test_udp_oneway_unpaced_table(fastsocks_server, capsys):
    server = fastsocks_server()
    status = bench.main(["--proxy", _addr(server), "--mode", "udp-oneway", "--duration", "0.2",
                         "--size", "100", "--local-target", "thread",
                         "--server-pid", str(server.pid)])
    out = capsys.readouterr().out
    assert status == 0, out
    assert re.search(r"^\| datagrams +\| 100 bytes, unpaced; relay 127\.0\.0\.1:\d+ \|$", out,
                     re.MULTILINE), out
    assert re.search(r"^\| received by sink +\| [1-9]\d* = \d+/s \|$", out, re.MULTILINE), out
    assert "CPU-µs/datagram received" in out


def test_udp_sink_reports_counts_and_drops_are_read():
    with bench.LocalTarget("udp-sink", "thread") as sink:
        assert bench.udp_sink_stats(sink.address) == (0, 0)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for size in (10, 20, 30):
                s.sendto(bytes(size), sink.address)
        stats = None
        for _ in range(50):  # bounded: until the sink has seen all three
            stats = bench.udp_sink_stats(sink.address)
            if stats == (3, 60):
                break
        assert stats == (3, 60)
        assert bench.udp_socket_drops([sink.address]) == {sink.address: 0}
        assert bench.udp_socket_drops([("127.0.0.2", sink.address[1])]) == {}


def test_udp_associate_refused_is_a_clear_error(capsys):
    answer = b"\x05\x07\x00\x01" + bytes(6)
    listener, thread = _one_shot_server(answer)
    try:
        with pytest.raises(bench.SocksError, match=r"UDP ASSOCIATE failed with reply X'07' "
                           r"\(command not supported\)") as info:
            bench.UdpPath(listener.getsockname(), ("127.0.0.1", 9), timeout=5)
        assert info.value.reply == 7
    finally:
        thread.join(5)
        listener.close()


def test_udp_options_are_checked(capsys):
    assert bench.main(["--mode", "udp-rtt", "--rate", "100"]) == 2
    assert "--rate is for udp-oneway only" in capsys.readouterr().err
    assert bench.main(["--mode", "handshake", "--size", "100"]) == 2
    assert "--size is for the UDP modes only" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--concurrency"):
        bench.Config(mode="udp-rtt", concurrency=bench.UDP_MAX_ASSOCIATIONS + 1).validate()


def test_udp_reply_parsing():
    assert bench.udp_header("127.0.0.1", 9000) == b"\x00\x00\x00\x01\x7f\x00\x00\x01\x23\x28"
    assert bench.parse_udp_reply(bench.udp_header("::1", 53) + b"x") == ("::1", 53, b"x")
    assert bench.parse_udp_reply(bench.udp_header("localhost", 7) + b"") == ("localhost", 7, b"")
    for bad in (b"\x00\x00", b"\x01\x00\x00\x01" + bytes(6), b"\x00\x00\x01\x01" + bytes(6),
                b"\x00\x00\x00\x09" + bytes(6), b"\x00\x00\x00\x01\x7f\x00"):
        with pytest.raises(bench.SocksError):
            bench.parse_udp_reply(bad)
