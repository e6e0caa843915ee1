"""Names the engine dials itself (``Engine.remember``), through a whole server.

Where nothing about a request needs the control plane, a name the DNS cache
knows with one address (the other family known to have none) is given to
the engine, which dials later CONNECTs by that name without the loop, as it
dials IP literals, until the cached answers expire.  Checked here in an
embedded server on uvloop (the engine's counter is read directly) against a
DNS server of the test's own: what the client and the access log see, that
an expired answer is looked up again and its new address dialled, and that
rules, two addresses, a reload or a miss keep names on the loop's path.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

import pytest

if not sys.platform.startswith("linux") or os.environ.get("FASTSOCKS_NO_EXTENSIONS"):
    pytest.skip("the splice engine: Linux, compiled build", allow_module_level=True)

import uvloop  # noqa: E402
from dnsserver import DnsServer  # noqa: E402

import fastsocks  # noqa: E402
from fastsocks.control.rules import compile_rule  # noqa: E402


class Rig:
    """An embedded server using ``dns`` (c-ares), its access log, and echo targets."""

    def __init__(self, dns: DnsServer, log: Path, **extra: Any) -> None:
        self.dns, self.log = dns, log
        self.settings = dict(listen=[("127.0.0.1", 0)], dns_resolver="c-ares",
                             dns_servers=[dns.address], access_log=str(log), **extra)
        self.server: Any = None
        self.port = 0
        self.targets: dict[str, asyncio.AbstractServer] = {}
        self.accepted: list[str] = []

    async def __aenter__(self) -> Rig:
        self.server = fastsocks.Server(fastsocks.Settings(**self.settings))
        await self.server.start()
        self.port = int(self.server.addresses[0].rsplit(":", 1)[1])
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.server.stop()
        await self.server.wait_stopped()
        for target in self.targets.values():
            target.close()

    async def target(self, host: str, port: int = 0) -> int:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.accepted.append(host)
            writer.write(await reader.read(100))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, host, port)
        self.targets[host] = server
        return int(server.sockets[0].getsockname()[1])

    @property
    def name_dials(self) -> int:
        return int(self.server.engine.name_dials)

    async def connect(self, name: str, port: int, early: bytes = b"hello") -> bytes:
        """CONNECT by name with early bytes: the reply code, then what the echo sent back."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        raw = name.encode()
        writer.write(b"\x05\x01\x00" + b"\x05\x01\x00\x03" + bytes([len(raw)]) + raw
                     + struct.pack(">H", port) + early)
        assert await reader.readexactly(2) == b"\x05\x00"
        head = await reader.readexactly(4)
        await reader.readexactly({1: 4, 4: 16}[head[3]] + 2)
        echoed = await reader.read() if head[1] == 0 else b""
        writer.close()
        return bytes([head[1]]) + echoed

    async def log_lines(self, count: int) -> list[str]:
        deadline = time.monotonic() + 5
        while True:
            lines = self.log.read_text().splitlines() if self.log.exists() else []
            if len(lines) >= count or time.monotonic() > deadline:
                return lines
            await asyncio.sleep(0.02)


@pytest.fixture
def dns() -> Any:
    server = DnsServer({"one.test": [("A", "127.0.0.1", 300)],
                        "two.test": [("A", "127.0.0.1", 300), ("A", "127.0.0.2", 300)],
                        "brief.test": [("A", "127.0.0.1", 1)]})
    yield server
    server.close()


