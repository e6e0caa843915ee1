"""The data plane: the Cython relay when it is built, else the twin.

Two designs, chosen by measuring (benchmarks/RESULTS.md):

* ``Engine`` (Linux, extension built): after the handshake the session hands
  both socket descriptors to a thread that moves bytes with splice(2) under
  epoll and never takes the GIL;
* ``Relay``: a pair of asyncio protocols, in Cython or pure Python; the
  portable path (macOS, Windows, pure installs) with the same behaviour.

Which one is ``_accel``'s decision (``FASTSOCKS_NO_EXTENSIONS=1`` forces the
twins).
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Callable

from . import _accel, _relay_py

if TYPE_CHECKING:
    from . import _engine as _engine_stub

_impl: ModuleType = _accel.compiled("_relay") or _relay_py

# Linux: epoll + splice, with the compiled relay only.
_engine = _accel.compiled("_engine") if _impl is not _relay_py else None
Engine: type[_engine_stub.Engine] | None = _engine.Engine if _engine is not None else None
first_byte: Callable[[int], int] | None = _engine.first_byte if _engine is not None else None

IMPLEMENTATION: str = _impl.IMPLEMENTATION
Relay = _impl.Relay
Half = _impl.Half
HIGH_WATER: int = _impl.HIGH_WATER
LOW_WATER: int = _impl.LOW_WATER

__all__ = ["IMPLEMENTATION", "Engine", "first_byte", "Relay", "Half", "HIGH_WATER", "LOW_WATER"]
