"""Live model state and the two steps that touch it: predict, and learn.

Pure River: no Kafka here. A :class:`LiveModel` is one model key's current
model with its bookkeeping; :class:`ModelRegistry` holds the live models a
worker owns, one dict per assigned partition, so that a revoked partition's
models are dropped in one step.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from river import base, metrics

from .specs import Spec


@dataclass(slots=True)
class Prediction:
    """What a model answered for one event."""

    label: Any
    proba: dict[Any, float] | None
    version: int
    learned: int


@dataclass(slots=True)
class Scored:
    """Progressive validation of one example: the prediction made before learning it."""

    y_pred: Any
    y_true: Any
    correct: bool | None
    # each challenger's prediction for the same example (None when the model has no challengers)
    shadow: dict[str, Any] | None = None


class RecentEvents:
    """The event ids of the last ``size`` examples a model learned: it learns none of them again.

    A training example can reach the learner twice: a label handled again
    after a crash (its input was not yet committed) is joined again. Such a
    repeat follows its original within the examples of the few seconds
    before the crash, so remembering the last ``size`` event ids of each
    model catches it (docs/checkpoints.md says why, and the limits). Kept
    inside the model's checkpoint, so it is exactly as old as the model.
    """

    __slots__ = ("size", "_order", "_ids")

    def __init__(self, size: int = 10_000, ids: list[str] | None = None) -> None:
        self.size = size
        self._order: deque[str] = deque()
        self._ids: set[str] = set()
        for event_id in ids or ():
            self.add(event_id)

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, event_id: str) -> None:
        if event_id in self._ids:
            return
        self._order.append(event_id)
        self._ids.add(event_id)
        while len(self._order) > self.size:
            self._ids.discard(self._order.popleft())

    def resize(self, size: int) -> None:
        self.size = size
        while len(self._order) > size:
            self._ids.discard(self._order.popleft())

    def ids(self) -> list[str]:
        """Oldest first."""
        return list(self._order)

    def __reduce__(self):
        return RecentEvents, (self.size, self.ids())


@dataclass
class Challenger:
    """A model learning every example of its key in the champion's shadow: scored on it, then taught it.

    It never answers an event. One that raises on an example stops learning
    (``error`` says why) and leaves its champion untouched. A former champion
    (replaced by a promotion, or by a restore of another spec) stays on as a
    challenger: ``retired_version`` is the snapshot it was frozen as.
    """

    spec: Spec
    model: base.Estimator
    metric: metrics.base.Metric = field(default=None)  # type: ignore[assignment]
    learned: int = 0
    error: str | None = None
    retired_version: int | None = None

    def __post_init__(self) -> None:
        if self.metric is None:
            self.metric = new_metric(self.spec)

    def describe(self) -> dict[str, Any]:
        return {"spec": self.spec.name, "task": self.spec.task, "learned": self.learned,
                "metric": {"name": type(self.metric).__name__, "value": self.metric.get()}, "error": self.error,
                "retired_version": self.retired_version}


@dataclass
class LiveModel:
    """One model key's live model and what we know about it."""

    key: str
    spec: Spec
    model: base.Estimator
    version: int = 1
    parent_version: int | None = None
    learned: int = 0
    metric: metrics.base.Metric = field(default=None)  # type: ignore[assignment]
    created_at: float = field(default_factory=time.time)
    # offset of the last training example learned (-1: none); examples at or
    # below it are already inside this model and are skipped on replay
    offset: int = -1
    # where a warm-started model came from: {"template", "version", "learned"}
    warm_start: dict[str, Any] | None = None
    # event ids of the last examples learned: a repeat of one is skipped
    recent: RecentEvents = field(default_factory=RecentEvents)
    # challengers by spec name: they learn what the champion learns, in the same order (checkpointed with it)
    challengers: dict[str, Challenger] = field(default_factory=dict)
    # a classifier's labels as it learned them, "bool" or "int" (else None): River's binary classifiers
    # answer True/False whatever they learned, its trees answer the classes they saw; predictions answer
    # in the labels' own type, whichever model answers
    label_type: str | None = None

    def __post_init__(self) -> None:
        if self.metric is None:
            self.metric = new_metric(self.spec)

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary for operators."""
        return {
            "model": self.key,
            "spec": self.spec.name,
            "task": self.spec.task,
            "version": self.version,
            "parent_version": self.parent_version,
            "learned": self.learned,
            "metric": {"name": type(self.metric).__name__, "value": self.metric.get()},
            "created_at": self.created_at,
            "offset": self.offset,
            "warm_start": self.warm_start,
            "challengers": [c.describe() for c in self.challengers.values()],
        }


def new_metric(spec: Spec) -> metrics.base.Metric:
    """The online metric of progressive validation for a spec's task."""
    return metrics.Accuracy() if spec.is_classifier else metrics.MAE()


