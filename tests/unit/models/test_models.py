"""models/: specs, live models, progressive validation: River alone, no Kafka."""

from __future__ import annotations

import pickle

import pytest
from river import datasets, evaluate, linear_model, metrics, preprocessing

from streamlearn import models
from streamlearn.models import SPECS, get_spec, new_model

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


