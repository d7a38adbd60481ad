"""Model versions through Kafka, the CLI and HTTP: snapshot, restore, rollback, pin, bad commands,
the automatic quality gate, the audit trail and warm starts."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time

import orjson
import pytest

from streamlearn.models import blobs
from streamlearn.streams.routing import partition_for

from .harness import wait_learned, PARTITIONS, Collector, Producer

pytestmark = pytest.mark.integration

PROBE = [{"a": random.Random(7).gauss(0, 1) + i / 10, "b": (i % 5) - 2.0} for i in range(20)]


def cli(cluster, *args: str, timeout: float = 60) -> tuple[int, dict | None, str]:
    r = subprocess.run([sys.executable, "-m", "streamlearn.app.cli", "models", *args, "--json"], env=cluster.env(),
                       capture_output=True, text=True, timeout=timeout)
    try:
        body = orjson.loads(r.stdout)
    except orjson.JSONDecodeError:
        body = None
    return r.returncode, body, r.stderr


def post(worker, path: str, body: dict | None = None) -> tuple[int, dict]:
    import json
    import urllib.error
    import urllib.request

    req = urllib.request.Request(worker.url + path, data=json.dumps(body or {}).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def owner_of(cluster, split: dict[str, list[int]], key: str):
    p = partition_for(key, PARTITIONS)
    name = next(n for n, parts in split.items() if p in parts)
    return next(w for w in cluster.workers if w.name == name)


async def train(p: Producer, cluster, key: str, start: int, n: int, flip: bool = False, seed: int = 1) -> None:
    """n labelled examples for key; labels carry their features (no join needed)."""
    rng = random.Random(seed * 7919 + start)
    for i in range(start, start + n):
        x = {"a": rng.gauss(0, 1), "b": rng.gauss(0, 1)}
        y = (x["a"] + x["b"] > 0) != flip
        await p._p.send(cluster.topics.feedback, orjson.dumps({"event_id": f"{key}-{i}", "label": y,
                                                               "features": x}), key=key.encode())
    await p._p.flush()


async def probe(p: Producer, preds: Collector, cluster, key: str, tag: str) -> list[dict]:
    """Predictions of the probe set, by the model as it is now."""
    for i, x in enumerate(PROBE):
        await p.send(cluster.topics.features, {"event_id": f"probe-{tag}-{i}", "features": x}, key=key)
    ids = {f"probe-{tag}-{i}" for i in range(len(PROBE))}
    values = await preds.wait_for(lambda v: len(ids & {x["event_id"] for x in v}) == len(ids), 30, "probes")
    by_id = {v["event_id"]: v for v in values if v["event_id"] in ids}
    return [by_id[f"probe-{tag}-{i}"] for i in range(len(PROBE))]


@pytest.mark.smoke
async def test_snapshot_restore_rollback_three_ways_and_audit(cluster):
    w0, w1 = cluster.start_worker("w0", snapshot_every_examples=0), cluster.start_worker("w1", snapshot_every_examples=0)
    split = cluster.wait_ready()
    t = cluster.topics
    key = "tenant-7"
    owner = owner_of(cluster, split, key)
    other = w1 if owner is w0 else w0
    async with Producer(cluster.bootstrap) as p, Collector(cluster.bootstrap, t.predictions) as preds, \
            Collector(cluster.bootstrap, t.audit) as audit, \
            Collector(cluster.bootstrap, t.control_results) as results:
        await train(p, cluster, key, 0, 200)
        await wait_learned(owner, key, 200)

        # (b) the CLI: snapshot
        code, res, err = cli(cluster, "snapshot", key, "--reason", "known good", "--by", "alice")
        assert code == 0, err
        assert res["ok"] and res["result"]["snapshot"]["version"] == 1
        assert res["result"]["snapshot"]["learned"] == 200 and res["result"]["live"]["version"] == 2
        at_snapshot = await probe(p, preds, cluster, key, "a")
        assert {x["model_version"] for x in at_snapshot} == {2} and {x["learned"] for x in at_snapshot} == {200}

        await train(p, cluster, key, 200, 300, flip=True)           # bad labels
        await wait_learned(owner, key, 500)
        spoiled = await probe(p, preds, cluster, key, "b")
        assert [x["proba"] for x in spoiled] != [x["proba"] for x in at_snapshot]

        # (c) HTTP on the worker that does not own the key: restore v1
        status, res = post(other, f"/models/{key}/restore", {"version": 1, "reason": "bad labels", "by": "bob"})
        assert status == 200, res
        assert res["result"]["restored"] == 1 and res["result"]["replaced"]["version"] == 2
        assert res["result"]["replaced"]["learned"] == 500 and res["result"]["live"]["version"] == 3
        restored = await probe(p, preds, cluster, key, "c")
        # identical to what the model answered when the snapshot was taken, under the new version
        assert [x["proba"] for x in restored] == [x["proba"] for x in at_snapshot]
        assert [x["prediction"] for x in restored] == [x["prediction"] for x in at_snapshot]
        assert {x["model_version"] for x in restored} == {3} and {x["learned"] for x in restored} == {200}

        # (a) the control topic, from any Kafka client: rollback = back to the version the restore replaced
        await p.command(t.control, {"request_id": "r-rollback", "command": "rollback", "model": key, "by": "carol"})
        res = await results.wait_for_one(lambda r: r["request_id"] == "r-rollback")
        assert res["ok"] and res["result"]["restored"] == 2 and res["result"]["live"]["version"] == 4
        assert res["result"]["live"]["learned"] == 500
        back = await probe(p, preds, cluster, key, "d")
        assert [x["proba"] for x in back] == [x["proba"] for x in spoiled]

        # pin keeps a version; versions lists them all, from any worker
        code, res, err = cli(cluster, "pin", key, "2")
        assert code == 0 and res["result"]["snapshot"]["pinned"] is True, err
        for w in (w0, w1):
            status, versions = w.get(f"/models/{key}/versions")
            assert status == 200
            assert [(s["version"], s["kind"], s["pinned"]) for s in versions["snapshots"]] == [
                (1, "manual", False), (2, "replaced", True), (3, "replaced", False)]
            assert versions["snapshots"][0]["reason"] == "known good" and versions["live"]["version"] == 4
        # for people (without --json): a model in a few lines, its versions as a table
        shown, table = (subprocess.run([sys.executable, "-m", "streamlearn.app.cli", "models", action, key],
                                       env=cluster.env(), capture_output=True, text=True, timeout=60)
                        for action in ("show", "versions"))
        assert shown.returncode == 0 and shown.stdout.startswith(f"{key}: logreg v4 "), shown
        assert ", 500 learned, Accuracy 0." in shown.stdout.splitlines()[0], shown.stdout
        rows = table.stdout.splitlines()
        assert table.returncode == 0 and rows[0].split()[:3] == ["VERSION", "SPEC", "KIND"], table
        assert [r.split()[:3] for r in rows[1:]] == [["v1", "logreg", "manual"], ["v2", "logreg", "replaced"],
                                                     ["v3", "logreg", "replaced"], ["v4", "logreg", "live"]], rows
        assert "alice" in rows[1] and "known good" in rows[1] and "pinned" in rows[2]
        other_key = next(f"k{i}" for i in range(100) if owner_of(cluster, split, f"k{i}") is other)
        await train(p, cluster, other_key, 0, 5)
        await wait_learned(other, other_key, 5)
        for w in (w0, w1):     # GET /models: every model of the cluster, from any worker
            listed = {m["model"]: m for m in w.get("/models")[1]["models"]}
            assert set(listed) == {key, other_key} and listed[key]["version"] == 4
            assert [m["model"] for m in w.get("/models?local=1")[1]["models"]] == [key if w is owner else other_key]
        code, res, _ = cli(cluster, "versions", key)
        assert code == 0 and [s["version"] for s in res["result"]["snapshots"]] == [1, 2, 3]
        code, res, _ = cli(cluster, "status", key)
        assert code == 0 and res["result"]["version"] == 4 and res["result"]["snapshots"] == 3

        # every version change is on the audit topic: who, from, to, why
        changes = await audit.wait_count(4)
        assert [(c["action"], c["from_version"], c["to_version"], c["by"]) for c in changes] == [
            ("snapshot", 1, 2, "alice"), ("restore", 2, 3, "bob"), ("rollback", 3, 4, "carol"),
            ("pin", 2, 2, changes[3]["by"])]
        assert changes[1]["reason"] == "bad labels" and changes[1]["restored_version"] == 1
        assert changes[2]["restored_version"] == 2 and changes[3]["by"].startswith("cli:")
        assert owner.metric("streamlearn_rollbacks_total", 'trigger="operator"') == 2

    # the restore was checkpointed at once: it survives a crash of its owner
    owner.stop(signal.SIGKILL)
    cluster.wait_ready([other])
    status, body = other.get(f"/models/{key}")
    assert status == 200 and body["version"] == 4 and body["learned"] == 500 and body["parent_version"] == 2


async def test_bad_commands_get_clear_errors_and_change_nothing(cluster):
    w = cluster.start_worker(snapshot_every_examples=0)
    cluster.wait_ready()
    t = cluster.topics
    key = "m"
    async with Producer(cluster.bootstrap) as p, Collector(cluster.bootstrap, t.control_results) as results, \
            Collector(cluster.bootstrap, t.deadletter) as dead:
        await train(p, cluster, key, 0, 50)
        await wait_learned(w, key, 50)
        assert cli(cluster, "snapshot", key)[0] == 0

        code, res, err = cli(cluster, "status", "no-such-model")
        assert code == 1 and res["error"] == "unknown_model" and "no-such-model" in err
        status, res = post(w, f"/models/{key}/restore", {"version": 42})
        assert status == 404 and res["error"] == "unknown_version"
        status, res = post(w, f"/models/{key}/restore", {"version": "two"})
        assert status == 400 and res["error"] == "bad_request"
        status, res = post(w, "/models/no-such-model/rollback")
        assert status == 404 and res["error"] == "unknown_model"
        code, _, err = cli(cluster, "restore", key)
        assert code == 2 and "VERSION" in err

        await p.command(t.control, b"{not json", key=key)
        await p.command(t.control, {"request_id": "r-1", "command": "restore", "model": key})
        await p.command(t.control, {"request_id": "r-2", "command": "explode", "model": key})
        r1 = await results.wait_for_one(lambda r: r["request_id"] == "r-1")
        r2 = await results.wait_for_one(lambda r: r["request_id"] == "r-2")
        assert (r1["ok"], r1["error"]) == (False, "missing_field") and "version" in r1["detail"]
        assert (r2["ok"], r2["error"]) == (False, "unknown_command")
        reasons = await dead.wait_for(lambda v: len(v) >= 3)
        assert sorted(d["reason"] for d in reasons) == ["missing_field", "not_json", "unknown_command"]
        assert w.metric("streamlearn_deadletters_total", 'reason="not_json"') == 1

        before = w.get(f"/models/{key}/versions")[1]["snapshots"]
        assert w.get(f"/models/{key}")[1]["version"] == 2

    # a snapshot whose blob was tampered with at rest is refused
    w.stop()
    blob_topic = f"{cluster.app_id}-snapshots-changelog"
    async with Producer(cluster.bootstrap) as p:
        bkey = orjson.dumps([key, 1])
        good = None
        from aiokafka import AIOKafkaConsumer, TopicPartition
        c = AIOKafkaConsumer(bootstrap_servers=cluster.bootstrap, enable_auto_commit=False)
        await c.start()
        tp = TopicPartition(blob_topic, partition_for(key, PARTITIONS))
        c.assign([tp])
        await c.seek_to_beginning(tp)
        for batch in (await c.getmany(timeout_ms=3000)).values():
            good = next(m.value for m in batch if m.key == bkey)
        await c.stop()
        assert blobs.read_header(good, b"streamlearn-development-key").version == 1
        await p.send(blob_topic, good[:-3] + b"xyz", key=bkey, partition=tp.partition)
    w = cluster.start_worker("w-again", snapshot_every_examples=0)
    cluster.wait_ready([w])
    status, res = post(w, f"/models/{key}/restore", {"version": 1})
    assert status == 422 and res["error"] == "bad_snapshot" and "signature" in res["detail"]
    assert w.get(f"/models/{key}/versions")[1]["snapshots"] == before
    assert w.get(f"/models/{key}")[1]["version"] == 2

    # no owner in time (workers down): a timeout error, and the command never runs later
    w.stop()
    code, res, err = cli(cluster, "snapshot", key, "--timeout", "2")
    assert code == 1 and res["error"] == "timeout" and "timeout" in err
    w = cluster.start_worker("w-third", snapshot_every_examples=0)
    cluster.wait_ready([w])
    async with Collector(cluster.bootstrap, t.control_results) as results:
        expired = await results.wait_for_one(lambda r: r["request_id"] == res["request_id"])
    assert expired["error"] == "expired"
    assert w.get(f"/models/{key}")[1]["version"] == 2 and w.get(f"/models/{key}/versions")[1]["snapshots"] == before

    # the cluster's models: a table, and JSON for scripts
    listing = subprocess.run([sys.executable, "-m", "streamlearn.app.cli", "models", "list", "--url", w.url],
                             env=cluster.env(), capture_output=True, text=True, timeout=60)
    header, row = listing.stdout.splitlines()
    assert header.split() == ["MODEL", "SPEC", "VERSION", "LEARNED", "METRIC", "CHALLENGERS", "WORKER"]
    assert row.split()[:4] == [key, "logreg", "v2", "50"] and row.endswith(w.url)
    code, found, _ = cli(cluster, "list", "--url", w.url)
    assert code == 0 and [(m["model"], m["learned"], m["worker"]) for m in found] == [(key, 50, w.url)]

    # Kafka unreachable: one line, within the timeout
    started = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "streamlearn.app.cli", "models", "status", key, "--timeout", "3"],
                       env=cluster.env(broker="kafka://127.0.0.1:9"), capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and time.monotonic() - started < 3 + 10, r.stderr
    assert r.stderr.startswith("streamlearn: cannot connect to Kafka at 127.0.0.1:9: Connection refused"), r.stderr


def gate_row(rng: random.Random, concept_b: bool = False) -> tuple[dict, bool]:
    x = {"a": rng.gauss(0, 1), "b": rng.gauss(0, 1)}
    return x, (x["a"] - x["b"] > 0) if concept_b else (x["a"] + x["b"] > 0)


async def test_quality_gate_rolls_back_bad_labels_not_a_concept_change(cluster):
    w = cluster.start_worker(snapshot_every_examples=250, checkpoint_every_examples=500)
    cluster.wait_ready()
    t = cluster.topics
    n, burst = 6000, range(3500, 4300)
    rng_b, rng_c = random.Random(1), random.Random(2)
    async with Producer(cluster.bootstrap) as p, Collector(cluster.bootstrap, t.audit) as audit:
        for i in range(n):
            x, y = gate_row(rng_b)
            await p._p.send(t.feedback, orjson.dumps({"event_id": f"b{i}", "features": x,
                                                      "label": (not y) if i in burst else y}), key=b"bursty")
            x, y = gate_row(rng_c, concept_b=i >= 3500)
            await p._p.send(t.feedback, orjson.dumps({"event_id": f"c{i}", "features": x, "label": y}),
                            key=b"drifting")
        await p._p.flush()
        deadline = time.monotonic() + 120       # (a rollback resets `learned`: count what the worker learned)
        while w.metric("streamlearn_examples_learned_total") < 2 * n:
            assert time.monotonic() < deadline, w.metric("streamlearn_examples_learned_total")
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)
        changes = audit.values()
    rollbacks = [c for c in changes if c["action"] == "auto_rollback"]
    assert [c["model"] for c in rollbacks] == ["bursty"], rollbacks     # none for the concept change
    rb = rollbacks[0]
    assert rb["by"] == "quality-gate" and "ADWIN" in rb["reason"] and rb["restored_version"] is not None
    assert w.metric("streamlearn_rollbacks_total", 'trigger="quality_gate"') == 1

    # the rollback happened after the burst, and it recovered: the restored model never learned a flipped label
    versions = w.get("/models/bursty/versions")[1]
    restored = next(s for s in versions["snapshots"] if s["version"] == rb["restored_version"])
    replaced = next(s for s in versions["snapshots"] if s["version"] == rb["from_version"])
    assert restored["learned"] <= burst.start < burst.stop <= replaced["learned"] < burst.stop + 300
    for key, concept_b in (("bursty", False), ("drifting", True)):
        status, model = w.get(f"/models/{key}")
        rng = random.Random(3)
        async with Producer(cluster.bootstrap) as p, Collector(cluster.bootstrap, t.predictions) as preds:
            truth = []
            for i in range(200):
                x, y = gate_row(rng, concept_b)
                truth.append(y)
                await p.send(t.features, {"event_id": f"probe-{key}-{i}", "features": x}, key=key)
            got = await preds.wait_for(lambda v: sum(1 for x in v if x["model"] == key) >= 200, 30)
        got = [x for x in got if x["model"] == key]
        accuracy = sum(g["prediction"] == y for g, y in zip(got, truth)) / len(truth)
        print(f"\n{key}: {model['learned']} examples, version {model['version']}, accuracy {accuracy:.3f}")
        assert accuracy > 0.9


async def test_warm_start_from_a_template_on_another_worker(cluster):
    settings = dict(warm_start_rules="tenant-*=template", snapshot_every_examples=0)
    w0 = cluster.start_worker("w0", **settings)
    cluster.start_worker("w1", **settings)        # a second worker: the template and the tenant on different ones
    split = cluster.wait_ready()
    t = cluster.topics
    template_owner = owner_of(cluster, split, "template")
    tenant = next(f"tenant-{i}" for i in range(100)
                  if owner_of(cluster, split, f"tenant-{i}") is not template_owner)
    async with Producer(cluster.bootstrap) as p, Collector(cluster.bootstrap, t.predictions) as preds, \
            Collector(cluster.bootstrap, t.audit) as audit:
        await train(p, cluster, "template", 0, 300)
        await wait_learned(template_owner, "template", 300)
        code, res, err = cli(cluster, "snapshot", "template")
        assert code == 0, err
        template = await probe(p, preds, cluster, "template", "t")
        await asyncio.sleep(1.0)          # the global table reaches the other worker
        started = await probe(p, preds, cluster, tenant, "n")
        assert [x["proba"] for x in started] == [x["proba"] for x in template]
        assert {(x["model_version"], x["learned"]) for x in started} == {(1, 300)}
        change = await audit.wait_for_one(lambda c: c["action"] == "warm_start")
        assert change["model"] == tenant and "template v1" in change["reason"]
    status, body = w0.get(f"/models/{tenant}")
    assert status == 200 and body["warm_start"] == {"template": "template", "version": 1, "learned": 300}
