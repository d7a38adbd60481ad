"""The event/label join state: two changelog-backed tables, bounded.

Features and labels travel on different topics through different routers, so
either may reach the owner first. ``pending`` keeps each predicted event's
features until its label comes; ``early`` keeps a label that came before its
event's features, until they come. Both are keyed ``model \\x1f event_id``
and hold JSON, and both are written by the agent handling the key's
partition, so entries land in that partition's changelog and move with the
model key on a rebalance.

Bounds: an entry older than its time-to-live is refused at lookup (a late
label is told its event *expired*); it is evicted, oldest first, once twice
the time-to-live has passed, whenever its partition is written or ticked; a
partition never holds more than ``max_per_partition`` entries.

Writes name their partition (the owner's, where the agent consumed the key's
message): Faust's own ``table[key] = value`` takes it from the event being
iterated, and there is none while an agent handles a batch (``take``).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Callable, MutableMapping

from . import codec
from .routing import partition_for

SEP = b"\x1f"


def join_key(model: str, event_id: str) -> bytes:
    return model.encode() + SEP + event_id.encode()


Write = Callable[[int, bytes, "bytes | None"], None]


def table_writer(table: Any) -> Write:
    """``write(partition, key, value)`` for a Faust table: its changelog in that partition, then its store."""
    def write(partition: int, key: bytes, value: bytes | None) -> None:
        if value is None:
            table.send_changelog(partition, key, None, value_serializer="raw")
            table.data.pop(key, None)
        else:
            table.send_changelog(partition, key, value)
            table.data[key] = value
    return write


def dict_writer(table: MutableMapping[bytes, bytes]) -> Write:
    def write(partition: int, key: bytes, value: bytes | None) -> None:
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
    return write


class BoundedTable:
    """A table of ``{"t": time, ...}`` JSON entries with a TTL and a per-partition size bound."""

    def __init__(self, table: MutableMapping[bytes, bytes], partitions: int, ttl: float,
                 max_per_partition: int, clock: Callable[[], float] = time.time,
                 write: Write | None = None) -> None:
        self.table = table  # read from; written through ``write``
        self.write = write or dict_writer(table)
        self.partitions = partitions
        self.ttl = ttl
        self.max_per_partition = max_per_partition
        self.clock = clock
        # partition -> keys in insertion (= time) order, built lazily
        self._index: dict[int, OrderedDict[bytes, float]] = {}

    def get(self, key: bytes) -> dict[str, Any] | None:
        """The entry under key, or None; ``entry["expired"]`` says if past its TTL."""
        raw = self.table.get(key)
        if raw is None:
            return None
        entry = codec.loads(raw)
        entry["expired"] = self.clock() - entry["t"] > self.ttl
        return entry

    def put(self, partition: int, key: bytes, entry: dict[str, Any], *, fresh: bool = True) -> list[dict]:
        """Write an entry (``fresh``: stamped now and re-indexed); return the entries evicted."""
        entry.pop("expired", None)
        index = self._partition_index(partition)
        if fresh:
            entry["t"] = self.clock()
            index.pop(key, None)
            index[key] = entry["t"]
        self.write(partition, key, codec.dumps(entry))  # write back, or the changelog misses it
        return self.evict(partition)

    def delete(self, partition: int, key: bytes) -> None:
        self._partition_index(partition).pop(key, None)
        if key in self.table:
            self.write(partition, key, None)

    def evict(self, partition: int) -> list[dict]:
        """Remove the partition's expired entries and those over the size bound, oldest first."""
        index = self._partition_index(partition)
        cutoff = self.clock() - 2 * self.ttl  # expired entries linger one more TTL to tell late from unknown
        evicted = []
        while index:
            key, t = next(iter(index.items()))
            if t >= cutoff and len(index) <= self.max_per_partition:
                break
            index.popitem(last=False)
            raw = self.table.get(key)
            if raw is not None:
                self.write(partition, key, None)
                evicted.append(codec.loads(raw))
        return evicted

    def forget_partitions(self, keep: set[int]) -> None:
        """Drop the eviction index of partitions no longer assigned."""
        for p in list(self._index):
            if p not in keep:
                del self._index[p]

    def size(self) -> int:
        return sum(len(i) for i in self._index.values())

    def _partition_index(self, partition: int) -> OrderedDict[bytes, float]:
        index = self._index.get(partition)
        if index is None:
            # First use since the partition was assigned: index what the
            # changelog restored for it. The table also holds the other
            # partitions (and standbys), so filter by the key's partition.
            found = []
            for key, raw in list(self.table.items()):
                model = key.split(SEP, 1)[0].decode()
                if partition_for(model, self.partitions) == partition:
                    found.append((codec.loads(raw)["t"], key))
            found.sort()
            index = self._index[partition] = OrderedDict((k, t) for t, k in found)
        return index
