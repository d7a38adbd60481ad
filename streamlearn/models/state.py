"""Live model state and the two steps that touch it: predict, and learn.

Pure River: no Kafka here. A :class:`LiveModel` is one model key's current
model with its bookkeeping; :class:`ModelRegistry` holds the live models a
worker owns, one dict per assigned partition, so that a revoked partition's
models are dropped in one step.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from itertools import islice
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

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
            pred = _shadow(challenger, x, y)
            if pred is not _FAILED:
                shadow[name] = pred
    correct = (y_pred == y) if live.spec.is_classifier and y_pred is not None else None
    return Scored(y_pred, y, correct, shadow)


_FAILED = object()


def _shadow(c: Challenger, x: dict[str, Any], y: Any) -> Any:
    """A challenger's progressive validation step, like its champion's: its prediction, or _FAILED."""
    if c.error is not None:
        return _FAILED
    try:
        y_pred = c.model.predict_one(x)
        if y_pred is not None:
            c.metric.update(y, y_pred)
        c.model.learn_one(x, y)
        c.learned += 1
        return y_pred
    except Exception as exc:  # noqa: BLE001 - a challenger must never fail its champion
        c.error = f"{type(exc).__name__}: {exc}"[:300]
        return _FAILED


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


class ModelRegistry:
    """The live models of the partitions a worker owns: ``{partition: {key: LiveModel}}``.

    After a rebalance the models of partitions the worker kept are *held*:
    each is taken back on its first use only if ``still_valid(partition,
    live)`` says nobody else changed it in between (else the caller restores
    it, as a model of a partition that moved).

    Bounded memory: models are kept in least-recently-used order. With
    ``max_live`` set, adding a model beyond it first drops held models, then
    the least recently used models that ``evictable(partition, live)``
    accepts (the caller's test that the model's state is all in its
    checkpoint: it comes back from there on its next use); one not
    evictable yet keeps its place. :meth:`evict_idle`
    drops the evictable models unused for a while. ``on_evict(partition,
    live, reason)`` is told of each.
    """

    def __init__(self, factory: Callable[[str, Spec], LiveModel],
                 still_valid: Callable[[int, LiveModel], bool] = lambda partition, live: False, *,
                 max_live: int = 0, evictable: Callable[[int, LiveModel], bool] = lambda partition, live: True,
                 on_evict: Callable[[int, LiveModel, str], None] = lambda partition, live, reason: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._factory = factory
        self._still_valid = still_valid
        self._partitions: dict[int, dict[str, LiveModel]] = {}
        self._held: dict[int, dict[str, LiveModel]] = {}
        self._order: OrderedDict[str, int] = OrderedDict()   # key -> partition, least recently used first
        self._used: dict[str, float] = {}                    # key -> time of its last use
        self.max_live = max_live
        self._evictable = evictable
        self._on_evict = on_evict
        self._clock = clock
        self.kept = self.invalidated = 0    # held models taken back / refused, since start

    def get(self, partition: int, key: str) -> LiveModel | None:
        live = self._partitions.get(partition, {}).get(key)
        if live is not None:
            self._order.move_to_end(key)
            self._used[key] = self._clock()
        elif self._held:
            held = self._held.get(partition)
            if held and key in held:
                candidate = held.pop(key)
                if self._still_valid(partition, candidate):
                    self.kept += 1
                    self.put(partition, candidate)
                    return candidate
                self.invalidated += 1
        return live

    def hold(self, assigned: set[int]) -> tuple[int, int]:
        """After a rebalance: hold the models of the partitions still assigned, drop the rest; (held, dropped)."""
        dropped = 0
        for source in (self._held, self._partitions):
            for p in list(source):
                if p not in assigned:
                    dropped += len(source.pop(p))
        for p, models in self._partitions.items():
            self._held.setdefault(p, {}).update(models)
        self._partitions = {}
        self._order.clear()
        self._used.clear()
        return sum(len(m) for m in self._held.values()), dropped

    def get_or_create(self, partition: int, key: str, spec: Spec) -> LiveModel:
        """The live model of ``key``; a fresh one of ``spec`` if it has none yet."""
        live = self.get(partition, key)
        if live is None:
            live = self._factory(key, spec)
            self.put(partition, live)
        return live

    def put(self, partition: int, live: LiveModel) -> None:
        self._partitions.setdefault(partition, {})[live.key] = live
        self._order[live.key] = partition
        self._order.move_to_end(live.key)
        self._used[live.key] = self._clock()
        if self.max_live and len(self._order) + self.held() > self.max_live:
            self._shrink(live.key)

    def held(self) -> int:
        """Models held since the last rebalance, not yet taken back."""
        return sum(len(m) for m in self._held.values()) if self._held else 0

    def _shrink(self, added: str) -> None:
        """Down to ``max_live``: held models first, then the least recently used evictable ones, never
        the model just ``added`` (its caller is about to use it)."""
        for p in list(self._held):
            models = self._held[p]
            while models and len(self._order) + self.held() > self.max_live:
                models.popitem()
            if not models:
                del self._held[p]
        for key in list(islice(self._order, 32)):   # the oldest few: many not yet evictable cost little
            if len(self._order) <= self.max_live:
                break
            if key != added:
                self._evict(self._order[key], key, "cap")

    def evict_idle(self, idle_seconds: float) -> int:
        """Drop the evictable models unused for ``idle_seconds``; how many were dropped."""
        cutoff = self._clock() - idle_seconds
        idle = []
        for key in self._order:   # least recently used first: the idle ones are a prefix
            if self._used[key] > cutoff:
                break
            idle.append(key)
        return sum(self._evict(self._order[key], key, "idle") for key in idle)

    def _evict(self, partition: int, key: str, reason: str) -> bool:
        live = self._partitions[partition][key]
        if not self._evictable(partition, live):
            return False   # not yet (say it learned since its checkpoint): it keeps its place
        del self._partitions[partition][key], self._order[key], self._used[key]
        self._on_evict(partition, live, reason)
        return True

    def partition(self, partition: int) -> list[LiveModel]:
        return list(self._partitions.get(partition, {}).values())

    def find(self, key: str) -> LiveModel | None:
        for models in self._partitions.values():
            if key in models:
                return models[key]
        return None

    def __iter__(self) -> Iterator[tuple[int, LiveModel]]:
        for p, models in self._partitions.items():
            for live in models.values():
                yield p, live

    def __len__(self) -> int:
        return sum(len(m) for m in self._partitions.values())
