"""``streamlearn whatif``: a spec replayed on each key's training history, against the live model's answers.

Checked against the producer's record: the spec's score equals a fresh River model's progressive score on
the same examples in the same order, and the live model's score equals what the predictions topic served.
"""

from __future__ import annotations

import random
import subprocess
import sys

import orjson
import pytest
from river import metrics

from streamlearn.models import get_spec

from .harness import Collector, Producer, wait_learned

pytestmark = pytest.mark.integration


async def test_whatif_replays_each_keys_history_as_river_would_and_scores_the_live_answers(cluster, tmp_path):
    w = cluster.start_worker(quality_gate=False, auto_promote=False)
    cluster.wait_ready()
    t, rng = cluster.topics, random.Random(7)
    sent: dict[str, list[tuple[str, dict, bool]]] = {"wi-a": [], "wi-b": []}
    async with Producer(cluster.bootstrap) as p, Collector(cluster.bootstrap, t.predictions) as preds:
        for i in range(600):
            key = ("wi-a", "wi-b")[i % 2]
            x = {"a": rng.gauss(0, 1), "b": rng.gauss(0, 1), "c": rng.random()}
            y = (x["a"] + 0.5 * x["b"] > 0) != (key == "wi-b" and x["c"] > 0.8)
            sent[key].append((f"{key}-{i}", x, y))
            await p.send(t.features, {"event_id": f"{key}-{i}", "features": x}, key=key)
        await preds.wait_count(600, timeout=60)
        for key, events in sent.items():
            for eid, _, y in events:
                await p.send(t.feedback, {"event_id": eid, "label": y}, key=key)
        for key in sent:
            await wait_learned(w, key, 300, timeout=60)
        served = {v["event_id"]: v["prediction"] for v in preds.values()}

    run = subprocess.run([sys.executable, "-m", "streamlearn.app.cli", "whatif", "--spec", "hoeffding_tree",
                          "--keys", "wi-*", "--json", "--plot", str(tmp_path / "whatif.png")], env=cluster.env(),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "whatif.png").stat().st_size > 10_000 and "wrote" in run.stderr
    reports = {r["key"]: r for r in orjson.loads(run.stdout)}
    assert set(reports) == set(sent)
    for key, events in sent.items():
        model, spec_score, live_score = get_spec("hoeffding_tree").build(), metrics.Accuracy(), metrics.Accuracy()
        for eid, x, y in events:                     # predict, then learn: the order the live model learned
            spec_score.update(y, model.predict_one(x))
            model.learn_one(x, y)
            live_score.update(y, served[eid])
        r = reports[key]
        assert r["examples"] == r["compared"] == 300
        assert r["spec_metric"] == spec_score.get() and r["live_metric"] == live_score.get()
        assert r["spec_better"] + r["live_better"] > 0 and r["verdict"]
        print(f"\n{key}: hoeffding_tree {r['spec_metric']:.3f} vs live {r['live_metric']:.3f}, z={r['z']:.1f}: "
              f"{r['verdict']}")

    none = subprocess.run([sys.executable, "-m", "streamlearn.app.cli", "whatif", "--spec", "hoeffding_tree",
                           "--keys", "nobody-*"], env=cluster.env(), capture_output=True, text=True, timeout=120)
    assert none.returncode == 1 and "no training history for keys matching 'nobody-*'" in none.stderr
    unknown = subprocess.run([sys.executable, "-m", "streamlearn.app.cli", "whatif", "--spec", "no-such-spec"],
                             env=cluster.env(), capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2 and "unknown model spec 'no-such-spec'" in unknown.stderr
