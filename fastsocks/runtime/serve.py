"""Running the server as a process: the event loop, signals, workers, systemd.

``run()`` is what the ``fastsocks`` command calls after reading its
settings: one process serving on its own event loop, or a master that
forks ``--workers N`` of them (``runtime/workers.py``), each its own loop,
listeners (SO_REUSEPORT) and relay.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import sys
from typing import Any, Callable

from .. import __version__, describe_implementation
from .._accel import have_uvloop, loop_name, new_event_loop
from ..config import Settings, parse_listen
from ..control.auth import Users
from ..control.gssapi import acceptor_from_settings
from ..control.limits import SharedCounts
from ..control.rules import describe_ssrf_default
from ..net.address import format_peer
from ..observe.accesslog import check_access_log
from ..observe.metrics import cleanup_multiprocess, setup_multiprocess, worker_exited
from ..observe.exporter import serve_metrics
from ..relay import Engine
from . import systemd
from .server import Server
from .workers import Master, reserve

__all__ = ["run"]

log = logging.getLogger("fastsocks")


async def _serve(settings: Settings, users: Users | None, worker: int | None = None,
                 ready_fd: int | None = None,
                 reload: Callable[[], Settings] | None = None,
                 counts: SharedCounts | None = None) -> None:
    server = Server(settings, users, reload, counts)
    await server.start(reuse_port=worker is not None)
    exporter = None
    if worker is None and settings.metrics_listen:  # workers: the master serves them
        try:
            exporter = serve_metrics(parse_listen(settings.metrics_listen), lambda: server.serving)
        except BaseException:
            server.stop()
            await server.close_observers(0)
            raise
    loop = server.loop
    if sys.platform != "win32":
        if worker is None:  # the service itself: systemd hears of stops and reloads
            def on_stop() -> None:
                systemd.stopping()
                server.shutdown()

            def on_reload() -> None:
                systemd.reloading()
                server.reload(then=systemd.ready)

            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, on_stop)
            loop.add_signal_handler(signal.SIGHUP, on_reload)
        else:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, server.shutdown)
            loop.add_signal_handler(signal.SIGHUP, server.reload)
    if ready_fd is None:
        log.info("%s", describe_ssrf_default(settings.listen))
        log.info("fastsocks %s listening on %s (%s)", __version__, ", ".join(server.addresses),
                 _describe(settings, users, server.relay_name, loop_name(loop)))
        systemd.ready(f"listening on {', '.join(server.addresses)}")
    else:
        try:
            os.write(ready_fd, b"1")
        except OSError:
            pass  # a restarted worker: the master is not waiting for it
        os.close(ready_fd)
        log.debug("worker %d (pid %d) listening", worker, os.getpid())
    try:
        await server.wait_stopped()
    finally:
        server.stop()
        if exporter is not None:
            exporter.close()
        await server.close_observers()
    if worker is None:
        log.info("fastsocks stopped")


def _describe(settings: Settings, users: Users | None, relay: str, loop: str) -> str:
    auth = f"username/password ({len(users)} users)" if users is not None else "none"
    if settings.gssapi:
        # GSSAPI first: the session prefers it when a client offers it.
        level = settings.gssapi_min_protection
        other = auth if users is not None or settings.allow_open else ""
        auth = f"GSSAPI (minimum {level})" + (f", else {other}" if other else "")
    workers = f"{settings.workers} workers, " if settings.workers > 1 else ""
    return f"auth: {auth}; {workers}{describe_implementation()}, {relay}, {loop}"


def _run_loop(settings: Settings, users: Users | None, worker: int | None = None,
              ready_fd: int | None = None, reload: Callable[[], Settings] | None = None,
              counts: SharedCounts | None = None) -> None:
    loop = new_event_loop(settings.loop)
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(_serve(settings, users, worker, ready_fd, reload, counts))
    except KeyboardInterrupt:  # Windows: no signal handlers on the loop
        log.info("fastsocks stopped")
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        asyncio.set_event_loop(None)


def run(settings: Settings, reload: Callable[[], Settings] | None = None) -> int:
    """Validate ``settings``, load the users file, and serve until stopped.

    ``reload`` gives fresh settings on SIGHUP (the config file and command
    line read again); without it SIGHUP re-reads the users file only.
    """
    settings.validate()
    users = Users.load(settings.users_file) if settings.users_file else None
    acceptor_from_settings(settings)  # a keytab without the principal: fail now, not per worker
    if settings.access_log:
        check_access_log(settings.access_log)  # fail now, not in each worker
    if settings.workers <= 1:
        _run_loop(settings, users, reload=reload)
        return 0
    reserved = reserve(settings)
    addresses = [sock.getsockname()[:2] for sock in reserved]
    # Connection counts for the limits, one table per worker slot, mapped
    # before forking so that every worker sees every table (fastsocks/limits.py).
    counts = SharedCounts(settings.workers)
    worker_settings = dataclasses.replace(settings, listen=addresses)

    # Metrics across workers: each writes its values to files in this
    # directory (set before any fork), the master serves their sum from a
    # thread started once the workers are forked.
    metrics_dir = setup_multiprocess() if settings.metrics_listen else None
    exporter: list[Any] = []
    try:
        if settings.metrics_listen:
            exporter.append(serve_metrics(parse_listen(settings.metrics_listen),
                                          lambda: bool(master.pids) and not master.stopping,
                                          start=False))
    except BaseException:
        for sock in reserved:
            sock.close()
        if metrics_dir is not None:
            cleanup_multiprocess(metrics_dir)
        raise

    def worker_main(index: int, ready_fd: int) -> None:
        for sock in reserved:
            sock.close()
        for listener in exporter:  # the master's metrics listener, not ours
            listener.socket.close()
        # A worker's settings always listen where the master reserved.
        worker_reload = (lambda: dataclasses.replace(reload(), listen=addresses)) if reload else None
        counts.attach(index)  # wipes what a dead predecessor in this slot counted
        _run_loop(worker_settings, users, index, ready_fd, worker_reload, counts)

    master = Master(settings, reserved, worker_main)
    relay = "splice engine" if Engine is not None and settings.relay != "protocol" else "protocol relay"
    loop = "uvloop" if settings.loop != "asyncio" and have_uvloop() else "asyncio"

    def announce() -> None:
        for listener in exporter:
            listener.start()
        log.info("%s", describe_ssrf_default(settings.listen))
        log.info("fastsocks %s listening on %s (%s)", __version__,
                 ", ".join(format_peer(a) for a in addresses),
                 _describe(settings, users, relay, loop))
        systemd.ready(f"{settings.workers} workers listening on "
                      f"{', '.join(format_peer(a) for a in addresses)}")

    if metrics_dir is not None:
        master.on_exit = worker_exited
    try:
        code = master.run_with_announce(announce)
    finally:
        for listener in exporter:
            listener.close()
        if metrics_dir is not None:
            cleanup_multiprocess(metrics_dir)
    return code