def new_model(key: str, spec: Spec, params: dict[str, Any] | None = None) -> LiveModel:
    return LiveModel(key=key, spec=spec, model=spec.build(params))


def predict(live: LiveModel, x: dict[str, Any]) -> Prediction:
    """Answer one event with the live model (the model does not change); a classifier answers in the type
    of the labels it learned (``label_type``)."""
    if live.spec.is_classifier:
        proba = live.model.predict_proba_one(x)
        if live.label_type is not None and proba:
            proba = as_learned(proba, live.label_type)
        # River's Classifier.predict_one is exactly this argmax (ties: first).
        label = max(proba, key=proba.get) if proba else None
        return Prediction(label, proba, live.version, live.learned)
    return Prediction(live.model.predict_one(x), None, live.version, live.learned)


def label_type_of(y: Any) -> str | None:
    """"bool" or "int" for the labels whose type River's models may not keep; None for the others."""
    return "bool" if type(y) is bool else "int" if type(y) is int else None


def as_learned(proba: dict[Any, float], label_type: str) -> dict[Any, float]:
    """A classifier's class probabilities keyed in the type of the labels it learned (True/False as 1/0 for
    int labels, 1/0 as True/False for bool labels); other classes as they are."""
    if label_type == "int":
        if any(type(k) is bool for k in proba):
            return {int(k) if type(k) is bool else k: p for k, p in proba.items()}
    elif any(type(k) is int and k in (0, 1) for k in proba):
        return {bool(k) if type(k) is int and k in (0, 1) else k: p for k, p in proba.items()}
    return proba


def learn(live: LiveModel, x: dict[str, Any], y: Any, event_id: str | None = None) -> Scored | None:
    """Progressive validation: score what the model predicts for ``x``, then learn ``(x, y)``.

    With ``event_id``: None, learning nothing, when the model learned that event already.
    """
    if event_id is not None:
        if event_id in live.recent:
            return None
        live.recent.add(event_id)
    if live.spec.is_classifier:
        live.label_type = label_type_of(y)
    y_pred = live.model.predict_one(x)
    if y_pred is not None:
        live.metric.update(y, y_pred)
    live.model.learn_one(x, y)
    live.learned += 1
    shadow = None
    if live.challengers:
        shadow = {}
        for name, challenger in live.challengers.items():
            pred = shadow_step(challenger, x, y)
            if pred is not FAILED:
                shadow[name] = pred
    correct = (y_pred == y) if live.spec.is_classifier and y_pred is not None else None
    return Scored(y_pred, y, correct, shadow)


FAILED = object()


def shadow_step(c: Challenger, x: dict[str, Any], y: Any) -> Any:
    """A challenger's progressive validation step, like its champion's: its prediction, or FAILED."""
    if c.error is not None:
        return FAILED
    try:
        y_pred = c.model.predict_one(x)
        if y_pred is not None:
            c.metric.update(y, y_pred)
        c.model.learn_one(x, y)
        c.learned += 1
        return y_pred
    except Exception as exc:  # noqa: BLE001 - a challenger must never fail its champion
        c.error = f"{type(exc).__name__}: {exc}"[:300]
        return FAILED


def set_challengers(live: LiveModel, specs: list[Spec], params: dict[str, dict] | None = None) -> list[str]:
    """Give ``live`` exactly the challengers of ``specs`` (those it has keep what they learned); what changed.

    A challenger must be of its champion's task, and of another spec. A former
    champion stays, rules or not (a rollback may bring it back).
    """
    params = params or {}
    wanted = {s.name: s for s in specs if s.task == live.spec.task and s.name != live.spec.name}
    keep = {name for name, c in live.challengers.items()
            if name != live.spec.name and (name in wanted or c.retired_version is not None)}
    changes = [f"dropped {name}" for name in live.challengers if name not in keep]
    kept = {name: c for name, c in live.challengers.items() if name in keep}
    for name, spec in wanted.items():
        if name not in kept:
            kept[name] = Challenger(spec, spec.build(params.get(name)))
            changes.append(f"added {name}")
    changes += [f"refused {s.name} (a {s.task} spec, the champion is {live.spec.task})"
                for s in specs if s.task != live.spec.task]
    live.challengers = kept
    return changes


def retire(champion: LiveModel) -> Challenger:
    """A replaced champion (already snapshotted: its parent is that snapshot), going on as a challenger."""
    return Challenger(champion.spec, champion.model, champion.metric, champion.learned,
                      retired_version=champion.parent_version)
