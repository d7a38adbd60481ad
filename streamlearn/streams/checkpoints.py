"""Checkpoints of live models in a changelog-backed table, and the learn agent's policy.

Why learning is exact (no example lost, none learned twice):

* The training topic is each model's write-ahead log. A checkpoint stores the
  model with the offset of the last training example it learned.
* The learn agent holds its acks: offsets of the training topic are only
  committed once a checkpoint covering them is in the table. So after a
  crash the new owner resumes at or before every model's checkpoint.
* Every model skips examples at or below its own offset. A restored model
  therefore replays exactly the examples after its checkpoint.

Checkpoints are written by the learn agent while it processes an event of the
partition, so they land in the partition's changelog and move with the key.
"""

from __future__ import annotations

import itertools
import logging
import pickle
import time
from typing import Callable, Mapping, MutableMapping, Protocol

from streamlearn.core.cadence import Cadence
from streamlearn.models import SPECS, LiveModel, Spec
from streamlearn.models import checkpoint as blobs
from streamlearn.models.checkpoint import CheckpointError

log = logging.getLogger("streamlearn.checkpoints")


class CheckpointCounters(Protocol):
    def checkpoint_written(self, size: int, seconds: float) -> None: ...
    def checkpoint_refused(self, reason: str) -> None: ...
    def checkpoint_restored(self, seconds: float) -> None: ...


class CheckpointTooLarge(Exception):
    pass


class Checkpoints:
    """The checkpoints table of one worker: model key -> signed blob."""

    def __init__(self, table: MutableMapping[bytes, bytes], signing_key: bytes, max_bytes: int,
                 metrics: CheckpointCounters, specs: Mapping[str, Spec] = SPECS) -> None:
        self.table = table
        self.specs = specs
        self.signing_key = signing_key
        self.max_bytes = max_bytes
        self.metrics = metrics
        # model key -> identity of the last checkpoint this worker wrote or restored
        self.written: dict[str, bytes] = {}

    def unchanged(self, key: str) -> bool:
        """Whether the table's checkpoint of key is still the last one this worker wrote or restored (or neither exists).

        After a rebalance the table holds what every owner wrote (Faust
        recovers the changelog's tail): another checkpoint means another
        worker learned this model in between.
        """
        blob = self.table.get(key.encode())
        ours = self.written.get(key)
        return blob is None and ours is None or (blob is not None and blobs.identity(blob) == ours)

    def restore(self, key: str) -> LiveModel | None:
        """The model of key from its checkpoint; None without a usable one."""
        blob = self.table.get(key.encode())
        if blob is None:
            return None
        started = time.perf_counter()
        try:
            live = blobs.load(blob, self.signing_key, self.specs)
        except CheckpointError as exc:
            self.metrics.checkpoint_refused("invalid")
            log.error("refused the checkpoint of model=%s: %s; starting it fresh", key, exc)
            return None
        self.written[key] = blobs.identity(blob)
        self.metrics.checkpoint_restored(time.perf_counter() - started)
        log.debug("restored model=%s version=%d learned=%d offset=%d", key, live.version, live.learned, live.offset)
        return live

    def headers(self, keep) -> list[blobs.Header]:
        """Headers of the checkpoints whose key ``keep(key)`` accepts (nothing unpickled)."""
        out = []
        for raw_key, blob in list(self.table.items()):
            key = raw_key.decode()
            if keep(key):
                try:
                    out.append(blobs.read_header(blob, self.signing_key))
                except CheckpointError:
                    continue
        return out

    def clean(self, live: LiveModel, dirty: Mapping[str, LiveModel]) -> bool:
        """Whether a live model may leave memory, to come back from the table as it is: nothing changed
        since its checkpoint (not among the partition's ``dirty`` models) and that checkpoint is the one
        this worker wrote or restored last; or it never learned anything (it comes back as it started)."""
        return live.key not in dirty and (live.key in self.written or live.learned == 0)

    def write(self, live: LiveModel) -> int:
        """Checkpoint one model (in the agent of its partition); returns the size.

        A checkpoint over the limit first sheds challengers, the largest
        first, each stopped with an ``error`` that says why (seen in the
        model's status, refused for promotion); the champion is never shed.
        """
        started = time.perf_counter()
        blob = blobs.dump(live, self.signing_key, time.time())
        while len(blob) > self.max_bytes and (name := largest_challenger(live)) is not None:
            reason = (f"dropped: the checkpoint of model={live.key} with it was {len(blob)} bytes, over the limit "
                      f"of {self.max_bytes} (STREAMLEARN_MAX_CHECKPOINT_BYTES)")
            live.challengers[name].model, live.challengers[name].error = None, reason
            self.metrics.checkpoint_refused("challenger_dropped")
            log.error("challenger %s of model=%s %s", name, live.key, reason)
            blob = blobs.dump(live, self.signing_key, time.time())
        if len(blob) > self.max_bytes:
            self.metrics.checkpoint_refused("too_large")
            raise CheckpointTooLarge(f"checkpoint of model={live.key} is {len(blob)} bytes, over the limit of "
                                     f"{self.max_bytes} (STREAMLEARN_MAX_CHECKPOINT_BYTES)")
        self.table[live.key.encode()] = blob
        self.written[live.key] = blobs.identity(blob)
        self.metrics.checkpoint_written(len(blob), time.perf_counter() - started)
        return len(blob)


def position(signing_key: bytes) -> Callable[[bytes], float]:
    """A checkpoint's place in its model's history: the training offset it covers (-inf: one we refuse).

    Within a key, checkpoints only go forward: a model learns its partition of
    the training topic in order, and a version change (restore, rollback,
    promotion) keeps the offset where the model stopped. So of two checkpoints
    of a key, the one at the higher offset is the later state, whoever wrote
    it last: one written by a worker that lost the partition (cut off, it went
    on learning what it had fetched) is the same model at an earlier offset, or
    the same model further on (learned from the same training messages).
    """
    def at(blob: bytes) -> float:
        try:
            return blobs.read_header(blob, signing_key).offset
        except CheckpointError:
            return float("-inf")
    return at


def largest_challenger(live: LiveModel) -> str | None:
    """The name of the challenger taking the most room in a checkpoint (None: none has a model)."""
    sizes = {name: len(pickle.dumps(c.model)) for name, c in live.challengers.items() if c.model is not None}
    return max(sizes, key=sizes.get) if sizes else None


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
        self.dirty: dict[int, dict[str, LiveModel]] = {}
        # partition -> model key -> (first training offset its checkpoint lacks, when it changed first),
        # in the order they changed (so by time); and the lowest of those offsets, kept while valid
        self._first: dict[int, dict[str, tuple[int, float]]] = {}
        self._low: dict[int, int] = {}

    def learned(self, partition: int, live: LiveModel) -> None:
        self._dirty(partition, live, live.offset)
        self.cadence.count(partition)

    def changed(self, partition: int, live: LiveModel | None) -> None:
        """The model's version changed: checkpoint the partition now (a new version must survive a crash)."""
        if live is not None:
            self._dirty(partition, live, -1)   # what it lacks is not known: nothing is acked until it is written
        self._now.add(partition)

    def _dirty(self, partition: int, live: LiveModel, offset: int) -> None:
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

    def done(self, partition: int) -> list[LiveModel]:
        """The partition's dirty models to checkpoint now (all, unless deferred), and reset its counters."""
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
