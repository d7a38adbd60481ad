"""Promotion of challengers through Kafka, the CLI and HTTP: by an operator, automatically, undone by rollback."""

from __future__ import annotations

import copy
import itertools
import signal

import orjson
import pytest
from river import datasets

from streamlearn.models import SPECS, ModelVersions, PromotionSettings, VersionSettings, learn, new_model, set_challengers
from streamlearn.models.gate import GateSettings
from streamlearn.models.blobs import Blobs

from ..unit.fakes import DictStore
from .harness import Collector, Producer, wait_learned
from .test_versions import cli, post

pytestmark = pytest.mark.integration


def tree_wins(n: int) -> list[tuple[dict, int]]:
    """A stream where a Hoeffding tree beats logistic regression by far (Agrawal's function 2: thresholds)."""
    return list(itertools.islice(datasets.synth.Agrawal(classification_function=2, seed=42), n))


async def send_labelled(p: Producer, cluster, key: str, rows, start: int = 0) -> None:
    """Labelled examples for key, each label carrying its features: learned in the order sent.

    (With features and labels on their two topics, a label may overtake its
    event's features and wait for them, so the learning order is not the
    sending order, which River in process needs here.)
    """
    for i, (x, y) in enumerate(rows, start):
        await p._p.send(cluster.topics.feedback, orjson.dumps({"event_id": f"{key}-{i}", "label": y, "features": x}),
                        key=key.encode())
    await p._p.flush()


async def probes(p: Producer, preds: Collector, cluster, key: str, tag: str, rows) -> list[dict]:
    """The predictions the served model makes for rows (features only, never labelled)."""
    ids = [f"probe-{tag}-{i}" for i in range(len(rows))]
    for event_id, (x, _) in zip(ids, rows):
        await p.send(cluster.topics.features, {"event_id": event_id, "features": x}, key=key)
    got = await preds.wait_for(lambda v: set(ids) <= {x["event_id"] for x in v}, 30, "probe predictions")
    by_id = {v["event_id"]: v for v in got}
    return [by_id[i] for i in ids]


def proba(model, x) -> dict[str, float]:
    """River's answer as the worker serves it: Agrawal's labels are 0/1, and predictions answer in them
    whichever model answers (River's logistic regression says False/True)."""
    return {str(int(k)): v for k, v in model.predict_proba_one(x).items()}   # JSON keys: "0", "1"


async def test_promote_by_cli_then_rollback_by_http_undoes_it_and_bad_promotions_are_refused(cluster):
    w = cluster.start_worker(challenger_rules="promo-*=hoeffding_tree", auto_promote="false")
    cluster.wait_ready()
    key, t = "promo-1", cluster.topics
    data, probe_rows = tree_wins(900), tree_wins(920)[900:]
    logreg, tree = SPECS["logreg"].build(), SPECS["hoeffding_tree"].build()   # River, in process
    for x, y in data[:600]:
        logreg.learn_one(x, y)
        tree.learn_one(x, y)
    async with Producer(cluster.bootstrap) as p, Collector(cluster.bootstrap, t.predictions) as preds, \
            Collector(cluster.bootstrap, t.audit) as audit:
        await send_labelled(p, cluster, key, data[:600])
        await wait_learned(w, key, 600)

        # bad promotions: clear errors, nothing changes
        status, res = post(w, f"/models/{key}/promote", {"spec": "knn"})
        assert (status, res["error"]) == (404, "no_such_challenger") and "challengers: hoeffding_tree" in res["detail"]
        status, res = post(w, f"/models/{key}/promote", {})
        assert (status, res["error"], res["detail"]) == (400, "bad_request", "promote needs a spec")
        status, res = post(w, "/models/nobody/promote", {"spec": "hoeffding_tree"})
        assert (status, res["error"]) == (404, "unknown_model")
        code, _, err = cli(cluster, "promote", key)
        assert code == 2 and "a SPEC is required" in err
        code, res, err = cli(cluster, "promote", key, "logreg")
        assert code == 1 and res["error"] == "already_champion"
        assert w.get(f"/models/{key}")[1]["version"] == 1

        # the operator promotes the tree with the CLI: it answers from now on, logreg goes on as a challenger
        code, res, _ = cli(cluster, "promote", key, "hoeffding_tree", "--reason", "trees win here")
        assert code == 0 and res["result"]["promoted"] == "hoeffding_tree"
        assert res["result"]["replaced"]["kind"] == "replaced" and res["result"]["replaced"]["spec"] == "logreg"
        live = res["result"]["live"]
        assert (live["spec"], live["version"], live["learned"]) == ("hoeffding_tree", 2, 600)
        assert [(c["spec"], c["retired_version"]) for c in live["challengers"]] == [("logreg", 1)]
        served = await probes(p, preds, cluster, key, "a", probe_rows)
        assert [v["proba"] for v in served] == [proba(tree, x) for x, _ in probe_rows]
        assert {v["model_version"] for v in served} == {2}

        await send_labelled(p, cluster, key, data[600:], start=600)   # both go on learning every example
        await wait_learned(w, key, 900)

        # rollback (HTTP) undoes the promotion: logreg as it was at the promotion, the tree a challenger again
        status, res = post(w, f"/models/{key}/rollback", {"by": "bob"})
        assert status == 200 and res["result"]["restored"] == 1
        served = await probes(p, preds, cluster, key, "b", probe_rows)
        assert [v["proba"] for v in served] == [proba(logreg, x) for x, _ in probe_rows]
        now = w.get(f"/models/{key}")[1]
        assert (now["spec"], now["learned"], now["version"]) == ("logreg", 600, 3)
        assert [(c["spec"], c["learned"], c["retired_version"]) for c in now["challengers"]] == [
            ("hoeffding_tree", 900, 2)]
        changes = await audit.wait_count(2)
    assert [(c["action"], c["from_version"], c["to_version"], c.get("spec")) for c in changes] == [
        ("promote", 1, 2, "hoeffding_tree"), ("rollback", 2, 3, None)]
    assert changes[0]["reason"] == "trees win here" and changes[0]["by"].startswith("cli:")
    assert w.metric("streamlearn_version_changes_total", 'action="promote"') == 1


