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

Entries live in the table's in-memory store as their JSON bytes, the same
bytes the changelog holds: encoded once when written, decoded when read. As
dicts (until 2026-12-03) an entry took 1.2-1.6 KB of worker memory and was
several objects for Python's garbage collector to scan; as bytes, 0.7 KB, and
the longest full collection of a 3-minute soak fell from 0.66 s to 0.34 s
(docs/operations.md, "Soak"). A write changes the store at once and is written behind to
the changelog (``outbox.WriteBehind``): once per key per batch, acked before
the batch's inputs are. Writes name their partition (the
owner's, where the agent consumed the key's message): Faust's own
``table[key] = value`` takes it from the event being iterated, and a batch
holds many.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, MutableMapping

from . import codec
from .routing import partition_for

if TYPE_CHECKING:
    from .outbox import WriteBehind

SEP = b"\x1f"


def join_key(model: str, event_id: str) -> bytes:
    return model.encode() + SEP + event_id.encode()


Write = Callable[[int, bytes, "bytes | None"], None]   # (partition, key, the entry's JSON or None: deleted)


def table_writer(table: Any, behind: "WriteBehind") -> Write:
    """``write(partition, key, entry)`` for a Faust table: its store now, its changelog behind."""
    changelog = table.changelog_topic.get_topic_name()

    def write(partition: int, key: bytes, entry: bytes | None) -> None:
        if entry is None:
            table.data.pop(key, None)
        else:
            table.data[key] = entry
        behind.stage(changelog, partition, key, entry)
    return write


def dict_writer(table: MutableMapping[bytes, Any]) -> Write:
    def write(partition: int, key: bytes, entry: bytes | None) -> None:
        if entry is None:
            table.pop(key, None)
        else:
            table[key] = entry
    return write


def _entry(value: Any) -> dict:
    """A stored entry, decoded: its JSON bytes (a dict from a test's plain dict store is copied)."""
    return dict(value) if isinstance(value, dict) else codec.loads(value)


class BoundedTable:
    """A table of ``{"t": time, ...}`` JSON entries with a TTL and a per-partition size bound."""

    def __init__(self, table: Any, partitions: int, ttl: float,
                 max_per_partition: int, clock: Callable[[], float] = time.time,
                 write: Write | None = None) -> None:
        self.table = table
        self.data: MutableMapping[bytes, Any] = getattr(table, "data", table)   # read from; written by ``write``
        self.write = write or dict_writer(self.data)
        self.partitions = partitions
        self.ttl = ttl
        self.max_per_partition = max_per_partition
        self.clock = clock
        # partition -> keys in insertion (= time) order, built lazily
        self._index: dict[int, OrderedDict[bytes, float]] = {}

    def get(self, key: bytes) -> dict[str, Any] | None:
        """A copy of the entry under key, or None; ``entry["expired"]`` says if past its TTL."""
        value = self.data.get(key)
        if value is None:
            return None
        entry = _entry(value)
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
        self.write(partition, key, codec.dumps_kept(entry))  # write back, or the changelog misses it
        return self.evict(partition)

    def delete(self, partition: int, key: bytes) -> None:
        self._partition_index(partition).pop(key, None)
        if key in self.data:
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
            value = self.data.get(key)
            if value is not None:
                self.write(partition, key, None)
                evicted.append(_entry(value))
        return evicted

    def forget_partitions(self, keep: set[int]) -> None:
        """Drop the eviction index of partitions no longer assigned."""
        for p in list(self._index):
            if p not in keep:
                del self._index[p]

    def drop_other_partitions(self, keep: set[int]) -> int:
        """Drop from memory (not from the changelog) the entries of partitions this worker no longer owns.

        Their new owner has them from the changelog. Kept here they would only
        grow the memory, and come back stale if the partition returns: its
        recovery then replays the changelog over them, but compaction may have
        removed the tombstone of an entry deleted meanwhile. Returns how many.
        """
        gone = [key for key in list(self.data)
                if partition_for(key.split(SEP, 1)[0].decode(), self.partitions) not in keep]
        for key in gone:
            self.data.pop(key, None)
        return len(gone)

    def size(self) -> int:
        return sum(len(i) for i in self._index.values())

    def _partition_index(self, partition: int) -> OrderedDict[bytes, float]:
        index = self._index.get(partition)
        if index is None:
            # First use since the partition was assigned: index what the
            # changelog restored for it. The table also holds the other
            # partitions (and standbys), so filter by the key's partition.
            found = []
            for key, value in list(self.data.items()):
                model = key.split(SEP, 1)[0].decode()
                if partition_for(model, self.partitions) == partition:
                    found.append((_entry(value)["t"], key))
            found.sort()
            index = self._index[partition] = OrderedDict((k, t) for t, k in found)
        return index
