# cython: language_level=3, embedsignature=True
"""Lookup tables built once (on start and reload) and consulted per connection.

* ``Spans``: a set of integers written as inclusive (low, high) ranges of up
  to 128 bits (an IPv6 address is one), merged and sorted into a C array and
  looked up by bisection.  A lookup costs O(log n) comparisons whatever the
  size: a 100 000-network deny list costs a connection 17 of them, not a
  Python loop over the list.  Port sets are ``Spans`` too.
* ``RangeSet``: the IPv4 and the IPv6 ``Spans`` of a list of networks,
  looked up with an ``ip_key`` ``(4 or 6, int)``.

A 128-bit bound is two 64-bit words compared high word first, so the build
needs no 128-bit integer type (MSVC has none).  The twin is ``_tables_py``
(``bisect`` on two lists); both merge the same way and answer the same.
"""

from libc.stdint cimport uint64_t
from libc.stdlib cimport malloc, free
from cpython.long cimport PyLong_AsUnsignedLongLongMask

IMPLEMENTATION = "c"

__all__ = ["IMPLEMENTATION", "Spans", "RangeSet", "merge"]

cdef object _LIMIT64 = 1 << 64
cdef object _LIMIT128 = 1 << 128


def merge(pairs):
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
    out = []
    for lo, hi in checked:
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return tuple(out)


cdef inline bint _le(uint64_t ah, uint64_t al, uint64_t bh, uint64_t bl) noexcept nogil:
    """(ah, al) <= (bh, bl) as 128-bit integers."""
    return ah < bh or (ah == bh and al <= bl)


cdef class Spans:
    """A set of integers given as inclusive ranges; ``has(n)`` by bisection."""

    def __cinit__(self, pairs=()):
        cdef Py_ssize_t i
        merged = merge(pairs)
        self.count = len(merged)
        self.spans = <Span*>malloc((self.count or 1) * sizeof(Span))
        if self.spans == NULL:
            raise MemoryError()
        for i in range(self.count):
            lo, hi = merged[i]
            self.spans[i].lo_h = PyLong_AsUnsignedLongLongMask(lo >> 64)
            self.spans[i].lo_l = PyLong_AsUnsignedLongLongMask(lo)
            self.spans[i].hi_h = PyLong_AsUnsignedLongLongMask(hi >> 64)
            self.spans[i].hi_l = PyLong_AsUnsignedLongLongMask(hi)
        self.pairs = merged

    def __dealloc__(self):
        free(self.spans)

    cdef bint has_words(self, uint64_t h, uint64_t l) noexcept nogil:
        # The last span whose low bound is <= n, then n against its high bound.
        cdef Py_ssize_t a = 0, b = self.count, m
        cdef Span* s = self.spans
        while a < b:
            m = (a + b) >> 1
            if _le(s[m].lo_h, s[m].lo_l, h, l):
                a = m + 1
            else:
                b = m
        return a > 0 and _le(h, l, s[a - 1].hi_h, s[a - 1].hi_l)

    cpdef bint has(self, object n) except -1:
        """Whether the integer ``n`` is in one of the ranges (False for one out of 0..2**128)."""
        cdef uint64_t h = 0
        if n < 0:
            return False
        if n >= _LIMIT64:
            if n >= _LIMIT128:
                return False
            h = PyLong_AsUnsignedLongLongMask(n >> 64)
        return self.has_words(h, PyLong_AsUnsignedLongLongMask(n))

    def __len__(self):
        return self.count

    def __repr__(self):
        return f"Spans({list(self.pairs)!r})"


cdef class RangeSet:
    """Networks as IPv4 and IPv6 ``Spans``; ``contains((4 or 6, int))``."""

    def __cinit__(self, v4=(), v6=()):
        self.v4 = Spans(v4)
        self.v6 = Spans(v6)

    cpdef bint contains(self, tuple key) except -1:
        """Whether the address ``key`` (an ``ip_key``: ``(4, int)`` or ``(6, int)``) is in a range."""
        return (self.v4 if key[0] == 4 else self.v6).has(key[1])

    def __len__(self):
        return self.v4.count + self.v6.count

    def __repr__(self):
        return f"RangeSet(v4={list(self.v4.pairs)!r}, v6={list(self.v6.pairs)!r})"
