"""Multi-core serving: a master process supervising N forked workers.

Each worker runs its own event loop (and relay engine) with its own listening
sockets on the same addresses (SO_REUSEPORT), so the kernel spreads incoming
connections over them.  What they share at run time is the connection counts
of the limits (``control.sharedcounts.SharedCounts``, a shared mapping made
before the fork, each worker writing only its own table); nothing else.

The master binds (without listening) one SO_REUSEPORT socket per address
first: that fixes the port when the configuration says port 0, and holds it
for the workers, including ones restarted later.  It then forks the workers,
waits until each says its listeners are up, logs the listening line, and
supervises: a worker that dies is restarted (at most ``MAX_RESTARTS`` times
per minute, so a crash loop ends instead of spinning), SIGTERM/SIGINT are
passed on to every worker and the master waits for them to finish, SIGHUP is
passed on.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from typing import Any, Callable

from . import systemd
from ..config import Settings

__all__ = ["Master", "reserve"]

log = logging.getLogger("fastsocks")

MAX_RESTARTS = 10  # per worker slot, per minute
READY_TIMEOUT = 30.0
STOP_GRACE = 30.0  # after SIGTERM, before SIGKILL


def reserve(settings: Settings) -> list[socket.socket]:
    """Bind one SO_REUSEPORT socket per listen address; ports 0 get fixed."""
    reserved: list[socket.socket] = []
    for host, port in settings.listen:
        infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        seen = set()
        for family, _, _, _, sockaddr in infos:
            if sockaddr in seen:
                continue
            seen.add(sockaddr)
            # Every address of one entry gets the port the first one got.
            sockaddr = (sockaddr[0], port, *sockaddr[2:])
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(sockaddr)
            except BaseException:
                sock.close()
                for s in reserved:
                    s.close()
                raise
            reserved.append(sock)
            port = sock.getsockname()[1]
    return reserved


class Master:
    """Fork, watch and stop the workers."""

    def __init__(self, settings: Settings, reserved: list[socket.socket],
                 worker_main: Callable[[int, int], None]) -> None:
        self.settings = settings
        self.reserved = reserved
        self.worker_main = worker_main  # (worker index, ready fd) -> never returns
        self.pids: dict[int, int] = {}  # pid -> worker index
        self.restarts: dict[int, list[float]] = {}
        self.stopping = False
        self.signalled: list[int] = []
        self.on_exit: Callable[[int], None] | None = None  # (pid): after a worker is reaped

    def run_with_announce(self, announce: Callable[[], None]) -> int:
        """Start every worker, ``announce()`` once all listen, then supervise."""
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        try:
            for index in range(self.settings.workers):
                self._spawn(index, wait=True)
        except RuntimeError as exc:
            log.error("%s", exc)
            self._stop_all()
            return 1
        announce()
        return self._supervise()

    def _spawn(self, index: int, wait: bool) -> None:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            os.close(read_fd)
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(signum, signal.SIG_DFL)
            code = 1
            try:
                self.worker_main(index, write_fd)
                code = 0
            except BaseException:
                log.exception("worker %d failed", index)
            finally:
                logging.shutdown()
                os._exit(code)
        os.close(write_fd)
        self.pids[pid] = index
        try:
            if wait:
                ready = _wait_ready(read_fd, READY_TIMEOUT)
                if not ready:
                    raise RuntimeError(f"worker {index} (pid {pid}) did not start listening "
                                       f"within {READY_TIMEOUT:g} s")
        finally:
            os.close(read_fd)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signalled.append(signum)

    def _supervise(self) -> int:
        while self.pids:
            while self.signalled:
                signum = self.signalled.pop(0)
                if signum == signal.SIGHUP:
                    systemd.reloading()
                    self._forward(signal.SIGHUP)
                    systemd.ready()  # each worker reloads on its own, at once
                elif not self.stopping:
                    systemd.stopping()
                    self.stopping = True
                    self._forward(signal.SIGTERM)
                    deadline = time.monotonic() + self.settings.drain_timeout + STOP_GRACE
                else:  # a second signal: the workers stop draining and close now
                    self._forward(signal.SIGTERM)
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                if self.stopping and time.monotonic() > deadline:
                    self._forward(signal.SIGKILL)
                time.sleep(0.05)
                continue
            index = self.pids.pop(pid, None)
            if self.on_exit is not None:
                self.on_exit(pid)
            if index is None or self.stopping:
                continue
            log.warning("worker %d (pid %d) %s; restarting it", index, pid, _describe(status))
            history = [t for t in self.restarts.get(index, []) if t > time.monotonic() - 60]
            if len(history) >= MAX_RESTARTS:
                log.error("worker %d died %d times within a minute; stopping", index, len(history))
                self.stopping = True
                self._forward(signal.SIGTERM)
                deadline = time.monotonic() + STOP_GRACE
                continue
            self.restarts[index] = history + [time.monotonic()]
            self._spawn(index, wait=False)
        for sock in self.reserved:
            sock.close()
        log.info("fastsocks stopped")
        return 0

    def _forward(self, signum: int) -> None:
        for pid in list(self.pids):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def _stop_all(self) -> None:
        self._forward(signal.SIGTERM)
        for pid in list(self.pids):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self.pids.clear()
        for sock in self.reserved:
            sock.close()


def _wait_ready(fd: int, timeout: float) -> bool:
    import select

    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        try:
            readable, _, _ = select.select([fd], [], [], remaining)
        except InterruptedError:
            continue
        if readable:
            return os.read(fd, 1) == b"1"


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by signal {os.WTERMSIG(status)}"
    return f"exited with status {os.WEXITSTATUS(status)}"
