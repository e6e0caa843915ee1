# cython: language_level=3, embedsignature=True
"""Lookup tables built once (on start and reload) and consulted per connection.

* ``Spans``: a set of integers written as inclusive (low, high) ranges of up
  to 128 bits (an IPv6 address is one), merged and sorted into a C array and
  looked up by bisection.  A lookup costs O(log n) comparisons whatever the
  size: a 100 000-network deny list costs a connection 17 of them, not a
  Python loop over the list.  Port sets are ``Spans`` too.
* ``RangeSet``: the IPv4 and the IPv6 ``Spans`` of a list of networks,
  looked up with an ``ip_key`` ``(4 or 6, int)``.
* ``RuleTable``: the ``[[rules]]`` in order, as C structs pointing into
  those tables: the first matching rule is found in one C loop, one
  bisection per table, however many rules there are.  What depends on the
  asker alone (users, groups, protocol, USERID) and on the requested name
  alone (``domain``) comes in as one byte per rule each, computed by the
  caller once per asker and once per name.

A 128-bit bound is two 64-bit words compared high word first, so the build
needs no 128-bit integer type (MSVC has none).  The twin is ``_tables_py``
(``bisect`` on two lists); both merge the same way and answer the same.
"""

from libc.stdint cimport uint64_t
from libc.stdlib cimport calloc, malloc, free
from cpython.long cimport PyLong_AsUnsignedLongLongMask

IMPLEMENTATION = "c"

__all__ = ["IMPLEMENTATION", "Spans", "RangeSet", "RuleTable", "UNDECIDED", "NAME_UNKNOWN", "merge"]

cdef enum:
    _UNDECIDED = -3
    _NAME_UNKNOWN = 2

#: ``RuleTable.first``: a rule could match but needs an input not known yet.
UNDECIDED = _UNDECIDED
#: In ``names``: the name is not known yet (a byte of 1: it matches, 0: not).
NAME_UNKNOWN = _NAME_UNKNOWN

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


cdef inline bint _span_has(const Span* s, Py_ssize_t count, uint64_t h, uint64_t l) noexcept nogil:
    # The last span whose low bound is <= n, then n against its high bound.
    cdef Py_ssize_t a = 0, b = count, m
    while a < b:
        m = (a + b) >> 1
        if _le(s[m].lo_h, s[m].lo_l, h, l):
            a = m + 1
        else:
            b = m
    return a > 0 and _le(h, l, s[a - 1].hi_h, s[a - 1].hi_l)


cdef inline bint _words(object n, uint64_t* h, uint64_t* l) except -1:
    """n as two 64-bit words; False when it is out of 0..2**128."""
    if n < 0:
        return False
    h[0] = 0
    if n >= _LIMIT64:
        if n >= _LIMIT128:
            return False
        h[0] = PyLong_AsUnsignedLongLongMask(n >> 64)
    l[0] = PyLong_AsUnsignedLongLongMask(n)
    return True


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
        return _span_has(self.spans, self.count, h, l)

    cpdef bint has(self, object n) except -1:
        """Whether the integer ``n`` is in one of the ranges (False for one out of 0..2**128)."""
        cdef uint64_t h, l
        return _words(n, &h, &l) and _span_has(self.spans, self.count, h, l)

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


cdef inline void _point(Entry* e, int which, Spans spans):
    # which: 0 src4, 1 src6, 2 dst4, 3 dst6, 4 ports
    e.tables[which] = spans.spans
    e.sizes[which] = spans.count


