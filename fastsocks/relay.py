"""The data plane: the Cython relay when it is built, else the twin.

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

IMPLEMENTATION: str = _impl.IMPLEMENTATION
Relay = _impl.Relay
Half = _impl.Half
HIGH_WATER: int = _impl.HIGH_WATER
LOW_WATER: int = _impl.LOW_WATER

__all__ = ["IMPLEMENTATION", "Relay", "Half", "HIGH_WATER", "LOW_WATER"]
