"""`streamlearn replay` publishes datasets the way a producing service would; scripts/kafka runs brokers."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import orjson
import pytest

from .harness import Collector, free_port, fresh_broker

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def streamlearn(cluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamlearn.app.cli", *args], env=cluster.env(),
                          capture_output=True, text=True, timeout=120)


def on_a_terminal(cluster, *args: str) -> str:
    """What a command writes to its stderr when that is a terminal (a pseudo-terminal here)."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))   # 24 rows, 100 columns
    try:
        r = subprocess.run([sys.executable, "-m", "streamlearn.app.cli", *args], env=cluster.env(),
                           stdout=subprocess.PIPE, stderr=slave, text=True, timeout=120)
        assert r.returncode == 0, r
        os.close(slave)
        out = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:    # the terminal's other end is closed: all read
                break
            if not chunk:
                break
            out += chunk
        return out.decode(errors="replace")
    finally:
        os.close(master)


async def test_replay_phishing_over_keys_with_label_delay(cluster):
    r = streamlearn(cluster, "topics")
    assert r.returncode == 0, r.stderr
    t = cluster.topics
    async with Collector(cluster.bootstrap, t.features) as feats, Collector(cluster.bootstrap, t.feedback) as labels:
        r = streamlearn(cluster, "replay", "phishing", "--limit", "200", "--keys", "4", "--label-delay", "10",
                        "--rate", "2000", "--run-id", "r1")
        assert r.returncode == 0, r.stderr
        assert "published 200 events and 200 labels" in r.stdout
        assert r.stderr == ""   # no progress bar when stderr is not a terminal
        events = await feats.wait_count(200)
        labs = await labels.wait_count(200)
    assert {e["event_id"] for e in events} == {f"r1-{i}" for i in range(200)}
    assert {m.key for m in feats.records} == {f"replay-{i}".encode() for i in range(4)}
    assert all(set(e) == {"event_id", "features", "ts"} and len(e["features"]) == 9 for e in events)
    assert all(isinstance(lab["label"], bool) for lab in labs)
    # the label of event i is published after event i + 10 (at 2000/s, 5 ms later)
    event_time = {orjson.loads(m.value)["event_id"]: m.timestamp for m in feats.records}
    for m in labels.records:
        i = int(orjson.loads(m.value)["event_id"].split("-")[1])
        if i + 10 < 200:
            assert m.timestamp >= event_time[f"r1-{i + 10}"]
    # on a terminal: a bar with the total, the rate and the time left
    bar = on_a_terminal(cluster, "replay", "phishing", "--limit", "50", "--run-id", "r0")
    assert "50/50" in bar and " events/s]" in bar and "00:00<00:00" in bar, bar


async def test_replay_files_jsonl_and_csv_unkeyed(cluster, tmp_path):
    streamlearn(cluster, "topics")
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("\n".join(orjson.dumps({"features": {"a": i, "c": "x"}, "label": i % 2 == 0}).decode()
                               for i in range(5)) + "\n")
    csv = tmp_path / "data.csv"
    csv.write_text("a,b,y\n1.5,red,true\n2.5,blue,false\n")
    t = cluster.topics
    async with Collector(cluster.bootstrap, t.features) as feats, Collector(cluster.bootstrap, t.feedback) as labels:
        r1 = streamlearn(cluster, "replay", str(jsonl), "--unkeyed", "--key-prefix", "file", "--run-id", "j")
        r2 = streamlearn(cluster, "replay", str(csv), "--target", "y", "--key-prefix", "csv", "--run-id", "c")
        assert r1.returncode == 0 and r2.returncode == 0, r1.stderr + r2.stderr
        events = await feats.wait_count(7)
        labs = await labels.wait_count(7)
    by_id = {e["event_id"]: e for e in events}
    assert by_id["j-3"] == {"event_id": "j-3", "model": "file", "features": {"a": 3, "c": "x"}, "ts": by_id["j-3"]["ts"]}
    assert by_id["c-0"]["features"] == {"a": 1.5, "b": "red"}
    assert {lab["event_id"]: lab["label"] for lab in labs}["c-1"] is False
    bad = streamlearn(cluster, "replay", str(tmp_path / "missing.jsonl"))
    assert bad.returncode == 2 and "neither a bundled dataset" in bad.stderr


