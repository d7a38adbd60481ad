"""One contract suite for every model spec, built-in or the operator's own (``streamlearn specs check``).

What a spec must do to be served (River's ``river.checks`` do the same for
every River estimator):

* **River's checks**: ``river.checks.yield_checks`` (cloning, pickling,
  emerging and disappearing features, predicting before learning, ...) on
  River's datasets for the model's task. River's feature-shuffling check
  cannot clone a pipeline that holds a union (its ``seed_params`` fails
  inside River); for those the same check runs on two fresh builds.
* **Checkpoint round trip**: learn, checkpoint (signed, compact), restore:
  the restored model predicts identically and, learning the same examples
  after, stays identical to the original.
* **Progressive validation equals River's**: our score-then-learn steps on a
  bundled dataset give exactly River's ``evaluate.progressive_val_score``.
* **Checkpoint size**: after the run, the checkpoint fits under the limit.
"""

from __future__ import annotations

import copy
import itertools
import random
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from river import base, checks, datasets, evaluate
from river.checks.utils import assert_predictions_are_close

from . import blobs
from .specs import Spec
from .state import learn, new_metric, new_model, predict

KEY = b"streamlearn-spec-check"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""
    seconds: float = 0.0


def dataset_for(spec: Spec, n: int) -> list[tuple[dict, object]]:
    """A bundled River dataset of the spec's task (no download): Phishing, or TrumpApproval."""
    data = datasets.Phishing() if spec.is_classifier else datasets.TrumpApproval()
    return list(itertools.islice(data, n))


def run(spec: Spec, *, max_checkpoint_bytes: int = 900_000, examples: int = 1000,
        river_checks: bool = True) -> list[Check]:
    """Every check of the suite on ``spec``; each passes or says why not."""
    suite: list[tuple[str, Callable[[], str]]] = []
    if river_checks:
        try:
            suite += list(_river_checks(spec))
        except ModuleNotFoundError as exc:   # River's checks load some datasets from scikit-learn
            suite.append(("river checks", lambda exc=exc: _raise(RuntimeError(
                f"{exc}: install scikit-learn (pip install 'streamlearn[checks]') to run them"))))
    data = dataset_for(spec, examples)
    suite += [
        ("checkpoint round trip", lambda: _round_trip(spec, data)),
        ("progressive validation equals River's", lambda: _progressive(spec, data)),
        (f"checkpoint under {max_checkpoint_bytes:,} bytes", lambda: _size(spec, data, max_checkpoint_bytes)),
    ]
    return [_timed(name, fn) for name, fn in suite]


def _raise(exc: Exception) -> str:
    raise exc


def _timed(name: str, fn: Callable[[], str]) -> Check:
    started = time.perf_counter()
    try:
        detail = fn()
        return Check(name, True, detail, time.perf_counter() - started)
    except Exception as exc:  # noqa: BLE001 - a failed check is a result, not a crash
        return Check(name, False, f"{type(exc).__name__}: {exc}"[:500], time.perf_counter() - started)


def _river_checks(spec: Spec) -> Iterator[tuple[str, Callable[[], str]]]:
    counts: dict[str, int] = {}
    for check in checks.yield_checks(spec.build()):
        name = getattr(check, "__name__", repr(check))
        counts[name] = counts.get(name, 0) + 1
        label = f"river: {name}" + (f" #{counts[name]}" if counts[name] > 1 else "")

        def one(check=check, name=name) -> str:
            try:
                check(spec.build())
            except IndexError:
                if name != "check_shuffle_features_no_impact":
                    raise
                dataset = check.keywords["dataset"]
                _shuffle_check(spec, dataset)
                return "River's version cannot clone this pipeline (seed_params); ran on two fresh builds"
            return ""
        yield label, one


def _shuffle_check(spec: Spec, dataset: Iterable) -> None:
    """River's check_shuffle_features_no_impact, on two fresh builds instead of a clone with seeded params."""
    model, shuffled = spec.build(), spec.build()
    rng = random.Random(42)
    for x, y in dataset:
        keys = list(x)
        rng.shuffle(keys)
        x_shuffled = {k: x[k] for k in keys}
        assert_predictions_are_close(_infer(model, x), _infer(shuffled, x_shuffled))
        model.learn_one(x, y)
        shuffled.learn_one(x_shuffled, y)


def _infer(model: base.Estimator, x: dict):
    return model.predict_proba_one(x) if isinstance(model, base.Classifier) else model.predict_one(x)


def _round_trip(spec: Spec, data: list) -> str:
    half = len(data) // 2
    live = new_model("check", spec)
    for x, y in data[:half]:
        learn(live, x, y)
    blob = blobs.dump(live, KEY, 0.0)
    restored = blobs.load(blob, KEY, {spec.name: spec})
    for x, y in data[half:]:
        a, b = predict(live, x), predict(restored, x)
        assert (a.label, a.proba) == (b.label, b.proba), f"the restored model predicts otherwise on {x}"
        learn(live, x, y)
        learn(restored, x, y)
    assert restored.learned == live.learned
    return f"{len(blob):,} bytes after {half} examples; identical over the next {len(data) - half}"


def _progressive(spec: Spec, data: list) -> str:
    live = new_model("check", spec)
    for x, y in data:
        learn(live, x, y)
    reference = evaluate.progressive_val_score(iter(copy.deepcopy(data)), spec.build(), new_metric(spec))
    ours, theirs = live.metric.get(), reference.get()
    assert ours == theirs, f"{live.metric} here, {reference} with River"
    return f"{live.metric} on {len(data)} examples of {'Phishing' if spec.is_classifier else 'TrumpApproval'}"


def _size(spec: Spec, data: list, max_bytes: int) -> str:
    live = new_model("check", spec)
    for x, y in data:
        learn(live, x, y)
    size = len(blobs.dump(live, KEY, 0.0))
    assert size <= max_bytes, f"{size:,} bytes after {len(data)} examples"
    return f"{size:,} bytes after {len(data)} examples"
