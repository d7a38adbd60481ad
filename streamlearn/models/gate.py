"""The automatic quality gate: roll a model back when it is significantly worse than a recent snapshot.

How it decides, per model key:

* **A reference.** The gate holds one frozen snapshot, the newest taken while
  the model was steady (no rise in its error for ``steady_examples``
  examples). It is never trained.
* **A paired comparison.** For every training example, the live model's
  prediction (made before it learns the example, as progressive validation
  does) and the reference's prediction are scored on the same label. Over a
  window of the last ``window`` examples the gate counts the examples where
  the reference was right and the live model wrong (or, for regressors, had
  the smaller error), and the reverse: a sign test (McNemar's test for
  classifiers). ``z = (ref_better - live_better) / sqrt(ref_better + live_better)``.
* **A drift detector.** River's ADWIN watches the live model's error stream.
  A rise in the error starts a new comparison (the window is cleared), so the
  test compares the two models on data after the change only.

It rolls back to the reference when, after a detected rise in the error, the
reference is better with ``z >= z_threshold`` over at least ``min_discordant``
disagreeing examples.

Why this does not ping-pong on a lasting concept change: the reference is
frozen on the old concept, the live model learns the new one, so the live
model is the better of the two on new data and the test never favours the
reference. A burst of bad labels is different: the live model learns them,
and once good labels come back the frozen reference beats it. A change lasting
longer than ``steady_examples`` becomes the new normal: the reference moves on.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from river import drift

from .state import LiveModel


@dataclass(frozen=True)
class GateSettings:
    window: int = 500
    z_threshold: float = 3.0
    min_discordant: int = 30
    steady_examples: int = 1000


@dataclass(frozen=True)
class Verdict:
    """Roll back to ``version``, because ``reason``."""

    version: int
    reason: str
    z: float
    live_error: float
    reference_error: float


class QualityGate:
    """The gate of one live model."""

    def __init__(self, settings: GateSettings, is_classifier: bool) -> None:
        self.settings = settings
        self.is_classifier = is_classifier
        self.reference: LiveModel | None = None
        self.reference_version: int | None = None
        self.reset()

    def reset(self) -> None:
        """Start over (after a rollback, or when the reference changes)."""
        self.detector = drift.ADWIN()
        self.pairs: deque[tuple[float, float]] = deque(maxlen=self.settings.window)
        self.ref_better = self.live_better = 0
        self.alarmed = False
        self.steady_for = 0

    def set_reference(self, reference: LiveModel, version: int) -> None:
        self.reference, self.reference_version = reference, version
        self.reset()

    @property
    def steady(self) -> bool:
        """No rise in the error for ``steady_examples``, and not worse than the reference."""
        return self.steady_for >= self.settings.steady_examples and self.z() < self.settings.z_threshold

    def z(self) -> float:
        n = self.ref_better + self.live_better
        return 0.0 if n == 0 else (self.ref_better - self.live_better) / math.sqrt(n)

    def _error(self, y: Any, y_pred: Any) -> float:
        if y_pred is None:
            return 1.0 if self.is_classifier else math.inf
        if self.is_classifier:
            return 0.0 if y_pred == y else 1.0
        return abs(float(y) - float(y_pred))

    def observe(self, x: dict[str, Any], y: Any, live_pred: Any) -> Verdict | None:
        """One example scored by the live model (before learning it); a verdict when it must roll back."""
        live_err = self._error(y, live_pred)
        before = self.detector.estimation
        self.detector.update(live_err if math.isfinite(live_err) else 1.0)
        self.steady_for += 1
        if self.detector.drift_detected and self.detector.estimation > before:
            # the error rose: compare the models on what comes after the change only
            self.pairs.clear()
            self.ref_better = self.live_better = 0
            self.alarmed = True
            self.steady_for = 0
        if self.reference is None:
            return None
        ref_err = self._error(y, self.reference.model.predict_one(x))
        if len(self.pairs) == self.pairs.maxlen:
            self._count(*self.pairs[0], -1)
        self.pairs.append((live_err, ref_err))
        self._count(live_err, ref_err, +1)
        n = self.ref_better + self.live_better
        z = self.z()
        if self.alarmed and n >= self.settings.min_discordant and z >= self.settings.z_threshold:
            live_mean = sum(p[0] for p in self.pairs) / len(self.pairs)
            ref_mean = sum(p[1] for p in self.pairs) / len(self.pairs)
            what = "error rate" if self.is_classifier else "mean absolute error"
            return Verdict(
                version=self.reference_version or 0, z=z, live_error=live_mean, reference_error=ref_mean,
                reason=(f"quality gate: after a rise in the live model's error (ADWIN), snapshot "
                        f"v{self.reference_version} did better on the same {len(self.pairs)} examples "
                        f"({what} {ref_mean:.3f} vs live {live_mean:.3f}; better on {self.ref_better}, "
                        f"worse on {self.live_better}, z={z:.1f})"))
        return None

    def _count(self, live_err: float, ref_err: float, step: int) -> None:
        if ref_err < live_err:
            self.ref_better += step
        elif live_err < ref_err:
            self.live_better += step
