"""Metrics exposition with a cap on per-model series, JSON logs, the bench's table and waterfall."""

from __future__ import annotations

import json
import logging

import orjson
import pytest

from streamlearn.app.logs import JsonFormatter, logging_config
from streamlearn.app.metrics import Metrics, StateCollector
from streamlearn.models import get_spec, learn, new_model
from tests.unit.fakes import samples


def test_per_model_series_are_capped_and_the_rest_aggregated():
    models = []
    for i in range(5):
        live = new_model(f"k{i}", get_spec("logreg"))
        for _ in range(i + 1):
            learn(live, {"a": 1.0}, True)
        models.append(live)
    m = Metrics()
    m.registry.register(StateCollector(lambda: models, lambda: [("topic", 3, 42)], max_models=2))
    m.deadletter("not_json")
    got = samples(m)
    examples = {s.labels["model"]: s.value for s in got["streamlearn_model_examples"]}
    assert examples == {"k4": 5, "k3": 4, "_other": 1 + 2 + 3}
    assert {s.labels["model"] for s in got["streamlearn_model_metric"]} == {"k4", "k3", "_other"}
    assert got["streamlearn_consumer_lag"][0].labels == {"topic": "topic", "partition": "3"}
    assert got["streamlearn_consumer_lag"][0].value == 42
    [dead] = [s for s in got["streamlearn_deadletters_total"]]
    assert dead.labels == {"reason": "not_json"} and dead.value == 1


def test_json_log_lines_carry_the_event_context():
    record = logging.LogRecord("streamlearn.deadletter", logging.WARNING, __file__, 1, "rejected %s", ("x",), None)
    record.event_id, record.model, record.reason = "e-1", "tenant-7", "not_json"
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "rejected x" and line["level"] == "warning"
    assert (line["event_id"], line["model"], line["reason"]) == ("e-1", "tenant-7", "not_json")
    assert logging_config("text", "info") is None
    assert logging_config("json", "info")["root"]["level"] == "INFO"


