"""Named model specs: how a model key's fresh River model is built.

A spec is a name, a task and a builder taking hyperparameters. Builders use
River's defaults unless the settings pass parameters. Linear specs scale
numeric features and one-hot encode string features, so events may carry
both (``{"amount": 12.5, "country": "FR"}``); tree specs take both natively.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Callable

from river import base, compose, forest, linear_model, preprocessing, tree

CLASSIFICATION = "classification"
REGRESSION = "regression"


class UnknownSpec(KeyError):
    """No spec has that name."""

    def __str__(self) -> str:
        return f"unknown model spec {self.args[0]!r}; known: {', '.join(sorted(SPECS))}"


@dataclass(frozen=True)
class Spec:
    name: str
    task: str
    summary: str
    builder: Callable[..., base.Estimator]

    @property
    def is_classifier(self) -> bool:
        return self.task == CLASSIFICATION

    def build(self, params: dict[str, Any] | None = None) -> base.Estimator:
        """A fresh, untrained model; ``params`` go to the final estimator."""
        try:
            return self.builder(**(params or {}))
        except TypeError as exc:
            raise ValueError(f"bad hyperparameters for spec {self.name!r}: {exc}") from None


def _scaled(estimator: base.Estimator) -> base.Estimator:
    """Scale numbers, one-hot strings, then the linear estimator.

    With numeric features only this gives exactly the predictions of
    ``StandardScaler() | estimator`` (checked in the unit tests).
    """
    numeric = compose.SelectType(numbers.Number) | preprocessing.StandardScaler()
    categorical = compose.SelectType(str) | preprocessing.OneHotEncoder()
    return (numeric + categorical) | estimator


SPECS: dict[str, Spec] = {
    s.name: s
    for s in (
        Spec("logreg", CLASSIFICATION, "StandardScaler | LogisticRegression",
             lambda **p: _scaled(linear_model.LogisticRegression(**p))),
        Spec("linreg", REGRESSION, "StandardScaler | LinearRegression",
             lambda **p: _scaled(linear_model.LinearRegression(**p))),
        Spec("hoeffding_tree", CLASSIFICATION, "HoeffdingTreeClassifier",
             lambda **p: tree.HoeffdingTreeClassifier(**p)),
        Spec("hoeffding_adaptive_tree", CLASSIFICATION, "HoeffdingAdaptiveTreeClassifier",
             lambda **p: tree.HoeffdingAdaptiveTreeClassifier(**{"seed": 42, **p})),
        Spec("arf", CLASSIFICATION, "ARFClassifier (adaptive random forest)",
             lambda **p: forest.ARFClassifier(**{"seed": 42, **p})),
    )
}


def get_spec(name: str) -> Spec:
    try:
        return SPECS[name]
    except KeyError:
        raise UnknownSpec(name) from None
