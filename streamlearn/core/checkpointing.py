"""When a partition's models are checkpointed, and which training messages their checkpoints cover.

The training topic is each model's write-ahead log: a checkpoint stores a
model with the offset of the last training message it learned, and the
learn agent commits a training message only once every model's examples in
it are inside a checkpoint (``low_water``). What is checkpointed, and when,
is decided here; the checkpoints are written by ``streams.commit``.
"""

from __future__ import annotations

import itertools
import time
from typing import Protocol

from .cadence import Cadence


class Model(Protocol):
    key: str
    offset: int


class CheckpointPolicy:
    """When a partition's models are due: every N examples or T seconds (of a dirty partition).

    ``defer_seconds`` (0: off) lets a changed model wait that long for its
    checkpoint: a due partition then writes only the models changed that
    long ago (all of them when a version changed). With many keys of few
    examples each, nearly every example changes a model of its own, and a
    checkpoint per example costs more than learning it; deferred, a model
    takes in every example of the wait in one checkpoint. The acks follow
    ``low_water``: a training message is committed once every model's
    examples in it are inside a checkpoint, so a crash replays up to
    ``defer_seconds`` more.
    """

    def __init__(self, every_examples: int, every_seconds: float, defer_seconds: float = 0.0,
                 clock=time.monotonic) -> None:
        self.cadence: Cadence[int] = Cadence(every_examples, every_seconds, clock)   # per partition
        self.defer_seconds = defer_seconds
        self.clock = clock
        self._now: set[int] = set()
        self.dirty: dict[int, dict[str, Model]] = {}
        # partition -> model key -> (first training offset its checkpoint lacks, when it changed first),
        # in the order they changed (so by time); and the lowest of those offsets, kept while valid
        self._first: dict[int, dict[str, tuple[int, float]]] = {}
        self._low: dict[int, int] = {}

    def learned(self, partition: int, live: Model) -> None:
        self._dirty(partition, live, live.offset)
        self.cadence.count(partition)

    def changed(self, partition: int, live: Model | None) -> None:
        """The model's version changed: checkpoint the partition now (a new version must survive a crash)."""
        if live is not None:
            self._dirty(partition, live, -1)   # what it lacks is not known: nothing is acked until it is written
        self._now.add(partition)

    def _dirty(self, partition: int, live: Model, offset: int) -> None:
        self.dirty.setdefault(partition, {})[live.key] = live
        first = self._first.setdefault(partition, {})
        if live.key not in first:
            first[live.key] = (offset, self.clock())
            if partition in self._low:
                self._low[partition] = min(self._low[partition], offset)

    def due(self, partition: int) -> bool:
        if not self.dirty.get(partition):
            return False
        return partition in self._now or self.cadence.due(partition)

    def take_due(self, partition: int) -> list[Model]:
        """The partition's dirty models to checkpoint now (all, unless deferred): they are clean from here on."""
        dirty, first = self.dirty.get(partition, {}), self._first.get(partition, {})
        if self.defer_seconds <= 0 or partition in self._now:
            keys = list(dirty)
        else:   # the models that waited long enough: a prefix, as they are in the order they changed
            ripe = self.clock() - self.defer_seconds
            keys = list(itertools.takewhile(lambda key: first[key][1] <= ripe, first))
        models = [dirty.pop(key) for key in keys]
        for key in keys:
            del first[key]
        if keys:
            self._low.pop(partition, None)
        self._now.discard(partition)
        # models left waiting: due again by time, even if the partition learns nothing more
        self.cadence.done(partition, left=bool(dirty))
        if not dirty:
            for d in (self.dirty, self._first, self._low):
                d.pop(partition, None)
        return models

    def low_water(self, partition: int) -> int | None:
        """The lowest training offset of the partition some model's checkpoint lacks (None: none lacks any)."""
        first = self._first.get(partition)
        if not first:
            return None
        if partition not in self._low:   # offsets need not rise in that order: a re-read goes back
            self._low[partition] = min(offset for offset, _ in first.values())
        return self._low[partition]

    def forget_partitions(self, keep: set[int]) -> None:
        self._now &= keep
        self.cadence.keep_only(keep)
        for d in (self.dirty, self._first, self._low):
            for p in [p for p in d if p not in keep]:
                del d[p]
