"""Alert episodes of one model key, over what its live model learns (River's ADWIN on its error stream).

An episode opens with one alert and ends with one ``recovered`` alert: the
operator hears of a change once, not once per example.

``degradation``: ADWIN sees the live model's error rise against its own
recent level (whether or not the quality gate, which has its own detector,
rolls back). It ends once ADWIN has seen the error fall and its estimate is
back at least halfway from its worst to where it was before the rise, or
when the live model is replaced (a rollback, a restore, a promotion).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from river import drift

from .state import LiveModel

DEGRADATION = "degradation"
RECOVERED = "recovered"


@dataclass
class Alert:
    """Something an operator should hear of (the alerts topic): an episode opening (``kind``), or ending
    (``recovered``; ``figures["of"]``: the episode's kind)."""

    kind: str
    model: str
    spec: str | None       # the live model's, when it is in memory
    version: int | None
    detail: str
    figures: dict[str, Any]
    at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Episode:
    before: float     # the error's level before the rise
    worst: float      # its highest level since
    learned: int      # examples learned when it opened
    fell: bool = False   # ADWIN has seen the error fall since


class Watch:
    """The alert episodes of one key's live model."""

    def __init__(self) -> None:
        self.detector = drift.ADWIN()
        self.episode: _Episode | None = None

    def observe(self, live: LiveModel, error: float) -> Alert | None:
        """The live model's error on one example (before it learned it); an alert when an episode opens or ends."""
        detector = self.detector
        before = detector.estimation
        detector.update(error if math.isfinite(error) else 1.0)
        now, episode = detector.estimation, self.episode
        if episode is None:
            if detector.drift_detected and now > before:
                self.episode = _Episode(before, now, live.learned)
                return Alert(DEGRADATION, live.key, live.spec.name, live.version,
                             f"the live model's {_what(live)} rose from {before:.3f} to {now:.3f} (ADWIN, after "
                             f"{live.learned} examples)", {"before": before, "after": now, "learned": live.learned})
            return None
        episode.worst = max(episode.worst, now)
        if detector.drift_detected and now < before:
            episode.fell = True
        if episode.fell and now <= episode.before + (episode.worst - episode.before) / 2:
            self.episode = None
            return Alert(RECOVERED, live.key, live.spec.name, live.version,
                         f"degradation ended: the live model's {_what(live)} fell back to {now:.3f} (it was "
                         f"{episode.before:.3f} before the rise, {episode.worst:.3f} at worst; after "
                         f"{live.learned - episode.learned} more examples)",
                         {"of": DEGRADATION, "before": episode.before, "worst": episode.worst, "after": now,
                          "learned": live.learned})
        return None

    def replaced(self, new: LiveModel, action: str) -> Alert | None:
        """The live model was replaced (``action``: auto_rollback, restore, promote, ...): the episode ends, and
        the new model's error is watched from scratch."""
        self.detector = drift.ADWIN()
        episode, self.episode = self.episode, None
        if episode is None:
            return None
        return Alert(RECOVERED, new.key, new.spec.name, new.version,
                     f"degradation ended: the live model was replaced ({action}, now v{new.version})",
                     {"of": DEGRADATION, "before": episode.before, "worst": episode.worst, "action": action,
                      "learned": new.learned})


def _what(live: LiveModel) -> str:
    return "error rate" if live.spec.is_classifier else "mean absolute error"
