"""The event/label join state: two changelog-backed tables, bounded (what is joined: ``core.join``).

Features and labels travel on different topics through different routers, so
either may reach the owner first. ``pending`` keeps each predicted event's
features until its label comes; ``early`` keeps a label that came before its
event's features, until they come. Both are keyed ``model \\x1f event_id``
and hold JSON, and both are written by the agent handling the key's
partition, so entries land in that partition's changelog and move with the
model key on a rebalance.

Bounds: a label for an entry older than its time-to-live is refused (a late
label is told its event *expired*, ``core.join``); it is evicted, oldest first, once twice
the time-to-live has passed, whenever its partition is written or ticked; a
partition never holds more than ``max_per_partition`` entries.

Entries live in the table's store as their JSON bytes (``codec``: the same
bytes the changelog holds), encoded once when written and decoded into the
typed values of ``core.join`` when read: a million waiting events stay bytes,
not objects for Python's garbage collector to scan.

A write is written behind to the changelog (``outbox.WriteBehind``): once per
key per batch, acked before the batch's inputs are. Writes name their
partition (the owner's, where the agent consumed the key's message): Faust's
own ``table[key] = value`` takes it from the event being iterated, and a
batch holds many. The store takes a write only once the changelog has it
(``TableState``); until then it is read from memory. So the store always
holds a prefix of its changelog, up to the offset it records: with RocksDB, a
worker that restarts, even after a SIGKILL, reads only the changelog after
that offset, and never keeps a change the changelog lacks (say a deletion
whose tombstone was never sent, which would lose a replayed label's join).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Generic, Iterator, MutableMapping, Protocol, TypeVar

from faust.types import TP

from streamlearn.core.eviction import EvictionIndex
from streamlearn.core.offsets import held_through

from .routing import partition_for

if TYPE_CHECKING:
    from .outbox import WriteBehind

SEP = b"\x1f"
INDEX_STEP = 5_000   # entries of the store a step of the eviction index's build reads


def join_key(model: str, event_id: str) -> bytes:
    return model.encode() + SEP + event_id.encode()


Write = Callable[[int, bytes, "bytes | None"], None]   # (partition, key, the entry's JSON or None: deleted)


def join_model(key: bytes) -> str:
    """The model key of a join-state key (``model \\x1f event_id``)."""
    return key.split(SEP, 1)[0].decode()


class TableState:
    """One Faust table, read and written by key and partition, its store a prefix of its changelog.

    Its store (memory or RocksDB) takes a write once the changelog has it;
    writes on their way are read from memory, so readers see every write at
    once. A write whose partition has moved away by the time it is delivered
    is not stored: the partition's next owner reads it from the changelog.
    The store's persisted offset (RocksDB: where a restart resumes reading
    the changelog) follows the delivered writes it took, while they follow
    one another in the changelog (``core.offsets.held_through``): a jump
    is another writer's records, read back at the next recovery.

    With ``position`` (a value's place in its key's history), a value never
    replaces one further on: not when delivered, not when recovered, not when
    read against a staged one. Writes can land late: a worker cut off from
    the group goes on writing, and its producer delivers once its link mends,
    after the partition's next owner wrote further.
    """

    def __init__(self, table: Any, behind: "WriteBehind", assigned: Callable[[], set], partitions: int,
                 model_of: Callable[[bytes], str] = join_model, position: Callable[[bytes], float] | None = None,
                 on_stale: Callable[[bytes], None] = lambda key: None) -> None:
        self.store = table.data
        self.model_of = model_of   # a key's model key, whose partition owns it
        self.changelog = table.changelog_topic.get_topic_name()
        self.behind = behind
        self.assigned = assigned   # the topic-partitions the worker holds now (Ownership.assigned)
        self.partitions = partitions
        # Faust's RocksDB store: a database per partition, open while assigned (revoked ones are closed, so
        # they hold nothing in memory). Read and written here by the key's partition: Faust's own path
        # takes the partition from the event being iterated (and costs eight times as much a read).
        self._dbs: dict[int, Any] | None = getattr(self.store, "_dbs", None)
        self.holds_other_partitions = self._dbs is None
        self._waiting: dict[bytes, bytes | None] = {}   # key -> value written, not yet in the store
        behind.on_delivered(self.changelog, self._delivered)
        self.position = position   # a value's place in its key's history (checkpoints: the training offset)
        self.on_stale = on_stale   # told each key whose value was refused as behind the one held
        if position is not None:
            apply = table.apply_changelog_batch
            table.apply_changelog_batch = lambda batch: apply(self._forward_only(batch))

    def write(self, partition: int, key: bytes, value: bytes | None) -> None:
        self._waiting[key] = value
        self.behind.stage(self.changelog, partition, key, value)

    def get(self, key: bytes, default: Any = None) -> Any:
        if key in self._waiting:
            value = self._waiting[key]
            if value is not None and self.position is not None:
                value = self._further(self._stored(key), value)
        else:
            value = self._stored(key)
        return default if value is None else value

    def _stored(self, key: bytes) -> bytes | None:
        if self._dbs is None:
            return self.store.get(key)
        db = self._dbs.get(self.partition_of(key))
        return db.get(key) if db is not None else None

    def _further(self, held: bytes | None, value: bytes) -> bytes:
        """Of a value held and a new one, the one further on (the new one on a tie)."""
        assert self.position is not None
        return held if held is not None and self.position(value) < self.position(held) else value

    def __contains__(self, key: bytes) -> bool:
        return self.get(key) is not None

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every entry, one at a time (a million of them would take 300 MB as a list); do not write meanwhile."""
        waiting = self._waiting
        # RocksDB: its databases' bytes as they are (Faust's ``items`` decodes each through its codec registry)
        stored = self.store.items() if self._dbs is None else self.store._iteritems()
        for key, value in stored:
            if key not in waiting:
                yield key, value
        for key in list(waiting):
            value = self.get(key)
            if value is not None:
                yield key, value

    def __iter__(self) -> Iterator[bytes]:
        return (key for key, _ in self.items())

    def scan(self, limit: int) -> Iterator[list[tuple[bytes, bytes]]]:
        """Every entry, ``limit`` at a time, the store's bytes as they are. Writes and rebalances may come
        between chunks: an entry written meanwhile may be read with either value, or not at all (whoever
        scans learns of writes from its own), and a partition revoked meanwhile is read no further."""
        waiting = self._waiting
        if self._dbs is None:   # the memory store: a copy of its keys
            keys = list(self.store.keys())
            for i in range(0, len(keys), limit):
                yield [(key, value) for key in keys[i:i + limit]
                       if key not in waiting and (value := self.store.get(key)) is not None]
        else:                   # RocksDB: each database from the key after the last one read
            offset_key = self.store.offset_key
            for partition in sorted(self._dbs):
                after = None
                while (db := self._dbs.get(partition)) is not None:
                    it = db.iter()
                    if after is None:
                        it.seek_to_first()
                    else:
                        it.seek(after)
                        if it.valid() and it.key() == after:
                            it.next()
                    chunk = []
                    while len(chunk) < limit and it.valid():
                        key = it.key()
                        if key != offset_key and key not in waiting:
                            chunk.append((key, it.value()))
                        it.next()
                    ended = not it.valid()
                    del it
                    if chunk:
                        after = chunk[-1][0]
                        yield chunk
                    if ended:
                        break
        yield [(key, value) for key, value in list(waiting.items()) if value is not None]

    def partition_of(self, key: bytes) -> int:
        return partition_for(self.model_of(key), self.partitions)

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.write(self.partition_of(key), key, value)

    def pop(self, key: bytes, default: Any = None) -> Any:
        """Delete a key (a tombstone on the changelog); its value, or ``default``."""
        value = self.get(key)
        if value is None:
            return default
        self.write(self.partition_of(key), key, None)
        return value

    def forget(self, key: bytes) -> None:
        """Drop a key from this worker's memory only (not from the changelog): see ``drop_other_partitions``."""
        self._waiting.pop(key, None)
        self.store.pop(key, None)

    def _delivered(self, writes: list[tuple[int, bytes, bytes | None, int]]) -> None:
        assigned = self.assigned()
        offsets: dict[Any, list[int]] = {}
        for partition, key, value, offset in writes:
            tp = TP(self.changelog, partition)
            if tp in assigned and self._store(partition, key, value):
                offsets.setdefault(tp, []).append(offset)
            if key in self._waiting and self._waiting[key] is value:   # not written again since
                del self._waiting[key]
        if self._dbs is None:   # the memory store keeps no offset
            return
        for tp, taken in offsets.items():
            through = held_through(self.store.persisted_offset(tp), taken)
            if through is not None:
                self.store.set_persisted_offset(tp, through)

    def _store(self, partition: int, key: bytes, value: bytes | None) -> bool:
        """Put a delivered write in the store; False if its partition's database is not open (revoked)."""
        if value is not None and self.position is not None:
            held = self._stored(key)
            if held is not None and self._further(held, value) is held:
                self.on_stale(key)
                return self._dbs is None or partition in self._dbs
        if self._dbs is None:        # the memory store: one mapping of every partition's keys
            if value is None:
                self.store.pop(key, None)
            else:
                self.store[key] = value
            return True
        db = self._dbs.get(partition)
        if db is None:
            return False
        if value is None:
            db.delete(key)
        else:
            db.put(key, value)
        return True

    def _forward_only(self, batch: list) -> list:
        """The records of a recovery batch (Faust's changelog events, in order) that go forward: a key's
        value is replaced only by one at the same position or further on; the others are told ``on_stale``."""
        assert self.position is not None
        at: dict[bytes, float | None] = {}   # key -> position of the value it will hold (None: no value)
        kept = []
        for event in batch:
            key, value = event.message.key, event.message.value
            if value is not None:
                if key not in at:
                    held = self._stored(key)
                    at[key] = None if held is None else self.position(held)
                place = self.position(value)
                held_at = at[key]
                if held_at is not None and place < held_at:
                    self.on_stale(key)
                    continue
                at[key] = place
            else:
                at[key] = None
            kept.append(event)
        return kept


