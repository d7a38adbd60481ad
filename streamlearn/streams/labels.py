"""Label health on the Kafka side: counted per key (``core.labels``), aggregated in Prometheus without a
series per key (the label delay histogram; expired and unknown labels are dead-letter reasons), and a
``label_starvation`` alert (and its ``recovered``) per episode."""

from __future__ import annotations

from typing import Callable

from streamlearn.core.labels import LabelBook, LabelHealth
from streamlearn.models import LiveModel
from streamlearn.models.watch import RECOVERED, Alert

from .deadletter import Counters

LABEL_STARVATION = "label_starvation"


class LabelWatch:
    """What the join agent tells of a key's labels, and what follows from it."""

    def __init__(self, book: LabelBook, metrics: Counters, on_alert: Callable[[Alert], None]) -> None:
        self.book = book
        self.metrics = metrics
        self.on_alert = on_alert

    def predicted(self, partition: int, key: str) -> None:
        self.book.predicted(partition, key)

    def joined(self, partition: int, key: str, delay: float, live_of: Callable[[str], LiveModel | None]) -> None:
        """A label joined its event's features ``delay`` seconds after they came (0: the label came first)."""
        self.metrics.label_joined(delay)
        ended = self.book.labelled(partition, key, delay)
        if ended is not None:
            self.on_alert(_alert(RECOVERED, key, live_of(key), f"labels arrive again for model {key!r}",
                                 {"of": LABEL_STARVATION, "predicted_meanwhile": ended}))

    def duplicate(self) -> None:
        self.metrics.duplicate_label()

    def refused(self, partition: int, key: str, expired: bool) -> None:
        self.book.refused(partition, key, expired)

    def tick(self, partition: int, live_of: Callable[[str], LiveModel | None]) -> None:
        """The partition's keys whose labels stopped: one alert each, per episode."""
        for key, health in self.book.starving(partition):
            quiet = self.book.clock() - (health.last_label_at or 0.0)
            self.on_alert(_alert(LABEL_STARVATION, key, live_of(key),
                                 f"no label for model {key!r} in {quiet:.0f}s, while it answered "
                                 f"{health.since_label} events (it had {health.labelled} labels before)",
                                 {"seconds": round(quiet, 1), "predicted": health.since_label,
                                  "labelled_before": health.labelled}))

    def health(self, key: str) -> LabelHealth | None:
        return self.book.get(key)


def _alert(kind: str, key: str, live: LiveModel | None, detail: str, figures: dict) -> Alert:
    return Alert(kind, key, live.spec.name if live else None, live.version if live else None, detail, figures)
