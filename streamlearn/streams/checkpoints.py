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

import logging
import pickle
import time
from typing import Iterator, Mapping, MutableMapping, Protocol

from streamlearn.models import LiveModel
from streamlearn.models.blobs import Blobs, CheckpointError, Header, identity

log = logging.getLogger("streamlearn.checkpoints")


class CheckpointCounters(Protocol):
    def checkpoint_written(self, size: int, seconds: float) -> None: ...
    def checkpoint_refused(self, reason: str) -> None: ...
    def checkpoint_restored(self, seconds: float) -> None: ...


class CheckpointTooLarge(Exception):
    pass


class Checkpoints:
    """The checkpoints table of one worker: model key -> signed blob."""

    def __init__(self, table: MutableMapping[bytes, bytes], blobs: Blobs, max_bytes: int,
                 metrics: CheckpointCounters) -> None:
        self.table = table
        self.blobs = blobs
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
        return blob is None and ours is None or (blob is not None and identity(blob) == ours)

    def restore(self, key: str) -> LiveModel | None:
        """The model of key from its checkpoint; None without a usable one."""
        blob = self.table.get(key.encode())
        if blob is None:
            return None
        started = time.perf_counter()
        try:
            live = self.blobs.load(blob)
        except CheckpointError as exc:
            self.metrics.checkpoint_refused("invalid")
            log.error("refused the checkpoint of model=%s: %s; starting it fresh", key, exc)
            return None
        self.written[key] = identity(blob)
        self.metrics.checkpoint_restored(time.perf_counter() - started)
        log.debug("restored model=%s version=%d learned=%d offset=%d", key, live.version, live.learned, live.offset)
        return live

    def headers(self, keep) -> Iterator[Header]:
        """Headers of the checkpoints whose key ``keep(key)`` accepts (nothing unpickled), one at a time (the
        table as it was at the first)."""
        for raw_key, blob in list(self.table.items()):
            key = raw_key.decode()
            if keep(key):
                try:
                    yield self.blobs.header(blob)
                except CheckpointError:
                    continue

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
        blob = self.blobs.dump(live, time.time())
        while len(blob) > self.max_bytes and (name := largest_challenger(live)) is not None:
            reason = (f"dropped: the checkpoint of model={live.key} with it was {len(blob)} bytes, over the limit "
                      f"of {self.max_bytes} (STREAMLEARN_MAX_CHECKPOINT_BYTES)")
            live.challengers[name].model, live.challengers[name].error = None, reason
            self.metrics.checkpoint_refused("challenger_dropped")
            log.error("challenger %s of model=%s %s", name, live.key, reason)
            blob = self.blobs.dump(live, time.time())
        if len(blob) > self.max_bytes:
            self.metrics.checkpoint_refused("too_large")
            raise CheckpointTooLarge(f"checkpoint of model={live.key} is {len(blob)} bytes, over the limit of "
                                     f"{self.max_bytes} (STREAMLEARN_MAX_CHECKPOINT_BYTES)")
        self.table[live.key.encode()] = blob
        self.written[live.key] = identity(blob)
        self.metrics.checkpoint_written(len(blob), time.perf_counter() - started)
        return len(blob)


def largest_challenger(live: LiveModel) -> str | None:
    """The name of the challenger taking the most room in a checkpoint (None: none has a model)."""
    sizes = {name: len(pickle.dumps(c.model)) for name, c in live.challengers.items() if c.model is not None}
    return max(sizes, key=sizes.get) if sizes else None
