"""A first run on a broker started seconds before: every label learned, snapshots listed, no agent crash.

The race this guards against (a table changelog not yet in the worker's
metadata when its first table write came, the learn agent crash-looping with
PartitionsMismatch) only showed on some first runs, so the test runs several
times, each on a broker of its own, new, on fresh ports.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest

from .harness import Cluster, fresh_broker

pytestmark = pytest.mark.integration

EVENTS = 600


@pytest.mark.parametrize("run", range(3))
async def test_first_run_on_a_fresh_broker_learns_everything(tmp_path, run):
    with fresh_broker(tmp_path / "kafka") as broker:
        cluster = Cluster(bootstrap=broker.bootstrap, prefix="streamlearn.", app_id="streamlearn", workdir=tmp_path)
        try:
            settings = dict(snapshot_every_examples=100, quality_gate=False)
            w = cluster.start_worker(**settings)      # as soon as the broker answers
            cluster.wait_ready(timeout=90)
            env = cluster.env(**settings)
            subprocess.run([sys.executable, "-m", "streamlearn.app.cli", "replay", "sea", "--limit", str(EVENTS),
                            "--keys", "2", "--label-delay", "5", "--no-progress", "--run-id", f"run{run}"],
                           env=env, check=True, capture_output=True, timeout=120)
            deadline = time.monotonic() + 90
            while w.metric("streamlearn_examples_learned_total") < EVENTS and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            assert w.metric("streamlearn_examples_learned_total") == EVENTS, w.log_tail()
            models = {m["model"]: m for m in w.get("/models")[1]["models"]}
            assert {k: m["learned"] for k, m in models.items()} == {"replay-0": EVENTS // 2, "replay-1": EVENTS // 2}
            for key in models:
                out = subprocess.run([sys.executable, "-m", "streamlearn.app.cli", "models", "versions", key,
                                      "--json"],
                                     env=env, capture_output=True, text=True, timeout=60)
                assert out.returncode == 0, out.stderr
                snapshots = json.loads(out.stdout)["result"]["snapshots"]
                assert [s["learned"] for s in snapshots if s["kind"] == "auto"] == [100, 200, 300]
            assert w.metric_sum("streamlearn_agent_crashes_total") == 0
            log = w.log.read_text()
            assert "PartitionsMismatch" not in log and "crashed" not in log
        finally:
            cluster.stop_all()


async def test_a_worker_moved_to_a_new_kafka_cluster_with_its_data_directory_learns_only_what_that_one_sent(
        tmp_path):
    """Tables on disk (RocksDB) of a former cluster hold checkpoints whose offsets the new cluster's training
    topic never had: restored, a model would skip the new messages at or below them as learned."""
    settings = dict(table_store="rocksdb", checkpoint_every_seconds=0.5, quality_gate=False)

    def replay(cluster, events: int, run: str) -> None:
        subprocess.run([sys.executable, "-m", "streamlearn.app.cli", "replay", "sea", "--limit", str(events),
                        "--keys", "2", "--no-progress", "--run-id", run],
                       env=cluster.env(**settings), check=True, capture_output=True, timeout=120)

    async def learned(w, events: int) -> dict:
        deadline = time.monotonic() + 90
        while w.metric("streamlearn_examples_learned_total") < events and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        await asyncio.sleep(2.0)   # more would show by now
        return {m["model"]: m["learned"] for m in w.get("/models")[1]["models"]}

    for n, home in enumerate(("kafka-a", "kafka-b")):
        with fresh_broker(tmp_path / home) as broker:
            cluster = Cluster(bootstrap=broker.bootstrap, prefix="streamlearn.", app_id="streamlearn",
                              workdir=tmp_path)
            try:
                w = cluster.start_worker(f"w{n}", data_of="w0", **settings)   # the same data directory
                cluster.wait_ready(timeout=90)
                events = 400 if n == 0 else 200
                replay(cluster, events, f"run{n}")
                assert await learned(w, events) == {"replay-0": events // 2, "replay-1": events // 2}, w.log_tail()
                if n == 1:
                    assert "holds tables of Kafka cluster" in w.log.read_text()
            finally:
                cluster.stop_all()
