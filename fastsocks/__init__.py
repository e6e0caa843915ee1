"""fastsocks: a SOCKS5 proxy server with a Cython hot path on asyncio/uvloop."""

from __future__ import annotations

from . import codec, relay
from ._version import __version__
from .constants import Atyp, Command, Method, Reply
from .errors import ConfigError, ProtocolError

#: "accelerated" when both the Cython codec and relay are loaded, else "pure".
IMPLEMENTATION = "accelerated" if codec.IMPLEMENTATION == relay.IMPLEMENTATION == "c" else "pure"


def describe_implementation() -> str:
    """One phrase for logs and ``--version``: which code paths are active."""
    if IMPLEMENTATION == "accelerated":
        return "accelerated (Cython codec and relay)"
    parts = [f"codec: {'Cython' if codec.IMPLEMENTATION == 'c' else 'Python'}",
             f"relay: {'Cython' if relay.IMPLEMENTATION == 'c' else 'Python'}"]
    return f"pure ({', '.join(parts)})"


__all__ = [
    "__version__",
    "IMPLEMENTATION",
    "describe_implementation",
    "Atyp",
    "Command",
    "Method",
    "Reply",
    "ConfigError",
    "ProtocolError",
]