def dict_writer(table: MutableMapping[bytes, Any]) -> Write:
    def write(partition: int, key: bytes, entry: bytes | None) -> None:
        if entry is None:
            table.pop(key, None)
        else:
            table[key] = entry
    return write


class Entry(Protocol):
    written: float   # when the entry was stamped: its age decides eviction


E = TypeVar("E", bound=Entry)


class BoundedTable(Generic[E]):
    """A table of entries (``codec``'s join-state values, kept as their JSON) with a TTL and a per-partition
    size bound."""

    def __init__(self, data: "TableState | MutableMapping[bytes, Any]", partitions: int, ttl: float,
                 max_per_partition: int, encode: Callable[[E], bytes], decode: Callable[[bytes], E],
                 clock: Callable[[], float] = time.time, written: Callable[[bytes], float] | None = None) -> None:
        self.data = data   # a TableState; a plain dict in tests
        self.write: Write = getattr(data, "write", None) or dict_writer(data)
        self.partitions = partitions
        self.ttl = ttl
        self.max_per_partition = max_per_partition
        self.encode, self.decode = encode, decode
        self.written = written or (lambda raw: decode(raw).written)   # an encoded entry's stamp
        self.clock = clock
        self._index = EvictionIndex()   # built from the store a step at a time (``_ready``)
        self._scan: Iterator[tuple[Callable[[bytes], int], list[tuple[bytes, bytes]]]] | None = None

    def get(self, key: bytes) -> E | None:
        value = self.data.get(key)
        return None if value is None else self.decode(value)

    def put(self, partition: int, key: bytes, entry: E, *, restamp: bool = True) -> list[E]:
        """Write an entry (``restamp``: its stamp is new, it is indexed as the newest); return those evicted."""
        if restamp:
            self._index.stamped(partition, key, entry.written)
        self.write(partition, key, self.encode(entry))  # write back, or the changelog misses it
        return self.evict(partition)

    def delete(self, partition: int, key: bytes) -> None:
        self._index.removed(partition, key)
        if key in self.data:
            self.write(partition, key, None)

    def evict(self, partition: int) -> list[E]:
        """Remove the partition's expired entries and those over the size bound, oldest first (none while its
        index is being built)."""
        if not self._ready(partition):
            return []
        index = self._index.of(partition)
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
                evicted.append(self.decode(value))
        return evicted

    def forget_partitions(self, keep: set[int]) -> None:
        """After a rebalance: the index of other partitions is built again from the store."""
        self._index.forget(keep)
        self._scan = None

    def drop_other_partitions(self, keep: set[int]) -> int:
        """Drop from memory (not from the changelog) the entries of partitions this worker no longer owns.

        Their new owner has them from the changelog. Kept here they would only
        grow the memory, and come back stale if the partition returns: its
        recovery then replays the changelog over them, but compaction may have
        removed the tombstone of an entry deleted meanwhile. Returns how many.
        """
        if not getattr(self.data, "holds_other_partitions", True):
            return 0
        gone = [key for key in list(self.data) if partition_for(join_model(key), self.partitions) not in keep]
        forget = getattr(self.data, "forget", None) or (lambda key: self.data.pop(key, None))
        for key in gone:
            forget(key)
        return len(gone)

    def size(self) -> int:
        return self._index.size()

    def _ready(self, partition: int) -> bool:
        """Whether the partition's index is built; if not, one more step of building it: ``INDEX_STEP`` entries
        of the store read and their stamps indexed (a restart's million entries take 200 calls, each a few
        milliseconds, instead of one pass of seconds before the first answer)."""
        if self._index.ready(partition):
            return True
        if self._scan is None:
            self._scan = self._steps()
        budget, written = INDEX_STEP, self.written
        while budget > 0:
            step = next(self._scan, None)
            if step is None:
                self._index.finish()
                self._scan = None
                return True
            partition_of, chunk = step
            self._index.found((partition_of(key), written(value), key) for key, value in chunk)
            budget -= max(1, len(chunk))
        return self._index.ready(partition)

    def _steps(self) -> Iterator[tuple[Callable[[bytes], int], list[tuple[bytes, bytes]]]]:
        partitions, known = self.partitions, {}   # a model key's partition: a few keys, a million entries

        def partition_of(key: bytes) -> int:
            model = key.split(SEP, 1)[0]
            p = known.get(model)
            if p is None:
                p = known[model] = partition_for(model.decode(), partitions)
            return p
        for chunk in scan(self.data, INDEX_STEP):
            yield partition_of, chunk


def scan(data: "TableState | MutableMapping[bytes, Any]", limit: int) -> Iterator[list[tuple[bytes, bytes]]]:
    """A table's entries, ``limit`` at a time (``TableState.scan``; a plain mapping's from a copy of its keys)."""
    scan_state = getattr(data, "scan", None)
    if scan_state is not None:
        yield from scan_state(limit)
        return
    keys = list(data)
    for i in range(0, len(keys), limit):
        yield [(key, value) for key in keys[i:i + limit] if (value := data.get(key)) is not None]