async def test_a_tree_challenger_overtakes_logreg_is_promoted_automatically_and_it_survives_a_crash(cluster):
    w = cluster.start_worker(challenger_rules="auto-*=hoeffding_tree")
    cluster.wait_ready()
    key, t = "auto-1", cluster.topics
    data, probe_rows = tree_wins(3000), tree_wins(3020)[3000:]

    # in process: the same examples through the same models, gate and promotion policy (the worker's defaults)
    versions = ModelVersions(DictStore(), Blobs(b"k"),
                             VersionSettings(1000, 0.0, 10, GateSettings(), PromotionSettings()))
    expected = new_model(key, SPECS["logreg"])
    set_challengers(expected, [SPECS["hoeffding_tree"]])
    promoted_at = None
    for x, y in data:
        scored = learn(expected, x, y)
        new, changes = versions.learned(expected, x, y, scored.y_pred, scored.shadow)
        if any(c.action == "auto_promote" for c in changes):
            promoted_at = expected.learned
        expected = new or expected
    assert promoted_at is not None and expected.spec.name == "hoeffding_tree"

    async with Producer(cluster.bootstrap) as p, Collector(cluster.bootstrap, t.predictions) as preds, \
            Collector(cluster.bootstrap, t.audit) as audit:
        await send_labelled(p, cluster, key, data)
        await wait_learned(w, key, len(data), timeout=90)
        promotion = await audit.wait_for_one(lambda c: c["action"] == "auto_promote")
        assert promotion["spec"] == "hoeffding_tree" and promotion["by"] == "promotion-policy"
        assert "did better than the champion" in promotion["reason"]
        history = w.get(f"/models/{key}/versions")[1]
        replaced = next(s for s in history["snapshots"] if s["kind"] == "replaced")
        assert (replaced["spec"], replaced["learned"]) == ("logreg", promoted_at)   # where River says it should
        served = await probes(p, preds, cluster, key, "a", probe_rows)
        assert [v["proba"] for v in served] == [proba(expected.model, x) for x, _ in probe_rows]

        # the promotion was checkpointed: the next owner serves the tree, with logreg still in its shadow
        w.stop(signal.SIGKILL)
        w2 = cluster.start_worker()
        cluster.wait_ready([w2])
        served = await probes(p, preds, cluster, key, "b", probe_rows)
        assert [v["proba"] for v in served] == [proba(expected.model, x) for x, _ in probe_rows]
        status = w2.get(f"/models/{key}")[1]
        assert (status["spec"], status["learned"]) == ("hoeffding_tree", len(data))
        assert [(c["spec"], c["learned"]) for c in status["challengers"]] == [("logreg", len(data))]
        assert status["challengers"][0]["metric"]["value"] == copy.deepcopy(
            expected.challengers["logreg"].metric).get()
