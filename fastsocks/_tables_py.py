"""The pure-Python twin of ``_tables.pyx``: the same tables on ``bisect``.

``Spans`` keeps the merged ranges as two sorted lists (low bounds, high
bounds); a lookup is one ``bisect_right`` (C in CPython) and one comparison,
so the twin is O(log n) as well.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Iterable

IMPLEMENTATION = "py"

__all__ = ["IMPLEMENTATION", "Spans", "RangeSet", "merge"]

_LIMIT128 = 1 << 128


def merge(pairs: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Inclusive (low, high) integer ranges, sorted, overlapping and adjacent ones joined.

    A range must have 0 <= low <= high < 2**128 (ValueError otherwise).
    """
    checked = []
    for pair in pairs:
        lo, hi = pair
        if type(lo) is not int or type(hi) is not int or not 0 <= lo <= hi < _LIMIT128:
            raise ValueError(f"a range is two integers 0 <= low <= high < 2**128, got {pair!r}")
        checked.append((lo, hi))
    checked.sort()
    out: list[tuple[int, int]] = []
    for lo, hi in checked:
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return tuple(out)


class Spans:
    """A set of integers given as inclusive ranges; ``has(n)`` by bisection."""

    __slots__ = ("pairs", "_lows", "_highs")

    def __init__(self, pairs: Iterable[tuple[int, int]] = ()) -> None:
        self.pairs = merge(pairs)
        self._lows = [lo for lo, _ in self.pairs]
        self._highs = [hi for _, hi in self.pairs]

    def has(self, n: int) -> bool:
        """Whether the integer ``n`` is in one of the ranges (False for one out of 0..2**128)."""
        # The last range whose low bound is <= n, then n against its high bound.
        i = bisect_right(self._lows, n) - 1
        return i >= 0 and n <= self._highs[i]

    def __len__(self) -> int:
        return len(self.pairs)

    def __repr__(self) -> str:
        return f"Spans({list(self.pairs)!r})"


class RangeSet:
    """Networks as IPv4 and IPv6 ``Spans``; ``contains((4 or 6, int))``."""

    __slots__ = ("v4", "v6")

    def __init__(self, v4: Iterable[tuple[int, int]] = (), v6: Iterable[tuple[int, int]] = ()) -> None:
        self.v4 = Spans(v4)
        self.v6 = Spans(v6)

    def contains(self, key: tuple[int, int]) -> bool:
        """Whether the address ``key`` (an ``ip_key``: ``(4, int)`` or ``(6, int)``) is in a range."""
        return (self.v4 if key[0] == 4 else self.v6).has(key[1])

    def __len__(self) -> int:
        return len(self.v4) + len(self.v6)

    def __repr__(self) -> str:
        return f"RangeSet(v4={list(self.v4.pairs)!r}, v6={list(self.v6.pairs)!r})"
