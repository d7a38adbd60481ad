"""Automatic promotion: a challenger that is significantly better than its champion takes its place.

The quality gate's paired test, pointed the other way. For every training
example both the champion and each challenger are scored before learning it
(progressive validation); over a window of the last ``window`` examples the
policy counts, per challenger, the examples where the challenger had the
smaller error and those where the champion had, and promotes the challenger
when ``z = (challenger_better - champion_better) / sqrt(both) >= z_threshold``
over at least ``min_discordant`` disagreeing examples, once the challenger has
learned ``min_examples`` (so a young challenger is not promoted on luck).

The windows live in memory, like the gate's: a restarted or rebalanced
worker starts them over, so a promotion needs a full window of evidence on
the new owner. After a promotion every window of the key starts over, and the
old champion, now a challenger, has to win a new window to come back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .gate import PairedTest, error_of
from .state import FAILED, Challenger, shadow_step


@dataclass(frozen=True)
class PromotionSettings:
    window: int = 500
    z_threshold: float = 3.0
    min_discordant: int = 30
    min_examples: int = 1000


@dataclass(frozen=True)
class Promote:
    """Promote challenger ``spec``, because ``reason``."""

    spec: str
    reason: str
    z: float
    champion_error: float
    challenger_error: float


class PromotionPolicy:
    """The promotion windows of one model key: one paired test per challenger."""

    def __init__(self, settings: PromotionSettings, is_classifier: bool) -> None:
        self.settings = settings
        self.is_classifier = is_classifier
        self.tests: dict[str, PairedTest] = {}   # A: the challenger, B: the champion

    def reset(self) -> None:
        self.tests.clear()

    def observe(self, y: Any, champion_pred: Any, shadow: Mapping[str, Any],
                challengers: Mapping[str, Challenger]) -> Promote | None:
        """One example, scored by the champion and by each challenger (``shadow``) before learning it."""
        champion_err = error_of(self.is_classifier, y, champion_pred)
        best: Promote | None = None
        for name, y_pred in shadow.items():
            test = self.tests.get(name)
            if test is None:
                test = self.tests[name] = PairedTest(self.settings.window)
            test.add(error_of(self.is_classifier, y, y_pred), champion_err)
            challenger = challengers.get(name)
            if (challenger is None or challenger.learned < self.settings.min_examples
                    or test.discordant < self.settings.min_discordant):
                continue
            z = test.z()
            if z >= self.settings.z_threshold and (best is None or z > best.z):
                chal_mean, champ_mean = test.means()
                what = "error rate" if self.is_classifier else "mean absolute error"
                best = Promote(name, z=z, champion_error=champ_mean, challenger_error=chal_mean, reason=(
                    f"challenger {name} did better than the champion on the same {len(test.pairs)} examples "
                    f"({what} {chal_mean:.3f} vs {champ_mean:.3f}; better on {test.a_better}, worse on "
                    f"{test.b_better}, z={z:.1f})"))
        for name in [n for n in self.tests if n not in challengers]:
            del self.tests[name]
        return best

    def seed(self, name: str, pairs: list[tuple[float, float]]) -> None:
        """A backfilled challenger's window, filled from the last of its history's ``pairs`` (its error, the
        champion's): the policy may act on its next example instead of a window later."""
        test = self.tests[name] = PairedTest(self.settings.window)
        for pair in pairs[-self.settings.window:]:
            test.add(*pair)

    def z_of(self, name: str) -> float | None:
        test = self.tests.get(name)
        return None if test is None else test.z()

    def windows(self, names: Iterable[str]) -> dict[str, dict[str, int]]:
        """The windows of the challengers ``names`` that have one: examples compared, where the challenger did
        better, where the champion did."""
        return {name: {"examples": len(t.pairs), "challenger_better": t.a_better, "champion_better": t.b_better}
                for name in names if (t := self.tests.get(name)) is not None}


def backfill(challenger: Challenger, history: Iterable[tuple[str, dict[str, Any], Any]], answers: Mapping[str, Any],
             is_classifier: bool, pairs: list[tuple[float, float]]) -> None:
    """Teach ``challenger`` its key's ``history`` (event id, features, label, in the order the champion learned
    them), each example scored before it is learned, as in the champion's shadow; append to ``pairs`` the
    (challenger's error, champion's error) of each example whose champion's answer (``answers``, by event id)
    is known. It stops at an example the challenger fails on (its ``error`` says why)."""
    for event_id, x, y in history:
        y_pred = shadow_step(challenger, x, y)
        if y_pred is FAILED:
            return
        if event_id in answers:
            pairs.append((error_of(is_classifier, y, y_pred), error_of(is_classifier, y, answers[event_id])))