cdef class RuleTable:
    """Rules in order for ``first()``: each entry a tuple

    ``(commands, src, dst, ports, has_domain, subjective, allow, explicit)``:
    ``commands`` a bit mask of command numbers (-1: any), ``src``/``dst`` a
    ``RangeSet`` or None, ``ports`` a ``Spans`` or None, and four flags:
    the rule names a domain, it has conditions on the asker, it allows, it
    names the destination (only such an allow opens a protected one).
    """

    def __cinit__(self, entries=()):
        cdef Py_ssize_t i
        cdef Entry* e
        self.keep = tuple(entries)
        self.count = len(self.keep)
        self.entries = <Entry*>calloc(self.count or 1, sizeof(Entry))
        if self.entries == NULL:
            raise MemoryError()
        for i in range(self.count):
            commands, src, dst, ports, has_domain, subjective, allow, explicit = self.keep[i]
            e = &self.entries[i]
            e.commands = <uint64_t>PyLong_AsUnsignedLongLongMask(commands)
            e.has_src = src is not None
            e.has_dst = dst is not None
            e.has_ports = ports is not None
            if e.has_src:
                _point(e, 0, (<RangeSet?>src).v4)
                _point(e, 1, (<RangeSet>src).v6)
            if e.has_dst:
                _point(e, 2, (<RangeSet?>dst).v4)
                _point(e, 3, (<RangeSet>dst).v6)
            if e.has_ports:
                _point(e, 4, <Spans?>ports)
            e.has_domain = bool(has_domain)
            e.subjective = bool(subjective)
            e.allow = bool(allow)
            e.explicit = bool(explicit)

    def __dealloc__(self):
        free(self.entries)

    def __len__(self):
        return self.count

    cpdef Py_ssize_t first(self, int command, object client, bytes passes, bytes names, object ip,
                           int port, bint protected, tuple inner) except -2:
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
        cdef uint64_t ch = 0, cl = 0, h = 0, l = 0, v
        cdef uint64_t inner4[2]
        cdef Py_ssize_t i, k, ninner = len(inner)
        cdef Py_ssize_t at = -1
        cdef Py_ssize_t client_at = -1
        cdef const unsigned char* admitted = passes
        cdef const unsigned char* named = NULL
        cdef Entry* e
        cdef bint inside, undecided
        if len(passes) < self.count:
            raise ValueError(f"passes has {len(passes)} bytes for {self.count} rules")
        if names is not None:
            if len(names) < self.count:
                raise ValueError(f"names has {len(names)} bytes for {self.count} rules")
            named = names
        if ninner > 2:
            raise ValueError("an IPv6 address carries at most two IPv4 addresses")
        if ip is not None:
            if not _words(ip[1], &h, &l):
                raise ValueError(f"not an address: {ip!r}")
            at = 0 if ip[0] == 4 else 1
        if client is not None and _words(client[1], &ch, &cl):
            client_at = 0 if client[0] == 4 else 1
        for k in range(ninner):
            inner4[k] = PyLong_AsUnsignedLongLongMask(inner[k])
        for i in range(self.count):
            e = &self.entries[i]
            if not (e.commands == <uint64_t>-1 or (0 <= command < 64 and (e.commands >> command) & 1)):
                continue
            if e.has_src and (client_at < 0 or not _span_has(
                    e.tables[client_at], e.sizes[client_at], ch, cl)):
                continue
            if e.subjective and not admitted[i]:
                continue
            undecided = False  # a test whose input is not known yet
            if e.has_ports:
                if port < 0:
                    undecided = True
                elif not _span_has(e.tables[4], e.sizes[4], 0, <uint64_t>port):
                    continue
            if e.has_domain:
                if named == NULL or named[i] == 0:
                    continue  # an address is not a name
                undecided = undecided or named[i] == _NAME_UNKNOWN
            if e.has_dst and at < 0:
                undecided = True
            elif e.has_dst and not _span_has(e.tables[2 + at], e.sizes[2 + at], h, l):
                # The IPv4 inside: a deny matches when one is in range, an
                # allow only when all are (Teredo carries two).
                if ninner == 0:
                    continue
                inside = e.allow
                for k in range(ninner):
                    v = inner4[k]
                    if _span_has(e.tables[2], e.sizes[2], 0, v) != e.allow:
                        inside = not e.allow
                        break
                if not inside:
                    continue
            if undecided:
                return _UNDECIDED  # judged again once the inputs are known
            if e.allow and protected and not e.explicit:
                continue  # only an allow that names the destination opens it
            return i
        return -1
