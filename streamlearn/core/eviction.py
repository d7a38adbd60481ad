"""Which join-state entries go first: per partition, the keys oldest first with their stamps.

After a restart the store holds every waiting event of the partitions the
worker owns (a million, say). Indexing them in one pass held the event loop
for seconds before the first answer, so the index is built from what a scan
of the store finds, a chunk at a time (``found``, then ``finish``), while
the worker serves. What is written meanwhile (``stamped``, ``removed``) is
journaled and wins over what the scan read, whenever it read it. Until a
partition is ``ready``, nothing of it is evicted: eviction comes late, never
wrong.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterable


class EvictionIndex:
    """The eviction order of each partition's entries (their stamps: when each was written, or restamped)."""

    def __init__(self) -> None:
        self._index: dict[int, OrderedDict[bytes, float]] = {}
        self._complete = False   # built: a partition not indexed holds nothing
        self._found: dict[int, list[tuple[float, bytes]]] = {}   # what the build's scan found so far
        self._journal: dict[int, OrderedDict[bytes, float | None]] = {}   # written while not ready (None: removed)

    def ready(self, partition: int) -> bool:
        return self._complete or partition in self._index

    def of(self, partition: int) -> OrderedDict[bytes, float]:
        """A ready partition's keys, oldest first: the caller evicts from the front."""
        assert self.ready(partition)
        return self._index.setdefault(partition, OrderedDict())

    def stamped(self, partition: int, key: bytes, written: float) -> None:
        """``key`` was written with stamp ``written``: it is now the partition's newest."""
        order: OrderedDict = self.of(partition) if self.ready(partition) else \
            self._journal.setdefault(partition, OrderedDict())
        order.pop(key, None)
        order[key] = written

    def removed(self, partition: int, key: bytes) -> None:
        if self.ready(partition):
            self.of(partition).pop(key, None)
        else:
            self._journal.setdefault(partition, OrderedDict())[key] = None

    def found(self, entries: Iterable[tuple[int, float, bytes]]) -> None:
        """Entries the scan read from the store: (partition, stamp, key); those of ready partitions are known."""
        for partition, written, key in entries:
            if not self.ready(partition):
                self._found.setdefault(partition, []).append((written, key))

    def finish(self) -> None:
        """The scan read the whole store: every partition is ready, its journal applied over what was found."""
        for partition, entries in self._found.items():
            entries.sort()
            self._index[partition] = OrderedDict((key, written) for written, key in entries)
        for partition, journal in self._journal.items():
            order = self._index.setdefault(partition, OrderedDict())
            for key, written in journal.items():
                order.pop(key, None)
                if written is not None:
                    order[key] = written
        self._found, self._journal, self._complete = {}, {}, True

    def forget(self, keep: set[int]) -> None:
        """A rebalance: only ``keep``'s partitions stay indexed; the others are scanned for again."""
        for partition in list(self._index):
            if partition not in keep:
                del self._index[partition]
        self._found, self._journal, self._complete = {}, {}, False

    def size(self) -> int:
        """Entries indexed, found by a scan under way, or written since it began (an estimate while it runs)."""
        return (sum(len(i) for i in self._index.values()) + sum(len(f) for f in self._found.values())
                + sum(1 for j in self._journal.values() for w in j.values() if w is not None))
