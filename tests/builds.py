"""Which compiled parts this installation has, for parametrising the suite.

The suite runs against a compiled install (every case on both the Cython and
the pure implementation, both relays) and against a pure-Python install
(``FASTSOCKS_NO_EXTENSIONS=1 pip install .``), where only the pure cases can
exist.
"""

from __future__ import annotations

from importlib.util import find_spec

HAVE_EXTENSION = find_spec("fastsocks._codec") is not None and find_spec("fastsocks._relay") is not None
HAVE_ENGINE = find_spec("fastsocks._engine") is not None
HAVE_DATAGRAM = find_spec("fastsocks._datagram") is not None
IMPLS = ("c", "py") if HAVE_EXTENSION else ("py",)
RELAYS = ("splice", "protocol") if HAVE_ENGINE else ("protocol",)
# UDP ASSOCIATE: datagrams in C (_datagram) or in Python (asyncio endpoints,
# which ``--relay protocol`` selects).
UDP_PATHS = ("c", "py") if HAVE_DATAGRAM else ("py",)
# Every relay path a TCP connection can take, as (server arguments, environment):
# the splice engine (C token buckets), the Cython protocol relay, pure Python.
RELAY_PATHS: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    **({"splice": ((), {})} if HAVE_ENGINE else {}),
    "protocol": (("--relay", "protocol"), {}),
    "pure": ((), {"FASTSOCKS_NO_EXTENSIONS": "1"}),
}
# The server arguments that pick each datagram path of UDP_PATHS.
UDP_PATH_ARGS: dict[str, tuple[str, ...]] = {"c": ("--relay", "auto"), "py": ("--relay", "protocol")}
