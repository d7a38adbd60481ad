"""Model specs: how a model key's fresh River model is built.

A spec is a name and a factory returning a River estimator (or pipeline);
hyperparameters from the settings go to the factory. Its task,
classification or regression, is read from the estimator the factory builds
(River's own class hierarchy: ``base.Classifier``, ``base.Regressor``), never
from the name. ``SPECS`` holds the built-in ones; an operator registers their
own by import path (``STREAMLEARN_SPECS="fraud=mycompany.models:fraud_pipeline"``,
``Specs.with_factories``): the only way specs are made, so nothing a topic
or an HTTP request carries can build one (an event may only *name* a
registered spec).

Built-ins use River's defaults, with a fixed seed for randomized models.
Linear specs scale numbers and one-hot encode strings, so events may carry
both (``{"amount": 12.5, "country": "FR"}``); trees take both natively.
"""

from __future__ import annotations

import importlib
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping

from river import base, compose, forest, linear_model, naive_bayes, neighbors, preprocessing, tree

CLASSIFICATION = "classification"
REGRESSION = "regression"


class SpecError(ValueError):
    """A spec that cannot be used: its factory cannot be imported, raises, or builds no River model."""


class UnknownSpec(KeyError):
    """No spec has that name."""

    def __init__(self, name: str, known: Iterable[str] = ()) -> None:
        super().__init__(name)
        self.known = sorted(known)

    def __str__(self) -> str:
        return f"unknown model spec {self.args[0]!r}; known: {', '.join(self.known)}"


def task_of(model: Any) -> str:
    """Classification or regression, as River's own classes say (pipelines answer for their last step)."""
    if isinstance(model, base.Classifier):
        return CLASSIFICATION
    if isinstance(model, base.Regressor):
        return REGRESSION
    raise SpecError(f"{type(model).__name__} is neither a River classifier nor a River regressor")


@dataclass(frozen=True)
class Spec:
    name: str
    summary: str
    factory: Callable[..., base.Estimator]
    source: str = "built-in"      # or the import path it was registered from
    task: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.task:
            object.__setattr__(self, "task", task_of(self._checked(self.factory())))

    @property
    def is_classifier(self) -> bool:
        return self.task == CLASSIFICATION

    def build(self, params: dict[str, Any] | None = None) -> base.Estimator:
        """A fresh, untrained model; ``params`` go to the factory."""
        try:
            return self._checked(self.factory(**(params or {})))
        except TypeError as exc:
            raise ValueError(f"bad hyperparameters for spec {self.name!r}: {exc}") from None

    def _checked(self, model: Any) -> base.Estimator:
        if not isinstance(model, base.Estimator):
            raise SpecError(f"spec {self.name!r} ({self.source}) returned {type(model).__name__}, "
                            f"not a River estimator")
        return model


class Specs(Mapping[str, Spec]):
    """The registered specs, by name."""

    def __init__(self, specs: Iterable[Spec]) -> None:
        self._specs = {s.name: s for s in specs}

    def __getitem__(self, name: str) -> Spec:
        try:
            return self._specs[name]
        except KeyError:
            raise UnknownSpec(name, self._specs) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def with_factories(self, text: str) -> "Specs":
        """These specs and the operator's: ``name=package.module:factory,...`` (a user spec may not shadow one)."""
        added = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, path = (s.strip() for s in part.partition("="))
            if not sep or not name or not path:
                raise SpecError(f"spec {part!r} is not `name=package.module:factory`")
            if name in self._specs or name in (s.name for s in added):
                raise SpecError(f"spec {name!r} is registered already")
            added.append(Spec(name, path, load_factory(path), source=path))
        return Specs([*self._specs.values(), *added])


def load_factory(path: str) -> Callable[..., base.Estimator]:
    """The factory at ``package.module:function``, checked to build a River estimator."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise SpecError(f"{path!r} is not `package.module:factory`")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is the same clear error
        raise SpecError(f"cannot import {module_name!r} for spec factory {path!r}: {type(exc).__name__}: {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise SpecError(f"{module_name!r} has no callable {attr!r}")

    def build(**params: Any) -> base.Estimator:
        try:
            return factory(**params)
        except TypeError:
            raise
        except Exception as exc:  # noqa: BLE001 - the operator's code: say whose error it is
            raise SpecError(f"spec factory {path!r} raised {type(exc).__name__}: {exc}") from None
    build.__name__ = attr
    return build


def _scaled(estimator: base.Estimator) -> base.Estimator:
    """Scale numbers, one-hot strings, then the estimator.

    With numeric features only this gives exactly the predictions of
    ``StandardScaler() | estimator`` (checked in the unit tests).
    """
    numeric = compose.SelectType(numbers.Number) | preprocessing.StandardScaler()
    categorical = compose.SelectType(str) | preprocessing.OneHotEncoder()
    return (numeric + categorical) | estimator


def _numeric(estimator: base.Estimator) -> base.Estimator:
    """Numbers only (strings dropped), scaled: for models that need numeric features."""
    return compose.SelectType(numbers.Number) | preprocessing.StandardScaler() | estimator


SPECS = Specs([
    Spec("logreg", "StandardScaler | LogisticRegression", lambda **p: _scaled(linear_model.LogisticRegression(**p))),
    Spec("linreg", "StandardScaler | LinearRegression", lambda **p: _scaled(linear_model.LinearRegression(**p))),
    Spec("hoeffding_tree", "HoeffdingTreeClassifier", lambda **p: tree.HoeffdingTreeClassifier(**p)),
    Spec("hoeffding_adaptive_tree", "HoeffdingAdaptiveTreeClassifier",
         lambda **p: tree.HoeffdingAdaptiveTreeClassifier(**{"seed": 42, **p})),
    Spec("arf", "ARFClassifier (adaptive random forest)", lambda **p: forest.ARFClassifier(**{"seed": 42, **p})),
    Spec("gaussian_nb", "GaussianNB (numeric features)",
         lambda **p: compose.SelectType(numbers.Number) | naive_bayes.GaussianNB(**p)),
    Spec("knn", "StandardScaler | KNNClassifier (numeric features)",
         lambda **p: _numeric(neighbors.KNNClassifier(**p))),
    Spec("hoeffding_tree_regressor", "HoeffdingTreeRegressor (leaf models: StandardScaler | LinearRegression)",
         lambda **p: tree.HoeffdingTreeRegressor(**{"leaf_model": _scaled(linear_model.LinearRegression()), **p})),
])


def get_spec(name: str) -> Spec:
    """A built-in spec (the settings' ``specs`` hold the operator's too)."""
    return SPECS[name]