@pytest.mark.smoke
def test_kafka_script_runs_brokers_side_by_side(bootstrap, tmp_path):
    """A second broker on another port, with its own data and PID file, beside the session's."""
    port = free_port()
    env = {**os.environ, "KAFKA_PORT": str(port), "KAFKA_CONTROLLER_PORT": str(free_port()),
           "KAFKA_HOME_DIR": str(tmp_path)}
    kafka = [sys.executable, str(ROOT / "scripts" / "kafka")]
    assert subprocess.run([*kafka, "status"], env=env).returncode == 1
    start = subprocess.run([*kafka, "start"], env=env, capture_output=True, text=True, timeout=180)
    try:
        assert start.returncode == 0, start.stderr
        assert start.stdout.strip().endswith(f"127.0.0.1:{port}")
        assert (tmp_path / f"broker-{port}" / "kafka.pid").exists()
        status = subprocess.run([*kafka, "status"], env=env, capture_output=True, text=True)
        assert status.returncode == 0 and f"127.0.0.1:{port}" in status.stdout

        async def roundtrip() -> bytes:
            from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
            p = AIOKafkaProducer(bootstrap_servers=f"127.0.0.1:{port}")
            await p.start()
            await p.send_and_wait("side-by-side", b"hello")
            await p.stop()
            c = AIOKafkaConsumer("side-by-side", bootstrap_servers=f"127.0.0.1:{port}",
                                 auto_offset_reset="earliest")
            await c.start()
            try:
                return (await asyncio.wait_for(c.getone(), 20)).value
            finally:
                await c.stop()

        assert asyncio.run(roundtrip()) == b"hello"
        # the session's broker is untouched
        assert subprocess.run([*kafka, "status"], env={**os.environ, "KAFKA_PORT": bootstrap.rsplit(":", 1)[1]},
                              capture_output=True).returncode == 0
    finally:
        stop = subprocess.run([*kafka, "stop"], env=env, capture_output=True, text=True)
    assert stop.returncode == 0 and "stopped" in stop.stdout
    assert not (tmp_path / f"broker-{port}").exists()      # its storage went with it
    assert subprocess.run([*kafka, "status"], env=env, capture_output=True).returncode == 1


def test_bench_command_measures_baselines_and_pipeline(cluster):
    """`streamlearn bench` runs end to end and reports every figure (values are for docs, not asserted)."""
    r = subprocess.run([sys.executable, "-m", "streamlearn.app.cli", "bench", "--events", "200", "--specs", "logreg",
                        "--workers", "1", "--rates", "0,half", "--producers", "keyed,unkeyed", "--json"],
                       env=cluster.env(partitions=8), capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-2000:]
    report = orjson.loads(r.stdout)
    assert report["machine"]["cpus"] >= 1
    raw, loop, keyed, unkeyed, half_loop, half_keyed, half_unkeyed = report["results"]
    assert raw["name"] == "raw" and loop["name"] == half_loop["name"] == "loop" and keyed["name"] == "pipeline"
    assert loop["spec"] == keyed["spec"] == "logreg"
    assert raw["events"] == loop["events"] == keyed["events"] == unkeyed["events"] == 200  # every prediction came
    for res in (raw, loop, keyed):
        assert res["events_per_s"] > 0 and 0 <= res["p50_ms"] <= res["p95_ms"] <= res["p99_ms"]
    assert keyed["ratio_to_baseline"] == pytest.approx(keyed["events_per_s"] / raw["events_per_s"])
    assert keyed["ratio_to_loop"] == pytest.approx(keyed["events_per_s"] / loop["events_per_s"])
    assert half_loop["target_rate"] == half_keyed["target_rate"] == half_unkeyed["target_rate"] == round(
        keyed["events_per_s"] / 2)
    assert "events/s" in r.stderr and "vs loop" in r.stderr  # the table
    # the waterfall: one event in ten stamped; keyed, every event is answered where it arrives
    shortcut = "produced > fetched > handled > predicted > sent > consumed"
    routed = "produced > fetched > handled > routed > fetched > handled > predicted > sent > consumed"
    assert list(keyed["waterfall"]) == [shortcut] and keyed["waterfall"][shortcut]["events"] == 20
    assert sum(w["events"] for w in unkeyed["waterfall"].values()) == 20 and routed in unkeyed["waterfall"]
    for step in unkeyed["waterfall"][routed]["steps"]:
        assert 0 <= step["p50_ms"] <= step["p99_ms"]
    assert "traced events" in r.stderr
    # freshness: each label from its produce time until a prediction shows it learned (those no later
    # prediction shows are not measured: at this size some runs may measure none)
    measured = [res["freshness"] for res in (keyed, unkeyed, half_keyed, half_unkeyed) if res["freshness"]]
    assert measured and "produced > learned" in r.stderr
    for f in measured:
        assert 0 < f["labels"] <= 200 and 0 <= f["p50_ms"] <= f["p99_ms"]


