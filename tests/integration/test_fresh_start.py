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
