"""Challengers on the River side: they learn every example in the champion's shadow, and travel in its checkpoint."""

from __future__ import annotations

import copy

from river import datasets, evaluate

from streamlearn import models
from streamlearn.app.metrics import Metrics, StateCollector
from streamlearn.app.settings import Settings
from streamlearn.models import SPECS, blobs, new_model, set_challengers
from streamlearn.models.state import new_metric

from tests.unit.fakes import samples


def champion_with(*names: str, spec: str = "logreg"):
    live = new_model("k", SPECS[spec])
    set_challengers(live, [SPECS[n] for n in names])
    return live


def test_a_challenger_is_scored_then_taught_on_every_example_and_the_champion_is_unchanged():
    live, alone = champion_with("hoeffding_tree", "gaussian_nb"), new_model("k", SPECS["logreg"])
    data = list(datasets.Phishing())
    for x, y in data:
        models.learn(live, x, y)
        models.learn(alone, x, y)
    assert live.metric.get() == alone.metric.get()                      # the champion is as it was
    assert models.predict(live, data[0][0]) == models.predict(alone, data[0][0])
    for name, c in live.challengers.items():
        reference = evaluate.progressive_val_score(iter(copy.deepcopy(data)), SPECS[name].build(),
                                                   new_metric(SPECS[name]))
        assert c.learned == len(data) and c.metric.get() == reference.get(), name
    assert [c["spec"] for c in live.describe()["challengers"]] == ["hoeffding_tree", "gaussian_nb"]


def test_a_failing_challenger_stops_learning_and_never_fails_its_champion():
    live = champion_with("gaussian_nb")
    models.learn(live, {"a": 1.0}, True)

    def explode(*args, **kwargs):
        raise ValueError("a bug in the challenger")
    live.challengers["gaussian_nb"].model.learn_one = explode
    models.learn(live, {"a": 2.0}, False)
    models.learn(live, {"a": 3.0}, True)
    c = live.challengers["gaussian_nb"]
    assert live.learned == 3 and c.learned == 1 and c.error == "ValueError: a bug in the challenger"


def test_set_challengers_keeps_what_they_learned_adds_drops_and_refuses_another_task():
    live = champion_with("hoeffding_tree")
    models.learn(live, {"a": 1.0}, True)
    tree = live.challengers["hoeffding_tree"]
    changes = set_challengers(live, [SPECS["hoeffding_tree"], SPECS["knn"], SPECS["linreg"], SPECS["logreg"]])
    assert live.challengers["hoeffding_tree"] is tree and tree.learned == 1
    assert list(live.challengers) == ["hoeffding_tree", "knn"]          # not itself, not a regressor
    assert changes == ["added knn", "refused linreg (a regression spec, the champion is classification)"]
    assert set_challengers(live, []) == ["dropped hoeffding_tree", "dropped knn"] and live.challengers == {}


def test_challengers_travel_in_the_checkpoint_and_learn_on_identically():
    live = champion_with("hoeffding_tree", "gaussian_nb")
    data = list(datasets.Phishing())
    for x, y in data[:600]:
        models.learn(live, x, y)
    restored = blobs.load(blobs.dump(live, b"key", 0.0), b"key")
    for x, y in data[600:]:
        models.learn(live, x, y)
        models.learn(restored, x, y)
    for name in live.challengers:
        a, b = live.challengers[name], restored.challengers[name]
        assert (a.learned, a.metric.get()) == (b.learned, b.metric.get()) == (len(data), a.metric.get())
        assert a.model.predict_proba_one(data[0][0]) == b.model.predict_proba_one(data[0][0])
    # a challenger whose spec is no longer registered is dropped on restore, the champion is kept
    only_logreg = {"logreg": SPECS["logreg"], "gaussian_nb": SPECS["gaussian_nb"]}
    assert list(blobs.load(blobs.dump(live, b"key", 0.0), b"key", only_logreg).challengers) == ["gaussian_nb"]


def test_challenger_rules_and_their_metric_series():
    s = Settings.from_env({"STREAMLEARN_CHALLENGER_RULES": "fraud-*=hoeffding_tree+gaussian_nb, *=knn"})
    assert s.challengers_for("fraud-eu") == ["hoeffding_tree", "gaussian_nb"] and s.challengers_for("x") == ["knn"]
    assert Settings.from_env({}).challengers_for("x") == []
    live = champion_with("gaussian_nb")
    models.learn(live, {"a": 1.0}, True)
    m = Metrics()
    m.registry.register(StateCollector(lambda: [live], lambda: [], 10))
    [series] = samples(m)["streamlearn_challenger_metric"]
    assert series.labels == {"model": "k", "challenger": "gaussian_nb", "metric": "Accuracy"}
