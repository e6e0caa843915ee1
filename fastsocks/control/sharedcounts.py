"""Counts shared between worker processes: one anonymous shared mapping.

The connection counts that limits hold across workers (``limits.Limits``)
live here.  The mapping is made before the workers are forked (MAP_SHARED |
MAP_ANONYMOUS), one hash table per worker: each process writes only its own
table and reads the others', so there is no lock to hold and nothing a
crashed worker can leave held; a worker wipes its table when it starts
(``attach``), which also clears what a dead predecessor counted.

Beside the tables, each worker has a few gauges (``set_gauge``/``gauge``):
one word per worker per gauge, written only by its owner, summed by anyone.
A gauge cannot be refused for a full table, which matters for the count of
unfinished handshakes (``control/handshakes.py``): it must hold under the
very flood that fills the tables with per-address keys.
"""

from __future__ import annotations

import mmap

__all__ = ["SharedCounts"]


class SharedCounts:
    """Per-process hash tables of signed 64-bit counts in one shared mapping.

    Table ``i`` belongs to worker ``i``: only it writes there (linear
    probing, deletion by backward shift, so no tombstones pile up); anyone
    reads every table and sums.  Keys are 62-bit hashes of tuples: Python's
    string hashing is seeded per interpreter, and forked workers share the
    master's seed.
    """

    SLOTS = 1 << 16  # per table; a process holds < 10,000 connections (fd limit)
    GAUGES = 4  # per worker, after all the tables

    def __init__(self, tables: int = 1) -> None:
        self.tables = tables
        # MAP_SHARED | MAP_ANONYMOUS: the tables, then GAUGES words per worker.
        self.map = mmap.mmap(-1, tables * (self.SLOTS * 16 + self.GAUGES * 8))
        self.words = memoryview(self.map).cast("q")
        self.own = 0
        self.used = 0

    def attach(self, index: int) -> None:
        """This process is worker ``index``: wipe its table and gauges (a dead predecessor's)."""
        self.own = index
        start = index * self.SLOTS * 16
        self.map[start:start + self.SLOTS * 16] = bytes(self.SLOTS * 16)
        self.used = 0
        for gauge in range(self.GAUGES):
            self.set_gauge(gauge, 0)

    def set_gauge(self, gauge: int, value: int) -> None:
        """This process's value of gauge ``gauge`` (0 to GAUGES - 1)."""
        self.words[self.tables * self.SLOTS * 2 + self.own * self.GAUGES + gauge] = value

    def gauge(self, gauge: int, others: bool = False) -> int:
        """Gauge ``gauge`` summed over every process (``others``: but this one)."""
        words = self.words
        base = self.tables * self.SLOTS * 2 + gauge
        step = self.GAUGES
        if not others:
            return sum(words[base + i * step] for i in range(self.tables))
        own = self.own
        return sum(words[base + i * step] for i in range(self.tables) if i != own)

    def get(self, key: int, others: bool = False) -> int:
        """The sum over every process's table (``others``: but this one's)."""
        words = self.words
        mask = self.SLOTS - 1
        total = 0
        for table in range(self.tables):
            if others and table == self.own:
                continue
            base = table * self.SLOTS * 2
            i = key & mask
            while True:
                j = base + 2 * i
                k = words[j]
                if k == key:
                    total += words[j + 1]
                    break
                if k == 0:
                    break
                i = (i + 1) & mask
        return total

    def add(self, key: int, delta: int) -> int | None:
        """Add ``delta`` to this process's count: the new count, None when the table is full."""
        words = self.words
        mask = self.SLOTS - 1
        base = self.own * self.SLOTS * 2
        i = key & mask
        while True:
            j = base + 2 * i
            k = words[j]
            if k == key:
                value = words[j + 1] + delta
                if value:
                    words[j + 1] = value
                else:
                    self._delete(i)
                return value
            if k == 0:
                if delta == 0:
                    return 0
                if self.used >= self.SLOTS * 3 // 4:
                    return None
                words[j + 1] = delta
                words[j] = key
                self.used += 1
                return delta
            i = (i + 1) & mask

    def drop(self, key: int) -> None:
        """Remove ``key`` from this process's table, whatever its count."""
        words = self.words
        mask = self.SLOTS - 1
        base = self.own * self.SLOTS * 2
        i = key & mask
        while True:
            k = words[base + 2 * i]
            if k == key:
                self._delete(i)
                return
            if k == 0:
                return
            i = (i + 1) & mask

    def _delete(self, i: int) -> None:
        words = self.words
        mask = self.SLOTS - 1
        base = self.own * self.SLOTS * 2
        j = i
        while True:
            j = (j + 1) & mask
            k = words[base + 2 * j]
            if k == 0:
                break
            home = k & mask
            # Move the entry at j back into the hole at i unless its home
            # lies cyclically in (i, j].
            if (i <= j and (home <= i or home > j)) or (i > j and home <= i and home > j):
                words[base + 2 * i + 1] = words[base + 2 * j + 1]
                words[base + 2 * i] = k
                i = j
        words[base + 2 * i] = 0
        words[base + 2 * i + 1] = 0
        self.used -= 1
