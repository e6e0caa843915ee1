"""The one place that decides whether the compiled modules (and uvloop) are used.

``FASTSOCKS_NO_EXTENSIONS=1`` in the environment forces the pure-Python
implementations even where the extensions are installed (the same variable
makes ``setup.py`` build none).  Otherwise each compiled module is used when
it imports, and its twin when it does not (not built, or not this platform:
``_engine`` and ``_datagram`` are Linux only).  The event loop is chosen
here too: uvloop where it is installed, unless the stdlib loop is asked for.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import os
from types import ModuleType

__all__ = ["ENV", "DISABLED", "compiled", "new_event_loop", "loop_name", "have_uvloop"]

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


def have_uvloop() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def new_event_loop(choice: str = "auto") -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (or asked for: "uvloop"), else the stdlib loop."""
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
    """"uvloop" or "asyncio", for logs."""
    module = type(loop).__module__.partition(".")[0]
    return "uvloop" if module == "uvloop" else "asyncio"
