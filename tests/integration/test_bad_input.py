"""Bad input gets a deadletter record with a reason; valid events around it are all served."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import pytest

from streamlearn.streams import codec

from .harness import DEV_COMMAND_KEY, Collector, Producer

pytestmark = pytest.mark.integration

MAX_BYTES = 2000


@pytest.mark.smoke
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


async def test_a_thousand_malformed_messages_of_every_shape_never_stop_a_worker(cluster):
    """A generated corpus (tests/malformed.py) interleaved with valid events, through a real worker.

    Every malformed message is dead-lettered (found by the position the producer got for it), every
    valid event is answered once and every label learned once, and no agent crashes.
    """
    import random

    from tests.malformed import corpus

    w = cluster.start_worker(max_message_bytes=100_000, label_wait_seconds=3)
    cluster.wait_ready()
    t = cluster.topics
    topic_of = {"features": t.features, "feedback": t.feedback, "control": t.control}
    bad = corpus(seed=11, max_bytes=100_000)
    rng = random.Random(5)
    n_valid = 1000
    labels_per_key: dict[str, int] = {}
    sent_bad: dict[tuple[str, int, int], str] = {}
    async with Producer(cluster.bootstrap, max_request_size=2_000_000) as p, \
            Collector(cluster.bootstrap, t.predictions) as preds, \
            Collector(cluster.bootstrap, t.deadletter) as dead:
        valid = iter(range(n_valid))
        for j, (kind, key, value, shape) in enumerate(bad):
            # half the commands signed (as the CLI does), so the decoder sees them; unsigned: unauthenticated
            headers = [(codec.SIGNATURE_HEADER, codec.sign(value or b"", DEV_COMMAND_KEY))] \
                if kind == "control" and j % 2 else None
            meta = await p._p.send_and_wait(topic_of[kind], value, key=key, headers=headers)
            sent_bad[(meta.topic, meta.partition, meta.offset)] = shape
            i = next(valid, None)
            if i is not None:
                model = f"v{i % 4}"
                x = {"a": rng.gauss(0, 1), "b\u00e9": rng.random(), "big": 2**70 if i % 11 == 0 else 1}
                label = {"event_id": f"ok-{i}", "model": model, "label": x["a"] > 0}
                if i % 7 == 0:
                    label["features"] = x          # the label brings its features too
                event = {"event_id": f"ok-{i}", "model": model, "features": x, "ts": time.time()}
                first, second = (label, event) if i % 5 == 0 else (event, label)   # some labels come first
                for msg in (first, second):   # the json module writes integers beyond 64 bits as they are
                    await p.send(t.feedback if msg is label else t.features, json.dumps(msg).encode(),
                                 key=model if i % 2 else None)
                labels_per_key[model] = labels_per_key.get(model, 0) + 1
        assert next(valid, None) is None, "the corpus is too small to interleave every valid event"

        ids = await preds.wait_for(lambda v: len({x["event_id"] for x in v}) >= n_valid, timeout=90,
                                   what=f"{n_valid} predictions")
        records = await dead.wait_for(
            lambda v: {(r["topic"], r["partition"], r["offset"]) for r in v} >= set(sent_bad), timeout=90,
            what=f"{len(sent_bad)} deadletters")
    print(f"\n{len(bad)} malformed messages of {len(set(s for *_, s in bad))} shapes; "
          f"{len(records)} deadletter records; {n_valid} valid events")
    reasons = {}
    for r in records:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    print("deadletters by reason:", dict(sorted(reasons.items())))
    assert "internal_error" not in reasons and "unknown_event" not in reasons and "model_error" not in reasons
    answered = [x["event_id"] for x in ids]
    assert sorted(answered) == sorted(f"ok-{i}" for i in range(n_valid))   # each once: nothing crashed
    learned = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        learned = {m["model"]: m["learned"] for m in w.get("/models")[1]["models"]}
        if learned == labels_per_key:
            break
        await asyncio.sleep(0.5)
    assert learned == labels_per_key
    assert w.metric_sum("streamlearn_agent_crashes_total") == 0
    assert not [line for line in w.log.read_text().splitlines() if "crashed" in line]
    status, body = w.get("/ready")
    assert status == 200 and body["crashed_agents"] == {}
