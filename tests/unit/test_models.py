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
