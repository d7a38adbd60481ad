"""Which consumed offsets may be committed: the consumer's rules, decided without Kafka.

The consumer (``streams/transport.py``) is Faust's, with these decisions
in place of some of its own; why each exists: docs/architecture.md, "The
consumer transport".

1. Only an offset an agent handled is acked; of a fetch, the offsets at or
   past the committed one, each once (``new_acks``).
2. A commit never passes an unhandled message (``CommitHold``): while the
   lowest acked offset lies past the committed one, the commit waits; after
   ``REREAD_AFTER`` waits (and every ``2 * REREAD_AFTER`` after) the
   partition is read again from the committed offset. Only a partition of
   an input topic (where transaction markers exist) gives up after
   ``MARKER_PATIENCE`` waits and lets the commit pass.
3. A jump in offsets right after a seek is not a gap (``Seeks``): the
   offsets in between were fetched before the seek, real messages, read
   again (twice at most, then taken for a gap). Of a fetch, only what lies
   before its first offset can be a gap. A topic only we write (``exact``:
   every offset a message) has no gaps at all: a jump there is messages the
   consumer dropped, read again through rule 2. A fetch wholly behind
   Faust's read offset is let through (``read_offset_for``): records
   fetched before a seek, handled after it, move the read offset past the
   sought offset, and Faust would drop the fetch from there as old, leaving
   what the seek was to read again unread (on an input topic, until rule 2
   gives up: lost).
4. Recovery stalls (``stalled_recovery``): an active changelog partition
   with records left and no event for ``stall`` seconds, nothing queued.
5. The training topic is handled in offset order without a gap
   (``InOrder``): a model skips a message at or below its offset, so a
   fetch handled past a skipped one would lose it for good. A fetch that
   starts past the next offset due is not handled; the partition is read
   again from the offset due.
6. Changelogs are read back in batches (``ChangelogRead``): each active
   changelog partition behind its highwater, from the record after the
   one its store holds to the highwater, and what was applied of it.
7. A store's changelog offset moves over its own delivered writes only
   while they follow one another (``held_through``): a jump is records of
   another writer, which the store lacks.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Callable, Hashable, Iterable, Mapping, TypeVar

TP = TypeVar("TP", bound=Hashable)

# Commits (about every STREAMLEARN_COMMIT_INTERVAL_SECONDS) an input topic's partition waits for the
# message at its committed offset before taking it for a transaction marker and committing past it.
MARKER_PATIENCE = 40
# Commits a partition's committed offset may wait for its message before the partition is read again.
REREAD_AFTER = 10


def new_acks(offsets: Iterable[int], committed: int | None, acked: set[int]) -> list[int]:
    """Of a handled fetch's offsets, those to ack: at or past the committed offset, not acked before."""
    return [o for o in offsets if (committed is None or o >= committed) and o not in acked]


class CommitHold:
    """Per partition: whether a commit waits at the committed offset for its message, and how long it did."""

    def __init__(self) -> None:
        self._waits: dict = {}   # partition -> (committed offset, commits it waited there)

    def check(self, tp: Hashable, committed: int | None, low: int | None, exact: bool) -> tuple[bool, bool]:
        """(wait, read_again) for a commit of ``tp`` whose lowest acked offset is ``low``; ``exact``: a topic
        only we write (every offset a message), whose commit never passes an unhandled one."""
        if committed is None or low is None or low <= committed:
            self._waits.pop(tp, None)
            return False, False
        at, waited = self._waits.get(tp, (committed, 0))
        waited = waited + 1 if at == committed else 1
        if exact or waited <= MARKER_PATIENCE:
            self._waits[tp] = (committed, waited)
            return True, waited % (2 * REREAD_AFTER) == REREAD_AFTER
        self._waits.pop(tp, None)
        return False, False


class Seeks:
    """Where each partition was last sought to and how often it was read again from there, and the first
    offset of the fetch being handed over: what tells a jump after a seek from a gap."""

    def __init__(self) -> None:
        self._sought: dict = {}
        self._rereads: Counter = Counter()
        self._fetching: dict = {}

    def sought(self, tp: Hashable, offset: int) -> None:
        self._sought[tp] = offset

    def sought_all(self, offsets: Mapping) -> None:
        """Every partition sought back (to its committed offset): a new round of reads."""
        self._rereads.clear()
        self._sought = {tp: offset for tp, offset in offsets.items() if offset is not None}

    def fetching(self, tp: Hashable, first: int) -> None:
        self._fetching[tp] = first

    def jumped(self, tp: Hashable, offset_from: int, offset_to: int) -> tuple[int, int] | None:
        """Faust's drain loop saw ``tp``'s offsets jump over ``offset_from..offset_to``: the offsets it was not
        handed (those before the first of the fetch it saw; None: none, the jump is the fetch's own records)."""
        first = self._fetching.pop(tp, None)
        if first is not None:     # the drain loop saw the fetch's last offset: only before its first is a jump
            offset_to = first - 1
        return (offset_from, offset_to) if offset_to >= offset_from else None

    def gap(self, tp: Hashable, offset_from: int, offset_to: int, exact: bool = False) -> tuple[int, int] | None:
        """Of a jump the drain loop saw (``jumped``), the gap to commit as read (None: none; what it skipped is
        read again). ``exact``: a topic only we write, never a gap."""
        jump = self.jumped(tp, offset_from, offset_to)
        if jump is None or exact:
            return None
        offset_from, offset_to = jump
        sought = self._sought.pop(tp, None)
        if sought is not None and offset_from - 1 <= sought and self._rereads[(tp, sought)] < 2:
            self._rereads[(tp, sought)] += 1
            return None
        return offset_from, offset_to


