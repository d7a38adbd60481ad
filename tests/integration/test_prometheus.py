"""A real Prometheus (Debian's package) scrapes two workers during a replay and agrees with what we sent."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

from pathlib import Path

import pytest

from .harness import Collector, Producer, free_port

pytestmark = pytest.mark.integration
BUCKETS = ("0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "1.0")
ALERTS = Path(__file__).resolve().parents[2] / "deploy/prometheus/alerts.yml"


@pytest.fixture
def prometheus(tmp_path):
    binary = shutil.which("prometheus")
    assert binary, "prometheus is installed by scripts/setup (Debian package)"
    port = free_port()
    config = tmp_path / "prometheus.yml"
    procs = []

    def start(targets: list[str]) -> str:
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files: [{json.dumps(str(ALERTS))}]\n"     # the alert rules we ship
            "scrape_configs:\n  - job_name: streamlearn\n    static_configs:\n"
            f"      - targets: {json.dumps(targets)}\n")
        procs.append(subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=(tmp_path / "prometheus.log").open("wb"), stderr=subprocess.STDOUT))
        return f"http://127.0.0.1:{port}"

    yield start
    for p in procs:
        p.terminate()
        p.wait(20)


def query(base: str, promql: str) -> list[dict]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.loads(r.read())
    except OSError:
        return []
    return body["data"]["result"] if body.get("status") == "success" else []


def scalar(base: str, promql: str) -> float | None:
    result = query(base, promql)
    return float(result[0]["value"][1]) if result else None


async def test_prometheus_sees_the_throughput_and_latency_we_sent(cluster, prometheus):
    w0, w1 = cluster.start_worker(), cluster.start_worker()
    cluster.wait_ready()
    gone = free_port()     # a worker that does not answer: the shipped StreamlearnWorkerDown must fire
    prom = prometheus([f"127.0.0.1:{w0.port}", f"127.0.0.1:{w1.port}", f"127.0.0.1:{gone}"])
    started = time.monotonic()
    t = cluster.topics
    n = 1000
    async with Producer(cluster.bootstrap) as p, Collector(cluster.bootstrap, t.predictions) as preds:
        for i in range(n):
            key = f"key-{i % 10}"
            await p.send(t.features, {"event_id": f"e{i}", "features": {"x": i % 7, "y": "abc"[i % 3]},
                                      "ts": time.time()}, key=key)
            await p.send(t.feedback, {"event_id": f"e{i}", "label": i % 2 == 0}, key=key)
        values = await preds.wait_count(n, timeout=60)
    latencies = [v["predicted_at"] - v["ts"] for v in values]

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        learned = scalar(prom, "sum(streamlearn_examples_learned_total)")
        if scalar(prom, "sum(streamlearn_predictions_total)") == n and learned == n:
            break
        time.sleep(1)
    assert scalar(prom, "count(up{job='streamlearn'} == 1)") == 2
    assert scalar(prom, "count(streamlearn_ready == 1)") == 2          # both ready, as their /ready says
    # labels joined per event answered (the shipped recording rule): every event here got its label
    until = time.monotonic() + 30
    while (coverage := scalar(prom, "streamlearn:label_coverage:ratio_rate5m")) is None or abs(coverage - 1) > 0.05:
        assert time.monotonic() < until, coverage
        time.sleep(1)
    # every worker samples its event loop's lag
    assert scalar(prom, "count(streamlearn_event_loop_lag_seconds_count > 0)") == 2
    assert scalar(prom, "sum(streamlearn_predictions_total)") == n
    assert scalar(prom, "sum(streamlearn_examples_learned_total)") == n
    assert scalar(prom, f"sum(streamlearn_events_consumed_total{{topic='{t.features}'}})") == n
    assert scalar(prom, f"sum(streamlearn_events_consumed_total{{topic='{t.feedback}'}})") == n
    assert scalar(prom, "sum(streamlearn_prediction_latency_seconds_count)") == n
    # both workers served: each exported its share
    per_worker = query(prom, "streamlearn_predictions_total")
    assert len(per_worker) == 2 and all(float(r["value"][1]) > 0 for r in per_worker)
    # the end-to-end latency histogram holds exactly the latencies the predictions carry
    for le in BUCKETS:
        seen = scalar(prom, f"sum(streamlearn_end_to_end_latency_seconds_bucket{{le='{le}'}})")
        assert seen == sum(1 for x in latencies if x <= float(le)), le
    # throughput over the replay is positive and bounded by what we sent
    rate = scalar(prom, "sum(rate(streamlearn_predictions_total[1m]))")
    assert rate is not None and 0 < rate * 60 <= n * 1.5
    # per-model series and online accuracy are there too
    assert len(query(prom, "streamlearn_model_examples")) == 10
    accuracy = scalar(prom, "sum(streamlearn_progressive_correct_total) / sum(streamlearn_examples_learned_total)")
    assert accuracy is not None and 0 <= accuracy <= 1

    # the shipped alert rules: all loaded and evaluated without error, and the one whose cause is here fires
    with urllib.request.urlopen(f"{prom}/api/v1/rules", timeout=5) as r:
        rules = [rule for group in json.loads(r.read())["data"]["groups"] for rule in group["rules"]]
    assert len(rules) >= 14 and all(rule["health"] == "ok" for rule in rules), rules
    deadline = started + 150
    down: list = []
    while time.monotonic() < deadline:
        firing = query(prom, 'ALERTS{alertstate="firing"}')
        down = [a["metric"]["instance"] for a in firing if a["metric"]["alertname"] == "StreamlearnWorkerDown"]
        if down:
            break
        time.sleep(2)
    assert down == [f"127.0.0.1:{gone}"], firing
