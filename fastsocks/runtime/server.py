"""The server of one process: its listeners, sessions, reload, drain and stop.

``Server`` is what an embedding application creates (README, "Embedding");
``runtime/serve.py`` runs one in a process of its own (or one per worker)
with signals and systemd notifications around it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
import socket
from typing import Any, Callable

from ..observe.accesslog import AccessLog
from ..control.auth import Users
from ..config import Settings, not_reloadable
from ..constants import Greet
from ..errors import ConfigError
from ..net.address import format_peer, trusted_ranges
from ..control.gssapi import Acceptor, acceptor_from_settings
from ..hooks import AuthenticateHook, AuthorizeHook
from ..control.limits import Limits, SharedCounts
from ..observe.metrics import (get_metrics)
from ..relay import Engine
from ..control.rulebook import Policy
from ..control.rules import build_policy
from ..control.record import Protocol
from ..control.session import Session
from ..net import dns
from .listener import EngineListener, listening_sockets

__all__ = ["Server"]

log = logging.getLogger("fastsocks")


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
        self._reloading = False  # a reload is reading the files on a thread
        self._reload_again = False  # and another was asked for meanwhile
        self._reload_waiters: list[Callable[[], Any]] = []
        self.draining = False
        self._drain_timer: asyncio.TimerHandle | None = None
        self.fd_exhausted = False
        self._fd_exhausted_at = 0.0
        self._fd_probe_timer: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_running_loop()
        self.sessions: set[Session] = set()
        self.listeners: list[Any] = []  # asyncio.Server, or EngineListener
        self.addresses: list[str] = []
        self.engine: Any = None
        # What the engine may do in a negotiation (``_plan_handshakes``): answer
        # a greeting itself, and dial an IP literal (the connect timeout, or 0).
        self.engine_greets = Greet.NONE
        self.engine_dials = 0.0
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
        self._kept_limits: Limits | None = None
        self.limits: Limits | None = self._limits(settings)
        dns.configure(**settings.dns_options())  # [dns]: the process's cache (net/dns.py)

    def _limits(self, settings: Settings) -> Limits | None:
        """The limits to apply (None: none is set), one object for the server's life.

        A reload gives the same object new numbers: its counts, handshake
        slots and password-check state carry over, also across a reload that
        turns every limit off and a later one that turns them on again.
        """
        limits = self._kept_limits
        if limits is not None:  # a reload: new numbers, the same counts
            limits.settings = settings.limits
        elif settings.limits.any:
            if self.counts is None:
                self.counts = SharedCounts(1)
            limits = self._kept_limits = Limits(settings.limits, self.counts)
            limits.metrics = self.metrics
        return limits if settings.limits.any else None

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
                self.engine.on_exhausted = self._accept_exhausted
                self.engine.start()
                self.loop.add_reader(self.engine.done_fileno, self.engine.collect)
                if self.metrics is not None:
                    self.metrics.engine = self.engine
        self._plan_handshakes()
        for host, port in self.settings.listen:
            family = socket.AF_INET6 if ":" in host else socket.AF_UNSPEC
            listener: Any
            if self._engine_negotiates((host, port)):
                sockets = await listening_sockets(self.loop, host, port, family,
                                                  self.settings.backlog, reuse_port)
                listener = EngineListener(self, (host, port), sockets)
            else:
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
        if any(isinstance(listener, EngineListener) for listener in self.listeners):
            self._quota_engine()
            await self._first_stream()

    async def _first_stream(self) -> None:
        """Make the loop's first stream now, then close it.

        libuv opens one spare descriptor per loop (for its EMFILE handling)
        when it makes its first stream.  ``create_server`` did that at start;
        without it the first connection the engine hands back would, and
        the server's descriptor count would grow by one for good at some
        moment in its life.  Done here it is part of the count from the start.
        """
        ours, theirs = socket.socketpair()
        with theirs:
            transport, _ = await self.loop.connect_accepted_socket(asyncio.Protocol, ours)
            transport.abort()

    def _plan_handshakes(self) -> None:
        """What the engine may do, at start and after each reload: how bulk
        moves (``relay_bulk``) and, without GSSAPI or an authenticate hook, a
        negotiation: it answers a greeting itself: "no authentication"
        without users, else username/password, and the logins the users
        file's cache vouches for (``Users.mirror``; none while a source backs
        off after its failures).  It dials an IP literal, and a name the loop
        gave it (``Engine.remember``, forgotten here), itself (``engine_dials``,
        the connect timeout) only where nothing about the request needs the
        control plane: no access rules (nor the SSRF-safe default), no
        authorize hook, no outbound address or interface, no bandwidth limit
        per connection, no limit or source address of a user's own.  The
        engine's listeners take the new plan (``EngineListener.configure``).
        """
        settings, limits, users, engine = self.settings, self.limits, self.users, self.engine
        greets = Greet.NONE
        if self.gssapi is None and self.authenticate is None:
            greets = Greet.OPEN if users is None else Greet.LOGIN
        self.engine_greets = greets
        per_user = users is not None and (bool(settings.outbound_users) or limits is not None and (
            limits.settings.connections_per_user or limits.settings.bandwidth_per_user
            or bool(limits.settings.users)))
        self.engine_dials = settings.connect_timeout if (
            greets and self.policy is None and self.authorize is None and not per_user
            and not settings.outbound_address and not settings.outbound_interface
            and (limits is None or not limits.settings.bandwidth_per_connection)) else 0.0
        if engine is not None:
            engine.bulk = settings.relay_bulk
            engine.forget()
            if users is not None and greets == Greet.LOGIN:
                users.mirror(engine)
            else:
                engine.logins()
            if limits is not None:  # a source backing off: its logins are the loop's
                limits.passwords.on_wait = engine.pause_logins if greets == Greet.LOGIN else None
        for listener in self.listeners:
            if isinstance(listener, EngineListener):
                listener.configure()
        self._quota_engine()

    def _quota_engine(self) -> None:
        """The engine's handshakes under the quota while one of its listeners accepts."""
        if self._kept_limits is not None:
            accepting = any(getattr(listener, "keys", None) for listener in self.listeners)
            self._kept_limits.handshakes.attach(
                self.engine if accepting and self.limits is not None else None)

    def _accept_exhausted(self, err: int) -> None:
        """The engine paused accepting: no descriptor (or memory) left."""
        self._descriptors_exhausted(OSError(err, os.strerror(err)))

    def _engine_negotiates(self, listener: tuple[str, int]) -> bool:
        """Whether the engine takes this listener's handshakes (runtime/listener.py).

        Where the server starts with something the engine cannot answer for
        every SOCKS5 client (a method to choose, a PROXY header to read),
        the loop's transports negotiate, as without the engine.  A reload
        that turns authentication on later is still right, only slower: the
        engine hands every greeting back.
        """
        settings = self.settings
        return (self.engine is not None and Protocol.SOCKS5 in settings.protocols_of(listener)
                and not settings.proxy_protocol_from
                and self.gssapi is None and self.authenticate is None)

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
        if self.draining or timeout <= 0 or not self.connections:
            self.stop()
            return
        self.draining = True
        for listener in self.listeners:
            listener.close()
        log.info("draining %d connections for up to %g s (a second signal closes them now)",
                 self.connections, timeout)
        self._drain_timer = self.loop.call_later(timeout, self.stop)
        self._drain_tick()

    def _drain_tick(self) -> None:
        if self._stopped.is_set():
            return
        if not self.connections:
            log.info("drained: every connection finished")
            self.stop()
            return
        self.loop.call_later(0.1, self._drain_tick)

    @property
    def connections(self) -> int:
        """Open connections: the sessions, and those the engine accepted that the loop
        has not heard of yet (in their first moments)."""
        return len(self.sessions) + (self.engine.unseen if self.engine is not None else 0)

    def reload(self, then: Callable[[], Any] | None = None) -> None:
        """SIGHUP: re-read the configuration and the users file for new connections.

        Established connections keep going untouched.  An invalid new
        configuration is rejected with its reason and the old one kept.
        Listen addresses, workers, the relay and the event loop are fixed
        at start-up: a change to them is reported and needs a restart.

        The files are read and the rules compiled on a thread (a list of
        100 000 networks takes a second or more), so the connections this
        worker serves meanwhile are not held up; the result is applied on the
        loop, and ``then`` (if given) is called after it, applied or rejected.
        A reload asked for while one runs follows it, reading the files as
        they are then.
        """
        if then is not None:
            self._reload_waiters.append(then)
        if self._reloading:
            self._reload_again = True
            return
        self._reloading = True
        self._reload_again = False
        self.loop.run_in_executor(None, self._read_settings).add_done_callback(self._apply_reload)

    def _read_settings(self) -> tuple[Settings, Users | None, Policy | None]:
        """The reload's reading and compiling, on the executor's thread."""
        settings = self.reload_source() if self.reload_source else self.settings
        settings.validate()
        users = Users.load(settings.users_file) if settings.users_file else None
        return settings, users, build_policy(settings)

    def _apply_reload(self, read: asyncio.Future[tuple[Settings, Users | None, Policy | None]]) -> None:
        self._reloading = False
        try:
            if self._stopped.is_set():
                return
            try:
                settings, users, policy = read.result()
                gssapi = acceptor_from_settings(settings)  # a new keytab or principal
            except (ConfigError, OSError, ValueError) as exc:
                log.error("reload rejected, keeping the running configuration: %s", exc)
                return
            fixed = [name for name in not_reloadable()
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
            self._plan_handshakes()
            dns.configure(**settings.dns_options())  # [dns]: the process's cache (net/dns.py)
            log.info("configuration reloaded%s (%s)",
                     f" from {settings.config_file}" if settings.config_file else "",
                     f"{len(users)} users" if users is not None else "no authentication")
        finally:
            if self._reload_again and not self._stopped.is_set():
                self.reload()
            else:
                waiters, self._reload_waiters = self._reload_waiters, []
                for then in waiters:
                    then()

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
        if self._kept_limits is not None:
            self._kept_limits.handshakes.attach(None)
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