def read_offset_for(first: int, last: int, read: int | None) -> int | None:
    """The read offset that lets a fetch of ``first..last`` through Faust's drain loop, which drops a message
    below the read offset (``read``, its last message's) as old: None to leave it. A fetch wholly below it is
    a seek's (records fetched before the seek, handled after it, set the read offset past the sought one)."""
    return first - 1 if read is not None and last < read else None


class InOrder:
    """Per partition of a topic handled in offset order with no gap: the next offset due.

    Our training topic qualifies: only we write it, without transactions or
    compaction, so its offsets are consecutive within a fetch and a fetch
    that starts past the offset due means messages in between were skipped
    (Faust drops a fetch of a stale generation or of a paused partition).
    Only messages retention deleted before they were read are never read
    again: after ``give_up_after`` asks in vain the gap is taken.
    """

    def __init__(self, reask_seconds: float = 5.0, give_up_after: int = 12,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.reask_seconds = reask_seconds
        self.give_up_after = give_up_after
        self._clock = clock
        self._due: dict = {}
        self._asked: dict = {}    # partition -> (offset asked to read again from, when, how often)

    def check(self, tp: Hashable, first: int, last: int,
              committed: int | None) -> tuple[bool, int | None, tuple[int, int] | None]:
        """(handle, read_again_from, gap_taken) for a fetch of ``tp`` holding ``first..last``. ``committed``:
        the group's committed offset, the offset due when none is known yet (None: the fetch starts).

        Not handled when it starts past the offset due: the offset due is returned to read the partition
        again from, once per ``reask_seconds`` (the fetches already under way come first). After
        ``give_up_after`` asks, each given ``reask_seconds``, it is handled, and the offsets it jumps over are
        ``gap_taken``."""
        due = self._due.get(tp, committed)
        gap = None
        if due is not None and first > due:
            now = self._clock()
            at, when, asks = self._asked.get(tp, (None, 0.0, 0))
            if at != due:
                when, asks = -self.reask_seconds, 0
            if now - when < self.reask_seconds:
                return False, None, None
            if asks < self.give_up_after:
                self._asked[tp] = (due, now, asks + 1)
                return False, due, None
            gap = (due, first - 1)
        self._due[tp] = last + 1 if due is None else max(due, last + 1)
        self._asked.pop(tp, None)
        return True, None, gap

    def forget(self) -> None:
        """After a rebalance: every partition is read again from its committed offset."""
        self._due.clear()
        self._asked.clear()


def stalled_recovery(now: float, started: float | None, stall: float, queued: int, remaining: Mapping[TP, int],
                     offsets: Mapping[TP, int], received: Mapping[TP, float]) -> dict[TP, int]:
    """Active changelog partitions recovery waits for in vain: partition -> the next offset it needs.

    ``started``: when recovery started; ``queued``: changelog events queued for it (then it is behind, not
    stuck); ``remaining``, ``offsets``, ``received``: per partition, records left, the last offset applied,
    when its last event came."""
    if started is None or now - started < stall or queued:
        return {}
    return {tp: max(0, offsets[tp] + 1) for tp, left in remaining.items()
            if left > 0 and now - received.get(tp, started) >= stall}


class ChangelogRead:
    """What a batched read of changelogs has left: per partition, the offsets from the one after the last
    applied to the highwater (the last offset when the read began; Faust's convention: -1 for an empty
    partition, ``applied`` -1 or the earliest offset less one for a store holding nothing).

    Records past the highwater are not this read's (they came later: the partition's owner wrote them, and
    its store has them). A partition is done once its record at the highwater was applied, or the reader's
    position passed the highwater (a compacted log has gaps: the position, not a record, is the sure sign).
    """

    def __init__(self, applied: Mapping[TP, int | None], highwaters: Mapping[TP, int]) -> None:
        self.applied: dict[TP, int] = {tp: offset for tp, offset in applied.items()
                                       if offset is not None and highwaters.get(tp, -1) > offset}
        self.highwaters = {tp: highwaters[tp] for tp in self.applied}
        self.records = 0

    def start(self) -> dict[TP, int]:
        """Where each partition's read begins: partition -> its first offset."""
        return {tp: max(0, offset + 1) for tp, offset in self.applied.items()}

    def wanted(self, tp: TP, offsets: Iterable[int]) -> int:
        """How many of a fetch's records (their offsets, in order) this read applies: those up to the highwater."""
        hw, n = self.highwaters[tp], 0
        for offset in offsets:
            if offset > hw:
                break
            n += 1
        return n

    def applied_up_to(self, tp: TP, offset: int, records: int) -> None:
        self.applied[tp] = max(offset, self.applied[tp])
        self.records += records

    def passed(self, tp: TP, position: int) -> None:
        """The reader's next offset for ``tp`` is ``position``: what lies before it was read."""
        if position > self.highwaters[tp]:
            self.applied[tp] = max(self.applied[tp], self.highwaters[tp])

    def left(self) -> set[TP]:
        return {tp for tp, hw in self.highwaters.items() if self.applied[tp] < hw}


def held_through(held: int | None, offsets: Iterable[int]) -> int | None:
    """The changelog offset a store holds its partition through, once it took its own writes delivered at
    ``offsets`` (``held``: through where it held it before; None: nothing). None: no further.

    Only a run right after ``held`` counts. A jump means another writer's records lie in between: a worker
    cut off from the group, whose producer delivers once its link mends, writes after the partition's next
    owner did, and while it still counts the partition as its own. Moved past them, its store would skip
    them when it reads the changelog again (RocksDB: a restart, or the partition coming back)."""
    start = at = -1 if held is None else held
    for offset in sorted(offsets):
        if offset > at + 1:
            break
        at = max(at, offset)
    return at if at > start else None
