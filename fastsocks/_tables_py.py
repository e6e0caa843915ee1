"""The pure-Python twin of ``_tables.pyx``: the same tables on ``bisect``.

``Spans`` keeps the merged ranges as two sorted lists (low bounds, high
bounds); a lookup is one ``bisect_right`` (C in CPython) and one comparison,
so the twin is O(log n) as well.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Any, Iterable, Optional

IMPLEMENTATION = "py"

__all__ = ["IMPLEMENTATION", "Spans", "RangeSet", "RuleTable", "UNDECIDED", "NAME_UNKNOWN", "merge"]

#: ``RuleTable.first``: a rule could match but needs an input not known yet.
UNDECIDED = -3
#: In ``names``: the name is not known yet (a byte of 1: it matches, 0: not).
NAME_UNKNOWN = 2

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


class RuleTable:
    """Rules in order for ``first()``: each entry a tuple

    ``(commands, src, dst, ports, has_domain, subjective, allow, explicit)``:
    ``commands`` a bit mask of command numbers (-1: any), ``src``/``dst`` a
    ``RangeSet`` or None, ``ports`` a ``Spans`` or None, and four flags:
    the rule names a domain, it has conditions on the asker, it allows, it
    names the destination (only such an allow opens a protected one).
    """

    __slots__ = ("_entries",)

    def __init__(self, entries: Iterable[tuple[Any, ...]] = ()) -> None:
        self._entries = tuple(entries)

    def __len__(self) -> int:
        return len(self._entries)

    def first(self, command: int, client: Optional[tuple[int, int]], passes: bytes,
              names: Optional[bytes], ip: Optional[tuple[int, int]], port: int, protected: bool,
              inner: tuple[int, ...]) -> int:
        """The index of the first rule that matches, -1 for none, or ``UNDECIDED``.

        ``client`` and ``ip`` are ``ip_key`` tuples or None (the client's
        address unknown; the destination's not known yet: a name before its
        lookup).  ``passes``: one byte per rule, non-zero where the asker
        meets the rule's conditions on users, groups, protocol and USERID;
        ``names``: likewise where the requested name matches the rule's
        ``domain``, ``NAME_UNKNOWN`` where the name is not known yet (None: an
        address was requested, which no ``domain`` matches); ``port`` -1: not
        known yet.  The first rule that could match only once an unknown
        input is known makes the answer ``UNDECIDED``.  ``protected``: the
        SSRF-safe default covers
        ``ip``, so only an explicit allow decides; ``inner``: the IPv4
        addresses ``ip`` carries (``embedded_ipv4``).
        """
        if len(passes) < len(self._entries):
            raise ValueError(f"passes has {len(passes)} bytes for {len(self._entries)} rules")
        if names is not None and len(names) < len(self._entries):
            raise ValueError(f"names has {len(names)} bytes for {len(self._entries)} rules")
        if len(inner) > 2:
            raise ValueError("an IPv6 address carries at most two IPv4 addresses")
        if ip is not None and not 0 <= ip[1] < _LIMIT128:
            raise ValueError(f"not an address: {ip!r}")
        for i, (commands, src, dst, ports, has_domain, subjective, allow, explicit) in enumerate(
                self._entries):
            if not (commands == -1 or (0 <= command < 64 and (commands >> command) & 1)):
                continue
            if src is not None and (client is None or not src.contains(client)):
                continue
            if subjective and not passes[i]:
                continue
            undecided = False  # a test whose input is not known yet
            if ports is not None:
                if port < 0:
                    undecided = True
                elif not ports.has(port):
                    continue
            if has_domain:
                if names is None or names[i] == 0:
                    continue  # an address is not a name
                undecided = undecided or names[i] == NAME_UNKNOWN
            if dst is not None and ip is None:
                undecided = True
            elif dst is not None and not dst.contains(ip):
                # The IPv4 inside: a deny matches when one is in range, an
                # allow only when all are (Teredo carries two).
                if not inner:
                    continue
                inside = allow
                for v in inner:
                    if dst.v4.has(v) != allow:
                        inside = not allow
                        break
                if not inside:
                    continue
            if undecided:
                return UNDECIDED  # judged again once the inputs are known
            if allow and protected and not explicit:
                continue  # only an allow that names the destination opens it
            return i
        return -1
