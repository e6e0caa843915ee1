"""The one place that decides whether the compiled modules are used.

``FASTSOCKS_NO_EXTENSIONS=1`` in the environment forces the pure-Python
implementations even where the extensions are installed (the same variable
makes ``setup.py`` build none).  Otherwise each compiled module is used when
it imports, and its twin when it does not (not built, or not this platform:
``_engine`` and ``_datagram`` are Linux only).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

__all__ = ["ENV", "DISABLED", "compiled"]

ENV = "FASTSOCKS_NO_EXTENSIONS"

#: True when the environment forbids the compiled modules.
DISABLED: bool = bool(os.environ.get(ENV))


def compiled(name: str) -> ModuleType | None:
    """``fastsocks.<name>`` compiled, or None when disabled or not built here."""
    if DISABLED:
        return None
    try:
        return importlib.import_module(f"fastsocks.{name}")
    except ImportError:
        return None
