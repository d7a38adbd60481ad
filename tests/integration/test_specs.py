"""The operator's own specs served through Kafka: chosen by rules, named by events, learned, checkpointed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from river import linear_model, preprocessing

from .harness import Collector, Producer, wait_learned

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


async def test_a_user_spec_is_served_and_learns_like_river(cluster, monkeypatch):
    # the worker imports the operator's factory module: it must be on its path, as an installed package would be
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    w = cluster.start_worker(specs="fraud=tests.unit.models.user_specs:fraud_pipeline,price=tests.unit.models.user_specs:price_tree",
                             spec_rules="fraud-*=fraud")
    cluster.wait_ready()
    t = cluster.topics
    river_model = preprocessing.StandardScaler() | linear_model.PAClassifier(C=0.5)   # what the factory builds
    async with Producer(cluster.bootstrap) as p, Collector(cluster.bootstrap, t.predictions) as preds, \
            Collector(cluster.bootstrap, t.deadletter) as dead:
        for i in range(40):
            x = {"a": float(i % 5), "b": float(i % 3)}
            await p.send(t.features, {"event_id": f"f{i}", "features": x}, key="fraud-1")
            await p.send(t.feedback, {"event_id": f"f{i}", "label": x["a"] > 2}, key="fraud-1")
            river_model.learn_one(x, x["a"] > 2)
        await wait_learned(w, "fraud-1", 40)
        probe = {"a": 4.0, "b": 1.0}
        await p.send(t.features, {"event_id": "probe", "features": probe}, key="fraud-1")
        # an event may name a registered spec for a new key; an unknown name is refused
        await p.send(t.features, {"event_id": "n1", "features": probe, "spec": "price"}, key="house-1")
        await p.send(t.features, {"event_id": "n2", "features": probe, "spec": "mystery"}, key="house-2")
        got = {v["event_id"]: v for v in await preds.wait_for(lambda v: {"probe", "n1"} <= {x["event_id"] for x in v})}
        refused = await dead.wait_for_one(lambda d: d["event_id"] == "n2")
    assert got["probe"]["learned"] == 40
    assert got["probe"]["proba"] == {str(k).lower(): v for k, v in river_model.predict_proba_one(probe).items()}
    assert got["n1"]["proba"] is None                       # a regressor: the task came from the estimator
    assert refused["reason"] == "unknown_spec" and "mystery" in refused["detail"] and "price" in refused["detail"]
    status = w.get("/models/fraud-1")[1]
    assert status["spec"] == "fraud" and status["metric"]["name"] == "Accuracy"
    assert w.get("/models/house-1")[1]["spec"] == "price"


async def test_challengers_learn_in_the_shadow_like_river_and_never_answer(cluster):
    w = cluster.start_worker(challenger_rules="shadowed-*=hoeffding_tree+gaussian_nb")
    cluster.wait_ready()
    t = cluster.topics
    from river import datasets, evaluate

    from streamlearn.models import SPECS
    from streamlearn.models.state import new_metric
    data = list(datasets.Phishing())[:300]
    async with Producer(cluster.bootstrap) as p, Collector(cluster.bootstrap, t.predictions) as preds:
        for i, (x, y) in enumerate(data):
            await p.send(t.features, {"event_id": f"s{i}", "features": x}, key="shadowed-1")
            await p.send(t.feedback, {"event_id": f"s{i}", "label": y}, key="shadowed-1")
        await wait_learned(w, "shadowed-1", len(data))
        answered = await preds.wait_count(len(data))
    assert sorted(v["event_id"] for v in answered) == sorted(f"s{i}" for i in range(len(data)))   # champion only
    status = w.get("/models/shadowed-1")[1]
    assert status["spec"] == "logreg"
    for c in status["challengers"]:
        # labels sent right after their events: learned in the order sent, as River's progressive validation
        reference = evaluate.progressive_val_score(iter(data), SPECS[c["spec"]].build(), new_metric(SPECS[c["spec"]]))
        assert (c["learned"], c["metric"]["value"], c["error"]) == (len(data), reference.get(), None), c
    metrics = w.get("/metrics")[1]
    assert 'streamlearn_challenger_metric{challenger="gaussian_nb",metric="Accuracy",model="shadowed-1"}' in metrics
    assert w.get("/models/other")[0] == 404
