"""Running as a service: systemd readiness (Type=notify), the unit file,
the container image's pieces.

The notify tests listen on a Unix datagram socket of their own, the way
systemd does, with SO_PASSCRED so each message's sender is known: only the
main process (the master, with workers) may speak.  The unit file is checked
by ``systemd-analyze verify``.  No Docker engine runs here, so the image is
checked piece by piece: its config passes ``fastsocks check``, its health
check command succeeds against a real server's /healthz, and it runs as a
non-root user under an init.
"""

from __future__ import annotations

import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from procs import children

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "fastsocks.service"
DOCKERFILE = ROOT / "Dockerfile"
DOCKER_TOML = ROOT / "deploy" / "docker.toml"


class Notifications:
    """A stand-in for systemd's notify socket: (sender pid, message) pairs."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        address = "\0" + path[1:] if path.startswith("@") else path
        self.sock.bind(address)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.env = {"NOTIFY_SOCKET": path}
        self.got: list[tuple[int, str]] = []

    def wait_for(self, state: str, timeout: float = 10.0) -> tuple[int, str]:
        """The first message (received so far or later) that carries ``state``."""
        for item in self.got:
            if state in item[1].splitlines():
                return item
        deadline = time.monotonic() + timeout
        while True:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data, ancdata, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except socket.timeout:
                raise AssertionError(f"no {state} within {timeout} s; got {self.got}") from None
            pid = 0
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("iII", payload[:12])[0]
            item = (pid, data.decode())
            self.got.append(item)
            if state in item[1].splitlines():
                return item

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    name = (str(tmp_path / "notify") if request.param == "path"
            else f"@fastsocks-test-{id(request)}-{time.monotonic_ns()}")
    sock = Notifications(name)
    yield sock
    sock.close()


def test_ready_reloading_stopping(notify_socket: Notifications,
                                  fastsocks_server: Callable[..., Any]) -> None:
    server = fastsocks_server(env=notify_socket.env)
    pid, message = notify_socket.wait_for("READY=1")
    assert pid == server.pid
    assert f"MAINPID={server.pid}" in message.splitlines()
    assert "STATUS=listening on 127.0.0.1:" in message
    server.proc.send_signal(signal.SIGHUP)
    notify_socket.wait_for("RELOADING=1")
    reload_message = notify_socket.got[-1][1]
    assert re.search(r"^MONOTONIC_USEC=\d+$", reload_message, re.MULTILINE)
    deadline = time.monotonic() + 10
    while sum("READY=1" in m.splitlines() for _, m in notify_socket.got) < 2:
        assert time.monotonic() < deadline, notify_socket.got
        notify_socket.sock.settimeout(1)
        try:
            data = notify_socket.sock.recv(4096)
            notify_socket.got.append((0, data.decode()))
        except socket.timeout:
            pass
    assert server.stop() == 0
    notify_socket.wait_for("STOPPING=1")


def test_with_workers_only_the_master_notifies(notify_socket: Notifications,
                                               fastsocks_server: Callable[..., Any]) -> None:
    server = fastsocks_server("--workers", "2", env=notify_socket.env)
    assert len(children(server.pid)) == 2
    pid, message = notify_socket.wait_for("READY=1")
    assert pid == server.pid and "STATUS=2 workers listening on" in message
    server.proc.send_signal(signal.SIGHUP)
    notify_socket.wait_for("RELOADING=1")
    assert server.stop() == 0
    notify_socket.wait_for("STOPPING=1")
    senders = {sender for sender, _ in notify_socket.got}
    assert senders == {server.pid}, notify_socket.got
    assert sum("READY=1" in m.splitlines() for _, m in notify_socket.got) == 2  # start, reload


def test_without_systemd_nothing_is_sent(fastsocks_server: Callable[..., Any]) -> None:
    from fastsocks.runtime import systemd

    assert not systemd.ready()  # NOTIFY_SOCKET unset in the test process
    server = fastsocks_server(env={"NOTIFY_SOCKET": "/nonexistent/notify"})
    assert server.stop() == 0
    assert "could not notify systemd" in server.log  # a warning, not a failure


def test_unit_file_verifies() -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze comes with Debian's systemd package (tests/run.sh)"
    fastsocks = shutil.which("fastsocks") or str(Path(sys.executable).parent / "fastsocks")
    text = UNIT.read_text().replace("/usr/local/bin/fastsocks", fastsocks)
    unit = Path(f"/tmp/fastsocks-verify-{time.monotonic_ns()}.service")
    unit.write_text(text)
    try:
        result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                                timeout=60)
    finally:
        unit.unlink()
    # verify prints problems with this unit's name on them (and may complain
    # about unrelated units of the machine it runs on).
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if unit.name in line]
    assert not problems, problems
    keys = dict(line.split("=", 1) for line in text.splitlines()
                if "=" in line and not line.startswith("#"))
    assert keys["Type"] == "notify"
    assert keys["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert keys["NoNewPrivileges"] == "yes"
    assert int(keys["LimitNOFILE"]) >= 20000


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_image_runs_unprivileged_under_an_init_with_a_health_check() -> None:
    instructions = _dockerfile_instructions()
    final = instructions[max(i for i, (word, _) in enumerate(instructions) if word == "FROM"):]
    users = [rest for word, rest in final if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    entrypoint = [rest for word, rest in final if word == "ENTRYPOINT"][-1]
    assert "tini" in entrypoint
    health = [rest for word, rest in final if word == "HEALTHCHECK"][-1]
    assert "/healthz" in health
    copied = [rest.split()[0] for word, rest in final if word == "COPY" and "--from" not in rest]
    assert "deploy/docker.toml" in copied
    # Local build output (a developer's .so files, the venv) stays out of the image.
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "fastsocks/*.so", "fastsocks/*.c", "build"} <= set(ignored)


def test_image_config_passes_check(tmp_path: Path, run_cli: Callable[..., Any],
                                   users_file: Path) -> None:
    text = DOCKER_TOML.read_text().replace("/etc/fastsocks/users", str(users_file))
    config = tmp_path / "docker.toml"
    config.write_text(text)
    result = run_cli("check", str(config))
    assert result.returncode == 0, result.stderr.decode()


def test_image_health_check_passes_against_a_running_server(
        fastsocks_server: Callable[..., Any]) -> None:
    health = [rest for word, rest in _dockerfile_instructions() if word == "HEALTHCHECK"][-1]
    command = health.split("CMD", 1)[1].strip()
    argv = [str(a) for a in __import__("json").loads(command)]
    server = fastsocks_server("--metrics", "127.0.0.1:0")
    port = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", server.log)
    assert port, server.log
    argv = [sys.executable if argv[0] == "python" else argv[0],
            *[a.replace("9180", port.group(1)) for a in argv[1:]]]
    assert subprocess.run(argv, timeout=30).returncode == 0, shlex.join(argv)
    assert server.stop() == 0
    assert subprocess.run(argv, timeout=30, capture_output=True).returncode != 0
