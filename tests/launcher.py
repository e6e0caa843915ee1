"""The one way the tests start a real ``fastsocks`` process.

``ServerLauncher.start(*args)`` runs ``python -m fastsocks`` with its log in a
file, returns once the server logged its "listening on" line (with the real
ports parsed from it), and ``stop_all()`` at teardown checks that each server
still running exits 0 on SIGTERM with a clean log.  conftest.py hands it out as
the ``fastsocks_server`` fixture (and builds ``start_proxy``, ``proxy`` and
``hostile_server`` on it); a module that needs a server for longer than one
test makes its own launcher under ``tmp_path_factory``.

Not a test module, and not a conftest: test modules may import it for types.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

START_TIMEOUT = 10.0  # seconds to wait for the "listening on" line
STOP_TIMEOUT = 5.0  # seconds a SIGTERM'd server gets to exit

# "fastsocks 0.1.0 listening on 127.0.0.1:41234, [::1]:40000 (auth: none; accelerated (...), uvloop)"
_LISTENING_RE = re.compile(
    r"fastsocks (?P<version>\S+) listening on (?P<addresses>.+?) \(auth: (?P<auth>[^;]*); "
    r"(?P<impl>.+), (?P<loop>uvloop|asyncio)\)\s*$",
    re.MULTILINE,
)
_ADDRESS_RE = re.compile(r"\[(?P<v6>[^\]]+)\]:(?P<p6>\d+)|(?P<v4>[^,\s]+):(?P<p4>\d+)")

# Environment variables that would make a client go through some other proxy.
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy")


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test process's environment without proxy settings or implementation switches."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARS}
    env.pop("FASTSOCKS_NO_EXTENSIONS", None)
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


def fastsocks_command() -> list[str]:
    """How to run the server: this interpreter, so it is the installed package."""
    return [sys.executable, "-m", "fastsocks"]


@dataclass
class FastsocksProcess:
    """A running ``fastsocks`` subprocess and what it logged.

    Modules may subclass it to add their own client helpers and pass the
    subclass as ``process_class`` to ``ServerLauncher.start``.
    """

    proc: subprocess.Popen[bytes]
    log_path: Path
    addresses: list[tuple[str, int]] = field(default_factory=list)
    auth: str = ""
    impl: str = ""
    loop: str = ""
    check_log: bool = True
    #: Fail at teardown if the process exited without the test stopping it.
    must_survive: bool = False
    stop_timeout: float = STOP_TIMEOUT
    #: The test stopped it (``stop``/``wait``): teardown leaves its exit to the test.
    stopped_by_test: bool = False

    @property
    def host(self) -> str:
        return self.addresses[0][0]

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    @property
    def ports(self) -> list[int]:
        """The listening ports in the order of the "listening on" line."""
        return [port for _, port in self.addresses]

    @property
    def address(self) -> tuple[str, int]:
        return self.addresses[0]

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"socks5://{self.host}:{self.port}"

    def address_for(self, family: int) -> tuple[str, int]:
        for host, port in self.addresses:
            if (":" in host) == (family == socket.AF_INET6):
                return host, port
        raise AssertionError(f"the server does not listen on a {family!r} address: {self.addresses}")

    @property
    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    @property
    def lines(self) -> list[str]:
        """The log so far, one entry per line (with its newline)."""
        return self.log.splitlines(keepends=True)

    def wait_log(self, text: str, timeout: float = 5.0) -> None:
        """Poll until ``text`` is in the log; fail with the log otherwise."""
        deadline = time.monotonic() + timeout
        while text not in self.log:
            assert time.monotonic() < deadline, f"{text!r} never logged:\n{self.log}"
            time.sleep(0.02)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        assert match, status
        return int(match.group(1))

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def fds(self) -> collections.Counter[str]:
        """Open descriptors by kind: socket, pipe, anon_inode, file."""
        kinds: collections.Counter[str] = collections.Counter()
        base = f"/proc/{self.pid}/fd"
        for name in os.listdir(base):
            try:
                link = os.readlink(f"{base}/{name}")
            except FileNotFoundError:  # closed while we looked
                continue
            kinds[link.split(":", 1)[0] if ":" in link else "file"] += 1
        return kinds

    def wait_for_fds(self, at_most: int, timeout: float = 5.0) -> int:
        """Poll until the server holds at most ``at_most`` fds; the last count."""
        deadline = time.monotonic() + timeout
        count = self.fd_count()
        while count > at_most and time.monotonic() < deadline:
            time.sleep(0.05)
            count = self.fd_count()
        return count

    def wait_sockets(self, at_most: int, timeout: float = 10.0) -> collections.Counter[str]:
        """Poll until the server holds at most ``at_most`` sockets; the last count by kind."""
        deadline = time.monotonic() + timeout
        fds = self.fds()
        while fds["socket"] > at_most and time.monotonic() < deadline:
            time.sleep(0.05)
            fds = self.fds()
        return fds

    def wait(self, timeout: float) -> int:
        """The exit status of a process the test signalled itself (TimeoutExpired on a hang)."""
        self.stopped_by_test = True
        return self.proc.wait(timeout)

    def stop(self, signum: int = signal.SIGTERM, timeout: float | None = None) -> int:
        """Send ``signum`` and wait for the exit status (kill and fail on a hang)."""
        timeout = self.stop_timeout if timeout is None else timeout
        self.stopped_by_test = True
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                pytest.fail(
                    f"fastsocks did not exit within {timeout} s of signal {signum}; log:\n{self.log}"
                )
        return self.proc.returncode


def parse_addresses(text: str) -> list[tuple[str, int]]:
    out = []
    for m in _ADDRESS_RE.finditer(text):
        if m.group("v6"):
            out.append((m.group("v6"), int(m.group("p6"))))
        else:
            out.append((m.group("v4"), int(m.group("p4"))))
    return out


def log_errors(log: str) -> list[str]:
    """The lines of ``log`` that show an error or a traceback."""
    return [line for line in log.splitlines()
            if "Traceback" in line or " ERROR " in line or " CRITICAL " in line]


class ServerLauncher:
    """Starts ``fastsocks`` processes with logs under ``directory``; stops them all."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[FastsocksProcess] = []

    def start(self, *args: str, env: dict[str, str] | None = None, check_log: bool = True,
              default_listen: bool = False, default_workers: bool = False,
              nofile: int | None = None, must_survive: bool = False,
              start_timeout: float = START_TIMEOUT, stop_timeout: float = STOP_TIMEOUT,
              process_class: type[FastsocksProcess] = FastsocksProcess) -> FastsocksProcess:
        """Start one server; see the ``fastsocks_server`` fixture for the defaults.

        ``nofile`` runs it under ``prlimit`` with that RLIMIT_NOFILE (in force
        from exec on); ``must_survive`` fails the test at teardown if the server
        exited on its own; ``process_class`` is the ``FastsocksProcess``
        subclass to return (a module's own client helpers on it).
        """
        argv = list(args)
        if "--listen" not in argv and not default_listen:
            argv = ["--listen", "127.0.0.1:0", *argv]
        if "--workers" not in argv and not default_workers:
            # One process unless a test asks: its fds, memory and log are the server's.
            argv = ["--workers", "1", *argv]
        command = [*fastsocks_command(), *argv]
        if nofile is not None:
            command = ["prlimit", f"--nofile={nofile}:{nofile}", "--", *command]
        log_path = self.directory / f"fastsocks-{len(self.started)}.log"
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=clean_env(env),
            )
        server = process_class(proc, log_path, check_log=check_log, must_survive=must_survive,
                               stop_timeout=stop_timeout)
        self.started.append(server)
        deadline = time.monotonic() + start_timeout
        while True:
            match = _LISTENING_RE.search(server.log)
            if match:
                break
            if proc.poll() is not None:
                pytest.fail(f"fastsocks {argv} exited with {proc.returncode} before listening:\n{server.log}")
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait(5)
                pytest.fail(f"fastsocks {argv} did not log 'listening on' within {start_timeout} s:\n{server.log}")
            time.sleep(0.02)
        server.addresses = parse_addresses(match.group("addresses"))
        server.auth = match.group("auth")
        server.impl = match.group("impl")
        server.loop = match.group("loop")
        assert server.addresses, match.group(0)
        return server

    def stop_all(self) -> None:
        """SIGTERM each server still running: exit 0 in time, clean log; else fail."""
        problems = []
        for server in self.started:
            if server.proc.poll() is not None:
                # (one that never listened already failed the test in start())
                if server.must_survive and not server.stopped_by_test and server.addresses:
                    problems.append(f"fastsocks died during the test (exit {server.proc.returncode}):\n"
                                    f"{server.log[-5000:]}")
                continue  # else a test stopped it and checked the status
            server.proc.send_signal(signal.SIGTERM)
            try:
                server.proc.wait(server.stop_timeout)
            except subprocess.TimeoutExpired:
                server.proc.kill()
                server.proc.wait(5)
                problems.append(f"fastsocks (pid {server.pid}) did not exit within {server.stop_timeout} s "
                                f"of SIGTERM:\n{server.log[-5000:]}")
                continue
            log = server.log
            if server.proc.returncode != 0:
                problems.append(f"fastsocks exited with {server.proc.returncode} after SIGTERM; log:\n{log}")
            elif server.check_log and log_errors(log):
                problems.append("fastsocks logged an error or a traceback:\n" + "\n".join(log_errors(log)[:20])
                                + f"\nfull log:\n{log[-5000:]}")
        if problems:
            pytest.fail("\n".join(problems))
