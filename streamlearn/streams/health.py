"""A key's inputs, on its owner: label health (``core.labels``) and input drift (``core.drift``).

Counted per key in memory; in Prometheus without a series per key (the label
delay histogram; expired and unknown labels are dead-letter reasons; alerts
by kind). Alerts, one per episode: ``label_starvation`` and ``drift``, each
with its ``recovered``.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from streamlearn.core.drift import DriftBook
from streamlearn.core.labels import LabelBook, LabelHealth
from streamlearn.models import LiveModel
from streamlearn.models.watch import RECOVERED, Alert

from .deadletter import Counters

LABEL_STARVATION = "label_starvation"
DRIFT = "drift"

LiveOf = Callable[[str], "LiveModel | None"]


class AlertSink(Protocol):
    def record(self, alert: Alert) -> None: ...
    def recent(self, key: str) -> list[dict]: ...


class InputHealth:
    """What the join agent tells of a key's predictions and labels, and what follows from it."""

    def __init__(self, book: LabelBook, metrics: Counters, alerts: AlertSink, drift: DriftBook | None = None) -> None:
        self.book = book
        self.drift = drift           # None: input drift is not watched (STREAMLEARN_DRIFT_ALERTS)
        self.metrics = metrics
        self.alerts = alerts

    def on_alert(self, alert: Alert) -> None:
        self.alerts.record(alert)

    def predicted(self, partition: int, key: str, features: dict[str, Any], live_of: LiveOf) -> None:
        """An event of ``key`` was answered."""
        self.book.predicted(partition, key)
        if self.drift is not None:
            changed = self.drift.observe(partition, key, features)
            if changed is not None:
                kind, names = changed
                if kind == DRIFT:
                    self.on_alert(_alert(DRIFT, key, live_of(key), f"the inputs of model {key!r} changed "
                                         f"distribution: {', '.join(names)}", {"features": names}))
                else:
                    self.on_alert(_alert(RECOVERED, key, live_of(key), f"the inputs of model {key!r} are steady "
                                         f"again ({self.drift.settings.quiet} events without a change)",
                                         {"of": DRIFT, "features": names}))

    def joined(self, partition: int, key: str, delay: float, live_of: LiveOf) -> None:
        """A label joined its event's features ``delay`` seconds after they came (0: the label came first)."""
        self.metrics.label_joined(delay)
        ended = self.book.labelled(partition, key, delay)
        if ended is not None:
            self.on_alert(_alert(RECOVERED, key, live_of(key), f"labels arrive again for model {key!r}",
                                 {"of": LABEL_STARVATION, "predicted_meanwhile": ended}))

    def duplicate(self) -> None:
        self.metrics.duplicate_label()

    def refused(self, partition: int, key: str, why: str) -> None:
        """A label of ``key`` refused: ``expired``, ``unknown`` or ``late`` (``LabelBook.refused``)."""
        self.book.refused(partition, key, why)

    def defaulted(self, partition: int, key: str) -> None:
        """An event of ``key`` learned its rule's default label."""
        self.metrics.default_label()
        self.book.defaulted(partition, key)

    def tick(self, partition: int, live_of: LiveOf) -> None:
        """The partition's keys whose labels stopped: one alert each, per episode."""
        for key, health in self.book.starving(partition):
            quiet = self.book.clock() - (health.last_label_at or 0.0)
            self.on_alert(_alert(LABEL_STARVATION, key, live_of(key),
                                 f"no label for model {key!r} in {quiet:.0f}s, while it answered "
                                 f"{health.since_label} events (it had {health.labelled} labels before)",
                                 {"seconds": round(quiet, 1), "predicted": health.since_label,
                                  "labelled_before": health.labelled}))

    def labels(self, key: str) -> LabelHealth | None:
        return self.book.get(key)

    def describe(self, key: str, now: float) -> dict[str, Any]:
        """The key's label health and recent alerts, for its status (empty for a key this worker never saw)."""
        labels, alerts = self.book.get(key), self.alerts.recent(key)
        return {**({"labels": labels.describe(now)} if labels is not None else {}),
                **({"alerts": alerts} if alerts else {})}

    def keep_partitions(self, keep: set[int]) -> None:
        """After a rebalance: forget the keys of partitions moved away."""
        self.book.keep_partitions(keep)
        if self.drift is not None:
            self.drift.keep_partitions(keep)


def _alert(kind: str, key: str, live: LiveModel | None, detail: str, figures: dict) -> Alert:
    return Alert(kind, key, live.spec.name if live else None, live.version if live else None, detail, figures)
