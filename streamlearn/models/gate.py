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


def error_of(is_classifier: bool, y: Any, y_pred: Any) -> float:
    """One prediction's error: 0/1 for a classifier, the absolute error for a regressor (no answer: the worst)."""
    if y_pred is None:
        return 1.0 if is_classifier else math.inf
    if is_classifier:
        return 0.0 if y_pred == y else 1.0
    return abs(float(y) - float(y_pred))


class PairedTest:
    """The sign test of two models scored on the same examples, over a sliding window.

    ``a_better`` counts the examples of the window where model A had the
    smaller error, ``b_better`` the reverse; ties count for neither.
    ``z() = (a_better - b_better) / sqrt(a_better + b_better)``: large when A
    is significantly better (McNemar's test, for classifiers).
    """

    __slots__ = ("pairs", "a_better", "b_better")

    def __init__(self, window: int) -> None:
        self.pairs: deque[tuple[float, float]] = deque(maxlen=window)
        self.a_better = self.b_better = 0

    def add(self, a_err: float, b_err: float) -> None:
        if len(self.pairs) == self.pairs.maxlen:
            self._count(*self.pairs[0], -1)
        self.pairs.append((a_err, b_err))
        self._count(a_err, b_err, +1)

    def clear(self) -> None:
        self.pairs.clear()
        self.a_better = self.b_better = 0

    @property
    def discordant(self) -> int:
        return self.a_better + self.b_better

    def z(self) -> float:
        n = self.a_better + self.b_better
        return 0.0 if n == 0 else (self.a_better - self.b_better) / math.sqrt(n)

    def means(self) -> tuple[float, float]:
        """Mean error of A and of B over the window."""
        n = len(self.pairs) or 1
        return sum(p[0] for p in self.pairs) / n, sum(p[1] for p in self.pairs) / n

    def _count(self, a_err: float, b_err: float, step: int) -> None:
        if a_err < b_err:
            self.a_better += step
        elif b_err < a_err:
            self.b_better += step


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
        self.test = PairedTest(self.settings.window)   # A: the reference, B: the live model
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
        return self.test.z()

    def observe(self, x: dict[str, Any], y: Any, live_pred: Any) -> Verdict | None:
        """One example scored by the live model (before learning it); a verdict when it must roll back."""
        live_err = error_of(self.is_classifier, y, live_pred)
        before = self.detector.estimation
        self.detector.update(live_err if math.isfinite(live_err) else 1.0)
        self.steady_for += 1
        if self.detector.drift_detected and self.detector.estimation > before:
            # the error rose: compare the models on what comes after the change only
            self.test.clear()
            self.alarmed = True
            self.steady_for = 0
        if self.reference is None:
            return None
        test = self.test
        test.add(error_of(self.is_classifier, y, self.reference.model.predict_one(x)), live_err)
        z = test.z()
        if self.alarmed and test.discordant >= self.settings.min_discordant and z >= self.settings.z_threshold:
            ref_mean, live_mean = test.means()
            what = "error rate" if self.is_classifier else "mean absolute error"
            return Verdict(
                version=self.reference_version or 0, z=z, live_error=live_mean, reference_error=ref_mean,
                reason=(f"quality gate: after a rise in the live model's error (ADWIN), snapshot "
                        f"v{self.reference_version} did better on the same {len(test.pairs)} examples "
                        f"({what} {ref_mean:.3f} vs live {live_mean:.3f}; better on {test.a_better}, "
                        f"worse on {test.b_better}, z={z:.1f})"))
        return None