def test_bench_http_asks_a_worker_and_a_hand_written_server_for_predictions(cluster):
    """`streamlearn bench --http RATE`: every request answered by both (figures are for docs, not asserted)."""
    r = subprocess.run([sys.executable, "-m", "streamlearn.app.cli", "bench", "--http", "200", "--events", "300",
                        "--specs", "logreg", "--json"], env=cluster.env(partitions=8), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    loop, served = orjson.loads(r.stdout)["results"]
    assert (loop["name"], served["name"]) == ("http-loop", "http") and served["producers"] == "http"
    for res in (loop, served):
        assert res["events"] == 300 and res["target_rate"] == 200 and 0 < res["p50_ms"] <= res["p99_ms"]
    assert served["ratio_to_loop"] == pytest.approx(served["events_per_s"] / loop["events_per_s"])
    assert "http-loop" in r.stderr


@pytest.mark.timeout(600)
def test_soak_for_two_minutes_loses_nothing_and_stays_within_memory(cluster):
    """`streamlearn soak`, 2 minutes at half the measured maximum: every event answered, every label learned
    once (against what the soak sent), the backlog drained, the worker's memory under 600 MB throughout."""
    r = subprocess.run([sys.executable, "-m", "streamlearn.app.cli", "soak", "--minutes", "2", "--report-every", "30",
                        "--probe", "3000", "--max-rss-mb", "600", "--json"], env=cluster.env(partitions=8),
                       capture_output=True, text=True, timeout=540)
    print(r.stderr)
    assert r.returncode == 0, r.stderr[-3000:]
    soak = orjson.loads(r.stdout)
    n = int(soak["rate"] * 2 * 60)
    assert soak["ok"] and soak["max_events_per_s"] > 0 and soak["rate"] == pytest.approx(soak["max_events_per_s"] / 2)
    assert soak["answered"] == n
    *minutes, final = soak["reports"]
    assert len(minutes) >= 3                                   # once every 30 s while sending
    assert final["sent"] == final["learned"] == n and final["lag"] == 0
    assert all(m["learned"] <= m["sent"] for m in soak["reports"])
    assert max(m["rss_mb"] for m in soak["reports"]) < 600
    assert "soak passed" in r.stderr


def run_demo(tmp_path, bootstrap: str, **options: str) -> str:
    """scripts/demo as a user runs it, shortened (one key, 200 events/s, stop when done); its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMLEARN_", "DEMO_", "KAFKA_"))}
    env.update(KAFKA_PORT=bootstrap.rsplit(":", 1)[1], KAFKA_HOME_DIR=str(tmp_path / "kafka"),
               DEMO_DIR=str(tmp_path / "demo"), DEMO_RATE="200", DEMO_KEYS="1", DEMO_LABEL_DELAY="5",
               DEMO_STAY="0", STREAMLEARN_TOPIC_PREFIX="demo-test.", STREAMLEARN_APP_ID="demo-test", **options)
    demo = subprocess.run(["bash", str(ROOT / "scripts" / "demo")], env=env, capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    return demo.stdout


async def test_the_demo_as_a_user_runs_it(tmp_path):
    """scripts/demo itself, shortened through its options, on a broker of its own started just before.

    It must learn every label, the quality gate must roll back the burst of bad labels (seen on the audit
    topic), list the versions, write the PNG and stop cleanly. The replay's rate stays well below what one
    worker sustains on a busy 2-core CI machine: the final accuracy is of predictions, made with whatever the
    model had learned when each event came; a worker lagging behind its labels predicts with an older model
    (a CI run at 400 events/s lagged 1,500 examples and predicted the tail with the model of the bad labels).
    """
    with fresh_broker(tmp_path / "kafka") as broker:
        bootstrap = broker.bootstrap
        web_port = free_port()
        out = run_demo(tmp_path, bootstrap, DEMO_WEB_PORT=str(web_port), DEMO_EVENTS="4000", DEMO_FLIP="2000:800")
        assert "labels learned: 4000 of 4000" in out
        async with Collector(bootstrap, "demo-test.audit") as audit:
            rollback = await audit.wait_for_one(lambda c: c["action"] == "auto_rollback", timeout=30)
        assert rollback["model"] == "demo" and rollback["by"] == "quality-gate"
        versions = out.split("versions of demo")[1].split("\n\n")[0]
        assert " auto " in versions and " live " in versions, versions
        png = tmp_path / "demo" / "accuracy.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
        assert "demo: 4000 labelled predictions" in out and "auto_rollback" in out
        final = float(re.search(r"accuracy over the last \d+ of them ([0-9.]+) \(against the true labels\)",
                                out).group(1))
        assert final > 0.9, out
        # told as it happened: the bad labels begin; then they end, and the gate rolls the model back
        told = [line for line in out.splitlines() if line.startswith(">> ")]
        assert re.fullmatch(r">> bad labels begin: demo \S+ is labelled (True|False), truly (True|False)", told[0]), told
        assert any(re.fullmatch(r">> bad labels ended after [\d,]+ wrong ones", line) for line in told), told
        assert any(re.match(r">> demo: the quality gate rolled it back to v\d+ \(v\d+ -> v\d+\): after a rise", line)
                   for line in told), told
        assert any(line.startswith(">> demo: degradation alert: the live model's error rate rose from ")
                   for line in told), told    # the gate saw the rise (the alerts topic), whatever followed
        assert "setting up (log: " in out and "Successfully installed" not in out   # the set-up says little
        assert "stopping ..." in out
        with pytest.raises(OSError):     # the worker is gone
            urllib.request.urlopen(f"http://127.0.0.1:{web_port}/health", timeout=2)
        assert "Traceback" not in (tmp_path / "demo" / "worker.log").read_text()


async def test_the_challenger_demo_shows_a_tree_overtaking_logreg_and_its_promotion(tmp_path):
    """scripts/demo in its second mode: a Hoeffding tree challenger on a stream where trees win is promoted."""
    with fresh_broker(tmp_path / "kafka") as broker:
        bootstrap = broker.bootstrap
        out = run_demo(tmp_path, bootstrap, DEMO_MODE="challenger", DEMO_WEB_PORT=str(free_port()), DEMO_EVENTS="3000")
        assert "labels learned: 3000 of 3000" in out
        async with Collector(bootstrap, "demo-test.audit") as audit:
            promotion = await audit.wait_for_one(lambda c: c["action"] == "auto_promote", timeout=30)
        assert promotion["spec"] == "hoeffding_tree" and promotion["by"] == "promotion-policy"
        models = out.split("models (streamlearn models list):")[1].split("\n\n")[0]
        [row] = [r for r in models.splitlines() if r.split()[:2] == ["demo", "hoeffding_tree"]]
        assert "logreg (Accuracy 0." in row and "champion until v" in row, models
        assert "auto_promote v" in out and "by promotion-policy: challenger hoeffding_tree did better" in out
        assert any(line.startswith(">> demo: challenger hoeffding_tree promoted by the promotion policy (v")
                   for line in out.splitlines()), out
        assert (tmp_path / "demo" / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "Traceback" not in (tmp_path / "demo" / "worker.log").read_text()
