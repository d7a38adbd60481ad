"""The live models of the partitions a worker owns: found, parked across a rebalance, evicted.

Pure Python over River models: which models are in memory, for which
partition, and which leave it (a cap, idleness). What a model that left
comes back from (its checkpoint) is the caller's: ``factory``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from itertools import islice
from typing import Callable, Iterator

from streamlearn.models import LiveModel, Spec


class ModelRegistry:
    """The live models of the partitions a worker owns: ``{partition: {key: LiveModel}}``.

    After a rebalance the models of partitions the worker kept are *parked*:
    each is taken back on its first use only if ``still_valid(partition,
    live)`` says nobody else changed it in between (else the caller restores
    it, as a model of a partition that moved).

    Bounded memory: models are kept in least-recently-used order. With
    ``max_live`` set, adding a model beyond it first drops parked models, then
    the least recently used models that ``evictable(partition, live)``
    accepts (the caller's test that the model's state is all in its
    checkpoint: it comes back from there on its next use); one not
    evictable yet keeps its place. :meth:`evict_idle`
    drops the evictable models unused for a while. ``on_evict(partition,
    live, reason)`` is told of each.
    """

    def __init__(self, factory: Callable[[str, Spec], LiveModel],
                 still_valid: Callable[[int, LiveModel], bool] = lambda partition, live: False, *,
                 max_live: int = 0, evictable: Callable[[int, LiveModel], bool] = lambda partition, live: True,
                 on_evict: Callable[[int, LiveModel, str], None] = lambda partition, live, reason: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._factory = factory
        self._still_valid = still_valid
        self._partitions: dict[int, dict[str, LiveModel]] = {}
        self._parked: dict[int, dict[str, LiveModel]] = {}
        self._order: OrderedDict[str, int] = OrderedDict()   # key -> partition, least recently used first
        self._used: dict[str, float] = {}                    # key -> time of its last use
        self.max_live = max_live
        self._evictable = evictable
        self._on_evict = on_evict
        self._clock = clock
        self.kept = self.invalidated = 0    # parked models taken back / refused, since start

    def get(self, partition: int, key: str) -> LiveModel | None:
        live = self._partitions.get(partition, {}).get(key)
        if live is not None:
            self._order.move_to_end(key)
            self._used[key] = self._clock()
        elif self._parked:
            parked = self._parked.get(partition)
            if parked and key in parked:
                candidate = parked.pop(key)
                if self._still_valid(partition, candidate):
                    self.kept += 1
                    self.put(partition, candidate)
                    return candidate
                self.invalidated += 1
        return live

    def park(self, assigned: set[int]) -> tuple[int, int]:
        """After a rebalance: park the models of the partitions still assigned, drop the rest; (parked, dropped)."""
        dropped = 0
        for source in (self._parked, self._partitions):
            for p in list(source):
                if p not in assigned:
                    dropped += len(source.pop(p))
        for p, models in self._partitions.items():
            self._parked.setdefault(p, {}).update(models)
        self._partitions = {}
        self._order.clear()
        self._used.clear()
        return sum(len(m) for m in self._parked.values()), dropped

    def get_or_create(self, partition: int, key: str, spec: Spec) -> LiveModel:
        """The live model of ``key``; a fresh one of ``spec`` if it has none yet."""
        live = self.get(partition, key)
        if live is None:
            live = self._factory(key, spec)
            self.put(partition, live)
        return live

    def put(self, partition: int, live: LiveModel) -> None:
        self._partitions.setdefault(partition, {})[live.key] = live
        self._order[live.key] = partition
        self._order.move_to_end(live.key)
        self._used[live.key] = self._clock()
        if self.max_live and len(self._order) + self.parked() > self.max_live:
            self._shrink(live.key)

    def parked(self) -> int:
        """Models parked since the last rebalance, not yet taken back."""
        return sum(len(m) for m in self._parked.values()) if self._parked else 0

    def _shrink(self, added: str) -> None:
        """Down to ``max_live``: parked models first, then the least recently used evictable ones, never
        the model just ``added`` (its caller is about to use it)."""
        for p in list(self._parked):
            models = self._parked[p]
            while models and len(self._order) + self.parked() > self.max_live:
                models.popitem()
            if not models:
                del self._parked[p]
        for key in list(islice(self._order, 32)):   # the oldest few: many not yet evictable cost little
            if len(self._order) <= self.max_live:
                break
            if key != added:
                self._evict(self._order[key], key, "cap")

    def evict_idle(self, idle_seconds: float) -> int:
        """Drop the evictable models unused for ``idle_seconds``; how many were dropped."""
        cutoff = self._clock() - idle_seconds
        idle = []
        for key in self._order:   # least recently used first: the idle ones are a prefix
            if self._used[key] > cutoff:
                break
            idle.append(key)
        return sum(self._evict(self._order[key], key, "idle") for key in idle)

    def _evict(self, partition: int, key: str, reason: str) -> bool:
        live = self._partitions[partition][key]
        if not self._evictable(partition, live):
            return False   # not yet (say it learned since its checkpoint): it keeps its place
        del self._partitions[partition][key], self._order[key], self._used[key]
        self._on_evict(partition, live, reason)
        return True

    def partition(self, partition: int) -> list[LiveModel]:
        return list(self._partitions.get(partition, {}).values())

    def find(self, key: str) -> LiveModel | None:
        for models in self._partitions.values():
            if key in models:
                return models[key]
        return None

    def __iter__(self) -> Iterator[tuple[int, LiveModel]]:
        for p, models in self._partitions.items():
            for live in models.values():
                yield p, live

    def __len__(self) -> int:
        return sum(len(m) for m in self._partitions.values())
