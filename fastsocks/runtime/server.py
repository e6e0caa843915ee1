"""Listeners, the event loop, signals and shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
import signal
import socket
import sys
from typing import Any, Callable

from .. import __version__, describe_implementation
from . import systemd
from ..observe.accesslog import AccessLog, check_access_log
from ..control.auth import Users
from ..config import Settings, parse_listen
from ..errors import ConfigError
from ..net.address import format_peer
from ..control.gssapi import Acceptor, acceptor_from_settings
from ..hooks import AuthenticateHook, AuthorizeHook
from ..control.limits import Limits, SharedCounts
from ..observe.metrics import (cleanup_multiprocess, get_metrics, serve_metrics, setup_multiprocess,
                      worker_exited)
from ..relay import Engine
from ..control.rules import Policy, build_policy
from ..control.session import Session
from ..net.upstream import trusted_ranges

__all__ = ["Server", "run", "new_event_loop", "loop_name"]

log = logging.getLogger("fastsocks")


def new_event_loop(choice: str = "auto") -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (or asked for), else the stdlib loop."""
    if choice in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    module = type(loop).__module__.partition(".")[0]
    return "uvloop" if module == "uvloop" else "asyncio"


class Server:
    """The listeners and the sessions they accepted.

    Embedding (README, "Embedding"): create it inside a running event loop,
    ``await server.start()`` (or ``async with Server(...) as server:``), read
    ``server.addresses``, and end it with ``server.stop()`` (or
    ``server.shutdown()`` to drain) and ``await server.wait_stopped()``.
    ``authenticate`` and ``authorize`` are the coroutine hooks described in
    ``fastsocks.hooks``.
    """

    def __init__(self, settings: Settings, users: Users | None = None,
                 reload: Callable[[], Settings] | None = None,
                 counts: SharedCounts | None = None, *,
                 authenticate: AuthenticateHook | None = None,
                 authorize: AuthorizeHook | None = None) -> None:
        self.settings = settings
        self.users = users
        self.authenticate = authenticate
        self.authorize = authorize
        self.reload_source = reload  # SIGHUP: where fresh settings come from
        self.draining = False
        self._drain_timer: asyncio.TimerHandle | None = None
        self.fd_exhausted = False
        self._fd_exhausted_at = 0.0
        self._fd_probe_timer: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_running_loop()
        self.sessions: set[Session] = set()
        self.listeners: list[asyncio.base_events.Server] = []
        self.addresses: list[str] = []
        self.engine: Any = None
        self._stopped = asyncio.Event()
        # Access rules and the SSRF-safe default; None when there is nothing to
        # check (no rules, loopback listeners only): one attribute test per request.
        self.policy: Policy | None = build_policy(settings)
        # GSSAPI (RFC 1961): the acceptor credentials; None when it is off.
        self.gssapi: Acceptor | None = acceptor_from_settings(settings)
        # PROXY protocol: the balancers trusted to send the header.
        self.proxy_trusted = trusted_ranges(settings.proxy_protocol_from)
        # Observers; None when not configured, which is all a session checks.
        self.metrics: Any = get_metrics() if settings.metrics_listen else None
        if self.metrics is not None:
            self.metrics.start_flushing(self.loop)
        self.access_log: AccessLog | None = None
        if settings.access_log:
            self.access_log = AccessLog(settings.access_log, settings.access_log_format, self.loop)
        # Limits; None when none is set.  The counts are shared with the other
        # workers (mapped by the master before forking) and outlive reloads.
        self.counts = counts
        self.limits: Limits | None = None
        self.limits = self._limits(settings)

    def _limits(self, settings: Settings) -> Limits | None:
        if not settings.limits.any:
            return None
        if self.limits is not None:  # a reload: new numbers, the same counts
            self.limits.settings = settings.limits
            return self.limits
        if self.counts is None:
            self.counts = SharedCounts(1)
        limits = Limits(settings.limits, self.counts)
        limits.metrics = self.metrics
        return limits

    @property
    def relay_name(self) -> str:
        return "splice engine" if self.engine is not None else "protocol relay"

    # -- descriptor exhaustion -------------------------------------------------
    #
    # At the open-file limit, uvloop accepts and drops new connections without
    # a word and the stdlib loop reports every failed accept() with a
    # traceback.  Either way the operator gets one warning per episode, and one
    # line when descriptors are available again: a probe opens /dev/null once
    # a second, and failed accepts on the stdlib loop are caught here.

    def _watch_descriptors(self) -> None:
        self.loop.set_exception_handler(self._loop_exception)
        self._fd_probe_timer = self.loop.call_later(1.0, self._fd_probe)

    def _loop_exception(self, loop: Any, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS,
                                                      errno.ENOMEM):
            self._descriptors_exhausted(exc)
            return
        callback = getattr(context.get("handle"), "_callback", None)
        if isinstance(exc, ValueError) and getattr(callback, "__name__", "") == "_start_serving":
            # The stdlib loop schedules an accept retry for every accept() that
            # failed with EMFILE (up to the backlog's worth); those that fire
            # after the listener closed find no descriptor.  Nothing to report.
            return
        loop.default_exception_handler(context)

    def _descriptors_exhausted(self, exc: OSError | None = None) -> None:
        self._fd_exhausted_at = self.loop.time()
        if not self.fd_exhausted:
            self.fd_exhausted = True
            try:
                import resource

                limit = f" (RLIMIT_NOFILE {resource.getrlimit(resource.RLIMIT_NOFILE)[0]})"
            except (ImportError, OSError, ValueError):
                limit = ""
            log.warning("out of file descriptors%s%s: new connections are refused until some "
                        "close; raise the limit (ulimit -n, systemd LimitNOFILE=) or add workers",
                        limit, f" ({exc.strerror})" if exc is not None and exc.strerror else "")

    def _fd_probe(self) -> None:
        try:
            fd = os.open(os.devnull, os.O_RDONLY)
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                self._descriptors_exhausted(exc)
        else:
            os.close(fd)
            if self.fd_exhausted and self.loop.time() - self._fd_exhausted_at > 2.0:
                self.fd_exhausted = False
                log.info("file descriptors available again: accepting new connections")
        if not self._stopped.is_set():
            self._fd_probe_timer = self.loop.call_later(1.0, self._fd_probe)

    async def start(self, reuse_port: bool = False) -> None:
        self._watch_descriptors()
        if self.settings.relay in ("auto", "splice"):
            if Engine is None:
                if self.settings.relay == "splice":
                    raise ConfigError("relay 'splice' needs Linux and the compiled extension; "
                                      "use --relay auto or protocol")
            else:
                self.engine = Engine()
                self.engine.start()
                self.loop.add_reader(self.engine.done_fileno, self.engine.collect)
        for host, port in self.settings.listen:
            family = socket.AF_INET6 if ":" in host else socket.AF_UNSPEC
            listener = await self.loop.create_server(
                lambda listener=(host, port): Session(self, listener),
                host,
                port,
                family=family,
                reuse_address=True,
                reuse_port=reuse_port or None,
                backlog=self.settings.backlog,
            )
            self.listeners.append(listener)
            for sock in listener.sockets:
                self.addresses.append(format_peer(sock.getsockname()))

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        if not self._stopped.is_set():
            self.stop()
        await self.wait_stopped()
        await self.close_observers()

    def shutdown(self) -> None:
        """SIGTERM/SIGINT: stop accepting; drain, or stop at once.

        With a drain timeout, open connections may finish for that long and
        the server stops as soon as the last one has; a second signal stops
        it at once.
        """
        timeout = self.settings.drain_timeout
        if self.draining or timeout <= 0 or not self.sessions:
            self.stop()
            return
        self.draining = True
        for listener in self.listeners:
            listener.close()
        log.info("draining %d connections for up to %g s (a second signal closes them now)",
                 len(self.sessions), timeout)
        self._drain_timer = self.loop.call_later(timeout, self.stop)
        self._drain_tick()

    def _drain_tick(self) -> None:
        if self._stopped.is_set():
            return
        if not self.sessions:
            log.info("drained: every connection finished")
            self.stop()
            return
        self.loop.call_later(0.1, self._drain_tick)

    def reload(self) -> None:
        """SIGHUP: re-read the configuration and the users file for new connections.

        Established connections keep going untouched.  An invalid new
        configuration is rejected with its reason and the old one kept.
        Listen addresses, workers, the relay and the event loop are fixed
        at start-up: a change to them is reported and needs a restart.
        """
        try:
            settings = self.reload_source() if self.reload_source else self.settings
            settings.validate()
            users = Users.load(settings.users_file) if settings.users_file else None
            policy = build_policy(settings)
            gssapi = acceptor_from_settings(settings)  # a new keytab or principal
        except (ConfigError, OSError, ValueError) as exc:
            log.error("reload rejected, keeping the running configuration: %s", exc)
            return
        fixed = [name for name in ("listen", "workers", "relay", "loop", "backlog", "metrics_listen",
                                   "access_log", "access_log_format")
                 if getattr(settings, name) != getattr(self.settings, name)]
        if fixed:
            log.warning("reload: %s cannot change while running; restart to apply",
                        ", ".join(fixed))
            settings = dataclasses.replace(settings, **{n: getattr(self.settings, n) for n in fixed})
        self.settings = settings
        self.users = users
        self.policy = policy
        self.gssapi = gssapi
        self.proxy_trusted = trusted_ranges(settings.proxy_protocol_from)
        self.limits = self._limits(settings)
        log.info("configuration reloaded%s (%s)",
                 f" from {settings.config_file}" if settings.config_file else "",
                 f"{len(users)} users" if users is not None else "no authentication")

    def stop(self) -> None:
        """Stop accepting and end every connection; ``wait_stopped`` returns."""
        if self._fd_probe_timer is not None:
            self._fd_probe_timer.cancel()
            self._fd_probe_timer = None
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        for listener in self.listeners:
            listener.close()
        for session in list(self.sessions):
            session.abort("shutdown")
        engine, self.engine = self.engine, None
        if engine is not None:
            # Close every pair the engine owns, then report them (access log).
            engine.stop()
            self.loop.remove_reader(engine.done_fileno)
            engine.collect()
        if self.access_log is not None:
            self.access_log.flush()
        if self.metrics is not None:
            self.metrics.stop_flushing()  # a worker's last counts, before it exits
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()
        for listener in self.listeners:
            await listener.wait_closed()

    @property
    def serving(self) -> bool:
        """Listening and not stopping (``/healthz``; read from another thread)."""
        return bool(self.listeners) and not self._stopped.is_set()

    async def close_observers(self, timeout: float = 1.0) -> None:
        """After ``stop()``: let relays still closing report; last metrics; close the log."""
        deadline = self.loop.time() + timeout
        while self.sessions and self.loop.time() < deadline:
            await asyncio.sleep(0.01)
        if self.metrics is not None:
            self.metrics.flush()
        if self.access_log is not None:
            self.access_log.close()
            self.access_log = None


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
            def shutdown() -> None:
                systemd.stopping()
                server.shutdown()

            def reload() -> None:
                systemd.reloading()
                server.reload()
                systemd.ready()

            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, shutdown)
            loop.add_signal_handler(signal.SIGHUP, reload)
        else:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, server.shutdown)
            loop.add_signal_handler(signal.SIGHUP, server.reload)
    if ready_fd is None:
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
    from .workers import Master, reserve

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
            listener.httpd.socket.close()
        # A worker's settings always listen where the master reserved.
        worker_reload = (lambda: dataclasses.replace(reload(), listen=addresses)) if reload else None
        counts.attach(index)  # wipes what a dead predecessor in this slot counted
        _run_loop(worker_settings, users, index, ready_fd, worker_reload, counts)

    master = Master(settings, reserved, worker_main)
    relay = "splice engine" if Engine is not None and settings.relay != "protocol" else "protocol relay"
    loop = "uvloop" if settings.loop != "asyncio" and _have_uvloop() else "asyncio"

    def announce() -> None:
        for listener in exporter:
            listener.start()
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


def _have_uvloop() -> bool:
    import importlib.util

    return importlib.util.find_spec("uvloop") is not None
