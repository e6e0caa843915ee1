# cython: language_level=3
from libc.stdint cimport uint64_t


# One inclusive range of 128-bit integers, each bound as (high word, low word).
cdef struct Span:
    uint64_t lo_h
    uint64_t lo_l
    uint64_t hi_h
    uint64_t hi_l


cdef class Spans:
    cdef Span* spans
    cdef Py_ssize_t count
    cdef readonly tuple pairs

    cdef bint has_words(self, uint64_t h, uint64_t l) noexcept nogil
    cpdef bint has(self, object n) except -1


cdef class RangeSet:
    cdef readonly Spans v4
    cdef readonly Spans v6

    cpdef bint contains(self, tuple key) except -1
