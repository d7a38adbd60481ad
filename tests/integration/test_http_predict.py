"""Predictions over HTTP: answered by the key's live model on its owner (whichever worker is asked), the same
JSON as the predictions topic; with an event id the features wait for the label, which then trains the model."""

from __future__ import annotations

import asyncio

import pytest

from .harness import Producer, wait_learned
from .test_versions import owner_of, post, train

pytestmark = pytest.mark.integration


async def test_http_predictions_answer_from_the_live_model_and_an_event_id_trains_it(cluster):
    w0, w1 = cluster.start_worker("w0"), cluster.start_worker("w1")
    split = cluster.wait_ready()
    key = "tenant-9"
    owner = owner_of(cluster, split, key)
    other = w1 if owner is w0 else w0
    async with Producer(cluster.bootstrap) as p:
        await train(p, cluster, key, 0, 100)
        status_of = await wait_learned(owner, key, 100)

        # answered by the owner's live model, asked of either worker
        x = {"a": 0.8, "b": -0.1}
        for asked in (owner, other):
            status, body = post(asked, f"/models/{key}/predict", {"features": x})
            assert status == 200, body
            assert body["model"] == key and body["model_version"] == status_of["version"] and body["learned"] == 100
            assert set(body) >= {"event_id", "prediction", "proba", "predicted_at"}
        status, many = post(other, f"/models/{key}/predict", {"features": [x, {"a": -2.0, "b": -2.0}]})
        assert status == 200 and [a["prediction"] for a in many] == [body["prediction"], False], many

        # bad requests: a clear 4xx, the codec's reasons
        assert post(owner, f"/models/{key}/predict", {"nope": 1})[1]["error"] == "missing_field"
        status, bad = post(owner, f"/models/{key}/predict", {"features": {"a": [1, 2]}})   # not a number or string
        assert status == 400 and bad["error"] == "bad_field", bad
        status, bad = post(owner, f"/models/{key}/predict", {"features": x, "spec": "nonesuch"})
        assert status == 400 and bad["error"] == "unknown_spec", bad
        status, bad = post(owner, f"/models/{key}/predict", {"features": x, "spec": "hoeffding_tree"})
        assert status == 422 and bad["error"] == "spec_mismatch", bad

        # with an event id, its features wait for the label on the feedback topic, which trains the model once
        status, body = post(other, f"/models/{key}/predict", {"features": x, "event_id": "http-1"})
        assert status == 200 and body["event_id"] == "http-1"
        await p.send(cluster.topics.feedback, {"event_id": "http-1", "label": True}, key=key)
        await p.send(cluster.topics.feedback, {"event_id": "http-1", "label": True}, key=key)   # a repeat
        await wait_learned(owner, key, 101)
        await asyncio.sleep(2.0)                       # the repeat, handled by now, learned nothing
        assert owner.get(f"/models/{key}")[1]["learned"] == 101
        health = owner.get(f"/models/{key}")[1]["labels"]
        assert health["labelled"] >= 1 and health["predicted"] >= 1, health