def test_a_name_with_one_cached_address_is_dialled_by_the_engine(dns: DnsServer,
                                                                   tmp_path: Path) -> None:
    async def main() -> None:
        async with Rig(dns, tmp_path / "access.log") as rig:
            port = await rig.target("127.0.0.1")
            # A lookup (the Connector), the cache (the loop dials and tells the
            # engine), then the engine, three times.
            for _ in range(5):
                assert await rig.connect("one.test", port) == b"\x00hello"
            assert rig.name_dials == 3
            assert dns.count("one.test") == 2  # A and AAAA, once
            lines = await rig.log_lines(5)
            assert len(lines) == 5
            assert all(f" CONNECT one.test:{port} 127.0.0.1:{port} 0 5 5 " in line
                       for line in lines), lines
            # Spelled otherwise (DNS names know no case, the engine's table
            # matches bytes): the loop's path, which answers alike.
            assert await rig.connect("ONE.test", port) == b"\x00hello"
            assert rig.name_dials == 3

    uvloop.run(main())


def test_an_expired_answer_is_looked_up_again_and_its_new_address_dialled(
        dns: DnsServer, tmp_path: Path) -> None:
    async def main() -> None:
        async with Rig(dns, tmp_path / "access.log") as rig:
            port = await rig.target("127.0.0.1")
            await rig.target("127.0.0.3", port)
            for _ in range(3):
                assert await rig.connect("brief.test", port) == b"\x00hello"
            assert rig.name_dials == 1
            dns.records["brief.test"] = [("A", "127.0.0.3", 1)]
            await asyncio.sleep(1.3)  # the 1 s TTL (dns_min_ttl's floor) is over
            for _ in range(3):
                assert await rig.connect("brief.test", port) == b"\x00hello"
            assert rig.accepted == ["127.0.0.1"] * 3 + ["127.0.0.3"] * 3
            assert dns.count("brief.test", "A") == 2
            assert rig.name_dials == 2
            lines = await rig.log_lines(6)
            assert [line.split()[5] for line in lines] == (
                [f"127.0.0.1:{port}"] * 3 + [f"127.0.0.3:{port}"] * 3)

    uvloop.run(main())


def test_rules_two_addresses_or_a_reload_keep_names_on_the_loop(dns: DnsServer,
                                                                tmp_path: Path) -> None:
    async def main() -> None:
        async with Rig(dns, tmp_path / "access.log") as rig:
            port = await rig.target("127.0.0.1")
            await rig.target("127.0.0.2", port)
            for _ in range(3):  # two addresses: raced by the Connector every time
                assert await rig.connect("two.test", port) == b"\x00hello"
            assert rig.name_dials == 0
            for _ in range(3):
                assert await rig.connect("one.test", port) == b"\x00hello"
            assert rig.name_dials == 1
            reloaded = asyncio.get_running_loop().create_future()
            rig.server.reload(lambda: reloaded.set_result(None))
            await asyncio.wait_for(reloaded, 5)
            # Forgotten: the loop dials (from its cache) and tells the engine again.
            assert await rig.connect("one.test", port) == b"\x00hello"
            assert rig.name_dials == 1
            assert await rig.connect("one.test", port) == b"\x00hello"
            assert rig.name_dials == 2
        rules = [compile_rule(0, {"action": "allow", "dst": ["127.0.0.0/8"]}, {}, [])]
        async with Rig(dns, tmp_path / "rules.log", rules=rules) as rig:
            port = await rig.target("127.0.0.1")
            for _ in range(3):  # the rules judge every address: the loop's
                assert await rig.connect("one.test", port) == b"\x00hello"
            assert rig.name_dials == 0

    uvloop.run(main())


def test_a_refused_connect_to_a_remembered_name_is_answered_x05(dns: DnsServer,
                                                               tmp_path: Path) -> None:
    async def main() -> None:
        async with Rig(dns, tmp_path / "access.log") as rig:
            with socket.socket() as spare:  # a port nothing listens on
                spare.bind(("127.0.0.1", 0))
                closed = spare.getsockname()[1]
            for _ in range(4):
                assert await rig.connect("one.test", closed) == b"\x05"
            lines = await rig.log_lines(4)
            assert [line.split()[3:7] + line.split()[-1:] for line in lines] == [
                ["CONNECT", f"one.test:{closed}", "-", "5", "refused"]] * 4, lines

    uvloop.run(main())
