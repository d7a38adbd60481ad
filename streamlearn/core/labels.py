"""Label health per model key: how many predictions got a label, how long labels took, when they stopped.

A key's predictions are counted as they are answered and its labels as they
are joined (or refused: expired, unknown), in the worker owning the key.
From these, per key:

- ``coverage``: labels joined per prediction, since counting began;
- label delay (prediction to label) over the last ``DELAYS`` labels: p50, p99;
- a ``label_starvation`` episode: a key that was receiving labels gets none
  for ``starvation_seconds`` while answering at least
  ``starvation_predictions`` events. It opens once (``starving``) and ends
  when a label is joined again (``labelled`` says so).

Kept in memory only (a restart counts anew), a few hundred bytes per key.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Any, Callable, Iterable

DELAYS = 32   # label delays kept per key, for its p50 and p99


@dataclass(frozen=True)
class LabelSettings:
    starvation_seconds: float = 300.0     # 0: never
    starvation_predictions: int = 100


class LabelHealth:
    """One key's labels."""

    __slots__ = ("predicted", "labelled", "expired", "unknown", "defaulted", "late", "last_label_at", "since_label",
                 "starving", "_delays", "_next")

    def __init__(self) -> None:
        self.predicted = self.labelled = self.expired = self.unknown = 0
        self.defaulted = self.late = 0   # events that learned a rule's default label; labels that came after
        self.last_label_at: float | None = None
        self.since_label = 0           # predictions answered since the last label
        self.starving = False          # a label_starvation episode is open
        self._delays: array | None = None
        self._next = 0

    def delay(self, seconds: float) -> None:
        if self._delays is None:
            self._delays = array("f")
        if len(self._delays) < DELAYS:
            self._delays.append(seconds)
        else:
            self._delays[self._next] = seconds
        self._next = (self._next + 1) % DELAYS

    def describe(self, now: float) -> dict[str, Any]:
        """What ``GET /models/{key}`` shows of its labels."""
        delays = sorted(self._delays) if self._delays else []

        def quantile(q: float) -> float | None:
            return round(delays[min(len(delays) - 1, int(q * len(delays)))], 3) if delays else None

        return {"predicted": self.predicted, "labelled": self.labelled,
                "coverage": round(self.labelled / self.predicted, 4) if self.predicted else None,
                "delay_p50_seconds": quantile(0.5), "delay_p99_seconds": quantile(0.99),
                "expired": self.expired, "unknown": self.unknown, "defaulted": self.defaulted, "late": self.late,
                "since_last_label_seconds": None if self.last_label_at is None else round(now - self.last_label_at, 1),
                "starving": self.starving}


class LabelBook:
    """The label health of the keys of a worker's partitions (``clock``: seconds, as the caller's)."""

    def __init__(self, settings: LabelSettings, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.clock = clock
        self._keys: dict[int, dict[str, LabelHealth]] = {}   # partition -> key -> health

    def _of(self, partition: int, key: str) -> LabelHealth:
        keys = self._keys.get(partition)
        if keys is None:
            keys = self._keys[partition] = {}
        health = keys.get(key)
        if health is None:
            health = keys[key] = LabelHealth()
        return health

    def get(self, key: str) -> LabelHealth | None:
        for keys in self._keys.values():
            if key in keys:
                return keys[key]
        return None

    def predicted(self, partition: int, key: str) -> None:
        health = self._of(partition, key)
        health.predicted += 1
        health.since_label += 1

    def labelled(self, partition: int, key: str, delay: float) -> int | None:
        """A label joined, ``delay`` seconds after its prediction. When it ends a starving episode: how many
        predictions were answered without a label meanwhile (else None)."""
        health = self._of(partition, key)
        ended = health.since_label if health.starving else None
        health.labelled += 1
        health.since_label = 0
        health.starving = False
        health.last_label_at = self.clock()
        health.delay(delay)
        return ended

    def refused(self, partition: int, key: str, why: str) -> None:
        """A label refused (``why``: ``expired``, its event's features are too old; ``unknown``, none ever came;
        ``late``, its event learned a default label)."""
        health = self._of(partition, key)
        setattr(health, why, getattr(health, why) + 1)

    def defaulted(self, partition: int, key: str) -> None:
        """An event learned its rule's default label: no label came within the wait (not a label: the
        coverage and starvation count real ones)."""
        self._of(partition, key).defaulted += 1

    def starving(self, partition: int) -> list[tuple[str, LabelHealth]]:
        """The partition's keys whose labels stopped, each once per episode (see the module's doc)."""
        s, now = self.settings, self.clock()
        if not s.starvation_seconds:
            return []
        out = []
        for key, health in self._keys.get(partition, {}).items():
            if (not health.starving and health.last_label_at is not None
                    and now - health.last_label_at >= s.starvation_seconds
                    and health.since_label >= s.starvation_predictions):
                health.starving = True
                out.append((key, health))
        return out

    def keep_partitions(self, keep: Iterable[int]) -> None:
        """After a rebalance: forget the keys of partitions moved away."""
        keep = set(keep)
        for p in [p for p in self._keys if p not in keep]:
            del self._keys[p]
