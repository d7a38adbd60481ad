"""models/: specs, live models, progressive validation: River alone, no Kafka."""

from __future__ import annotations

import pickle

import pytest
from river import datasets, evaluate, linear_model, metrics, preprocessing

from streamlearn import models
from streamlearn.models import SPECS, ModelRegistry, get_spec, new_model

X = {"amount": 12.5, "country": "FR", "flag": True}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_spec_learns_predicts_clones_and_pickles(name):
    spec = get_spec(name)
    live = new_model("k", spec)
    y = 3.0 if spec.task == models.REGRESSION else True
    for i in range(30):
        models.learn(live, {**X, "amount": float(i)}, y)
    p = models.predict(live, X)
    assert live.learned == 30 and p.learned == 30 and p.version == 1
    if spec.is_classifier:
        assert p.label is True and p.proba[True] > 0.5
    else:
        assert p.proba is None and abs(p.label - 3.0) < 3.0
    # a round trip through pickle predicts the same (checkpoints rely on it)
    again = pickle.loads(pickle.dumps(live.model))
    assert again.predict_one(X) == live.model.predict_one(X)
    # a new feature, or a missing one, does not break it
    models.predict(live, {"unseen": 1.0})
    models.predict(live, {})


def test_default_spec_is_exactly_scaler_then_logistic_regression():
    ours = get_spec("logreg").build()
    plain = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    for x, y in datasets.Phishing():
        assert ours.predict_proba_one(x) == plain.predict_proba_one(x)
        ours.learn_one(x, y)
        plain.learn_one(x, y)


def test_learn_is_progressive_validation():
    live = new_model("k", get_spec("logreg"))
    for x, y in datasets.Phishing():
        models.learn(live, x, y)
    reference = evaluate.progressive_val_score(
        datasets.Phishing(), preprocessing.StandardScaler() | linear_model.LogisticRegression(), metrics.Accuracy())
    assert live.metric.get() == reference.get()
    assert live.learned == 1250


def test_hyperparameters_reach_the_estimator_and_bad_ones_are_refused():
    tree = get_spec("hoeffding_tree").build({"grace_period": 7})
    assert tree.grace_period == 7
    with pytest.raises(ValueError, match="bad hyperparameters"):
        get_spec("hoeffding_tree").build({"no_such_param": 1})
    with pytest.raises(models.UnknownSpec, match="known: "):
        get_spec("nope")


@pytest.mark.parametrize("valid", [True, False])
def test_registry_holds_the_models_of_kept_partitions_until_they_prove_still_valid(valid):
    asked = []

    def still_valid(partition, live):
        asked.append((partition, live.key))
        return valid
    reg = ModelRegistry(lambda key, spec: new_model(key, spec), still_valid)
    spec = get_spec("logreg")
    a = reg.get_or_create(0, "a", spec)
    reg.get_or_create(0, "c", spec)
    reg.get_or_create(1, "b", spec)
    assert reg.get_or_create(0, "a", spec) is a
    assert reg.find("b").key == "b" and len(reg) == 3
    assert reg.hold({0, 2}) == (2, 1)                   # partition 1 moved away: dropped
    assert reg.find("b") is None and len(reg) == 0 and reg.get(1, "b") is None
    assert reg.hold({0}) == (2, 0)                      # a second rebalance before first use: still held
    again = reg.get_or_create(0, "a", spec)
    assert asked == [(0, "a")] and (again is a) == valid and reg.get(0, "a") is again
    assert (reg.kept, reg.invalidated) == ((1, 0) if valid else (0, 1))
    assert reg.hold(set()) == (0, 2) and reg.get(0, "c") is None and asked == [(0, "a")]


def test_registry_over_its_cap_evicts_the_least_recently_used_evictable_models_never_the_one_just_added():
    now = [0.0]
    dirty: set[str] = set()
    evicted = []
    reg = ModelRegistry(lambda key, spec: new_model(key, spec), max_live=3, clock=lambda: now[0],
                        evictable=lambda p, live: live.key not in dirty,
                        on_evict=lambda p, live, reason: evicted.append((p, live.key, reason)))
    spec = get_spec("logreg")
    for i, key in enumerate("abc"):
        now[0] = i
        reg.get_or_create(i % 2, key, spec)
    now[0] = 3
    a = reg.get(0, "a")                       # a used again: b is now the least recently used
    dirty.add("b")                            # ... but b has learned since its checkpoint
    reg.get_or_create(1, "d", spec)
    assert evicted == [(0, "c", "cap")] and len(reg) == 3 and reg.get(0, "c") is None
    assert reg.get(0, "a") is a and reg.find("b") is not None   # order now: b d a
    dirty.update("ad")                        # nothing evictable but the model being added: over the cap, briefly
    reg.get_or_create(0, "e", spec)
    assert len(reg) == 4 and reg.find("e") is not None and len(evicted) == 1
    dirty.clear()                             # after the partitions' checkpoints: the next addition shrinks it
    reg.get_or_create(1, "f", spec)
    assert len(reg) == 3 and [k for _, k, _ in evicted] == ["c", "b", "d"] and reg.find("f") is not None


def test_registry_evicts_idle_models_and_held_models_count_against_the_cap():
    now = [0.0]
    evicted = []
    reg = ModelRegistry(lambda key, spec: new_model(key, spec), max_live=2, clock=lambda: now[0],
                        on_evict=lambda p, live, reason: evicted.append((live.key, reason)))
    spec = get_spec("logreg")
    reg.get_or_create(0, "a", spec)
    now[0] = 10
    reg.get_or_create(0, "b", spec)
    assert reg.evict_idle(5) == 1 and evicted == [("a", "idle")] and reg.find("b") is not None
    assert reg.hold({0}) == (1, 0) and reg.held() == 1
    reg.get_or_create(0, "c", spec)
    reg.get_or_create(0, "d", spec)           # b (held, never taken back) goes first, unannounced
    assert reg.held() == 0 and len(reg) == 2 and evicted == [("a", "idle")]
