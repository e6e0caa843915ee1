"""The data plane: the Cython relay when it is built, else the twin.

Two designs, chosen by measuring (benchmarks/RESULTS.md):

* ``Engine`` (Linux, extension built): after the handshake the session hands
  both socket descriptors to a thread that moves bytes with splice(2) under
  epoll and never takes the GIL;
* ``Relay``: a pair of asyncio protocols, in Cython or pure Python; the
  portable path (macOS, Windows, pure installs) with the same behaviour.

``FASTSOCKS_NO_EXTENSIONS=1`` forces the pure-Python implementation.
"""

from __future__ import annotations

import os

if os.environ.get("FASTSOCKS_NO_EXTENSIONS"):
    from . import _relay_py as _impl
else:
    try:
        from . import _relay as _impl  # type: ignore[no-redef]
    except ImportError:
        from . import _relay_py as _impl  # type: ignore[no-redef]

Engine = None
if _impl.IMPLEMENTATION == "c":
    try:
        from ._engine import Engine  # type: ignore[no-redef]  # Linux: epoll + splice
    except ImportError:
        pass

IMPLEMENTATION: str = _impl.IMPLEMENTATION
Relay = _impl.Relay
Half = _impl.Half
HIGH_WATER: int = _impl.HIGH_WATER
LOW_WATER: int = _impl.LOW_WATER

__all__ = ["IMPLEMENTATION", "Engine", "Relay", "Half", "HIGH_WATER", "LOW_WATER"]
