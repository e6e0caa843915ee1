# cython: language_level=3

cdef class Half:
    cdef readonly Relay relay
    cdef readonly object transport
    cdef readonly Half peer
    cdef readonly unsigned long long nbytes
    cdef readonly bint eof
    cdef readonly bint lost
    cdef readonly str name
    cdef public object buckets
    cdef readonly bint held
    cdef readonly bint blocked

    cdef _charge(self, Py_ssize_t n)


cdef class Relay:
    cdef readonly object loop
    cdef readonly Half client
    cdef readonly Half upstream
    cdef public str reason
    cdef readonly double idle_timeout
    cdef readonly bint started
    cdef object _on_connected
    cdef object _on_close
    cdef object _timer
    cdef int _idle_ticks
    cdef unsigned long long _last_total
    cdef bint _closed
    cdef public tuple throttles

    cdef _half_made(self, Half half)
    cdef _half_eof(self, Half half)
    cdef _half_lost(self, Half half, object exc)
    cdef _finish(self)
    cdef _release_all(self)
