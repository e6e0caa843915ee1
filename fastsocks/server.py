"""Listeners, the event loop, signals and shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from typing import Any

from . import __version__, describe_implementation
from .auth import Users
from .config import Settings
from .errors import ConfigError
from .relay import Engine
from .session import Session

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


def _format_address(sockname: Any) -> str:
    host, port = sockname[0], sockname[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Server:
    """The listeners and the sessions they accepted."""

    def __init__(self, settings: Settings, users: Users | None = None) -> None:
        self.settings = settings
        self.users = users
        self.loop = asyncio.get_running_loop()
        self.sessions: set[Session] = set()
        self.listeners: list[asyncio.base_events.Server] = []
        self.addresses: list[str] = []
        self.engine: Any = None
        self._stopped = asyncio.Event()

    @property
    def relay_name(self) -> str:
        return "splice engine" if self.engine is not None else "protocol relay"

    async def start(self) -> None:
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
                lambda: Session(self),
                host,
                port,
                family=family,
                reuse_address=True,
                backlog=self.settings.backlog,
            )
            self.listeners.append(listener)
            for sock in listener.sockets:
                self.addresses.append(_format_address(sock.getsockname()))

    def stop(self) -> None:
        """Stop accepting and end every connection; ``wait_stopped`` returns."""
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
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()
        for listener in self.listeners:
            await listener.wait_closed()


async def _serve(settings: Settings, users: Users | None) -> None:
    server = Server(settings, users)
    await server.start()
    loop = server.loop
    if sys.platform != "win32":
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, server.stop)
    auth = f"username/password ({len(users)} users)" if users is not None else "none"
    log.info(
        "fastsocks %s listening on %s (auth: %s; %s, %s, %s)",
        __version__, ", ".join(server.addresses), auth, describe_implementation(),
        server.relay_name, loop_name(loop),
    )
    try:
        await server.wait_stopped()
    finally:
        server.stop()
    log.info("fastsocks stopped")


def run(settings: Settings) -> None:
    """Validate ``settings``, load the users file, and serve until stopped."""
    settings.validate()
    users = Users.load(settings.users_file) if settings.users_file else None
    loop = new_event_loop(settings.loop)
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(_serve(settings, users))
    except KeyboardInterrupt:  # Windows: no signal handlers on the loop
        log.info("fastsocks stopped")
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        asyncio.set_event_loop(None)
