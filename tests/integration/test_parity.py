"""Parity: served predictions equal River's own predict-then-learn loop, exactly.

River's bundled Phishing dataset goes through Kafka in order, each event
followed by its label. Every prediction streamlearn publishes must equal,
label and probabilities, what the same River model gives in process with
``evaluate.progressive_val_score`` semantics: predict x_i with a model that
learned exactly x_0..x_{i-1}, then learn (x_i, y_i).
"""

from __future__ import annotations

import time

import pytest
from river import datasets, evaluate, linear_model, metrics, preprocessing

from .harness import Collector, Producer

pytestmark = pytest.mark.integration


def plain_river_model():
    """The default spec as the issue states it: StandardScaler() | LogisticRegression()."""
    return preprocessing.StandardScaler() | linear_model.LogisticRegression()


def proba_json(proba: dict) -> dict:
    """River's {True: p, False: q} as it reads in JSON."""
    return {str(k).lower() if isinstance(k, bool) else str(k): v for k, v in proba.items()}


async def test_phishing_predictions_equal_river_progressive_validation(cluster):
    # snapshots every 500 examples (they must not change learning); no quality gate: a rollback
    # would (rightly) make the model differ from River's single pass
    w = cluster.start_worker(snapshot_every_examples=500, quality_gate=False)
    cluster.wait_ready()
    t = cluster.topics
    stream = list(datasets.Phishing())
    key = "phishing"

    async with Producer(cluster.bootstrap) as p, Collector(cluster.bootstrap, t.predictions) as preds:
        for i, (x, y) in enumerate(stream):
            await p.send(t.features, {"event_id": f"p-{i}", "features": x}, key=key)
            await preds.wait_count(i + 1, timeout=20)
            await p.send(t.feedback, {"event_id": f"p-{i}", "label": y}, key=key)
            # predict-then-learn: the next event must meet a model that learned this label
            deadline = time.monotonic() + 20
            while w.get(f"/models/{key}")[1].get("learned", 0) < i + 1:
                assert time.monotonic() < deadline, f"label {i} not learned"
                time.sleep(0.002)
        served = preds.values()

    assert [s["event_id"] for s in served] == [f"p-{i}" for i in range(len(stream))]
    model = plain_river_model()
    accuracy = metrics.Accuracy()
    for i, ((x, y), s) in enumerate(zip(stream, served)):
        assert s["learned"] == i
        assert s["model_version"] == 1 + i // 500   # each snapshot freezes a version
        y_pred = model.predict_one(x)
        assert s["prediction"] == y_pred, f"event {i}"
        assert s["proba"] == proba_json(model.predict_proba_one(x)), f"event {i}"
        accuracy.update(y, s["prediction"])
        model.learn_one(x, y)

    # and the accuracy is River's own progressive validation score on the same stream
    reference = evaluate.progressive_val_score(datasets.Phishing(), plain_river_model(), metrics.Accuracy())
    assert accuracy.get() == reference.get()
    status = w.get(f"/models/{key}")[1]
    assert status["learned"] == len(stream)
    assert status["metric"]["value"] == pytest.approx(reference.get())
    print(f"\nPhishing through Kafka: {len(stream)} events, progressive accuracy {accuracy.get():.4f} "
          f"(River in process: {reference.get():.4f})")