def test_bench_png_plots_pipeline_and_loop_against_the_offered_rate(tmp_path):
    from streamlearn.app.bench import Result
    from streamlearn.app.plot import render_bench

    runs = [Result("raw", "-", 1, 0, 10, 100.0, 1, 2, 3, 0.1),
            Result("loop", "logreg", 1, 0, 10, 50.0, 1, 2, 3, 0.1),
            Result("loop", "logreg", 1, 1000, 10, 40.0, 1, 2, 3, 0.1),
            Result("pipeline", "logreg", 1, 0, 10, 20.0, 1, 2, 30, 0.1),
            Result("pipeline", "logreg", 1, 1000, 10, 15.0, 1, 2, 300, 0.1)]
    path = render_bench(runs, tmp_path / "out" / "bench.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000


def test_the_accuracy_plot_marks_promotions_with_the_spec_promoted(tmp_path):
    from streamlearn.app.plot import mark, render, series

    preds = [{"event_id": str(i), "model": "m", "prediction": i % 3 != 0, "predicted_at": 100.0 + i}
             for i in range(300)]
    records = {"predictions": preds, "feedback": [{"event_id": str(i), "label": True} for i in range(300)],
               "audit": [{"action": "snapshot", "model": "m", "from_version": 1, "to_version": 2, "at": 150.0},
                         {"action": "auto_promote", "model": "m", "from_version": 2, "to_version": 4,
                          "spec": "hoeffding_tree", "at": 200.0, "restored_version": None},
                         {"action": "rollback", "model": "m", "from_version": 4, "to_version": 6,
                          "restored_version": 3, "at": 250.0},
                         {"action": "promote", "model": "other", "from_version": 1, "to_version": 3,
                          "spec": "knn", "at": 200.0}]}
    [s] = series(records)
    assert [c["action"] for c in s.changes] == ["snapshot", "auto_promote", "rollback"]   # only this model's
    assert mark(s.changes[1]) == ("auto_promote v2→v4: hoeffding_tree", "tab:purple")
    assert mark(s.changes[2]) == ("rollback v4→v6 (= v3)", "tab:orange")
    path = render([s], tmp_path / "accuracy.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_table_shows_key_counts_memory_and_the_ratio_to_the_first_key_count():
    import io

    from streamlearn.app.bench import Result
    from streamlearn.app.benchreport import Table
    from streamlearn.app.cli import _key_counts

    out = io.StringIO()
    table = Table(out)
    table.row(Result("pipeline", "logreg", 1, 0, 10, 100.0, 1, 2, 3, 0.1, keys=20, rss_mb=200.0))
    table.row(Result("pipeline", "logreg", 1, 0, 10, 80.0, 1, 2, 3, 0.1, keys=10_000, rss_mb=300.0,
                     ratio_to_keys=0.8, bytes_per_model=10_506.0, stall_ms=250.0))
    header, first, second = out.getvalue().splitlines()
    assert header.endswith("rss MB  vs keys  B/model stall<=ms")
    assert first.split()[-4:] == ["200", "-", "-", "-"] and " 20 " in first
    assert second.split()[-4:] == ["300", "0.80", "10,506", "250"] and " 10000 " in second
    assert _key_counts("10000,100000") == [20, 10_000, 100_000] and _key_counts("20,5") == [20, 5]


def test_the_bench_waterfall_splits_each_traced_prediction_by_path_and_step():
    import io

    from streamlearn.app.bench import Result, parse_rates, resolve_rate
    from streamlearn.app.benchreport import Table, waterfall

    def prediction(ts: float, consumed: float, *steps: tuple[str, float]):
        headers = [("streamlearn-trace", orjson.dumps([list(s) for s in steps]))] if steps else []
        return consumed, orjson.dumps({"event_id": "e", "ts": ts}), headers

    received = [prediction(100.0, 100.030, ("fetched", 100.010), ("handled", 100.012), ("predicted", 100.013),
                           ("sent", 100.014)) for _ in range(9)]
    received.append(prediction(100.0, 100.5, ("fetched", 100.010), ("handled", 100.2), ("predicted", 100.201),
                               ("sent", 100.202)))                    # one waited 190 ms behind its fetch
    received.append(prediction(100.0, 100.1))                         # not traced: not in the waterfall
    received.append(prediction(100.0, 100.1, ("fetched", 100.01), ("handled", 100.02), ("routed", 100.03),
                               ("fetched", 100.05), ("handled", 100.06), ("predicted", 100.07), ("sent", 100.08)))
    w = waterfall(received)
    direct = w["produced > fetched > handled > predicted > sent > consumed"]
    assert direct["events"] == 10
    queued = direct["steps"][1]
    assert (queued["from"], queued["to"]) == ("fetched", "handled")
    assert queued["p50_ms"] == pytest.approx(2.0) and queued["p99_ms"] > 150
    routed = w["produced > fetched > handled > routed > fetched > handled > predicted > sent > consumed"]
    assert routed["events"] == 1 and routed["steps"][3]["p50_ms"] == pytest.approx(20.0)   # the hop
    out = io.StringIO()
    Table(out).row(Result("pipeline", "logreg", 1, 1000, 12, 1000.0, 1, 2, 3, 0.1, waterfall=w))
    assert "10 traced events: fetched +10.0/10.0, handled +2.0/" in out.getvalue()
    assert parse_rates("0,1000,half") == [0.0, 1000.0, "half"] and resolve_rate("half", 4001.0) == 2000
    with pytest.raises(SystemExit):
        parse_rates("1000,half")        # half of no flat-out run


def test_the_bench_freshness_counts_each_label_from_its_produce_time_until_a_prediction_shows_it_learned():
    import io

    import numpy as np

    from streamlearn.app.bench import Result
    from streamlearn.app.benchreport import Table, freshness

    def prediction(model: str, predicted_at: float, learned: int):
        return predicted_at + 0.003, orjson.dumps({"event_id": "e", "model": model, "learned": learned,
                                                   "predicted_at": predicted_at, "ts": predicted_at - 0.01}), []

    # key a had learned 5 in the warm-up; its labels, produced at 10.00, 10.02, 10.04, count at the first
    # prediction past 5 + n: 10.03 (6), 10.05 (still 6: the second not yet), 10.07 (8: both)
    received = [prediction("a", 10.01, 5), prediction("a", 10.03, 6), prediction("a", 10.05, 6),
                prediction("a", 10.07, 8),
                prediction("b", 10.00, 3), prediction("b", 10.50, 4)]      # key b: a label that took 490 ms
    sent = {"a": [10.00, 10.02, 10.04], "b": [10.01, 10.60], "c": [10.0]}   # b's second, c's: never shown
    f = freshness(received, sent)
    assert f["labels"] == 4
    waits = sorted([30.0, 50.0, 30.0, 490.0])
    assert f["p50_ms"] == pytest.approx(float(np.percentile(waits, 50)))
    assert f["p99_ms"] == pytest.approx(float(np.percentile(waits, 99))) and f["p99_ms"] > 400
    assert freshness(received[:1], {"a": [10.0]}) is None                  # nothing learned yet: not measured
    out = io.StringIO()
    Table(out).row(Result("pipeline", "logreg", 1, 1000, 12, 1000.0, 1, 2, 3, 0.1, freshness=f))
    assert "freshness, 4 labels: produced > learned 40.0/" in out.getvalue()
