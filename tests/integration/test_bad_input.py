"""Bad input gets a deadletter record with a reason; valid events around it are all served."""

from __future__ import annotations

import base64
import time

import pytest

from .harness import Collector, Producer

pytestmark = pytest.mark.integration

MAX_BYTES = 2000


async def test_malformed_messages_are_dead_lettered_and_valid_ones_served(cluster):
    w = cluster.start_worker(max_message_bytes=MAX_BYTES, label_wait_seconds=2, pending_ttl_seconds=2)
    cluster.wait_ready()
    t = cluster.topics
    bad_events = {
        "not_json": b"{this is not json",
        "not_an_object": b"[1, 2, 3]",
        "missing_field": b'{"event_id": "m-1", "model": "k"}',
        "bad_field": b'{"event_id": "b-1", "model": "k", "features": {"a": [1, 2]}}',
        "non_finite_number": b'{"event_id": "n-1", "model": "k", "features": {"a": NaN}}',
        "oversized": b'{"event_id": "o-1", "model": "k", "features": {"a": "' + b"x" * MAX_BYTES + b'"}}',
        "unknown_spec": b'{"event_id": "s-1", "model": "k", "spec": "no-such-spec", "features": {"a": 1}}',
    }
    async with Producer(cluster.bootstrap) as p, \
            Collector(cluster.bootstrap, t.predictions) as preds, \
            Collector(cluster.bootstrap, t.deadletter) as dead:
        valid = 0
        for reason, raw in bad_events.items():
            await p.send(t.features, {"event_id": f"ok-{valid}", "model": "k", "features": {"a": valid}})
            valid += 1
            await p.send(t.features, raw, key="k")
        await p.send(t.features, {"event_id": "ok-last", "model": "k", "features": {"a": 1.0}})
        valid += 1
        # a spec that differs from the existing model's
        await p.send(t.features, {"event_id": "mm-1", "model": "k", "spec": "arf", "features": {"a": 1}})

        # labels: wrong type, unknown event, and (after the TTL) an expired one
        await p.send(t.feedback, b'{"event_id": "ok-0", "label": {"nested": true}}', key="k")
        await p.send(t.feedback, {"event_id": "never-seen", "label": True}, key="k")
        await p.send(t.feedback, b'{"label": true}', key="k")
        values = await preds.wait_count(valid, timeout=30)
        time.sleep(2.5)  # the features of ok-1 expire
        await p.send(t.feedback, {"event_id": "ok-1", "label": True}, key="k")

        expected = {*bad_events, "spec_mismatch", "bad_label", "unknown_event", "expired_event"}
        records = await dead.wait_for(lambda v: expected <= {r["reason"] for r in v}, timeout=30,
                                      what=f"deadletters {expected}")
        by_reason = {r["reason"]: r for r in records}
        from_features = {r["reason"]: r for r in records if r["topic"] == t.features}
        for reason, raw in bad_events.items():
            rec = from_features[reason]
            assert base64.b64decode(rec["value_b64"]) == raw, reason
            assert rec["topic"] == t.features
            assert rec["partition"] >= 0 and rec["offset"] >= 0
            assert rec["detail"]
        assert by_reason["unknown_spec"]["event_id"] == "s-1"
        assert by_reason["spec_mismatch"]["event_id"] == "mm-1"
        assert by_reason["bad_label"]["topic"] == t.feedback
        # an unknown event is known to be unknown once the label waited label_wait_seconds
        assert by_reason["unknown_event"]["event_id"] == "never-seen"
        assert by_reason["unknown_event"]["topic"] == t.feedback
        assert base64.b64decode(by_reason["unknown_event"]["value_b64"]) == b'{"event_id":"never-seen","label":true}'
        assert by_reason["expired_event"]["event_id"] == "ok-1"
        assert from_features["missing_field"]["event_id"] == "m-1"
        assert any(r["reason"] == "missing_field" and r["topic"] == t.feedback for r in records)

        # every valid event got exactly one prediction, and the worker is still serving
        ids = [v["event_id"] for v in values]
        assert sorted(ids) == sorted([f"ok-{i}" for i in range(valid - 1)] + ["ok-last"])
        await p.send(t.features, {"event_id": "after", "model": "k", "features": {"a": 1.0}})
        await preds.wait_for(lambda v: any(x["event_id"] == "after" for x in v))
        assert w.alive

    # counted in metrics, by reason
    for reason in expected:
        assert w.metric("streamlearn_deadletters_total", f'reason="{reason}"') >= 1, reason
    log = w.log.read_text()
    assert "event_id=never-seen model=k reason=unknown_event" in log
    assert "event_id=s-1 model=k reason=unknown_spec" in log
