"""Every N events or T seconds: when a recurring action (a checkpoint, a snapshot) is due, per key.

One cadence serves both: checkpoints per partition, snapshots per model.
"""

from __future__ import annotations

import time
from typing import Callable, Generic, Hashable, Iterable, TypeVar

K = TypeVar("K", bound=Hashable)


class Cadence(Generic[K]):
    """Per key: events counted since the action was last done, and since when.

    The action is due by count once ``every`` events were counted (0: never
    by count), and by time once ``every_seconds`` passed since the first event
    counted after it was done (0: never by time). ``done`` starts the key
    over; ``done(key, left=True)`` when something is still waiting for the
    action: it is due again by time, even if no event comes.
    """

    def __init__(self, every: int, every_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self.every_seconds = every_seconds
        self.clock = clock
        self._count: dict[K, int] = {}
        self._since: dict[K, float] = {}

    def count(self, key: K, n: int = 1) -> None:
        self._count[key] = self._count.get(key, 0) + n
        self._since.setdefault(key, self.clock())

    def counted(self, key: K) -> int:
        return self._count.get(key, 0)

    def due(self, key: K) -> bool:
        return self.due_by_count(key) or self.due_by_time(key)

    def due_by_count(self, key: K) -> bool:
        return bool(self.every) and self._count.get(key, 0) >= self.every

    def due_by_time(self, key: K) -> bool:
        since = self._since.get(key)
        return bool(self.every_seconds) and since is not None and self.clock() - since >= self.every_seconds

    def done(self, key: K, *, left: bool = False) -> None:
        self._count.pop(key, None)
        if left:
            self._since[key] = self.clock()
        else:
            self._since.pop(key, None)

    def forget(self, key: K) -> None:
        self._count.pop(key, None)
        self._since.pop(key, None)

    def keep_only(self, keys: Iterable[K]) -> None:
        keep = set(keys)
        for d in (self._count, self._since):
            for key in [k for k in d if k not in keep]:
                del d[key]

    def clear(self) -> None:
        self._count.clear()
        self._since.clear()
