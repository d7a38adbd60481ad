"""Input drift per model key: which of its features changed distribution (off unless asked for).

Per numeric feature, River's ADWIN over its values: a detected change is a
drift of that feature. Per categorical (string) feature, its shares over
consecutive windows of ``window`` values: a total variation distance over
``shift`` between a window and the one before is a drift of that feature.

A ``drift`` episode opens on the first feature that moves (one alert naming
every feature that moved by then) and ends after ``quiet`` events with no
feature moving (the ``recovered`` record says when). Each feature costs a
detector per key, so this is off by default (``STREAMLEARN_DRIFT_ALERTS``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from river import drift


@dataclass(frozen=True)
class DriftSettings:
    window: int = 500        # categorical values per window
    shift: float = 0.3       # total variation distance between two windows' shares that is a drift
    quiet: int = 2000        # events with no feature moving that end an episode
    max_features: int = 50   # features watched per key (the first seen)


class _Shares:
    """A categorical feature's shares, window after window."""

    __slots__ = ("previous", "current", "n")

    def __init__(self) -> None:
        self.previous: dict[Any, float] | None = None
        self.current: Counter = Counter()
        self.n = 0

    def update(self, value: Any, window: int, shift: float) -> bool:
        self.current[value] += 1
        self.n += 1
        if self.n < window:
            return False
        shares = {k: c / self.n for k, c in self.current.items()}
        moved = self.previous is not None and distance(self.previous, shares) > shift
        self.previous, self.current, self.n = shares, Counter(), 0
        return moved


def distance(a: dict[Any, float], b: dict[Any, float]) -> float:
    """Total variation distance of two distributions over categories (0: the same, 1: disjoint)."""
    return sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in a.keys() | b.keys()) / 2


class FeatureDrift:
    """The drift episodes of one key's inputs."""

    def __init__(self, settings: DriftSettings) -> None:
        self.settings = settings
        self.detectors: dict[str, Any] = {}   # feature -> ADWIN (numbers) or _Shares (strings)
        self.open = False
        self.moved: list[str] = []            # features that moved in the open episode
        self.since_moved = 0

    def observe(self, features: dict[str, Any]) -> tuple[str, list[str]] | None:
        """One event's features: ("drift", features) when an episode opens, ("recovered", features) when
        it ends, else None."""
        s, moved = self.settings, []
        for name, value in features.items():
            detector = self.detectors.get(name)
            if detector is None:
                if len(self.detectors) >= s.max_features or value is None:
                    continue
                detector = self.detectors[name] = (_Shares() if isinstance(value, str) else drift.ADWIN())
            if isinstance(detector, _Shares):
                if isinstance(value, str) and detector.update(value, s.window, s.shift):
                    moved.append(name)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                detector.update(float(value))
                if detector.drift_detected:
                    moved.append(name)
        if moved:
            self.since_moved = 0
            self.moved += [m for m in moved if m not in self.moved]
            if not self.open:
                self.open = True
                return "drift", list(self.moved)
            return None
        if self.open:
            self.since_moved += 1
            if self.since_moved >= s.quiet:
                self.open, moved_then, self.moved = False, self.moved, []
                return "recovered", moved_then
        return None


class DriftBook:
    """The input drift of the keys of a worker's partitions."""

    def __init__(self, settings: DriftSettings) -> None:
        self.settings = settings
        self._keys: dict[int, dict[str, FeatureDrift]] = {}

    def observe(self, partition: int, key: str, features: dict[str, Any]) -> tuple[str, list[str]] | None:
        keys = self._keys.get(partition)
        if keys is None:
            keys = self._keys[partition] = {}
        watch = keys.get(key)
        if watch is None:
            watch = keys[key] = FeatureDrift(self.settings)
        return watch.observe(features)

    def keep_partitions(self, keep: set[int]) -> None:
        for p in [p for p in self._keys if p not in keep]:
            del self._keys[p]
