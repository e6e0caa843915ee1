"""Lookup tables for addresses and ports: the Cython ones when built, else the twin.

Which one is ``_accel``'s decision (``FASTSOCKS_NO_EXTENSIONS=1`` forces the
twin).
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

from . import _accel, _tables_py

_impl: ModuleType = _accel.compiled("_tables") or _tables_py

IMPLEMENTATION: str = _impl.IMPLEMENTATION
UNDECIDED: int = _impl.UNDECIDED
NAME_UNKNOWN: int = _impl.NAME_UNKNOWN
if TYPE_CHECKING:  # one interface: the twin's types stand for both
    from ._tables_py import RangeSet, RuleTable, Spans, merge
else:
    Spans = _impl.Spans
    RangeSet = _impl.RangeSet
    RuleTable = _impl.RuleTable
    merge = _impl.merge

__all__ = ["IMPLEMENTATION", "Spans", "RangeSet", "RuleTable", "UNDECIDED", "NAME_UNKNOWN", "merge"]
