"""fastsocks: a SOCKS5 proxy server with a Cython hot path on asyncio/uvloop."""

from __future__ import annotations

from . import codec, relay
from ._version import __version__
from .constants import Atyp, Command, Method, Reply
from .errors import ConfigError, ProtocolError
from .hooks import RequestInfo

#: "accelerated" when both the Cython codec and relay are loaded, else "pure".
IMPLEMENTATION = "accelerated" if codec.IMPLEMENTATION == relay.IMPLEMENTATION == "c" else "pure"


def describe_implementation() -> str:
    """One phrase for logs and ``--version``: which code paths are active."""
    if IMPLEMENTATION == "accelerated":
        return "accelerated (Cython codec and relay)"
    parts = [f"codec: {'Cython' if codec.IMPLEMENTATION == 'c' else 'Python'}",
             f"relay: {'Cython' if relay.IMPLEMENTATION == 'c' else 'Python'}"]
    return f"pure ({', '.join(parts)})"


def __getattr__(name: str) -> object:
    # The server pulls in the event-loop side (uvloop, the relay engine):
    # imported on first use, so the codec alone stays cheap to import.
    if name in ("Server", "Settings", "LimitSettings", "Users"):
        from . import config
        from .control import auth
        from .control import limits
        from .runtime import server

        found = {"Server": server.Server, "Settings": config.Settings,
                 "LimitSettings": limits.LimitSettings, "Users": auth.Users}
        return found[name]
    raise AttributeError(f"module 'fastsocks' has no attribute {name!r}")


__all__ = [
    "__version__",
    "Server",
    "Settings",
    "LimitSettings",
    "Users",
    "RequestInfo",
    "IMPLEMENTATION",
    "describe_implementation",
    "Atyp",
    "Command",
    "Method",
    "Reply",
    "ConfigError",
    "ProtocolError",
]
